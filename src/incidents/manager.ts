import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { FencedError, fencedWrite } from '../cluster/fence.js';
import { requiredVotes, type VantageViews } from '../cluster/vantage.js';
import type { Config, Service } from '../config/load.js';
import { formatDuration } from '../duration.js';
import type { Monitor } from '../health/monitor.js';
import type { Metrics } from '../metrics.js';
import type { Executor } from '../runbooks/executor.js';
import { TERMINAL } from '../runbooks/store.js';
import { lsnDiff } from './lsn.js';
import { IncidentNotifier, newNotificationState, type NotificationState } from './notifier.js';
import { buildIncidentReport, type IncidentReport } from './report.js';

/** One outage of one service, from outage start to verified recovery. */
export interface Incident {
  id: string;
  /** incident (absent in records written before drills existed) or drill: a rehearsal that changes nothing. */
  kind?: 'incident' | 'drill';
  service: string;
  status: 'open' | 'failing_over' | 'verifying' | 'failover_failed' | 'closed';
  /** The first failed probe run of the outage, ms since the epoch: RTO counts from here. */
  outageStart: number;
  openedAt: number;
  /** The last decision, one sentence, with its evidence. */
  decision?: Decision;
  decisions: number;
  executionId?: string;
  failoverStartedAt?: number;
  executionFinishedAt?: number;
  verifiedAt?: number;
  closedAt?: number;
  closeReason?: string;
  rto?: RtoPhases;
  rpo?: { bytes?: number; seconds?: number; method: string };
  timeline: Array<{ at: number; type: string; message: string }>;
  /** Who was told, acknowledgement, customer notice. */
  notifications: NotificationState;
  /** When an engineer expects the service back (a repair estimate), ms since the epoch. */
  forecastEnd?: number;
  /** Who asked for a drill. */
  requestedBy?: string;
  /** Alerts from outside (Alertmanager) recorded on the incident, by fingerprint: their last known state. */
  alerts?: Record<string, ExternalAlert>;
}

/** An alert from outside (an Alertmanager webhook), reduced to what an incident keeps. */
export interface ExternalAlert {
  /** Where it came from, e.g. alertmanager. */
  source: string;
  fingerprint: string;
  alertname: string;
  status: 'firing' | 'resolved';
  summary?: string;
  /** ms since the epoch. */
  startsAt: number;
  /** When a resolved alert ended, ms since the epoch. */
  endsAt?: number;
}

/** What raiseExternal did with one alert. */
export interface ExternalOutcome {
  action: 'opened' | 'joined' | 'recorded' | 'ignored';
  incident?: string;
  reason?: string;
}

/** A drill refused: the API answers with the status. */
export class DrillError extends Error {
  constructor(
    readonly status: 400 | 404 | 409 | 503,
    message: string,
  ) {
    super(message);
  }
}

/** RTO achieved and its phases, seconds. */
export interface RtoPhases {
  total: number;
  detection: number;
  decision: number;
  approval_wait: number;
  runbook: number;
  verification: number;
}

/** Why Continuity failed over or not: one sentence, logged once, kept with its evidence. */
export interface Decision {
  at: number;
  action: 'failover' | 'wait' | 'none';
  sentence: string;
  evidence: Record<string, unknown>;
}

export interface IncidentOptions {
  redis: Redis;
  monitor: Monitor;
  executor: () => Executor | undefined;
  config: () => Config;
  log: Logger;
  metrics: Metrics;
  /** How often open incidents are looked at again (ms). */
  tickMs?: number;
  /**
   * When instances share the Redis: the leader lease. Only the leader decides (ticks, drills,
   * alerts, acknowledgements) and its records carry its fencing token: a deposed leader's late
   * write is refused. Without it (one instance), this manager always decides, unfenced.
   */
  lease?: { token: number | undefined; holder(): Promise<{ instanceId: string } | undefined> };
  /**
   * Every instance's fresh view of a service's primary_down probes (the vantage board). Without it
   * (or when it cannot be read), this instance is the only vantage point among the monitors.
   */
  vantage?: (probes: string[]) => Promise<VantageViews>;
}

const KEY = '{continuity}:incidents';
const ACTIVE_SITE = (s: string) => `{continuity}:active-site:${s}`;
const MAINTENANCE = (s: string) => `{continuity}:maintenance:${s}`;
const LAST_FAILOVER = (s: string) => `{continuity}:last-failover:${s}`;
/**
 * What the incident gauges show, written by the leader with every incident it saves: the other
 * instances read this small record to keep their own /metrics current, instead of every incident.
 */
const GAUGES_KEY = '{continuity}:incident-gauges';

/** A recovered incident's RTO and RPO achieved, and when it closed (ms since the epoch). */
interface Achieved {
  at: number;
  rto: RtoPhases;
  rpo?: { bytes?: number; seconds?: number };
}

/** What a closed incident achieved, if it recovered (it has an RTO). */
function achievedOf(i: Incident): Achieved | undefined {
  if (!i.rto) return undefined;
  return { at: i.closedAt ?? 0, rto: i.rto, ...(i.rpo ? { rpo: { bytes: i.rpo.bytes, seconds: i.rpo.seconds } } : {}) };
}

/** The record under GAUGES_KEY. */
interface IncidentGauges {
  open: number;
  /** ms since the epoch, per service. */
  lastDrill: Record<string, number>;
  achieved: Record<string, Achieved>;
}

/** An alert counts as firing until its sender says it is resolved. */
const isFiring = (a: ExternalAlert) => a.status === 'firing';

