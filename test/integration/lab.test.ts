import { existsSync } from 'node:fs';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { processAlive as alive, startLab, type Lab } from '../lab/lab.js';
import { runStep } from '../helpers/steps.js';

/** Which server a new session through HAProxy's pg frontend reaches, and whether it is a replica. */
async function throughHaproxy(lab: Lab): Promise<{ port: number; inRecovery: boolean }> {
  const client = new pg.Client({ host: '127.0.0.1', port: lab.pgTraffic.port, user: 'postgres', database: 'postgres' });
  client.on('error', () => {});
  await client.connect();
  try {
    const { rows } = await client.query<{ port: number; r: boolean }>('SELECT inet_server_port() AS port, pg_is_in_recovery() AS r');
    return { port: rows[0]!.port, inRecovery: rows[0]!.r };
  } finally {
    await client.end();
  }
}

/** Stops the lab and checks that none of its processes and folders is left. */
async function stopAndExpectGone(lab: Lab): Promise<void> {
  const own = [lab.haproxy.pid, lab.apps.primary.pid, lab.apps.dr.pid];
  // After killPrimary() the dead postmaster's children exit by themselves, at their own pace: a
  // pid listed here may be gone a moment later, so only the lab's own processes must be alive now.
  const pids = [...own, ...lab.primary.processes(), ...lab.replica.processes()];
  const dirs = [lab.dir, lab.primary.dir, lab.replica.dir, lab.sshd.dir];
  expect(own.every(alive)).toBe(true);
  expect(lab.replica.processes().length).toBeGreaterThan(0);
  await lab.stop();
  expect(pids.filter(alive)).toEqual([]);
  expect([...lab.primary.processes(), ...lab.replica.processes()]).toEqual([]);
  expect(dirs.filter((d) => existsSync(d))).toEqual([]);
  // Nothing listens on the lab's addresses any more.
  await expect(fetch(`${lab.webTraffic.url}/health`, { signal: AbortSignal.timeout(2000) })).rejects.toThrow();
  await expect(throughHaproxy(lab)).rejects.toThrow();
}

