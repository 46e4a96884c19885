import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { hashToken } from '../../src/http/auth.js';
import type { Incident } from '../../src/incidents/manager.js';
import type { ExecutionView } from '../../src/runbooks/executor.js';
import { daemonCluster, type DaemonCluster, type DaemonInstance } from '../helpers/daemons.js';
import { startRedisServer, type TestRedisServer } from '../helpers/redis-server.js';
import { until } from '../helpers/until.js';
import { labFailoverPolicy, labProbes } from '../lab/failover-policy.js';
import { processAlive, startLab, type Lab } from '../lab/lab.js';

/**
 * Chaos on the lab, with three daemon children sharing one private Redis (AOF, fsync always) and
 * the shipped failover-postgres runbook in automatic mode:
 *
 *  1. kill -9 of the leader in the middle of the failover: another instance leads within the lease
 *     and finishes the execution, the non-idempotent promote runs exactly once (its step records,
 *     and the replica's own log), one writable primary at the end.
 *  2. kill -9 of Redis in the middle of the failover, restarted from its AOF: the execution still
 *     finishes, nothing written before the crash is lost (execution, incident, audit), promote once.
 *
 *  3. kill -9 of the leader while promote itself runs: the new leader does not run it again by
 *     itself (it started, its outcome is unknown); the execution waits for an operator, whose retry
 *     promotes once.
 *
 * The middle of the failover is step stop_old_primary (after fence_traffic, before promote): the
 * lab's sshd is frozen (SIGSTOP) before the primary is killed, as an unreachable old primary host
 * would be, so the step's SSH handshake hangs there for as long as the test needs; it is thawed
 * right after the fault. In test 3 the replica's postmaster is frozen the same way, so promote's
 * connection waits (its request never reaches PostgreSQL) until the leader is killed.
 */
const OPERATOR = 'tok-chaos-operator-0123456789';
const VIEWER = 'tok-chaos-viewer-0123456789';
const LEASE_MS = 2000;
/** What a takeover may take beyond the lease on a busy machine (polling, election, worker start). */
const TAKEOVER_SLACK_MS = 2000;
/** How long Redis stays down in test 2: longer than the lease, so every instance's lease lapses. */
const REDIS_DOWN_MS = 3000;
const PROMOTE_LOG = 'received promote request';

type Step = ExecutionView['steps'][number];

interface Scenario {
  tag: string;
  redis: TestRedisServer;
  client: Redis;
  lab: Lab;
  cluster: DaemonCluster;
  leader: DaemonInstance;
  /** SIGSTOP of the lab's sshd (the step that logs in to the old primary then hangs); thaw() undoes it. */
  freezeSshd(): void;
  thawSshd(): void;
  /** SIGSTOP / SIGCONT of any process (thawed in afterAll at the latest). */
  freeze(pid: number): void;
  thaw(pid: number): void;
  /** Set by the test when it passed: otherwise (or with CHAOS_KEEP_LOGS set) the daemons' logs are kept for reading. */
  passed: boolean;
}

/** Cleanups of every scenario, newest first at the end (afterAll runs them in reverse). */
const cleanups: Array<() => Promise<void> | void> = [];

afterAll(async () => {
  for (const c of cleanups.reverse())
    await Promise.resolve(c()).catch((e: unknown) => process.stderr.write(`chaos-leader cleanup: ${String(e)}\n`));
}, 120_000);

function config(lab: Lab, redisUrl: string, instanceId: string, port: number): string {
  return `daemon:
  listen: 127.0.0.1:${port}
  redis_url: ${redisUrl}
  runbooks_dir: ../runbooks
  state_dir: ../var
  runbook_lock_duration: 2s
  shutdown_grace: 1s
  instance_id: ${instanceId}
  leader_lease: ${LEASE_MS / 1000}s
auth:
  tokens:
    - { name: olga, sha256: ${hashToken(OPERATOR)}, roles: [operator] }
    - { name: vera, sha256: ${hashToken(VIEWER)}, roles: [viewer] }
sites:
  primary: { role: primary }
  dr: { role: dr }
services:
  orders:
    rto: 1h
    rpo: 30s
${labFailoverPolicy(lab, 'automatic')}`;
}

