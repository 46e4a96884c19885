/**
 * Cluster bench: `npm run bench:cluster` (or `node --import tsx test/bench/cluster.ts`). Not a timed
 * test: it measures, on this machine, what several daemons sharing one Redis can do.
 *
 * 1. Probe capacity of one, two and three instances (`node bin/continuity.js daemon`, each its own
 *    process, instance_id and folder) against one private redis-server, with
 *    `daemon.probe_distribution: shared`: the leader keeps one BullMQ job scheduler per probe, each
 *    iteration is run by the first free worker of any instance, once per interval across the
 *    cluster. The probes are tcp probes (every --interval, timeout half of it) against listeners in
 *    this process that only count the connections they accept. Each step is a fresh cluster on an
 *    emptied Redis database (the first instance started alone, so it leads; the others then
 *    together): it waits for the leader's job schedulers (at most 30 s) and for the queue's backlog
 *    of due runs to drain (at most 10 s; runs caught up late would count in the window), warms up for --warmup,
 *    then counts over --window, and stops the instances. A step is sustained when the connections
 *    counted at the targets and the runs the instances count (the sum of
 *    continuity_probe_runs_total over their /metrics, each counting its own runs) are both within
 *    5% of the offered rate (probes / interval), and at most 1% of the runs failed. Rates double
 *    from --start-rate until a step is not sustained, then --refine bisections (geometric) between
 *    the last sustained and the first failed step; two and three instances start at 0.8 of the
 *    previous result and go up by 1.25x, with one bisection. The figure reported is the rate counted at the targets in
 *    the highest sustained step. Each step prints the CPU each process used (daemons, redis, this
 *    bench), the mean schedule lag, runs per probe (more than once per interval? starved?), the
 *    queue's backlog and what the daemons logged (silent-probe reschedules, depositions, errors).
 *    A fresh cluster per step, not a reload: a reload that removes probes while the leader is busy
 *    can leave their job schedulers behind (the leader's silent-probe check puts them back), which
 *    would carry load from one step into the next.
 *
 * 2. leader_and_primary_failover_s: a PostgreSQL primary and a streaming replica (test/helpers/
 *    pg-cluster.ts), service `orders` with a failover policy in `mode: automatic` whose runbook is
 *    one sql step `SELECT pg_promote(true, 60)` on the replica, two instances (the first leads),
 *    lease --lease. The leader and the primary's postmaster are killed with SIGKILL in the same
 *    tick; the time is from there until the failover execution succeeded, as the surviving
 *    instance's API shows it (incident, then execution), the replica then checked out of recovery
 *    directly. The breakdown: new leader (its log's `leader: elected`), primary probe DOWN on the
 *    survivor, incident opened, each decision, execution started, promote step, execution finished.
 *
 * Last line:
 *
 *   cluster probes_per_s_1=X probes_per_s_2=X probes_per_s_3=X leader_and_primary_failover_s=X
 *
 * (a part not run or that failed prints NaN). Exit 1 when a part failed. Everything it starts
 * (daemons, redis-server, PostgreSQL, temp folders) is stopped and removed at the end, on error,
 * Ctrl-C or SIGTERM; a watchdog ends it (cleaning up) if it overruns. Run it alone on the machine:
 * it loads both CPUs.
 *
 * Options, as flags (`--window 10s` or `--window=10s`) or environment variables:
 *   --part P              BENCH_PART              capacity, failover or all (default all)
 *   --instances N         BENCH_INSTANCES         largest cluster measured (default 3)
 *   --interval D          BENCH_INTERVAL          probe interval in the capacity part (default 2s)
 *   --warmup D            BENCH_WARMUP            before each step's window (default 5s)
 *   --window D            BENCH_WINDOW            each step's window (default 10s)
 *   --start-rate N        BENCH_START_RATE        first offered rate, probes/s (default 200)
 *   --max-rate N          BENCH_MAX_RATE          never offer more (default 12800)
 *   --refine N            BENCH_REFINE            bisections after the first failed step (default 2; 1 for two and three instances)
 *   --lease D             BENCH_LEASE             daemon.leader_lease (default 2s)
 *   --failover-deadline D BENCH_FAILOVER_DEADLINE from the kill (default 60s)
 *   --logs DIR            BENCH_LOGS              copy the daemons' logs (JSON, level warn) there (default: dropped)
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { PROBE_QUEUE, PROBE_QUEUE_PREFIX } from '../../src/cluster/probe-share.js';
import { formatDuration, parseDuration } from '../../src/duration.js';
import { hashToken } from '../../src/http/auth.js';
import type { Incident } from '../../src/incidents/manager.js';
import type { ExecutionView } from '../../src/runbooks/executor.js';
import { startPgPair } from '../helpers/pg-cluster.js';
import { startRedisServer, type TestRedisServer } from '../helpers/redis-server.js';
import { bailer } from './child.js';
import { countingServer, Instance, procCpuSeconds, type MetricsText } from './cluster-instance.js';
import { option } from './options.js';

const VIEWER = 'tok-bench-cluster-viewer-0123456789';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const s3 = (ms: number) => (ms / 1000).toFixed(3);

interface Options {
  part: 'capacity' | 'failover' | 'all';
  instances: number;
  intervalMs: number;
  warmupMs: number;
  windowMs: number;
  startRate: number;
  maxRate: number;
  refine: number;
  leaseMs: number;
  failoverDeadlineMs: number;
  /** Where the daemons' logs are copied before their folders are removed. */
  logs: string | undefined;
}

