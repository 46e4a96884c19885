import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import { DelayedError, Queue, Worker, type Job, type ConnectionOptions } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { FencedError } from '../cluster/fence.js';
import { closeWorker, superviseWorker } from '../workers.js';
import { resolveSecrets } from '../config/secrets.js';
import { formatIssue, type ConfigIssue } from '../config/errors.js';
import { formatDuration } from '../duration.js';
import { failpoint } from '../failpoints.js';
import type { Metrics } from '../metrics.js';
import { reasonOf } from '../probers/types.js';
import { redactor } from '../redact.js';
import { inputProblem, type Runbook, type RunbookSet, type Step } from './loader.js';
import { stepKinds } from './steps/index.js';
import type { ExecutionMode, ProbeView, StepResult } from './steps/types.js';
import {
  ExecutionStore,
  TERMINAL,
  type ApprovalRecord,
  type ExecutionRecord,
  type ExecutionStatus,
  type StepProgress,
  type StepRecord,
  stepField,
} from './store.js';
import { render, type TemplateScope } from './template.js';

/** The queue of runbook executions: nothing else shares it. */
export const RUNBOOK_QUEUE = 'runbooks';
/** BullMQ key prefix, hash-tagged so every key of the queue lands in one Redis Cluster slot. */
export const QUEUE_PREFIX = '{continuity}';
/** Output kept per step on the timeline. */
const OUTPUT_LIMIT = 16 * 1024;
/** How long a parked execution waiting for an operator sleeps before looking again by itself. */
const DECISION_RECHECK_MS = 60 * 60 * 1000;
/** A job given back by an instance that does not lead is due again this soon (not at once: no busy loop while a transition runs). */
const HAND_BACK_MS = 250;
export interface ExecutorOptions {
  /** For BullMQ's own connections. */
  connection: ConnectionOptions;
  /** For the execution records. */
  redis: Redis;
  runbooks: () => RunbookSet;
  log: Logger;
  metrics: Metrics;
  stateDir: string;
  probes?: ProbeView;
  /** BullMQ lock duration: a crashed worker's execution is picked up again after this. */
  lockDurationMs?: number;
  /** Parallel executions this process runs. */
  concurrency?: number;
  /** Process executions here (false: only enqueue, as the CLI does). */
  work?: boolean;
  /** The two-person rule for live executions: whoever started one cannot approve it. */
  twoPersonRule?: boolean;
  /**
   * When instances share the Redis: this instance's fencing token while it leads, else undefined.
   * Each execution is processed under the token current when its job was taken, and its step
   * records and updates are refused (FencedError) once that token is no longer the leader epoch.
   */
  fence?: () => number | undefined;
  /**
   * After the lease lapsed only because Redis was away, how long a running execution waits, before
   * its next step, for this instance to lead again with the same token (default 10 s, the lease).
   */
  regainMs?: number;
}

/** Who is acting, as authenticated by the API. */
export interface Actor {
  name: string;
  roles: string[];
}

/** A refusal the API turns into a 4xx: the message says why. */
export class ExecutionError extends Error {
  constructor(
    readonly status: 400 | 403 | 404 | 409,
    message: string,
  ) {
    super(message);
  }
}

export interface StartRequest {
  runbook: string;
  version?: number;
  mode: ExecutionMode;
  inputs: Record<string, unknown>;
  /** Same key, same execution: a double trigger starts one execution. */
  idempotencyKey?: string;
}

/** The full view of an execution: record, steps, approvals, timeline. */
export interface ExecutionView {
  execution: ExecutionRecord;
  steps: StepRecord[];
  approvals: ApprovalRecord[];
  timeline: Array<{ at: string; type: string; step?: string; who?: string; message: string }>;
  /** The runbook's steps in order, for showing what is still to come. */
  plan: Array<{ id: string; kind: string; phase: string; stage?: string; description?: string; idempotent: boolean }>;
}

/**
 * Runs runbook executions as BullMQ jobs. The job holds only the execution id: everything else is
 * in the ExecutionStore, written step by step, so any worker (this process after a crash, or
 * another instance) resumes an execution at its first unfinished step. A non-idempotent step that
 * started without a recorded result is never run again by itself: the execution waits for an
 * operator to retry, skip or abort it. Waiting (for approvers, for an operator) parks the job in
 * BullMQ's delayed set, so no worker is held while people think.
 */
export class Executor {
  readonly queue: Queue;
  readonly store: ExecutionStore;
  private worker: Worker | undefined;
  private watchdog: NodeJS.Timeout | undefined;
  private readonly controllers = new Map<string, AbortController>();
  /** The fencing token each execution being processed here writes with. */
  private readonly tokens = new Map<string, number>();
  /**
   * The run of each execution in progress in this process. BullMQ hands a job whose lock lapsed
   * (an event loop stalled past lockDuration) to a worker again, possibly this very one while the
   * first run still goes: the second waits for the first, then resumes from the store, so no two
   * runs of one execution ever advance side by side here.
   */
  private readonly runs = new Map<string, Promise<void>>();
  /** This instance stopped leading only because Redis was away (its running steps kept on). */
  private lapsed = false;

  constructor(private readonly opts: ExecutorOptions) {
    this.queue = new Queue(RUNBOOK_QUEUE, { connection: opts.connection, prefix: QUEUE_PREFIX });
    // Without a listener, a Redis outage prints raw stack traces to stderr; the log says it once per error instead.
    this.queue.on('error', (err) => opts.log.debug({ err: err.message }, 'runbook queue error'));
    this.store = new ExecutionStore(opts.redis, opts.fence ? (id) => this.tokenFor(id) : undefined);
  }

