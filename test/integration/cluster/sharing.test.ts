import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { VANTAGE_KEY } from '../../../src/cluster/vantage.js';
import { hashToken } from '../../../src/http/auth.js';
import { daemonCluster, type DaemonCluster, type DaemonInstance as Instance } from '../../helpers/daemons.js';
import { startRedisServer, type TestRedisServer } from '../../helpers/redis-server.js';
import { until } from '../../helpers/until.js';

/**
 * Several daemons against one private Redis. With `probe_distribution: shared` each probe runs
 * once per interval across the cluster, every instance knows every result, a dead instance's share
 * is taken over within two intervals, and while Redis is away every instance runs every probe.
 * The probes a failover policy relies on run from every instance and count as vantage points: one
 * instance that loses the primary while another still reaches it does not fail over.
 */
const VIEWER = 'tok-sharing-viewer-0123456789';
const SHARED = ['s1', 's2', 's3', 's4', 's5', 's6'];
const INTERVAL_MS = 1000;
/** Stands in for a failover runbook: it only waits. */
const HOLD = `name: hold
version: 1
description: Waits; stands in for a failover runbook.
timeout: 10m
steps:
  - id: wait
    kind: sleep
    timeout: 2m
    idempotent: true
    sleep: { duration: 60s }
`;
/** What every instance's config has after `daemon:`, but the services. */
const CLUSTER_REST = `auth:
  tokens:
    - { name: vera, sha256: ${hashToken(VIEWER)}, roles: [viewer] }
sites:
  p: { role: primary }
  d: { role: dr }
`;

/** An HTTP target that remembers when each path was asked for. */
async function countingServer(): Promise<{ url: string; hits: Map<string, number[]>; close(): Promise<void> }> {
  const hits = new Map<string, number[]>();
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').slice(1);
    hits.set(path, [...(hits.get(path) ?? []), Date.now()]);
    res.end('ok');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    hits,
    close: () => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))),
  };
}

/** Hits of a path between two instants. */
const between = (hits: number[] | undefined, from: number, to: number) => (hits ?? []).filter((t) => t >= from && t < to);

/** The longest time between consecutive hits in [from, to), counting from `from`. */
function longestGap(hits: number[] | undefined, from: number, to: number): number {
  let last = from;
  let gap = 0;
  for (const t of between(hits, from, to)) {
    gap = Math.max(gap, t - last);
    last = t;
  }
  return Math.max(gap, to - last);
}

