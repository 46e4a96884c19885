import type { Redis } from 'ioredis';
import { fencedWrite, type Command } from '../cluster/fence.js';
import type { ExecutionMode } from './steps/types.js';

/** Where an execution is. Terminal: succeeded, failed, aborted, rolled_back. */
export type ExecutionStatus =
  'queued' | 'running' | 'waiting_approval' | 'awaiting_decision' | 'rolling_back' | 'succeeded' | 'failed' | 'aborted' | 'rolled_back';

export const TERMINAL: ReadonlySet<ExecutionStatus> = new Set(['succeeded', 'failed', 'aborted', 'rolled_back']);

/** One run of one runbook version. Secret inputs are kept as their references, never resolved. */
export interface ExecutionRecord {
  id: string;
  runbook: string;
  version: number;
  /** sha256 of the runbook version's file: what approvals approve. */
  hash: string;
  mode: ExecutionMode;
  inputs: Record<string, unknown>;
  requestedBy: string;
  createdAt: number;
  updatedAt: number;
  status: ExecutionStatus;
  /** main, or rollback once rollback steps run. */
  phase: 'main' | 'rollback';
  reason?: string;
  finishedAt?: number;
}

/** started: recorded before the step ran; a started step with no result is what a crash leaves. */
export type StepStatus = 'started' | 'succeeded' | 'failed' | 'skipped' | 'waiting' | 'planned';

export interface StepRecord {
  step: string;
  phase: 'main' | 'rollback';
  kind: string;
  status: StepStatus;
  attempt: number;
  startedAt?: number;
  finishedAt?: number;
  durationSeconds?: number;
  outputs?: Record<string, unknown>;
  /** The step's output text, cut and redacted. */
  output?: string;
  reason?: string;
  /** With status failed: a retry follows (the step is idempotent and has retries left). */
  retrying?: boolean;
  /** With status failed and on_failure continue: the execution went on. */
  continued?: boolean;
  /** For a waiting approval: when it was asked and when it expires. */
  requestedAt?: number;
  expiresAt?: number;
  /** For a dry run: the step's settings rendered (secret references unresolved). */
  plan?: unknown;
  /** The runbook step's stage (what a restore test times apart). */
  stage?: string;
  /** While it runs: what the step last reported of its progress (e.g. bytes of total), as of `at`. */
  progress?: StepProgress;
}

/** What a long step reports while it runs. */
export interface StepProgress {
  /** What it is doing now, e.g. "download". */
  activity?: string;
  done?: number;
  total?: number;
  unit?: string;
  at: number;
}

/** One approver's answer to an approval step. */
export interface ApprovalRecord {
  step: string;
  who: string;
  decision: 'approve' | 'deny';
  comment?: string;
  at: number;
  /** The runbook version's hash the approver saw and approved. */
  hash: string;
}

/** An operator's decision on a step that started without a recorded result. */
export interface DecisionRecord {
  step: string;
  action: 'retry' | 'skip' | 'abort';
  who: string;
  comment?: string;
  at: number;
}

/** One line of an execution's timeline. */
export interface TimelineEvent {
  at: number;
  type: string;
  step?: string;
  who?: string;
  message: string;
}

const P = '{continuity}';
const k = {
  exec: (id: string) => `${P}:exec:${id}`,
  steps: (id: string) => `${P}:exec:${id}:steps`,
  approvals: (id: string) => `${P}:exec:${id}:approvals`,
  decisions: (id: string) => `${P}:exec:${id}:decisions`,
  events: (id: string) => `${P}:exec:${id}:events`,
  abort: (id: string) => `${P}:exec:${id}:abort`,
  progress: (id: string) => `${P}:exec:${id}:progress`,
  all: `${P}:executions`,
  active: `${P}:executions:active`,
  audit: `${P}:audit`,
  seq: (key: string) => `${P}:exec-seq:${key}`,
};

const stepField = (phase: string, step: string) => `${phase}:${step}`;

/**
 * Executions in Redis. Every write that the executor depends on (a step started, a step's result)
 * is one MULTI with its timeline event, so the record and the timeline never disagree, and each
 * is written before the next step starts. The audit stream is append-only.
 */
