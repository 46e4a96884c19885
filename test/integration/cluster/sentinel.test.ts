import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashToken } from '../../../src/http/auth.js';
import { writeConfig } from '../../helpers/config.js';
import { freePort } from '../../helpers/net.js';
import { startRedisServer, type TestRedisServer } from '../../helpers/redis-server.js';
import { until as waitUntil } from '../../helpers/until.js';

/**
 * The DR topology: Redis with a replica in the DR site and Sentinel to promote it. The daemon
 * reaches Redis through the sentinel (daemon.redis_sentinel); the primary site's Redis is killed;
 * Sentinel promotes the replica, and the daemon goes on by itself: what it recorded before is there,
 * and new executions run. Private redis-servers only (never the machine's Redis).
 */
const OPERATOR = 'tok-sentinel-operator-0123456789';
const MASTER = 'continuity';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- API answers, read loosely by the test
type Json = Record<string, any>;

describe('Redis through Sentinel: the primary site lost, the DR replica promoted', () => {
  let primary: TestRedisServer;
  let replica: TestRedisServer;
  let sentinel: TestRedisServer;
  let daemon: ChildProcess | undefined;
  let exited: Promise<unknown> = Promise.resolve();
  let out = '';
  let port: number;
  let log: string;

  const api = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(`http://127.0.0.1:${port}${path}`, {
      method,
      headers: { authorization: `Bearer ${OPERATOR}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(5000),
    });
    return { status: res.status, json: (await res.json().catch(() => ({}))) as Json };
  };
  const until = <T>(what: string, fn: () => Promise<T | undefined>, ms?: number) =>
    waitUntil(what, fn, ms, { detail: () => `--- daemon output ---\n${out.slice(-4000)}` });
  const run = async (key: string) => {
    const id = await until(`${key} accepted`, async () => {
      const r = await api('POST', '/api/v1/runbooks/mark/executions', { idempotency_key: key });
      return r.status === 201 ? (r.json.execution.id as string) : undefined;
    });
    await until(`${key} succeeded`, async () =>
      (await api('GET', `/api/v1/executions/${id}`)).json.execution?.status === 'succeeded' ? true : undefined,
    );
    return id;
  };
  const masterPort = async () => {
    const s = new Redis({ host: '127.0.0.1', port: sentinel.port, lazyConnect: true, maxRetriesPerRequest: 1 });
    s.on('error', () => {});
    try {
      await s.connect();
      const addr = (await s.call('SENTINEL', 'get-master-addr-by-name', MASTER)) as string[] | null;
      return addr ? Number(addr[1]) : undefined;
    } finally {
      s.disconnect();
    }
  };

  beforeAll(async () => {
    primary = await startRedisServer({ appendonly: true });
    replica = await startRedisServer({ appendonly: true, args: ['--replicaof', '127.0.0.1', String(primary.port)] });
    sentinel = await startRedisServer({ sentinelOf: { name: MASTER, port: primary.port } });
    port = await freePort();
    const cfg = writeConfig({
      config: `daemon:
  listen: 127.0.0.1:${port}
  redis_url: redis://127.0.0.1:6379/0
  redis_sentinel: { name: ${MASTER}, sentinels: ['127.0.0.1:${sentinel.port}'] }
  runbooks_dir: ../runbooks
  state_dir: ../var
  runbook_lock_duration: 2s
  shutdown_grace: 1s
auth:
  tokens:
    - { name: olga, sha256: ${hashToken(OPERATOR)}, roles: [operator] }
sites:
  p: { role: primary }
  d: { role: dr }
services: {}
`,
      probes: {},
    });
    log = join(cfg.dir, 'marks.txt');
    mkdirSync(join(cfg.dir, 'runbooks/mark'), { recursive: true });
    writeFileSync(
      join(cfg.dir, 'runbooks/mark/v1.yaml'),
      `name: mark
version: 1
description: One line per execution.
timeout: 5m
steps:
  - id: mark
    kind: shell
    timeout: 10s
    shell:
      argv: [sh, -c, 'echo "$2" >> "$1"', sh, '${log}', '{{ execution.id }}']
`,
    );
    const child = spawn('node', ['bin/continuity.js', 'daemon', '-c', cfg.configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
    daemon = child;
    child.stdout!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-100_000)));
    child.stderr!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-100_000)));
    exited = new Promise((r) => child.once('exit', r));
    await until('the daemon ready', async () => ((await fetch(`http://127.0.0.1:${port}/readyz`)).ok ? true : undefined));
  }, 60_000);

  afterAll(async () => {
    if (daemon && daemon.exitCode === null && daemon.signalCode === null) {
      daemon.kill('SIGTERM');
      const killer = setTimeout(() => daemon?.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(killer);
    }
    await sentinel?.stop();
    await replica?.stop();
    await primary?.stop();
  });

  it('goes on by itself on the promoted replica: what it recorded is there, new executions run', async () => {
    expect(await masterPort()).toBe(primary.port);
    const before = await run('before-the-loss');
    // The replica has it all before the primary site is lost (replication is asynchronous).
    const p = new Redis({ host: '127.0.0.1', port: primary.port, maxRetriesPerRequest: 1 });
    expect(Number(await p.call('WAIT', '1', '5000'))).toBe(1);
    p.disconnect();

    await primary.kill('SIGKILL');
    const lostAt = Date.now();
    await until('Sentinel promoting the replica', async () => ((await masterPort()) === replica.port ? true : undefined), 30_000);
    const after = await run('after-the-loss');
    process.stderr.write(`sentinel: new execution done ${Date.now() - lostAt} ms after the primary Redis was killed\n`);

    expect((await api('GET', `/api/v1/executions/${before}`)).json.execution.status).toBe('succeeded');
    const marks = existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n') : [];
    expect(marks.filter((m) => m === before)).toHaveLength(1);
    expect(marks.filter((m) => m === after)).toHaveLength(1);
    expect((await fetch(`http://127.0.0.1:${port}/readyz`)).status).toBe(200);
  }, 90_000);
});
