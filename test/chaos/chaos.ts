/**
 * Chaos on the lab: random faults for a while, and an invariant checker.
 *
 * Setup: the lab (test/lab/lab.ts: a PostgreSQL primary and a synchronous streaming replica behind
 * HAProxy, an app per site, OpenSSH), a PRIVATE redis-server with AOF (test/helpers/redis-server.ts,
 * never the machine's Redis), and three daemon children (test/helpers/daemons.ts) sharing it, each
 * with its own instance_id, a 2 s leader lease and runbook lock, and the service `orders` with the
 * lab's failover policy in automatic mode and a 20 s cool-down.
 *
 * Faults, one at a time, every 4-10 s (seeded, mulberry32), for `durationMs`:
 *   - kill -9 of a daemon instance (the leader half the time), restarted 2-5 s later;
 *   - SIGSTOP of an instance (the leader half the time) for 1-4 s, then SIGCONT;
 *   - kill -9 of Redis, restarted 1-4 s later from its AOF;
 *   - at most once per cycle, while the lab is healthy: kill -9 of the primary PostgreSQL. That must
 *     lead to a failover (the daemons' decision, the shipped failover-postgres). Once it has
 *     succeeded, this file plays the on-call team: it runs the shipped failback-postgres through the
 *     API (an operator starts it, an approver approves it), then moves the service's active site
 *     back to the primary site (`PUT /api/v1/services/orders/active-site`, as `continuity
 *     active-site` does) and waits until the lab is healthy again: the next
 *     cycle may start. Right after a primary kill, the next fault (kill -9 or SIGSTOP of the leader)
 *     often comes 2-4.5 s later, in the middle of the failover. A non-idempotent step left without a result by a fault (the execution
 *     `awaiting_decision`) is decided as an operator would: from the real state of the lab (did
 *     PostgreSQL log the promote request, does the server run, ...) it is skipped or retried.
 *
 * The checker samples every 500 ms, and once more at the end:
 *   1. never two writable primaries: pg_is_in_recovery() false on both PostgreSQL servers in the
 *      same sample (a server that does not answer is fine), nor two writable servers in traffic
 *      behind HAProxy;
 *   2. never a failover without a decision record: every failover-postgres execution belongs to an
 *      incident whose decision is `failover`, with that decision on its timeline before the
 *      execution was created; one execution per incident;
 *   3. never a non-idempotent step run twice: per execution, each non-idempotent step has one
 *      `step_started` (plus one per retry this file asked for), in the execution's timeline and in
 *      the audit stream; and the real effects: per cycle at most one "received promote request" in
 *      the promoted server's log, and each HAProxy server switched (in or out of traffic) at most
 *      once per runbook (twice for a failback that rolled back).
 */
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import pg from 'pg';
import { hashToken } from '../../src/http/auth.js';
import type { Incident } from '../../src/incidents/manager.js';
import type { ExecutionView } from '../../src/runbooks/executor.js';
import type { ExecutionRecord } from '../../src/runbooks/store.js';
import { daemonCluster, type DaemonCluster, type DaemonInstance } from '../helpers/daemons.js';
import { startRedisServer, type TestRedisServer } from '../helpers/redis-server.js';
import { labFailoverPolicy, labProbes, labFailbackInputs } from '../lab/failover-policy.js';
import { startLab, type HaproxyServerState, type Lab } from '../lab/lab.js';

export interface ChaosOptions {
  /** How long faults are injected (the setup before and the settling after are not counted). */
  durationMs: number;
  seed: number;
  /** Each fault and finding, one line at a time, as it happens. */
  log?: (line: string) => void;
  /** Aborting it ends the faults at once, skips the settling and cleans up. */
  signal?: AbortSignal;
  /** After the faults: how long a cycle in progress (failover, failback) may take to finish (default 150 s). */
  settleMs?: number;
}

export interface ChaosResult {
  /** Seconds from the first fault window to the end of the settling. */
  durationS: number;
  faults: number;
  /** Failover executions that succeeded. */
  failovers: number;
  failbacks: number;
  /** Broken invariants (see the file's comment); empty when all held. */
  violations: string[];
  /** What went wrong without breaking an invariant (a failover that did not happen or finish, a stuck failback...). */
  problems: string[];
  seed: number;
  interrupted: boolean;
}

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const OPERATOR = 'tok-chaos-random-operator-0123456789';
const APPROVER = 'tok-chaos-random-approver-0123456789';
const VIEWER = 'tok-chaos-random-viewer-0123456789';
const INSTANCES = ['chaos-a', 'chaos-b', 'chaos-c'];
const LEASE = '2s';
const COOLDOWN = '20s';
const PROMOTE_LOG = 'received promote request';
const AUDIT_KEY = '{continuity}:audit';
const TERMINAL = new Set(['succeeded', 'failed', 'aborted', 'rolled_back']);
/** A failover cycle needs about this long (decision, runbook, verification); a primary is not killed later than this before the end. */
const FAILOVER_TIME_MS = 25_000;
/** A failback is started only with this much of the duration left. */
const FAILBACK_TIME_MS = 30_000;

/** mulberry32: a small seeded PRNG, uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });

const errorText = (err: unknown) => (err instanceof Error ? err.message : String(err)).split('\n')[0]!;

/** One at a time: the fault loop and the cycle driver both stop and start daemons. */
class Mutex {
  private last: Promise<unknown> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.last.then(fn, fn);
    this.last = p.catch(() => undefined);
    return p;
  }
}