export class ExecutionStore {
  /**
   * `fence`: the fencing token the writer of an execution's progress carries (the leader's, when
   * instances share the Redis): step records and execution updates are then written only while
   * that token is the leader epoch, else refused with a FencedError. It may throw FencedError
   * itself (a writer that knows it no longer leads). Undefined, or returning undefined: no fencing.
   */
  constructor(
    readonly redis: Redis,
    private readonly fence?: (id: string) => number | undefined,
  ) {}

  /** Creates the record unless one with this id exists; returns whether it was created. */
  async create(rec: ExecutionRecord): Promise<boolean> {
    const ok = await this.redis.set(k.exec(rec.id), JSON.stringify(rec), 'NX');
    if (ok !== 'OK') return false;
    await this.redis
      .multi()
      .zadd(k.all, rec.createdAt, rec.id)
      .sadd(k.active, rec.id)
      .xadd(
        k.events(rec.id),
        '*',
        ...fields({
          at: rec.createdAt,
          type: 'created',
          who: rec.requestedBy,
          message: `${rec.mode} execution of ${rec.runbook} v${rec.version} requested by ${rec.requestedBy}`,
        }),
      )
      .exec();
    return true;
  }

  /** A number that grows per key, for ids of repeated runs. */
  nextSeq(key: string): Promise<number> {
    return this.redis.incr(k.seq(key));
  }

  async get(id: string): Promise<ExecutionRecord | undefined> {
    const raw = await this.redis.get(k.exec(id));
    return raw ? (JSON.parse(raw) as ExecutionRecord) : undefined;
  }

  /** Updates the record and appends its event in one transaction (fenced, see the constructor). */
  async update(rec: ExecutionRecord, event?: Omit<TimelineEvent, 'at'>): Promise<void> {
    const token = this.fence?.(rec.id);
    rec.updatedAt = Date.now();
    const cmds: Command[] = [['set', k.exec(rec.id), JSON.stringify(rec)]];
    if (TERMINAL.has(rec.status)) cmds.push(['srem', k.active, rec.id]);
    if (event) {
      cmds.push(['xadd', k.events(rec.id), '*', ...fields({ at: rec.updatedAt, ...event })]);
      cmds.push([
        'xadd',
        k.audit,
        '*',
        ...fields({
          at: rec.updatedAt,
          who: event.who ?? 'executor',
          action: event.type,
          target: rec.id,
          outcome: rec.status,
          detail: event.message,
          epoch: token,
        }),
      ]);
    }
    await fencedWrite(this.redis, token, cmds);
  }

  async steps(id: string): Promise<Map<string, StepRecord>> {
    const all = await this.redis.hgetall(k.steps(id));
    return new Map(Object.entries(all).map(([f, v]) => [f, JSON.parse(v) as StepRecord]));
  }

  /** Progress reports of running steps, by step field; kept apart so a report never races a step's record. */
  async progress(id: string): Promise<Map<string, StepProgress>> {
    const all = await this.redis.hgetall(k.progress(id));
    return new Map(Object.entries(all).map(([f, v]) => [f, JSON.parse(v) as StepProgress]));
  }

  async setProgress(id: string, phase: string, step: string, p: StepProgress): Promise<void> {
    await this.redis.hset(k.progress(id), stepField(phase, step), JSON.stringify(p));
  }

  /** Writes a step record and its event in one transaction (fenced, see the constructor). */
  async putStep(id: string, rec: StepRecord, event: Omit<TimelineEvent, 'at'>): Promise<void> {
    const token = this.fence?.(id);
    const at = Date.now();
    await fencedWrite(this.redis, token, [
      ['hset', k.steps(id), stepField(rec.phase, rec.step), JSON.stringify(rec)],
      ['xadd', k.events(id), '*', ...fields({ at, step: rec.step, ...event })],
      [
        'xadd',
        k.audit,
        '*',
        ...fields({
          at,
          who: event.who ?? 'executor',
          action: event.type,
          target: `${id}/${rec.step}`,
          outcome: rec.status,
          detail: event.message,
          epoch: token,
        }),
      ],
    ]);
  }

  async addApproval(id: string, a: ApprovalRecord): Promise<void> {
    await this.redis
      .multi()
      .rpush(k.approvals(id), JSON.stringify(a))
      .xadd(
        k.events(id),
        '*',
        ...fields({
          at: a.at,
          type: a.decision === 'approve' ? 'approved' : 'denied',
          step: a.step,
          who: a.who,
          message: `${a.who} ${a.decision === 'approve' ? 'approved' : 'denied'}${a.comment ? `: ${a.comment}` : ''}`,
        }),
      )
      .exec();
  }