/** A replica that heard from its primary this recently is taken to still see it alive. */
const FRESH_MESSAGE_SECONDS = 10;

/**
 * Turns a service's verdict into incidents and failover decisions. It opens an incident when a
 * probe of the failover policy's `primary_down` goes DOWN, decides (and says why in one sentence)
 * whether the primary truly cannot serve, starts the failover runbook with the incident as its
 * idempotency key, follows the execution, moves the service's active site, closes the incident when
 * the public endpoint at the DR site is verified UP, and records RTO and RPO achieved.
 */
export class IncidentManager {
  private readonly open = new Map<string, Incident>();
  /** Drills whose execution is still running, by incident id. */
  private readonly drills = new Map<string, Incident>();
  /** When each service's last successful drill finished, ms since the epoch. */
  private readonly lastDrill = new Map<string, number>();
  /** The last recovered incident's RTO and RPO, per service. */
  private readonly achieved = new Map<string, Achieved>();
  private timer: NodeJS.Timeout | undefined;
  private busy = false;
  private unsubscribe: (() => void) | undefined;
  private readonly notifier: IncidentNotifier;

  constructor(private readonly opts: IncidentOptions) {
    this.notifier = new IncidentNotifier(opts.config, opts.log);
  }

  /** Loads incidents and active sites; decides from now on unless a lease says another instance leads. */
  async start(): Promise<void> {
    await this.load();
    if (this.leading) this.startTicking();
  }

  /** This instance was elected: the state is read again (the previous leader changed it) and decisions start. */
  async lead(): Promise<void> {
    this.stop();
    await this.load();
    if (this.leading) this.startTicking();
  }

  /** This instance no longer leads: no more decisions here. */
  stepDown(): void {
    this.stop();
  }

  private get leading(): boolean {
    return !this.opts.lease || this.opts.lease.token !== undefined;
  }

  /** Refuses a change on an instance that does not lead (its incidents in memory are not the leader's). */
  private async mustLead(): Promise<void> {
    if (this.leading) return;
    const holder = await this.opts.lease!.holder().catch(() => undefined);
    throw new DrillError(
      503,
      `this instance does not lead: incidents are decided by the leader${holder ? ` (${holder.instanceId})` : ' (none elected yet)'}; send it there`,
    );
  }

  private startTicking(): void {
    this.unsubscribe = this.opts.monitor.onVerdicts(() => void this.tick());
    this.timer = setInterval(() => void this.tick(), this.opts.tickMs ?? 1000);
  }

  private async load(): Promise<void> {
    this.open.clear();
    this.drills.clear();
    this.lastDrill.clear();
    this.achieved.clear();
    const raw = await this.opts.redis.hgetall(KEY);
    for (const v of Object.values(raw)) {
      const i = JSON.parse(v) as Incident;
      i.notifications ??= newNotificationState();
      if (i.kind === 'drill') {
        if (i.status === 'failing_over') this.drills.set(i.id, i);
        else if (i.status === 'closed' && i.executionFinishedAt)
          this.lastDrill.set(i.service, Math.max(i.executionFinishedAt, this.lastDrill.get(i.service) ?? 0));
      } else if (i.status !== 'closed') this.open.set(i.service, i);
      else {
        const a = achievedOf(i);
        if (a && a.at >= (this.achieved.get(i.service)?.at ?? -1)) this.achieved.set(i.service, a);
      }
    }
    await this.loadActiveSites();
    // Every instance shows what is stored (the leader's ticks keep its own current).
    this.updateGauges();
    this.updateDrillGauges();
    this.updateAchievedGauges();
  }

  private async loadActiveSites(): Promise<void> {
    for (const s of Object.values(this.opts.config().services)) {
      const site = await this.opts.redis.get(ACTIVE_SITE(s.id));
      if (site && site in this.opts.config().sites && site !== this.opts.monitor.activeSite(s.id))
        this.opts.monitor.setActiveSite(s.id, site);
    }
  }

  /**
   * On an instance that does not lead: the incident gauges and the active sites as the leader last
   * wrote them, so every instance's /metrics and status say the same (Prometheus scrapes them all).
   */
  async followLeader(): Promise<void> {
    if (this.leading) return;
    const raw = await this.opts.redis.get(GAUGES_KEY);
    await this.loadActiveSites();
    if (!raw) return;
    const g = JSON.parse(raw) as IncidentGauges;
    this.opts.metrics.incidentsOpen.set(g.open);
    this.lastDrill.clear();
    for (const [service, at] of Object.entries(g.lastDrill)) this.lastDrill.set(service, at);
    this.updateDrillGauges();
    this.achieved.clear();
    for (const [service, a] of Object.entries(g.achieved)) this.achieved.set(service, a);
    this.updateAchievedGauges();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    this.unsubscribe?.();
    this.unsubscribe = undefined;
  }

  /** Every incident, newest first. */
  async list(): Promise<Incident[]> {
    const raw = await this.opts.redis.hgetall(KEY);
    return Object.values(raw)
      .map((v) => JSON.parse(v) as Incident)
      .sort((a, b) => b.openedAt - a.openedAt);
  }

  async get(id: string): Promise<Incident | undefined> {
    const raw = await this.opts.redis.hget(KEY, id);
    return raw ? (JSON.parse(raw) as Incident) : undefined;
  }

  /** Someone has the incident in hand: the escalation chain stops. */
  async acknowledge(id: string, by: string): Promise<Incident | undefined> {
    await this.mustLead();
    const incident = [...this.open.values()].find((i) => i.id === id);
    if (!incident) return undefined;
    if (!incident.notifications.acknowledged) {
      incident.notifications.acknowledged = { by, at: Date.now() };
      this.event(incident, 'acknowledged', `acknowledged by ${by}`);
      await this.save(incident);
    }
    return incident;
  }