function parseOptions(): Options {
  const int = (name: string, env: string, def: number, min: number, max = Infinity): number => {
    const text = option(name, env);
    const v = text === undefined ? def : Number(text);
    if (!Number.isInteger(v) || v < min || v > max) throw new Error(`--${name} must be an integer ${min}-${max}, got ${text}`);
    return v;
  };
  const duration = (name: string, env: string, def: string): number => parseDuration(option(name, env) ?? def);
  const part = option('part', 'BENCH_PART') ?? 'all';
  if (part !== 'capacity' && part !== 'failover' && part !== 'all')
    throw new Error(`--part must be capacity, failover or all, got ${part}`);
  return {
    part,
    instances: int('instances', 'BENCH_INSTANCES', 3, 1, 3),
    intervalMs: duration('interval', 'BENCH_INTERVAL', '2s'),
    warmupMs: duration('warmup', 'BENCH_WARMUP', '5s'),
    windowMs: duration('window', 'BENCH_WINDOW', '10s'),
    startRate: int('start-rate', 'BENCH_START_RATE', 200, 1),
    maxRate: int('max-rate', 'BENCH_MAX_RATE', 12_800, 1),
    refine: int('refine', 'BENCH_REFINE', 2, 0, 5),
    leaseMs: duration('lease', 'BENCH_LEASE', '2s'),
    failoverDeadlineMs: duration('failover-deadline', 'BENCH_FAILOVER_DEADLINE', '60s'),
    logs: option('logs', 'BENCH_LOGS'),
  };
}

// ---------------------------------------------------------------------------------------------
// What the bench holds: cleaned up at the end, on failure, signal or watchdog.

const live: {
  redis?: TestRedisServer;
  instances: Set<Instance>;
  closers: Array<() => Promise<void>>;
  logs?: string;
  logsKept: number;
} = { instances: new Set(), closers: [], logsKept: 0 };

/** Keeps an instance's log in --logs, when given. */
function keepLog(inst: Instance): void {
  if (!live.logs) return;
  mkdirSync(live.logs, { recursive: true });
  writeFileSync(join(live.logs, `${String(++live.logsKept).padStart(3, '0')}-${inst.name}.log`), inst.log());
}

async function cleanup(): Promise<void> {
  const instances = [...live.instances];
  live.instances.clear();
  for (const inst of instances) keepLog(inst);
  await Promise.allSettled(instances.map((i) => i.stop()));
  const closers = live.closers.splice(0).reverse();
  for (const close of closers) await close().catch(() => {});
  const redis = live.redis;
  delete live.redis;
  await redis?.stop().catch(() => {});
}

async function startInstance(name: string, files: Parameters<typeof Instance.start>[1]): Promise<Instance> {
  const inst = await Instance.start(name, files);
  live.instances.add(inst);
  return inst;
}

async function stopInstance(inst: Instance): Promise<void> {
  live.instances.delete(inst);
  keepLog(inst);
  await inst.stop();
}

/** Polls `fn` every `everyMs` until it returns a value; throws after `ms`, naming `what`. */
async function until<T>(what: string, ms: number, fn: () => Promise<T | undefined>, everyMs = 100): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  for (;;) {
    const v = await fn().catch((err: unknown) => {
      last = err;
      return undefined;
    });
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms / 1000} s waiting for ${what}${last ? ` (${String(last)})` : ''}`);
    await sleep(everyMs);
  }
}

function daemonConfig(o: { redisUrl: string; id: string; leaseMs: number; logLevel: string; extra?: string; services?: string }): string {
  return `daemon:
  listen: 127.0.0.1:{{port}}
  redis_url: ${o.redisUrl}
  runbooks_dir: ../runbooks
  state_dir: ../var
  instance_id: ${o.id}
  leader_lease: ${formatDuration(o.leaseMs)}
  probe_distribution: shared
  log_level: ${o.logLevel}
  shutdown_grace: 1s