  async approvals(id: string): Promise<ApprovalRecord[]> {
    return (await this.redis.lrange(k.approvals(id), 0, -1)).map((s) => JSON.parse(s) as ApprovalRecord);
  }

  async setDecision(id: string, phase: string, d: DecisionRecord): Promise<void> {
    await this.redis
      .multi()
      .hset(k.decisions(id), stepField(phase, d.step), JSON.stringify(d))
      .xadd(
        k.events(id),
        '*',
        ...fields({
          at: d.at,
          type: `decision_${d.action}`,
          step: d.step,
          who: d.who,
          message: `${d.who} decided: ${d.action}${d.comment ? ` (${d.comment})` : ''}`,
        }),
      )
      .exec();
  }

  async decision(id: string, phase: string, step: string): Promise<DecisionRecord | undefined> {
    const raw = await this.redis.hget(k.decisions(id), stepField(phase, step));
    return raw ? (JSON.parse(raw) as DecisionRecord) : undefined;
  }

  /** The executor takes a decision up: fenced like a step record, so a deposed leader cannot consume it. */
  async clearDecision(id: string, phase: string, step: string): Promise<void> {
    await fencedWrite(this.redis, this.fence?.(id), [['hdel', k.decisions(id), stepField(phase, step)]]);
  }

  async requestAbort(id: string, who: string, comment?: string): Promise<void> {
    await this.redis
      .multi()
      .set(k.abort(id), JSON.stringify({ who, comment, at: Date.now() }))
      .xadd(
        k.events(id),
        '*',
        ...fields({ at: Date.now(), type: 'abort_requested', who, message: `${who} asked to abort${comment ? `: ${comment}` : ''}` }),
      )
      .exec();
  }

  async abortRequest(id: string): Promise<{ who: string; comment?: string } | undefined> {
    const raw = await this.redis.get(k.abort(id));
    return raw ? JSON.parse(raw) : undefined;
  }

  async event(id: string, e: Omit<TimelineEvent, 'at'>): Promise<void> {
    await this.redis.xadd(k.events(id), '*', ...fields({ at: Date.now(), ...e }));
  }

  async timeline(id: string): Promise<TimelineEvent[]> {
    const entries = await this.redis.xrange(k.events(id), '-', '+');
    return entries.map(([, f]) => {
      const o: Record<string, string> = {};
      for (let i = 0; i < f.length; i += 2) o[f[i]!] = f[i + 1]!;
      return {
        at: Number(o.at),
        type: o.type!,
        message: o.message!,
        ...(o.step ? { step: o.step } : {}),
        ...(o.who ? { who: o.who } : {}),
      };
    });
  }

  /** Newest first. */
  async list(limit = 100): Promise<ExecutionRecord[]> {
    const ids = await this.redis.zrevrange(k.all, 0, limit - 1);
    if (ids.length === 0) return [];
    const raws = await this.redis.mget(ids.map(k.exec));
    return raws.filter((r): r is string => !!r).map((r) => JSON.parse(r) as ExecutionRecord);
  }

  /** Executions not yet finished. */
  async active(): Promise<ExecutionRecord[]> {
    const ids = await this.redis.smembers(k.active);
    if (ids.length === 0) return [];
    const raws = await this.redis.mget(ids.map(k.exec));
    return raws.filter((r): r is string => !!r).map((r) => JSON.parse(r) as ExecutionRecord);
  }

  /** Appends to the append-only audit stream: who did what, and whether it was allowed. */
  async audit(entry: { who: string; action: string; target?: string; outcome: string; detail?: string }): Promise<void> {
    await this.redis.xadd(k.audit, '*', ...fields({ at: Date.now(), ...entry }));
  }

  async auditLog(count = 100): Promise<Array<Record<string, string>>> {
    const entries = await this.redis.xrevrange(k.audit, '+', '-', 'COUNT', count);
    return entries.map(([, f]) => {
      const o: Record<string, string> = {};
      for (let i = 0; i < f.length; i += 2) o[f[i]!] = f[i + 1]!;
      return o;
    });
  }
}

function fields(o: object): string[] {
  const out: string[] = [];
  for (const [key, v] of Object.entries(o)) if (v !== undefined) out.push(key, String(v));
  return out;
}

export { stepField };
