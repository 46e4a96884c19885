import { execFile, execFileSync } from 'node:child_process';
import { appendFileSync, chownSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { closedPort } from './net.js';

const run = promisify(execFile);

/** Where PostgreSQL's server binaries live (off PATH on Debian); PG_BIN overrides. */
export const PG_BIN = process.env.PG_BIN ?? '/usr/lib/postgresql/15/bin';

/** One PostgreSQL server of a test cluster, in its own temp folder, owned by the postgres user. */
export interface PgNode {
  readonly name: string;
  readonly host: '127.0.0.1';
  readonly port: number;
  /** The temp folder holding the data directory, the log and the socket; removed by cleanup(). */
  readonly dir: string;
  readonly dataDir: string;
  readonly logFile: string;
  /** Whether the server was started and not since stopped by this handle. */
  readonly running: boolean;
  /** Runs one statement as the superuser on a short-lived connection; returns its rows. */
  query<R extends Record<string, unknown> = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<R[]>;
  /** Starts the server (again) and waits until it accepts connections. */
  start(): Promise<void>;
  /** A clean shutdown (`pg_ctl stop -m fast`). */
  stop(): Promise<void>;
  /** An immediate shutdown (`-m immediate`): no checkpoint, as close to a crash as pg_ctl goes. */
  kill(): Promise<void>;
  /** Promotes a replica to a primary and waits until it is one. */
  promote(): Promise<void>;
  /** Stops the server at once if it runs and removes its folder. */
  cleanup(): Promise<void>;
}

/** Options shared by primaries and replicas. */
export interface PgNodeOptions {
  /** The port to listen on; a free one when left out. */
  port?: number;
  /** Extra postgresql.conf settings, appended after the harness's own (so they win). */
  conf?: Record<string, string | number | boolean>;
}

/** Options of a primary. */
export interface PgPrimaryOptions extends PgNodeOptions {
  /** pg_hba.conf lines put before initdb's trust lines, e.g. to require a password of one role. */
  hba?: string[];
}

const live = new Set<PgNode>();

// A test run that dies half-way must not leave postmasters behind on the machine.
process.once('exit', () => {
  for (const node of live) {
    try {
      execFileSync('runuser', ['-u', 'postgres', '--', join(PG_BIN, 'pg_ctl'), '-D', node.dataDir, '-m', 'immediate', '-w', 'stop'], {
        stdio: 'ignore',
        timeout: 10_000,
      });
    } catch {
      // already down
    }
    rmSync(node.dir, { recursive: true, force: true });
  }
});

function asPostgres(bin: string, args: string[], timeoutMs = 60_000): Promise<{ stdout: string; stderr: string }> {
  return run('runuser', ['-u', 'postgres', '--', join(PG_BIN, bin), ...args], { timeout: timeoutMs, cwd: tmpdir() }).catch(
    (err: Error & { stderr?: string }) => {
      throw new Error(`${bin} ${args.join(' ')} failed: ${err.stderr?.trim() || err.message}`);
    },
  );
}

function postgresUid(): { uid: number; gid: number } {
  const line = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('postgres:'));
  if (!line) throw new Error('there is no postgres user on this machine');
  const [, , uid, gid] = line.split(':');
  return { uid: Number(uid), gid: Number(gid) };
}

function confLines(settings: Record<string, string | number | boolean>): string {
  return Object.entries(settings)
    .map(([k, v]) => `${k} = ${typeof v === 'string' ? `'${v.replace(/'/g, "''")}'` : String(v)}\n`)
    .join('');
}

