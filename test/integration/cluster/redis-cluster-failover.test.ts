import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../../../src/daemon.js';
import { hashToken } from '../../../src/http/auth.js';
import { writeConfig } from '../../helpers/config.js';
import { startRedisServer, type TestRedisServer } from '../../helpers/redis-server.js';
import { until } from '../../helpers/until.js';

const run = promisify(execFile);

/**
 * A Redis Cluster of three masters with one replica each (private redis-servers, AOF on). While an
 * execution's sleep step runs, the master of the `{continuity}` slot is killed (SIGKILL) and its
 * replica promoted by the cluster itself (cluster-node-timeout): the execution must still succeed,
 * each non-idempotent step run exactly once, its steps and timeline complete. The lock is the
 * default 30 s: when leadership moves in the failover, the old leader gives the job back as soon
 * as it is fenced, so the new one does not wait for the lock to expire.
 */
const OPERATOR = 'tok-cluster-failover-0123456789';
const NODE_TIMEOUT_MS = 2000;

class Quiet extends Writable {
  text = '';
  override _write(c: Buffer, _e: string, done: () => void) {
    this.text = (this.text + c.toString()).slice(-200_000);
    done();
  }
}

/** One entry of CLUSTER SLOTS: [start, end, [host, port, id], ...replicas]. */
type SlotRange = [number, number, [string, number, string], ...Array<[string, number, string]>];

async function ask<T>(port: number, ...args: string[]): Promise<T> {
  const r = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  r.on('error', () => {});
  try {
    await r.connect();
    return (await r.call(args[0]!, ...args.slice(1))) as T;
  } finally {
    r.disconnect();
  }
}

/** The port of the master serving `slot`, as the node on `port` sees it (undefined if no one serves it). */
async function masterOf(port: number, slot: number): Promise<number | undefined> {
  const ranges = await ask<SlotRange[]>(port, 'CLUSTER', 'SLOTS');
  const range = ranges.find(([start, end]) => slot >= start && slot <= end);
  return range ? Number(range[2][1]) : undefined;
}