describe('probes shared out across instances', () => {
  let redis: TestRedisServer;
  let target: Awaited<ReturnType<typeof countingServer>>;
  const clusters: DaemonCluster[] = [];

  beforeAll(async () => {
    redis = await startRedisServer({ appendonly: true });
    target = await countingServer();
  });
  afterAll(async () => {
    for (const c of clusters) await c.close();
    await target?.close();
    await redis?.stop();
  });

  /** Instances on their own database of the private Redis, started one after the other (the first leads). */
  const startInstances = async (
    names: string[],
    db: number,
    extra: string,
    services: string,
    probes: (k: number) => string,
    runbooks: Record<string, string> = {},
  ) => {
    const cluster = await daemonCluster({
      names,
      token: VIEWER,
      config: (ctx) => `daemon:
  listen: 127.0.0.1:${ctx.port}
  redis_url: ${redis.url}/${db}
  state_dir: ../var
  shutdown_grace: 1s
  instance_id: ${ctx.instanceId}
  leader_lease: 2s
${extra}${CLUSTER_REST}${services}`,
      probes: (ctx) => ({ 'probes.yaml': `probes:\n${probes(ctx.index)}` }),
      prepare: (ctx) => {
        mkdirSync(join(ctx.dir, 'runbooks'), { recursive: true });
        for (const [file, text] of Object.entries(runbooks)) {
          mkdirSync(join(ctx.dir, 'runbooks', file, '..'), { recursive: true });
          writeFileSync(join(ctx.dir, 'runbooks', file), text);
        }
      },
    });
    clusters.push(cluster);
    for (const inst of cluster.instances) await inst.start().up(60_000);
    return cluster;
  };
  /** A metric summed over its series (those with `labels` only, when given). */
  const metric = async (inst: Instance, name: string, labels = ''): Promise<number> => {
    const text = await (await fetch(`${inst.url}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
    const esc = labels.replace(/[{}]/g, (c) => `\\${c}`);
    return [...text.matchAll(new RegExp(`^${name}${esc ? esc : '(?:\\{[^}]*\\})?'} (\\S+)$`, 'gm'))].reduce((a, m) => a + Number(m[1]), 0);
  };
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- an API answer, read loosely by the test
  const get = (inst: Instance, path: string) => inst.api<any>('GET', path);
  const states = async (inst: Instance) =>
    Object.fromEntries(((await get(inst, '/api/v1/status')).probes as Array<{ id: string; state: string }>).map((p) => [p.id, p.state]));

  it('runs each probe once per interval across three instances, and takes over a dead one within two intervals', async () => {
    const probes = SHARED.map(
      (id) => `  - id: ${id}
    kind: http
    site: p
    interval: 1s
    timeout: 900ms
    failure_threshold: 2
    http: { url: '${target.url}/${id}' }
`,
    ).join('');
    const { instances } = await startInstances(
      ['share-a', 'share-b', 'share-c'],
      1,
      '  probe_distribution: shared\n',
      'services: {}\n',
      () => probes,
    );
    try {
      expect(await metric(instances[0]!, 'continuity_leader')).toBe(1);
      for (const inst of instances) expect(await metric(inst, 'continuity_probe_sharing')).toBe(1);
      // Each instance knows every shared probe's state, whoever ran it.
      for (const inst of instances)
        await until(
          `${inst.name} sees every probe UP`,
          async () => (Object.values(await states(inst)).every((s) => s === 'UP') ? true : undefined),
          30_000,
        );

      // Six seconds of runs: about six per probe in all, not eighteen.
      const WINDOW = 6000;
      const t0 = Date.now();
      await new Promise((r) => setTimeout(r, WINDOW));
      const t1 = Date.now();
      for (const id of SHARED) {
        const n = between(target.hits.get(id), t0, t1).length;
        expect(n, `${id} ran ${n} times in ${WINDOW} ms`).toBeGreaterThanOrEqual(WINDOW / INTERVAL_MS - 2);
        expect(n, `${id} ran ${n} times in ${WINDOW} ms`).toBeLessThanOrEqual(WINDOW / INTERVAL_MS + 2);
      }
      // The runs are spread: more than one instance took some (each counts only its own).
      const runsBy = await Promise.all(instances.map((i) => metric(i, 'continuity_probe_runs_total')));
      process.stderr.write(`shared runs by instance: ${instances.map((i, k) => `${i.name}=${runsBy[k]}`).join(' ')}\n`);
      expect(runsBy.filter((n) => n > 0).length).toBeGreaterThanOrEqual(2);
      const total = SHARED.reduce((s, id) => s + (target.hits.get(id)?.length ?? 0), 0);
      // Counted by the daemons and by the target alike (runs in flight at the reading aside).
      expect(Math.abs(runsBy.reduce((s, n) => s + n, 0) - total)).toBeLessThanOrEqual(SHARED.length * 2);

      // kill -9 of the instance that ran the most; the others take its share within two intervals.
      const busiest = instances[runsBy.indexOf(Math.max(...runsBy))]!;
      const killedAt = Date.now();
      await busiest.kill('SIGKILL');
      await new Promise((r) => setTimeout(r, WINDOW));
      const t2 = Date.now();
      const gaps = SHARED.map((id) => longestGap(target.hits.get(id), killedAt, t2));
      process.stderr.write(`after kill -9 of ${busiest.name}: longest gap per probe ${gaps.join(', ')} ms (interval ${INTERVAL_MS} ms)\n`);
      for (const [k, id] of SHARED.entries())
        expect(gaps[k], `${id}: longest gap after the kill`).toBeLessThanOrEqual(2 * INTERVAL_MS + 800);
      const survivors = instances.filter((i) => i !== busiest);
      for (const inst of survivors) expect(Object.values(await states(inst)).every((s) => s === 'UP')).toBe(true);

      // Redis away: every survivor runs every probe itself; back: shared again.
      await redis.kill('SIGKILL');
      for (const inst of survivors)
        await until(
          `${inst.name} runs every probe itself`,
          async () => ((await metric(inst, 'continuity_probe_sharing')) === 0 ? true : undefined),
          20_000,
        );
      const t3 = Date.now();
      await new Promise((r) => setTimeout(r, 4000));
      const t4 = Date.now();
      for (const id of SHARED) {
        const n = between(target.hits.get(id), t3, t4).length;
        // Two instances, each every second, for four seconds: about eight.
        expect(n, `${id} while Redis is away`).toBeGreaterThanOrEqual(5);
      }
      await redis.restart();
      for (const inst of survivors)
        await until(
          `${inst.name} shares again`,
          async () => ((await metric(inst, 'continuity_probe_sharing')) === 1 ? true : undefined),
          30_000,
        );
      await new Promise((r) => setTimeout(r, 2000)); // runs begun before the switch finish
      const t5 = Date.now();
      await new Promise((r) => setTimeout(r, WINDOW));
      const t6 = Date.now();
      for (const id of SHARED) {
        const n = between(target.hits.get(id), t5, t6).length;
        expect(n, `${id} ran ${n} times in ${WINDOW} ms after Redis came back`).toBeGreaterThanOrEqual(WINDOW / INTERVAL_MS - 2);
        expect(n, `${id} ran ${n} times in ${WINDOW} ms after Redis came back`).toBeLessThanOrEqual(WINDOW / INTERVAL_MS + 2);
      }
      // And every survivor hears of every run again (its queue events came back with Redis).
      for (const inst of survivors) {
        const probes = (await get(inst, '/api/v1/status')).probes as Array<{ id: string; last?: { at: string } }>;
        for (const p of probes)
          expect(Date.now() - Date.parse(p.last!.at), `${inst.name}: last result of ${p.id}`).toBeLessThan(3 * INTERVAL_MS);
      }
    } catch (err) {
      for (const i of instances) process.stderr.write(`--- ${i.name}\n${i.tail(40)}\n`);
      throw err;
    }
  }, 180_000);

  it('counts every instance as a vantage point: one that loses the primary alone does not fail over', async () => {
    // Each instance probes "the primary" on its own port: closing one port cuts one instance's path.
    const listeners = await Promise.all(
      [0, 1].map(async () => {
        const sockets = new Set<net.Socket>();
        const server = net.createServer((s) => (sockets.add(s), s.on('close', () => sockets.delete(s)), s.end()));
        await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
        return {
          port: (server.address() as AddressInfo).port,
          close: () => new Promise<void>((r) => (sockets.forEach((s) => s.destroy()), server.close(() => r()))),
        };
      }),
    );
    const { instances } = await startInstances(
      ['vantage-a', 'vantage-b'],
      2,
      '',
      `services:
  orders:
    failover:
      runbook: hold
      version: 1
      primary_down: [orders-primary]
      replica: orders-replica
      verify: orders-dr
`,
      (k) => `  - id: orders-primary
    kind: tcp
    site: p
    services: [orders]
    interval: 500ms
    timeout: 400ms
    failure_threshold: 2
    tcp: { host: 127.0.0.1, port: ${listeners[k]!.port} }
  - id: orders-replica
    kind: postgres
    site: d
    services: [orders]
    interval: 1s
    timeout: 900ms
    postgres: { host: 127.0.0.1, port: 5432, user: postgres, database: postgres }
  - id: orders-dr
    kind: tcp
    site: d
    services: [orders]
    interval: 1s
    timeout: 900ms
    tcp: { host: 127.0.0.1, port: ${redis.port} }
`,
      { 'hold/v1.yaml': HOLD },
    );
    const [a, b] = instances as [Instance, Instance];
    const decision = async () => {
      const list = (await get(a, '/api/v1/incidents')) as unknown as Array<{
        service: string;
        status: string;
        decision?: { sentence: string };
      }>;
      return list.find((i) => i.service === 'orders' && i.status !== 'closed')?.decision?.sentence;
    };
    try {
      expect(await metric(a, 'continuity_leader')).toBe(1);
      await until('both see the primary UP', async () =>
        (await states(a))['orders-primary'] === 'UP' && (await states(b))['orders-primary'] === 'UP' ? true : undefined,
      );
      // Both views are on the board before anything breaks.
      const board = new Redis(`${redis.url}/2`);
      try {
        await until('both views published', async () => ((await board.hlen(VANTAGE_KEY('orders-primary'))) === 2 ? true : undefined));
      } finally {
        board.disconnect();
      }
      await listeners[0]!.close(); // only the leader's path to the primary breaks
      const degraded = await until('a decision', decision, 20_000);
      process.stderr.write(`decision with one path cut: ${degraded}\n`);
      expect(degraded).toMatch(
        /^orders: monitor path degraded: orders-primary DOWN 2\/2 on 1 of 2 instances, but vantage-b still reaches the primary \(quorum majority: 2\): no failover$/,
      );
      await listeners[1]!.close(); // now both lose it
      const failover = await until('the failover decision', async () => {
        const s = await decision();
        // On the way there: `waiting for more instances` while the other one's probe fails but is not DOWN yet.
        return s?.includes('awaiting approval') ? s : undefined;
      });
      process.stderr.write(`decision with both paths cut: ${failover}\n`);
      expect(failover).toMatch(
        /^orders: orders-primary DOWN 2\/2 on 2 of 2 instances from 3 vantage points; replica orders-replica lost its primary/,
      );
      expect(failover).toMatch(/awaiting approval for hold v1$/);
      expect(await metric(a, 'continuity_vantage_instances', '{service="orders",view="down"}')).toBe(2);
    } catch (err) {
      for (const i of instances) process.stderr.write(`--- ${i.name}\n${i.tail(40)}\n`);
      throw err;
    }
  }, 120_000);
});