  /** An engineer's estimate of when the service is back; past the customer-notice threshold, customers are told now. */
  async forecast(id: string, repairMs: number, by: string): Promise<Incident | undefined> {
    await this.mustLead();
    const incident = [...this.open.values()].find((i) => i.id === id);
    if (!incident) return undefined;
    incident.forecastEnd = Date.now() + repairMs;
    this.event(incident, 'forecast', `${by} expects the service back by ${new Date(incident.forecastEnd).toISOString()}`);
    await this.save(incident);
    await this.escalate(incident);
    return incident;
  }

  private async escalate(incident: Incident): Promise<void> {
    const summary = incident.decision?.sentence ?? `${incident.service} is down since ${new Date(incident.outageStart).toISOString()}`;
    const lines = await this.notifier.escalate(incident, summary);
    if (lines.length === 0) return;
    for (const line of lines) this.event(incident, 'notification', line);
    await this.save(incident);
  }

  /** Puts a service in maintenance: incidents still open, nothing runs. */
  async setMaintenance(service: string, until: number, reason: string, by: string): Promise<void> {
    await this.opts.redis.set(MAINTENANCE(service), JSON.stringify({ until, reason, by }), 'PX', Math.max(1, until - Date.now()));
  }

  /**
   * Says which site serves a service now, after a failback done by hand (or to correct the record):
   * the active site is kept in Redis, and a failover moves it to the DR site by itself, but nothing
   * moves it back. Refused while the service has an incident under way (its failover may still
   * move it). Returns the site it was served from.
   */
  async setActiveSite(service: string, site: string): Promise<{ was: string }> {
    await this.mustLead();
    const config = this.opts.config();
    if (!config.services[service]) throw new DrillError(404, `no service ${service}`);
    if (!(site in config.sites)) throw new DrillError(400, `unknown site "${site}" (sites: ${Object.keys(config.sites).join(', ')})`);
    const open = this.open.get(service);
    if (open && open.status !== 'open')
      throw new DrillError(409, `${service} has an incident under way (${open.id}, ${open.status}): wait until it is closed`);
    const was = this.opts.monitor.activeSite(service) ?? site;
    await this.write([['set', ACTIVE_SITE(service), site]]);
    this.opts.monitor.setActiveSite(service, site);
    this.opts.log.warn({ service, from: was, to: site }, 'active site set by an operator');
    return { was };
  }

  async clearMaintenance(service: string): Promise<void> {
    await this.opts.redis.del(MAINTENANCE(service));
  }

  async maintenance(service: string): Promise<{ until: number; reason: string; by: string } | undefined> {
    const raw = await this.opts.redis.get(MAINTENANCE(service));
    return raw ? JSON.parse(raw) : undefined;
  }

  /**
   * A drill: the service's failover runbook (its pinned version, its inputs with `drill_inputs`
   * on top) runs in drill mode, recorded like an incident (kind drill) with its timeline and the
   * RTO it would have taken. It never moves the active site, never starts the failover cool-down,
   * never counts as a failover and tells nobody (the runbook's own notify steps say [DRILL]).
   * Refused while the service has an open incident or a drill running.
   */
  async drill(service: string, by: string): Promise<{ incident: Incident; executionId: string }> {
    await this.mustLead();
    const svc = this.opts.config().services[service];
    if (!svc) throw new DrillError(404, `no service ${service}`);
    const f = svc.failover;
    if (!f) throw new DrillError(409, `service ${service} has no failover policy: nothing to drill`);
    const open = this.open.get(service);
    if (open) throw new DrillError(409, `${service} has an open incident ${open.id}: no drill until it is closed`);
    const running = [...this.drills.values()].find((d) => d.service === service);
    if (running) throw new DrillError(409, `a drill of ${service} is running: ${running.id}`);
    // Safe by default: a drill runs every step not marked `drill: skip`, and with the service's own
    // inputs those act on production (failover-postgres v1 fences the primary in a drill).
    if (f.drillInputs === undefined)
      throw new DrillError(
        409,
        `services.${service}.failover.drill_inputs is not set: a drill runs every step of ${f.runbook} v${f.version} not marked drill: skip, with the service's own inputs, on production; point those steps at a staging environment in drill_inputs (or set drill_inputs: {} to drill production knowingly)`,
      );
    const executor = this.opts.executor();
    if (!executor) throw new DrillError(503, 'runbooks are not available yet: Redis is not reachable');
    const rb = this.opts.config().runbooks.get(f.runbook, f.version);
    const declared = new Set(rb?.inputs.map((i) => i.name) ?? []);
    const now = Date.now();
    const site = this.opts.monitor.activeSite(service);
    const incident: Incident = {
      id: `${service}-drill-${new Date(now).toISOString().replace(/[-:]/g, '').slice(0, 15)}-${randomUUID().slice(0, 6)}`,
      kind: 'drill',
      service,
      status: 'failing_over',
      outageStart: now,
      openedAt: now,
      decisions: 1,
      timeline: [],
      notifications: newNotificationState(),
      requestedBy: by,
    };
    const inputs: Record<string, unknown> = { ...f.inputs, ...f.drillInputs };
    if (declared.has('require_approval')) inputs.require_approval = f.mode === 'approval';
    if (declared.has('data_at_risk')) inputs.data_at_risk = 'none';
    if (declared.has('incident')) inputs.incident = incident.id;
    const sentence = `${service}: drill requested by ${by}: running ${f.runbook} v${f.version} in drill mode${f.drillInputs ? ` with drill inputs ${Object.keys(f.drillInputs).join(', ')}` : ''}; the active site stays ${site}`;
    incident.decision = { at: now, action: 'failover', sentence, evidence: { drill: true, by, activeSite: site } };
    this.event(incident, 'opened', `drill of ${service} requested by ${by}`);
    this.event(incident, 'decision', sentence);
    const { execution } = await executor.startExecution(
      { runbook: f.runbook, version: f.version, mode: 'drill', inputs, idempotencyKey: incident.id },
      { name: by, roles: ['operator'] },
    );
    incident.executionId = execution.id;
    incident.failoverStartedAt = Date.now();
    this.event(incident, 'drill_started', `execution ${execution.id} of ${f.runbook} v${f.version} (drill)`);
    this.drills.set(incident.id, incident);
    this.opts.log.info({ incident: incident.id, service, execution: execution.id, by }, 'drill started');
    await this.save(incident);
    return { incident, executionId: execution.id };
  }

