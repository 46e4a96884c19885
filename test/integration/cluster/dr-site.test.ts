import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashToken } from '../../../src/http/auth.js';
import { writeConfig } from '../../helpers/config.js';
import { closedPort } from '../../helpers/net.js';
import { startRedisServer, type TestRedisServer } from '../../helpers/redis-server.js';
import { appendStep } from '../../helpers/daemons.js';
import { until as waitUntil } from '../../helpers/until.js';

/**
 * The supported DR topology, end to end: the Redis master in the primary site (AOF) with a replica
 * in the DR site, three Sentinels (one per site and a witness; quorum 2), and one Continuity
 * instance per site, both reaching Redis through the sentinels (daemon.redis_sentinel). The
 * primary-site instance leads and is in the middle of a runbook execution when the whole primary
 * site is lost at once (SIGKILL of its daemon, its Redis and its sentinel). Sentinel must promote
 * the DR replica, the DR instance must lead within a bounded time, finish the execution (each
 * non-idempotent step exactly once, nothing acknowledged and replicated before the loss lost), and
 * serve the API (an approval, a new execution). Everything on 127.0.0.1, private redis-servers only.
 *
 * Replication is asynchronous: a write acknowledged by the master in the last moment before the
 * loss may never reach the replica. The test therefore waits for the replica to have caught up with
 * what the API had acknowledged (replication offsets) before it pulls the plug, and checks that this
 * is kept; it does not claim more (see the README's "Redis in the DR site").
 */
const OPERATOR = 'tok-drsite-operator-0123456789';
const APPROVER = 'tok-drsite-approver-0123456789';
const MASTER = 'continuity';
const LEASE_MS = 2500;
/** Sentinel's down-after: 1 s promoted the replica of a healthy master on a busy machine. */
const DOWN_AFTER_MS = 3000;
/** How long after the loss the DR instance must lead: Sentinel's detection and failover, then the lease. */
const LEAD_BOUND_MS = 30_000;

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- API answers, read loosely by the test
type Json = Record<string, any>;

/** s2 and s4, s5 append a line and are not idempotent; s3 sleeps (the site is lost then); an approval gate before s5. */
function drRunbook(log: string): string {
  const shell = (id: string, idempotent: boolean) => appendStep(id, idempotent, log);
  return `name: relocate
version: 1
description: Steps of a site move, some not idempotent, a sleep and an approval, for the DR-site test.
timeout: 10m
steps:
${shell('s1', true)}${shell('s2', false)}  - id: s3
    kind: sleep
    timeout: 30s
    idempotent: true
    sleep: { duration: 4s }
${shell('s4', false)}  - id: approve
    kind: approval
    timeout: 5m
    approval: { quorum: 1, roles: [approver] }
${shell('s5', false)}`;
}

function markRunbook(log: string): string {
  return `name: mark
version: 1
description: One line per execution.
timeout: 5m
steps:
  - id: mark
    kind: shell
    timeout: 10s
    shell:
      argv: [sh, -c, 'echo "$2" >> "$1"', sh, '${log}', '{{ execution.id }}']
`;
}

interface Instance {
  name: string;
  port: number;
  child: ChildProcess;
  exited: Promise<NodeJS.Signals | number | null>;
  output(): string;
}