/** The pid of the lab's sshd listener: its pid file, else the process started with its config. */
function sshdPid(lab: Lab): number {
  const file = join(lab.sshd.dir, 'sshd.pid');
  if (existsSync(file)) {
    const pid = Number(readFileSync(file, 'utf8').trim());
    if (pid > 0 && processAlive(pid)) return pid;
  }
  const conf = join(lab.sshd.dir, 'sshd_config');
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (argv.includes(conf) && argv.includes('-D')) return Number(entry);
    } catch {
      // gone meanwhile
    }
  }
  throw new Error(`no sshd process of ${lab.sshd.dir}`);
}

/** A private Redis (AOF), the lab, three daemons; everything cleaned up in afterAll. */
async function scenario(tag: string): Promise<Scenario> {
  const t0 = Date.now();
  const [redisRes, labRes] = await Promise.allSettled([startRedisServer({ appendonly: true }), startLab()]);
  const labUp = Date.now();
  if (redisRes.status === 'fulfilled') cleanups.push(() => redisRes.value.stop());
  if (labRes.status === 'fulfilled') cleanups.push(() => labRes.value.stop());
  if (redisRes.status === 'rejected') throw redisRes.reason;
  if (labRes.status === 'rejected') throw labRes.reason;
  const redis = redisRes.value;
  const lab = labRes.value;
  const client = new Redis(redis.url, { maxRetriesPerRequest: 3, retryStrategy: () => 200 });
  client.on('error', () => {});
  cleanups.push(() => client.disconnect());

  const pid = sshdPid(lab);
  // SIGSTOPped processes, thawed by the test or, whatever happens, before lab.stop() (pushed
  // earlier, so run later): a stopped process would not act on the lab's SIGTERM or pg_ctl stop.
  const frozen = new Set<number>();
  const thaw = (p: number) => {
    if (!frozen.delete(p)) return;
    try {
      process.kill(p, 'SIGCONT');
    } catch {
      // gone
    }
  };
  cleanups.push(() => [...frozen].forEach(thaw));

  const cluster = await daemonCluster({
    names: ['chaos-a', 'chaos-b', 'chaos-c'],
    token: VIEWER,
    config: (ctx) => config(lab, redis.url, ctx.instanceId, ctx.port),
    probes: { 'databases.yaml': labProbes(lab) },
    prepare: (ctx) => {
      mkdirSync(join(ctx.dir, 'runbooks'));
      cpSync('runbooks/failover-postgres', join(ctx.dir, 'runbooks/failover-postgres'), { recursive: true });
    },
    env: { CONTINUITY_DB_PASSWORD: '' },
  });
  const state = { passed: false };
  cleanups.push(async () => {
    if (!state.passed || process.env.CHAOS_KEEP_LOGS) saveLogs(tag, cluster);
    await cluster.close();
  });
  await cluster.startAll(90_000);
  const daemonsUp = Date.now();
  const leader = await cluster.leader(30_000);
  await until(
    'every instance sees the primary and the replica UP',
    async () => {
      for (const inst of cluster.instances) {
        const st = await inst.api<{ probes: Array<{ id: string; state: string }> }>('GET', '/api/v1/status');
        const up = new Set(st.probes.filter((p) => p.state === 'UP').map((p) => p.id));
        if (!up.has('orders-pg-primary') || !up.has('orders-pg-replica')) return undefined;
      }
      return true;
    },
    60_000,
  );
  process.stderr.write(
    `chaos-leader [${tag}]: ready after ${Date.now() - t0} ms (lab and Redis ${labUp - t0} ms, daemons ${daemonsUp - labUp} ms, probes UP everywhere ${Date.now() - daemonsUp} ms); ${leader.name} leads\n`,
  );
  return {
    get passed() {
      return state.passed;
    },
    set passed(v: boolean) {
      state.passed = v;
    },
    tag,
    redis,
    client,
    lab,
    cluster,
    leader,
    freeze(p: number) {
      process.kill(p, 'SIGSTOP');
      frozen.add(p);
    },
    thaw,
    freezeSshd: () => {
      process.kill(pid, 'SIGSTOP');
      frozen.add(pid);
    },
    thawSshd: () => thaw(pid),
  };
}

