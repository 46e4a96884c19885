import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { Queue, type Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashToken } from '../../../src/http/auth.js';
import { Metrics } from '../../../src/metrics.js';
import { Executor } from '../../../src/runbooks/executor.js';
import { RunbookSet } from '../../../src/runbooks/loader.js';
import { writeConfig } from '../../helpers/config.js';
import { closedPort } from '../../helpers/net.js';
import { startRedisServer, type TestRedisServer } from '../../helpers/redis-server.js';
import { until as waitUntil } from '../../helpers/until.js';

/**
 * Redis restarting in the middle of executions (issue 7). A private redis-server with AOF on and
 * appendfsync always (never the machine's Redis), killed and restarted on the same port and folder
 * while a daemon (a child process, as in production) runs a runbook: a non-idempotent step running
 * during the first outage, an approval just given before the second. Nothing queued, approved or
 * recorded may be lost, the execution must finish by itself with each non-idempotent step run
 * exactly once, probes and /metrics must go on while Redis is away, the API must answer 503 fast,
 * and the BullMQ workers must take new jobs again without a daemon restart.
 */
const OPERATOR = 'tok-restart-operator-0123456789';
const APPROVER = 'tok-restart-approver-0123456789';
const ADMIN = 'tok-restart-admin-01234567890123';
/** Bound on the time from Redis answering again to the workers taking jobs again. */
const RECOVERY_BOUND_MS = 20_000;

function slowRunbook(log: string): string {
  const shell = (id: string, script: string, idempotent: boolean) => `  - id: ${id}
    kind: shell
    timeout: 30s
    idempotent: ${idempotent}
    shell:
      argv: [sh, -c, '${script}', sh, '${log}']
`;
  return `name: slow
version: 1
description: Steps that take seconds, two not idempotent, and an approval gate.
timeout: 10m
steps:
${shell('s1', 'echo s1 >> "$1"', true)}${shell('s2', 'echo s2-begin >> "$1"; sleep 3; echo s2-end >> "$1"', false)}  - id: approve
    kind: approval
    timeout: 5m
    approval: { quorum: 1, roles: [approver] }
  - id: s3
    kind: sleep
    timeout: 30s
    idempotent: true
    sleep: { duration: 2s }
${shell('s4', 'echo s4 >> "$1"', false)}`;
}

function longRunbook(log: string): string {
  return `name: long
version: 1
description: A non-idempotent step that outlasts a long Redis outage, then one more.
timeout: 10m
steps:
  - id: long
    kind: shell
    timeout: 60s
    shell:
      argv: [sh, -c, 'echo long-begin >> "$1"; sleep 16; echo long-end >> "$1"', sh, '${log}']
  - id: after
    kind: shell
    timeout: 30s
    shell:
      argv: [sh, -c, 'echo after >> "$1"', sh, '${log}']
`;
}

