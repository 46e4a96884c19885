import { createHash } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { Queue, QueueEvents, Worker, type ConnectionOptions, type Job } from 'bullmq';
import type { Logger } from 'pino';
import type { ProbeConfig } from '../config/load.js';
import { runnableProbe } from '../health/scheduler.js';
import { runProbe, type ProbeResult } from '../probers/run.js';
import { closeWorker, superviseWorker } from '../workers.js';

/** The queue of shared probe runs; hash-tagged so that Redis Cluster keeps its keys in one slot. */
export const PROBE_QUEUE = 'probes';
export const PROBE_QUEUE_PREFIX = '{continuity-probes}';

/** What a run sends to every instance (through BullMQ's completed event): small, scalars only. */
export interface SharedResult {
  probe: string;
  fingerprint: string;
  instance: string;
  /** When the run was due (the scheduler's plan), ms since the epoch. */
  planned: number;
  result: ProbeResult;
}

interface ProbeJobData {
  probe: string;
  fingerprint: string;
}

export interface SharedProbesOptions {
  connection: ConnectionOptions;
  instanceId: string;
  stateDir: string;
  concurrency: number;
  log: Logger;
  /** A shared probe's result, run here (`mine`) or by another instance. */
  onResult(probe: ProbeConfig, shared: SharedResult, mine: boolean): void;
  /** Observed values as they travel to other instances (long strings cut, objects dropped). */
  summarize(observed: Record<string, unknown>): Record<string, unknown>;
}

/** Spreads probes with the same interval over it, the same way at every start (as the local scheduler does). */
export function offsetOf(id: string, intervalMs: number): number {
  return createHash('sha1').update(id).digest().readUInt32BE(0) % intervalMs;
}

/**
 * Probes shared out across the instances of a cluster through BullMQ. The leader keeps one job
 * scheduler per probe (`every` its interval, offset by a hash of its id); each iteration is one
 * job, which the first free worker of any instance takes, so a probe runs once per interval across
 * the cluster. BullMQ adds the next iteration when a worker takes the current one: an instance that
 * dies holding a run loses that run only, and the next is taken by a living instance. Results go to
 * every instance through the queue's completed events, so each one keeps the full picture (states,
 * verdicts, metrics) without running everything.
 */
export class SharedProbes {
  private readonly queue: Queue;
  private readonly events: QueueEvents;
  private worker: Worker | undefined;
  private watchdog: NodeJS.Timeout | undefined;
  private probes = new Map<string, ProbeConfig>();
  /** When each shared probe (in its current version) was first known here: a new one is not silent yet. */
  private readonly known = new Map<string, { fingerprint: string; since: number }>();
  private readonly abort = new AbortController();
  private active = 0;

  constructor(private readonly opts: SharedProbesOptions) {
    // Every run in flight listens on this signal (runProbe removes its listener when it ends).
    setMaxListeners(opts.concurrency + 1, this.abort.signal);
    this.queue = new Queue(PROBE_QUEUE, { connection: opts.connection, prefix: PROBE_QUEUE_PREFIX });
    this.queue.on('error', (err) => opts.log.debug({ err: err.message }, 'probe queue error'));
    this.events = new QueueEvents(PROBE_QUEUE, { connection: opts.connection, prefix: PROBE_QUEUE_PREFIX });
    this.events.on('error', (err) => opts.log.debug({ err: err.message }, 'probe queue events error'));
    this.events.on('completed', ({ returnvalue }) => this.received(returnvalue));
  }

  /** The shared probes this instance knows (its config's). */
  setProbes(probes: ProbeConfig[]): void {
    this.probes = new Map(probes.map((p) => [p.id, p]));
    const now = Date.now();
    for (const p of probes)
      if (this.known.get(p.id)?.fingerprint !== p.fingerprint) this.known.set(p.id, { fingerprint: p.fingerprint, since: now });
    for (const id of this.known.keys()) if (!this.probes.has(id)) this.known.delete(id);
  }

  /** Whether a probe is shared (in this version), and since when this instance knows it so. */
  knownSince(p: ProbeConfig): number | undefined {
    return this.probes.get(p.id)?.fingerprint === p.fingerprint ? this.known.get(p.id)?.since : undefined;
  }

  /** Starts taking runs (every instance does). */
  async start(): Promise<void> {
    this.worker = this.newWorker();
    this.watchdog ??= superviseWorker(
      { get: () => this.worker, set: (w) => (this.worker = w), create: () => this.newWorker() },
      this.opts.log,
      'probe',
    );
    await Promise.all([this.worker.waitUntilReady(), this.events.waitUntilReady()]);
  }