function saveLogs(tag: string, cluster: DaemonCluster): void {
  const dir = join(tmpdir(), 'chaos-leader-logs');
  mkdirSync(dir, { recursive: true });
  for (const inst of cluster.instances) writeFileSync(join(dir, `${tag}-${inst.name}.log`), inst.output());
  process.stderr.write(`chaos-leader [${tag}]: daemon logs kept in ${dir}\n`);
}

const view = (inst: DaemonInstance, id: string) => inst.api<ExecutionView>('GET', `/api/v1/executions/${id}`);
const stepOf = (v: ExecutionView, step: string): Step | undefined => v.steps.find((s) => s.step === step);
const startsOf = (v: ExecutionView, step: string) => v.timeline.filter((e) => e.type === 'step_started' && e.step === step).length;
const TERMINAL = ['succeeded', 'failed', 'aborted', 'rolled_back', 'awaiting_decision'];

/** The primary is killed; resolves with the incident and its execution once stop_old_primary runs (sshd frozen). */
async function failoverUnderway(
  s: Scenario,
  watcher: DaemonInstance,
): Promise<{ incident: Incident; id: string; killedPrimaryAt: number }> {
  const before = await s.lab.write(10, { note: 'before' });
  expect(before.errors).toEqual([]);
  s.freezeSshd();
  const killedPrimaryAt = Date.now();
  await s.lab.killPrimary();
  const incident = await until(
    'a failover decision',
    async () => (await watcher.api<Incident[]>('GET', '/api/v1/incidents')).find((i) => i.executionId),
    60_000,
    { detail: () => s.leader.tail(20) },
  );
  expect(incident.decision!.action).toBe('failover');
  const id = incident.executionId!;
  const v = await until(
    'stop_old_primary running',
    async () => {
      const v = await view(watcher, id);
      if (TERMINAL.includes(v.execution.status)) throw new Error(`execution ${v.execution.status}: ${v.execution.reason}`);
      return stepOf(v, 'stop_old_primary')?.status === 'started' ? v : undefined;
    },
    60_000,
    { detail: () => s.leader.tail(20) },
  );
  // The middle of the failover: fenced, not yet promoted.
  expect(stepOf(v, 'fence_traffic')?.status).toBe('succeeded');
  expect(stepOf(v, 'promote')).toBeUndefined();
  return { incident, id, killedPrimaryAt };
}

