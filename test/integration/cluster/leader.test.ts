import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EPOCH_KEY, LEADER_KEY, LeaderLease } from '../../../src/cluster/lease.js';
import { hashToken } from '../../../src/http/auth.js';
import { writeConfig } from '../../helpers/config.js';
import { closedPort } from '../../helpers/net.js';
import { startRedisServer } from '../../helpers/redis-server.js';
import { appendStep } from '../../helpers/daemons.js';
import { expectNoWriteOfTheOldEpoch } from '../../helpers/audit.js';
import { until } from '../../helpers/until.js';

/**
 * Several daemons against one Redis (a private redis-server, never the machine's): one leader at a
 * time, through a lease with a fencing token. kill -9 of the leader mid-runbook: another leads
 * within the lease and finishes the execution, each non-idempotent step run once. SIGSTOP of the
 * leader mid-step until another leads, then SIGCONT: its late write is refused (fenced). And the
 * lease itself: acquire, renew, lose, a token that grows at each acquisition.
 */
const OPERATOR = 'tok-leader-operator-0123456789';
const LEASE_MS = 2000;

/** Five steps: s2 and s4 append a line and are not idempotent; s3 sleeps (the middle of the runbook). */
function runbook(log: string): string {
  const shell = (id: string, idempotent: boolean) => appendStep(id, idempotent, log);
  return `name: five
version: 1
description: Five steps, two of them not idempotent, for leader tests.
timeout: 10m
steps:
${shell('s1', true)}${shell('s2', false)}  - id: s3
    kind: sleep
    timeout: 20s
    idempotent: true
    sleep: { duration: 3s }
${shell('s4', false)}${shell('s5', true)}`;
}

interface Instance {
  name: string;
  port: number;
  child: ChildProcess;
  exited: Promise<NodeJS.Signals | number | null>;
  output(): string;
}