  /** A drill's execution finished: its timeline joins the drill's, RTO is measured, and nothing else changes. */
  private async followDrill(drill: Incident): Promise<void> {
    const executor = this.opts.executor();
    if (!executor || !drill.executionId) return;
    const rec = await executor.store.get(drill.executionId);
    if (!rec || !TERMINAL.has(rec.status)) return;
    const view = await executor.view(rec.id).catch(() => undefined);
    const now = Date.now();
    const end = rec.finishedAt ?? now;
    drill.executionFinishedAt = end;
    for (const e of view?.timeline ?? []) drill.timeline.push({ at: Date.parse(e.at), type: `runbook.${e.type}`, message: e.message });
    const approvalWait = (view?.steps ?? [])
      .filter((st) => st.kind === 'approval' && st.requestedAt && st.finishedAt)
      .reduce((sum, st) => sum + (st.finishedAt! - st.requestedAt!) / 1000, 0);
    const execStart = view?.execution.createdAt ?? drill.failoverStartedAt ?? drill.openedAt;
    // Nothing was detected or switched: detection and verification are 0; the RTO a drill shows is
    // what the runbook (with its approvals) took from the drill's start.
    drill.rto = {
      total: (end - drill.outageStart) / 1000,
      detection: 0,
      decision: Math.max(0, (execStart - drill.openedAt) / 1000),
      approval_wait: approvalWait,
      runbook: Math.max(0, (end - execStart) / 1000 - approvalWait),
      verification: 0,
    };
    drill.closedAt = now;
    const site = this.opts.monitor.activeSite(drill.service);
    if (rec.status === 'succeeded') {
      drill.status = 'closed';
      drill.closeReason = `drill succeeded: execution ${rec.id}; the active site stays ${site}`;
      this.lastDrill.set(drill.service, Math.max(end, this.lastDrill.get(drill.service) ?? 0));
    } else {
      drill.status = 'failover_failed';
      drill.closeReason = `drill failed: execution ${rec.id} ${rec.status}: ${rec.reason ?? ''}`;
    }
    this.event(drill, 'closed', drill.closeReason);
    drill.timeline.sort((a, b) => a.at - b.at);
    this.drills.delete(drill.id);
    this.opts.log.info({ incident: drill.id, service: drill.service, status: rec.status, rto: drill.rto }, 'drill finished');
    await this.save(drill);
    this.updateDrillGauges();
  }

  /** The report of an incident or drill: its record, the service's targets, and its execution's steps and approvals. */
  async report(id: string): Promise<IncidentReport | undefined> {
    const incident = await this.get(id);
    if (!incident) return undefined;
    const view = incident.executionId
      ? await this.opts
          .executor()
          ?.view(incident.executionId)
          .catch(() => undefined)
      : undefined;
    return buildIncidentReport(incident, this.opts.config().services[incident.service], view);
  }

  /** continuity_drill_last_success_timestamp_seconds for every service with a failover policy (0: never drilled). */
  private updateDrillGauges(): void {
    for (const svc of Object.values(this.opts.config().services)) {
      if (!svc.failover) continue;
      this.opts.metrics.drillLastSuccess.set({ service: svc.id }, (this.lastDrill.get(svc.id) ?? 0) / 1000);
    }
  }

  /** Looks at every service with a failover policy; one pass at a time. */
  async tick(): Promise<void> {
    if (this.busy || !this.leading) return;
    this.busy = true;
    try {
      for (const svc of Object.values(this.opts.config().services)) {
        if (!svc.failover) continue;
        await this.evaluate(svc).catch((err: Error) =>
          err instanceof FencedError
            ? this.opts.log.warn({ service: svc.id, token: err.token }, 'fenced: a newer leader holds the lease')
            : this.opts.log.error({ service: svc.id, err: err.message }, 'incident evaluation failed'),
        );
        const open = this.open.get(svc.id);
        if (open)
          await this.escalate(open).catch((err: Error) =>
            this.opts.log.error({ incident: open.id, err: err.message }, 'notification failed'),
          );
      }
      for (const drill of [...this.drills.values()])
        await this.followDrill(drill).catch((err: Error) =>
          this.opts.log.error({ incident: drill.id, err: err.message }, 'drill follow-up failed'),
        );
      this.updateRpoExposure();
      this.updateDrillGauges();
    } finally {
      this.busy = false;
    }
  }

