import type { Logger } from 'pino';
import type { Config, ProbeConfig } from '../config/load.js';
import type { Metrics } from '../metrics.js';
import type { ProbeResult } from '../probers/run.js';
import { ProbeState } from './probe-state.js';
import { Scheduler, type RunReport } from './scheduler.js';
import { VerdictIndex, type Verdict, type Verdicts } from './verdicts.js';

/** A probe's view for the status API and CLI. */
export interface ProbeStatus {
  id: string;
  kind: string;
  site: string;
  services: string[];
  state: string;
  since: string;
  failingSince?: string;
  consecutiveFailures: number;
  last?: { ok: boolean; reason: string; durationSeconds: number; at: string; observed: Record<string, unknown> };
  lastFailure?: { reason: string; at: string };
}

const iso = (ms: number) => new Date(ms).toISOString();
const up = (v: Verdict) => (v === 'UNKNOWN' ? undefined : v === 'DOWN' ? 0 : 1);

/** Observed values worth keeping in the status API (and sending to other instances): scalars only, long strings cut. */
export function summarize(observed: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(observed)) {
    if (typeof v === 'string') out[k] = v.length > 200 ? v.slice(0, 200) + '…' : v;
    else if (typeof v === 'number' || typeof v === 'boolean' || v === null) out[k] = v;
    else if (Array.isArray(v) && v.length <= 20 && v.every((x) => typeof x !== 'object')) out[k] = v;
  }
  return out;
}

/**
 * Turns probe results into states, verdicts, metrics and log lines. It logs one line per state
 * change and per verdict change, never one per run: a quiet log means a quiet estate.
 */
export class Monitor {
  /** The skipped-run warning, once a minute per probe at most (the counter counts every one). */
  private readonly skips = new SkipWarnings();
  private config: Config;
  private readonly states = new Map<string, ProbeState>();
  private readonly scheduler: Scheduler;
  private verdicts: Verdicts = { services: {}, sites: {} };
  private index: VerdictIndex;
  /** Services serving from another site than the config says (after a failover). */
  private readonly activeSites = new Map<string, string>();
  /** A state changed since verdicts were last computed: they are recomputed once per batch of changes. */
  private stale = false;
  private readonly listeners = new Set<(v: Verdicts) => void>();
  /** Which probes this instance's own scheduler runs (the rest are shared out through the cluster). */
  private local: (p: ProbeConfig) => boolean = () => true;

  constructor(
    config: Config,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    opts: { firstRun?: 'spread' | 'now' } = {},
  ) {
    this.config = config;
    this.index = new VerdictIndex(config, this.activeSites);
    this.scheduler = new Scheduler({
      maxConcurrent: config.daemon.maxConcurrentProbes,
      stateDir: config.daemon.stateDir,
      onResult: (r) => this.record(r, true),
      onSkip: (p) => {
        this.metrics.probeSkipped.inc({ probe: p.id });
        const skipped = this.skips.skip(p.id);
        if (skipped) this.log.warn({ probe: p.id, skipped }, 'probe run skipped: the previous run is still going');
      },
      firstRun: opts.firstRun,
    });
    this.apply(config);
  }

  /** Takes a new config (already validated): unchanged probes keep their state and schedule. */
  apply(config: Config): void {
    const next = new Map(config.probes.map((p) => [p.id, p]));
    for (const old of this.config.probes) {
      const now = next.get(old.id);
      if (!now || now.fingerprint !== old.fingerprint) {
        this.states.delete(old.id);
        if (!now || now.site !== old.site || now.kind !== old.kind) this.metrics.forgetProbe(old);
      }
    }
    for (const p of config.probes) {
      if (!this.states.has(p.id)) {
        this.states.set(p.id, new ProbeState(p.failureThreshold, p.successThreshold));
        this.metrics.setProbeState(p.id, p.site, 'PENDING');
        this.metrics.probeFailingSince.set({ probe: p.id }, 0);
      }
    }
    for (const s of Object.values(config.services)) {
      this.metrics.rtoTarget.set({ service: s.id }, s.rtoMs / 1000);
      this.metrics.rpoTarget.set({ service: s.id }, s.rpoMs / 1000);
    }
    for (const id of Object.keys(this.config.services)) {
      if (!(id in config.services)) {
        this.metrics.rtoTarget.remove({ service: id });
        this.metrics.rpoTarget.remove({ service: id });
      }
    }
    this.metrics.probesConfigured.set(config.probes.length);
    this.config = config;
    this.index = new VerdictIndex(config, this.activeSites);
    this.scheduler.setProbes(config.probes.filter((p) => this.local(p)));
    this.metrics.probesScheduledHere.set(this.scheduler.size);
    this.updateVerdicts();
  }