describe('Redis Cluster failover', () => {
  const nodes: TestRedisServer[] = [];
  const daemons: Daemon[] = [];

  beforeAll(async () => {
    for (let i = 0; i < 6; i++)
      nodes.push(
        await startRedisServer({
          appendonly: true,
          args: ['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', String(NODE_TIMEOUT_MS)],
        }),
      );
    await run(
      'redis-cli',
      ['--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '1', '--cluster-yes'],
      { timeout: 30_000 },
    );
    for (const n of nodes)
      await until(
        `cluster state ok on ${n.port}`,
        async () => ((await ask<string>(n.port, 'CLUSTER', 'INFO')).includes('cluster_state:ok') ? true : undefined),
        30_000,
      );
    // Every replica attached and in sync, so the slot's master has a replica that may be promoted.
    await until(
      'three masters with one replica each',
      async () => {
        const ranges = await ask<SlotRange[]>(nodes[0]!.port, 'CLUSTER', 'SLOTS');
        return ranges.length >= 3 && ranges.every((r) => r.length === 4) ? true : undefined;
      },
      30_000,
    );
  }, 60_000);

  afterAll(async () => {
    for (const d of daemons) await d.stop().catch(() => undefined);
    for (const n of nodes) await n.stop().catch(() => undefined);
  }, 30_000);

  it('an execution succeeds across a kill -9 of the {continuity} master and its replica promotion', async () => {
    const cfg = writeConfig({
      config: `daemon:
  listen: 127.0.0.1:0
  redis_cluster:
    nodes: [${nodes.map((n) => `'127.0.0.1:${n.port}'`).join(', ')}]
  state_dir: ../var
  shutdown_grace: 1s
  leader_lease: 2s
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
    const log = join(cfg.dir, 'lines.txt');
    const append = (id: string) =>
      `  - id: ${id}\n    kind: shell\n    timeout: 10s\n    idempotent: false\n    shell:\n      argv: [sh, -c, 'echo ${id} >> "$1"', sh, '${log}']\n`;
    mkdirSync(join(cfg.dir, 'runbooks/failover'), { recursive: true });
    writeFileSync(
      join(cfg.dir, 'runbooks/failover/v1.yaml'),
      `name: failover\nversion: 1\ndescription: Append, sleep, append, across a cluster failover.\ntimeout: 5m\nsteps:\n${append('a')}  - id: nap\n    kind: sleep\n    timeout: 30s\n    idempotent: true\n    sleep: { duration: 4s }\n${append('b')}`,
    );
    const second = join(cfg.dir, 'config/second.yaml');
    writeFileSync(second, readFileSync(cfg.configPath, 'utf8').replace('  leader_lease: 2s', '  leader_lease: 2s\n  instance_id: second'));
    const outs = [new Quiet(), new Quiet()];
    daemons.push(
      new Daemon({ configPath: cfg.configPath, port: 0, logStream: outs[0] }),
      new Daemon({ configPath: second, port: 0, logStream: outs[1] }),
    );
    const detail = () => outs.map((o, i) => `--- daemon ${i}\n${o.text.slice(-6000)}`).join('\n');
    try {
      for (const d of daemons) await d.start();
      // Whichever instance answers: the API reads the execution from Redis.
      const api = async <T>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> => {
        let last: unknown;
        for (const d of daemons) {
          try {
            const res = await fetch(d.url + path, {
              method,
              headers: { authorization: `Bearer ${OPERATOR}`, ...(body ? { 'content-type': 'application/json' } : {}) },
              body: body ? JSON.stringify(body) : undefined,
              signal: AbortSignal.timeout(3000),
            });
            const text = await res.text();
            if (res.status >= 500) throw new Error(`${res.status} ${text}`);
            return { status: res.status, body: (text ? JSON.parse(text) : undefined) as T };
          } catch (err) {
            last = err;
          }
        }
        throw last;
      };
      type View = {
        execution: { status: string };
        steps: Array<{ step: string; status: string; attempt: number }>;
        timeline: Array<{ type: string; step?: string; message: string }>;
      };

      const started = await api<{ execution: { id: string } }>('POST', '/api/v1/runbooks/failover/executions', {
        idempotency_key: 'across-a-failover',
      });
      expect(started.status, JSON.stringify(started.body)).toBe(201);
      const id = started.body.execution.id;
      await until(
        'the sleep step running',
        async () => {
          const v = (await api<View>('GET', `/api/v1/executions/${id}`)).body;
          return v.steps.some((s) => s.step === 'nap' && s.status === 'started') ? true : undefined;
        },
        20_000,
        { detail },
      );

      // The master of the {continuity} slot, as the cluster says.
      const leaderBefore = daemons.find((d) => d.lease?.leading)?.lease?.instanceId;
      const slot = await ask<number>(nodes[0]!.port, 'CLUSTER', 'KEYSLOT', '{continuity}');
      const masterPort = await masterOf(nodes[0]!.port, slot);
      const victim = nodes.find((n) => n.port === masterPort);
      expect(victim, `no node is the master of slot ${slot}`).toBeDefined();
      const survivors = nodes.filter((n) => n !== victim);
      const killedAt = Date.now();
      await victim!.kill('SIGKILL');

      // Its replica is promoted by the cluster (failure detected after cluster-node-timeout).
      const promoted = await until(
        `a new master of slot ${slot}`,
        async () => {
          const seen = await Promise.all(
            survivors.map(async (n) => {
              const info = await ask<string>(n.port, 'CLUSTER', 'INFO');
              return info.includes('cluster_state:ok') ? masterOf(n.port, slot) : undefined;
            }),
          );
          const p = seen[0];
          return p !== undefined && p !== masterPort && seen.every((s) => s === p) ? p : undefined;
        },
        30_000,
        { every: 100 },
      );
      const promotedMs = Date.now() - killedAt;

      const done = await until(
        'the execution finished',
        async () => {
          const v = (await api<View>('GET', `/api/v1/executions/${id}`)).body;
          return ['succeeded', 'failed', 'aborted', 'rolled_back', 'awaiting_decision'].includes(v.execution.status) ? v : undefined;
        },
        60_000,
        { every: 100, detail },
      );
      const doneMs = Date.now() - killedAt;
      console.log(
        `redis-cluster-failover: master 127.0.0.1:${masterPort} (slot ${slot}) killed, replica 127.0.0.1:${promoted} promoted after ${promotedMs} ms, execution ${done.execution.status} ${doneMs} ms after the kill (leader ${leaderBefore} -> ${daemons.find((d) => d.lease?.leading)?.lease?.instanceId})`,
      );

      expect(done.execution.status, JSON.stringify(done.timeline)).toBe('succeeded');
      const lines = existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n') : [];
      expect(lines.filter((l) => l === 'a')).toEqual(['a']);
      expect(lines.filter((l) => l === 'b')).toEqual(['b']);
      expect(lines).toEqual(['a', 'b']);
      expect(done.steps.map((s) => `${s.step}:${s.status}`)).toEqual(['a:succeeded', 'nap:succeeded', 'b:succeeded']);
      for (const step of ['a', 'nap', 'b'])
        expect(
          done.timeline.some((e) => e.step === step),
          `timeline names ${step}: ${JSON.stringify(done.timeline)}`,
        ).toBe(true);
      expect(done.timeline.at(-1)!.type, JSON.stringify(done.timeline)).toBe('succeeded');
    } catch (err) {
      process.stderr.write(`${detail()}\n`);
      throw err;
    }
  }, 90_000);
});