  private async evaluate(svc: Service): Promise<void> {
    const f = svc.failover!;
    const m = this.opts.monitor;
    const config = this.opts.config();
    let incident = this.open.get(svc.id);
    const down = f.primaryDown.filter((id) => m.state(id)?.state === 'DOWN');
    const activeSite = m.activeSite(svc.id);

    if (!incident) {
      if (down.length === 0 || activeSite !== config.primarySite) return;
      const starts = down.map((id) => m.state(id)!.failingSince).filter((t): t is number => t !== undefined);
      incident = await this.openIncident(
        svc,
        starts.length ? Math.min(...starts) : Date.now(),
        (start) => `${svc.id}: ${down.join(', ')} DOWN; outage started ${start}`,
        { down },
      );
    }

    if (incident.status === 'open') {
      const firing = Object.values(incident.alerts ?? {}).filter(isFiring);
      if (down.length === 0 && firing.length === 0) {
        const alerted = Object.keys(incident.alerts ?? {}).length > 0;
        await this.close(
          incident,
          alerted
            ? 'the primary recovered before any failover (no primary_down probe DOWN, no alert firing)'
            : 'the primary recovered before any failover',
          false,
        );
        return;
      }
      await this.decide(svc, incident, down, firing);
      return;
    }
    if (incident.status === 'failing_over') {
      await this.follow(svc, incident);
      return;
    }
    if (incident.status === 'verifying') {
      const v = m.state(f.verify);
      if (v?.state === 'UP') {
        incident.verifiedAt = Date.now();
        await this.close(incident, `verified: ${f.verify} UP at the ${activeSite} site`, true);
      }
    }
  }

  /** A new incident of a service, saved and logged; `message` gets the outage start. */
  private async openIncident(
    svc: Service,
    outageStart: number,
    message: (start: string) => string,
    log: Record<string, unknown>,
  ): Promise<Incident> {
    const now = Date.now();
    const incident: Incident = {
      id: `${svc.id}-${new Date(now).toISOString().replace(/[-:]/g, '').slice(0, 15)}-${randomUUID().slice(0, 6)}`,
      kind: 'incident',
      service: svc.id,
      status: 'open',
      outageStart,
      openedAt: now,
      decisions: 0,
      timeline: [],
      notifications: newNotificationState(),
    };
    this.open.set(svc.id, incident);
    const start = new Date(incident.outageStart).toISOString();
    this.event(incident, 'opened', message(start));
    this.opts.log.error({ incident: incident.id, service: svc.id, ...log, outageStart: start }, 'incident opened');
    await this.save(incident);
    return incident;
  }

  /**
   * An alert from outside (Alertmanager) about a service. A firing alert opens the service's
   * incident, or joins the open one; either way it is recorded on the timeline, and the incident
   * then takes the same decision path as one opened by probes (the alert counts as evidence that
   * the primary cannot serve, as a DOWN primary_down probe does). A resolved alert is recorded and
   * no longer counts, but closes nothing by itself: an incident closes, as always, when nothing
   * says the primary is down (no probe DOWN, no alert firing) before any failover, or when the
   * DR endpoint is verified after one. A repeated notification of an alert in the same state is
   * not recorded again.
   */
  async raiseExternal(service: string, alert: ExternalAlert): Promise<ExternalOutcome> {
    await this.mustLead();
    const svc = this.opts.config().services[service];
    if (!svc) return { action: 'ignored', reason: `no service ${service}` };
    if (!svc.failover) return { action: 'ignored', reason: `service ${service} has no failover policy: it has no incidents` };
    const what = `${alert.alertname} (${alert.source}, fingerprint ${alert.fingerprint})${alert.summary ? `: ${alert.summary}` : ''}`;
    let incident = this.open.get(service);
    let action: ExternalOutcome['action'] = 'joined';
    if (!incident) {
      if (alert.status === 'resolved') return { action: 'ignored', reason: `resolved, and ${service} has no open incident` };
      const site = this.opts.monitor.activeSite(service);
      if (site !== this.opts.config().primarySite)
        return {
          action: 'ignored',
          reason: `${service} is served from the ${site} site: incidents open only while the primary site serves (failback is by hand)`,
        };
      incident = await this.openIncident(
        svc,
        Math.min(alert.startsAt, Date.now()),
        (start) => `${service}: alert ${what} firing; outage started ${start}`,
        { alert: alert.alertname, fingerprint: alert.fingerprint },
      );
      action = 'opened';
    }
    const alerts = (incident.alerts ??= {});
    const before = alerts[alert.fingerprint];
    alerts[alert.fingerprint] = alert;
    if (before?.status === alert.status) {
      await this.save(incident);
      return { action: 'recorded', incident: incident.id, reason: `already recorded as ${alert.status}` };
    }
    this.event(incident, `alert_${alert.status}`, `alert ${what} ${alert.status}`);
    this.opts.log.warn({ incident: incident.id, service, alert: alert.alertname, status: alert.status }, 'alert recorded');
    await this.save(incident);
    void this.tick();
    return { action: alert.status === 'resolved' ? 'recorded' : action, incident: incident.id };
  }