  /**
   * Which probes the local scheduler runs: all of them (the default, and whenever the cluster's
   * queue is unreachable), or those not shared out. Probes that keep their place keep their plan.
   */
  runLocally(filter: (p: ProbeConfig) => boolean): void {
    this.local = filter;
    this.scheduler.setProbes(this.config.probes.filter((p) => filter(p)));
    this.metrics.probesScheduledHere.set(this.scheduler.size);
  }

  /**
   * A result of a shared probe: run here (`mine`: it counts in this instance's run counters and
   * schedule lag) or by another instance (it moves states and verdicts all the same).
   */
  recordShared(probe: ProbeConfig, result: ProbeResult, planned: number, mine: boolean): void {
    this.record({ probe, result, lagSeconds: Math.max(0, result.startedAt - planned) / 1000 }, mine);
  }

  /** Moves a service's verdict to another site (a failover did it); verdicts follow at once. */
  setActiveSite(service: string, site: string): void {
    this.activeSites.set(service, site);
    this.index = new VerdictIndex(this.config, this.activeSites);
    this.updateVerdicts();
  }

  /** The site serving a service now. */
  activeSite(service: string): string | undefined {
    return this.activeSites.get(service) ?? this.config.services[service]?.activeSite;
  }

  /** Current service and site verdicts. */
  get current(): Verdicts {
    if (this.stale) this.updateVerdicts();
    return this.verdicts;
  }