  /**
   * The token an execution's writes carry; a FencedError at once when this instance leads with
   * another token now. Not leading at the moment (the lease lapsed while Redis was away), the write
   * goes to Redis, whose script accepts it only if nobody has led since: a step that ran through a
   * Redis restart keeps its result.
   */
  private tokenFor(id: string): number | undefined {
    const token = this.tokens.get(id);
    if (token === undefined) return undefined; // not processed here (no such write today)
    const now = this.opts.fence!();
    if (now !== undefined && token !== now) throw new FencedError(token);
    return token;
  }

  /**
   * Stops processing (this instance no longer leads): no new job or step starts here, and the jobs
   * are left for the leader (taken up once their locks expire). Running steps are aborted unless
   * the lease lapsed only because Redis was away (`keepRunning`): then they finish, and their
   * results are kept if nobody else led meanwhile (the fencing script decides). start() starts a
   * new worker.
   */
  async stopWorker(opts: { keepRunning?: boolean } = {}): Promise<void> {
    this.lapsed = opts.keepRunning === true;
    if (!opts.keepRunning) for (const c of this.controllers.values()) c.abort(new Error('this instance no longer leads'));
    const worker = this.worker;
    this.worker = undefined;
    await closeWorker(worker, this.opts.log, 'runbook');
  }

  /** Starts the worker (when this process works) and re-enqueues executions that lost their job. */
  async start(): Promise<void> {
    this.lapsed = false;
    if (this.opts.work === false) return;
    this.worker = this.newWorker();
    // Redis restarts and failovers: a worker that does not come back by itself is replaced.
    this.watchdog ??= superviseWorker(
      { get: () => this.worker, set: (w) => (this.worker = w), create: () => this.newWorker() },
      this.opts.log,
      'runbook',
    );
    await this.worker.waitUntilReady();
    await this.reconcile();
    await this.refreshGauges();
  }

  private newWorker(): Worker {
    const lockDuration = this.opts.lockDurationMs ?? 30_000;
    const worker = new Worker(RUNBOOK_QUEUE, (job, token) => this.process(job, token), {
      connection: this.opts.connection,
      prefix: QUEUE_PREFIX,
      concurrency: this.opts.concurrency ?? 10,
      lockDuration,
      stalledInterval: lockDuration,
      // Stalls are harmless here (the processor resumes from the store): never fail a job for them.
      maxStalledCount: 1_000_000,
    });
    worker.on('error', (err) => this.opts.log.warn({ err: err.message }, 'runbook worker error'));
    return worker;
  }

  async close(): Promise<void> {
    for (const c of this.controllers.values()) c.abort(new Error('the daemon is stopping'));
    clearInterval(this.watchdog);
    await closeWorker(this.worker, this.opts.log, 'runbook');
    await this.queue.close();
  }

  /** Executions whose job is gone (a crash between record and enqueue) get their job back. */
  async reconcile(): Promise<void> {
    for (const rec of await this.store.active()) {
      const job = await this.queue.getJob(rec.id);
      if (!job) await this.enqueue(rec.id);
    }
  }

  private async enqueue(id: string, delayMs = 0): Promise<void> {
    await this.queue.add('execution', { id }, { jobId: id, delay: delayMs, removeOnComplete: true, removeOnFail: 1000, attempts: 1 });
  }

  // --- API operations -------------------------------------------------------------------------

  /** Starts an execution, or returns the one this request already started. */
  async startExecution(req: StartRequest, actor: Actor): Promise<{ execution: ExecutionRecord; created: boolean }> {
    const rb = this.opts.runbooks().get(req.runbook, req.version);
    if (!rb) {
      throw new ExecutionError(404, req.version ? `no runbook ${req.runbook} version ${req.version}` : `no runbook ${req.runbook}`);
    }
    const inputs = this.checkInputs(rb, req.inputs);
    const key =
      req.idempotencyKey ?? JSON.stringify([rb.name, rb.version, req.mode, Object.entries(inputs).sort(([a], [b]) => a.localeCompare(b))]);
    const base = `${rb.name}-v${rb.version}-${createHash('sha256').update(key).digest('hex').slice(0, 12)}`;
    let id = base;
    const existing = await this.store.get(id);
    if (existing) {
      // The same key names the same execution; without a key, only a run still going is the same.
      if (req.idempotencyKey || !TERMINAL.has(existing.status)) return { execution: existing, created: false };
      id = `${base}-${await this.store.nextSeq(base)}`;
    }
    const now = Date.now();
    const rec: ExecutionRecord = {
      id,
      runbook: rb.name,
      version: rb.version,
      hash: rb.hash,
      mode: req.mode,
      inputs,
      requestedBy: actor.name,
      createdAt: now,
      updatedAt: now,
      status: 'queued',
      phase: 'main',
    };
    if (!(await this.store.create(rec))) return { execution: (await this.store.get(id))!, created: false };
    await this.enqueue(id);
    this.opts.log.info({ execution: id, runbook: rb.name, version: rb.version, mode: req.mode, by: actor.name }, 'execution started');
    return { execution: rec, created: true };
  }

  private checkInputs(rb: Runbook, given: Record<string, unknown>): Record<string, unknown> {
    const problems: string[] = [];
    for (const name of Object.keys(given)) {
      if (!rb.inputs.some((i) => i.name === name)) problems.push(`inputs.${name}: not an input of ${rb.name} v${rb.version}`);
    }
    const out: Record<string, unknown> = {};
    for (const def of rb.inputs) {
      const value = given[def.name] ?? def.default;
      if (value === undefined) {
        if (def.required) problems.push(`inputs.${def.name}: is required`);
        continue;
      }
      const problem = inputProblem(def, value);
      if (problem) problems.push(`inputs.${def.name}: ${problem}`);
      out[def.name] = value;
    }
    if (problems.length) throw new ExecutionError(400, problems.join('; '));
    return out;
  }