  /** The decision: fail over now, wait, or never; one sentence with its evidence, logged when it changes. */
  private async decide(svc: Service, incident: Incident, down: string[], alerts: ExternalAlert[] = []): Promise<void> {
    const f = svc.failover!;
    const m = this.opts.monitor;
    const now = Date.now();
    // The threshold that was crossed, not the running count: the sentence stays the same while nothing changes.
    const downDesc = [
      ...down.map((id) => `${id} DOWN ${m.state(id)!.failureThreshold}/${m.state(id)!.failureThreshold}`),
      ...alerts.map((a) => `alert ${a.alertname} firing (${a.source})`),
    ].join(', ');
    // The other Continuity instances: how many have a fresh view of the primary, how many see it DOWN.
    const views = down.length && this.opts.vantage ? await this.opts.vantage(f.primaryDown).catch(() => undefined) : undefined;
    const monitors = views && views.instances.length > 0 ? views : undefined;
    if (monitors) {
      this.opts.metrics.vantageInstances.set({ service: svc.id, view: 'down' }, monitors.down.length);
      this.opts.metrics.vantageInstances.set({ service: svc.id, view: 'up' }, monitors.instances.length - monitors.down.length);
    }
    const onInstances =
      monitors && monitors.instances.length > 1 ? ` on ${monitors.down.length} of ${monitors.instances.length} instances` : '';
    const replica = m.state(f.replica);
    const ro = replica?.last?.observed ?? {};
    const streaming = ro.wal_receiver_streaming === true;
    const lastMsgAge = typeof ro.wal_receiver_last_msg_age_seconds === 'number' ? ro.wal_receiver_last_msg_age_seconds : undefined;
    const primaryObs = f.primaryDb ? m.state(f.primaryDb)?.lastSuccess?.observed : undefined;
    const lagSeconds = Math.max(Number(ro.lag_seconds ?? 0), Number(primaryObs?.lag_seconds ?? 0));
    const lagBytes = Math.max(Number(ro.lag_bytes ?? 0), Number(primaryObs?.lag_bytes ?? 0));
    const evidence: Record<string, unknown> = {
      down,
      ...(alerts.length ? { alerts: alerts.map((a) => ({ alertname: a.alertname, fingerprint: a.fingerprint, source: a.source })) } : {}),
      // The instances that see a probe DOWN (at least this one), the alert's sender (another monitor), the replica.
      vantagePoints: (down.length ? Math.max(1, monitors?.down.length ?? 1) : 0) + (alerts.length ? 1 : 0) + (replica?.last ? 1 : 0),
      ...(monitors ? { instances: monitors.instances, instancesSeeingDown: monitors.down, vantageQuorum: f.vantageQuorum } : {}),
      replica: f.replica,
      replicaState: replica?.state,
      replicaStreaming: streaming,
      replicaLastMessageAgeSeconds: lastMsgAge,
      exposureSeconds: lagSeconds,
      exposureBytes: lagBytes,
      primaryLastLsn: primaryObs?.wal_lsn,
      replicaReplayLsn: ro.wal_lsn,
    };
    const say = async (action: Decision['action'], sentence: string) => {
      const changed = incident.decision?.sentence !== sentence;
      incident.decision = { at: now, action, sentence, evidence };
      if (changed) {
        incident.decisions++;
        this.event(incident, 'decision', sentence);
        this.opts.log.warn({ incident: incident.id, service: svc.id, action, evidence }, sentence);
        await this.save(incident);
      }
    };

    const maint = await this.maintenance(svc.id);
    if (maint)
      return say(
        'none',
        `${svc.id}: ${downDesc}; in maintenance until ${new Date(maint.until).toISOString()} (${maint.reason}): no action`,
      );
    const last = Number((await this.opts.redis.get(LAST_FAILOVER(svc.id))) ?? 0);
    if (last && now - last < f.cooldownMs) {
      return say(
        'none',
        `${svc.id}: ${downDesc}; last failover ${formatDuration(now - last)} ago, within the ${formatDuration(f.cooldownMs)} cool-down: no action`,
      );
    }
    if (monitors) {
      const need = requiredVotes(f.vantageQuorum, monitors.instances.length);
      const k = monitors.down.length;
      const n = monitors.instances.length;
      const reaching = monitors.reaching;
      // Reaching instances that would leave the quorum out of reach even if every other one saw it DOWN.
      if (k < need && n - reaching.length < need)
        return say(
          'none',
          `${svc.id}: monitor path degraded: ${downDesc} on ${k} of ${n} instances, but ${reaching.join(', ')} still ${reaching.length > 1 ? 'reach' : 'reaches'} the primary (quorum ${f.vantageQuorum}: ${need}): no failover`,
        );
      if (k < need)
        return say(
          'wait',
          `${svc.id}: ${downDesc} on ${k} of ${n} instances; quorum ${f.vantageQuorum} needs ${need}: waiting for more instances`,
        );
    }
    if (!replica?.last)
      return say('wait', `${svc.id}: ${downDesc}; no result yet from replica ${f.replica}: waiting for a second vantage point`);
    if (replica.state === 'DOWN')
      return say('wait', `${svc.id}: ${downDesc}; replica ${f.replica} is DOWN too (${replica.last.reason}): cannot fail over to it`);
    if (streaming && (lastMsgAge === undefined || lastMsgAge < FRESH_MESSAGE_SECONDS)) {
      return say(
        'none',
        `${svc.id}: monitor path degraded: ${downDesc} from this monitor, but replica ${f.replica} still streams from its primary (last message ${lastMsgAge?.toFixed(1) ?? '?'} s ago): no failover`,
      );
    }
    const notReady = f.drReady.filter((id) => m.state(id)?.state !== 'UP');
    if (notReady.length)
      return say(
        'wait',
        `${svc.id}: ${downDesc}; DR not ready: ${notReady.map((id) => `${id} ${m.state(id)?.state ?? 'unknown'}`).join(', ')}`,
      );

    const rpoGuard = lagSeconds * 1000 > svc.rpoMs;
    const needApproval = f.mode === 'approval' || rpoGuard;
    const lost = `lost its primary${lastMsgAge !== undefined ? ` ${lastMsgAge.toFixed(1)} s ago` : ''}`;
    const risk = rpoGuard
      ? `; RPO guard: lag ${lagSeconds.toFixed(1)} s is over the RPO ${formatDuration(svc.rpoMs)}, accept up to ${Math.ceil(lagSeconds)} s of data loss`
      : '';
    const sentence = `${svc.id}: ${downDesc}${onInstances} from ${evidence.vantagePoints} vantage points; replica ${f.replica} ${lost}, lag ${lagBytes} B${risk}; ${needApproval ? 'awaiting approval for' : 'running'} ${f.runbook} v${f.version}`;

    const executor = this.opts.executor();
    if (!executor) return say('wait', `${svc.id}: ${downDesc}; runbooks unavailable (Redis unreachable): waiting`);
    const rb = this.opts.config().runbooks.get(f.runbook, f.version);
    const declared = new Set(rb?.inputs.map((i) => i.name) ?? []);
    const inputs: Record<string, unknown> = { ...f.inputs };
    if (declared.has('require_approval')) inputs.require_approval = needApproval;
    if (declared.has('data_at_risk'))
      inputs.data_at_risk = rpoGuard ? `up to ${Math.ceil(lagSeconds)} s of data (lag ${lagBytes} B)` : 'none';
    if (declared.has('incident')) inputs.incident = incident.id;
    await say('failover', sentence);
    const { execution } = await executor.startExecution(
      { runbook: f.runbook, version: f.version, mode: 'live', inputs, idempotencyKey: incident.id },
      { name: 'continuity', roles: ['operator'] },
    );
    incident.executionId = execution.id;
    incident.failoverStartedAt = now;
    incident.status = 'failing_over';
    this.event(incident, 'failover_started', `execution ${execution.id} of ${f.runbook} v${f.version}`);
    await this.write([['set', LAST_FAILOVER(svc.id), String(now)]]);
    await this.save(incident);
  }