  /** Called with the new verdicts whenever a probe changes state. */
  onVerdicts(listener: (v: Verdicts) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** The state of one probe, or undefined. */
  state(id: string): ProbeState | undefined {
    return this.states.get(id);
  }

  /** Every probe with its state and last result. */
  probes(): ProbeStatus[] {
    return this.config.probes.map((p) => {
      const s = this.states.get(p.id)!;
      return {
        id: p.id,
        kind: p.kind,
        site: p.site,
        services: p.services,
        state: s.state,
        since: iso(s.since),
        ...(s.failingSince !== undefined ? { failingSince: iso(s.failingSince) } : {}),
        consecutiveFailures: s.consecutiveFailures,
        ...(s.last
          ? {
              last: {
                ok: s.last.ok,
                reason: s.last.reason,
                durationSeconds: Number(s.last.durationSeconds.toFixed(4)),
                at: iso(s.last.startedAt),
                observed: summarize(s.last.observed),
              },
            }
          : {}),
        ...(s.lastFailure ? { lastFailure: { reason: s.lastFailure.reason, at: iso(s.lastFailure.startedAt) } } : {}),
      };
    });
  }

  /** Probes the local scheduler runs. */
  get scheduledHere(): number {
    return this.scheduler.size;
  }

  /** Probe runs in progress. */
  get running(): number {
    return this.scheduler.running;
  }

  /** Stops scheduling; in-flight runs get `graceMs` to finish, then are aborted. */
  stop(graceMs: number): Promise<void> {
    return this.scheduler.stop(graceMs);
  }

  private record({ probe, result, lagSeconds }: RunReport, mine: boolean): void {
    const state = this.states.get(probe.id);
    if (!state) return; // removed by a reload while it ran
    // A result older than the one held (a shared run that arrived late) changes nothing.
    if (state.last && result.startedAt < state.last.startedAt) return;
    const m = this.metrics;
    if (mine) {
      // Runs of this instance only: summed over the instances, they count each run once.
      m.scheduleLag.observe(lagSeconds);
      m.probeDuration.observe({ kind: probe.kind }, result.durationSeconds);
      m.probeRuns.inc({ probe: probe.id, result: result.ok ? 'success' : 'failure' });
    }
    m.probeSuccess.set({ probe: probe.id, kind: probe.kind, site: probe.site }, result.ok ? 1 : 0);
    m.probeLastRun.set({ probe: probe.id }, result.startedAt / 1000);
    this.observe(probe, result);
    const t = state.record(result);
    m.probeFailingSince.set({ probe: probe.id }, state.failingSince !== undefined ? state.failingSince / 1000 : 0);
    if (!t) return;
    m.setProbeState(probe.id, probe.site, t.to);
    const fields = { probe: probe.id, kind: probe.kind, site: probe.site, from: t.from, to: t.to, reason: t.reason };
    if (t.to === 'DOWN') this.log.error({ ...fields, failingSince: iso(t.failingSince!) }, 'probe state changed');
    else if (t.to === 'PENDING') this.log.warn(fields, 'probe state changed');
    else this.log.info(fields, 'probe state changed');
    // Many probes change together (a start, a site going down): verdicts are computed once for
    // the whole batch, after the results of this turn of the event loop are recorded.
    if (!this.stale) {
      this.stale = true;
      setImmediate(() => {
        if (this.stale) this.updateVerdicts();
      });
    }
  }

  /** Metrics some probers' observations feed: replication lag, certificate expiry, backup age, size and count. */
  private observe(probe: ProbeConfig, result: ProbeResult): void {
    const o = result.observed;
    if (typeof o.lag_seconds === 'number') this.metrics.replicationLagSeconds.set({ probe: probe.id, site: probe.site }, o.lag_seconds);
    if (typeof o.lag_bytes === 'number') this.metrics.replicationLagBytes.set({ probe: probe.id, site: probe.site }, o.lag_bytes);
    if (typeof o.cert_days_left === 'number') this.metrics.tlsCertExpiry.set({ probe: probe.id }, o.cert_days_left * 86400);
    if (typeof o.newest_age_seconds === 'number') this.metrics.backupAge.set({ probe: probe.id }, o.newest_age_seconds);
    if (typeof o.newest_size_bytes === 'number') this.metrics.backupSize.set({ probe: probe.id }, o.newest_size_bytes);
    if (typeof o.backup_count === 'number') this.metrics.backupCount.set({ probe: probe.id }, o.backup_count);
  }

  private updateVerdicts(): void {
    this.stale = false;
    const before = this.verdicts;
    const after = this.index.compute(this.states);
    this.verdicts = after;
    const m = this.metrics;
    for (const v of Object.values(after.services)) {
      const value = up(v.verdict);
      if (value === undefined) m.serviceUp.remove({ service: v.service });
      else m.serviceUp.set({ service: v.service }, value);
      for (const [site, sv] of Object.entries(v.sites)) {
        const sVal = up(sv);
        if (sVal === undefined) m.serviceSiteUp.remove({ service: v.service, site });
        else m.serviceSiteUp.set({ service: v.service, site }, sVal);
      }
      const prev = before.services[v.service]?.verdict;
      if (prev !== undefined && prev !== v.verdict) {
        const fields = { service: v.service, site: v.activeSite, from: prev, to: v.verdict, downProbes: v.downProbes };
        if (v.verdict === 'DOWN')
          this.log.error({ ...fields, outageStart: v.outageStart && iso(v.outageStart) }, 'service verdict changed');
        else this.log.info(fields, 'service verdict changed');
      }
    }
    for (const [site, v] of Object.entries(after.sites)) {
      const value = up(v);
      if (value === undefined) m.siteUp.remove({ site });
      else m.siteUp.set({ site }, value);
    }
    for (const l of this.listeners) l(after);
  }
}

/**
 * Which skipped runs to warn about: the first of a probe's, then at most one a minute, each saying
 * how many were skipped since the last warning. A saturated instance skips many runs a second; a log
 * line for each would bury everything else (continuity_probe_skipped_total counts them all).
 */
export class SkipWarnings {
  private readonly last = new Map<string, { at: number; count: number }>();

  constructor(
    private readonly everyMs = 60_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** Records a skipped run; returns how many to report now (0: stay quiet). */
  skip(probe: string): number {
    const t = this.now();
    const entry = this.last.get(probe);
    if (!entry) {
      this.last.set(probe, { at: t, count: 0 });
      return 1;
    }
    entry.count++;
    if (t - entry.at < this.everyMs) return 0;
    const count = entry.count;
    entry.at = t;
    entry.count = 0;
    return count;
  }
}
