import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closedPort, silentServer } from '../../helpers/net.js';
import { probe } from '../../helpers/probe.js';
import { startRedis, startRedisReplica, type RedisNode } from '../../helpers/redis-replica.js';

const local = { host: '127.0.0.1' };

/** Probes until `done` holds or the deadline passes; returns the last result. */
async function probeUntil(settings: unknown, conditions: string[], done: (r: Awaited<ReturnType<typeof probe>>) => boolean) {
  const deadline = Date.now() + 5000;
  for (;;) {
    const r = await probe('redis', settings, { conditions });
    if (done(r) || Date.now() > deadline) return r;
    await new Promise((res) => setTimeout(res, 50));
  }
}

describe('redis prober', () => {
  let silent: Awaited<ReturnType<typeof silentServer>>;
  let master: RedisNode;
  let replica: RedisNode;
  let locked: RedisNode;
  const password = 'correct horse battery';

  beforeAll(async () => {
    silent = await silentServer();
    master = await startRedis();
    replica = await startRedisReplica(master);
    locked = await startRedis({ requirepass: password });
  });
  afterAll(async () => {
    await silent?.close();
    await Promise.all([replica?.cleanup(), master?.cleanup(), locked?.cleanup()]);
  });

  it("succeeds against the machine's Redis and sees a master", async () => {
    const r = await probe('redis', { ...local, port: 6379 });
    expect(r).toMatchObject({ ok: true, reason: 'ok', observed: { role: 'master', master_link_status: 'none' } });
  });

  it('reports a refused connection in the words of the OS', async () => {
    const port = await closedPort();
    const r = await probe('redis', { ...local, port });
    expect(r).toMatchObject({ ok: false, reason: `connect ECONNREFUSED 127.0.0.1:${port}` });
  });

  it('times out against a peer that accepts and never answers', async () => {
    const r = await probe('redis', { ...local, port: silent.port }, { timeoutMs: 250 });
    expect(r).toMatchObject({ ok: false, reason: 'timed out after 250ms' });
    expect(r.durationSeconds).toBeLessThan(3);
  });

  it('drops its connection when the run is aborted', async () => {
    const peer = await silentServer();
    try {
      const r = await probe('redis', { ...local, port: peer.port }, { timeoutMs: 200 });
      expect(r.reason).toBe('timed out after 200ms');
      await expect.poll(() => peer.open(), { timeout: 1000 }).toBe(0);
    } finally {
      await peer.close();
    }
  });

  it('reports a wrong or missing password without echoing it', async () => {
    const wrong = await probe('redis', { ...local, port: locked.port, password: 'not the password' });
    expect(wrong).toMatchObject({ ok: false, reason: 'WRONGPASS invalid username-password pair or user is disabled.' });
    const missing = await probe('redis', { ...local, port: locked.port });
    expect(missing).toMatchObject({ ok: false, reason: 'NOAUTH Authentication required.' });
    const right = await probe('redis', { ...local, port: locked.port, password });
    expect(right).toMatchObject({ ok: true, observed: { role: 'master' } });
    expect(JSON.stringify([wrong, missing, right])).not.toContain('not the password');
  });

  it('fails when the role is not the expected one; primary means master', async () => {
    expect(await probe('redis', { ...local, port: master.port, expect_role: 'replica' })).toMatchObject({
      ok: false,
      reason: 'expected role replica, found master',
    });
    expect(await probe('redis', { ...local, port: replica.port, expect_role: 'primary' })).toMatchObject({
      ok: false,
      reason: 'expected role primary, found replica',
    });
    expect(await probe('redis', { ...local, port: master.port, expect_role: 'primary' })).toMatchObject({ ok: true });
  });

  it('sees its replica from the master and applies conditions', async () => {
    const r = await probe('redis', { ...local, port: master.port, expect_role: 'master' }, { conditions: ['connected_replicas >= 2'] });
    expect(r).toMatchObject({ ok: false, reason: 'condition "connected_replicas >= 2" is false (connected_replicas=1)' });
    expect(r.observed).toMatchObject({ role: 'master', connected_replicas: 1 });
  });

  it('sees a real replica with its link to the master up', async () => {
    const r = await probe(
      'redis',
      { ...local, port: replica.port, expect_role: 'replica', max_lag_bytes: 0 },
      { conditions: ['master_link_status == "up"'] },
    );
    expect(r).toMatchObject({
      ok: true,
      observed: { role: 'replica', master_link_status: 'up', master_host: '127.0.0.1', master_port: master.port, lag_bytes: 0 },
    });
    expect(r.observed.master_last_io_seconds_ago).toBeGreaterThanOrEqual(0);
  });

  it("reports the master's view of lag while its replica cannot acknowledge", async () => {
    // A sleeping replica acknowledges nothing, so whatever the master writes now is lag.
    const sleeper = replica.client();
    await sleeper.connect();
    const sleeping = sleeper.call('DEBUG', 'SLEEP', '1');
    try {
      await new Promise((res) => setTimeout(res, 100));
      await master.call('SET', 'payload', 'x'.repeat(20_000));
      const r = await probe('redis', { ...local, port: master.port, max_lag_bytes: 1000 });
      expect(r.ok).toBe(false);
      expect(r.reason).toMatch(/^replication lag \d+ bytes is over the limit 1000 bytes$/);
      expect(r.observed.lag_bytes).toBeGreaterThan(20_000);
    } finally {
      await sleeping;
      sleeper.disconnect();
    }
  });

  it("sees the replica's link go down when its master stops", async () => {
    await master.stop();
    const condition = 'master_link_status == "up"';
    const r = await probeUntil({ ...local, port: replica.port }, [condition], (x) => x.observed.master_link_status !== 'up');
    expect(r).toMatchObject({ ok: false, reason: `condition "${condition}" is false (master_link_status="down")` });
    expect(r.observed).toMatchObject({ role: 'replica', master_link_status: 'down', master_last_io_seconds_ago: -1 });
  });
});