/** The end state every test expects: succeeded, promote once (records and the replica's log), one writable primary. */
async function expectFailedOverOnce(s: Scenario, inst: DaemonInstance, id: string, incidentId: string, promoteAttempts = 1) {
  const done = await until(
    'the execution finished',
    async () => {
      const v = await view(inst, id);
      return TERMINAL.includes(v.execution.status) ? v : undefined;
    },
    90_000,
    {
      detail: () =>
        s.cluster
          .running()
          .map((i) => `--- ${i.name}:\n${i.tail(15)}`)
          .join('\n'),
    },
  );
  expect(done.execution.status, JSON.stringify(done.timeline, null, 1)).toBe('succeeded');
  const finishedAt = done.execution.finishedAt ?? Date.now();
  expect(done.steps.map((st) => `${st.step}:${st.status}`)).toEqual([
    'check_replica:succeeded',
    'approve:skipped',
    'check_lag:skipped',
    'fence_traffic:succeeded',
    // The old primary is dead: pg_ctl stop fails, and the runbook goes on (it is out of traffic).
    expect.stringMatching(/^stop_old_primary:(failed|succeeded)$/),
    'confirm_fenced:succeeded',
    'promote:succeeded',
    'switch_traffic:succeeded',
    'verify_write:succeeded',
  ]);
  // The non-idempotent step: one result (one start per attempt), and PostgreSQL received one promote request.
  const promote = stepOf(done, 'promote')!;
  expect(promote.attempt).toBe(promoteAttempts);
  expect(startsOf(done, 'promote')).toBe(promoteAttempts);
  expect(done.timeline.filter((e) => e.type === 'step_succeeded' && e.step === 'promote')).toHaveLength(1);
  const promoteRequests = promoteRequestsOf(s.lab);
  expect(promoteRequests).toBe(1);
  // Exactly one writable primary: the promoted replica; the old one is dead.
  const writable = async (q: Lab['primary']) =>
    q.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r').then(
      (rows) => rows[0]?.r === false,
      () => false,
    );
  expect([await writable(s.lab.primary), await writable(s.lab.replica)]).toEqual([false, true]);
  // HAProxy: the old primary in maintenance, the DR site in traffic, for both backends.
  for (const backend of ['pg', 'web'] as const) {
    const servers = await s.lab.haproxy.servers(backend);
    expect(
      servers.filter((x) => x.inTraffic).map((x) => x.name),
      backend,
    ).toEqual(['dr']);
  }
  expect(await s.lab.writablePrimariesBehindHaproxy()).toBe(1);
  expect((await s.lab.write(5, { note: 'after' })).errors).toEqual([]);
  // The incident closes once the public endpoint answers from the DR site.
  const closed = await until(
    'the incident closed',
    async () => {
      const i = await inst.api<Incident>('GET', `/api/v1/incidents/${incidentId}`);
      return i.status === 'closed' || i.status === 'failover_failed' ? i : undefined;
    },
    60_000,
  );
  expect(closed.closeReason).toBe('verified: orders-web-public UP at the dr site');
  // No instance hit an unexpected error on the way (each is logged before the execution is failed).
  const unexpected = s.cluster.instances.flatMap((i) => i.logs().filter((l) => l.msg === 'execution failed unexpectedly'));
  expect(unexpected).toEqual([]);
  return { done, closed, finishedAt, promoteRequests };
}

/** How many promote requests the replica's PostgreSQL has logged. */
function promoteRequestsOf(lab: Lab): number {
  return readFileSync(lab.replica.logFile, 'utf8').split(PROMOTE_LOG).length - 1;
}

/** The audit stream, as [id, fields] with the fields as an object. */
async function auditOf(client: Redis): Promise<Array<{ id: string; f: Record<string, string> }>> {
  const raw = await client.xrange('{continuity}:audit', '-', '+');
  return raw.map(([id, list]) => {
    const f: Record<string, string> = {};
    for (let i = 0; i + 1 < list.length; i += 2) f[list[i]!] = list[i + 1]!;
    return { id, f };
  });
}

