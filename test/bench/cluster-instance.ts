import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeConfig } from '../helpers/config.js';
import { closedPort } from '../helpers/net.js';
import { logTail, stopChild } from './child.js';

/**
 * The cluster bench's pieces: a daemon instance as a child process (`node bin/continuity.js daemon`,
 * the real CLI, as the cluster integration tests start it), its /metrics read and summed, and a TCP
 * server that only counts the connections it accepts (the probes' target, light enough to share
 * the machine with the daemons it measures).
 */

const CLI = fileURLToPath(new URL('../../bin/continuity.js', import.meta.url));
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** Every child of the bench: killed on any exit of the bench, even an uncaught error. */
const children = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      // gone
    }
  }
});

export interface InstanceFiles {
  /** continuity.yaml, with `{{port}}` where the listen port goes. */
  config: string;
  /** probes/*.yaml */
  probes: Record<string, string>;
  /** runbooks/<name>/v<N>.yaml by relative path, e.g. 'promote-replica/v1.yaml'. */
  runbooks?: Record<string, string>;
}

export class Instance {
  readonly child: ChildProcess;
  readonly exited: Promise<void>;
  private constructor(
    readonly name: string,
    readonly port: number,
    readonly dir: string,
    readonly logPath: string,
    child: ChildProcess,
  ) {
    this.child = child;
    this.exited = new Promise<void>((r) => child.once('exit', () => r()));
  }

  /** Writes the instance's folder (config, probes, runbooks) and starts the daemon; returns once it answers /healthz. */
  static async start(name: string, files: InstanceFiles, timeoutMs = 120_000): Promise<Instance> {
    const port = await closedPort();
    const cfg = writeConfig({ config: files.config.replaceAll('{{port}}', String(port)), probes: files.probes });
    for (const [rel, text] of Object.entries(files.runbooks ?? {})) {
      const path = join(cfg.dir, 'runbooks', rel);
      mkdirSync(join(path, '..'), { recursive: true });
      writeFileSync(path, text);
    }
    mkdirSync(join(cfg.dir, 'runbooks'), { recursive: true });
    const logPath = join(cfg.dir, 'daemon.log');
    const fd = openSync(logPath, 'a');
    let child: ChildProcess;
    try {
      child = spawn(process.execPath, [CLI, 'daemon', '-c', cfg.configPath], { cwd: ROOT, stdio: ['ignore', fd, fd] });
    } finally {
      closeSync(fd);
    }
    children.add(child);
    const inst = new Instance(name, port, cfg.dir, logPath, child);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (!inst.alive) throw new Error(`${name} exited (${child.exitCode ?? child.signalCode}) before it answered:\n${inst.logTail()}`);
      const ok = await fetch(`${inst.url}/healthz`, { signal: AbortSignal.timeout(2000) }).then(
        (r) => r.ok,
        () => false,
      );
      if (ok) return inst;
      if (Date.now() > deadline) {
        const tail = inst.logTail();
        await inst.stop();
        throw new Error(`${name} did not answer within ${timeoutMs / 1000} s:\n${tail}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get pid(): number {
    return this.child.pid!;
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  logTail(lines = 30): string {
    return logTail(this.logPath, lines);
  }

  /** The whole log (for counting lines of a kind). */
  log(): string {
    try {
      return readFileSync(this.logPath, 'utf8');
    } catch {
      return '';
    }
  }

  /** Rewrites one probes file (then `reload()`). */
  writeProbes(file: string, text: string): void {
    writeFileSync(join(this.dir, 'probes', file), text);
  }

  reload(): void {
    this.child.kill('SIGHUP');
  }

  async get<T>(path: string, token?: string, timeoutMs = 5000): Promise<T> {
    const res = await fetch(this.url + path, {
      headers: token ? { authorization: `Bearer ${token}` } : {},
      signal: AbortSignal.timeout(timeoutMs),
    });
    if (!res.ok) throw new Error(`${this.name} GET ${path}: HTTP ${res.status}`);
    return (await res.json()) as T;
  }

  /** /metrics, parsed (30 s timeout: a loaded daemon renders slowly). */
  async metrics(): Promise<MetricsText> {
    const res = await fetch(`${this.url}/metrics`, { signal: AbortSignal.timeout(30_000) });
    if (!res.ok) throw new Error(`${this.name} /metrics: HTTP ${res.status}`);
    return new MetricsText(await res.text());
  }

  /** CPU seconds (user + system) the process has used so far, from /proc. */
  cpuSeconds(): number {
    return procCpuSeconds(this.pid);
  }

  kill9(): void {
    this.child.kill('SIGKILL');
  }

  /** SIGTERM (SIGKILL after 5 s), then removes its folder. */
  async stop(): Promise<void> {
    if (this.alive) await stopChild(this.child, 5000);
    children.delete(this.child);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** CPU seconds (user + system) of a process, from /proc/<pid>/stat; NaN when it cannot be read. */
export function procCpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the command.
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return NaN;
  }
}

/** A Prometheus text exposition, read just enough: the sum of a metric's samples, filtered by a label. */
export class MetricsText {
  constructor(readonly text: string) {}

  /** Sum of every sample of `name` (exact name; labels optional) whose label set contains `labelFilter`. */
  sum(name: string, labelFilter = ''): number {
    let total = 0;
    for (const line of this.text.split('\n')) {
      if (!line.startsWith(name)) continue;
      const rest = line.slice(name.length);
      if (rest[0] !== '{' && rest[0] !== ' ') continue;
      if (labelFilter && !rest.includes(labelFilter)) continue;
      total += Number(line.slice(line.lastIndexOf(' ') + 1));
    }
    return total;
  }

  /** Sums of `name`'s samples by the value of one label (e.g. runs by probe). */
  byLabel(name: string, label: string): Map<string, number> {
    const out = new Map<string, number>();
    const re = new RegExp(`[{,]${label}="([^"]*)"`);
    for (const line of this.text.split('\n')) {
      if (!line.startsWith(`${name}{`)) continue;
      const m = re.exec(line);
      if (!m) continue;
      out.set(m[1]!, (out.get(m[1]!) ?? 0) + Number(line.slice(line.lastIndexOf(' ') + 1)));
    }
    return out;
  }
}

/**
 * TCP listeners on several loopback addresses (so that the probes' ephemeral ports never run out)
 * that count the connections they accept and leave closing to the client.
 */
export async function countingServer(
  hosts: number,
  portsPerHost: number,
): Promise<{
  targets: Array<{ host: string; port: number }>;
  count(): number;
  close(): Promise<void>;
}> {
  let count = 0;
  const servers: net.Server[] = [];
  const sockets = new Set<net.Socket>();
  const targets: Array<{ host: string; port: number }> = [];
  for (let h = 0; h < hosts; h++) {
    for (let p = 0; p < portsPerHost; p++) {
      const server = net.createServer((s) => {
        count++;
        sockets.add(s);
        s.on('error', () => {});
        s.on('close', () => sockets.delete(s));
        s.on('end', () => s.destroy());
        s.resume();
      });
      server.on('error', () => {});
      const host = `127.0.0.${2 + h}`;
      server.listen({ host, port: 0, backlog: 4096 });
      await once(server, 'listening');
      servers.push(server);
      targets.push({ host, port: (server.address() as net.AddressInfo).port });
    }
  }
  return {
    targets,
    count: () => count,
    close: async () => {
      for (const s of sockets) s.destroy();
      await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    },
  };
}