type Role = 'primary' | 'standby' | 'down';

/** What a PostgreSQL server says it is, asked directly (not through HAProxy); 'down' when it does not answer. */
async function roleOf(port: number): Promise<Role> {
  const client = new pg.Client({
    host: '127.0.0.1',
    port,
    user: 'postgres',
    database: 'postgres',
    connectionTimeoutMillis: 1000,
    query_timeout: 1000,
    application_name: 'chaos-checker',
  });
  client.on('error', () => {});
  try {
    await client.connect();
    const { rows } = await client.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r');
    return rows[0]?.r === false ? 'primary' : 'standby';
  } catch {
    return 'down';
  } finally {
    await client.end().catch(() => {});
  }
}

function countIn(file: string, needle: string): number {
  try {
    return readFileSync(file, 'utf8').split(needle).length - 1;
  } catch {
    return 0;
  }
}

/** Whether a process whose command line has every one of `parts` runs. */
function processRuns(...parts: string[]): boolean {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmd = readFileSync(`/proc/${entry}/cmdline`, 'utf8').replace(/\0/g, ' ');
      if (parts.every((p) => cmd.includes(p))) return true;
    } catch {
      // gone meanwhile
    }
  }
  return false;
}

function daemonConfig(lab: Lab, redisUrl: string, instanceId: string, port: number): string {
  const policy = labFailoverPolicy(lab, 'automatic').replace(/cooldown: \S+/, `cooldown: ${COOLDOWN}`);
  return `daemon:
  listen: 127.0.0.1:${port}
  redis_url: ${redisUrl}
  runbooks_dir: ../runbooks
  state_dir: ../var
  runbook_lock_duration: 2s
  shutdown_grace: 2s
  instance_id: ${instanceId}
  leader_lease: ${LEASE}
auth:
  tokens:
    - { name: olga, sha256: ${hashToken(OPERATOR)}, roles: [operator] }
    - { name: ann, sha256: ${hashToken(APPROVER)}, roles: [approver] }
    - { name: vera, sha256: ${hashToken(VIEWER)}, roles: [viewer] }
sites:
  primary: { role: primary }
  dr: { role: dr }
services:
  orders:
    rto: 1h
    rpo: 30s
${policy}`;
}

type Phase = 'healthy' | 'failing_over' | 'failing_back' | 'done' | 'stuck';

interface Cycle {
  n: number;
  killedAt: number;
  replicaPromotes0: number;
  /** Where HAProxy's output was when the primary was killed. */
  hpMark: number;
  incident?: string;
  failover?: string;
  failoverDoneAt?: number;
  failback?: string;
  failbackStartedAt?: number;
  failbackDoneAt?: number;
  failbackStatus?: string;
}

interface Transition {
  at: number;
  server: string;
  inTraffic: boolean;
}

interface StatusView {
  cluster?: { leading?: boolean };
  services: Array<{ id: string; activeSite: string }>;
  probes: Array<{ id: string; state: string }>;
}

