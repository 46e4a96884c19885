import { cpSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../../src/daemon.js';
import { hashToken } from '../../src/http/auth.js';
import type { ExecutionView } from '../../src/runbooks/executor.js';
import { writeConfig } from '../helpers/config.js';
import { startLab, type Lab } from '../lab/lab.js';
import { labFailbackInputs } from '../lab/failover-policy.js';

/**
 * End to end on the lab: fail over with the shipped failover-postgres runbook, write on the
 * promoted DR, then fail back with failback-postgres (old primary rebuilt as a replica of the DR,
 * approval, clean switchover, DR re-attached) while HAProxy is watched and writes keep coming.
 */
const OPERATOR = 'tok-e2e-fb-operator-0123456789';
const APPROVER = 'tok-e2e-fb-approver-0123456789';
const VIEWER = 'tok-e2e-fb-viewer-0123456789';
const REDIS_DB = 11;

class Sink extends Writable {
  lines: Array<Record<string, unknown>> = [];
  override _write(c: Buffer, _e: string, done: () => void) {
    for (const l of c.toString().split('\n').filter(Boolean)) this.lines.push(JSON.parse(l));
    done();
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, fn: () => Promise<T | undefined | false>, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

async function startDaemon() {
  const cfg = writeConfig({
    config: `daemon:
  listen: 127.0.0.1:0
  redis_url: redis://127.0.0.1:6379/${REDIS_DB}
  runbooks_dir: ../runbooks
  state_dir: ../var
  runbook_lock_duration: 2s
auth:
  tokens:
    - { name: olga, sha256: ${hashToken(OPERATOR)}, roles: [operator] }
    - { name: ann, sha256: ${hashToken(APPROVER)}, roles: [approver] }
    - { name: vera, sha256: ${hashToken(VIEWER)}, roles: [viewer] }
sites:
  primary: { role: primary }
  dr: { role: dr }
services:
  orders: { rto: 1h, rpo: 30s }
`,
    probes: {},
  });
  mkdirSync(join(cfg.dir, 'runbooks'));
  for (const rb of ['failover-postgres', 'failback-postgres']) cpSync(`runbooks/${rb}`, join(cfg.dir, 'runbooks', rb), { recursive: true });
  process.env.CONTINUITY_DB_PASSWORD = '';
  const sink = new Sink();
  const daemon = new Daemon({ configPath: cfg.configPath, port: 0, logStream: sink, firstRun: 'now' });
  await daemon.start();
  const api = async <T = unknown>(method: string, path: string, body?: unknown, token = VIEWER): Promise<T> => {
    const res = await fetch(daemon.url + path, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const json = (await res.json()) as T;
    if (res.status >= 300) throw new Error(`${method} ${path}: HTTP ${res.status} ${JSON.stringify(json)}`);
    return json;
  };
  return { daemon, sink, api };
}

describe('failback on the lab', () => {
  let lab: Lab;
  let d: Awaited<ReturnType<typeof startDaemon>>;

  beforeAll(async () => {
    // The lab empties the Redis db first; the daemon then keeps its runbook queue there.
    lab = await startLab({ redisDb: REDIS_DB });
    d = await startDaemon();
  }, 60_000);
  afterAll(async () => {
    await d?.daemon.stop();
    await lab?.stop();
  });

  type Sample = { from: number; to: number; n: number };
  type Terminal = 'succeeded' | 'failed' | 'aborted' | 'rolled_back';
  const TERMINAL = ['succeeded', 'failed', 'aborted', 'rolled_back'];
  /** Ids of every write acknowledged through HAProxy, whenever it was made. */
  const acked: number[] = [];
  const timings: string[] = [];
  const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

  const view = (id: string) => d.api<ExecutionView>('GET', `/api/v1/executions/${id}`);
  const timelineOf = (v: ExecutionView) => `${v.execution.status}: ${v.timeline.map((e) => e.message).join(' | ')}`;

  /** Starts a runbook as the operator and waits until it asks for its approval. */
  async function startAndWaitForApproval(runbook: string, inputs: Record<string, string | number | boolean>): Promise<ExecutionView> {
    const { execution } = await d.api<{ execution: { id: string } }>(
      'POST',
      `/api/v1/runbooks/${runbook}/executions`,
      { inputs, mode: 'live' },
      OPERATOR,
    );
    const deadline = Date.now() + 30_000;
    for (;;) {
      const v = await view(execution.id);
      if (v.execution.status === 'waiting_approval') return v;
      if (TERMINAL.includes(v.execution.status) || Date.now() > deadline) {
        throw new Error(`${runbook} did not reach its approval: ${timelineOf(v)}`);
      }
      await sleep(100);
    }
  }

  /** Approves as the approver (not the operator who started it) and waits for the end. */
  async function approveAndWait(waiting: ExecutionView, expected: Terminal): Promise<ExecutionView> {
    const id = waiting.execution.id;
    await d.api('POST', `/api/v1/executions/${id}/approvals`, { decision: 'approve', hash: waiting.execution.hash }, APPROVER);
    const done = await until(
      'the execution ended',
      async () => {
        const v = await view(id);
        return TERMINAL.includes(v.execution.status) ? v : undefined;
      },
      50_000,
    );
    if (done.execution.status !== expected) throw new Error(`expected ${expected}, got ${timelineOf(done)}`);
    return done;
  }

  /** While a runbook runs: HAProxy's writable primaries sampled, and a writer writing through it. */
  function watch() {
    let running = true;
    const samples: Sample[] = [];
    const errors: string[] = [];
    const sampler = (async () => {
      while (running) {
        const from = Date.now();
        const n = await lab.writablePrimariesBehindHaproxy();
        samples.push({ from, to: Date.now(), n });
        await sleep(50);
      }
    })();
    const writer = (async () => {
      while (running) {
        const w = await lab.write(1, { note: 'during', timeoutMs: 1000 });
        acked.push(...w.ids);
        errors.push(...w.errors);
        await sleep(w.errors.length ? 100 : 20);
      }
    })();
    return async () => {
      running = false;
      await Promise.all([sampler, writer]);
      return { samples, errors };
    };
  }

  const step = (v: ExecutionView, id: string, phase: 'main' | 'rollback' = 'main') =>
    v.steps.find((s) => s.step === id && s.phase === phase)!;

  /**
   * Never two writable primaries behind HAProxy; exactly one outside [from, to] (from fencing the
   * DR to giving the traffic to a primary again), where there is none.
   */
  function expectOnePrimary(samples: Sample[], from: number, to: number) {
    expect(samples.length).toBeGreaterThan(20);
    expect(samples.filter((s) => s.n > 1)).toEqual([]);
    const outside = samples.filter((s) => s.to < from || s.from > to);
    expect(outside.filter((s) => s.n !== 1)).toEqual([]);
    expect(outside.length).toBeGreaterThan(10);
  }

  const isInRecovery = async (node: 'primary' | 'replica') =>
    (await lab[node].query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r'))[0]!.r;
  const inTraffic = async (backend: 'pg' | 'web' = 'pg') =>
    (await lab.haproxy.servers(backend)).filter((s) => s.inTraffic).map((s) => s.name);

  const failbackInputs = () => labFailbackInputs(lab, 10);

  /** Before the approval: the old primary streams from the DR, and nothing has been switched. */
  async function expectRebuiltNotSwitched(waiting: ExecutionView) {
    expect(await isInRecovery('primary')).toBe(true);
    expect(await isInRecovery('replica')).toBe(false);
    expect(await inTraffic()).toEqual(['dr']);
    expect(waiting.timeline.find((e) => e.type === 'approval_needed')!.message).toMatch(
      new RegExp(`Fail back to 127\\.0\\.0\\.1:${lab.primary.port} \\(a replica of the DR, \\d+ B behind\\) in the window `),
    );
  }

  it('fails over with failover-postgres, writes on the DR, and the old primary comes back fenced', async () => {
    const t0 = Date.now();
    const before = await lab.write(20, { note: 'before failover' });
    expect(before.errors).toEqual([]);
    acked.push(...before.ids);

    await lab.killPrimary();
    const waiting = await startAndWaitForApproval('failover-postgres', {
      haproxy: `127.0.0.1:${lab.haproxyRuntime.port}`,
      primary_ssh_host: lab.sshd.host,
      primary_ssh_port: lab.sshd.port,
      ssh_user: lab.sshd.user,
      ssh_key_file: lab.sshd.privateKeyPath,
      known_hosts: lab.sshd.knownHostsPath,
      pg_ctl: lab.primary.argv.stop[4]!,
      primary_data_dir: lab.primary.dataDir,
      replica_host: '127.0.0.1',
      replica_port: lab.replica.port,
      web_url: lab.webTraffic.url,
      require_approval: true,
    });
    await approveAndWait(waiting, 'succeeded');
    timings.push(`failover ${secs(Date.now() - t0)}`);
    expect(await isInRecovery('replica')).toBe(false);

    const between = await lab.write(20, { note: 'between' });
    expect(between.errors).toEqual([]);
    acked.push(...between.ids);

    // The old site comes back: its PostgreSQL starts as a writable primary, out of traffic.
    await lab.restartPrimary();
    expect(await isInRecovery('primary')).toBe(false);
    expect(await inTraffic()).toEqual(['dr']);
    expect(await lab.writablePrimariesBehindHaproxy()).toBe(1);
  }, 60_000);

  it('refuses to promote and rolls back when the old primary has not replayed everything the DR wrote', async () => {
    const stop = watch();
    const t0 = Date.now();
    let done: ExecutionView;
    let watched: Awaited<ReturnType<typeof stop>>;
    try {
      const waiting = await startAndWaitForApproval('failback-postgres', failbackInputs());
      await expectRebuiltNotSwitched(waiting);
      // The old primary receives the DR's WAL but replays none of it any more.
      await lab.primary.query('SELECT pg_wal_replay_pause()');
      done = await approveAndWait(waiting, 'rolled_back');
    } finally {
      watched = await stop();
    }
    const { samples, errors } = watched;
    timings.push(`refused switchover rolled back in ${secs(Date.now() - t0)}`);
    expect(step(done, 'stop_dr').status).toBe('succeeded');
    expect(step(done, 'old_primary_replayed_all')).toMatchObject({ status: 'failed', attempt: 6 });
    expect(step(done, 'promote_old_primary')).toBeUndefined();
    expect(done.steps.filter((s) => s.phase === 'rollback').map((s) => `${s.step}:${s.status}`)).toEqual([
      'restart_dr:succeeded',
      'dr_is_primary:succeeded',
      'unfence_dr:succeeded',
    ]);
    // Back where it was: the DR serves as the primary, the old primary is still its replica.
    expect(await isInRecovery('replica')).toBe(false);
    expect(await isInRecovery('primary')).toBe(true);
    expect(await inTraffic('pg')).toEqual(['dr']);
    expect(await inTraffic('web')).toEqual(['dr']);
    expectOnePrimary(samples, step(done, 'fence_dr').startedAt!, step(done, 'unfence_dr', 'rollback').finishedAt!);
    expect(errors.length).toBeGreaterThan(0);
    await lab.primary.query('SELECT pg_wal_replay_resume()');
  }, 60_000);

  it('fails back: the old primary is the primary again behind HAProxy, the DR its streaming replica, no acknowledged write lost', async () => {
    const stop = watch();
    const t0 = Date.now();
    let done: ExecutionView;
    let watched: Awaited<ReturnType<typeof stop>>;
    try {
      const waiting = await startAndWaitForApproval('failback-postgres', failbackInputs());
      await expectRebuiltNotSwitched(waiting);
      done = await approveAndWait(waiting, 'succeeded');
    } finally {
      watched = await stop();
    }
    const { samples, errors } = watched;
    expect(done.steps.map((s) => `${s.step}:${s.status}`)).toEqual([
      'check_dr_primary:succeeded',
      'check_old_primary_fenced:succeeded',
      'old_primary_status:succeeded',
      'stop_old_primary:succeeded',
      'keep_old_data:succeeded',
      'basebackup_old_primary:succeeded',
      'restore_old_primary_config:succeeded',
      'old_primary_standby_signal:succeeded',
      'old_primary_conninfo:succeeded',
      'start_old_primary:succeeded',
      'old_primary_caught_up:succeeded',
      'approve:succeeded',
      'check_window:succeeded',
      'recheck_old_primary:succeeded',
      'fence_dr:succeeded',
      'confirm_dr_fenced:succeeded',
      'stop_dr:succeeded',
      'dr_controldata:succeeded',
      'old_primary_replayed_all:succeeded',
      'promote_old_primary:succeeded',
      'confirm_promoted:succeeded',
      'switch_back:succeeded',
      'dr_standby_signal:succeeded',
      'dr_conninfo:succeeded',
      'start_dr:succeeded',
      'dr_streaming:succeeded',
      'verify_write:succeeded',
    ]);
    // The old primary's data directory (with whatever it alone had) is kept aside.
    expect(existsSync(`${lab.primary.dataDir}.pre-failback-${done.execution.id}`)).toBe(true);

    // The old primary is the primary again and the one server in traffic, for SQL and the web.
    expect(await isInRecovery('primary')).toBe(false);
    expect((await lab.pgServersBehindHaproxy()).map((s) => [s.name, s.inTraffic, s.writable])).toEqual([
      ['primary', true, true],
      ['dr', false, false],
    ]);
    expect(await inTraffic('web')).toEqual(['primary']);
    // The DR is its streaming replica again, the synchronous one: the old primary kept its own settings.
    expect(await isInRecovery('replica')).toBe(true);
    expect(await lab.replica.query('SELECT status FROM pg_stat_wal_receiver')).toEqual([{ status: 'streaming' }]);
    expect(
      await lab.primary.query('SELECT state, sync_state FROM pg_stat_replication WHERE application_name = $1', [lab.replica.clusterName]),
    ).toEqual([{ state: 'streaming', sync_state: 'sync' }]);
    expectOnePrimary(samples, step(done, 'fence_dr').startedAt!, step(done, 'switch_back').finishedAt!);

    const after = await lab.write(20, { note: 'after failback' });
    expect(after.errors).toEqual([]);
    acked.push(...after.ids);

    // Every acknowledged write (before the failover, between, during both failbacks, after) is on both servers.
    await until('every acknowledged write on both servers', async () => {
      const [p, r] = await Promise.all([lab.orderIds('primary'), lab.orderIds('replica')]);
      return acked.every((id) => p.includes(id) && r.includes(id));
    });
    expect(acked.length).toBeGreaterThan(60);

    const at = (id: string, edge: 'startedAt' | 'finishedAt') => step(done, id)[edge]!;
    timings.push(
      `failback ${secs(Date.now() - t0)} (old primary rebuilt and caught up in ${secs(at('old_primary_caught_up', 'finishedAt') - at('check_dr_primary', 'startedAt'))}, ` +
        `approval to verified write ${secs(at('verify_write', 'finishedAt') - at('approve', 'finishedAt'))}, ` +
        `no writable primary for ${secs(at('switch_back', 'finishedAt') - at('fence_dr', 'startedAt'))}; ` +
        `${samples.length} samples, ${errors.length} writes refused)`,
    );
    process.stdout.write(`failback e2e: ${timings.join('; ')}; ${acked.length} acknowledged writes on both servers\n`);
  }, 60_000);
});
