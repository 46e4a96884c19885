import { mkdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { Queue, Worker, type ConnectionOptions, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Config, RestoreTestConfig } from '../config/load.js';
import type { Metrics } from '../metrics.js';
import { listBackups, s3Client } from '../probers/s3-backup.js';
import { reasonOf } from '../probers/types.js';
import { ExecutionError, QUEUE_PREFIX, type Actor, type Executor } from '../runbooks/executor.js';
import { closeWorker, superviseWorker } from '../workers.js';
import { TERMINAL } from '../runbooks/store.js';
import { buildReport, PHASES, reportMarkdown, type RestoreTestReport } from './report.js';
import { sweep, UNKNOWN_GRACE_MS, type SweepResult, type UnusedSince } from './sweeper.js';

/** The queue of restore tests (scheduled and on demand); the runbook executions run on the runbook queue. */
export const RESTORE_TEST_QUEUE = 'restore-tests';
const SCHEDULER_PREFIX = 'restore-test:';
/** Reports kept per backup set in Redis (the files in state_dir are kept for good). */
const REPORTS_KEPT = 100;
/** Passed tests the recent seconds-per-GiB is the mean of. */
const RECENT = 6;
const SWEEP_EVERY_MS = 60 * 60 * 1000;

const key = {
  reports: (set: string) => `${QUEUE_PREFIX}:restore-tests:${set}:reports`,
  reported: `${QUEUE_PREFIX}:restore-tests:reported`,
};

interface RestoreJobData {
  set: string;
  trigger: 'schedule' | 'manual';
  /** For a manual test: the execution the API already started. */
  executionId?: string;
}

export interface RestoreTestsOptions {
  connection: ConnectionOptions;
  redis: Redis;
  executor: () => Executor | undefined;
  config: () => Config;
  log: Logger;
  metrics: Metrics;
  stateDir: string;
  /** How often a running test's execution is looked at (default 1 s). */
  pollMs?: number;
  /** BullMQ lock duration: a crashed instance's tests are taken up again after this (default 30 s). */
  lockDurationMs?: number;
  /** Whether this instance leads (only the leader upserts the job schedulers); default: it does. */
  leading?: () => boolean;
}

/** What the API and CLI show per backup set. */
export interface RestoreTestSummary {
  backupSet: string;
  service: string;
  rtoSeconds: number;
  runbook: string;
  version: number;
  schedule: string;
  timezone: string;
  pick: string;
  nextRun?: string;
  last?: Pick<RestoreTestReport, 'id' | 'result' | 'reason' | 'finishedAt' | 'timings' | 'rtoMarginSeconds' | 'trigger'>;
  lastPass?: string;
}

/**
 * Restore tests: one BullMQ job scheduler per backup set (cron in its time zone) enqueues a test;
 * a test starts the set's restore-test runbook, follows its execution to the end, and turns it
 * into a verdict (validated, and within the service's RTO), a report (JSON and Markdown, in Redis
 * and in state_dir/reports/restore-tests/), metrics, and a sweep of the set's scratch target.
 * The follow job is idempotent: after a crash another worker (or this one, restarted) takes it
 * up again, finds the same execution by its idempotency key, and reports it once.
 */
export class RestoreTests {
  readonly queue: Queue;
  private worker: Worker | undefined;
  private watchdog: NodeJS.Timeout | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private readonly stopping = new AbortController();
  /** Unknown executions' scratch copies seen unused, and since when (the sweeper's memory). */
  private readonly unusedSince: UnusedSince = new Map();
  /** The newest report each set's gauges were last set from (its id). */
  private readonly shown = new Map<string, string>();
  /** How long such a copy must stay unused before the sweeper removes it. */
  unknownGraceMs = UNKNOWN_GRACE_MS;

  constructor(private readonly opts: RestoreTestsOptions) {
    this.queue = new Queue(RESTORE_TEST_QUEUE, { connection: opts.connection, prefix: QUEUE_PREFIX });
    this.queue.on('error', (err) => opts.log.debug({ err: err.message }, 'restore-test queue error'));
  }

  async start(): Promise<void> {
    this.worker = this.newWorker();
    // Redis restarts and failovers: a worker that does not come back by itself is replaced.
    this.watchdog ??= superviseWorker(
      { get: () => this.worker, set: (w) => (this.worker = w), create: () => this.newWorker() },
      this.opts.log,
      'restore-test',
    );
    await this.worker.waitUntilReady();
    // With several instances, the leader owns the schedulers (the daemon applies them at each election).
    if (this.opts.leading?.() ?? true) await this.applySchedules();
    await this.loadMetrics();
    this.sweepTimer = setInterval(() => void this.sweepAll().catch(() => undefined), SWEEP_EVERY_MS);
    this.sweepTimer.unref();
    void this.sweepAll().catch(() => undefined);
  }

  private newWorker(): Worker {
    const worker = new Worker(RESTORE_TEST_QUEUE, (job) => this.process(job as Job<RestoreJobData>), {
      connection: this.opts.connection,
      prefix: QUEUE_PREFIX,
      concurrency: 4,
      lockDuration: this.opts.lockDurationMs ?? 30_000,
      stalledInterval: this.opts.lockDurationMs ?? 30_000,
      // A worker that died is replaced by another take on the same job: never fail one for stalling.
      maxStalledCount: 1_000_000,
    });
    worker.on('error', (err) => this.opts.log.warn({ err: err.message }, 'restore-test worker error'));
    return worker;
  }

  async close(): Promise<void> {
    clearInterval(this.sweepTimer);
    clearInterval(this.watchdog);
    this.stopping.abort(new Error('the daemon is stopping'));
    await closeWorker(this.worker, this.opts.log, 'restore-test');
    await this.queue.close();
  }

  private tests(): RestoreTestConfig[] {
    return this.opts.config().restoreTests;
  }

  private test(set: string): RestoreTestConfig {
    const t = this.tests().find((x) => x.set === set);
    if (!t) {
      const sets = this.tests().map((x) => x.set);
      throw new ExecutionError(404, `no restore test for backup set ${set} (configured: ${sets.join(', ') || 'none'})`);
    }
    return t;
  }

  /** One job scheduler per configured set; schedulers of sets no longer configured are removed. */
  async applySchedules(): Promise<void> {
    const wanted = new Map(this.tests().map((t) => [`${SCHEDULER_PREFIX}${t.set}`, t]));
    for (const s of await this.queue.getJobSchedulers(0, -1)) {
      if (s.key.startsWith(SCHEDULER_PREFIX) && !wanted.has(s.key)) await this.queue.removeJobScheduler(s.key);
    }
    for (const [id, t] of wanted) {
      await this.queue.upsertJobScheduler(
        id,
        { pattern: t.schedule, tz: t.timezone },
        {
          name: 'scheduled',
          data: { set: t.set, trigger: 'schedule' } satisfies RestoreJobData,
          opts: { removeOnComplete: 100, removeOnFail: 100 },
        },
      );
    }
  }

  /** Starts a test now; returns its execution at once (the test runs on). */
  async runNow(set: string, actor: Actor): Promise<{ executionId: string; created: boolean }> {
    const t = this.test(set);
    const executor = this.executorOrFail();
    const { execution, created } = await executor.startExecution(
      {
        runbook: t.runbook,
        version: t.version,
        mode: 'live',
        inputs: await this.inputsFor(t, this.stopping.signal),
        // Each request is its own test; a retried request within a second is the same one.
        idempotencyKey: `restore-test:${set}:manual:${actor.name}:${Math.floor(Date.now() / 1000)}`,
      },
      actor,
    );
    await this.queue.add('manual', { set, trigger: 'manual', executionId: execution.id } satisfies RestoreJobData, {
      jobId: `manual-${execution.id}`,
      removeOnComplete: 100,
      removeOnFail: 100,
    });
    return { executionId: execution.id, created };
  }

  private executorOrFail(): Executor {
    const e = this.opts.executor();
    if (!e) throw new ExecutionError(409, 'runbooks are not available yet: Redis is not reachable');
    return e;
  }

  /** The runbook's inputs: configured ones, and the backup to restore when a random one is picked. */
  private async inputsFor(t: RestoreTestConfig, signal: AbortSignal): Promise<Record<string, unknown>> {
    if (t.pick !== 'random') return { ...t.inputs };
    const client = s3Client(t.s3);
    try {
      const since = Date.now() - t.windowMs;
      const candidates = (await listBackups(client, t.s3.bucket, t.s3.prefix ?? '', signal)).filter(
        (o) => o.LastModified!.getTime() >= since && (o.Size ?? 0) > 0,
      );
      // None in the window: the newest (the runbook's own choice) is still worth proving.
      if (candidates.length === 0) return { ...t.inputs };
      return { ...t.inputs, key: candidates[Math.floor(Math.random() * candidates.length)]!.Key! };
    } finally {
      client.destroy();
    }
  }

  // --- the worker ------------------------------------------------------------------------------

  private async process(job: Job<RestoreJobData>): Promise<void> {
    const { set, trigger } = job.data;
    const t = this.tests().find((x) => x.set === set);
    if (!t) {
      this.opts.log.warn({ set }, 'restore test of a backup set no longer configured: skipped');
      return;
    }
    const executor = this.executorOrFail();
    let id = job.data.executionId;
    if (!id) {
      // The scheduler's job id is unique per run: the same job, taken up again after a crash, finds the same execution.
      const { execution } = await executor.startExecution(
        {
          runbook: t.runbook,
          version: t.version,
          mode: 'live',
          inputs: await this.inputsFor(t, this.stopping.signal),
          idempotencyKey: `restore-test:${set}:${job.id}`,
        },
        { name: 'schedule', roles: ['operator'] },
      );
      id = execution.id;
      await job.updateData({ ...job.data, executionId: id });
    }
    const log = this.opts.log.child({ backupSet: set, execution: id });
    log.info({ trigger }, 'restore test started');
    await this.follow(executor, id, log);
    await this.conclude(t, id, trigger, log);
  }

  /**
   * Waits for the execution to end. One that stopped at a step with no recorded result (this
   * daemon died mid-restore) is aborted: a restore test is proof, not a service, and is better run
   * again than resumed by a person at night; the sweeper removes what it left.
   */
  private async follow(executor: Executor, id: string, log: Logger): Promise<void> {
    for (;;) {
      const rec = await executor.store.get(id);
      if (!rec) throw new Error(`execution ${id} is gone`);
      if (TERMINAL.has(rec.status)) return;
      if (rec.status === 'awaiting_decision') {
        log.warn('restore test interrupted mid-step (the daemon stopped): aborting it');
        await executor
          .abort(
            id,
            { name: 'restore-tests', roles: ['operator'] },
            'interrupted mid-step by a daemon restart; a restore test is run again, not resumed',
          )
          .catch((err: unknown) => log.debug({ err: reasonOf(err) }, 'abort refused'));
      }
      await delay(this.opts.pollMs ?? 1000, undefined, { signal: this.stopping.signal });
    }
  }

  /** Verdict, report, metrics and sweep of a finished test; once per execution. */
  private async conclude(t: RestoreTestConfig, id: string, trigger: RestoreJobData['trigger'], log: Logger): Promise<RestoreTestReport> {
    const executor = this.executorOrFail();
    const config = this.opts.config();
    const service = config.services[t.service];
    const report = buildReport(await executor.view(id), {
      backupSet: t.set,
      service: t.service,
      rtoSeconds: (service?.rtoMs ?? 3_600_000) / 1000,
      trigger,
    });
    // The files first: a report the API shows is on disk too.
    await this.writeFiles(report).catch((err: unknown) => log.error({ err: reasonOf(err) }, 'restore-test report not written'));
    const first = (await this.opts.redis.sadd(key.reported, id)) === 1;
    if (first) {
      await this.opts.redis
        .multi()
        .lpush(key.reports(t.set), JSON.stringify(report))
        .ltrim(key.reports(t.set), 0, REPORTS_KEPT - 1)
        .exec();
      this.opts.metrics.restoreTests.inc({ backup_set: t.set, trigger, result: report.result });
      await executor.store.audit({
        who: trigger === 'schedule' ? 'schedule' : report.requestedBy,
        action: 'restore_test',
        target: t.set,
        outcome: report.result,
        detail: report.reason ?? `passed in ${report.timings.total}s, RTO margin ${report.rtoMarginSeconds}s`,
      });
    }
    await this.loadMetrics(t.set);
    const level = report.result === 'pass' ? 'info' : 'warn';
    log[level](
      { result: report.result, reason: report.reason, timings: report.timings, rtoMarginSeconds: report.rtoMarginSeconds },
      'restore test finished',
    );
    // Whatever the runbook's own cleanup did: nothing of this test may stay behind.
    await this.sweepSet(t).catch((err: unknown) => log.warn({ err: reasonOf(err) }, 'sweep after the test failed'));
    return report;
  }

  private async writeFiles(r: RestoreTestReport): Promise<void> {
    const dir = join(this.opts.stateDir, 'reports', 'restore-tests', r.backupSet);
    await mkdir(dir, { recursive: true });
    const base = join(dir, `${r.finishedAt.slice(0, 10)}-${r.id}`);
    for (const [ext, text] of [
      ['json', `${JSON.stringify(r, null, 2)}\n`],
      ['md', reportMarkdown(r)],
    ] as const) {
      // Written aside and renamed: a reader never sees half a report.
      await writeFile(`${base}.${ext}.tmp`, text);
      await rename(`${base}.${ext}.tmp`, `${base}.${ext}`);
    }
  }

  /** Sets the gauges of one set (or all) from the stored reports, so a restart keeps them. */
  async loadMetrics(only?: string): Promise<void> {
    const m = this.opts.metrics;
    for (const t of this.tests()) {
      if (only && t.set !== only) continue;
      const reports = await this.reports(t.set, 50);
      const last = reports[0];
      if (!last) continue;
      this.shown.set(t.set, last.id);
      const labels = { backup_set: t.set };
      for (const p of PHASES) {
        const v = last.timings[p];
        if (v === undefined) m.restoreTestDuration.remove({ ...labels, phase: p });
        else m.restoreTestDuration.set({ ...labels, phase: p }, v);
      }
      m.restoreTestSuccess.set(labels, last.result === 'pass' ? 1 : 0);
      m.restoreTestLastRun.set(labels, Date.parse(last.finishedAt) / 1000);
      const lastPass = reports.find((r) => r.result === 'pass');
      if (lastPass) m.restoreTestLastSuccess.set(labels, Date.parse(lastPass.finishedAt) / 1000);
      if (last.rtoMarginSeconds !== undefined) m.restoreTestRtoMargin.set({ ...labels, service: t.service }, last.rtoMarginSeconds);
      if (last.backup.bytes !== undefined) m.restoreTestBytes.set(labels, last.backup.bytes);
      const speeds = reports.filter((r) => r.result === 'pass' && r.secondsPerGib !== undefined).map((r) => r.secondsPerGib!);
      if (speeds.length) {
        m.restoreTestSecondsPerGib.set({ ...labels, window: 'last' }, speeds[0]!);
        const recent = speeds.slice(0, RECENT);
        m.restoreTestSecondsPerGib.set({ ...labels, window: 'recent' }, recent.reduce((a, b) => a + b, 0) / recent.length);
      }
    }
  }

  /**
   * Sets again the gauges of every set whose newest report changed: a restore test runs on whichever
   * instance's worker took it, and every instance's /metrics shows its result within a refresh.
   */
  async refreshMetrics(): Promise<void> {
    const tests = this.tests();
    if (tests.length === 0) return;
    const pipeline = this.opts.redis.pipeline();
    for (const t of tests) pipeline.lindex(key.reports(t.set), 0);
    const heads = (await pipeline.exec()) ?? [];
    for (const [i, t] of tests.entries()) {
      const [err, raw] = heads[i] ?? [];
      if (err || typeof raw !== 'string') continue;
      const id = (JSON.parse(raw) as RestoreTestReport).id;
      if (this.shown.get(t.set) !== id) await this.loadMetrics(t.set);
    }
  }

  /** The newest reports of a set, newest first. */
  async reports(set: string, count = 20): Promise<RestoreTestReport[]> {
    const raw = await this.opts.redis.lrange(key.reports(set), 0, count - 1);
    return raw.map((r) => JSON.parse(r) as RestoreTestReport);
  }

  /** One report by execution id. */
  async report(set: string, id: string): Promise<RestoreTestReport | undefined> {
    return (await this.reports(set, REPORTS_KEPT)).find((r) => r.id === id);
  }

  /** A report by its execution id, whatever its set. */
  async findReport(id: string): Promise<RestoreTestReport | undefined> {
    for (const t of this.tests()) {
      const r = await this.report(t.set, id);
      if (r) return r;
    }
    return undefined;
  }

  async summaries(): Promise<RestoreTestSummary[]> {
    const config = this.opts.config();
    const schedulers = new Map((await this.queue.getJobSchedulers(0, -1)).map((s) => [s.key, s]));
    const out: RestoreTestSummary[] = [];
    for (const t of this.tests()) {
      const reports = await this.reports(t.set, 50);
      const last = reports[0];
      const next = schedulers.get(`${SCHEDULER_PREFIX}${t.set}`)?.next;
      out.push({
        backupSet: t.set,
        service: t.service,
        rtoSeconds: (config.services[t.service]?.rtoMs ?? 3_600_000) / 1000,
        runbook: t.runbook,
        version: t.version,
        schedule: t.schedule,
        timezone: t.timezone,
        pick: t.pick,
        ...(next ? { nextRun: new Date(next).toISOString() } : {}),
        ...(last
          ? {
              last: {
                id: last.id,
                result: last.result,
                ...(last.reason ? { reason: last.reason } : {}),
                finishedAt: last.finishedAt,
                timings: last.timings,
                ...(last.rtoMarginSeconds !== undefined ? { rtoMarginSeconds: last.rtoMarginSeconds } : {}),
                trigger: last.trigger,
              },
            }
          : {}),
        ...(reports.find((r) => r.result === 'pass') ? { lastPass: reports.find((r) => r.result === 'pass')!.finishedAt } : {}),
      });
    }
    return out;
  }

  // --- the sweeper -----------------------------------------------------------------------------

  /** Sweeps every configured scratch target (each target once, however many sets share it). */
  async sweepAll(): Promise<Array<{ backupSet: string } & SweepResult>> {
    const seen = new Set<string>();
    const out: Array<{ backupSet: string } & SweepResult> = [];
    for (const t of this.tests()) {
      const id = JSON.stringify(t.scratch);
      if (seen.has(id)) continue;
      seen.add(id);
      try {
        out.push({ backupSet: t.set, ...(await this.sweepSet(t)) });
      } catch (err) {
        this.opts.log.warn({ backupSet: t.set, err: reasonOf(err) }, 'restore-test sweep failed');
      }
    }
    return out;
  }

  private async sweepSet(t: RestoreTestConfig): Promise<SweepResult> {
    const executor = this.opts.executor();
    if (!executor) return { removed: [], kept: [] };
    const result = await sweep(
      t.scratch,
      async (id) => {
        const rec = await executor.store.get(id);
        if (!rec) return 'unknown';
        return TERMINAL.has(rec.status) ? 'finished' : 'active';
      },
      {
        signal: AbortSignal.any([this.stopping.signal, AbortSignal.timeout(120_000)]),
        unusedSince: this.unusedSince,
        graceMs: this.unknownGraceMs,
      },
    );
    if (result.removed.length) {
      this.opts.metrics.restoreSweeps.inc({ backup_set: t.set }, result.removed.length);
      this.opts.log.warn({ backupSet: t.set, removed: result.removed }, 'sweeper removed scratch copies of crashed restore tests');
      await executor.store.audit({
        who: 'sweeper',
        action: 'restore_test_sweep',
        target: t.set,
        outcome: 'removed',
        detail: result.removed.join(', '),
      });
    }
    return result;
  }
}