  /** Runs of shared probes in progress here. */
  get running(): number {
    return this.active;
  }

  /**
   * The leader's part: one job scheduler per shared probe, none for a probe no longer shared.
   * Idempotent; a changed probe (interval, fingerprint) has its scheduler replaced.
   */
  async applySchedules(): Promise<void> {
    const existing = new Map((await this.queue.getJobSchedulers(0, -1)).map((s) => [s.key, s]));
    const stale = [...this.probes.values()].filter((p) => {
      const s = existing.get(p.id);
      const template = (s as { template?: { data?: ProbeJobData } } | undefined)?.template?.data;
      return !(s && Number(s.every) === p.intervalMs && template?.fingerprint === p.fingerprint);
    });
    const gone = [...existing.keys()].filter((key) => !this.probes.has(key));
    // In batches: thousands of probes are thousands of round trips, not to be made one at a time.
    for (let i = 0; i < stale.length; i += 100) await Promise.all(stale.slice(i, i + 100).map((p) => this.schedule(p)));
    for (let i = 0; i < gone.length; i += 100) await Promise.all(gone.slice(i, i + 100).map((key) => this.queue.removeJobScheduler(key)));
  }

  /** Puts a probe's scheduler (back): the leader does it when a probe has gone silent. */
  async schedule(p: ProbeConfig): Promise<void> {
    await this.queue.upsertJobScheduler(
      p.id,
      { every: p.intervalMs, offset: offsetOf(p.id, p.intervalMs) },
      {
        name: 'probe',
        data: { probe: p.id, fingerprint: p.fingerprint } satisfies ProbeJobData,
        opts: { removeOnComplete: true, removeOnFail: true },
      },
    );
  }

  /** Removes every scheduler (the cluster goes back to running probes locally). */
  async unscheduleAll(): Promise<void> {
    for (const s of await this.queue.getJobSchedulers(0, -1)) await this.queue.removeJobScheduler(s.key);
  }

  async close(): Promise<void> {
    clearInterval(this.watchdog);
    this.abort.abort(new Error('the daemon is stopping'));
    await closeWorker(this.worker, this.opts.log, 'probe');
    await Promise.allSettled([this.events.close(), this.queue.close()]);
  }

  private newWorker(): Worker {
    const worker = new Worker(PROBE_QUEUE, (job: Job<ProbeJobData>) => this.run(job), {
      connection: this.opts.connection,
      prefix: PROBE_QUEUE_PREFIX,
      concurrency: this.opts.concurrency,
      // A run whose instance died is not run again: the next iteration is already queued.
      maxStalledCount: 0,
    });
    worker.on('error', (err) => this.opts.log.warn({ err: err.message }, 'probe worker error'));
    return worker;
  }

  private async run(job: Job<ProbeJobData>): Promise<SharedResult | null> {
    const p = this.probes.get(job.data.probe);
    // A probe this instance does not know (yet), or knows in another version: another instance runs
    // the next iteration (configs converge at reload); this one is left unrun, not run wrongly.
    if (!p || p.fingerprint !== job.data.fingerprint) return null;
    const planned = job.timestamp + (job.opts.delay ?? 0);
    // An iteration due long ago (no instance was there to take it) is not worth running late.
    if (Date.now() - planned > p.intervalMs) return null;
    this.active++;
    try {
      const result = await runProbe(runnableProbe(p), { stateDir: this.opts.stateDir, signal: this.abort.signal });
      const shared: SharedResult = {
        probe: p.id,
        fingerprint: p.fingerprint,
        instance: this.opts.instanceId,
        planned,
        result: { ...result, observed: this.opts.summarize(result.observed) },
      };
      // Here at once (with everything observed); elsewhere through the completed event.
      this.opts.onResult(p, { ...shared, result }, true);
      return shared;
    } finally {
      this.active--;
    }
  }

  private received(returnvalue: unknown): void {
    // QueueEvents has parsed it already; a skipped run is null.
    if (typeof returnvalue !== 'object' || returnvalue === null) return;
    const shared = returnvalue as SharedResult;
    if (shared.instance === this.opts.instanceId) return;
    const p = this.probes.get(shared.probe);
    if (!p || p.fingerprint !== shared.fingerprint || typeof shared.result?.ok !== 'boolean') return;
    this.opts.onResult(p, shared, false);
  }
}