describe('chaos: the leader or Redis dies in the middle of a failover', () => {
  it('kill -9 of the leader during stop_old_primary: another leads within the lease and finishes; promote runs once', async () => {
    const s = await scenario('leader-kill');
    const old = s.leader;
    const followers = s.cluster.instances.filter((i) => i !== old);
    const oldEpoch = (await old.metric('continuity_leader_epoch'))!;
    const { incident, id, killedPrimaryAt } = await failoverUnderway(s, followers[0]!);

    const killedAt = Date.now();
    expect(await old.kill('SIGKILL')).toBe('SIGKILL');
    s.thawSshd();
    const next = await s.cluster.leader(LEASE_MS + 10_000, followers);
    const takeover = Date.now() - killedAt;
    const newEpoch = (await next.metric('continuity_leader_epoch'))!;
    expect(newEpoch).toBeGreaterThan(oldEpoch);

    const { done, finishedAt, promoteRequests } = await expectFailedOverOnce(s, next, id, incident.id);
    const stopStarts = startsOf(done, 'stop_old_primary');
    process.stderr.write(
      `chaos-leader: kill -9 of ${old.name} during stop_old_primary: ${next.name} leads after ${takeover} ms (lease ${LEASE_MS} ms); ` +
        `execution done after ${finishedAt - killedAt} ms (${finishedAt - killedPrimaryAt} ms after the primary was killed); ` +
        `promote started ${startsOf(done, 'promote')}x, "${PROMOTE_LOG}" ${promoteRequests}x in the replica's log; stop_old_primary started ${stopStarts}x\n`,
    );
    expect(takeover).toBeLessThanOrEqual(LEASE_MS + TAKEOVER_SLACK_MS);
    // The idempotent step that was cut short ran again on the new leader: once per leader.
    expect(stopStarts).toBe(2);

    // Who wrote what: fence_traffic under the old epoch, promote under the new one, nothing of the old epoch after the new one's first write.
    const audit = (await auditOf(s.client)).filter((e) => e.f.target?.startsWith(id));
    const started = (step: string) => audit.filter((e) => e.f.target === `${id}/${step}` && e.f.action === 'step_started');
    expect(started('fence_traffic').map((e) => Number(e.f.epoch))).toEqual([oldEpoch]);
    expect(started('promote').map((e) => Number(e.f.epoch))).toEqual([newEpoch]);
    const firstNew = audit.findIndex((e) => Number(e.f.epoch) === newEpoch);
    expect(firstNew).toBeGreaterThan(0);
    expect(audit.slice(firstNew).filter((e) => e.f.epoch !== undefined && Number(e.f.epoch) < newEpoch)).toEqual([]);
    // The survivors are still up; exactly one of them leads.
    expect(s.cluster.running().map((i) => i.name)).toEqual(followers.map((i) => i.name));
    expect(await s.cluster.leader(5000)).toBe(next);
    s.passed = true;
  }, 240_000);

  it('kill -9 of Redis during stop_old_primary, restarted from its AOF: the failover finishes, nothing lost, promote once', async () => {
    const s = await scenario('redis-restart');
    const oldEpoch = (await s.leader.metric('continuity_leader_epoch'))!;
    const watcher = s.cluster.instances.find((i) => i !== s.leader)!;
    const { incident, id } = await failoverUnderway(s, watcher);
    // Something audited by the API, on the leader (it alone changes incidents).
    const ack = await s.leader.api<{ acknowledged: { by: string } }>(
      'POST',
      `/api/v1/incidents/${incident.id}/acknowledge`,
      undefined,
      OPERATOR,
    );
    expect(ack.acknowledged.by).toBe('olga');

    // What Redis had acknowledged before the crash.
    const before = {
      execution: await view(watcher, id),
      incident: await watcher.api<Incident>('GET', `/api/v1/incidents/${incident.id}`),
      audit: await auditOf(s.client),
    };
    expect(before.audit.some((e) => e.f.action === 'acknowledge' && e.f.target === incident.id)).toBe(true);
    expect(before.incident.notifications.acknowledged?.by).toBe('olga');

    const killedAt = Date.now();
    await s.redis.kill('SIGKILL');
    // The step goes on (and ends) while Redis is away: its result waits for Redis.
    s.thawSshd();
    await new Promise((r) => setTimeout(r, REDIS_DOWN_MS));
    await s.redis.restart();
    const restartedAt = Date.now();
    const leader = await s.cluster.leader(LEASE_MS + 15_000);
    const leadAt = Date.now();
    const epoch = (await leader.metric('continuity_leader_epoch'))!;

    const { done, closed, finishedAt, promoteRequests } = await expectFailedOverOnce(s, leader, id, incident.id);
    const stopped = stepOf(done, 'stop_old_primary')!;
    process.stderr.write(
      `chaos-leader: kill -9 of Redis during stop_old_primary (down ${restartedAt - killedAt} ms): ${leader.name} leads ${leadAt - restartedAt} ms after the restart ` +
        `(epoch ${oldEpoch} -> ${epoch}, ${epoch === oldEpoch ? 'the same leadership resumed' : 'a new leadership'}); execution done after ${finishedAt - restartedAt} ms; ` +
        `promote started ${startsOf(done, 'promote')}x, "${PROMOTE_LOG}" ${promoteRequests}x; stop_old_primary started ${startsOf(done, 'stop_old_primary')}x, ` +
        `its last attempt ended ${stopped.finishedAt! - killedAt} ms after the kill (${stopped.finishedAt! < restartedAt ? 'while Redis was down' : 'after the restart'})\n`,
    );

    // Nothing lost: every audit entry, the execution's record and timeline, the incident's timeline and acknowledgement.
    const after = await auditOf(s.client);
    const ids = new Set(after.map((e) => e.id));
    expect(before.audit.filter((e) => !ids.has(e.id))).toEqual([]);
    expect(done.execution.createdAt).toBe(before.execution.execution.createdAt);
    const key = (e: { at: string | number; type: string; message: string }) => `${e.at} ${e.type} ${e.message}`;
    expect(done.timeline.slice(0, before.execution.timeline.length).map(key)).toEqual(before.execution.timeline.map(key));
    const incidentEvents = new Set(closed.timeline.map(key));
    expect(before.incident.timeline.map(key).filter((k) => !incidentEvents.has(k))).toEqual([]);
    expect(closed.notifications.acknowledged?.by).toBe('olga');
    expect(closed.executionId).toBe(id);
    // Every instance survived the outage.
    expect(s.cluster.running()).toHaveLength(3);
    s.passed = true;
  }, 240_000);

  it('kill -9 of the leader while promote runs: not run again by itself; an operator retries it; promoted once', async () => {
    const s = await scenario('promote-kill');
    const old = s.leader;
    const followers = s.cluster.instances.filter((i) => i !== old);
    const { incident, id } = await failoverUnderway(s, followers[0]!);
    // Hold the next step that talks to the replica, promote, at its connection; then let the runbook on.
    const replicaPid = s.lab.replica.postmasterPid()!;
    s.freeze(replicaPid);
    s.thawSshd();
    await until(
      'promote running',
      async () => {
        const v = await view(followers[0]!, id);
        if (TERMINAL.includes(v.execution.status)) throw new Error(`execution ${v.execution.status}: ${v.execution.reason}`);
        return stepOf(v, 'promote')?.status === 'started' ? v : undefined;
      },
      60_000,
      { detail: () => old.tail(20) },
    );
    const killedAt = Date.now();
    expect(await old.kill('SIGKILL')).toBe('SIGKILL');
    s.thaw(replicaPid);
    const next = await s.cluster.leader(LEASE_MS + 10_000, followers);
    const takeover = Date.now() - killedAt;
    const waiting = await until(
      'the execution awaiting a decision',
      async () => {
        const v = await view(next, id);
        if (['succeeded', 'failed', 'aborted', 'rolled_back'].includes(v.execution.status))
          throw new Error(`execution ${v.execution.status}: ${v.execution.reason}`);
        return v.execution.status === 'awaiting_decision' ? v : undefined;
      },
      60_000,
    );
    const decidedAt = Date.now();
    expect(stepOf(waiting, 'promote')?.status).toBe('started');
    expect(waiting.timeline.filter((e) => e.type === 'awaiting_decision').map((e) => e.step)).toEqual(['promote']);
    // Nothing promoted meanwhile: the request never reached PostgreSQL, and nobody ran it again.
    expect(promoteRequestsOf(s.lab)).toBe(0);
    expect(await s.lab.replica.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')).toEqual([{ r: true }]);
    expect(startsOf(waiting, 'promote')).toBe(1);

    // The operator checks the replica (still in recovery) and retries the step, through any instance.
    const answer = await followers
      .find((i) => i !== next)!
      .request<{ accepted: boolean }>(
        'POST',
        `/api/v1/executions/${id}/steps/promote/retry`,
        { comment: 'the replica is still in recovery' },
        OPERATOR,
      );
    expect(answer).toEqual({ status: 202, body: { accepted: true } });
    await until(
      'the decision taken up',
      async () => ((await view(next, id)).execution.status !== 'awaiting_decision' ? true : undefined),
      60_000,
    );
    const { finishedAt, promoteRequests } = await expectFailedOverOnce(s, next, id, incident.id, 2);
    process.stderr.write(
      `chaos-leader: kill -9 of ${old.name} during promote: ${next.name} leads after ${takeover} ms; awaiting a decision ${decidedAt - killedAt} ms after the kill; ` +
        `after the retry, execution done after ${finishedAt - decidedAt} ms; promote started 2x (1 before the kill, 1 on retry), "${PROMOTE_LOG}" ${promoteRequests}x\n`,
    );
    expect(takeover).toBeLessThanOrEqual(LEASE_MS + TAKEOVER_SLACK_MS);
    s.passed = true;
  }, 240_000);
});