${o.extra ?? ''}auth:
  tokens:
    - { name: vera, sha256: ${hashToken(VIEWER)}, roles: [viewer] }
sites:
  primary: { role: primary }
  dr: { role: dr }
services:${o.services ?? ' {}'}
`;
}

/** `count` tcp probes spread over the targets, every `intervalMs`. */
function tcpProbes(prefix: string, count: number, intervalMs: number, targets: Array<{ host: string; port: number }>): string {
  const interval = formatDuration(intervalMs);
  const timeout = formatDuration(Math.max(100, Math.floor(intervalMs / 2)));
  const lines = ['probes:'];
  for (let i = 0; i < count; i++) {
    const t = targets[i % targets.length]!;
    lines.push(
      `  - { id: ${prefix}-${String(i).padStart(5, '0')}, kind: tcp, site: primary, interval: ${interval}, timeout: ${timeout}, tcp: { host: ${t.host}, port: ${t.port} } }`,
    );
  }
  return lines.join('\n') + (count === 0 ? ' []\n' : '\n');
}

async function isLeader(inst: Instance): Promise<boolean> {
  return (await inst.metrics()).sum('continuity_leader') === 1;
}

// ---------------------------------------------------------------------------------------------
// Part 1: probe capacity.

interface Step {
  instances: number;
  probes: number;
  offered: number;
  counted: number;
  runs: number;
  failures: number;
  lagMs: number;
  /** Runs per instance per second. */
  shares: number[];
  backlog: string;
  /** Probes run more often than once per interval, and fewer (in the window, all instances). */
  perProbe: string;
  sustained: boolean;
  why: string;
}

class Capacity {
  private instances: Instance[] = [];
  private readonly queue: Queue;
  private readonly redis: Redis;

  constructor(
    private readonly o: Options,
    private readonly redisUrl: string,
    private readonly redisPid: number,
    private readonly server: Awaited<ReturnType<typeof countingServer>>,
    private readonly say: (line: string) => void,
  ) {
    const u = new URL(redisUrl);
    const connection = { host: u.hostname, port: Number(u.port), db: Number(u.pathname.slice(1) || 0) };
    this.queue = new Queue(PROBE_QUEUE, { connection, prefix: PROBE_QUEUE_PREFIX });
    this.queue.on('error', () => {});
    this.redis = new Redis(connection);
    this.redis.on('error', () => {});
    live.closers.push(async () => {
      await this.queue.close();
      this.redis.disconnect();
    });
  }

  /**
   * A fresh cluster of `n` instances sharing `count` probes, on an emptied Redis database: the
   * first one started alone (it leads), the others together once it leads.
   */
  private async startCluster(n: number, count: number): Promise<void> {
    await this.redis.flushdb();
    const probes = { 'cap.yaml': tcpProbes('cap', count, this.o.intervalMs, this.server.targets) };
    const files = (k: number) => ({
      // warn: a line per run of anything would cost the daemons CPU the bench measures.
      config: daemonConfig({ redisUrl: this.redisUrl, id: `cap-${k}`, leaseMs: this.o.leaseMs, logLevel: 'warn' }),
      probes,
    });
    const first = await startInstance('cap-1', files(1));
    this.instances = [first];
    await until('cap-1 leading', 30_000, async () => ((await isLeader(first)) ? true : undefined));
    const others = await Promise.all(Array.from({ length: n - 1 }, (_, i) => startInstance(`cap-${i + 2}`, files(i + 2))));
    this.instances.push(...others);
    await until(`${n} instances sharing probes`, 60_000, async () => {
      const all = await Promise.all(this.instances.map(async (i) => (await i.metrics()).sum('continuity_probe_sharing')));
      return all.every((x) => x === 1) ? true : undefined;
    });
  }

  private async stopCluster(): Promise<{ silent: number; deposed: number; errors: number }> {
    const stats = { silent: 0, deposed: 0, errors: 0 };
    for (const inst of this.instances) {
      const text = inst.log();
      stats.silent += (text.match(/shared probe silent/g) ?? []).length;
      stats.deposed += (text.match(/"leader: deposed"/g) ?? []).length;
      stats.errors += (text.match(/"level":"?(50|error)/g) ?? []).length;
    }
    await Promise.all(this.instances.map((i) => stopInstance(i)));
    this.instances = [];
    return stats;
  }

  private async backlog(): Promise<{ wait: number; active: number; delayed: number }> {
    const c = await this.queue.getJobCounts('wait', 'active', 'delayed', 'prioritized');
    return { wait: (c.wait ?? 0) + (c.prioritized ?? 0), active: c.active ?? 0, delayed: c.delayed ?? 0 };
  }

  /** One step: `n` instances, `rate` offered probes/s. */
  async step(n: number, rate: number): Promise<Step> {
    const o = this.o;
    const count = Math.max(1, Math.round((rate * o.intervalMs) / 1000));
    const offered = (count * 1000) / o.intervalMs;
    const t0 = Date.now();
    let before: Snapshot | undefined;
    let after: Snapshot | undefined;
    let backlog = { wait: NaN, active: NaN, delayed: NaN };
    let schedulers = NaN;
    let stats: Awaited<ReturnType<Capacity['stopCluster']>>;
    let error: Error | undefined;
    try {
      await this.startCluster(n, count);
      // The leader puts one job scheduler per probe (bounded: an overloaded leader may lag behind).
      schedulers = await until(
        `${count} job schedulers`,
        30_000,
        async () => {
          const k = await this.queue.getJobSchedulersCount();
          return k >= count ? k : undefined;
        },
        250,
      ).catch(() => this.queue.getJobSchedulersCount());
      // The start's burst worked off: no backlog of due runs (bounded: an overloaded cluster never drains).
      const drainEnd = Date.now() + 10_000;
      while ((await this.backlog()).wait > Math.max(20, count * 0.02) && Date.now() < drainEnd) await sleep(250);
      await sleep(o.warmupMs);
      before = await this.snapshot();
      await sleep(o.windowMs);
      after = await this.snapshot();
      backlog = await this.backlog();
    } catch (err) {
      error = err as Error;
    } finally {
      stats = await this.stopCluster();
    }
    if (error || !before || !after) {
      // A cluster that could not start or answer at this rate did not sustain it.
      const why = `${error?.message.split('\n')[0]} (${stats.silent} 'shared probe silent', ${stats.deposed} 'leader: deposed' logged)`;
      this.say(
        `n=${n} probes=${count} offered=${offered.toFixed(1)}/s: step failed after ${s3(Date.now() - t0)}s → NOT sustained (${why})`,
      );
      return {
        instances: n,
        probes: count,
        offered,
        counted: NaN,
        runs: NaN,
        failures: NaN,
        lagMs: NaN,
        shares: [],
        backlog: '',
        perProbe: '',
        sustained: false,
        why,
      };
    }
    const ready = before.wall;

    const secs = (after.t - before.t) / 1000;
    const counted = (after.count - before.count) / secs;
    const perInstance = after.metrics.map((m1, i) => ({ m0: before.metrics[i]!, m1 }));
    const runsOf = (m: MetricsText, filter = '') => m.sum('continuity_probe_runs_total', filter);
    const per = perInstance.map(({ m0, m1 }) => ({
      runs: runsOf(m1) - runsOf(m0),
      failures: runsOf(m1, 'result="failure"') - runsOf(m0, 'result="failure"'),
      lagSum: m1.sum('continuity_probe_schedule_lag_seconds_sum') - m0.sum('continuity_probe_schedule_lag_seconds_sum'),
      lagCount: m1.sum('continuity_probe_schedule_lag_seconds_count') - m0.sum('continuity_probe_schedule_lag_seconds_count'),
    }));
    // Runs of each probe in the window, summed over the instances: about window / interval each.
    const perProbe = new Map<string, number>();
    for (const { m0, m1 } of perInstance) {
      const was = m0.byLabel('continuity_probe_runs_total', 'probe');
      for (const [probe, v] of m1.byLabel('continuity_probe_runs_total', 'probe'))
        perProbe.set(probe, (perProbe.get(probe) ?? 0) + v - (was.get(probe) ?? 0));
    }
    const expectedPerProbe = (secs * 1000) / o.intervalMs;
    const runCounts = [...perProbe.values()];
    const doubled = runCounts.filter((v) => v > Math.ceil(expectedPerProbe) + 1).length;
    const starved = count - runCounts.filter((v) => v >= Math.floor(expectedPerProbe) - 1).length;
    const maxPerProbe = Math.max(0, ...runCounts);
    const histogram = new Map<number, number>();
    for (const v of runCounts) histogram.set(v, (histogram.get(v) ?? 0) + 1);
    if (runCounts.length < count) histogram.set(0, (histogram.get(0) ?? 0) + count - runCounts.length);
    const runsPerProbe = [...histogram]
      .sort((a, b) => a[0] - b[0])
      .map(([runs, probes]) => `${runs}:${probes}`)
      .join(' ');
    const runs = per.reduce((x, p) => x + p.runs, 0);
    const failures = per.reduce((x, p) => x + p.failures, 0);
    const lagCount = per.reduce((x, p) => x + p.lagCount, 0);
    const lagMs = lagCount > 0 ? (per.reduce((x, p) => x + p.lagSum, 0) / lagCount) * 1000 : NaN;
    const runsRate = runs / secs;
    const within = (x: number) => x >= offered * 0.95 && x <= offered * 1.05;
    const reasons: string[] = [];
    if (!within(counted)) reasons.push(`counted ${counted.toFixed(1)}/s ${counted > offered ? 'above' : 'below'} offered ±5%`);
    if (!within(runsRate)) reasons.push(`runs ${runsRate.toFixed(1)}/s ${runsRate > offered ? 'above' : 'below'} offered ±5%`);
    if (runs > 0 && failures / runs > 0.01) reasons.push(`${((failures / runs) * 100).toFixed(1)}% of runs failed`);
    if (runs === 0) reasons.push('no runs');
    const step: Step = {
      instances: n,
      probes: count,
      offered,
      counted,
      runs: runsRate,
      failures,
      lagMs,
      shares: per.map((p) => p.runs / secs),
      backlog: `wait=${backlog.wait} active=${backlog.active} delayed=${backlog.delayed}`,
      perProbe: `${doubled} probes over ${Math.ceil(expectedPerProbe) + 1} runs (max ${maxPerProbe}), ${starved} under ${Math.floor(expectedPerProbe) - 1} (runs:probes ${runsPerProbe})`,
      sustained: reasons.length === 0,
      why: reasons.join('; '),
    };
    const pct = (a: number, b: number) => (((b - a) / secs) * 100).toFixed(0);
    this.say(
      `n=${n} probes=${count} offered=${offered.toFixed(1)}/s counted=${counted.toFixed(1)}/s runs=${runsRate.toFixed(1)}/s ` +
        `(${step.shares.map((x) => x.toFixed(0)).join('+')}) failed=${failures} lag_mean=${lagMs.toFixed(0)}ms ` +
        `cpu% daemons=${after.cpu.daemons.map((x, i) => pct(before.cpu.daemons[i]!, x)).join('+')} redis=${pct(before.cpu.redis, after.cpu.redis)} ` +
        `bench=${pct(before.cpu.bench, after.cpu.bench)}; per probe: ${step.perProbe}; backlog ${step.backlog}; ` +
        `schedulers ${schedulers}/${count}; log: ${stats.silent} 'shared probe silent', ${stats.deposed} 'leader: deposed', ${stats.errors} errors; ` +
        `setup ${s3(ready - t0)}s → ${step.sustained ? 'SUSTAINED' : `NOT sustained (${step.why})`}`,
    );
    return step;
  }

  private async snapshot(): Promise<Snapshot> {
    const count = this.server.count();
    const t = performance.now();
    const wall = Date.now();
    const usage = process.cpuUsage();
    const cpu = {
      daemons: this.instances.map((i) => i.cpuSeconds()),
      redis: procCpuSeconds(this.redisPid),
      bench: (usage.user + usage.system) / 1e6,
    };
    const metrics = await Promise.all(this.instances.map((i) => i.metrics()));
    return { count, t, wall, cpu, metrics };
  }

  /**
   * The highest sustained rate with `n` instances: up by `factor` from `start` until a step
   * fails, then bisections; down by `factor` (at most 3 times) when the first step already fails.
   */
  async search(n: number, start: number, factor: number, refine: number): Promise<Step | undefined> {
    const o = this.o;
    let pass: Step | undefined;
    let fail: Step | undefined;
    let rate = Math.min(start, o.maxRate);
    for (let i = 0; i < 12; i++) {
      const st = await this.step(n, rate);
      if (st.sustained) {
        pass = st;
        if (rate >= o.maxRate) break;
        rate = Math.min(o.maxRate, rate * factor);
      } else {
        fail = st;
        break;
      }
    }
    for (let i = 0; !pass && fail && i < 3; i++) {
      const st = await this.step(n, fail.offered / factor);
      if (st.sustained) pass = st;
      else fail = st;
    }
    for (let i = 0; pass && fail && i < refine; i++) {
      const mid = Math.sqrt(pass.offered * fail.offered);
      const count = Math.round((mid * o.intervalMs) / 1000);
      if (count === pass.probes || count === fail.probes) break;
      const st = await this.step(n, mid);
      if (st.sustained) pass = st;
      else fail = st;
    }
    return pass;
  }
}

interface Snapshot {
  count: number;
  /** performance.now() */
  t: number;
  /** Date.now() */
  wall: number;
  cpu: { daemons: number[]; redis: number; bench: number };
  metrics: MetricsText[];
}

/** Fills `partial` with each cluster size's figure as it is found (kept when a later one fails). */
async function capacityPart(o: Options, redis: TestRedisServer, say: (line: string) => void, partial: number[]): Promise<number[]> {
  const client = new Redis(`${redis.url}/0`);
  client.on('error', () => {});
  const info = await client.info('server');
  client.disconnect();
  const redisPid = Number(/process_id:(\d+)/.exec(info)?.[1]);
  const server = await countingServer(4, 16);
  live.closers.push(() => server.close());
  const cap = new Capacity(o, `${redis.url}/0`, redisPid, server, say);
  const results = partial;
  let previous: number | undefined;
  for (let n = 1; n <= o.instances; n++) {
    const t = Date.now();
    const best =
      previous === undefined
        ? await cap.search(n, o.startRate, 2, o.refine)
        : await cap.search(n, Math.max(1, previous * 0.8), 1.25, Math.min(1, o.refine));
    results.push(best ? best.counted : NaN);
    if (best) previous = best.offered;
    say(
      `== ${n} instance${n > 1 ? 's' : ''}: ${best ? `${best.counted.toFixed(1)} probes/s sustained (offered ${best.offered.toFixed(1)}, ${best.probes} probes every ${formatDuration(o.intervalMs)})` : 'no rate sustained'} ` +
        `[search ${s3(Date.now() - t)}s]`,
    );
  }
  return results;
}

// ---------------------------------------------------------------------------------------------
// Part 2: the leader and the PostgreSQL primary die together.

const PROMOTE_RUNBOOK = `name: promote-replica
version: 1
description: Promote the DR replica (the cluster bench's failover).
timeout: 5m
inputs:
  replica_host: { type: string, required: true }
  replica_port: { type: integer, required: true }
steps:
  - id: promote
    kind: sql
    description: Promote the DR replica.
    timeout: 60s
    sql:
      driver: postgres
      host: '{{ inputs.replica_host }}'
      port: '{{ inputs.replica_port }}'
      user: postgres
      database: postgres
      statement: SELECT pg_promote(true, 60) AS promoted
`;

interface FailoverResult {
  totalMs: number;
  lines: string[];
}

async function failoverPart(o: Options, redis: TestRedisServer, say: (line: string) => void): Promise<FailoverResult> {
  const client = new Redis(`${redis.url}/1`);
  client.on('error', () => {});
  await client.flushdb();
  client.disconnect();
  const t0 = Date.now();
  const pair = await startPgPair();
  live.closers.push(() => pair.cleanup());
  const server = await countingServer(1, 4);
  live.closers.push(() => server.close());
  say(`PostgreSQL primary :${pair.primary.port} and streaming replica :${pair.replica.port} up in ${s3(Date.now() - t0)}s`);

  const interval = '1s';
  const pgProbe = (id: string, site: string, port: number, opts: { services?: string; expectPrimary?: boolean }) =>
    `  - id: ${id}
    kind: postgres
    site: ${site}
${opts.services ? `    services: [${opts.services}]\n` : ''}    interval: ${interval}
    timeout: 500ms
    failure_threshold: 3
    postgres: { host: 127.0.0.1, port: ${port}, user: postgres, database: postgres${opts.expectPrimary ? ', expect_role: primary' : ''} }
`;
  const probes = {
    'databases.yaml':
      'probes:\n' +
      pgProbe('orders-pg-primary', 'primary', pair.primary.port, { services: 'orders', expectPrimary: true }) +
      pgProbe('orders-pg-replica', 'dr', pair.replica.port, { services: 'orders' }) +
      // The verify probe: the replica answering as a primary (after the promotion).
      pgProbe('orders-pg-promoted', 'dr', pair.replica.port, { expectPrimary: true }),
    // Shared probes beside the failover's (those run on every instance): the leader dies holding their schedulers.
    'shared.yaml': tcpProbes('shared', 40, 1000, server.targets),
  };
  const services = `
  orders:
    rto: 1h
    rpo: 30s
    failover:
      runbook: promote-replica
      version: 1
      mode: automatic
      primary_down: [orders-pg-primary]
      dr_ready: [orders-pg-replica]
      replica: orders-pg-replica
      primary_db: orders-pg-primary
      verify: orders-pg-promoted
      cooldown: 10m
      inputs: { replica_host: 127.0.0.1, replica_port: ${pair.replica.port} }`;
  const files = (id: string) => ({
    config: daemonConfig({
      redisUrl: `${redis.url}/1`,
      id,
      leaseMs: o.leaseMs,
      // info: the election and the decisions are logged with their times.
      logLevel: 'info',
      extra: '  runbook_lock_duration: 2s\n',
      services,
    }),
    probes,
    runbooks: { 'promote-replica/v1.yaml': PROMOTE_RUNBOOK },
  });

  const a = await startInstance('fo-a', files('fo-a'));
  await until('fo-a leading', 10_000, async () => ((await isLeader(a)) ? true : undefined));
  const b = await startInstance('fo-b', files('fo-b'));
  type Status = { cluster?: { leader: string | null; leading: boolean }; probes: Array<{ id: string; state: string }> };
  const up = (st: Status) => ['orders-pg-primary', 'orders-pg-replica'].every((id) => st.probes.find((p) => p.id === id)?.state === 'UP');
  await until('fo-b following fo-a, both seeing the databases UP', 30_000, async () => {
    const [sa, sb] = await Promise.all([a.get<Status>('/api/v1/status'), b.get<Status>('/api/v1/status')]);
    return sb.cluster?.leader === 'fo-a' && !sb.cluster.leading && sa.cluster?.leading && up(sa) && up(sb) ? true : undefined;
  });
  // Both instances have published their views of the primary (the vantage board, each second).
  await sleep(2000);
  say(`fo-a (pid ${a.pid}) leads, fo-b (pid ${b.pid}) follows, both see the primary and the replica UP; killing fo-a and the primary`);
  // Anywhere in the probe schedule.
  await sleep(Math.random() * 1000);

  const postmaster = Number(readFileSync(`${pair.primary.dataDir}/postmaster.pid`, 'utf8').split('\n')[0]);
  const sharedBefore = server.count();
  const killAt = Date.now();
  a.kill9();
  process.kill(postmaster, 'SIGKILL');
  await a.exited;
  live.instances.delete(a);
  keepLog(a);
  live.closers.push(() => a.stop());

  const deadline = killAt + o.failoverDeadlineMs;
  let leaderSeenAt: number | undefined;
  let incident: Incident | undefined;
  let view: ExecutionView | undefined;
  for (;;) {
    if (!b.alive) throw new Error(`fo-b exited:\n${b.logTail()}`);
    if (Date.now() > deadline) {
      throw new Error(
        `no successful failover ${o.failoverDeadlineMs / 1000} s after the kill: ` +
          (incident
            ? `incident ${incident.id} ${incident.status}, last decision: ${incident.decision?.sentence ?? 'none'}` +
              (view ? `; execution ${view.execution.status}: ${view.execution.reason ?? ''}` : '')
            : `no incident${leaderSeenAt ? '' : ', fo-b never led'}`) +
          `\n${b.logTail(15)}`,
      );
    }
    try {
      if (leaderSeenAt === undefined && (await b.get<Status>('/api/v1/status')).cluster?.leading) leaderSeenAt = Date.now();
      incident = (await b.get<Incident[]>('/api/v1/incidents', VIEWER)).find((i) => i.service === 'orders');
      if (incident?.executionId) {
        view = await b.get<ExecutionView>(`/api/v1/executions/${incident.executionId}`, VIEWER);
        if (view.execution.status === 'succeeded') break;
        if (view.execution.finishedAt)
          throw Object.assign(new Error(`execution ${view.execution.status}: ${view.execution.reason ?? ''}`), { fatal: true });
      }
    } catch (err) {
      if ((err as { fatal?: boolean }).fatal) throw err;
    }
    await sleep(100);
  }
  const seenAt = Date.now();
  const [row] = await pair.replica.query<{ in_recovery: boolean }>('SELECT pg_is_in_recovery() AS in_recovery');
  if (row?.in_recovery !== false) throw new Error('the execution succeeded but the replica is still in recovery');
  const inc = incident!;
  const exec = view!;
  const finished = exec.execution.finishedAt!;

  // The new leader's election, from its log (pino's time: ISO, or ms since the epoch).
  const elected = b
    .log()
    .split('\n')
    .filter((l) => l.includes('"leader: elected"'))
    .map((l) => {
      const t = /"time":"?([^",]+)/.exec(l)?.[1] ?? '';
      return /^\d+$/.test(t) ? Number(t) : Date.parse(t);
    })
    .find((t) => t >= killAt);
  const rel = (t: number | undefined) => (t === undefined ? '?' : `+${s3(t - killAt)}s`);
  const promote = exec.steps.find((x) => x.step === 'promote');
  const lines = [
    `new leader fo-b elected ${rel(elected)} (seen through its API ${rel(leaderSeenAt)})`,
    `first failed run of orders-pg-primary ${rel(inc.outageStart)}, incident ${inc.id} opened ${rel(inc.openedAt)}`,
    ...inc.timeline.filter((e) => e.type === 'decision').map((e) => `decision ${rel(e.at)}: ${e.message}`),
    `execution ${exec.execution.id} started ${rel(inc.failoverStartedAt)}, created ${rel(exec.execution.createdAt)}, ` +
      `promote step ${rel(promote?.startedAt)} → ${rel(promote?.finishedAt)}, execution succeeded ${rel(finished)} ` +
      `(seen through fo-b's API ${rel(seenAt)}; replica out of recovery)`,
  ];
  // The shared probes went on without the old leader (their schedulers live in Redis).
  await sleep(Math.max(0, killAt + 5000 - Date.now()));
  const sharedRate = (server.count() - sharedBefore) / 5;
  const sharedAfter = server.count();
  await sleep(3000);
  lines.push(
    `shared tcp probes (40 every 1s) after the kill: ${sharedRate.toFixed(1)}/s over the first 5 s, ` +
      `${((server.count() - sharedAfter) / 3).toFixed(1)}/s over the next 3 s (expected 40/s)`,
  );
  // The verify probe (the promoted replica as a primary) closes the incident.
  const closed = await until(
    'the incident closed',
    10_000,
    async () => {
      const i = await b.get<Incident>(`/api/v1/incidents/${inc.id}`, VIEWER);
      return i.status === 'closed' ? i : undefined;
    },
    200,
  ).catch(() => undefined);
  lines.push(
    closed
      ? `incident closed ${rel(closed.closedAt)}${closed.rto ? `; daemon RTO ${closed.rto.total.toFixed(3)}s (detection ${closed.rto.detection.toFixed(3)}, decision ${closed.rto.decision.toFixed(3)}, runbook ${closed.rto.runbook.toFixed(3)}, verification ${closed.rto.verification.toFixed(3)})` : ''}`
      : 'incident not closed within 10 s of the failover',
  );
  await stopInstance(b);
  return { totalMs: finished - killAt, lines };
}