describe('lab (synchronous replication): write, switch, kill, fail over', () => {
  let lab: Lab;
  /** Every id a write acknowledged so far: none may be missing after the failover. */
  const acked: number[] = [];

  beforeAll(async () => {
    lab = await startLab();
  });
  afterAll(async () => {
    await lab?.stop();
  });

  it('writes through HAProxy land on the primary and, once acknowledged, are on the replica', async () => {
    const [sync] = await lab.primary.query<{ sync_state: string }>(
      'SELECT sync_state FROM pg_stat_replication WHERE application_name = $1',
      [lab.replica.clusterName],
    );
    expect(sync?.sync_state).toBe('sync');
    expect(await throughHaproxy(lab)).toEqual({ port: lab.primary.port, inRecovery: false });

    const w = await lab.write(5, { note: 'first' });
    expect(w.errors).toEqual([]);
    expect(w.ids).toHaveLength(5);
    acked.push(...w.ids);
    // remote_apply: no waiting, an acknowledged write is already visible on the replica.
    expect(await lab.orderIds('primary')).toEqual(w.ids);
    expect(await lab.orderIds('replica')).toEqual(w.ids);
    expect(await lab.countOrders('replica')).toBe(5);
  });

  it('the web frontend is the public endpoint: /health is 200 from the primary site and POST /orders writes there', async () => {
    const health = await fetch(`${lab.webTraffic.url}/health`);
    expect(health.status).toBe(200);
    expect(health.headers.get('x-site')).toBe('primary');
    expect(await health.json()).toMatchObject({ site: 'primary', database: 'primary' });

    const w = await lab.write(2, { via: 'web', note: 'web' });
    expect(w.errors).toEqual([]);
    acked.push(...w.ids);
    expect(await lab.orderIds('replica')).toEqual(acked);

    // The DR site's app sits on a replica: not writable, so not healthy.
    const dr = await fetch(`${lab.apps.dr.url}/health`);
    expect(dr.status).toBe(503);
    expect(await dr.json()).toMatchObject({ site: 'dr', reason: expect.stringMatching(/in recovery/) });
  });

  it('HAProxy has dr in maintenance: exactly one writable primary behind it', async () => {
    const pgServers = await lab.haproxy.servers('pg');
    expect(pgServers.map((s) => [s.name, s.port, s.inTraffic])).toEqual([
      ['primary', lab.primary.port, true],
      ['dr', lab.replica.port, false],
    ]);
    const web = await lab.haproxy.servers('web');
    expect(web.map((s) => [s.name, s.port, s.inTraffic])).toEqual([
      ['primary', lab.apps.primary.port, true],
      ['dr', lab.apps.dr.port, false],
    ]);
    expect(await lab.writablePrimariesBehindHaproxy()).toBe(1);
  });

  it('switching HAProxy with runtime commands moves traffic (here onto the read-only replica, then back)', async () => {
    expect(await lab.haproxy.command('set server pg/primary state maint')).toBe('\n');
    expect(await lab.haproxy.command('set server pg/dr state ready')).toBe('\n');
    expect(await throughHaproxy(lab)).toEqual({ port: lab.replica.port, inRecovery: true });
    const w = await lab.write(1);
    expect(w.ids).toEqual([]);
    expect(w.errors).toEqual([expect.stringMatching(/read-only transaction/)]);
    expect(await lab.writablePrimariesBehindHaproxy()).toBe(0);

    await lab.haproxy.command('set server pg/dr state maint; set server pg/primary state ready');
    expect(await throughHaproxy(lab)).toEqual({ port: lab.primary.port, inRecovery: false });
    expect(await lab.writablePrimariesBehindHaproxy()).toBe(1);
  });

  it('with synchronous replication a paused replica holds commits until it streams again', async () => {
    await lab.pauseReplication();
    const held = await lab.write(1, { timeoutMs: 500 });
    expect(held.ids).toEqual([]);
    expect(held.errors).toEqual([expect.stringMatching(/timeout/i)]);
    await lab.resumeReplication();
    const w = await lab.write(1);
    expect(w.errors).toEqual([]);
    acked.push(...w.ids);
  });

  it('killPrimary() makes writes through HAProxy fail', async () => {
    const pid = await lab.killPrimary();
    expect(alive(pid)).toBe(false);
    const w = await lab.write(2, { timeoutMs: 1000 });
    expect(w.ids).toEqual([]);
    expect(w.errors).toHaveLength(2);
    const web = await lab.write(1, { via: 'web', timeoutMs: 5000 });
    expect(web.ids).toEqual([]);
    expect(web.errors).toEqual([expect.stringMatching(/^HTTP 503/)]);
    expect(await lab.writablePrimariesBehindHaproxy()).toBe(0);
  });

  it('promoting the replica over ssh and switching HAProxy through its runtime API makes writes succeed, with no acknowledged write lost', async () => {
    // Exactly what a runbook would run: an ssh step with the documented argv, a shell step for HAProxy.
    const promote = await runStep('ssh', { ...lab.sshd.stepSettings, argv: lab.replica.argv.promote }, { timeoutMs: 30_000 });
    expect(promote).toMatchObject({ ok: true, result: { exit_code: 0 } });
    const [role] = await lab.replica.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r');
    expect(role?.r).toBe(false);

    const switched = await runStep('shell', { argv: lab.haproxy.commandArgv(lab.haproxy.switchTo('dr')) }, { timeoutMs: 5000 });
    expect(switched).toMatchObject({ ok: true, result: { exit_code: 0 } });
    expect(await lab.haproxy.servers('web')).toMatchObject([
      { name: 'primary', inTraffic: false },
      { name: 'dr', inTraffic: true },
    ]);

    const onDr = await lab.orderIds('replica');
    expect(acked.filter((id) => !onDr.includes(id))).toEqual([]);

    const w = await lab.write(3, { note: 'after failover' });
    expect(w.errors).toEqual([]);
    const web = await lab.write(1, { via: 'web' });
    expect(web.errors).toEqual([]);
    expect(await lab.orderIds('replica')).toEqual(expect.arrayContaining([...acked, ...w.ids, ...web.ids]));
    const health = await fetch(`${lab.webTraffic.url}/health`);
    expect(health.status).toBe(200);
    expect(health.headers.get('x-site')).toBe('dr');
    expect(await lab.writablePrimariesBehindHaproxy()).toBe(1);
  });

  it('restartPrimary() brings the old primary back writable: HAProxy keeps it out, until both are ready (2 writable)', async () => {
    await lab.restartPrimary();
    const [role] = await lab.primary.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r');
    expect(role?.r).toBe(false);
    expect(await lab.writablePrimariesBehindHaproxy()).toBe(1);

    await lab.haproxy.command('set server pg/primary state ready');
    expect(await lab.writablePrimariesBehindHaproxy()).toBe(2);
    await lab.haproxy.command('set server pg/primary state maint');
    expect(await lab.writablePrimariesBehindHaproxy()).toBe(1);
  });

  it('stop() leaves no process and no folder behind', async () => {
    await stopAndExpectGone(lab);
  });
});

describe('lab (asynchronous replication): lag, and the checker seeing two writable primaries', () => {
  let lab: Lab;

  beforeAll(async () => {
    lab = await startLab({ synchronous: false, redisDb: 7 });
  });
  afterAll(async () => {
    await lab?.stop();
  });

  it("uses the machine's Redis in the db it was given", async () => {
    expect(lab.redis).toEqual({ url: 'redis://127.0.0.1:6379/7', db: 7 });
    const r = new Redis(lab.redis!.url, { maxRetriesPerRequest: 1 });
    try {
      expect(await r.ping()).toBe('PONG');
      expect(await r.dbsize()).toBe(0);
    } finally {
      r.disconnect();
    }
  });

  it('pauseReplication() lets the replica fall behind; resumeReplication() catches it up', async () => {
    await lab.pauseReplication();
    const w = await lab.write(3, { timeoutMs: 1000 });
    expect(w.errors).toEqual([]);
    expect(await lab.countOrders('primary')).toBe(3);
    expect(await lab.countOrders('replica')).toBe(0);
    await lab.resumeReplication();
    const deadline = Date.now() + 10_000;
    while ((await lab.countOrders('replica')) < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(await lab.orderIds('replica')).toEqual(w.ids);
  });

  it('the checker sees two writable primaries when the replica is promoted while both servers are ready', async () => {
    await lab.haproxy.command('set server pg/dr state ready');
    expect(await lab.writablePrimariesBehindHaproxy()).toBe(1);
    await lab.replica.node.promote();
    expect(await lab.writablePrimariesBehindHaproxy()).toBe(2);
    const view = await lab.pgServersBehindHaproxy();
    expect(view.map((s) => [s.name, s.inTraffic, s.writable])).toEqual([
      ['primary', true, true],
      ['dr', true, true],
    ]);
  });

  it('stop() after killPrimary() also reaps the dead postmaster’s children and leaves nothing behind', async () => {
    await lab.killPrimary();
    await stopAndExpectGone(lab);
  });
});
