import net from 'node:net';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EPOCH_KEY, LeaderLease } from '../../../src/cluster/lease.js';
import { startRedis, startRedisReplica, waitForLink, type RedisNode } from '../../helpers/redis-replica.js';

/** A TCP proxy that holds every chunk `delayMs` before passing it on, both ways: a slow replication link. */
async function slowLink(target: number, delayMs: number): Promise<{ port: number; close(): void }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((inbound) => {
    const outbound = net.connect(target, '127.0.0.1');
    for (const s of [inbound, outbound]) {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => (inbound.destroy(), outbound.destroy()));
    }
    inbound.on('data', (d) => setTimeout(() => outbound.write(d), delayMs));
    outbound.on('data', (d) => setTimeout(() => inbound.write(d), delayMs));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () => (sockets.forEach((s) => s.destroy()), server.close()),
  };
}

/**
 * The fencing token must not be handed out twice across a Redis failover: a new leader waits (WAIT 1)
 * until a replica has its epoch before it acts, so a replica promoted right after the election knows it.
 */
describe('leader lease with a Redis replica', () => {
  let master: RedisNode;
  let replica: RedisNode;
  let link: Awaited<ReturnType<typeof slowLink>>;
  const DELAY = 200;

  beforeAll(async () => {
    master = await startRedis();
    link = await slowLink(master.port, DELAY);
    replica = await startRedisReplica({ host: '127.0.0.1', port: link.port });
  });
  afterAll(async () => {
    link?.close();
    await replica?.cleanup();
    await master?.cleanup();
  });

  it('leads only once the new epoch is on the replica: a slow link delays the election, never the token', async () => {
    const client = master.client();
    const lease = new LeaderLease({ redis: client, instanceId: 'wait-a', leaseMs: 3000, log: pino({ level: 'silent' }) });
    try {
      await client.connect();
      const t0 = Date.now();
      await lease.start();
      const took = Date.now() - t0;
      expect(lease.leading).toBe(true);
      // The INCR's way to the replica and its acknowledgement's way back: two delays at least.
      expect(took).toBeGreaterThanOrEqual(2 * DELAY - 20);
      expect(Number(await replica.call('GET', EPOCH_KEY))).toBe(lease.token);
    } finally {
      await lease.stop();
      client.disconnect();
    }
  }, 30_000);
});

/**
 * A partition: the primary site cut off with its Redis. With `min-replicas-to-write 1` the cut-off
 * master refuses writes once its DR replica is gone, lease renewals too, so its leader stops leading
 * within the lease, and cannot be elected there again, while the DR site promotes its replica.
 */
describe('leader lease on a master with min-replicas-to-write, cut off from its replica', () => {
  let master: RedisNode;
  let replica: RedisNode;
  let link: Awaited<ReturnType<typeof slowLink>>;
  const LEASE_MS = 3000;

  beforeAll(async () => {
    master = await startRedis({ args: ['--min-replicas-to-write', '1', '--min-replicas-max-lag', '2'] });
    link = await slowLink(master.port, 0);
    replica = await startRedisReplica({ host: '127.0.0.1', port: link.port });
  });
  afterAll(async () => {
    link?.close();
    await replica?.cleanup();
    await master?.cleanup();
  });

  it('the leader stops leading within its lease of the cut, and is not elected again while cut off', async () => {
    const client = master.client();
    const lease = new LeaderLease({ redis: client, instanceId: 'cut-a', leaseMs: LEASE_MS, log: pino({ level: 'silent' }) });
    try {
      await client.connect();
      await lease.start();
      expect(lease.leading).toBe(true);
      const deposed = new Promise<[number, string]>((r) => lease.once('deposed', (reason) => r([Date.now(), reason])));
      // Renewed at least once through the link before it goes.
      await new Promise((r) => setTimeout(r, LEASE_MS / 2));
      const cut = Date.now();
      link.close();
      await waitForLink(replica, 'down');
      await expect(client.set('after-the-cut', '1')).rejects.toThrow(/NOREPLICAS/);
      const [at, reason] = await deposed;
      const after = at - cut;
      console.log(`lease-replica: cut off from its replica, the leader was deposed after ${after} ms (lease ${LEASE_MS} ms)`);
      expect(after).toBeLessThanOrEqual(LEASE_MS + 200);
      expect(reason).toMatch(/expired without a successful renewal/);
      // Its attempts to take the lease again are refused by the master as well.
      await new Promise((r) => setTimeout(r, LEASE_MS));
      expect(lease.leading).toBe(false);
      expect(await client.get(EPOCH_KEY)).toBe(String(1));
    } finally {
      await lease.stop();
      client.disconnect();
    }
  }, 30_000);
});
