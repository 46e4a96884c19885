import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeConfig } from './config.js';
import { closedPort } from './net.js';
import { until } from './until.js';

/**
 * Daemon children for cluster tests: N instances of `node bin/continuity.js daemon -c <config>`,
 * each with its own config folder, port and instance id, sharing whatever Redis their configs
 * name. Their output is collected (pino's JSON lines), each is waited for on /healthz, the leader
 * is found by the `continuity_leader` metric, and each can be killed (kill -9, SIGSTOP), stopped or
 * started again. close() kills whatever still runs; a test process that dies without close() still
 * takes its children with it.
 */

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** What each instance's config is made of; `ctx` tells which instance it is. */
export interface DaemonSpec {
  /** How many instances (default 2). */
  count?: number;
  /** Instance ids (default `inst-a`, `inst-b`, …). */
  names?: string[];
  /**
   * The text of config/continuity.yaml. It must listen on 127.0.0.1:<ctx.port> and should set
   * `instance_id: <ctx.instanceId>`; `ctx.dir` is the instance's own folder (the config is in
   * `<dir>/config`, so `../runbooks` is `<dir>/runbooks`).
   */
  config(ctx: DaemonContext): string;
  /** probes/*.yaml of each instance, by file name (default none). */
  probes?: Record<string, string> | ((ctx: DaemonContext) => Record<string, string>);
  /** Called once the folder is written, before the first start: copy runbooks into it, and so on. */
  prepare?(ctx: DaemonContext): void;
  /** More environment for the children (e.g. CONTINUITY_FAILPOINTS for one of them). */
  env?: NodeJS.ProcessEnv | ((ctx: DaemonContext) => NodeJS.ProcessEnv);
  /** The bearer token api() sends unless told otherwise. */
  token?: string;
}

export interface DaemonContext {
  index: number;
  instanceId: string;
  port: number;
  /** The instance's own folder (config/, probes/, and what `prepare` puts there). */
  dir: string;
}

export interface DaemonInstance {
  readonly index: number;
  readonly name: string;
  readonly port: number;
  readonly url: string;
  readonly dir: string;
  readonly configPath: string;
  /** The current child (undefined before the first start). */
  readonly child: ChildProcess | undefined;
  readonly pid: number | undefined;
  /** How the current child ended: its signal name or exit code. */
  readonly exited: Promise<NodeJS.Signals | number | null>;
  /** Spawns the child (again, after it ended); resolves at once, see up(). */
  start(): DaemonInstance;
  /** Whether the current child runs (a stopped, SIGSTOPped one counts as running). */
  running(): boolean;
  /** Everything it printed, across its starts. */
  output(): string;
  /** Its output's JSON lines (pino), parsed; other lines are left out. */
  logs(): Array<Record<string, unknown>>;
  /** The last `lines` lines of its output, for a failing assertion's message. */
  tail(lines?: number): string;
  /** Waits for /healthz to answer 200. */
  up(timeoutMs?: number): Promise<void>;
  /** A JSON request to its API; the body is undefined for a 204. */
  request<T = unknown>(method: string, path: string, body?: unknown, token?: string): Promise<{ status: number; body: T }>;
  /** The same, throwing unless the status is 2xx; returns the body. */
  api<T = unknown>(method: string, path: string, body?: unknown, token?: string): Promise<T>;
  /** An unlabelled metric's value from /metrics, or undefined. */
  metric(name: string): Promise<number | undefined>;
  /** Sends a signal (SIGKILL by default); for SIGKILL and SIGTERM, waits for the child to end and returns how. */
  kill(signal?: NodeJS.Signals): Promise<NodeJS.Signals | number | null | undefined>;
  /** SIGCONT then SIGTERM (SIGKILL after `graceMs`), waited for. */
  stop(graceMs?: number): Promise<void>;
}

export interface DaemonCluster {
  readonly instances: DaemonInstance[];
  /** Starts every instance that does not run, and waits until each answers /healthz. */
  startAll(timeoutMs?: number): Promise<void>;
  /** The instances whose child runs. */
  running(): DaemonInstance[];
  /**
   * Waits until exactly one of `among` (default: the running instances) reports continuity_leader 1
   * and every other one 0; returns it. A stopped (SIGSTOP) instance does not answer: leave it out of `among`.
   */
  leader(timeoutMs?: number, among?: DaemonInstance[]): Promise<DaemonInstance>;
  /** SIGKILL of every child still running (SIGCONT first, for a stopped one), waited for; folders removed. */
  close(): Promise<void>;
}

/** Children of every cluster of this process, killed if the test process exits without close(). */
const live = new Set<ChildProcess>();
let exitHook = false;

function aliveChild(c: ChildProcess | undefined): boolean {
  return !!c && c.exitCode === null && c.signalCode === null;
}