  /** Records an approval or denial, after checking who may give it and what it approves. */
  async answerApproval(
    id: string,
    actor: Actor,
    answer: { decision: 'approve' | 'deny'; comment?: string; hash: string; step?: string },
  ): Promise<ApprovalRecord> {
    const rec = await this.mustGet(id);
    const rb = this.opts.runbooks().get(rec.runbook, rec.version);
    const steps = await this.store.steps(id);
    const waiting = [...steps.values()].find((s) => s.status === 'waiting');
    if (!waiting || TERMINAL.has(rec.status))
      throw new ExecutionError(409, `execution ${id} is ${rec.status}, not waiting for an approval`);
    if (answer.step && answer.step !== waiting.step)
      throw new ExecutionError(409, `the approval waiting is for step ${waiting.step}, not ${answer.step}`);
    const step = [...(rb?.steps ?? []), ...(rb?.rollback ?? [])].find((s) => s.id === waiting.step && s.phase === waiting.phase);
    const gate = step?.approval;
    if (!rb || rb.hash !== rec.hash || !gate) {
      throw new ExecutionError(
        409,
        `${rec.runbook} v${rec.version} is not loaded with the content this execution runs (sha256 ${rec.hash.slice(0, 12)}…): its file changed or is gone, so it cannot be approved`,
      );
    }
    // The file on disk now: an approval never approves a version whose file has since changed.
    const onDisk = await readFile(rb.path).then(
      (b) => createHash('sha256').update(b).digest('hex'),
      () => 'missing',
    );
    if (onDisk !== rec.hash) {
      throw new ExecutionError(
        409,
        `${rb.file} has changed since this execution started (sha256 ${rec.hash.slice(0, 12)}…, now ${onDisk.slice(0, 12)}…): a changed version cannot be approved`,
      );
    }
    if (answer.hash !== rec.hash) {
      throw new ExecutionError(
        409,
        `this approval is for sha256 ${answer.hash.slice(0, 12)}…, but the execution runs ${rec.runbook} v${rec.version} with sha256 ${rec.hash.slice(0, 12)}…: review the version it runs`,
      );
    }
    const allowed = actor.roles.includes('admin') || gate.roles.some((r) => actor.roles.includes(r));
    if (!allowed) throw new ExecutionError(403, `${actor.name} lacks a role that may answer this approval (${gate.roles.join(', ')})`);
    if ((this.opts.twoPersonRule ?? true) && rec.mode === 'live' && actor.name === rec.requestedBy) {
      throw new ExecutionError(403, `two-person rule: ${actor.name} started this execution and cannot approve or deny it`);
    }
    const previous = (await this.store.approvals(id)).filter((a) => a.step === waiting.step);
    if (previous.some((a) => a.who === actor.name)) throw new ExecutionError(409, `${actor.name} has already answered this approval`);
    const record: ApprovalRecord = {
      step: waiting.step,
      who: actor.name,
      decision: answer.decision,
      comment: answer.comment,
      at: Date.now(),
      hash: answer.hash,
    };
    await this.store.addApproval(id, record);
    await this.wake(id);
    return record;
  }

  /** An operator's decision on a step that started without a recorded result. */
  async decide(id: string, stepId: string, action: 'retry' | 'skip', actor: Actor, comment?: string): Promise<void> {
    const rec = await this.mustGet(id);
    if (rec.status !== 'awaiting_decision')
      throw new ExecutionError(409, `execution ${id} is ${rec.status}, not waiting for an operator's decision`);
    const steps = await this.store.steps(id);
    const rs = steps.get(stepField(rec.phase, stepId));
    if (!rs || rs.status !== 'started') throw new ExecutionError(409, `step ${stepId} of ${id} is not the one waiting for a decision`);
    await this.store.setDecision(id, rec.phase, { step: stepId, action, who: actor.name, comment, at: Date.now() });
    await this.wake(id);
  }

  /** Stops an execution at the next step boundary (a running step is aborted). */
  async abort(id: string, actor: Actor, comment?: string): Promise<void> {
    const rec = await this.mustGet(id);
    if (TERMINAL.has(rec.status)) throw new ExecutionError(409, `execution ${id} has already finished (${rec.status})`);
    await this.store.requestAbort(id, actor.name, comment);
    this.controllers.get(id)?.abort(new Error(`aborted by ${actor.name}`));
    await this.wake(id);
  }

  async view(id: string): Promise<ExecutionView> {
    const rec = await this.mustGet(id);
    const rb = this.opts.runbooks().get(rec.runbook, rec.version);
    const [steps, approvals, timeline, progress] = await Promise.all([
      this.store.steps(id),
      this.store.approvals(id),
      this.store.timeline(id),
      this.store.progress(id),
    ]);
    for (const [field, p] of progress) {
      const s = steps.get(field);
      if (s && (s.status === 'started' || s.status === 'succeeded' || s.status === 'failed')) s.progress = p;
    }
    return {
      execution: rec,
      steps: sortSteps([...steps.values()], rb),
      approvals,
      timeline: timeline.map((e) => ({ ...e, at: new Date(e.at).toISOString() })),
      plan: [...(rb?.steps ?? []), ...(rb?.rollback ?? [])].map((s) => ({
        id: s.id,
        kind: s.kind,
        phase: s.phase,
        ...(s.stage ? { stage: s.stage } : {}),
        description: s.description,
        idempotent: s.idempotent,
      })),
    };
  }

  private async mustGet(id: string): Promise<ExecutionRecord> {
    const rec = await this.store.get(id);
    if (!rec) throw new ExecutionError(404, `no execution ${id}`);
    return rec;
  }

  /** Moves a parked execution's job to run now. */
  private async wake(id: string): Promise<void> {
    const job = await this.queue.getJob(id);
    if (!job) return void (await this.enqueue(id));
    if (await job.isDelayed()) await job.promote().catch(() => undefined);
  }

  // --- the processor --------------------------------------------------------------------------

  private async process(job: Job, token?: string): Promise<void> {
    const id = (job.data as { id: string }).id;
    for (let before = this.runs.get(id); before; before = this.runs.get(id)) await before.catch(() => undefined);
    const run = this.processAlone(job, token, id);
    this.runs.set(id, run);
    try {
      await run;
    } finally {
      if (this.runs.get(id) === run) this.runs.delete(id);
    }
  }

