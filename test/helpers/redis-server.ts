import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { closedPort } from './net.js';

export interface RedisServerOptions {
  bin?: string;
  timeoutMs?: number;
  graceMs?: number;
  /** AOF persistence (default off: nothing is saved to disk). */
  appendonly?: boolean;
  /** With `appendonly`: when the AOF is fsynced (default `always`, so nothing acknowledged is lost). */
  appendfsync?: 'always' | 'everysec' | 'no';
  /** More redis-server arguments, e.g. ['--replicaof', '127.0.0.1', '6380']. */
  args?: string[];
  /** Run as a Sentinel watching this master (quorum 1, down after 1 s, failover timeout 5 s). */
  sentinelOf?: { name: string; port: number };
}

export interface TestRedisServer {
  url: string;
  port: number;
  /** Its working folder (the AOF is kept there across `kill` and `restart`). */
  dir: string;
  /** Stops it (SIGTERM, then SIGKILL after `graceMs`) and removes its folder. */
  stop(): Promise<void>;
  /** Sends `signal` (SIGKILL by default) and waits for it to exit; the folder is kept. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Starts it again on the same port and folder (after `kill`), waited for by PING. */
  restart(): Promise<void>;
  /** Whether a redis-server process of this helper is running. */
  running(): boolean;
}

/**
 * A private redis-server on a free 127.0.0.1 port, in a temporary folder: for a test file that must
 * not touch the machine's Redis (its 16 databases belong to other test files). By default nothing
 * is saved to disk; `appendonly: true` turns AOF on (fsync always by default), and `kill()` then
 * `restart()` bring it back on the same port with the same data, as a real Redis restart does.
 */
export async function startRedisServer(opts: RedisServerOptions = {}): Promise<TestRedisServer> {
  const dir = mkdtempSync(join(tmpdir(), 'continuity-redis-'));
  const persistence = opts.appendonly ? ['--appendonly', 'yes', '--appendfsync', opts.appendfsync ?? 'always'] : ['--appendonly', 'no'];
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let output = '';

  const spawnOn = (port: number) => {
    let argv = ['--save', '', ...persistence, '--port', String(port), '--bind', '127.0.0.1', '--dir', dir, ...(opts.args ?? [])];
    if (opts.sentinelOf) {
      // A sentinel rewrites its config file: it must be a file of its own.
      const conf = join(dir, 'sentinel.conf');
      const { name, port: master } = opts.sentinelOf;
      writeFileSync(
        conf,
        [
          `sentinel monitor ${name} 127.0.0.1 ${master} 1`,
          `sentinel down-after-milliseconds ${name} 1000`,
          `sentinel failover-timeout ${name} 5000`,
          '',
        ].join('\n'),
      );
      argv = [conf, '--sentinel', '--port', String(port), '--bind', '127.0.0.1', '--dir', dir];
    }
    const c = spawn(opts.bin ?? '/usr/bin/redis-server', argv, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    output = '';
    c.stdout!.on('data', (d: Buffer) => (output = (output + d.toString()).slice(-4000)));
    c.stderr!.on('data', (d: Buffer) => (output = (output + d.toString()).slice(-4000)));
    child = c;
    exited = new Promise<void>((r) => c.once('exit', () => r()));
    return c;
  };
  const isRunning = () => !!child && child.exitCode === null && child.signalCode === null;
  const kill = async (signal: NodeJS.Signals = 'SIGKILL', graceMs = opts.graceMs ?? 5000) => {
    if (!isRunning()) return;
    const c = child!;
    c.kill(signal);
    const killer = signal === 'SIGKILL' ? undefined : setTimeout(() => c.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(killer);
  };

  // A port is free when we look and may be taken before redis binds it: try a few.
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await closedPort();
    const c = spawnOn(port);
    try {
      await waitForPing(port, c, exited, opts.timeoutMs ?? 10_000);
      return {
        url: `redis://127.0.0.1:${port}`,
        port,
        dir,
        stop: async () => {
          await kill('SIGTERM');
          rmSync(dir, { recursive: true, force: true });
        },
        kill: (signal) => kill(signal ?? 'SIGKILL'),
        restart: async () => {
          if (isRunning()) throw new Error('redis-server is still running: kill it first');
          // The port was ours a moment ago; nothing else on this machine is expected to take it.
          const again = spawnOn(port);
          try {
            await waitForPing(port, again, exited, opts.timeoutMs ?? 10_000);
          } catch (err) {
            throw new Error(`redis-server did not restart on port ${port}: ${(err as Error).message}\n${output}`, { cause: err });
          }
        },
        running: isRunning,
      };
    } catch (err) {
      await kill('SIGTERM', 1000);
      lastError = new Error(`redis-server on port ${port} did not start: ${(err as Error).message}\n${output}`);
    }
  }
  rmSync(dir, { recursive: true, force: true });
  throw lastError!;
}

async function waitForPing(port: number, child: ChildProcess, exited: Promise<void>, timeoutMs: number): Promise<void> {
  let gone = false;
  void exited.then(() => (gone = true));
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (gone) throw new Error(`exited with ${child.exitCode ?? child.signalCode}`);
    const r = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    r.on('error', () => {});
    try {
      await r.connect();
      // While it loads the AOF, Redis answers LOADING: not ready yet.
      if ((await r.ping()) === 'PONG') return;
    } catch {
      // not listening (or loading) yet
    } finally {
      r.disconnect();
    }
    if (Date.now() > end) throw new Error(`no PONG within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