/** Writes each instance's config folder; nothing starts until start() or startAll(). */
export async function daemonCluster(spec: DaemonSpec): Promise<DaemonCluster> {
  if (!exitHook) {
    exitHook = true;
    process.once('exit', () => {
      for (const c of live) if (aliveChild(c)) c.kill('SIGKILL');
    });
  }
  const count = spec.count ?? spec.names?.length ?? 2;
  const names = spec.names ?? Array.from({ length: count }, (_, i) => `inst-${String.fromCharCode(97 + i)}`);
  const instances: DaemonInstance[] = [];
  const ports = new Set<number>();
  for (let index = 0; index < count; index++) {
    let port = await closedPort();
    while (ports.has(port)) port = await closedPort();
    ports.add(port);
    instances.push(makeInstance(spec, index, names[index]!, port));
  }
  return {
    instances,
    async startAll(timeoutMs = 30_000) {
      for (const inst of instances) if (!inst.running()) inst.start();
      await Promise.all(instances.map((inst) => inst.up(timeoutMs)));
    },
    running: () => instances.filter((i) => i.running()),
    async leader(timeoutMs = 15_000, among?: DaemonInstance[]) {
      const set = () => among ?? instances.filter((i) => i.running());
      return until(
        'exactly one leader',
        async () => {
          const list = set();
          const values = await Promise.all(list.map((i) => i.metric('continuity_leader')));
          const leading = list.filter((_, k) => values[k] === 1);
          return leading.length === 1 && values.every((v) => v === 0 || v === 1) ? leading[0] : undefined;
        },
        timeoutMs,
        {
          detail: () =>
            set()
              .map((i) => `--- ${i.name}:\n${i.tail(15)}`)
              .join('\n'),
        },
      );
    },
    async close() {
      await Promise.all(
        instances.map(async (i) => {
          if (i.running()) {
            i.child!.kill('SIGCONT');
            await i.kill('SIGKILL');
          }
          rmSync(i.dir, { recursive: true, force: true });
        }),
      );
    },
  };
}

function makeInstance(spec: DaemonSpec, index: number, name: string, port: number): DaemonInstance {
  // writeConfig makes the folder; the config text may name it, so it is written once the folder exists.
  const cfg = writeConfig({ config: '', probes: {} });
  const ctx: DaemonContext = { index, instanceId: name, port, dir: cfg.dir };
  cfg.write('config/continuity.yaml', spec.config(ctx));
  const probes = typeof spec.probes === 'function' ? spec.probes(ctx) : (spec.probes ?? {});
  for (const [file, text] of Object.entries(probes)) cfg.write(join('probes', file), text);
  spec.prepare?.(ctx);
  const url = `http://127.0.0.1:${port}`;
  let child: ChildProcess | undefined;
  let exited: Promise<NodeJS.Signals | number | null> = Promise.resolve(null);
  let out = '';

  const request = async <T>(method: string, path: string, body?: unknown, token = spec.token) => {
    const res = await fetch(url + path, {
      method,
      headers: {
        ...(token ? { authorization: `Bearer ${token}` } : {}),
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
      },
      body: body !== undefined ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(5000),
    });
    const text = await res.text();
    return { status: res.status, body: (text ? JSON.parse(text) : undefined) as T };
  };

  const inst: DaemonInstance = {
    index,
    name,
    port,
    url,
    dir: cfg.dir,
    configPath: cfg.configPath,
    get child() {
      return child;
    },
    get pid() {
      return child?.pid;
    },
    get exited() {
      return exited;
    },
    start() {
      if (aliveChild(child)) throw new Error(`${name} is already running (pid ${child!.pid})`);
      const env = typeof spec.env === 'function' ? spec.env(ctx) : spec.env;
      const c = spawn(process.execPath, [join(repoRoot, 'bin/continuity.js'), 'daemon', '-c', cfg.configPath], {
        cwd: repoRoot,
        env: { ...process.env, ...env },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      child = c;
      live.add(c);
      out += `--- ${name}: started, pid ${c.pid}\n`;
      c.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      c.stderr!.on('data', (d: Buffer) => (out += d.toString()));
      exited = new Promise((r) =>
        c.once('exit', (code, signal) => {
          live.delete(c);
          out += `--- ${name}: pid ${c.pid} exited (${signal ?? code})\n`;
          r(signal ?? code);
        }),
      );
      return inst;
    },
    running: () => aliveChild(child),
    output: () => out,
    logs() {
      const lines: Array<Record<string, unknown>> = [];
      for (const line of out.split('\n')) {
        if (!line.startsWith('{')) continue;
        try {
          lines.push(JSON.parse(line) as Record<string, unknown>);
        } catch {
          // a line cut by the end of the output so far
        }
      }
      return lines;
    },
    tail: (lines = 30) => out.trimEnd().split('\n').slice(-lines).join('\n'),
    async up(timeoutMs = 30_000) {
      await until(
        `${name} up`,
        async () => {
          if (!aliveChild(child)) throw new Error(`${name} is not running`);
          return (await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(2000) })).ok ? true : undefined;
        },
        timeoutMs,
        { detail: () => inst.tail() },
      );
    },
    request,
    async api<T>(method: string, path: string, body?: unknown, token?: string) {
      const res = await request<T>(method, path, body, token);
      if (res.status < 200 || res.status > 299)
        throw new Error(`${method} ${path} on ${name}: HTTP ${res.status} ${JSON.stringify(res.body)}`);
      return res.body;
    },
    async metric(metricName: string) {
      const text = await (await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
      const m = new RegExp(`^${metricName} (\\S+)$`, 'm').exec(text);
      return m ? Number(m[1]) : undefined;
    },
    async kill(signal: NodeJS.Signals = 'SIGKILL') {
      if (!aliveChild(child)) return undefined;
      child!.kill(signal);
      if (signal === 'SIGKILL' || signal === 'SIGTERM') return exited;
      return undefined;
    },
    async stop(graceMs = 10_000) {
      if (!aliveChild(child)) return;
      const c = child!;
      c.kill('SIGCONT');
      c.kill('SIGTERM');
      const timer = setTimeout(() => c.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
  return inst;
}

/** A runbook step that appends its id to `file`: the file's lines count the step's runs. */
export function appendStep(id: string, idempotent: boolean, file: string): string {
  return `  - id: ${id}
    kind: shell
    timeout: 10s
    idempotent: ${idempotent}
    shell:
      argv: [sh, -c, 'echo ${id} >> "$1"', sh, '${file}']
`;
}