describe('the DR site goes on when the primary site, its instance and its Redis are lost', () => {
  let primary: TestRedisServer;
  let replica: TestRedisServer;
  /** [primary site, DR site, witness]. */
  const sentinels: TestRedisServer[] = [];
  const instances: Instance[] = [];
  const dirs: string[] = [];
  let relocateLog = '';
  let markLog = '';

  const detail = () => instances.map((i) => `--- ${i.name} output ---\n${i.output().slice(-5000)}`).join('\n');
  const until = <T>(what: string, fn: () => Promise<T | undefined>, ms?: number) => waitUntil(what, fn, ms, { detail });

  /** One command on a short-lived connection to a redis-server or sentinel. */
  const call = async (port: number, ...args: Array<string | number>) => {
    const r = new Redis({
      host: '127.0.0.1',
      port,
      lazyConnect: true,
      connectTimeout: 2000,
      commandTimeout: 5000,
      maxRetriesPerRequest: 0,
      enableOfflineQueue: false,
      retryStrategy: () => null,
    });
    r.on('error', () => {});
    try {
      await r.connect();
      return await r.call(String(args[0]), ...args.slice(1));
    } finally {
      r.disconnect();
    }
  };
  const info = async (port: number, section = 'replication') => {
    const text = String(await call(port, 'INFO', section));
    return new Map(
      text
        .split(/\r?\n/)
        .filter((l) => l.includes(':') && !l.startsWith('#'))
        .map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1).trim()] as [string, string]),
    );
  };
  /** The master's port as this sentinel names it. */
  const masterOf = async (sentinel: TestRedisServer) => {
    const addr = (await call(sentinel.port, 'SENTINEL', 'get-master-addr-by-name', MASTER)) as string[] | null;
    return addr ? Number(addr[1]) : undefined;
  };

  const text = (file: string) => (existsSync(file) ? readFileSync(file, 'utf8').trim().split('\n').filter(Boolean) : []);
  const count = (file: string, line: string) => text(file).filter((l) => l === line).length;

  const api = async (inst: Instance, method: string, path: string, body?: unknown, token = OPERATOR) => {
    const res = await fetch(`http://127.0.0.1:${inst.port}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(5000),
    });
    return { status: res.status, json: (await res.json().catch(() => ({}))) as Json };
  };
  const metric = async (inst: Instance, name: string): Promise<number | undefined> => {
    const body = await (await fetch(`http://127.0.0.1:${inst.port}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
    const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(body);
    return m ? Number(m[1]) : undefined;
  };
  const leading = async (inst: Instance) => ((await metric(inst, 'continuity_leader')) === 1 ? true : undefined);
  const view = async (inst: Instance, id: string) => (await api(inst, 'GET', `/api/v1/executions/${id}`)).json;
  /** Until the execution is `want`; another terminal or operator state fails at once. */
  const reaches = (inst: Instance, id: string, want: string, ms = 60_000) =>
    until(
      `${id} ${want} on ${inst.name}`,
      async () => {
        const v = await view(inst, id);
        const s = v.execution?.status as string | undefined;
        if (s === want) return v;
        if (s && ['failed', 'aborted', 'rolled_back', 'awaiting_decision', 'succeeded'].includes(s)) {
          throw new Error(`${id} is ${s}: ${JSON.stringify(v.timeline?.slice(-8))}`);
        }
        return undefined;
      },
      ms,
    );

  const start = (name: string, cfgPath: string, port: number): Instance => {
    const child = spawn('node', ['bin/continuity.js', 'daemon', '-c', cfgPath], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-200_000)));
    child.stderr!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-200_000)));
    const exited = new Promise<NodeJS.Signals | number | null>((r) => child.once('exit', (code, signal) => r(signal ?? code)));
    const inst = { name, port, child, exited, output: () => out };
    instances.push(inst);
    return inst;
  };
  const config = (instanceId: string, port: number) => {
    const cfg = writeConfig({
      config: `daemon:
  listen: 127.0.0.1:${port}
  redis_url: redis://127.0.0.1:6379/0
  redis_sentinel: { name: ${MASTER}, sentinels: [${sentinels.map((s) => `'127.0.0.1:${s.port}'`).join(', ')}] }
  runbooks_dir: ../runbooks
  state_dir: ../var
  runbook_lock_duration: 2s
  shutdown_grace: 1s
  instance_id: ${instanceId}
  leader_lease: ${LEASE_MS}ms
auth:
  tokens:
    - { name: olga, sha256: ${hashToken(OPERATOR)}, roles: [operator] }
    - { name: ada, sha256: ${hashToken(APPROVER)}, roles: [approver] }
sites:
  p: { role: primary }
  d: { role: dr }
services: {}
`,
      probes: {},
    });
    dirs.push(cfg.dir);
    for (const [name, body] of [
      ['relocate', drRunbook(relocateLog)],
      ['mark', markRunbook(markLog)],
    ] as const) {
      mkdirSync(join(cfg.dir, 'runbooks', name), { recursive: true });
      writeFileSync(join(cfg.dir, 'runbooks', name, 'v1.yaml'), body);
    }
    return cfg.configPath;
  };

  beforeAll(async () => {
    primary = await startRedisServer({ appendonly: true });
    replica = await startRedisServer({ appendonly: true, args: ['--replicaof', '127.0.0.1', String(primary.port)] });
    await until('the DR replica linked', async () => ((await info(replica.port)).get('master_link_status') === 'up' ? true : undefined));
    for (let i = 0; i < 3; i++) {
      const s = await startRedisServer({ sentinelOf: { name: MASTER, port: primary.port } });
      sentinels.push(s);
      // The helper's sentinel says quorum 1, down after 1 s: this topology wants 2 of 3, and more patience.
      await call(s.port, 'SENTINEL', 'SET', MASTER, 'quorum', 2, 'down-after-milliseconds', DOWN_AFTER_MS, 'failover-timeout', 10_000);
    }
    // Each sentinel knows the other two and the replica, and the quorum can be reached.
    for (const s of sentinels) {
      await until(
        `sentinel ${s.port} ready to fail over`,
        async () => {
          const others = (await call(s.port, 'SENTINEL', 'sentinels', MASTER)) as unknown[];
          const replicas = (await call(s.port, 'SENTINEL', 'replicas', MASTER)) as string[][];
          const known = replicas.some((r) => r[r.indexOf('port') + 1] === String(replica.port));
          const ok = String(await call(s.port, 'SENTINEL', 'ckquorum', MASTER));
          return others.length === 2 && known && ok.startsWith('OK') ? true : undefined;
        },
        60_000,
      );
    }
    const scratch = mkdtempSync(join(tmpdir(), 'continuity-drsite-'));
    dirs.push(scratch);
    relocateLog = join(scratch, 'relocate.txt');
    markLog = join(scratch, 'marks.txt');
  }, 120_000);

  afterAll(async () => {
    for (const i of instances) i.child.kill('SIGKILL');
    await Promise.all(instances.map((i) => i.exited));
    for (const s of sentinels) await s.stop();
    await replica?.stop();
    await primary?.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('Sentinel promotes the DR replica; the DR instance leads, finishes the execution and serves the API', async () => {
    for (const s of sentinels) expect(await masterOf(s)).toBe(primary.port);
    const [primaryPort, drPort] = [await closedPort(), await closedPort()];
    const [primaryCfg, drCfg] = [config('primary-1', primaryPort), config('dr-1', drPort)];

    // The primary-site instance starts first and leads; the DR one follows.
    const p1 = start('primary-1', primaryCfg, primaryPort);
    await until('primary-1 leading', () => leading(p1), 60_000);
    const dr = start('dr-1', drCfg, drPort);
    await until('dr-1 ready', async () => ((await fetch(`http://127.0.0.1:${dr.port}/readyz`)).ok ? true : undefined), 60_000);
    await until('dr-1 sees primary-1 lead', async () => {
      const c = (await api(dr, 'GET', '/api/v1/status')).json.cluster as Json | undefined;
      return c?.leader === 'primary-1' ? c : undefined;
    });
    expect(await metric(dr, 'continuity_leader')).toBe(0);
    expect(await metric(p1, 'continuity_leader')).toBe(1);
    const oldEpoch = (await metric(p1, 'continuity_leader_epoch'))!;

    // An execution in progress on the primary site: s1, s2 done, s3 (a sleep) running.
    const started = await api(p1, 'POST', '/api/v1/runbooks/relocate/executions', { idempotency_key: 'dr-site' });
    expect(started.status, JSON.stringify(started.json)).toBe(201);
    const id = started.json.execution.id as string;
    await until('s3 running on primary-1', async () => {
      const v = await view(p1, id);
      return v.steps?.some((s: Json) => s.step === 's3' && s.status === 'started') ? true : undefined;
    });
    const before = await view(p1, id);
    // What the API acknowledged so far is on the DR replica (asynchronous replication: wait for it).
    const acknowledged = Number((await info(primary.port)).get('master_repl_offset'));
    await until('the replica caught up', async () =>
      Number((await info(replica.port)).get('slave_repl_offset')) >= acknowledged ? true : undefined,
    );
    expect(text(relocateLog)).toEqual(['s1', 's2']);

    // The primary site is lost at once: its instance, its Redis, its sentinel.
    const lostAt = Date.now();
    await Promise.all([
      (async () => {
        p1.child.kill('SIGKILL');
        expect(await p1.exited).toBe('SIGKILL');
      })(),
      primary.kill('SIGKILL'),
      sentinels[0]!.kill('SIGKILL'),
    ]);

    // Sentinel (the two left: a majority) promotes the DR replica: asked, not assumed.
    await until(
      'Sentinel naming the DR replica master',
      async () => {
        const named = await Promise.all(sentinels.slice(1).map((s) => masterOf(s)));
        return named.every((p) => p === replica.port) ? true : undefined;
      },
      60_000,
    );
    const promotedMs = Date.now() - lostAt;
    await until('the DR replica a master', async () => ((await info(replica.port)).get('role') === 'master' ? true : undefined));

    await until('dr-1 leading', () => leading(dr), LEAD_BOUND_MS + 30_000);
    const leadingMs = Date.now() - lostAt;
    process.stderr.write(
      `dr-site: promotion ${promotedMs} ms after the loss (down-after ${DOWN_AFTER_MS} ms), dr-1 leading after ${leadingMs} ms (lease ${LEASE_MS} ms)\n`,
    );
    expect(leadingMs).toBeLessThanOrEqual(LEAD_BOUND_MS);
    expect(leadingMs - promotedMs).toBeLessThanOrEqual(LEASE_MS + 5000);
    expect((await metric(dr, 'continuity_leader_epoch'))!).toBeGreaterThan(oldEpoch);
    expect((await api(dr, 'GET', '/api/v1/status')).json.cluster).toMatchObject({ instance: 'dr-1', leading: true, leader: 'dr-1' });

    // dr-1 resumes the execution at s3 and brings it to its approval gate; the approver answers there.
    const waiting = await reaches(dr, id, 'waiting_approval');
    const approved = await api(
      dr,
      'POST',
      `/api/v1/executions/${id}/approvals`,
      { decision: 'approve', hash: waiting.execution.hash, comment: 'go' },
      APPROVER,
    );
    expect(approved.status, JSON.stringify(approved.json)).toBe(201);
    const done = await reaches(dr, id, 'succeeded');
    const finishedMs = Date.now() - lostAt;
    process.stderr.write(`dr-site: execution finished on dr-1 ${finishedMs} ms after the loss\n`);

    // Each non-idempotent step exactly once; every step succeeded once.
    expect(count(relocateLog, 's2')).toBe(1);
    expect(count(relocateLog, 's4')).toBe(1);
    expect(count(relocateLog, 's5')).toBe(1);
    expect(count(relocateLog, 's1')).toBeGreaterThanOrEqual(1);
    expect(done.steps.map((s: Json) => `${s.step}:${s.status}`)).toEqual(
      ['s1', 's2', 's3', 's4', 'approve', 's5'].map((s) => `${s}:succeeded`),
    );
    expect(done.approvals).toEqual([expect.objectContaining({ who: 'ada', decision: 'approve', step: 'approve' })]);
    // What was acknowledged (and replicated) before the loss is all there.
    const key = (e: Json) => `${e.at} ${e.type} ${e.step ?? ''} ${e.message}`;
    const after = new Set((done.timeline as Json[]).map(key));
    for (const e of before.timeline as Json[]) expect(after, key(e)).toContain(key(e));
    expect(done.execution.createdAt).toBe(before.execution.createdAt);

    // The DR instance's API works on its own: a new execution runs there.
    const fresh = await until('a new execution accepted by dr-1', async () => {
      const r = await api(dr, 'POST', '/api/v1/runbooks/mark/executions', { idempotency_key: 'after-the-loss' });
      return r.status === 201 ? (r.json.execution.id as string) : undefined;
    });
    await reaches(dr, fresh, 'succeeded');
    expect(count(markLog, fresh)).toBe(1);
    expect((await fetch(`http://127.0.0.1:${dr.port}/readyz`)).status).toBe(200);
    process.stderr.write(`dr-site: a new execution done on dr-1 ${Date.now() - lostAt} ms after the loss\n`);
  }, 240_000);
});