function quickRunbook(log: string): string {
  return `name: quick
version: 1
description: One non-idempotent line per execution.
timeout: 10m
steps:
  - id: mark
    kind: shell
    timeout: 30s
    shell:
      argv: [sh, -c, 'echo "$2" >> "$1"', sh, '${log}', '{{ execution.id }}']
`;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- API answers, read loosely by the test
type Json = Record<string, any>;

describe('Redis restarts in the middle of executions', () => {
  let redis: TestRedisServer;
  let listener: net.Server;
  let daemon: ChildProcess | undefined;
  let exited: Promise<unknown> = Promise.resolve();
  let out = '';
  let port: number;
  let cfg: ReturnType<typeof writeConfig>;
  let slowLog: string;
  let quickLog: string;
  let longLog: string;
  const timings: Record<string, number> = {};

  const url = (path: string) => `http://127.0.0.1:${port}${path}`;
  const api = async (method: string, path: string, body?: unknown, token = OPERATOR, timeoutMs = 10_000) => {
    const res = await fetch(url(path), {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await res.text();
    let json: Json;
    try {
      json = JSON.parse(text) as Json;
    } catch {
      json = { text };
    }
    return { status: res.status, json };
  };
  const until = <T>(what: string, fn: () => Promise<T | undefined>, ms?: number) =>
    waitUntil(what, fn, ms, { detail: () => `--- daemon output ---\n${out.slice(-6000)}` });
  const view = async (id: string) => (await api('GET', `/api/v1/executions/${id}`)).json;
  const status = async (id: string) => (await view(id)).execution?.status as string | undefined;
  const lines = (file: string) => (existsSync(file) ? readFileSync(file, 'utf8').trim().split('\n').filter(Boolean) : []);
  const count = (file: string, line: string) => lines(file).filter((l) => l === line).length;
  const probeRuns = async () => {
    const text = await (await fetch(url('/metrics'), { signal: AbortSignal.timeout(3000) })).text();
    const m = /continuity_probe_runs_total\{probe="local",result="success"\} (\d+)/.exec(text);
    return m ? Number(m[1]) : 0;
  };
  const start = async (runbook: string, key: string) => {
    const r = await api('POST', `/api/v1/runbooks/${runbook}/executions`, { idempotency_key: key });
    expect(r.status, JSON.stringify(r.json)).toBe(201);
    return r.json.execution.id as string;
  };
  /** Until the execution reaches `want` (it must not stop at another terminal or operator state). */
  const reaches = (id: string, want: string, ms = 30_000) =>
    until(
      `${id} ${want}`,
      async () => {
        const s = await status(id);
        if (s === want) return true;
        if (s && s !== want && ['failed', 'aborted', 'rolled_back', 'awaiting_decision', 'succeeded'].includes(s)) {
          throw new Error(`${id} is ${s}: ${JSON.stringify((await view(id)).timeline?.slice(-6))}`);
        }
        return undefined;
      },
      ms,
    );
  /** Kills Redis, and returns when it answers again after `downMs`; what `whileDown` checks runs meanwhile. */
  const outage = async (signal: NodeJS.Signals, downMs: number, whileDown?: () => Promise<void>) => {
    await redis.kill(signal);
    const downAt = Date.now();
    await whileDown?.();
    await new Promise((r) => setTimeout(r, Math.max(0, downMs - (Date.now() - downAt))));
    await redis.restart();
    return Date.now();
  };

  beforeAll(async () => {
    redis = await startRedisServer({ appendonly: true, appendfsync: 'always' });
    listener = net.createServer((s) => s.on('error', () => {}).end());
    await new Promise<void>((r) => listener.listen(0, '127.0.0.1', r));
    const listenerPort = (listener.address() as net.AddressInfo).port;
    port = await closedPort();
    cfg = writeConfig({
      config: `daemon:
  listen: 127.0.0.1:${port}
  redis_url: ${redis.url}
  probes_dir: ../probes
  runbooks_dir: ../runbooks
  state_dir: ../var
  runbook_lock_duration: 30s
  shutdown_grace: 1s
auth:
  tokens:
    - { name: olga, sha256: ${hashToken(OPERATOR)}, roles: [operator] }
    - { name: ada, sha256: ${hashToken(APPROVER)}, roles: [approver] }
    - { name: root, sha256: ${hashToken(ADMIN)}, roles: [admin] }
sites:
  p: { role: primary }
  d: { role: dr }
services:
  orders: { rto: 1h, rpo: 30s }
`,
      probes: {
        'local.yaml': `probes:
  - id: local
    kind: tcp
    site: p
    services: [orders]
    interval: 200ms
    timeout: 150ms
    tcp: { host: 127.0.0.1, port: ${listenerPort} }
`,
      },
    });
    slowLog = join(cfg.dir, 'slow.txt');
    quickLog = join(cfg.dir, 'quick.txt');
    longLog = join(cfg.dir, 'long.txt');
    for (const [name, text] of [
      ['slow', slowRunbook(slowLog)],
      ['quick', quickRunbook(quickLog)],
      ['long', longRunbook(longLog)],
    ] as const) {
      mkdirSync(join(cfg.dir, 'runbooks', name), { recursive: true });
      writeFileSync(join(cfg.dir, 'runbooks', name, 'v1.yaml'), text);
    }
    const child = spawn('node', ['bin/continuity.js', 'daemon', '-c', cfg.configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
    daemon = child;
    child.stdout!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-200_000)));
    child.stderr!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-200_000)));
    exited = new Promise((r) => child.once('exit', r));
    await until('the daemon ready', async () => ((await fetch(url('/readyz'))).ok ? true : undefined));
    await until('the executor started', async () => ((await api('GET', '/api/v1/executions')).status === 200 ? true : undefined));
  });

  afterAll(async () => {
    if (daemon && daemon.exitCode === null && daemon.signalCode === null) {
      daemon.kill('SIGTERM');
      const killer = setTimeout(() => daemon?.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(killer);
    }
    await new Promise<void>((r) => (listener ? listener.close(() => r()) : r()));
    await redis?.stop();
    if (Object.keys(timings).length) process.stderr.write(`redis-restart timings (ms): ${JSON.stringify(timings)}\n`);
    if (process.env.CONTINUITY_TEST_DAEMON_LOG) writeFileSync(process.env.CONTINUITY_TEST_DAEMON_LOG, out);
  });

  it('loses nothing queued, approved or recorded; the execution finishes by itself, each non-idempotent step once', async () => {
    const a = await start('slow', 'restart-a');
    await until('s2 running', async () =>
      (await view(a)).steps?.some((s: Json) => s.step === 's2' && s.status === 'started') && lines(slowLog).includes('s2-begin')
        ? true
        : undefined,
    );
    // Queued just before the kill: it must run.
    const b = await start('quick', 'restart-b');
    const timelineBefore = (await view(a)).timeline as Json[];
    const auditBefore = (await api('GET', '/api/v1/audit?limit=1000', undefined, ADMIN)).json as Json[];
    expect(auditBefore.some((e) => e.target === b)).toBe(true);

    // Outage 1: SIGKILL while the non-idempotent s2 runs (it ends while Redis is away).
    let downChecks: Json = {};
    const back1 = await outage('SIGKILL', 4000, async () => {
      // While Redis is away: /metrics answers, probes go on, /readyz says why, starting answers 503 fast.
      const t0 = Date.now();
      const metrics = await fetch(url('/metrics'), { signal: AbortSignal.timeout(3000) });
      const metricsMs = Date.now() - t0;
      const runs0 = await probeRuns();
      await new Promise((r) => setTimeout(r, 1500));
      const runs1 = await probeRuns();
      const ready = await fetch(url('/readyz'), { signal: AbortSignal.timeout(3000) });
      const t1 = Date.now();
      const refused = await api('POST', '/api/v1/runbooks/quick/executions', { idempotency_key: 'while-down' }, OPERATOR, 5000).catch(
        (err: Error) => ({ status: 0, json: { error: err.message } }),
      );
      downChecks = {
        metrics: metrics.status,
        metricsMs,
        runs: [runs0, runs1],
        ready: ready.status,
        readyBody: (await ready.json()) as Json,
        start: refused,
        startMs: Date.now() - t1,
      };
    });
    expect(downChecks.metrics).toBe(200);
    expect(downChecks.metricsMs).toBeLessThan(2000);
    expect(downChecks.runs[1]).toBeGreaterThan(downChecks.runs[0]);
    expect(downChecks.ready).toBe(503);
    expect(JSON.stringify(downChecks.readyBody.reasons)).toMatch(/redis unreachable/);
    expect(downChecks.start.status, JSON.stringify(downChecks.start)).toBe(503);
    expect(downChecks.start.json.message).toMatch(/redis/i);
    expect(downChecks.startMs).toBeLessThan(2000);

    await reaches(a, 'waiting_approval');
    timings.outage1_to_waiting_approval = Date.now() - back1;
    await reaches(b, 'succeeded');
    timings.outage1_queued_execution_done = Date.now() - back1;
    expect((await view(a)).steps.find((s: Json) => s.step === 's2').status).toBe('succeeded');

    // Outage 2: SIGTERM just after the approval is given (acknowledged before Redis goes away). One
    // restart at a time: a leader lease is renewed in between (two outages within one lease period
    // would depose the lone leader, which stops its steps; see the README's Redis restarts).
    await new Promise((r) => setTimeout(r, 4000));
    const hash = (await view(a)).execution.hash as string;
    const approved = await api('POST', `/api/v1/executions/${a}/approvals`, { decision: 'approve', hash, comment: 'go' }, APPROVER);
    expect(approved.status, JSON.stringify(approved.json)).toBe(201);
    const timelineApproved = (await view(a)).timeline as Json[];
    const auditApproved = (await api('GET', '/api/v1/audit?limit=1000', undefined, ADMIN)).json as Json[];
    const back2 = await outage('SIGTERM', 4000);

    await reaches(a, 'succeeded', 60_000);
    timings.outage2_to_succeeded = Date.now() - back2;
    const final = await view(a);
    expect(final.approvals).toEqual([expect.objectContaining({ who: 'ada', decision: 'approve', step: 'approve', hash })]);
    expect(count(slowLog, 's2-begin')).toBe(1);
    expect(count(slowLog, 's2-end')).toBe(1);
    expect(count(slowLog, 's4')).toBe(1);
    expect(count(slowLog, 's1')).toBeGreaterThanOrEqual(1);
    expect(count(quickLog, b)).toBe(1);
    // Every record written before each kill is still there.
    const key = (e: Json) => `${e.at} ${e.type} ${e.step ?? ''} ${e.message}`;
    const timelineAfter = new Set((final.timeline as Json[]).map(key));
    for (const e of [...timelineBefore, ...timelineApproved]) expect(timelineAfter, key(e)).toContain(key(e));
    const auditAfter = new Set(
      ((await api('GET', '/api/v1/audit?limit=10000', undefined, ADMIN)).json as Json[]).map((e) => JSON.stringify(e)),
    );
    for (const e of [...auditBefore, ...auditApproved]) expect(auditAfter, JSON.stringify(e)).toContain(JSON.stringify(e));
    expect(auditApproved.some((e) => e.action === 'approve' && e.target === a && e.who === 'ada')).toBe(true);
  }, 180_000);

  it('a step running through an outage longer than the lease keeps its result: the lone leader takes its lease back with the same token', async () => {
    await new Promise((r) => setTimeout(r, 4000)); // the lease renewed since the last outage
    const elected = () => [...out.matchAll(/"token":(\d+)[^\n]*"msg":"leader: elected"/g)].map((m) => Number(m[1]));
    const tokenBefore = elected().at(-1);
    const id = await start('long', 'restart-long');
    await until('the long step running', async () => (lines(longLog).includes('long-begin') ? true : undefined));
    // 12 s away: past the lease (10 s), so this lone daemon stops leading while its step runs on.
    const back = await outage('SIGKILL', 12_000);
    expect(out).toMatch(/the lease expired without a successful renewal/);
    await reaches(id, 'succeeded', 60_000);
    timings.long_outage_to_succeeded = Date.now() - back;
    expect(count(longLog, 'long-begin')).toBe(1);
    expect(count(longLog, 'long-end')).toBe(1);
    expect(count(longLog, 'after')).toBe(1);
    const v = await view(id);
    expect(v.timeline.some((e: Json) => e.type === 'awaiting_decision')).toBe(false);
    expect(v.steps.map((s: Json) => `${s.step}:${s.status}:${s.attempt}`)).toEqual(['long:succeeded:1', 'after:succeeded:1']);
    // Nobody else led: the lease came back with the token it had.
    expect(elected().at(-1)).toBe(tokenBefore);
  }, 120_000);

  it('after Redis is back, both BullMQ workers take new jobs again without a daemon restart', async () => {
    // A third outage, longer than BullMQ's blocking wait (and than a leader lease), with no job
    // running: the workers sit idle in it (or are stopped and started again with the leadership).
    const back = await outage('SIGKILL', 12_000);
    const c = await until('an execution accepted', async () => {
      const r = await api('POST', '/api/v1/runbooks/quick/executions', { idempotency_key: 'after-restart' });
      return r.status === 201 ? (r.json.execution.id as string) : undefined;
    });
    await reaches(c, 'succeeded', RECOVERY_BOUND_MS);
    timings.outage3_new_execution_done = Date.now() - back;
    expect(Date.now() - back).toBeLessThan(RECOVERY_BOUND_MS);
    expect(count(quickLog, c)).toBe(1);

    // The restore-tests worker: a job for a backup set not configured is taken and completed (skipped).
    const queue = new Queue('restore-tests', { connection: { host: '127.0.0.1', port: redis.port }, prefix: '{continuity}' });
    try {
      const job = await queue.add('manual', { set: 'not-configured', trigger: 'manual' });
      await until(
        'the restore-test job processed',
        async () => ((await job.getState()) === 'completed' ? true : undefined),
        RECOVERY_BOUND_MS,
      );
      timings.outage3_restore_test_job_done = Date.now() - back;
    } finally {
      await queue.close();
    }
    expect(daemon?.exitCode).toBeNull();
  }, 120_000);
  it('the daemon stops by itself after the outages; a worker whose connection never comes back is replaced', async () => {
    // The daemon first (its worker shares the queue): it must stop gracefully, nothing hanging.
    const t0 = Date.now();
    daemon!.kill('SIGTERM');
    const code = await Promise.race([exited, new Promise((r) => setTimeout(() => r('still running'), 20_000))]);
    expect(code).toBe(0);
    timings.daemon_stop = Date.now() - t0;

    // An executor in this process whose worker's blocking connection ends for good (as a reconnect
    // that never brings 'ready' leaves it): its watchdog replaces the worker, and jobs are taken again.
    const connection = new Redis(redis.url, { maxRetriesPerRequest: null, retryStrategy: (n) => Math.min(n * 200, 1000) });
    const executor = new Executor({
      connection,
      redis: connection,
      runbooks: () => new RunbookSet([]),
      log: pino({ level: 'silent' }),
      metrics: new Metrics('test'),
      stateDir: cfg.dir,
    });
    try {
      await executor.start();
      const first = (executor as unknown as { worker: Worker }).worker;
      const blocking = (await first.backend.blockingClient) as unknown as Redis;
      const broken = Date.now();
      // Shut, and every later connect hangs: the state of taskforcesh/bullmq#4585 (never 'ready' again).
      blocking.connect = () => new Promise<void>(() => {});
      blocking.disconnect(false);
      await new Promise((r) => setTimeout(r, 2000));
      // An execution id with no record: the processor takes the job and finds nothing to do.
      const job = await executor.queue.add('execution', { id: 'no-such-execution' }, { jobId: 'watchdog-probe' });
      await until(
        'the job taken by a new worker',
        async () => ((await job.getState()) === 'completed' ? true : undefined),
        RECOVERY_BOUND_MS,
      );
      timings.watchdog_replaced_worker = Date.now() - broken;
      expect((executor as unknown as { worker: Worker }).worker).not.toBe(first);
    } finally {
      await executor.close();
      connection.disconnect();
    }
  }, 60_000);
});
