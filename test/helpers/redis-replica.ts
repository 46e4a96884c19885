import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { closedPort } from './net.js';

/** One redis-server of a test setup, on a loopback port, with its own temp folder. */
export interface RedisNode {
  readonly host: '127.0.0.1';
  readonly port: number;
  /** Working folder (log, replication temp files); removed by cleanup(). */
  readonly dir: string;
  readonly running: boolean;
  /** A new client with no retries or queueing; the caller disconnects it. */
  client(): Redis;
  /** Runs one command on a short-lived connection. */
  call(command: string, ...args: Array<string | number>): Promise<unknown>;
  /** One INFO section as a map of its `key:value` lines. */
  info(section?: string): Promise<Map<string, string>>;
  /** Starts the server (again, on the same port) and waits until it answers PING. */
  start(): Promise<void>;
  /** SIGTERM and wait for the exit (a master's replicas see the link close at once). */
  stop(): Promise<void>;
  /** SIGKILL: a crash. */
  kill(): Promise<void>;
  /** Kills the server if it runs and removes its folder. */
  cleanup(): Promise<void>;
}

/** Options of one server. */
export interface RedisOptions {
  /** The port to listen on; a free one when left out. */
  port?: number;
  /** Start as a replica of this server. */
  replicaOf?: { host: string; port: number };
  /** Require this password of clients (`--requirepass`). */
  requirepass?: string;
  /** The password this replica gives its master (`--masterauth`). */
  masterauth?: string;
  /** More redis-server arguments, e.g. ['--maxmemory', '10mb']. */
  args?: string[];
}

const live = new Set<RedisNode>();
const children = new Map<RedisNode, ChildProcess>();

// A test run that dies half-way must not leave redis-servers behind.
process.once('exit', () => {
  for (const node of live) {
    children.get(node)?.kill('SIGKILL');
    rmSync(node.dir, { recursive: true, force: true });
  }
});

function parseInfo(text: string): Map<string, string> {
  const info = new Map<string, string>();
  for (const line of text.split(/\r?\n/)) {
    const colon = line.indexOf(':');
    if (colon > 0 && !line.startsWith('#')) info.set(line.slice(0, colon), line.slice(colon + 1).trim());
  }
  return info;
}

/** Starts a redis-server on 127.0.0.1 with no persistence, as a master or as a replica. */
export async function startRedis(opts: RedisOptions = {}): Promise<RedisNode> {
  const port = opts.port ?? (await closedPort());
  const dir = mkdtempSync(join(tmpdir(), 'continuity-redis-'));
  const args = [
    '--port',
    String(port),
    '--bind',
    '127.0.0.1',
    '--dir',
    dir,
    '--logfile',
    join(dir, 'redis.log'),
    '--save',
    '',
    '--appendonly',
    'no',
    // Full syncs start at once and skip the disk, so a replica is up within milliseconds.
    '--repl-diskless-sync',
    'yes',
    '--repl-diskless-sync-delay',
    '0',
    // Lets a test freeze a server with DEBUG SLEEP to make lag observable.
    '--enable-debug-command',
    'local',
    ...(opts.requirepass !== undefined ? ['--requirepass', opts.requirepass] : []),
    ...(opts.masterauth !== undefined ? ['--masterauth', opts.masterauth] : []),
    ...(opts.replicaOf ? ['--replicaof', opts.replicaOf.host, String(opts.replicaOf.port)] : []),
    ...(opts.args ?? []),
  ];
  const clientOptions = {
    host: '127.0.0.1',
    port,
    password: opts.requirepass,
    lazyConnect: true,
    connectTimeout: 2000,
    commandTimeout: 5000,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    retryStrategy: () => null,
  };

  const exited = () => {
    const child = children.get(node);
    if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
    return new Promise<void>((r) => child.once('exit', () => r()));
  };

  const node: RedisNode = {
    host: '127.0.0.1',
    port,
    dir,
    get running() {
      const child = children.get(node);
      return child !== undefined && child.exitCode === null && child.signalCode === null;
    },
    client() {
      const client = new Redis(clientOptions);
      client.on('error', () => {});
      return client;
    },
    async call(command, ...rest) {
      const client = node.client();
      try {
        await client.connect();
        return await client.call(command, ...rest);
      } finally {
        client.disconnect();
      }
    },
    async info(section = 'replication') {
      return parseInfo(String(await node.call('INFO', section)));
    },
    async start() {
      live.add(node);
      const child = spawn('redis-server', args, { stdio: 'ignore' });
      children.set(node, child);
      const failed = new Promise<never>((_, reject) => {
        child.once('error', reject);
        child.once('exit', (code) => reject(new Error(`redis-server on port ${port} exited with ${code}; see ${join(dir, 'redis.log')}`)));
      });
      failed.catch(() => {});
      const deadline = Date.now() + 10_000;
      for (;;) {
        try {
          if ((await Promise.race([node.call('PING'), failed])) === 'PONG') return;
        } catch (err) {
          if (!node.running || Date.now() > deadline) throw err;
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    async stop() {
      children.get(node)?.kill('SIGTERM');
      await exited();
    },
    async kill() {
      children.get(node)?.kill('SIGKILL');
      await exited();
    },
    async cleanup() {
      await node.kill();
      live.delete(node);
      children.delete(node);
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await node.start();
    return node;
  } catch (err) {
    await node.cleanup();
    throw err;
  }
}

/** Starts a replica of a master and waits until its master_link_status is up. */
export async function startRedisReplica(
  master: { host: string; port: number },
  opts: Omit<RedisOptions, 'replicaOf'> = {},
): Promise<RedisNode> {
  const replica = await startRedis({ ...opts, replicaOf: master });
  try {
    await waitForLink(replica, 'up');
    return replica;
  } catch (err) {
    await replica.cleanup();
    throw err;
  }
}

/** Waits until a replica's master_link_status reads `status`. */
export async function waitForLink(replica: RedisNode, status: 'up' | 'down', timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if ((await replica.info('replication')).get('master_link_status') === status) return;
    if (Date.now() > deadline)
      throw new Error(`redis replica on port ${replica.port}: master_link_status is not ${status} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