  private async processAlone(job: Job, token: string | undefined, id: string): Promise<void> {
    const rec = await this.store.get(id);
    if (!rec || TERMINAL.has(rec.status)) return;
    const log = this.opts.log.child({ execution: id, runbook: rec.runbook, version: rec.version, mode: rec.mode });
    if (this.opts.fence) {
      const epoch = this.opts.fence();
      // Not leading (a transition under way): the job goes back to the queue for the leader.
      if (epoch === undefined) return this.handBack(job, token, log);
      this.tokens.set(id, epoch);
    }
    const controller = new AbortController();
    this.controllers.set(id, controller);
    try {
      const outcome = await this.advance(rec, log, controller.signal);
      if (outcome.park !== undefined) await this.park(job, token, id, outcome.park);
    } catch (err) {
      if (err instanceof DelayedError) throw err;
      let fenced = err instanceof FencedError ? err : undefined;
      if (!fenced) {
        log.error({ err: reasonOf(err) }, 'execution failed unexpectedly');
        const failed = await this.finish(rec, 'failed', `internal error: ${reasonOf(err)}`).then(
          () => undefined,
          (e: unknown) => e,
        );
        if (failed instanceof FencedError) fenced = failed;
        else if (failed) throw failed;
      }
      if (fenced) {
        // Nothing more of this execution is written here: the job goes back to the queue, and the
        // leader's worker takes it up from the store.
        log.warn({ token: fenced.token }, 'fenced: a newer leader holds the lease');
        await this.handBack(job, token, log);
      }
    } finally {
      this.tokens.delete(id);
      this.controllers.delete(id);
      await this.refreshGauges().catch(() => undefined);
    }
  }