  private async follow(svc: Service, incident: Incident): Promise<void> {
    const executor = this.opts.executor();
    if (!executor || !incident.executionId) return;
    const rec = await executor.store.get(incident.executionId);
    if (rec?.status === 'waiting_approval' && !incident.notifications.approvalsAnnounced.includes(rec.id)) {
      incident.notifications.approvalsAnnounced.push(rec.id);
      const url = this.opts.config().notifications.publicUrl;
      const link = url ? `${url}/api/v1/executions/${rec.id}` : `continuity execution ${rec.id}`;
      const text = `Approval needed for incident ${incident.id}: ${incident.decision?.sentence ?? ''}. Review: ${link}; approve: continuity approve ${rec.id}`;
      for (const line of await this.notifier.tellTold(incident, text, 'critical', 'approval_needed'))
        this.event(incident, 'notification', line);
      await this.save(incident);
    }
    if (rec) await this.announceFailedSteps(incident, executor, rec.id);
    if (!rec || !TERMINAL.has(rec.status)) return;
    incident.executionFinishedAt = rec.finishedAt ?? Date.now();
    // The runbook's own timeline (approvals, each step) joins the incident's, in time order.
    const view = await executor.view(rec.id).catch(() => undefined);
    for (const e of view?.timeline ?? []) incident.timeline.push({ at: Date.parse(e.at), type: `runbook.${e.type}`, message: e.message });
    incident.timeline.sort((a, b) => a.at - b.at);
    if (rec.status !== 'succeeded') {
      incident.status = 'failover_failed';
      this.event(incident, 'failover_failed', `execution ${rec.id} ${rec.status}: ${rec.reason ?? ''}`);
      this.opts.metrics.failovers.inc({ service: svc.id, outcome: rec.status });
      this.opts.log.error({ incident: incident.id, execution: rec.id, status: rec.status }, 'failover did not complete');
      for (const line of await this.notifier.tellTold(
        incident,
        `Failover for incident ${incident.id} did not complete: execution ${rec.id} ${rec.status}: ${rec.reason ?? ''}`,
        'critical',
        'failover_failed',
      )) {
        this.event(incident, 'notification', line);
      }
      await this.save(incident);
      return;
    }
    const dr = Object.entries(this.opts.config().sites).find(([, s]) => s.role === 'dr')?.[0];
    if (dr) {
      await this.write([['set', ACTIVE_SITE(svc.id), dr]]);
      this.opts.monitor.setActiveSite(svc.id, dr);
    }
    incident.status = 'verifying';
    this.event(
      incident,
      'failover_done',
      `execution ${rec.id} succeeded; ${svc.id} now served from ${dr}; verifying ${svc.failover!.verify}`,
    );
    this.opts.metrics.failovers.inc({ service: svc.id, outcome: 'succeeded' });
    await this.save(incident);
  }

  /** Everyone told hears of each failed step of the failover as it happens. */
  private async announceFailedSteps(incident: Incident, executor: Executor, executionId: string): Promise<void> {
    const steps = await executor.store.steps(executionId);
    const done = (incident.notifications.stepFailuresAnnounced ??= []);
    let told = false;
    for (const st of steps.values()) {
      const key = `${executionId}/${st.step}/${st.attempt}`;
      if (st.status !== 'failed' || st.retrying || done.includes(key)) continue;
      done.push(key);
      told = true;
      const text = `Incident ${incident.id}: failover step ${st.step} failed${st.continued ? ' (the runbook goes on)' : ''}: ${st.reason ?? ''}`;
      for (const line of await this.notifier.tellTold(incident, text, 'critical', 'step_failed'))
        this.event(incident, 'notification', line);
    }
    if (told) await this.save(incident);
  }