export async function runChaos(opts: ChaosOptions): Promise<ChaosResult> {
  const say = opts.log ?? (() => {});
  const signal = opts.signal;
  const random = mulberry32(opts.seed);
  const between = (lo: number, hi: number) => lo + random() * (hi - lo);
  const pick = <T>(list: T[]): T => list[Math.floor(random() * list.length)]!;

  const violations: string[] = [];
  const problems: string[] = [];
  const cleanups: Array<() => Promise<void> | void> = [];
  let t0 = Date.now();
  const stamp = () => `+${((Date.now() - t0) / 1000).toFixed(1)}s`;
  const log = (line: string) => say(`[${stamp()}] ${line}`);
  const violation = (text: string) => {
    if (violations.includes(text)) return;
    violations.push(text);
    log(`VIOLATION: ${text}`);
  };
  let closing = false;
  const problem = (text: string) => {
    if (closing) return;
    problems.push(text);
    log(`PROBLEM: ${text}`);
  };

  let faults = 0;
  let failovers = 0;
  let failbacks = 0;
  let endAt = Number.POSITIVE_INFINITY;
  /** The chaos phase: from the first fault window to the end of the settling. */
  const clock = { startedAt: 0, finishedAt: 0 };

  try {
    // ---------------------------------------------------------------------------------------------
    // Setup
    const setupStart = Date.now();
    const [redisRes, labRes] = await Promise.allSettled([startRedisServer({ appendonly: true }), startLab()]);
    if (redisRes.status === 'fulfilled') cleanups.push(() => redisRes.value.stop());
    if (labRes.status === 'fulfilled') cleanups.push(() => labRes.value.stop());
    if (redisRes.status === 'rejected') throw redisRes.reason;
    if (labRes.status === 'rejected') throw labRes.reason;
    const redis: TestRedisServer = redisRes.value;
    const lab: Lab = labRes.value;
    const client = new Redis(redis.url, { maxRetriesPerRequest: 20, retryStrategy: () => 200, lazyConnect: true });
    client.on('error', () => {});
    await client.connect();
    cleanups.push(() => client.disconnect());

    const cluster: DaemonCluster = await daemonCluster({
      names: INSTANCES,
      token: VIEWER,
      config: (ctx) => daemonConfig(lab, redis.url, ctx.instanceId, ctx.port),
      probes: { 'databases.yaml': labProbes(lab) },
      prepare: (ctx) => {
        mkdirSync(join(ctx.dir, 'runbooks'));
        for (const rb of ['failover-postgres', 'failback-postgres'])
          cpSync(join(repoRoot, 'runbooks', rb), join(ctx.dir, 'runbooks', rb), { recursive: true });
      },
      env: { CONTINUITY_DB_PASSWORD: '' },
    });
    cleanups.push(async () => {
      // Evidence for whoever reads the findings: every daemon's output, kept (the only folder left behind).
      if (violations.length || problems.length) {
        const dir = mkdtempSync(join(tmpdir(), `continuity-chaos-seed${opts.seed}-`));
        for (const inst of cluster.instances) writeFileSync(join(dir, `${inst.name}.log`), inst.output());
        for (const node of ['primary', 'replica'] as const)
          if (existsSync(lab[node].logFile)) writeFileSync(join(dir, `postgres-${node}.log`), readFileSync(lab[node].logFile));
        writeFileSync(join(dir, 'haproxy.log'), lab.haproxy.logs());
        log(`daemon, PostgreSQL and HAProxy logs kept in ${dir}`);
      }
      await cluster.close();
    });
    await cluster.startAll(60_000);
    await cluster.leader(20_000);

    /** Instances whose process runs and is not stopped: the ones that answer. */
    const stopped = new Set<string>();
    const available = () => cluster.instances.filter((i) => i.running() && !stopped.has(i.name));
    const procs = new Mutex();

    /** A request to any available instance; 503 (Redis away, not leading) and network errors are retried until `ms`. */
    const api = async <T>(method: string, path: string, body?: unknown, token = VIEWER, ms = 30_000): Promise<T> => {
      const end = Date.now() + ms;
      let last = '';
      for (;;) {
        if (closing) throw new Error('the chaos run is over');
        const list = available();
        // Math.random, not the seeded PRNG: how often this runs depends on timing.
        for (const inst of list.sort(() => Math.random() - 0.5)) {
          try {
            const res = await inst.request<T>(method, path, body, token);
            if (res.status >= 200 && res.status < 300) return res.body;
            last = `${inst.name}: HTTP ${res.status} ${JSON.stringify(res.body)}`;
            if (res.status !== 503 && res.status !== 502) throw new HttpError(res.status, `${method} ${path}: ${last}`);
          } catch (err) {
            if (err instanceof HttpError) throw err;
            last = `${inst.name}: ${errorText(err)}`;
          }
        }
        if (Date.now() > end) throw new Error(`${method} ${path}: no instance answered within ${ms} ms (${last})`);
        await sleep(300);
      }
    };
    const statusOf = async (inst: DaemonInstance) => (await inst.api<StatusView>('GET', '/api/v1/status')) as StatusView;
    const leaderNow = async (): Promise<DaemonInstance | undefined> => {
      const list = available();
      const values = await Promise.all(list.map((i) => i.metric('continuity_leader').catch(() => undefined)));
      const leading = list.filter((_, k) => values[k] === 1);
      return leading.length === 1 ? leading[0] : undefined;
    };

    /** Why the lab is not ready for the next primary kill, or undefined when it is. */
    const notHealthy = async (): Promise<string | undefined> => {
      const [p, r] = await Promise.all([roleOf(lab.primary.port), roleOf(lab.replica.port)]);
      if (p !== 'primary' || r !== 'standby') return `primary is ${p}, replica is ${r}`;
      const sync = await lab.primary
        .query<{ s: string }>(`SELECT sync_state AS s FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'`, [
          lab.replica.clusterName,
        ])
        .catch(() => []);
      if (sync.length === 0) return 'the replica does not stream from the primary';
      for (const backend of ['pg', 'web'] as const) {
        const names = (await lab.haproxy.servers(backend)).filter((s) => s.inTraffic).map((s) => s.name);
        if (names.join() !== 'primary') return `HAProxy ${backend} sends traffic to [${names.join(', ')}]`;
      }
      const leader = await leaderNow();
      if (!leader) return 'no single leader';
      const list = available();
      for (const inst of list) {
        const st = await statusOf(inst);
        const up = new Set(st.probes.filter((x) => x.state === 'UP').map((x) => x.id));
        if (!up.has('orders-pg-primary') || !up.has('orders-pg-replica')) return `${inst.name} does not see both databases UP`;
        if (inst === leader && st.services.find((s) => s.id === 'orders')?.activeSite !== 'primary')
          return `the leader ${inst.name} serves orders from ${st.services.find((s) => s.id === 'orders')?.activeSite}`;
      }
      const open = (await api<Incident[]>('GET', '/api/v1/incidents', undefined, VIEWER, 5000)).filter((i) => i.status !== 'closed');
      if (open.length) return `incident ${open[0]!.id} is ${open[0]!.status}`;
      return undefined;
    };
    const waitHealthy = async (ms: number): Promise<string | undefined> => {
      const end = Date.now() + ms;
      let why: string | undefined = 'not checked';
      while (Date.now() < end && !signal?.aborted) {
        why = await notHealthy().catch((err: unknown) => errorText(err));
        if (!why) return undefined;
        await sleep(500);
      }
      return why;
    };
    const ready = await waitHealthy(60_000);
    if (signal?.aborted) throw new Error('interrupted during the setup');
    if (ready) throw new Error(`the lab and the daemons did not become healthy: ${ready}`);
    log(
      `setup done in ${((Date.now() - setupStart) / 1000).toFixed(1)} s: lab (primary :${lab.primary.port}, replica :${lab.replica.port}), ` +
        `private Redis :${redis.port} (AOF), ${INSTANCES.join(', ')}; seed ${opts.seed}, duration ${opts.durationMs / 1000} s`,
    );

    t0 = Date.now();
    clock.startedAt = t0;
    endAt = t0 + opts.durationMs;
    const remaining = () => endAt - Date.now();

    // ---------------------------------------------------------------------------------------------
    // The checker: PostgreSQL roles and HAProxy every 500 ms
    let checking = true;
    let samples = 0;
    let doubleSince: number | undefined;
    const transitions: Transition[] = [];
    const lastInTraffic = new Map<string, boolean>();
    const portName = new Map([
      [lab.primary.port, 'primary'],
      [lab.replica.port, 'replica'],
    ]);
    const sampleOnce = async () => {
      const at = Date.now();
      const [p, r, servers] = await Promise.all([
        roleOf(lab.primary.port),
        roleOf(lab.replica.port),
        lab.haproxy.servers('pg').catch((): HaproxyServerState[] | undefined => undefined),
      ]);
      samples++;
      if (p === 'primary' && r === 'primary') {
        if (doubleSince === undefined) {
          doubleSince = at;
          violation(
            `two writable primaries at ${new Date(at).toISOString()}: pg_is_in_recovery() is false on both the primary (:${lab.primary.port}) and the replica (:${lab.replica.port})`,
          );
        }
      } else doubleSince = undefined;
      if (servers) {
        const role = (s: HaproxyServerState) => (portName.get(s.port) === 'primary' ? p : portName.get(s.port) === 'replica' ? r : 'down');
        const writableInTraffic = servers.filter((s) => s.inTraffic && role(s) === 'primary');
        if (writableInTraffic.length > 1)
          violation(
            `two writable primaries in traffic behind HAProxy at ${new Date(at).toISOString()}: ${writableInTraffic.map((s) => s.name).join(', ')}`,
          );
        for (const s of servers) {
          const before = lastInTraffic.get(s.name);
          if (before !== undefined && before !== s.inTraffic) {
            transitions.push({ at, server: s.name, inTraffic: s.inTraffic });
            log(`HAProxy: pg/${s.name} ${s.inTraffic ? 'in traffic' : 'out of traffic'}`);
          }
          lastInTraffic.set(s.name, s.inTraffic);
        }
      }
    };
    const sampler = (async () => {
      while (checking) {
        const next = Date.now() + 500;
        await sampleOnce().catch((err: unknown) => log(`checker: sample failed: ${errorText(err)}`));
        await sleep(Math.max(0, next - Date.now()));
      }
    })();

    // ---------------------------------------------------------------------------------------------
    // The checker: executions, incidents, audit (every 5 s, and at the end)
    /** Retries asked by this file, per `<execution>/<step>`: each allows one more start. */
    const retries = new Map<string, number>();
    const checkedFinal = new Set<string>();
    const checkExecutions = async (final: boolean) => {
      const execs = await api<ExecutionRecord[]>('GET', '/api/v1/executions?limit=1000', undefined, VIEWER, final ? 60_000 : 5000);
      // Incidents after executions: a decision is saved before its execution is created.
      const incidents = await api<Incident[]>('GET', '/api/v1/incidents', undefined, VIEWER, final ? 60_000 : 5000);
      const byIncident = new Map<string, string[]>();
      for (const e of execs.filter((x) => x.runbook === 'failover-postgres')) {
        const incidentId = typeof e.inputs.incident === 'string' ? e.inputs.incident : '';
        const inc = incidents.find((i) => i.id === incidentId) ?? incidents.find((i) => i.executionId === e.id);
        if (!inc) {
          violation(
            `failover execution ${e.id} (created ${new Date(e.createdAt).toISOString()}) has no incident (input incident "${incidentId}")`,
          );
          continue;
        }
        byIncident.set(inc.id, [...(byIncident.get(inc.id) ?? []), e.id]);
        if (inc.decision?.action !== 'failover')
          violation(`failover execution ${e.id}: its incident ${inc.id} has decision ${inc.decision?.action ?? 'none'}, not failover`);
        const decided = inc.timeline.find(
          (ev) =>
            ev.type === 'decision' && /; (running|awaiting approval for) failover-postgres v\d+$/.test(ev.message) && ev.at <= e.createdAt,
        );
        if (!decided)
          violation(
            `failover execution ${e.id} (created ${new Date(e.createdAt).toISOString()}): incident ${inc.id} has no failover decision on its timeline before it`,
          );
      }
      for (const [inc, ids] of byIncident)
        if (ids.length > 1) violation(`incident ${inc} has ${ids.length} failover executions: ${ids.join(', ')}`);
      for (const e of execs) {
        if (checkedFinal.has(e.id)) continue;
        const v = await api<ExecutionView>('GET', `/api/v1/executions/${e.id}`, undefined, VIEWER, final ? 60_000 : 5000);
        checkSteps(v);
        if (TERMINAL.has(v.execution.status)) checkedFinal.add(e.id);
      }
    };
    const nonIdempotent = (v: ExecutionView) => new Set(v.plan.filter((s) => !s.idempotent && s.kind !== 'approval').map((s) => s.id));
    const checkSteps = (v: ExecutionView) => {
      const id = v.execution.id;
      for (const step of nonIdempotent(v)) {
        const starts = v.timeline.filter((e) => e.type === 'step_started' && e.step === step).length;
        const allowed = 1 + (retries.get(`${id}/${step}`) ?? 0);
        if (starts > allowed)
          violation(
            `execution ${id} (${v.execution.runbook}): non-idempotent step ${step} started ${starts} times (operator retries: ${allowed - 1})`,
          );
      }
    };
    const checkAudit = async () => {
      const execs = await api<ExecutionRecord[]>('GET', '/api/v1/executions?limit=1000', undefined, VIEWER, 60_000);
      const raw = await client.xrange(AUDIT_KEY, '-', '+');
      const starts = new Map<string, number>();
      for (const [, list] of raw) {
        const f: Record<string, string> = {};
        for (let i = 0; i + 1 < list.length; i += 2) f[list[i]!] = list[i + 1]!;
        if (f.action === 'step_started' && f.target) starts.set(f.target, (starts.get(f.target) ?? 0) + 1);
      }
      for (const e of execs) {
        const v = await api<ExecutionView>('GET', `/api/v1/executions/${e.id}`, undefined, VIEWER, 60_000);
        for (const step of nonIdempotent(v)) {
          const n = starts.get(`${e.id}/${step}`) ?? 0;
          const allowed = 1 + (retries.get(`${e.id}/${step}`) ?? 0);
          if (n > allowed)
            violation(`audit stream: non-idempotent step ${e.id}/${step} started ${n} times (operator retries: ${allowed - 1})`);
        }
      }
      return raw.length;
    };
    const watcher = (async () => {
      while (checking) {
        await sleep(5000, signal);
        if (!checking || signal?.aborted) break;
        await checkExecutions(false).catch(() => {
          // Redis or every instance away for now: the next round (or the final check) sees it.
        });
      }
    })();

    // ---------------------------------------------------------------------------------------------
    // The operator: decisions on steps left without a result, from the real state of the lab
    const promotesIn = (node: 'primary' | 'replica') => countIn(lab[node].logFile, PROMOTE_LOG);
    const waitFor = async (cond: () => boolean | Promise<boolean>, ms: number) => {
      const end = Date.now() + ms;
      while (Date.now() < end) {
        if (await cond()) return true;
        await sleep(250);
      }
      return cond();
    };
    const decideStep = async (
      v: ExecutionView,
      step: string,
      cycle: Cycle,
      failbackPrimaryPromotes0: number,
    ): Promise<'skip' | 'retry'> => {
      const id = v.execution.id;
      // Give an effect still on its way (a fenced, thawed leader finishing its step) the time to land.
      await sleep(3000);
      const pgRuns = (node: 'primary' | 'replica') => lab[node].postmasterPid() !== undefined;
      switch (`${v.execution.runbook}/${step}`) {
        case 'failover-postgres/promote':
          if (promotesIn('replica') > cycle.replicaPromotes0) {
            await waitFor(async () => (await roleOf(lab.replica.port)) === 'primary', 15_000);
            return 'skip';
          }
          return 'retry';
        case 'failback-postgres/promote_old_primary':
          if (promotesIn('primary') > failbackPrimaryPromotes0) {
            await waitFor(async () => (await roleOf(lab.primary.port)) === 'primary', 15_000);
            return 'skip';
          }
          return 'retry';
        case 'failback-postgres/stop_old_primary':
          return (await waitFor(() => !pgRuns('primary'), 10_000)) ? 'skip' : 'retry';
        case 'failback-postgres/stop_dr':
          return (await waitFor(() => !pgRuns('replica'), 10_000)) ? 'skip' : 'retry';
        case 'failback-postgres/start_old_primary':
          return (await waitFor(() => pgRuns('primary'), 5000)) ? 'skip' : 'retry';
        case 'failback-postgres/start_dr':
          return (await waitFor(() => pgRuns('replica'), 5000)) ? 'skip' : 'retry';
        case 'failback-postgres/keep_old_data':
          return existsSync(`${lab.primary.dataDir}.pre-failback-${id}`) && !existsSync(lab.primary.dataDir) ? 'skip' : 'retry';
        case 'failback-postgres/basebackup_old_primary': {
          await waitFor(() => !processRuns('pg_basebackup', lab.primary.dataDir), 30_000);
          if (existsSync(join(lab.primary.dataDir, 'backup_manifest'))) return 'skip';
          // A copy cut short: removed, and made again.
          rmSync(lab.primary.dataDir, { recursive: true, force: true });
          return 'retry';
        }
        default:
          throw new Error(`no operator rule for step ${step} of ${v.execution.runbook}`);
      }
    };

    /** Follows an execution until it reaches one of `until` statuses (or a terminal one), deciding what waits for an operator. */
    const follow = async (
      id: string,
      until: string[],
      cycle: Cycle,
      ms: number,
      primaryPromotes0 = 0,
      lastStatus = '',
    ): Promise<ExecutionView> => {
      const end = Date.now() + ms;
      for (;;) {
        const v = await api<ExecutionView>('GET', `/api/v1/executions/${id}`, undefined, VIEWER, Math.max(5000, end - Date.now()));
        const status = v.execution.status;
        if (status !== lastStatus) {
          log(`cycle ${cycle.n}: ${v.execution.runbook} ${id} ${status}${v.execution.reason ? ` (${v.execution.reason})` : ''}`);
          lastStatus = status;
        }
        if (until.includes(status) || TERMINAL.has(status)) return v;
        if (status === 'awaiting_decision') {
          const waiting = v.steps.find((s) => s.status === 'started' && s.phase === v.execution.phase);
          if (waiting) {
            const action = await decideStep(v, waiting.step, cycle, primaryPromotes0);
            log(`cycle ${cycle.n}: operator: ${action} ${waiting.step} of ${id} (started without a recorded result)`);
            if (action === 'retry') retries.set(`${id}/${waiting.step}`, (retries.get(`${id}/${waiting.step}`) ?? 0) + 1);
            await api('POST', `/api/v1/executions/${id}/steps/${waiting.step}/${action}`, { comment: 'chaos operator' }, OPERATOR).catch(
              (err: unknown) => {
                if (action === 'retry') retries.set(`${id}/${waiting.step}`, (retries.get(`${id}/${waiting.step}`) ?? 1) - 1);
                log(`cycle ${cycle.n}: operator: ${action} refused: ${errorText(err)}`);
              },
            );
            await waitFor(async () => {
              const again = await api<ExecutionView>('GET', `/api/v1/executions/${id}`).catch(() => undefined);
              return again?.execution.status !== 'awaiting_decision';
            }, 15_000);
          }
        }
        if (Date.now() > end) throw new Error(`${v.execution.runbook} ${id} still ${status} after ${ms / 1000} s`);
        await sleep(500);
      }
    };

    /** Where HAProxy's output is now (it keeps the last 64 KiB; it prints a few lines per switch). */
    const hpMark = () => lab.haproxy.logs().length;
    /** HAProxy's own word, since `mark`: per pg server, the lines saying it went into or out of maintenance. */
    const hpSwitches = (mark: number) => {
      const counts = new Map<string, number>();
      for (const line of lab.haproxy.logs().slice(mark).split('\n')) {
        const m = /Server pg\/(\S+) .*maintenance/i.exec(line);
        if (m) counts.set(m[1]!, (counts.get(m[1]!) ?? 0) + 1);
      }
      return counts;
    };
    const showCounts = (c: Map<string, number>) => [...c].map(([k, n]) => `pg/${k} ${n}x`).join(', ') || 'none';
    const transitionsIn = (from: number, to: number) => {
      const counts = new Map<string, number>();
      for (const t of transitions.filter((x) => x.at >= from && x.at <= to)) counts.set(t.server, (counts.get(t.server) ?? 0) + 1);
      return counts;
    };

    // ---------------------------------------------------------------------------------------------
    // The cycle driver: after a primary kill, the failover, then the failback
    let phase = 'healthy' as Phase;
    const cycles: Cycle[] = [];
    const failbackInputs = () => labFailbackInputs(lab, 60);

    const runCycle = async (cycle: Cycle): Promise<void> => {
      // 1. The decision and the failover.
      const incident = await (async () => {
        const end = Date.now() + 60_000;
        let last: Incident | undefined;
        while (Date.now() < end) {
          const list = await api<Incident[]>('GET', '/api/v1/incidents').catch(() => []);
          last = list.find((i) => i.openedAt >= cycle.killedAt - 2000) ?? last;
          if (last?.executionId) return last;
          await sleep(500);
        }
        throw new Error(
          `no failover within 60 s of the primary kill (${last ? `incident ${last.id} ${last.status}: ${last.decision?.sentence}` : 'no incident'})`,
        );
      })();
      cycle.incident = incident.id;
      cycle.failover = incident.executionId!;
      log(`cycle ${cycle.n}: incident ${incident.id}: ${incident.decision?.sentence}`);
      const done = await follow(cycle.failover, [], cycle, 120_000);
      cycle.failoverDoneAt = Date.now();
      const promotes = promotesIn('replica') - cycle.replicaPromotes0;
      if (promotes > 1)
        violation(`cycle ${cycle.n}: the replica's log has ${promotes} "${PROMOTE_LOG}" for one failover (${cycle.failover})`);
      await sleep(1200); // the sampler's view of the last switch
      const sampled = transitionsIn(cycle.killedAt, cycle.failoverDoneAt + 1000);
      const said = hpSwitches(cycle.hpMark);
      for (const [server, n] of sampled)
        if (n > 1) violation(`cycle ${cycle.n}: HAProxy pg/${server} switched ${n} times during failover ${cycle.failover}`);
      for (const [server, n] of said)
        if (n > 1)
          violation(`cycle ${cycle.n}: HAProxy logged ${n} maintenance switches of pg/${server} during failover ${cycle.failover}`);
      log(`cycle ${cycle.n}: HAProxy switches during the failover: sampled ${showCounts(sampled)}; in its log ${showCounts(said)}`);
      if (done.execution.status !== 'succeeded') {
        throw new Error(`failover ${cycle.failover} ${done.execution.status}: ${done.execution.reason ?? ''}`);
      }
      failovers++;
      log(
        `cycle ${cycle.n}: failover done ${((cycle.failoverDoneAt - cycle.killedAt) / 1000).toFixed(1)} s after the kill: ${done.steps
          .map((s) => `${s.step}:${s.status}`)
          .join(' ')}; "${PROMOTE_LOG}" ${promotes}x`,
      );
      const closed = await (async () => {
        const end = Date.now() + 30_000;
        while (Date.now() < end) {
          const i = await api<Incident>('GET', `/api/v1/incidents/${incident.id}`).catch(() => undefined);
          if (i?.status === 'closed' || i?.status === 'failover_failed') return i;
          await sleep(500);
        }
        return undefined;
      })();
      if (closed?.status !== 'closed')
        throw new Error(`incident ${incident.id} not closed 30 s after its failover (${closed?.status ?? '?'})`);

      // 2. The failback, when there is time for it.
      if (signal?.aborted || remaining() < FAILBACK_TIME_MS) {
        log(`cycle ${cycle.n}: ends after the failover (no time left for a failback)`);
        phase = 'done';
        return;
      }
      phase = 'failing_back';
      cycle.failbackStartedAt = Date.now();
      const failbackMark = hpMark();
      const primaryPromotes0 = promotesIn('primary');
      const { execution } = await api<{ execution: ExecutionRecord }>(
        'POST',
        '/api/v1/runbooks/failback-postgres/executions',
        { inputs: failbackInputs(), mode: 'live', idempotency_key: `chaos-${opts.seed}-failback-${cycle.n}` },
        OPERATOR,
      );
      cycle.failback = execution.id;
      log(`cycle ${cycle.n}: failback ${execution.id} started`);
      const waiting = await follow(execution.id, ['waiting_approval'], cycle, 120_000, primaryPromotes0);
      if (waiting.execution.status === 'waiting_approval') {
        await api(
          'POST',
          `/api/v1/executions/${execution.id}/approvals`,
          { decision: 'approve', hash: waiting.execution.hash },
          APPROVER,
        ).catch(async (err: unknown) => {
          // The answer lost with its instance, but the approval recorded: fine.
          const v = await api<ExecutionView>('GET', `/api/v1/executions/${execution.id}`);
          if (!v.approvals.some((a) => a.who === 'ann')) throw err;
        });
        log(`cycle ${cycle.n}: failback ${execution.id} approved`);
      }
      const fb = await follow(execution.id, [], cycle, 180_000, primaryPromotes0, 'waiting_approval');
      cycle.failbackDoneAt = Date.now();
      cycle.failbackStatus = fb.execution.status;
      const primaryPromotes = promotesIn('primary') - primaryPromotes0;
      if (primaryPromotes > 1)
        violation(`cycle ${cycle.n}: the old primary's log has ${primaryPromotes} "${PROMOTE_LOG}" for one failback (${execution.id})`);
      const allowed = fb.execution.status === 'rolled_back' ? 2 : 1;
      await sleep(1200);
      const fbSampled = transitionsIn(cycle.failbackStartedAt, cycle.failbackDoneAt + 1000);
      const fbSaid = hpSwitches(failbackMark);
      for (const [server, n] of fbSampled)
        if (n > allowed) violation(`cycle ${cycle.n}: HAProxy pg/${server} switched ${n} times during failback ${execution.id}`);
      for (const [server, n] of fbSaid)
        if (n > allowed)
          violation(`cycle ${cycle.n}: HAProxy logged ${n} maintenance switches of pg/${server} during failback ${execution.id}`);
      log(`cycle ${cycle.n}: HAProxy switches during the failback: sampled ${showCounts(fbSampled)}; in its log ${showCounts(fbSaid)}`);
      if (fb.execution.status !== 'succeeded')
        throw new Error(`failback ${execution.id} ${fb.execution.status}: ${fb.execution.reason ?? ''}`);
      failbacks++;
      log(
        `cycle ${cycle.n}: failback done in ${((cycle.failbackDoneAt - cycle.failbackStartedAt) / 1000).toFixed(1)} s; "${PROMOTE_LOG}" ${primaryPromotes}x on the old primary`,
      );

      // 3. The service is served from the primary site again: the operator says so (the leader takes it).
      const moved = await api<{ was: string }>(
        'PUT',
        '/api/v1/services/orders/active-site',
        { site: 'primary', reason: `chaos cycle ${cycle.n}: failback done` },
        OPERATOR,
        60_000,
      );
      log(`cycle ${cycle.n}: active site of orders set back to primary (was ${moved.was})`);
      const why = await waitHealthy(60_000);
      if (why) throw new Error(`the lab did not become healthy after the failback: ${why}`);
      log(`cycle ${cycle.n}: healthy again; the next cycle may start`);
      phase = 'healthy';
    };
    let cycleRun: Promise<void> | undefined;

    // ---------------------------------------------------------------------------------------------
    // The faults
    /** An instance that ended without being told is a finding; it is started again. */
    const restartExited = () => {
      for (const inst of cluster.instances)
        if (!inst.running()) {
          problem(`${inst.name} exited by itself: ${inst.tail(5).replace(/\n/g, ' | ')}`);
          inst.start();
        }
    };
    const killInstance = async (leaderOnly = false) =>
      procs.run(async () => {
        restartExited();
        const leader = leaderOnly || random() < 0.5 ? await leaderNow() : undefined;
        const inst = leader ?? pick(available());
        const down = between(2000, 5000);
        faults++;
        log(`fault ${faults}: kill -9 ${inst.name}${inst === leader ? ' (the leader)' : ''}; restart in ${(down / 1000).toFixed(1)} s`);
        await inst.kill('SIGKILL');
        await sleep(down);
        inst.start();
        await inst.up(30_000).catch((err: unknown) => problem(`${inst.name} did not come back after kill -9: ${errorText(err)}`));
      });
    const stopInstance = async (leaderOnly = false) =>
      procs.run(async () => {
        restartExited();
        const leader = leaderOnly || random() < 0.5 ? await leaderNow() : undefined;
        const inst = leader ?? pick(available());
        const pause = between(1000, 4000);
        faults++;
        log(`fault ${faults}: SIGSTOP ${inst.name}${inst === leader ? ' (the leader)' : ''} for ${(pause / 1000).toFixed(1)} s`);
        stopped.add(inst.name);
        try {
          await inst.kill('SIGSTOP');
          await sleep(pause);
        } finally {
          await inst.kill('SIGCONT');
          stopped.delete(inst.name);
        }
      });
    const restartRedis = async () => {
      const down = between(1000, 4000);
      faults++;
      log(`fault ${faults}: kill -9 Redis; restart in ${(down / 1000).toFixed(1)} s`);
      await redis.kill('SIGKILL');
      await sleep(down);
      await redis.restart();
    };
    const killPrimary = async () => {
      faults++;
      const cycle: Cycle = { n: cycles.length + 1, killedAt: Date.now(), replicaPromotes0: promotesIn('replica'), hpMark: hpMark() };
      cycles.push(cycle);
      phase = 'failing_over';
      log(`fault ${faults}: kill -9 of the primary PostgreSQL (cycle ${cycle.n}): a failover must follow`);
      await lab.killPrimary();
      cycleRun = runCycle(cycle).catch((err: unknown) => {
        problem(`cycle ${cycle.n}: ${errorText(err)}`);
        phase = 'stuck';
      });
    };

    const forcePrimaryAt = Math.min(20_000, opts.durationMs / 4);
    while (!signal?.aborted && remaining() > 0) {
      // Right after a primary kill, often a fault of the leader soon (the decision comes 2-3 s after
      // the kill, the runbook takes 1-3 s): it lands in the middle of the failover.
      const soon = phase === 'failing_over' && cycles.at(-1)!.failoverDoneAt === undefined && random() < 0.6;
      await sleep(soon ? between(2200, 4500) : between(4000, 10_000), signal);
      if (signal?.aborted || remaining() <= 0) break;
      const primaryAllowed = phase === 'healthy' && remaining() > FAILOVER_TIME_MS;
      const mustKillPrimary = primaryAllowed && cycles.length === 0 && Date.now() - t0 >= forcePrimaryAt;
      const choices: Array<[number, () => Promise<void>]> = [
        [3, () => killInstance()],
        [3, () => stopInstance()],
        [2, restartRedis],
        [primaryAllowed ? 3 : 0, killPrimary],
      ];
      let fault = killPrimary;
      if (soon) fault = random() < 0.5 ? () => killInstance(true) : () => stopInstance(true);
      else if (!mustKillPrimary) {
        let r = random() * choices.reduce((s, [w]) => s + w, 0);
        for (const [w, f] of choices) {
          if (r < w) {
            fault = f;
            break;
          }
          r -= w;
        }
      }
      await fault().catch((err: unknown) => problem(`fault failed: ${errorText(err)}`));
    }
    log(
      `faults over (${faults}); ${cycleRun && (phase === 'failing_over' || phase === 'failing_back') ? 'waiting for the cycle in progress' : 'settling'}`,
    );

    // ---------------------------------------------------------------------------------------------
    // Settling and the final check
    if (!redis.running()) await redis.restart();
    for (const inst of cluster.instances) if (!inst.running()) inst.start();
    if (cycleRun && !signal?.aborted) {
      const settle = opts.settleMs ?? 150_000;
      const timedOut = await Promise.race([cycleRun.then(() => false), sleep(settle, signal).then(() => true)]);
      if (timedOut && (phase === 'failing_over' || phase === 'failing_back'))
        problem(`cycle ${cycles.length} still ${phase} ${settle / 1000} s after the faults ended`);
    }
    checking = false;
    await Promise.all([sampler, watcher]);
    clock.finishedAt = Date.now();
    if (!signal?.aborted) {
      await sampleOnce().catch(() => {});
      await cluster.startAll(30_000).catch((err: unknown) => problem(`instances not all up at the end: ${errorText(err)}`));
      await checkExecutions(true).catch((err: unknown) => problem(`final check of the executions failed: ${errorText(err)}`));
      const auditEntries = await checkAudit().catch((err: unknown) => {
        problem(`final check of the audit stream failed: ${errorText(err)}`);
        return 0;
      });
      const replicaPromotes = promotesIn('replica');
      const primaryPromotes = promotesIn('primary');
      const reached = cycles.filter((c) => c.failover).length;
      if (replicaPromotes > reached) violation(`the replica's log has ${replicaPromotes} "${PROMOTE_LOG}" for ${reached} failovers`);
      const failbacksRun = cycles.filter((c) => c.failback).length;
      if (primaryPromotes > failbacksRun)
        violation(`the old primary's log has ${primaryPromotes} "${PROMOTE_LOG}" for ${failbacksRun} failbacks`);
      log(
        `checked: ${samples} samples, ${checkedFinal.size} executions, ${auditEntries} audit entries; "${PROMOTE_LOG}": replica ${replicaPromotes}x, primary ${primaryPromotes}x; ` +
          `${cycles.length} cycles, ${failovers} failovers, ${failbacks} failbacks`,
      );
    }
  } finally {
    closing = true;
    for (const c of cleanups.reverse()) await Promise.resolve(c()).catch((err: unknown) => log(`cleanup: ${errorText(err)}`));
  }
  return {
    durationS: clock.startedAt ? Math.round(((clock.finishedAt || Date.now()) - clock.startedAt) / 1000) : 0,
    faults,
    failovers,
    failbacks,
    violations,
    problems,
    seed: opts.seed,
    interrupted: !!signal?.aborted,
  };
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}