  /**
   * Before a step starts on an instance that does not lead with `lead` now: when the lease lapsed
   * only because Redis was away, waits (up to regainMs) for this instance to take it
   * back with that same token, as a lone leader does once Redis answers again; then the execution
   * goes on here. Another token, an abort or the deadline: FencedError, and the leader resumes it.
   */
  private async regain(lead: number, signal: AbortSignal, log: Logger): Promise<void> {
    const fence = this.opts.fence!;
    const deadline = Date.now() + (this.opts.regainMs ?? 10_000);
    let told = false;
    for (;;) {
      const now = fence();
      if (now === lead) {
        if (told) log.info({ token: lead }, 'leading again with the same token: the execution goes on');
        return;
      }
      if (now !== undefined || !this.lapsed || signal.aborted || Date.now() >= deadline) throw new FencedError(lead);
      if (!told) log.info({ token: lead }, 'not leading (Redis was away): waiting for the lease to come back before the next step');
      told = true;
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /**
   * Gives the job back to the queue at once (through the delayed set, HAND_BACK_MS from now), for the
   * leader's worker: this instance does not lead, and holds the job's lock. Without it the job would
   * wait for its lock to expire and BullMQ's stalled-job check to see it twice (up to three lock
   * durations). Where the lock is no longer this worker's (it lapsed) or Redis does not answer, the
   * job is left as it is and that check returns it.
   */
  private async handBack(job: Job, token: string | undefined, log: Logger): Promise<never> {
    try {
      await job.moveToDelayed(Date.now() + HAND_BACK_MS, token);
      log.info('not leading: the job is given back to the queue for the leader');
    } catch (err) {
      log.debug({ err: reasonOf(err) }, 'the job could not be given back; it returns when its lock expires');
    }
    throw new DelayedError();
  }

  /** Parks the job until `until`; wakes itself if an answer came while it was parking. */
  private async park(job: Job, token: string | undefined, id: string, until: number): Promise<never> {
    const before = await this.answersSignature(id);
    try {
      await job.moveToDelayed(until, token);
    } catch (err) {
      // The lock lapsed and the job went back to the queue (or to another worker): whoever holds
      // it now resumes from the store. The execution itself has not failed.
      this.opts.log.warn({ execution: id, err: reasonOf(err) }, 'could not park the job (its lock was lost); it resumes elsewhere');
      throw new DelayedError();
    }
    if ((await this.answersSignature(id)) !== before) await job.promote().catch(() => undefined);
    throw new DelayedError();
  }

  private async answersSignature(id: string): Promise<string> {
    const [approvals, abort, rec] = await Promise.all([this.store.approvals(id), this.store.abortRequest(id), this.store.get(id)]);
    const decisions = rec ? await this.store.redis.hlen(`{continuity}:exec:${id}:decisions`) : 0;
    return `${approvals.length}:${abort ? 1 : 0}:${decisions}`;
  }

  /** Runs the execution as far as it can go; returns when it finished or must wait. */
  private async advance(rec: ExecutionRecord, log: Logger, signal: AbortSignal): Promise<{ park?: number }> {
    const rb = this.opts.runbooks().get(rec.runbook, rec.version);
    if (!rb || rb.hash !== rec.hash) {
      await this.finish(
        rec,
        'failed',
        `${rec.runbook} v${rec.version} with sha256 ${rec.hash.slice(0, 12)}… is no longer loaded (its file changed or is gone)`,
      );
      return {};
    }
    const abort = await this.store.abortRequest(rec.id);
    if (abort) {
      await this.finish(rec, 'aborted', `aborted by ${abort.who}${abort.comment ? `: ${abort.comment}` : ''}`);
      return {};
    }
    const deadline = rec.createdAt + rb.timeoutMs;
    if (Date.now() > deadline) {
      await this.finish(rec, 'failed', `the execution ran past its timeout of ${formatDuration(rb.timeoutMs)}`);
      return {};
    }
    // waiting_approval stays until the gate itself decides, so approvers never see the state flicker.
    if (rec.status === 'queued' || rec.status === 'awaiting_decision') {
      if (rec.status === 'queued')
        this.notify(
          rec,
          rb,
          'started',
          `${rec.mode} execution ${rec.id} of ${rb.name} v${rb.version} started (requested by ${rec.requestedBy})`,
        );
      rec.status = rec.phase === 'rollback' ? 'rolling_back' : 'running';
      await this.store.update(rec);
    }
    const records = await this.store.steps(rec.id);
    const scope: TemplateScope = {
      inputs: rec.inputs,
      steps: {},
      execution: { id: rec.id, mode: rec.mode, runbook: rec.runbook, version: rec.version },
    };
    for (const r of records.values()) if (r.outputs) scope.steps[r.step] = { outputs: r.outputs };

    for (const phase of rec.phase === 'main' ? (['main', 'rollback'] as const) : (['rollback'] as const)) {
      if (phase === 'rollback' && rec.phase !== 'rollback') break;
      for (const step of phase === 'main' ? rb.steps : rb.rollback) {
        const outcome = await this.runStep(rec, rb, step, records.get(stepField(phase, step.id)), scope, log, signal);
        if (outcome === 'next') continue;
        if (typeof outcome === 'object') return outcome;
        if (outcome === 'stop') return {};
        if (outcome === 'rollback') {
          if (phase === 'rollback' || rb.rollback.length === 0) return {};
          rec.phase = 'rollback';
          rec.status = 'rolling_back';
          await this.store.update(rec, { type: 'rollback_started', message: 'running the rollback steps' });
          return this.advance(rec, log, signal);
        }
      }
    }
    if (rec.phase === 'rollback') await this.finish(rec, 'rolled_back', rec.reason ?? 'rolled back');
    else
      await this.finish(
        rec,
        'succeeded',
        rec.mode === 'dry-run' ? 'dry run: every step rendered and checked, none run' : 'every step done',
      );
    return {};
  }

  /**
   * One step: skip what is done, stop at what needs a person, run the rest. Returns 'next', a park
   * time, 'stop' (the execution finished), or 'rollback'.
   */
  private async runStep(
    rec: ExecutionRecord,
    rb: Runbook,
    step: Step,
    existing: StepRecord | undefined,
    scope: TemplateScope,
    log: Logger,
    signal: AbortSignal,
  ): Promise<'next' | 'stop' | 'rollback' | { park: number }> {
    if (
      existing &&
      (existing.status === 'succeeded' ||
        existing.status === 'skipped' ||
        existing.status === 'planned' ||
        (existing.status === 'failed' && existing.continued))
    ) {
      return 'next';
    }
    // A failed attempt with retries left (a crash during the backoff) is retried; any other failure stands.
    if (existing?.status === 'failed' && !existing.retrying) return this.afterFailure(rec, step, existing.reason ?? 'failed');
    let attempt = existing?.attempt ?? 0;
    if (existing?.status === 'started' && !step.idempotent) {
      const d = await this.store.decision(rec.id, step.phase, step.id);
      if (!d) {
        if (rec.status !== 'awaiting_decision') {
          rec.status = 'awaiting_decision';
          await this.store.update(rec, {
            type: 'awaiting_decision',
            step: step.id,
            message: `step ${step.id} started at ${new Date(existing.startedAt ?? 0).toISOString()} but has no recorded result, and it is not idempotent: it will not be run again automatically; an operator must retry, skip or abort it`,
          });
          log.warn({ step: step.id }, 'execution awaiting an operator decision');
          this.notify(
            rec,
            rb,
            'awaiting_decision',
            `${rec.id}: step ${step.id} started but has no recorded result; decide: continuity retry|skip ${rec.id} ${step.id}, or continuity abort ${rec.id}`,
            'critical',
          );
        }
        return { park: Date.now() + DECISION_RECHECK_MS };
      }
      await this.store.clearDecision(rec.id, step.phase, step.id);
      if (d.action === 'skip') {
        await this.store.putStep(
          rec.id,
          { ...existing, status: 'skipped', finishedAt: Date.now(), reason: `skipped by ${d.who}` },
          { type: 'step_skipped', who: d.who, message: `${step.id} skipped by ${d.who}` },
        );
        return 'next';
      }
      if (d.action === 'abort') {
        await this.finish(rec, 'aborted', `aborted by ${d.who}`);
        return 'stop';
      }
      // retry: run it again, knowingly.
    }

    if (rec.mode === 'dry-run') {
      if (step.kind === 'approval') return this.approvalGate(rec, rb, step, existing, scope, log);
      // Nothing has run, so outputs are unknown: they are shown as placeholders and `when` as written.
      const plan = render(step.settings, scope, { missing: (expr) => `<${expr}>` });
      const note = step.when ? ` when ${step.when.source}` : '';
      await this.store.putStep(
        rec.id,
        { ...stepBase(step, attempt), status: 'planned', plan },
        { type: 'step_planned', message: `${step.id} (${step.kind}) would run${note}` },
      );
      return 'next';
    }

    if (step.when) {
      let run: unknown;
      try {
        run = step.when.evaluate({ inputs: scope.inputs, steps: scope.steps });
      } catch (err) {
        run = new Error(reasonOf(err));
      }
      if (run instanceof Error) {
        return this.recordFailure(
          rec,
          step,
          attempt + 1,
          `when "${step.when.source}" could not be evaluated: ${run.message.split('\n')[0]}`,
        );
      }
      if (run !== true) {
        await this.store.putStep(
          rec.id,
          { ...stepBase(step, attempt), finishedAt: Date.now(), status: 'skipped', reason: `when "${step.when.source}" is false` },
          { type: 'step_skipped', message: `${step.id} skipped: when "${step.when.source}" is false` },
        );
        return 'next';
      }
    }

    if (step.kind === 'approval') return this.approvalGate(rec, rb, step, existing, scope, log);

    let stepScope = scope;
    if (rec.mode === 'drill') {
      if (step.drill === 'skip') {
        await this.store.putStep(
          rec.id,
          { ...stepBase(step, attempt), finishedAt: Date.now(), status: 'skipped', reason: 'skipped in a drill' },
          { type: 'step_skipped', message: `${step.id} skipped in a drill` },
        );
        return 'next';
      }
      if (typeof step.drill === 'object') stepScope = { ...scope, inputs: { ...scope.inputs, ...step.drill.inputs } };
    }

    let rendered: unknown;
    try {
      rendered = render(step.settings, stepScope);
    } catch (err) {
      return this.recordFailure(rec, step, attempt + 1, `cannot render settings: ${reasonOf(err)}`);
    }
    for (;;) {
      attempt++;
      failpoint(`step:${step.id}:before-start`);
      // No new step starts while this instance does not lead (the lease lapsed with Redis away).
      const lead = this.tokens.get(rec.id);
      if (this.opts.fence && lead !== undefined && this.opts.fence() !== lead) await this.regain(lead, signal, log);
      const startedAt = Date.now();
      await this.store.putStep(
        rec.id,
        { ...stepBase(step, attempt), status: 'started', startedAt },
        { type: 'step_started', message: `${step.id} (${step.kind}) started, attempt ${attempt}` },
      );
      failpoint(`step:${step.id}:after-start`);
      const result = await this.execute(step, rendered, rec, signal, log);
      failpoint(`step:${step.id}:after-run`);
      const durationSeconds = (Date.now() - startedAt) / 1000;
      this.opts.metrics.stepDuration.observe({ kind: step.kind }, durationSeconds);
      // What every record of this attempt says, whatever its outcome.
      const ran = { ...stepBase(step, attempt), startedAt, finishedAt: Date.now(), durationSeconds, output: cut(result.output) };
      if (result.ok) {
        const outputs: Record<string, unknown> = {};
        let outputError: string | undefined;
        for (const [name, expr] of Object.entries(step.outputs)) {
          try {
            outputs[name] = expr.evaluate({ result: result.result });
          } catch (err) {
            outputError = `output ${name} ("${expr.source}"): ${reasonOf(err).split('\n')[0]}`;
          }
        }
        if (!outputError) {
          await this.store.putStep(
            rec.id,
            { ...ran, status: 'succeeded', outputs },
            { type: 'step_succeeded', message: `${step.id} succeeded in ${formatDuration(durationSeconds * 1000)}` },
          );
          failpoint(`step:${step.id}:after-result`);
          scope.steps[step.id] = { outputs };
          return 'next';
        }
        result.ok = false;
        result.reason = outputError;
      }
      const reason = result.reason ?? 'failed';
      if (signal.aborted) {
        await this.store.putStep(
          rec.id,
          { ...ran, status: 'failed', reason },
          { type: 'step_failed', message: `${step.id} stopped: ${reason}` },
        );
        const abort = await this.store.abortRequest(rec.id);
        if (abort) await this.finish(rec, 'aborted', `aborted by ${abort.who}`);
        return 'stop';
      }
      if (step.idempotent && step.retries && attempt <= step.retries.max) {
        const wait = step.retries.backoffMs * 2 ** (attempt - 1);
        await this.store.putStep(
          rec.id,
          { ...ran, status: 'failed', retrying: true, reason },
          {
            type: 'step_retry',
            message: `${step.id} failed (${reason}); retry ${attempt} of ${step.retries.max} in ${formatDuration(wait)}`,
          },
        );
        await delay(wait, undefined, { signal }).catch(() => undefined);
        continue;
      }
      return this.recordFailure(rec, step, attempt, reason, ran);
    }
  }

  private async recordFailure(
    rec: ExecutionRecord,
    step: Step,
    attempt: number,
    reason: string,
    extra: Partial<StepRecord> = {},
  ): Promise<'next' | 'stop' | 'rollback'> {
    const continued = step.onFailure === 'continue';
    await this.store.putStep(
      rec.id,
      { ...stepBase(step, attempt), finishedAt: Date.now(), ...extra, status: 'failed', reason, ...(continued ? { continued } : {}) },
      { type: 'step_failed', message: `${step.id} failed: ${reason}${continued ? ' (continuing)' : ''}` },
    );
    const rb = this.opts.runbooks().get(rec.runbook, rec.version);
    if (rb) this.notify(rec, rb, 'step_failed', `${rec.id}: step ${step.id} failed: ${reason}`, 'critical');
    return this.afterFailure(rec, step, reason);
  }

  private async afterFailure(rec: ExecutionRecord, step: Step, reason: string): Promise<'next' | 'stop' | 'rollback'> {
    if (step.onFailure === 'continue') return 'next';
    if (step.onFailure === 'rollback' && step.phase === 'main') {
      rec.reason = `step ${step.id} failed: ${reason}`;
      return 'rollback';
    }
    await this.finish(rec, 'failed', `step ${step.id} failed: ${reason}`);
    return 'stop';
  }

  /** Runs a step kind with its timeout enforced from outside and secrets resolved at the last moment. */
  private async execute(step: Step, rendered: unknown, rec: ExecutionRecord, outer: AbortSignal, log: Logger): Promise<StepResult> {
    const issues: ConfigIssue[] = [];
    const secrets = new Set<string>();
    const settings = resolveSecrets(rendered, [step.id], { file: `${rec.runbook} v${rec.version}`, env: process.env, issues, secrets });
    redactor.add(secrets);
    if (issues.length) return { ok: false, reason: issues.map(formatIssue).join('; '), result: {} };
    const kind = stepKinds[step.kind as keyof typeof stepKinds];
    const deadline = new AbortController();
    const onOuter = () => deadline.abort(outer.reason);
    outer.addEventListener('abort', onOuter, { once: true });
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<StepResult>((resolve) => {
      timer = setTimeout(() => {
        const reason = `timed out after ${formatDuration(step.timeoutMs)}`;
        deadline.abort(new Error(reason));
        resolve({ ok: false, reason, result: {} });
      }, step.timeoutMs);
    });
    const progress = this.progressReporter(rec.id, step);
    try {
      const run = (kind.run as (s: unknown, c: unknown) => Promise<StepResult>)(settings, {
        executionId: rec.id,
        stepId: step.id,
        mode: rec.mode,
        signal: deadline.signal,
        timeoutMs: step.timeoutMs,
        log: log.child({ step: step.id }),
        stateDir: this.opts.stateDir,
        probes: this.opts.probes,
        progress: progress.report,
      }).catch((err: unknown) => ({ ok: false, reason: reasonOf(err), result: {} }) as StepResult);
      const result = await Promise.race([run, timedOut]);
      if (!result.ok && outer.aborted) return { ...result, reason: reasonOf(outer.reason) };
      return result;
    } finally {
      await progress.flush();
      clearTimeout(timer);
      outer.removeEventListener('abort', onOuter);
      if (!deadline.signal.aborted) deadline.abort(new Error('step finished'));
    }
  }

  /** Keeps a running step's latest progress and writes it at most every 500 ms; flush() writes the last one. */
  private progressReporter(id: string, step: Step) {
    let latest: StepProgress | undefined;
    let written: StepProgress | undefined;
    let timer: NodeJS.Timeout | undefined;
    let writing: Promise<void> = Promise.resolve();
    const write = () => {
      timer = undefined;
      if (!latest || latest === written) return;
      const p = latest;
      written = p;
      writing = writing
        .then(() => this.store.setProgress(id, step.phase, step.id, p))
        .catch((err: unknown) => this.opts.log.debug({ err: reasonOf(err) }, 'progress not written'));
    };
    return {
      report: (p: Omit<StepProgress, 'at'>) => {
        latest = { ...p, at: Date.now() };
        timer ??= setTimeout(write, 500);
      },
      flush: async () => {
        clearTimeout(timer);
        write();
        await writing;
      },
    };
  }

  /** The approval gate: counts answers, expires, escalates; parks until someone answers. */
  private async approvalGate(
    rec: ExecutionRecord,
    rb: Runbook,
    step: Step,
    existing: StepRecord | undefined,
    scope: TemplateScope,
    log: Logger,
  ): Promise<'next' | 'stop' | 'rollback' | { park: number }> {
    const settings = step.approval!;
    // The message may name inputs (e.g. the data at risk): rendered for the approver to read.
    const gate = {
      ...settings,
      message: settings.message ? String(render(settings.message, scope, { missing: (e) => `<${e}>` })) : undefined,
    };
    if (rec.mode === 'dry-run') {
      await this.store.putStep(
        rec.id,
        { step: step.id, phase: step.phase, kind: 'approval', status: 'planned', attempt: 0, plan: gate },
        { type: 'step_planned', message: `${step.id}: approval by ${gate.quorum} of ${gate.roles.join('/')} would be asked` },
      );
      return 'next';
    }
    const now = Date.now();
    let waiting = existing;
    if (!waiting || waiting.status !== 'waiting') {
      waiting = {
        step: step.id,
        phase: step.phase,
        kind: 'approval',
        status: 'waiting',
        attempt: 1,
        requestedAt: now,
        expiresAt: now + step.timeoutMs,
      };
      await this.store.putStep(rec.id, waiting, {
        type: 'approval_needed',
        message: `${step.id}: waiting for ${gate.quorum} approval${gate.quorum > 1 ? 's' : ''} from ${gate.roles.join('/')} of ${rb.name} v${rb.version} (sha256 ${rb.hash.slice(0, 12)}…)${gate.message ? `: ${gate.message}` : ''}`,
      });
      log.info({ step: step.id, quorum: gate.quorum, roles: gate.roles }, 'approval needed');
      this.notify(
        rec,
        rb,
        'approval_needed',
        `${rb.name} v${rb.version} (${rec.mode}) needs ${gate.quorum} approval${gate.quorum > 1 ? 's' : ''} from ${gate.roles.join('/')}${gate.message ? `: ${gate.message}` : ''}. Review: continuity execution ${rec.id}; approve: continuity approve ${rec.id}`,
        'warning',
      );
    }
    const answers = (await this.store.approvals(rec.id)).filter((a) => a.step === step.id && a.hash === rec.hash);
    const denial = answers.find((a) => a.decision === 'deny');
    const approvers = [...new Set(answers.filter((a) => a.decision === 'approve').map((a) => a.who))];
    const waited = (now - (waiting.requestedAt ?? now)) / 1000;
    if (denial) {
      this.opts.metrics.approvalWait.observe({ runbook: rb.name }, waited);
      const reason = `denied by ${denial.who}${denial.comment ? `: ${denial.comment}` : ''}`;
      await this.store.putStep(
        rec.id,
        { ...waiting, status: 'failed', finishedAt: now, reason },
        { type: 'step_failed', message: `${step.id}: ${reason}` },
      );
      if (rb.rollback.length > 0 && step.phase === 'main') {
        rec.reason = `approval ${step.id} ${reason}`;
        return 'rollback';
      }
      await this.finish(rec, 'aborted', `approval ${step.id} ${reason}`);
      return 'stop';
    }
    if (approvers.length >= gate.quorum) {
      this.opts.metrics.approvalWait.observe({ runbook: rb.name }, waited);
      await this.store.putStep(
        rec.id,
        { ...waiting, status: 'succeeded', finishedAt: now, outputs: { approvers } },
        { type: 'step_succeeded', message: `${step.id}: approved by ${approvers.join(', ')}` },
      );
      if (rec.status === 'waiting_approval') {
        rec.status = 'running';
        await this.store.update(rec);
      }
      return 'next';
    }
    if (now >= (waiting.expiresAt ?? now)) {
      if (gate.on_timeout === 'escalate') {
        const expiresAt = now + step.timeoutMs;
        await this.store.putStep(
          rec.id,
          { ...waiting, expiresAt },
          {
            type: 'approval_escalated',
            message: `${step.id}: no quorum after ${formatDuration(step.timeoutMs)}; escalated, waiting until ${new Date(expiresAt).toISOString()}`,
          },
        );
        const text = `${rb.name} v${rb.version}: approval ${step.id} of ${rec.id} has no quorum (${approvers.length} of ${gate.quorum}) after ${formatDuration(step.timeoutMs)}; escalated. Approve: continuity approve ${rec.id}`;
        this.notify(rec, rb, 'approval_needed', text, 'critical');
        if (gate.escalate_to) this.sendWebhook(rec, rb, { url: gate.escalate_to, format: 'json' }, 'approval_escalated', text, 'critical');
        return { park: expiresAt };
      }
      this.opts.metrics.approvalWait.observe({ runbook: rb.name }, waited);
      await this.store.putStep(
        rec.id,
        { ...waiting, status: 'failed', finishedAt: now, reason: 'approval expired' },
        {
          type: 'step_failed',
          message: `${step.id}: approval expired after ${formatDuration(step.timeoutMs)} with ${approvers.length} of ${gate.quorum}`,
        },
      );
      await this.finish(rec, 'aborted', `approval ${step.id} expired`);
      return 'stop';
    }
    if (rec.status !== 'waiting_approval') {
      rec.status = 'waiting_approval';
      await this.store.update(rec);
    }
    return { park: waiting.expiresAt! };
  }

  private async finish(rec: ExecutionRecord, status: ExecutionStatus, reason: string): Promise<void> {
    rec.status = status;
    rec.reason = reason;
    rec.finishedAt = Date.now();
    await this.store.update(rec, { type: status, message: reason });
    this.opts.metrics.executions.inc({ runbook: rec.runbook, version: String(rec.version), mode: rec.mode, outcome: status });
    const rb = this.opts.runbooks().get(rec.runbook, rec.version);
    const event = status === 'succeeded' ? 'succeeded' : status === 'aborted' ? 'aborted' : 'failed';
    if (rb)
      this.notify(
        rec,
        rb,
        event,
        `${rec.id} (${rb.name} v${rb.version}, ${rec.mode}) ${status}: ${reason}`,
        status === 'succeeded' ? 'info' : 'critical',
      );
    const level = status === 'succeeded' ? 'info' : 'warn';
    this.opts.log[level](
      { execution: rec.id, runbook: rec.runbook, version: rec.version, mode: rec.mode, outcome: status, reason },
      'execution finished',
    );
  }

  /**
   * Tells the runbook's webhooks about an event, without holding up the execution: a webhook that
   * fails is logged and put on the timeline, and the execution goes on.
   */
  private notify(
    rec: ExecutionRecord,
    rb: Runbook,
    event: string,
    message: string,
    severity: 'info' | 'warning' | 'critical' = 'info',
  ): void {
    for (const n of rb.notifications) {
      if (n.events && !n.events.includes(event)) continue;
      this.sendWebhook(rec, rb, n, event, message, severity);
    }
  }

  private sendWebhook(
    rec: ExecutionRecord,
    rb: Runbook,
    target: { url: string; format: 'json' | 'slack' },
    event: string,
    message: string,
    severity: 'info' | 'warning' | 'critical',
  ): void {
    const issues: ConfigIssue[] = [];
    const secrets = new Set<string>();
    const url = resolveSecrets(target.url, ['notifications'], { file: rb.file, env: process.env, issues, secrets }) as string;
    redactor.add(secrets);
    const signal = AbortSignal.timeout(5000);
    const sent = issues.length
      ? Promise.resolve<StepResult>({ ok: false, reason: issues.map((x) => x.message).join('; '), result: {} })
      : stepKinds.notify.run(
          { url, format: target.format, message, severity },
          { executionId: rec.id, stepId: event, mode: rec.mode, signal, timeoutMs: 5000, log: this.opts.log, stateDir: this.opts.stateDir },
        );
    void sent.then(async (r) => {
      if (r.ok) return;
      this.opts.log.warn({ execution: rec.id, event, reason: r.reason }, 'notification failed');
      await this.store
        .event(rec.id, { type: 'notification_failed', message: `notification of ${event} failed: ${r.reason}` })
        .catch(() => undefined);
    });
  }

  /** Gauges of executions waiting on people, from the store. */
  async refreshGauges(): Promise<void> {
    const active = await this.store.active();
    this.opts.metrics.approvalsPending.set(active.filter((r) => r.status === 'waiting_approval').length);
    this.opts.metrics.awaitingDecision.set(active.filter((r) => r.status === 'awaiting_decision').length);
  }
}

/** The fields every record of a step carries. */
function stepBase(step: Step, attempt: number): Pick<StepRecord, 'step' | 'phase' | 'kind' | 'attempt' | 'stage'> {
  return { step: step.id, phase: step.phase, kind: step.kind, attempt, ...(step.stage ? { stage: step.stage } : {}) };
}

function cut(text: string | undefined): string | undefined {
  if (text === undefined) return undefined;
  const redacted = redactor.redact(text);
  return redacted.length > OUTPUT_LIMIT
    ? redacted.slice(0, OUTPUT_LIMIT) + `\n… (${redacted.length - OUTPUT_LIMIT} more characters cut)`
    : redacted;
}

/** Step records in the runbook's order (main steps, then rollback), whatever order Redis kept. */
function sortSteps(records: StepRecord[], rb: Runbook | undefined): StepRecord[] {
  const order = new Map([...(rb?.steps ?? []), ...(rb?.rollback ?? [])].map((s, i) => [`${s.phase}:${s.id}`, i]));
  return records.sort((a, b) => (order.get(`${a.phase}:${a.step}`) ?? 1e9) - (order.get(`${b.phase}:${b.step}`) ?? 1e9));
}