describe('several instances against one Redis', () => {
  let redis: Awaited<ReturnType<typeof startRedisServer>>;
  let client: Redis;
  const children = new Set<ChildProcess>();

  beforeAll(async () => {
    redis = await startRedisServer();
    client = new Redis(redis.url);
  });
  afterAll(async () => {
    for (const c of children) {
      c.kill('SIGCONT');
      c.kill('SIGKILL');
    }
    client?.disconnect();
    await redis?.stop();
  });

  /** A fresh setup: its own Redis database on the private server, config, runbook and line file. */
  const setup = async (db: number) => {
    await client.select(db);
    await client.flushdb();
    const url = `${redis.url}/${db}`;
    const ports = [await closedPort(), await closedPort()];
    const cfgs = ports.map((port, i) => {
      const cfg = writeConfig({
        config: `daemon:\n  listen: 127.0.0.1:${port}\n  redis_url: ${url}\n  runbooks_dir: ../runbooks\n  state_dir: ../var\n  runbook_lock_duration: 1s\n  shutdown_grace: 1s\n  instance_id: inst-${'ab'[i]}\n  leader_lease: ${LEASE_MS / 1000}s\nauth:\n  tokens:\n    - { name: olga, sha256: ${hashToken(OPERATOR)}, roles: [operator] }\nsites:\n  p: { role: primary }\n  d: { role: dr }\nservices: {}\n`,
        probes: {},
      });
      mkdirSync(join(cfg.dir, 'runbooks/five'), { recursive: true });
      return cfg;
    });
    const log = join(cfgs[0]!.dir, 'lines.txt');
    for (const cfg of cfgs) writeFileSync(join(cfg.dir, 'runbooks/five/v1.yaml'), runbook(log));
    const start = (i: number): Instance => {
      const child = spawn('node', ['bin/continuity.js', 'daemon', '-c', cfgs[i]!.configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
      children.add(child);
      let out = '';
      child.stdout!.on('data', (d) => (out += d));
      child.stderr!.on('data', (d) => (out += d));
      const exited = new Promise<NodeJS.Signals | number | null>((r) => child.on('exit', (code, signal) => r(signal ?? code)));
      return { name: `inst-${'ab'[i]}`, port: ports[i]!, child, exited, output: () => out };
    };
    const lines = () => (existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n') : []);
    return { start, lines, url };
  };

  const api = async (inst: Instance, method: string, path: string, body?: unknown) => {
    const res = await fetch(`http://127.0.0.1:${inst.port}${path}`, {
      method,
      headers: { authorization: `Bearer ${OPERATOR}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- an API answer, read loosely by the test
    return (await res.json()) as Record<string, any>;
  };
  const metric = async (inst: Instance, name: string): Promise<number | undefined> => {
    const text = await (await fetch(`http://127.0.0.1:${inst.port}/metrics`)).text();
    const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
    return m ? Number(m[1]) : undefined;
  };
  const up = (inst: Instance) =>
    until(`${inst.name} up`, async () => ((await fetch(`http://127.0.0.1:${inst.port}/healthz`)).ok ? true : undefined));
  /** Both up; returns [leader, follower] as their metrics say, exactly one leading. */
  const leaderOf = async (a: Instance, b: Instance): Promise<[Instance, Instance]> => {
    await up(a);
    await up(b);
    return until('exactly one leader', async () => {
      const [la, lb] = [await metric(a, 'continuity_leader'), await metric(b, 'continuity_leader')];
      if (la === 1 && lb === 0) return [a, b] as [Instance, Instance];
      if (la === 0 && lb === 1) return [b, a] as [Instance, Instance];
      return undefined;
    });
  };
  const stepRunning = (inst: Instance, id: string, step: string) =>
    until(`${step} running`, async () => {
      const v = await api(inst, 'GET', `/api/v1/executions/${id}`);
      return v.steps.some((s: { step: string; status: string }) => s.step === step && s.status === 'started') ? true : undefined;
    });
  const finished = (inst: Instance, id: string) =>
    until(
      'execution finished',
      async () => {
        const v = await api(inst, 'GET', `/api/v1/executions/${id}`);
        return ['succeeded', 'failed', 'aborted', 'awaiting_decision'].includes(v.execution.status) ? v : undefined;
      },
      60_000,
    );
  const stop = async (inst: Instance) => {
    inst.child.kill('SIGCONT');
    inst.child.kill('SIGTERM');
    await inst.exited;
  };

  it('kill -9 of the leader mid-runbook: the other leads within the lease and finishes the execution', async () => {
    const { start, lines } = await setup(1);
    const a = start(0);
    await up(a); // a starts first and leads
    const b = start(1);
    const [leader, follower] = await leaderOf(a, b);
    expect(leader).toBe(a);
    // Each instance's status says which one it is and who leads.
    const statusOf = async (inst: Instance) => (await (await fetch(`http://127.0.0.1:${inst.port}/api/v1/status`)).json()).cluster;
    expect(await statusOf(a)).toMatchObject({ instance: 'inst-a', leading: true, leader: 'inst-a' });
    expect(
      await until('the follower sees the leader', async () => {
        const c = await statusOf(b);
        return c.leader === 'inst-a' ? c : undefined;
      }),
    ).toMatchObject({ instance: 'inst-b', leading: false, leader: 'inst-a' });
    try {
      // Any instance takes the request (it only enqueues); the leader runs it.
      const started = await api(follower, 'POST', '/api/v1/runbooks/five/executions', { idempotency_key: 'leader-kill' });
      const id = started.execution.id as string;
      await stepRunning(follower, id, 's3');
      const killedAt = Date.now();
      leader.child.kill('SIGKILL');
      expect(await leader.exited).toBe('SIGKILL');
      await until('the other leads', async () => ((await metric(follower, 'continuity_leader')) === 1 ? true : undefined), LEASE_MS + 2000);
      const takeover = Date.now() - killedAt;
      process.stderr.write(`leader takeover after kill -9: ${takeover} ms (lease ${LEASE_MS} ms)\n`);
      expect(takeover).toBeLessThanOrEqual(LEASE_MS + 500);
      const done = await finished(follower, id);
      expect(done.execution.status, JSON.stringify(done.timeline)).toBe('succeeded');
      process.stderr.write(`execution finished ${Date.now() - killedAt} ms after the kill\n`);
      const got = lines();
      expect(got.filter((l) => l === 's2')).toEqual(['s2']);
      expect(got.filter((l) => l === 's4')).toEqual(['s4']);
      expect(got).toContain('s1');
      expect(got).toContain('s5');
      expect(done.steps.map((s: { step: string; status: string }) => `${s.step}:${s.status}`)).toEqual(
        ['s1', 's2', 's3', 's4', 's5'].map((s) => `${s}:succeeded`),
      );
    } finally {
      await stop(follower);
    }
  }, 90_000);

  it('SIGSTOP of the leader mid-step until another leads, then SIGCONT: its late write is refused', async () => {
    const { start, lines } = await setup(2);
    const a = start(0);
    await up(a);
    const b = start(1);
    const [leader, follower] = await leaderOf(a, b);
    try {
      const oldEpoch = (await metric(leader, 'continuity_leader_epoch'))!;
      const started = await api(follower, 'POST', '/api/v1/runbooks/five/executions', { idempotency_key: 'leader-stop' });
      const id = started.execution.id as string;
      await stepRunning(follower, id, 's3');
      const stoppedAt = Date.now();
      leader.child.kill('SIGSTOP');
      await until('the other leads', async () => ((await metric(follower, 'continuity_leader')) === 1 ? true : undefined), 3 * LEASE_MS);
      const takeover = Date.now() - stoppedAt;
      process.stderr.write(`leader takeover after SIGSTOP (lease expiry): ${takeover} ms (lease ${LEASE_MS} ms)\n`);
      // The lease runs out at most LEASE_MS after the stop (its last renewal was before it); polling adds a little.
      expect(takeover).toBeLessThanOrEqual(LEASE_MS + 500);
      const newEpoch = (await metric(follower, 'continuity_leader_epoch'))!;
      expect(newEpoch).toBeGreaterThan(oldEpoch);
      // The old leader's s3 (3 s) has long finished its sleep: on waking, it tries to record it.
      leader.child.kill('SIGCONT');
      await until(
        'the old leader fenced',
        async () => (/fenced: a newer leader holds the lease/.test(leader.output()) ? true : undefined),
        20_000,
      );
      await until('the old leader deposed', async () => ((await metric(leader, 'continuity_leader')) === 0 ? true : undefined), 10_000);
      const done = await finished(follower, id);
      expect(done.execution.status, JSON.stringify(done.timeline)).toBe('succeeded');
      // No step recorded twice: one result per step, and each non-idempotent step ran once.
      const results = done.timeline.filter((e: { type: string }) => e.type === 'step_succeeded').map((e: { step: string }) => e.step);
      expect(results).toEqual(['s1', 's2', 's3', 's4', 's5']);
      expect(lines().filter((l) => l === 's2')).toEqual(['s2']);
      expect(lines().filter((l) => l === 's4')).toEqual(['s4']);
      // The audit stream: no write of the old epoch after the first of the new one.
      await expectNoWriteOfTheOldEpoch(client, oldEpoch, newEpoch);
    } finally {
      await stop(follower);
      await stop(leader);
    }
  }, 90_000);

  it('LeaderLease: acquire, renew, lose on deletion, a token that grows at each acquisition', async () => {
    await client.select(3);
    await client.flushdb();
    const log = pino({ level: 'silent' });
    const conn = (name: string) => {
      const r = new Redis(`${redis.url}/3`, { connectionName: name });
      return r;
    };
    const [ra, rb] = [conn('a'), conn('b')];
    const a = new LeaderLease({ redis: ra, instanceId: 'a', leaseMs: 600, log });
    const b = new LeaderLease({ redis: rb, instanceId: 'b', leaseMs: 600, log });
    const events: string[] = [];
    for (const [n, l] of [
      ['a', a],
      ['b', b],
    ] as const) {
      l.on('elected', (t) => events.push(`${n} elected ${t}`));
      l.on('deposed', () => events.push(`${n} deposed`));
    }
    try {
      await a.start();
      expect(a.leading).toBe(true);
      const t1 = a.token!;
      expect(await client.get(EPOCH_KEY)).toBe(String(t1));
      expect(await client.get(LEADER_KEY)).toMatch(new RegExp(`^a ${t1} `));
      await b.start();
      expect(b.leading).toBe(false);
      // Renewed: still leading well past the lease time.
      await new Promise((r) => setTimeout(r, 1500));
      expect(a.leading).toBe(true);
      expect(b.leading).toBe(false);
      expect(Number(await client.pttl(LEADER_KEY))).toBeGreaterThan(0);
      // Lost on deletion: a is deposed at its next renewal; one of them acquires with a greater token.
      await client.del(LEADER_KEY);
      await until('a deposed', async () => (events.includes('a deposed') ? true : undefined), 2000);
      const next = await until('a new leader', async () => (a.leading || b.leading ? (a.token ?? b.token)! : undefined), 2000);
      expect(next).toBeGreaterThan(t1);
      // Stop releases: the other one acquires, with a greater token again.
      const [leader, other] = a.leading ? [a, b] : [b, a];
      await leader.stop();
      const third = await until('the other leads', async () => other.token, 2000);
      expect(third).toBeGreaterThan(next);
      expect(Number(await client.get(EPOCH_KEY))).toBe(third);
      await other.stop();
      // A lease left by an earlier process with this very pid on this host (a restarted container's
      // pid 1) is released at once; one held by a live process of this host is left to expire.
      await client.set(LEADER_KEY, `gone 99 ${hostname()} ${process.pid} an-older-process`, 'PX', 60_000);
      await a.start();
      expect(a.token).toBeGreaterThan(third);
      await a.stop();
      await client.set(LEADER_KEY, `alive 99 ${hostname()} ${process.ppid} some-process`, 'PX', 60_000);
      await b.start();
      expect(b.leading).toBe(false);
    } finally {
      await a.stop();
      await b.stop();
      ra.disconnect();
      rb.disconnect();
    }
  }, 30_000);
});