// ---------------------------------------------------------------------------------------------

async function main(o: Options): Promise<number> {
  const started = Date.now();
  const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1).padStart(6)}s`;
  const say = (line: string) => console.log(`bench ${elapsed()} ${line}`);
  say(
    `cluster: part=${o.part} instances=1..${o.instances} interval=${formatDuration(o.intervalMs)} warmup=${formatDuration(o.warmupMs)} ` +
      `window=${formatDuration(o.windowMs)} start_rate=${o.startRate}/s max_rate=${o.maxRate}/s refine=${o.refine} lease=${formatDuration(o.leaseMs)}; ` +
      `${new Date().toISOString()}`,
  );
  live.redis = await startRedisServer({ args: ['--maxmemory-policy', 'noeviction'] });
  say(`private redis-server on :${live.redis.port}`);
  let failed = 0;
  const capacity: number[] = [];
  let failoverS = NaN;
  if (o.part !== 'failover') {
    try {
      await capacityPart(o, live.redis, (l) => say(`capacity: ${l}`), capacity);
    } catch (err) {
      failed++;
      say(`capacity: FAILED: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  if (o.part !== 'capacity') {
    try {
      const r = await failoverPart(o, live.redis, (l) => say(`failover: ${l}`));
      failoverS = r.totalMs / 1000;
      say(`failover: leader and primary killed together; failover succeeded ${s3(r.totalMs)}s after the kill:`);
      for (const line of r.lines) say(`failover:   ${line}`);
    } catch (err) {
      failed++;
      say(`failover: FAILED: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  const t = Date.now();
  await cleanup();
  say(`cleaned up in ${s3(Date.now() - t)}s`);
  const fmt = (x: number | undefined) => (x === undefined || Number.isNaN(x) ? 'NaN' : x.toFixed(1));
  console.log(
    `cluster probes_per_s_1=${fmt(capacity[0])} probes_per_s_2=${fmt(capacity[1])} probes_per_s_3=${fmt(capacity[2])} ` +
      `leader_and_primary_failover_s=${Number.isNaN(failoverS) ? 'NaN' : failoverS.toFixed(3)}`,
  );
  return failed > 0 ? 1 : 0;
}

const o = parseOptions();
live.logs = o.logs;
const bail = bailer(cleanup, (line) => console.error(`bench: ${line}`), 30_000);
// Bounded whatever happens (about ten minutes planned).
setTimeout(() => bail('still running long past the planned end; giving up', 1), 20 * 60_000).unref();
main(o).then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`bench: ${err instanceof Error ? err.stack : String(err)}`);
    cleanup().finally(() => process.exit(1));
  },
);
