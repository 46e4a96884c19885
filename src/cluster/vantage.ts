import type { Redis } from 'ioredis';
import type { Config, ProbeConfig } from '../config/load.js';

/** Where each instance says what it sees of a probe's target: field instance → JSON VantageReport. */
export const VANTAGE_KEY = (probe: string) => `{continuity}:vantage:${probe}`;

/** One instance's view of one probe, as it last published it. */
export interface VantageReport {
  state: string;
  /** When that instance last ran the probe, ms since the epoch. */
  at: number;
  /** Whether that last run succeeded (a failing run below the DOWN threshold is not a view yet). */
  ok: boolean;
  /** When the instance published it, ms since the epoch (set by publish). */
  published?: number;
  reason?: string;
}

/** Every instance's fresh view of one service's primary_down probes. */
export interface VantageViews {
  /** Instances with a fresh view of at least one of the probes. */
  instances: string[];
  /** Those of them that see at least one of the probes DOWN. */
  down: string[];
  /** Those whose last runs of every one of the probes succeeded: they still reach the primary. */
  reaching: string[];
}

/** The probes a failover policy relies on: they run from every instance, never shared out. */
export function failoverProbeIds(config: Pick<Config, 'services'>): Set<string> {
  const ids = new Set<string>();
  for (const s of Object.values(config.services)) {
    const f = s.failover;
    if (!f) continue;
    for (const id of [...f.primaryDown, ...f.drReady, f.replica, f.verify, ...(f.primaryDb ? [f.primaryDb] : [])]) ids.add(id);
  }
  return ids;
}

/** The probes whose states are published: the primary_down probes of every failover policy. */
export function vantageProbeIds(config: Pick<Config, 'services'>): Set<string> {
  return new Set(Object.values(config.services).flatMap((s) => s.failover?.primaryDown ?? []));
}

/** How old an observation may be and still count: two runs missed, the run's timeout, and 1 s of publishing cadence. */
export const freshFor = (p: Pick<ProbeConfig, 'intervalMs' | 'timeoutMs'>) => 2 * p.intervalMs + p.timeoutMs + 1000;

/** Instances publish every second: one that has not for this long is gone (dead, stopped, cut off) and does not vote. */
export const PUBLISHED_WITHIN_MS = 2500;

/**
 * How many instances must see the primary DOWN: a majority of those with a fresh view (the
 * default), all of them, or a fixed number (more than the instances up makes the decision wait).
 */
export function requiredVotes(quorum: 'majority' | 'all' | number, instances: number): number {
  if (quorum === 'majority') return Math.floor(instances / 2) + 1;
  if (quorum === 'all') return Math.max(1, instances);
  return quorum;
}

/**
 * The board where instances publish what they see of the probes a failover relies on, so that the
 * leader counts independent vantage points before it decides. Every instance publishes (each second,
 * one pipelined write); an instance that has not published for 2.5 s, or an observation older than
 * two intervals plus the timeout and 1 s, no longer counts, so an
 * instance that died or was cut off stops voting by itself; one that stops cleanly withdraws.
 */
export class VantageBoard {
  constructor(
    private readonly redis: Redis,
    private readonly instanceId: string,
  ) {}

  /** Publishes this instance's views (probes it has no result for yet are left out). */
  async publish(views: Array<{ probe: string; report: VantageReport }>): Promise<void> {
    if (views.length === 0) return;
    const tx = this.redis.multi();
    const published = Date.now();
    for (const { probe, report } of views) {
      tx.hset(VANTAGE_KEY(probe), this.instanceId, JSON.stringify({ ...report, published }));
      tx.pexpire(VANTAGE_KEY(probe), 86_400_000);
    }
    await tx.exec();
  }

  /** Removes this instance's views (a clean stop). */
  async withdraw(probes: Iterable<string>): Promise<void> {
    const tx = this.redis.multi();
    for (const p of probes) tx.hdel(VANTAGE_KEY(p), this.instanceId);
    await tx.exec();
  }

  /**
   * Every instance's fresh view of a set of probes (a service's primary_down). `self` replaces this
   * instance's published view with its current one.
   */
  async views(probes: ProbeConfig[], self: Map<string, VantageReport>, now = Date.now()): Promise<VantageViews> {
    const seen = new Map<string, 'down' | 'failing' | 'ok'>();
    const rank = { ok: 0, failing: 1, down: 2 } as const;
    const tx = this.redis.multi();
    for (const p of probes) tx.hgetall(VANTAGE_KEY(p.id));
    const replies = (await tx.exec()) ?? [];
    probes.forEach((p, i) => {
      const [err, raw] = replies[i] ?? [];
      const all = err ? {} : ((raw ?? {}) as Record<string, string>);
      const reports = new Map<string, VantageReport>();
      for (const [instance, json] of Object.entries(all)) {
        try {
          reports.set(instance, JSON.parse(json) as VantageReport);
        } catch {
          // A garbled entry is no view: it does not vote.
        }
      }
      const mine = self.get(p.id);
      if (mine) reports.set(this.instanceId, mine);
      else reports.delete(this.instanceId);
      for (const [instance, r] of reports) {
        if (typeof r.at !== 'number' || now - r.at > freshFor(p)) continue;
        // This instance's own view is current; another's counts while that instance still publishes.
        if (instance !== this.instanceId && !(typeof r.published === 'number' && now - r.published <= PUBLISHED_WITHIN_MS)) continue;
        const view = r.state === 'DOWN' ? 'down' : r.ok === true ? 'ok' : 'failing';
        const before = seen.get(instance);
        if (!before || rank[view] > rank[before]) seen.set(instance, view);
      }
    });
    const instances = [...seen.keys()].sort();
    return {
      instances,
      down: instances.filter((i) => seen.get(i) === 'down'),
      reaching: instances.filter((i) => seen.get(i) === 'ok'),
    };
  }
}
