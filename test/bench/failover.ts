/**
 * Failover bench: `npm run bench:failover` (or `node --import tsx test/bench/failover.ts --runs 3`).
 *
 * How long a PostgreSQL service is unwritable when its primary dies, end to end, on the lab
 * (test/lab/lab.ts: a primary and a synchronous replica behind HAProxy, sshd, the machine's Redis)
 * with the real daemon in automatic mode and the shipped failover-postgres runbook. Each run:
 *
 *   1. a fresh lab (Redis db --redis-db, 12 by default, flushed by the lab);
 *   2. the daemon as a child process (this file forked with `--daemon`: the same Daemon class
 *      `continuity daemon` runs, through tsx as in a checkout; its CPU is its own, its log goes to
 *      a file in the run's config folder and is printed, tail only, when the run fails). Its probes
 *      run every --interval (1s) with failure_threshold --failure-threshold (3), timeout half the
 *      interval; the service's policy has `mode: automatic`;
 *   3. a writer in this process: INSERTs through HAProxy's pg frontend, one in flight at a time,
 *      recording each acknowledged id with the time it was sent and acknowledged; a failed write
 *      drops its connection and the next one reconnects after 20 ms, as a client with a retry would;
 *   4. once both database probes are UP and writes flow, a random pause of up to one interval (so
 *      the kill lands anywhere in the probe schedule), then kill -9 of the primary's postmaster;
 *   5. it waits (--deadline, 60s, from the kill) for the failover execution to finish and for the
 *      first write sent after the kill and acknowledged by the promoted node (each INSERT returns
 *      the server's port: a backend of the killed primary can still commit a write sent in the
 *      first milliseconds, before it notices its postmaster is gone; those are counted apart and,
 *      like every acknowledged write, checked), then stops the writer and counts the acknowledged
 *      ids missing on the promoted node (asked directly, not through HAProxy).
 *
 * The time from the kill to that first write is split in phases, from the incident and execution
 * records (same machine, same clock):
 *
 *   detection  kill → incident opened (first failed probe run, then failure_threshold runs: DOWN)
 *   decision   incident opened → failover execution started
 *   runbook    execution started → execution finished (every step, verify_write included)
 *   traffic    execution finished → first write acknowledged by the promoted node; negative when writes were back
 *              before the runbook's last step (verify_write) was done, which is the normal case
 *
 * and the runbook phase step by step (queue pickup, then each step; "switch→write" is from the end
 * of switch_traffic to the first acknowledged write). When the incident closes within a few
 * seconds, the daemon's own RTO (from the first failed probe run to the verified endpoint) is shown
 * beside it.
 *
 * Prints a line per run, a summary of the phases (medians), and as its last line:
 *
 *   failover runs=N median_s=X p90_s=X max_s=X lost_writes=N
 *
 * over the runs that completed (median: middle value, or the mean of the two middle ones; p90:
 * nearest rank). Exit 1 when a run failed or any acknowledged write was lost. Bounded: each run has
 * its deadline, and a watchdog ends the whole bench (cleaning up) if it overruns. Labs and daemons
 * are stopped after each run and on failure, Ctrl-C or SIGTERM; the lab's and the daemon child's
 * own exit hooks are the last resort.
 *
 * Options, as flags (`--runs 3` or `--runs=3`) or environment variables:
 *   --runs N                BENCH_RUNS                runs (default 10)
 *   --deadline D            BENCH_DEADLINE            per run, from the kill (default 60s)
 *   --interval D            BENCH_INTERVAL            probe interval (default 1s)
 *   --failure-threshold N   BENCH_FAILURE_THRESHOLD   failures in a row before DOWN (default 3)
 *   --redis-db N            BENCH_REDIS_DB            the machine's Redis db the labs use (default 12)
 */
import { fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, cpSync, mkdirSync, openSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { formatDuration, parseDuration } from '../../src/duration.js';
import { hashToken } from '../../src/http/auth.js';
import type { Incident } from '../../src/incidents/manager.js';
import type { ExecutionView } from '../../src/runbooks/executor.js';
import { writeConfig } from '../helpers/config.js';
import { labFailoverPolicy } from '../lab/failover-policy.js';
import { startLab, type Lab } from '../lab/lab.js';
import { bailer, logTail, stopChild } from './child.js';
import { option } from './options.js';

const VIEWER = 'tok-bench-viewer-0123456789';
const RETRY_MS = 20;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Options {
  runs: number;
  deadlineMs: number;
  intervalMs: number;
  failureThreshold: number;
  redisDb: number;
}

function parseOptions(): Options {
  const int = (name: string, env: string, def: number, min: number, max = Infinity): number => {
    const text = option(name, env);
    const v = text === undefined ? def : Number(text);
    if (!Number.isInteger(v) || v < min || v > max) throw new Error(`--${name} must be an integer ${min}-${max}, got ${text}`);
    return v;
  };
  return {
    runs: int('runs', 'BENCH_RUNS', 10, 1),
    deadlineMs: parseDuration(option('deadline', 'BENCH_DEADLINE') ?? '60s'),
    intervalMs: parseDuration(option('interval', 'BENCH_INTERVAL') ?? '1s'),
    failureThreshold: int('failure-threshold', 'BENCH_FAILURE_THRESHOLD', 3, 1),
    redisDb: int('redis-db', 'BENCH_REDIS_DB', 12, 0, 15),
  };
}

// ---------------------------------------------------------------------------------------------
// The daemon child: the real Daemon, in a process of its own.

async function daemonChild(configPath: string): Promise<void> {
  // The parent going away (even killed) closes the IPC channel: never outlive it.
  process.on('disconnect', () => process.exit(0));
  const { Daemon } = await import('../../src/daemon.js');
  const daemon = new Daemon({ configPath });
  await daemon.start();
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    daemon.stop().finally(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.send!({ url: daemon.url });
}

interface DaemonHandle {
  url: string;
  child: ChildProcess;
  dir: string;
  logPath: string;
  api<T>(path: string): Promise<T>;
  stop(): Promise<void>;
  logTail(lines?: number): string;
}

function daemonConfig(lab: Lab, o: Options): { config: string; probes: Record<string, string> } {
  const interval = formatDuration(o.intervalMs);
  const timeout = formatDuration(Math.max(50, Math.floor(o.intervalMs / 2)));
  const probe = (id: string, site: string, extra: string) =>
    `  - id: ${id}
    site: ${site}
    interval: ${interval}
    timeout: ${timeout}
    failure_threshold: ${o.failureThreshold}
${extra}`;
  return {
    config: `daemon:
  listen: 127.0.0.1:0
  redis_url: redis://127.0.0.1:6379/${o.redisDb}
  runbooks_dir: ../runbooks
  state_dir: ../var
  runbook_lock_duration: 2s
auth:
  tokens:
    - { name: vera, sha256: ${hashToken(VIEWER)}, roles: [viewer] }
sites:
  primary: { role: primary }
  dr: { role: dr }
services:
  orders:
    rto: 1h
    rpo: 30s
${labFailoverPolicy(lab, 'automatic')}`,
    probes: {
      'databases.yaml': `probes:
${probe(
  'orders-pg-primary',
  'primary',
  `    kind: postgres
    services: [orders]
    postgres: { host: 127.0.0.1, port: ${lab.primary.port}, user: postgres, database: postgres, expect_role: primary }`,
)}
${probe(
  'orders-pg-replica',
  'dr',
  `    kind: postgres
    services: [orders]
    postgres: { host: 127.0.0.1, port: ${lab.replica.port}, user: postgres, database: postgres }`,
)}
${probe(
  'orders-web-public',
  'dr',
  `    kind: http
    http: { url: "${lab.webTraffic.url}/health" }
    conditions: ['headers["x-site"] == "dr"']`,
)}
`,
    },
  };
}

async function startDaemon(lab: Lab, o: Options): Promise<DaemonHandle> {
  const cfg = writeConfig(daemonConfig(lab, o));
  mkdirSync(join(cfg.dir, 'runbooks'));
  cpSync('runbooks/failover-postgres', join(cfg.dir, 'runbooks/failover-postgres'), { recursive: true });
  const logPath = join(cfg.dir, 'daemon.log');
  const fd = openSync(logPath, 'a');
  // Same loader (tsx), but never the parent's profiling flags.
  const execArgv = process.execArgv.filter(
    (a) => !a.startsWith('--cpu-prof') && !a.startsWith('--heap-prof') && !a.startsWith('--inspect'),
  );
  let child: ChildProcess;
  try {
    child = fork(fileURLToPath(import.meta.url), ['--daemon', cfg.configPath], {
      execArgv,
      stdio: ['ignore', fd, fd, 'ipc'],
      env: { ...process.env, CONTINUITY_DB_PASSWORD: '' },
    });
  } finally {
    closeSync(fd);
  }
  const tail = (lines = 30) => logTail(logPath, lines);
  const stop = async () => {
    await stopChild(child, 5000);
    rmSync(cfg.dir, { recursive: true, force: true });
  };
  let url: string;
  try {
    const ready = await Promise.race([
      once(child, 'message') as Promise<[{ url: string }]>,
      once(child, 'exit').then(([code, signal]) => {
        throw new Error(`the daemon exited (${code ?? signal}) before it was ready:\n${tail()}`);
      }),
      sleep(30_000).then(() => {
        throw new Error(`the daemon was not ready within 30 s:\n${tail()}`);
      }),
    ]);
    url = ready[0].url;
  } catch (err) {
    // Keep the log for the error message, then clean up.
    await stop();
    throw err;
  }
  const api = async <T>(path: string): Promise<T> => {
    const res = await fetch(url + path, { headers: { authorization: `Bearer ${VIEWER}` }, signal: AbortSignal.timeout(2000) });
    if (!res.ok) throw new Error(`GET ${path}: HTTP ${res.status}`);
    return (await res.json()) as T;
  };
  return { url, child, dir: cfg.dir, logPath, api, stop, logTail: tail };
}

// ---------------------------------------------------------------------------------------------
// The writer: continuous INSERTs through HAProxy, one in flight.

interface Ack {
  id: number;
  sentAt: number;
  at: number;
  /** The port of the PostgreSQL server that acknowledged it (HAProxy hides which one it picked). */
  port: number;
}

class Writer {
  readonly acked: Ack[] = [];
  errors = 0;
  lastError = '';
  private stopped = false;
  private readonly done: Promise<void>;

  constructor(private readonly port: number) {
    this.done = this.loop();
  }

  private async loop(): Promise<void> {
    let client: pg.Client | undefined;
    while (!this.stopped) {
      try {
        if (!client) {
          client = new pg.Client({
            host: '127.0.0.1',
            port: this.port,
            user: 'postgres',
            database: 'postgres',
            connectionTimeoutMillis: 2000,
            query_timeout: 2000,
            application_name: 'bench-writer',
          });
          client.on('error', () => {});
          const c = client;
          await c.connect().catch(async (err: unknown) => {
            await c.end().catch(() => {});
            throw err;
          });
        }
        const sentAt = Date.now();
        const { rows } = await client.query<{ id: string; port: string }>(
          `INSERT INTO orders (note) VALUES ($1) RETURNING id, current_setting('port') AS port`,
          ['bench'],
        );
        this.acked.push({ id: Number(rows[0]!.id), sentAt, at: Date.now(), port: Number(rows[0]!.port) });
      } catch (err) {
        this.errors++;
        this.lastError = err instanceof Error ? err.message : String(err);
        const dead = client;
        client = undefined;
        void dead?.end().catch(() => {});
        await sleep(RETRY_MS);
      }
    }
    await client?.end().catch(() => {});
  }

  /** Acknowledged writes sent at or after `t`. */
  sentSince(t: number): Ack[] {
    let i = this.acked.length;
    while (i > 0 && this.acked[i - 1]!.sentAt >= t) i--;
    return this.acked.slice(i);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.race([this.done, sleep(5000)]);
  }
}

// ---------------------------------------------------------------------------------------------
// One run.

interface RunResult {
  total: number;
  detection: number;
  firstFailure: number;
  decision: number;
  runbook: number;
  traffic: number;
  lost: number;
  acked: number;
  ackedBeforeKill: number;
  oldAfterKill: number;
  oldLastAck: number | undefined;
  failedWrites: number;
  steps: string;
  switchToWrite: number | undefined;
  daemonRto: Incident['rto'];
}

/** What the current run holds: cleaned up after the run, and on failure, signal or watchdog. */
const live: { lab?: Lab; daemon?: DaemonHandle; writer?: Writer } = {};

async function cleanup(): Promise<void> {
  const { lab, daemon, writer } = live;
  delete live.writer;
  delete live.daemon;
  delete live.lab;
  await writer?.stop().catch(() => {});
  await daemon?.stop().catch(() => {});
  await lab?.stop();
}

async function until<T>(what: string, deadline: number, fn: () => Promise<T | undefined | false>, check?: () => void): Promise<T> {
  let lastError: unknown;
  for (;;) {
    check?.();
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      if ((err as { fatal?: boolean }).fatal) throw err;
      lastError = err;
    }
    if (Date.now() > deadline) {
      const why = lastError instanceof Error ? ` (last error: ${lastError.message})` : '';
      throw new Error(`timed out waiting for ${what}${why}`);
    }
    await sleep(50);
  }
}

const s = (ms: number) => (ms / 1000).toFixed(3);

async function oneRun(o: Options, say: (line: string) => void): Promise<RunResult> {
  const t0 = Date.now();
  live.lab = await startLab({ redisDb: o.redisDb });
  const lab = live.lab;
  const tLab = Date.now();
  live.daemon = await startDaemon(lab, o);
  const d = live.daemon;
  const alive = () => {
    if (d.child.exitCode !== null || d.child.signalCode !== null) {
      throw new Error(`the daemon exited (${d.child.exitCode ?? d.child.signalCode}):\n${d.logTail()}`);
    }
  };
  type Status = { probes: Array<{ id: string; state: string }> };
  await until(
    'orders-pg-primary and orders-pg-replica UP',
    Date.now() + 30_000,
    async () => {
      const st = await d.api<Status>('/api/v1/status');
      return ['orders-pg-primary', 'orders-pg-replica'].every((id) => st.probes.find((p) => p.id === id)?.state === 'UP');
    },
    alive,
  );
  live.writer = new Writer(lab.pgTraffic.port);
  const writer = live.writer;
  await until('writes flowing through HAProxy', Date.now() + 10_000, async () => {
    const last = writer.acked.at(-1);
    return writer.acked.length >= 20 && last !== undefined && Date.now() - last.at < 200;
  });
  const tReady = Date.now();
  say(`lab up in ${s(tLab - t0)}s, daemon (pid ${d.child.pid}) probing and writes flowing after ${s(tReady - tLab)}s more`);
  // Anywhere in the probe schedule.
  await sleep(Math.random() * o.intervalMs);

  const killAt = Date.now();
  await lab.killPrimary();
  const deadline = killAt + o.deadlineMs;
  const ackedBeforeKill = writer.acked.filter((a) => a.at < killAt).length;

  let incident: Incident | undefined;
  let view: ExecutionView | undefined;
  const first = await until(
    'the failover execution to finish and a write to be acknowledged',
    deadline,
    async () => {
      if (!view || !view.execution.finishedAt) {
        // A fresh lab and Redis db: the only incident is this one.
        incident = (await d.api<Incident[]>('/api/v1/incidents'))[0];
        if (!incident?.executionId) return undefined;
        view = await d.api<ExecutionView>(`/api/v1/executions/${incident.executionId}`);
        if (!view.execution.finishedAt) return undefined;
        if (view.execution.status !== 'succeeded') {
          throw Object.assign(new Error(`execution ${view.execution.id} ${view.execution.status}: ${view.execution.reason ?? ''}`), {
            fatal: true,
          });
        }
      }
      // Only the promoted node counts: a backend of the killed postmaster may still commit (and
      // replicate) a write sent in the first milliseconds, before it notices its postmaster died.
      return writer.sentSince(killAt).find((a) => a.port === lab.replica.port);
    },
    alive,
  ).catch((err: Error & { fatal?: boolean }) => {
    const where = incident
      ? `; incident ${incident.id} ${incident.status}, last decision: ${incident.decision?.sentence ?? 'none'}` +
        (view ? `; execution ${view.execution.status}, steps ${view.steps.map((x) => `${x.step}:${x.status}`).join(' ')}` : '')
      : '; no incident opened';
    throw new Error(`${err.message}${where}; writer: ${writer.errors} failed writes, last: ${writer.lastError}`);
  });
  await writer.stop();
  delete live.writer;
  const onPromoted = new Set(await lab.orderIds('replica'));
  const lost = writer.acked.filter((a) => !onPromoted.has(a.id)).length;
  const fromOld = writer.sentSince(killAt).filter((a) => a.port === lab.primary.port);

  const inc = incident!;
  const exec = view!;
  const started = inc.failoverStartedAt!;
  const finished = exec.execution.finishedAt!;
  const steps = exec.steps;
  const firstStart = Math.min(...steps.filter((x) => x.startedAt !== undefined).map((x) => x.startedAt!));
  const stepText = [
    `pickup=${Number.isFinite(firstStart) ? s(firstStart - exec.execution.createdAt) : '-'}`,
    ...steps.map((x) => {
      if (x.status === 'skipped') return `${x.step}=skipped`;
      const dur = x.startedAt !== undefined && x.finishedAt !== undefined ? s(x.finishedAt - x.startedAt) : '?';
      return `${x.step}=${dur}${x.attempt > 1 ? `(attempt ${x.attempt})` : ''}${x.status === 'failed' ? '(failed)' : ''}`;
    }),
  ].join(' ');
  const sw = steps.find((x) => x.step === 'switch_traffic')?.finishedAt;

  // The daemon's own RTO, when it closes the incident soon (it needs the verify probe UP).
  let daemonRto: Incident['rto'];
  await until('incident closed', Math.min(deadline, Date.now() + 5000), async () => {
    const i = await d.api<Incident>(`/api/v1/incidents/${inc.id}`);
    daemonRto = i.rto;
    return i.status === 'closed';
  }).catch(() => undefined);

  return {
    total: first.at - killAt,
    detection: inc.openedAt - killAt,
    firstFailure: inc.outageStart - killAt,
    decision: started - inc.openedAt,
    runbook: finished - started,
    traffic: first.at - finished,
    lost,
    acked: writer.acked.length,
    ackedBeforeKill,
    oldAfterKill: fromOld.length,
    oldLastAck: fromOld.length > 0 ? fromOld.at(-1)!.at - killAt : undefined,
    failedWrites: writer.errors,
    steps: stepText,
    switchToWrite: sw === undefined ? undefined : first.at - sw,
    daemonRto,
  };
}

// ---------------------------------------------------------------------------------------------

function median(sorted: number[]): number {
  if (sorted.length === 0) return NaN;
  const m = sorted.length >> 1;
  return sorted.length % 2 ? sorted[m]! : (sorted[m - 1]! + sorted[m]!) / 2;
}

function nearestRank(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

async function main(o: Options): Promise<number> {
  const started = Date.now();
  const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1).padStart(6)}s`;
  const say = (line: string) => console.log(`bench ${elapsed()} ${line}`);
  say(
    `failover: runs=${o.runs} mode=automatic interval=${formatDuration(o.intervalMs)} failure_threshold=${o.failureThreshold} ` +
      `deadline=${formatDuration(o.deadlineMs)} redis_db=${o.redisDb} daemon=child process; synchronous replica (remote_apply)`,
  );
  const results: RunResult[] = [];
  let failed = 0;
  for (let i = 1; i <= o.runs; i++) {
    const tag = `run ${i}/${o.runs}`;
    try {
      const r = await oneRun(o, (line) => say(`${tag}: ${line}`));
      results.push(r);
      say(
        `${tag}: total_s=${s(r.total)} detection_s=${s(r.detection)} decision_s=${s(r.decision)} runbook_s=${s(r.runbook)} ` +
          `traffic_s=${s(r.traffic)} lost_writes=${r.lost} (first failed probe ${s(r.firstFailure)}s after the kill; ` +
          `acked ${r.acked}, ${r.ackedBeforeKill} before the kill, ${r.oldAfterKill} sent after it acknowledged by the dying primary${r.oldLastAck === undefined ? '' : ` (the last ${s(r.oldLastAck)}s after the kill)`}; ${r.failedWrites} writes failed)`,
      );
      say(
        `${tag}: runbook ${r.steps}; switch→write=${r.switchToWrite === undefined ? '?' : s(r.switchToWrite)}` +
          (r.daemonRto
            ? `; daemon RTO ${r.daemonRto.total.toFixed(3)}s (detection ${r.daemonRto.detection.toFixed(3)}, runbook ${r.daemonRto.runbook.toFixed(3)}, verification ${r.daemonRto.verification.toFixed(3)})`
            : '; incident not closed within 5 s'),
      );
    } catch (err) {
      failed++;
      say(`${tag}: FAILED: ${err instanceof Error ? err.message : String(err)}`);
    } finally {
      const t = Date.now();
      await cleanup().catch((err: unknown) => say(`${tag}: cleanup: ${err instanceof Error ? err.message : String(err)}`));
      say(`${tag}: cleaned up in ${s(Date.now() - t)}s`);
    }
  }
  const sorted = (k: keyof RunResult) => results.map((r) => r[k] as number).sort((a, b) => a - b);
  const totals = sorted('total');
  const lost = results.reduce((n, r) => n + r.lost, 0);
  if (results.length > 0) {
    say(
      `phases, median over ${results.length} runs: detection_s=${s(median(sorted('detection')))} (first failed probe ${s(median(sorted('firstFailure')))}) ` +
        `decision_s=${s(median(sorted('decision')))} runbook_s=${s(median(sorted('runbook')))} traffic_s=${s(median(sorted('traffic')))}; ` +
        `min total ${s(totals[0]!)}s`,
    );
  }
  if (failed > 0) say(`${failed} of ${o.runs} runs failed`);
  if (lost > 0) say(`${lost} acknowledged writes were lost`);
  const fmt = (ms: number) => (Number.isNaN(ms) ? 'NaN' : s(ms));
  console.log(
    `failover runs=${results.length} median_s=${fmt(median(totals))} p90_s=${fmt(nearestRank(totals, 0.9))} ` +
      `max_s=${fmt(totals.at(-1) ?? NaN)} lost_writes=${lost}`,
  );
  return failed > 0 || lost > 0 ? 1 : 0;
}

if (process.argv[2] === '--daemon') {
  await daemonChild(process.argv[3]!);
} else {
  const o = parseOptions();
  // The lab's own exit hooks kill what a slow stop leaves behind.
  const bail = bailer(cleanup, (line) => console.error(`bench: ${line}`), 30_000);
  // Bounded whatever happens: per run, a lab start, the wait for UP (30 s), the deadline and cleanup.
  setTimeout(() => bail('still running long past the planned end; giving up', 1), o.runs * (o.deadlineMs + 150_000)).unref();
  main(o).then(
    (code) => process.exit(code),
    (err: unknown) => {
      console.error(`bench: ${err instanceof Error ? err.stack : String(err)}`);
      cleanup().finally(() => process.exit(1));
    },
  );
}
