import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closedPort, silentServer } from '../../helpers/net.js';
import { startPgPair, type PgNode } from '../../helpers/pg-cluster.js';
import { probe } from '../../helpers/probe.js';

type Result = Awaited<ReturnType<typeof probe>>;

/** Probes until `done` holds or the deadline passes; returns the last result. */
async function probeUntil(settings: unknown, done: (r: Result) => boolean, conditions: string[] = []): Promise<Result> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const r = await probe('postgres', settings, { conditions });
    if (done(r) || Date.now() > deadline) return r;
    await new Promise((res) => setTimeout(res, 50));
  }
}

describe('postgres prober', () => {
  let silent: Awaited<ReturnType<typeof silentServer>>;
  let cluster: Awaited<ReturnType<typeof startPgPair>>;
  let primary: PgNode;
  let replica: PgNode;
  const password = 'correct horse battery';
  const as = (node: PgNode, extra: Record<string, unknown> = {}) => ({
    host: node.host,
    port: node.port,
    user: 'postgres',
    database: 'postgres',
    ...extra,
  });

  beforeAll(async () => {
    silent = await silentServer();
    // The machine's clusters trust everyone; this one asks one role for its password.
    cluster = await startPgPair({ primary: { hba: ['host all monitor 127.0.0.1/32 scram-sha-256'] } });
    ({ primary, replica } = cluster);
    await primary.query(`CREATE ROLE monitor LOGIN PASSWORD '${password}'`);
    // A committed transaction on the replica gives pg_last_xact_replay_timestamp() a value.
    await primary.query('CREATE TABLE filler (id serial, pad text)');
  });
  afterAll(async () => {
    await silent?.close();
    await cluster?.cleanup();
  });

  it("succeeds against the machine's PostgreSQL and sees a primary", async () => {
    const r = await probe('postgres', { host: '127.0.0.1', user: 'postgres', database: 'postgres', expect_role: 'primary' });
    expect(r).toMatchObject({ ok: true, reason: 'ok', observed: { role: 'primary', wal_receiver_streaming: false, replay_paused: false } });
    expect(r.observed.wal_lsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
  });

  it('reports a refused connection in the words of the OS', async () => {
    const port = await closedPort();
    const r = await probe('postgres', { host: '127.0.0.1', port, user: 'postgres', database: 'postgres' });
    expect(r).toMatchObject({ ok: false, reason: `connect ECONNREFUSED 127.0.0.1:${port}` });
  });

  it('times out against a peer that accepts and never answers', async () => {
    const r = await probe('postgres', { host: '127.0.0.1', port: silent.port, user: 'postgres', database: 'postgres' }, { timeoutMs: 250 });
    expect(r).toMatchObject({ ok: false, reason: 'timed out after 250ms' });
    expect(r.durationSeconds).toBeLessThan(3);
  });

  it('drops its connection when the run is aborted', async () => {
    const peer = await silentServer();
    try {
      const port = peer.port;
      const r = await probe('postgres', { host: '127.0.0.1', port, user: 'postgres', database: 'postgres' }, { timeoutMs: 200 });
      expect(r.reason).toBe('timed out after 200ms');
      await expect.poll(() => peer.open(), { timeout: 1000 }).toBe(0);
    } finally {
      await peer.close();
    }
  });

  it('reports a wrong password without echoing it', async () => {
    const r = await probe('postgres', as(primary, { user: 'monitor', password: 'not the password' }));
    expect(r).toMatchObject({ ok: false, reason: 'password authentication failed for user "monitor"' });
    expect(JSON.stringify(r)).not.toContain('not the password');
  });

  it('insists on TLS when sslmode asks for it', async () => {
    expect(await probe('postgres', as(primary, { sslmode: 'require' }))).toMatchObject({
      ok: false,
      reason: 'The server does not support SSL connections',
    });
  });

  it('asks for pg_monitor rather than reading hidden replication status as "no replicas"', async () => {
    const settings = as(primary, { user: 'monitor', password });
    expect(await probe('postgres', settings)).toMatchObject({
      ok: false,
      reason: 'role "monitor" needs pg_monitor (or pg_read_all_stats) to read replication status',
    });
    await primary.query('GRANT pg_monitor TO monitor');
    expect(await probe('postgres', settings)).toMatchObject({ ok: true, observed: { role: 'primary', replicas: 1 } });
  });

  it('fails when the role is not the expected one', async () => {
    expect(await probe('postgres', as(primary, { expect_role: 'replica' }))).toMatchObject({
      ok: false,
      reason: 'expected role replica, found primary',
    });
    expect(await probe('postgres', as(replica, { expect_role: 'primary' }))).toMatchObject({
      ok: false,
      reason: 'expected role primary, found replica',
    });
  });

  it('applies conditions to what it observed', async () => {
    const r = await probe('postgres', as(primary), { conditions: ['replicas >= 2'] });
    expect(r).toMatchObject({ ok: false, reason: 'condition "replicas >= 2" is false (replicas=1)' });
  });

  it('sees the primary with its streaming replica, within the lag limits', async () => {
    const r = await probe('postgres', as(primary, { expect_role: 'primary', max_lag_seconds: 5, max_lag_bytes: 1_000_000 }));
    expect(r).toMatchObject({ ok: true, observed: { role: 'primary', replicas: 1, wal_receiver_status: 'none', replay_paused: false } });
    expect(r.observed.lag_bytes).toBeGreaterThanOrEqual(0);
  });

  it('sees the replica as a replica that still streams from its primary', async () => {
    const r = await probe('postgres', as(replica, { expect_role: 'replica', max_lag_seconds: 5, max_lag_bytes: 1_000_000 }), {
      conditions: ['wal_receiver_streaming && wal_receiver_last_msg_age_seconds < 5.0'],
    });
    expect(r).toMatchObject({
      ok: true,
      observed: {
        role: 'replica',
        replicas: 0,
        wal_receiver_status: 'streaming',
        wal_receiver_streaming: true,
        upstream_host: '127.0.0.1',
        upstream_port: primary.port,
        replay_paused: false,
      },
    });
    expect(r.observed.lag_seconds).toBeGreaterThanOrEqual(0);
    expect(r.observed.wal_lsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
  });

  it('reports lag over the limit from both sides while replay is paused', async () => {
    await replica.query('SELECT pg_wal_replay_pause()');
    try {
      await primary.query(`INSERT INTO filler (pad) SELECT repeat('x', 1000) FROM generate_series(1, 100)`);
      const over = (unit: string) => (r: Result) => !r.ok && r.reason.endsWith(unit);

      const replicaBytes = await probeUntil(as(replica, { max_lag_bytes: 10_000 }), over('bytes'));
      expect(replicaBytes.reason).toMatch(/^replication lag \d+ bytes is over the limit 10000 bytes$/);
      expect(replicaBytes.observed).toMatchObject({ replay_paused: true, wal_receiver_streaming: true });

      const primaryBytes = await probeUntil(as(primary, { max_lag_bytes: 10_000 }), over('bytes'));
      expect(primaryBytes.reason).toMatch(/^replication lag \d+ bytes is over the limit 10000 bytes$/);

      const replicaSeconds = await probeUntil(as(replica, { max_lag_seconds: 0.5 }), over(' s'));
      expect(replicaSeconds.reason).toMatch(/^replication lag [\d.]+ s is over the limit 0\.5 s$/);
      expect(replicaSeconds.observed.lag_seconds).toBeGreaterThan(0.5);

      // The primary learns replay_lag from the replica's status reports, once a second here.
      const primarySeconds = await probeUntil(as(primary, { max_lag_seconds: 0.5 }), over(' s'));
      expect(primarySeconds.reason).toMatch(/^replication lag [\d.]+ s is over the limit 0\.5 s$/);
    } finally {
      await replica.query('SELECT pg_wal_replay_resume()');
    }
    const caughtUp = await probeUntil(as(replica, { max_lag_bytes: 0 }), (r) => r.ok);
    expect(caughtUp).toMatchObject({ ok: true, observed: { lag_bytes: 0, lag_seconds: 0, replay_paused: false } });
  });

  it('sees the replica stop streaming when its primary goes away', async () => {
    await primary.stop();
    const condition = 'wal_receiver_streaming';
    const r = await probeUntil(as(replica), (x) => x.observed.wal_receiver_streaming === false, [condition]);
    expect(r).toMatchObject({
      ok: false,
      reason: `condition "${condition}" is false (wal_receiver_streaming=false)`,
      observed: { role: 'replica', wal_receiver_streaming: false },
    });
    expect(r.observed.wal_receiver_status).not.toBe('streaming');
    // Without the condition the replica itself is healthy: it still answers, as a replica.
    expect(await probe('postgres', as(replica, { expect_role: 'replica' }))).toMatchObject({ ok: true });
  });
});