  private async close(incident: Incident, reason: string, recovered: boolean): Promise<void> {
    const now = Date.now();
    incident.closedAt = now;
    incident.closeReason = reason;
    incident.status = 'closed';
    const svc = this.opts.config().services[incident.service]!;
    if (recovered && incident.executionId && incident.verifiedAt) {
      const view = await this.opts.executor()?.view(incident.executionId);
      const approvalWait = (view?.steps ?? [])
        .filter((s) => s.kind === 'approval' && s.requestedAt && s.finishedAt)
        .reduce((sum, s) => sum + (s.finishedAt! - s.requestedAt!) / 1000, 0);
      const execStart = view?.execution.createdAt ?? incident.failoverStartedAt!;
      const execEnd = incident.executionFinishedAt ?? now;
      incident.rto = {
        total: (incident.verifiedAt - incident.outageStart) / 1000,
        detection: (incident.openedAt - incident.outageStart) / 1000,
        decision: ((incident.failoverStartedAt ?? incident.openedAt) - incident.openedAt) / 1000,
        approval_wait: approvalWait,
        runbook: Math.max(0, (execEnd - execStart) / 1000 - approvalWait),
        verification: (incident.verifiedAt - execEnd) / 1000,
      };
      const ev = incident.decision?.evidence ?? {};
      // What the promoted replica had replayed: a runbook output `replay_lsn` read just before the
      // promotion when there is one (the replica goes on replaying after the decision), else the
      // replica probe's last position at the decision.
      const fromRunbook = (view?.steps ?? []).map((st) => st.outputs?.replay_lsn).find((v): v is string => typeof v === 'string');
      const replayed = fromRunbook ?? (typeof ev.replicaReplayLsn === 'string' ? ev.replicaReplayLsn : undefined);
      const bytes = typeof ev.primaryLastLsn === 'string' && replayed ? lsnDiff(ev.primaryLastLsn, replayed) : undefined;
      incident.rpo = {
        ...(bytes !== undefined ? { bytes } : {}),
        ...(bytes === 0 ? { seconds: 0 } : typeof ev.exposureSeconds === 'number' ? { seconds: ev.exposureSeconds } : {}),
        method:
          bytes === undefined
            ? 'not measurable'
            : `the old primary's last reported WAL position minus the promoted replica's replay position${fromRunbook ? ' before promotion' : ' at the decision'}`,
      };
      this.achieved.set(svc.id, achievedOf(incident)!);
      this.updateAchievedGauges();
    }
    this.event(incident, 'closed', reason);
    const rto = incident.rto ? `; RTO achieved ${Math.round(incident.rto.total)} s` : '';
    for (const line of await this.notifier.tellTold(
      incident,
      `Recovered: incident ${incident.id} closed: ${reason}${rto}`,
      'info',
      'recovered',
    )) {
      this.event(incident, 'notification', line);
    }
    this.opts.log.info(
      { incident: incident.id, service: incident.service, reason, rto: incident.rto, rpo: incident.rpo },
      'incident closed',
    );
    this.open.delete(incident.service);
    await this.save(incident);
  }

  private event(incident: Incident, type: string, message: string): void {
    incident.timeline.push({ at: Date.now(), type, message });
  }

  private async save(incident: Incident): Promise<void> {
    const gauges: IncidentGauges = {
      open: this.open.size,
      lastDrill: Object.fromEntries(this.lastDrill),
      achieved: Object.fromEntries(this.achieved),
    };
    await this.write([
      ['hset', KEY, incident.id, JSON.stringify(incident)],
      ['set', GAUGES_KEY, JSON.stringify(gauges)],
    ]);
    this.updateGauges();
  }

  /** A decision's write: with a lease, only while this instance's token is the leader epoch (else FencedError). */
  private async write(commands: Parameters<typeof fencedWrite>[2]): Promise<void> {
    if (!this.opts.lease) return fencedWrite(this.opts.redis, undefined, commands);
    const token = this.opts.lease.token;
    if (token === undefined) throw new FencedError(0);
    await fencedWrite(this.opts.redis, token, commands);
  }

  private updateGauges(): void {
    this.opts.metrics.incidentsOpen.set(this.open.size);
  }

  /** continuity_rto_achieved_seconds and continuity_rpo_achieved_*: the last recovered incident's, per service. */
  private updateAchievedGauges(): void {
    const m = this.opts.metrics;
    for (const [service, a] of this.achieved) {
      for (const [phase, value] of Object.entries(a.rto)) m.rtoAchieved.set({ service, phase }, value);
      if (a.rpo?.bytes !== undefined) m.rpoAchievedBytes.set({ service }, a.rpo.bytes);
      else m.rpoAchievedBytes.remove({ service });
      if (a.rpo?.seconds !== undefined) m.rpoAchievedSeconds.set({ service }, a.rpo.seconds);
      else m.rpoAchievedSeconds.remove({ service });
    }
  }

  /** Live data at risk per service: the worst replication lag its replica and primary report. */
  private updateRpoExposure(): void {
    for (const svc of Object.values(this.opts.config().services)) {
      const f = svc.failover;
      if (!f) continue;
      const ro = this.opts.monitor.state(f.replica)?.last?.observed ?? {};
      const po = f.primaryDb ? (this.opts.monitor.state(f.primaryDb)?.lastSuccess?.observed ?? {}) : {};
      const seconds = Math.max(Number(ro.lag_seconds ?? 0), Number(po.lag_seconds ?? 0));
      this.opts.metrics.rpoExposure.set({ service: svc.id }, Number.isFinite(seconds) ? seconds : 0);
    }
  }
}