async function makeNode(name: string, dir: string, port: number): Promise<PgNode> {
  const dataDir = join(dir, 'data');
  const logFile = join(dir, 'postgres.log');
  let running = false;
  const pgCtl = (args: string[]) => asPostgres('pg_ctl', ['-D', dataDir, ...args]);
  const node: PgNode = {
    name,
    host: '127.0.0.1',
    port,
    dir,
    dataDir,
    logFile,
    get running() {
      return running;
    },
    async query(sql, params) {
      const client = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres', connectionTimeoutMillis: 5000 });
      client.on('error', () => {});
      try {
        await client.connect();
        return (await client.query(sql, params)).rows;
      } finally {
        await client.end().catch(() => {});
      }
    },
    async start() {
      live.add(node);
      await pgCtl(['-l', logFile, '-w', '-t', '60', 'start']);
      running = true;
    },
    async stop() {
      await pgCtl(['-m', 'fast', '-w', 'stop']);
      running = false;
    },
    async kill() {
      await pgCtl(['-m', 'immediate', '-w', 'stop']);
      running = false;
    },
    async promote() {
      await pgCtl(['-w', 'promote']);
    },
    async cleanup() {
      if (running) await node.kill().catch(() => {});
      live.delete(node);
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return node;
}

function tempFolder(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const { uid, gid } = postgresUid();
  chownSync(dir, uid, gid);
  return dir;
}

/** Settings every node gets: loopback only, its own socket folder, small and fast, ready to stream. */
function baseConf(name: string, dir: string, port: number): Record<string, string | number | boolean> {
  return {
    listen_addresses: '127.0.0.1',
    port,
    unix_socket_directories: dir,
    cluster_name: name,
    shared_buffers: '16MB',
    max_connections: 30,
    fsync: false,
    synchronous_commit: 'off',
    full_page_writes: false,
    wal_level: 'replica',
    max_wal_senders: 5,
    max_replication_slots: 5,
    wal_keep_size: '128MB',
    // Replicas report their positions every second and retry a lost primary quickly, so lag and
    // reconnects show up in tests within a second rather than the default 5-10 s.
    wal_receiver_status_interval: '1s',
    wal_retrieve_retry_interval: '500ms',
    hot_standby: true,
  };
}

/** Creates and starts a primary: initdb with trust auth for local and 127.0.0.1, wal_level replica. */
export async function startPgPrimary(opts: PgPrimaryOptions = {}): Promise<PgNode> {
  const port = opts.port ?? (await closedPort());
  const name = `primary${port}`;
  const dir = tempFolder('continuity-pg-');
  const node = await makeNode(name, dir, port);
  try {
    await asPostgres('initdb', ['-D', node.dataDir, '-U', 'postgres', '--auth=trust', '--no-sync', '--encoding=UTF8', '--locale=C']);
    appendFileSync(join(node.dataDir, 'postgresql.conf'), confLines({ ...baseConf(name, dir, port), ...opts.conf }));
    if (opts.hba?.length) {
      const hbaFile = join(node.dataDir, 'pg_hba.conf');
      // The first matching line wins, so the caller's lines go before initdb's trust lines.
      writeFileSync(hbaFile, `${opts.hba.join('\n')}\n${readFileSync(hbaFile, 'utf8')}`);
    }
    await node.start();
    return node;
  } catch (err) {
    await node.cleanup();
    throw err;
  }
}

/**
 * Creates a streaming replica of a primary with `pg_basebackup -R`, starts it and waits until the
 * primary's pg_stat_replication shows it streaming.
 */
export async function startPgReplica(primary: PgNode, opts: PgNodeOptions = {}): Promise<PgNode> {
  const port = opts.port ?? (await closedPort());
  const name = `replica${port}`;
  const dir = tempFolder('continuity-pg-');
  const node = await makeNode(name, dir, port);
  try {
    await asPostgres('pg_basebackup', [
      '-h',
      primary.host,
      '-p',
      String(primary.port),
      '-U',
      'postgres',
      '-D',
      node.dataDir,
      '-R',
      '-X',
      'stream',
      '-c',
      'fast',
      '--no-sync',
    ]);
    // The backup copied the primary's postgresql.conf; later lines override its port and folders.
    appendFileSync(join(node.dataDir, 'postgresql.conf'), confLines({ ...baseConf(name, dir, port), ...opts.conf }));
    await node.start();
    await waitForStreaming(primary, name);
    return node;
  } catch (err) {
    await node.cleanup();
    throw err;
  }
}

/** Waits until the primary's pg_stat_replication shows the named replica (its cluster_name) streaming. */
export async function waitForStreaming(primary: PgNode, replicaName: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const rows = await primary.query(`SELECT 1 FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'`, [
      replicaName,
    ]);
    if (rows.length > 0) return;
    if (Date.now() > deadline) throw new Error(`replica ${replicaName} is not streaming from ${primary.name} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A primary and one streaming replica; cleanup() stops both and removes their folders. */
export async function startPgPair(
  opts: { primary?: PgPrimaryOptions; replica?: PgNodeOptions } = {},
): Promise<{ primary: PgNode; replica: PgNode; cleanup(): Promise<void> }> {
  const primary = await startPgPrimary(opts.primary);
  try {
    const replica = await startPgReplica(primary, opts.replica);
    return {
      primary,
      replica,
      async cleanup() {
        await Promise.all([replica.cleanup(), primary.cleanup()]);
      },
    };
  } catch (err) {
    await primary.cleanup();
    throw err;
  }
}
