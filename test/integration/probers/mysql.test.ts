import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import mysql2 from 'mysql2/promise';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closedPort, silentServer } from '../../helpers/net.js';
import { probe } from '../../helpers/probe.js';

const local = { host: '127.0.0.1' };

/** A throwaway mariadbd in a temp folder: no grant checks, so the replica logs in as root freely. */
interface Mariadb {
  port: number;
  query(sql: string): Promise<unknown>;
  stop(): Promise<void>;
  cleanup(): Promise<void>;
}

const children = new Set<ChildProcess>();
process.once('exit', () => children.forEach((c) => c.kill('SIGKILL')));

function mysqlUid(): { uid: number; gid: number } {
  const line = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('mysql:'));
  const [, , uid, gid] = (line ?? '').split(':');
  return { uid: Number(uid), gid: Number(gid) };
}

async function startMariadb(args: string[]): Promise<Mariadb> {
  const port = await closedPort();
  const dir = mkdtempSync(join(tmpdir(), 'continuity-mariadb-'));
  const { uid, gid } = mysqlUid();
  chownSync(dir, uid, gid);
  // Its own tmpdir: in the shared /tmp, temporary-table names of two servers can collide (seen in CI).
  mkdirSync(join(dir, 'tmp'));
  chownSync(join(dir, 'tmp'), uid, gid);
  const small = ['--innodb-buffer-pool-size=8M', '--innodb-log-file-size=4M', `--tmpdir=${dir}/tmp`];
  await promisify(execFile)('mariadb-install-db', ['--no-defaults', `--datadir=${dir}/data`, '--user=mysql', '--skip-test-db', ...small]);
  const child = spawn(
    'mariadbd',
    [
      '--no-defaults',
      `--datadir=${dir}/data`,
      '--user=mysql',
      `--port=${port}`,
      '--bind-address=127.0.0.1',
      `--socket=${dir}/sock`,
      `--pid-file=${dir}/pid`,
      `--log-error=${dir}/error.log`,
      '--skip-grant-tables',
      '--skip-name-resolve',
      ...small,
      ...args,
    ],
    { stdio: 'ignore' },
  );
  children.add(child);
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const query = async (sql: string) => {
    const conn = await mysql2.createConnection({ ...local, port, user: 'root' });
    try {
      return (await conn.query(sql))[0];
    } finally {
      await conn.end();
    }
  };
  const node: Mariadb = {
    port,
    query,
    async stop() {
      child.kill('SIGTERM');
      await exited;
    },
    async cleanup() {
      child.kill('SIGKILL');
      await exited;
      children.delete(child);
      rmSync(dir, { recursive: true, force: true });
    },
  };
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      await query('SELECT 1');
      return node;
    } catch (err) {
      if (Date.now() > deadline || child.exitCode !== null) {
        await node.cleanup();
        throw err;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

async function until<T>(get: () => Promise<T>, done: (v: T) => boolean, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await get();
    if (done(v) || Date.now() > deadline) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('mysql prober', () => {
  let silent: Awaited<ReturnType<typeof silentServer>>;
  let primary: Mariadb;
  let replica: Mariadb;

  beforeAll(async () => {
    silent = await silentServer();
    [primary, replica] = await Promise.all([
      startMariadb(['--server-id=1', '--log-bin=binlog']),
      startMariadb(['--server-id=2', '--skip-log-bin', '--read-only']),
    ]);
    await primary.query('CREATE DATABASE app');
    await primary.query('CREATE TABLE app.t (id int primary key auto_increment, v text)');
    await replica.query(
      `CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=${primary.port}, MASTER_USER='root', MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos`,
    );
    await replica.query('START SLAVE');
    await until(
      () => replica.query('SHOW DATABASES LIKE "app"') as Promise<unknown[]>,
      (rows) => rows.length === 1,
    );
  });
  afterAll(async () => {
    await silent?.close();
    await Promise.all([replica?.cleanup(), primary?.cleanup()]);
  });

  it("succeeds against the machine's MariaDB and observes the first row of a query", async () => {
    const r = await probe('mysql', { ...local, user: 'root', query: "SELECT 42 AS answer, 'x' AS s UNION ALL SELECT 7, 'y'" });
    expect(r).toMatchObject({
      ok: true,
      reason: 'ok',
      observed: { role: 'primary', read_only: false, replica_io_running: false, lag_seconds: 0, rows: 2, row: { answer: 42, s: 'x' } },
    });
  });

  it('reports a refused connection in the words of the OS', async () => {
    const port = await closedPort();
    expect(await probe('mysql', { ...local, port, user: 'root' })).toMatchObject({
      ok: false,
      reason: `connect ECONNREFUSED 127.0.0.1:${port}`,
    });
  });

  it('times out against a peer that accepts and never answers', async () => {
    const r = await probe('mysql', { ...local, port: silent.port, user: 'root' }, { timeoutMs: 250 });
    expect(r).toMatchObject({ ok: false, reason: 'timed out after 250ms' });
    expect(r.durationSeconds).toBeLessThan(3);
  });

  it('drops its connection when the run is aborted', async () => {
    const peer = await silentServer();
    try {
      const r = await probe('mysql', { ...local, port: peer.port, user: 'root' }, { timeoutMs: 200 });
      expect(r.reason).toBe('timed out after 200ms');
      await expect.poll(() => peer.open(), { timeout: 1000 }).toBe(0);
    } finally {
      await peer.close();
    }
  });

  it('reports a wrong password without echoing it', async () => {
    const r = await probe('mysql', { ...local, user: 'root', password: 'not the password' });
    expect(r.ok).toBe(false);
    // The host part is how the server names this client: 127.0.0.1, or localhost if it resolves names.
    expect(r.reason).toMatch(/^Access denied for user 'root'@'(127\.0\.0\.1|localhost)' \(using password: YES\)$/);
    expect(JSON.stringify(r)).not.toContain('not the password');
  });

  it('fails when the role is not the expected one', async () => {
    expect(await probe('mysql', { ...local, user: 'root', expect_role: 'replica' })).toMatchObject({
      ok: false,
      reason: 'expected role replica, found primary',
    });
  });

  it('applies conditions to the first row of the query', async () => {
    const r = await probe(
      'mysql',
      { ...local, user: 'root', query: 'SELECT 42 AS answer' },
      { conditions: ['row.answer == 41', 'rows == 1'] },
    );
    expect(r).toMatchObject({ ok: false, reason: 'condition "row.answer == 41" is false' });
  });

  it('runs the query read-only, so a mistaken write fails', async () => {
    const r = await probe('mysql', {
      ...local,
      port: primary.port,
      user: 'root',
      query: "INSERT INTO app.t (v) VALUES ('written by a probe')",
    });
    expect(r).toMatchObject({ ok: false, reason: 'Cannot execute statement in a READ ONLY transaction' });
    expect(await primary.query('SELECT count(*) AS n FROM app.t')).toEqual([{ n: 0 }]);
  });

  it('sees a real replica with both threads running and no lag', async () => {
    const r = await probe('mysql', { ...local, port: replica.port, user: 'root', expect_role: 'replica', max_lag_seconds: 0 });
    expect(r).toMatchObject({
      ok: true,
      observed: {
        role: 'replica',
        read_only: true,
        replica_io_running: true,
        replica_sql_running: true,
        lag_seconds: 0,
        source_host: '127.0.0.1',
        source_port: primary.port,
        last_error: '',
      },
    });
    expect(await probe('mysql', { ...local, port: replica.port, user: 'root', expect_role: 'primary' })).toMatchObject({
      ok: false,
      reason: 'expected role primary, found replica',
    });
  });

  it('calls lag unknown while the SQL thread is stopped', async () => {
    await replica.query('STOP SLAVE SQL_THREAD');
    try {
      const r = await probe('mysql', { ...local, port: replica.port, user: 'root', max_lag_seconds: 5 });
      expect(r).toMatchObject({ ok: false, reason: 'replication lag is unknown: the SQL thread is not running' });
      expect(r.observed).toMatchObject({ replica_io_running: true, replica_sql_running: false });
      expect(r.observed).not.toHaveProperty('lag_seconds');
    } finally {
      await replica.query('START SLAVE SQL_THREAD');
    }
  });

  it('reports lag over the limit while the replica cannot apply', async () => {
    // A global read lock on the replica holds the SQL thread at the next event, which then ages.
    const lock = await mysql2.createConnection({ ...local, port: replica.port, user: 'root' });
    try {
      await lock.query('FLUSH TABLES WITH READ LOCK');
      await primary.query("INSERT INTO app.t (v) VALUES ('held back')");
      const r = await until(
        () => probe('mysql', { ...local, port: replica.port, user: 'root', max_lag_seconds: 0 }),
        (x) => !x.ok,
      );
      expect(r.reason).toMatch(/^replication lag [1-9]\d* s is over the limit 0 s$/);
    } finally {
      await lock.query('UNLOCK TABLES');
      await lock.end();
    }
  });

  it('sees the IO thread stop when the primary goes away', async () => {
    await primary.stop();
    const r = await until(
      () => probe('mysql', { ...local, port: replica.port, user: 'root', max_lag_seconds: 5 }),
      (x) => x.observed.replica_io_running === false,
    );
    expect(r.ok).toBe(false);
    expect(r.reason).toMatch(/^replication lag is unknown: the IO thread is not running \(.*\)$/);
    expect(r.observed).toMatchObject({ role: 'replica', replica_io_running: false, replica_sql_running: true });
  });
});
