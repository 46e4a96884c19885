/**
 * The lab: a primary site and a DR site on this machine, for end-to-end tests, the failover
 * benchmark and the README's demo (`node --import tsx test/lab/cli.ts up`).
 *
 *   primary site                         DR site
 *   PostgreSQL primary  ──streaming──▶   PostgreSQL replica (synchronous by default)
 *   app (node:http)                      app (node:http)
 *             ╲                              ╱
 *              HAProxy: frontend pg (TCP)  → backend pg  {primary, dr (maint)}
 *                       frontend web (HTTP)→ backend web {primary, dr (maint)}
 *                       runtime API on 127.0.0.1 (TCP, level admin)
 *   OpenSSH on a loopback port (runbook ssh steps fence, stop and promote through it)
 *   Redis: the machine's, on 6379, in a db the caller names
 *
 * HAProxy has no health checks and no backup servers: it never moves traffic by itself; whoever
 * runs the failover (Continuity) does, through the runtime API.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import pg from 'pg';
import { closedPort } from '../helpers/net.js';
import { PG_BIN, startPgPrimary, startPgReplica, waitForStreaming, type PgNode } from '../helpers/pg-cluster.js';
import { startSshd, type TestSshd } from '../helpers/sshd.js';

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = join(here, '..', '..');

export interface LabOptions {
  /**
   * Synchronous replication (default true): the primary's synchronous_standby_names names the
   * replica and synchronous_commit is remote_apply, so a write the primary acknowledged is already
   * visible on the replica, and promoting the replica loses no acknowledged write. The settings
   * are made with ALTER SYSTEM on the primary after the replica's base backup, so a promoted
   * replica does not wait for a standby of its own.
   */
  synchronous?: boolean;
  /** A database number of the machine's Redis on 127.0.0.1:6379; the lab checks it answers and empties it. */
  redisDb?: number;
  /** Install missing Debian packages when running as root (default true). */
  install?: boolean;
}

export type NodeName = 'primary' | 'replica';
export type SiteName = 'primary' | 'dr';

/** One PostgreSQL server of the lab. */
export interface LabPg {
  /** The lab's name for it (its role when the lab started); HAProxy calls them `primary` and `dr`. */
  readonly name: NodeName;
  readonly host: '127.0.0.1';
  readonly port: number;
  /** `postgres://postgres@127.0.0.1:<port>/postgres` (trust authentication on loopback). */
  readonly url: string;
  /** The server's cluster_name (`primary<port>` / `replica<port>`), also the replica's application_name. */
  readonly clusterName: string;
  readonly dir: string;
  readonly dataDir: string;
  readonly logFile: string;
  /** The harness handle (test/helpers/pg-cluster.ts). */
  readonly node: PgNode;
  /**
   * What a runbook runs (shell step locally, ssh step through lab.sshd) to act on this server.
   * Each is an argv: pg_ctl as the postgres user. `stop` is a fast shutdown (fencing an old
   * primary), `kill` an immediate one, `promote` waits until the server is a primary.
   */
  readonly argv: { readonly stop: string[]; readonly kill: string[]; readonly start: string[]; readonly promote: string[] };
  /** The sql-step alternative to argv.promote (it waits up to 60 s by default). */
  readonly promoteSql: 'SELECT pg_promote()';
  query<R extends Record<string, unknown> = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<R[]>;
  /** Starts the server; after a kill -9 it first waits for the dead postmaster's children to go. */
  start(): Promise<void>;
  /** `pg_ctl stop -m fast`. */
  stop(): Promise<void>;
  /** `pg_ctl stop -m immediate`. */
  kill(): Promise<void>;
  /** The postmaster's pid from postmaster.pid when that process is alive, else undefined. */
  postmasterPid(): number | undefined;
  /** Pids of every process of this server still alive (postmaster and children). */
  processes(): number[];
}

/** One site's application (test/lab/site-app.ts), a child process. */
export interface LabApp {
  readonly site: SiteName;
  readonly port: number;
  readonly url: string;
  readonly pid: number;
}

/** A server of an HAProxy backend as `show servers state` reports it. */
export interface HaproxyServerState {
  backend: string;
  name: string;
  addr: string;
  port: number;
  /** srv_op_state: 0 stopped, 1 starting, 2 running, 3 stopping. Without health checks it stays 2. */
  opState: number;
  /**
   * srv_admin_state bits: 0x01 forced maint, 0x02 inherited maint, 0x04 disabled in the config
   * (kept after `state ready`), 0x08/0x10 drain, 0x20 maint from DNS, 0x40 address set at runtime.
   */
  adminState: number;
  /** Not in maintenance and running: HAProxy may hand it connections (drain counts, it keeps its sessions). */
  inTraffic: boolean;
}

export interface WriteOptions {
  /** `pg` (default): INSERT through HAProxy's pg frontend; `web`: POST /orders through its web frontend. */
  via?: 'pg' | 'web';
  /** The note column of the rows (default `lab`). */
  note?: string;
  /** Per write: connect plus statement (or HTTP request) deadline; default 2000 ms. */
  timeoutMs?: number;
}

export interface WriteResult {
  /** Ids of the rows whose insert was acknowledged, in order. */
  ids: number[];
  /** One reason per write that was not acknowledged. */
  errors: string[];
}

export interface Lab {
  /** The lab's own temp folder (HAProxy config, logs); PostgreSQL and sshd have theirs. */
  readonly dir: string;
  readonly synchronous: boolean;
  /** HAProxy's TCP frontend `pg`: where clients send SQL. */
  readonly pgTraffic: { host: '127.0.0.1'; port: number; url: string };
  /** HAProxy's HTTP frontend `web`: the public endpoint of the service. */
  readonly webTraffic: { host: '127.0.0.1'; port: number; url: string };
  /** HAProxy's runtime API (stats socket, level admin) on TCP. */
  readonly haproxyRuntime: { host: '127.0.0.1'; port: number };
  readonly haproxy: {
    readonly pid: number;
    readonly configPath: string;
    readonly config: string;
    /** Sends one runtime command line (several may be joined with `;`) and returns the answer. */
    command(line: string): Promise<string>;
    /**
     * A shell-step argv that sends a runtime command line and prints the answer (bash's /dev/tcp,
     * nothing to install): e.g. `lab.haproxy.commandArgv(lab.haproxy.switchTo('dr'))`.
     */
    commandArgv(line: string): string[];
    /** The runtime command line that moves both backends to a site: old server to maint, its sessions cut, new server ready. */
    switchTo(site: SiteName): string;
    /** `show servers state` of a backend (default pg), parsed. */
    servers(backend?: 'pg' | 'web'): Promise<HaproxyServerState[]>;
    /** What HAProxy has printed (alerts, warnings). */
    logs(): string;
  };
  readonly primary: LabPg;
  readonly replica: LabPg;
  readonly apps: { readonly primary: LabApp; readonly dr: LabApp };
  /** The OpenSSH server runbook ssh steps log in to (as root, with a key). */
  readonly sshd: {
    readonly host: string;
    readonly port: number;
    readonly user: string;
    readonly privateKeyPath: string;
    readonly knownHostsPath: string;
    readonly hostKeyLine: string;
    /** The server's temp folder (config, keys); removed by stop(). */
    readonly dir: string;
    /** The connection part of an ssh step's settings, ready to spread: `{ ...lab.sshd.stepSettings, argv: lab.primary.argv.stop }`. */
    readonly stepSettings: { host: string; port: number; username: string; private_key_file: string; known_hosts: string };
  };
  /** The machine's Redis and the db the caller gave, when it gave one. */
  readonly redis: { url: string; db: number } | undefined;
  /** kill -9 of the primary's postmaster (its children notice and exit on their own); returns its pid. */
  killPrimary(): Promise<number>;
  /** Starts the old primary again (restarts it if it runs): it comes back as a writable primary, as a real one would. */
  restartPrimary(): Promise<void>;
  /**
   * Cuts the replica off its WAL stream (primary_conninfo emptied and reloaded on the replica) and
   * waits until the primary no longer lists it. The replica falls behind; with synchronous
   * replication every commit on the primary then waits (writes time out) until resumeReplication().
   */
  pauseReplication(): Promise<void>;
  /** Restores the replica's primary_conninfo and waits until it streams again. */
  resumeReplication(): Promise<void>;
  /** n sequential inserts through the traffic endpoint; a failed write reconnects for the next one. */
  write(n: number, opts?: WriteOptions): Promise<WriteResult>;
  /** Rows in orders on one server, asked directly (not through HAProxy). */
  countOrders(node: NodeName): Promise<number>;
  /** Ids in orders on one server, asked directly, ascending. */
  orderIds(node: NodeName): Promise<number[]>;
  /**
   * How many servers of HAProxy's pg backend are in traffic (running, not in maintenance) and
   * answer pg_is_in_recovery() = false at the address HAProxy has for them. The invariant of a
   * failover is that this never exceeds 1.
   */
  writablePrimariesBehindHaproxy(): Promise<number>;
  /** The same, server by server. */
  pgServersBehindHaproxy(): Promise<Array<HaproxyServerState & { writable: boolean }>>;
  /** Everything a client needs, JSON-safe (what the CLI prints). */
  addresses(): LabAddresses;
  /** Stops every process of the lab and removes every folder; safe to call twice. */
  stop(): Promise<void>;
}

export type LabAddresses = ReturnType<typeof describeLab>;

// ------------------------------------------------------------------------------------------------
// Prerequisites

interface Requirement {
  what: string;
  pkg: string;
  present(): boolean;
}

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function onPath(cmd: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/sbin', '/usr/bin'];
  return dirs.map((d) => join(d, cmd)).find(executable);
}

const SSHD = process.env.CONTINUITY_TEST_SSHD ?? '/usr/sbin/sshd';

function requirements(): Requirement[] {
  return [
    { what: 'haproxy', pkg: 'haproxy', present: () => onPath('haproxy') !== undefined },
    {
      what: `PostgreSQL server binaries in ${PG_BIN}`,
      pkg: 'postgresql',
      present: () => ['initdb', 'pg_ctl', 'pg_basebackup', 'postgres'].every((b) => executable(join(PG_BIN, b))),
    },
    { what: SSHD, pkg: 'openssh-server', present: () => executable(SSHD) },
    { what: 'ssh-keygen', pkg: 'openssh-client', present: () => onPath('ssh-keygen') !== undefined },
    { what: 'runuser', pkg: 'util-linux', present: () => onPath('runuser') !== undefined },
  ];
}

/**
 * Checks what the lab runs. As root it installs what is missing with apt-get (as
 * scripts/setup.sh does); otherwise it installs nothing and throws, naming what is missing.
 */
export async function ensureLabPrerequisites(install = true): Promise<void> {
  const missing = requirements().filter((r) => !r.present());
  const root = process.getuid?.() === 0;
  if (missing.length > 0) {
    const pkgs = [...new Set(missing.map((r) => r.pkg))].sort();
    const list = missing.map((r) => `${r.what} (package ${r.pkg})`).join(', ');
    if (!root || !install) {
      const how = root ? `apt-get install ${pkgs.join(' ')}` : `run as root, or: apt-get install ${pkgs.join(' ')}`;
      throw new Error(`the lab needs what is not installed: ${list}; ${how}`);
    }
    process.stderr.write(`lab: installing ${pkgs.join(' ')}\n`);
    await aptInstall(pkgs);
    const still = requirements().filter((r) => !r.present());
    if (still.length > 0) throw new Error(`still missing after apt-get install: ${still.map((r) => r.what).join(', ')}`);
  }
  // pg_ctl runs as the postgres user through runuser, and sshd lets the current user in as root.
  if (!root) throw new Error('the lab must run as root: it runs PostgreSQL as the postgres user (runuser) and its own sshd');
}

async function aptInstall(pkgs: string[]): Promise<void> {
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const opts = { env, timeout: 600_000, maxBuffer: 64 * 1024 * 1024 };
  // Package scripts must not start services through an init system that is not there; only a
  // policy file this function created is removed again.
  const policy = '/usr/sbin/policy-rc.d';
  const ownPolicy = !existsSync(policy);
  if (ownPolicy) writeFileSync(policy, '#!/bin/sh\nexit 101\n', { mode: 0o755 });
  try {
    await run('apt-get', ['update', '-qq'], opts);
    await run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', '-o', 'DPkg::Lock::Timeout=300', ...pkgs], opts);
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`apt-get install ${pkgs.join(' ')} failed: ${e.stderr?.trim() || e.message}`, { cause: err });
  } finally {
    if (ownPolicy) rmSync(policy, { force: true });
  }
}

// ------------------------------------------------------------------------------------------------
// Processes

/** Every live process whose command line is a postgres of this node (postmaster by -D, children by cluster_name title). */
function pgProcesses(clusterName: string, dataDir: string): number[] {
  const pids: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return pids;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    let cmdline: string;
    try {
      cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').replace(/\0/g, ' ');
    } catch {
      continue;
    }
    if (cmdline.startsWith(`postgres: ${clusterName}: `) || (cmdline.includes('postgres') && cmdline.includes(` -D ${dataDir}`))) {
      pids.push(Number(entry));
    }
  }
  return pids;
}

/**
 * Whether a process runs. A zombie does not: a postmaster (started by pg_ctl, so reparented to
 * init) stays one until init reaps it, which on some machines takes a while.
 */
export function processAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // pid (comm) state ...: comm may hold spaces and parentheses, so the state follows the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitUntil(what: string, cond: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > deadline) throw new Error(`${what}: not so after ${timeoutMs} ms`);
    await sleep(25);
  }
}

/** Waits for the node's processes to exit, SIGKILLing what is left after the grace period. */
async function reapPg(clusterName: string, dataDir: string, graceMs = 5000): Promise<void> {
  try {
    await waitUntil(`${clusterName} processes gone`, () => pgProcesses(clusterName, dataDir).length === 0, graceMs);
  } catch {
    for (const pid of pgProcesses(clusterName, dataDir)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
    await waitUntil(`${clusterName} processes gone after SIGKILL`, () => pgProcesses(clusterName, dataDir).length === 0, 2000);
  }
}

/**
 * Removes the lock files of a postmaster that is gone (postmaster.pid and the socket's lock). A
 * killed postmaster leaves them, and until init reaps it its pid is a zombie that PostgreSQL and
 * pg_ctl take for a running server: starting refuses, stopping waits.
 */
function removeStaleLocks(node: PgNode): void {
  for (const file of [join(node.dataDir, 'postmaster.pid'), join(node.dir, `.s.PGSQL.${node.port}.lock`)]) {
    let pid: number;
    try {
      pid = Number(readFileSync(file, 'utf8').split('\n')[0]);
    } catch {
      continue;
    }
    if (!Number.isInteger(pid) || pid <= 0 || !processAlive(pid)) rmSync(file, { force: true });
  }
}

function wrapPg(name: NodeName, node: PgNode): LabPg {
  const pgCtl = join(PG_BIN, 'pg_ctl');
  const asPostgres = (...args: string[]) => ['runuser', '-u', 'postgres', '--', pgCtl, '-D', node.dataDir, ...args];
  const postmasterPid = (): number | undefined => {
    try {
      const pid = Number(readFileSync(join(node.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
      return Number.isInteger(pid) && pid > 0 && processAlive(pid) ? pid : undefined;
    } catch {
      return undefined;
    }
  };
  return {
    name,
    host: '127.0.0.1',
    port: node.port,
    url: `postgres://postgres@127.0.0.1:${node.port}/postgres`,
    clusterName: node.name,
    dir: node.dir,
    dataDir: node.dataDir,
    logFile: node.logFile,
    node,
    argv: {
      stop: asPostgres('stop', '-m', 'fast'),
      kill: asPostgres('stop', '-m', 'immediate'),
      start: asPostgres('start', '-w', '-l', node.logFile),
      promote: asPostgres('promote', '-w'),
    },
    promoteSql: 'SELECT pg_promote()',
    query: (sql, params) => node.query(sql, params),
    async start() {
      await reapPg(node.name, node.dataDir, 10_000);
      removeStaleLocks(node);
      await node.start();
    },
    stop: () => node.stop(),
    kill: () => node.kill(),
    postmasterPid,
    processes: () => pgProcesses(node.name, node.dataDir),
  };
}

/** Keeps the tail of a child's output for error messages. */
function capture(child: ChildProcess, limit = 64 * 1024): () => string {
  let out = '';
  const add = (d: Buffer) => {
    out += d.toString();
    if (out.length > limit) out = out.slice(-limit);
  };
  child.stdout?.on('data', add);
  child.stderr?.on('data', add);
  child.on('error', (err) => (out += `spawn failed: ${err.message}\n`));
  return () => out;
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

async function stopChild(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 3000): Promise<void> {
  if (child.pid === undefined || exited(child)) return;
  const done = new Promise((r) => child.once('exit', r));
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await done;
  clearTimeout(timer);
}

async function startApp(site: SiteName, pgPort: number, dir: string): Promise<{ app: LabApp; child: ChildProcess; logs: () => string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', join(here, 'site-app.ts')], {
    cwd: repoRoot,
    env: { ...process.env, LAB_SITE: site, LAB_PG_PORT: String(pgPort), NODE_OPTIONS: '' },
    stdio: ['pipe', 'pipe', 'pipe'],
    // Its own process group: a Ctrl-C in the terminal reaches the lab, which stops the sites in order.
    detached: true,
  });
  const logs = capture(child);
  const port = await new Promise<number>((resolve, reject) => {
    let line = '';
    const timer = setTimeout(() => fail(new Error(`the ${site} app did not report its port within 10 s: ${logs()}`)), 10_000);
    const fail = (err: Error) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(err);
    };
    const onData = (d: Buffer) => {
      line += d.toString();
      const nl = line.indexOf('\n');
      if (nl < 0) return;
      child.stdout!.off('data', onData);
      child.off('exit', onExit);
      clearTimeout(timer);
      try {
        resolve((JSON.parse(line.slice(0, nl)) as { port: number }).port);
      } catch {
        fail(new Error(`the ${site} app printed ${JSON.stringify(line)} instead of its port`));
      }
    };
    const onExit = () => fail(new Error(`the ${site} app exited before listening: ${logs()}`));
    child.stdout!.on('data', onData);
    child.once('exit', onExit);
  });
  writeFileSync(join(dir, `app-${site}.pid`), `${child.pid}\n`);
  return { app: { site, port, url: `http://127.0.0.1:${port}`, pid: child.pid! }, child, logs };
}

// ------------------------------------------------------------------------------------------------
// Ports

/** Ports below the kernel's ephemeral range, which bind(0) never hands out. */
function fixedPortRange(): [number, number] {
  try {
    const [low] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    if (low !== undefined && low > 11_000) return [10_000, low - 1];
  } catch {
    // not Linux: any range will do
  }
  return [20_000, 30_000];
}

function canBind(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/**
 * A free loopback port for a server the lab starts later (PostgreSQL, HAProxy's frontends): taken
 * below the ephemeral range, so the apps, sshd and everyone else binding port 0 in the meantime
 * cannot get it first.
 */
async function fixedPort(taken: Set<number>): Promise<number> {
  const [low, high] = fixedPortRange();
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = low + Math.floor(Math.random() * (high - low + 1));
    if (taken.has(port)) continue;
    if (await canBind(port)) {
      taken.add(port);
      return port;
    }
  }
  return closedPort();
}

// ------------------------------------------------------------------------------------------------
// HAProxy

export interface HaproxyPorts {
  pg: number;
  web: number;
  runtime: number;
}

/** The configuration the lab runs HAProxy with. */
export function haproxyConfig(ports: HaproxyPorts, pgServers: Record<SiteName, number>, webServers: Record<SiteName, number>): string {
  return `# Generated by test/lab/lab.ts. No health checks and no backup servers: HAProxy never moves
# traffic by itself; the failover runbook does, through the runtime API.
global
    stats socket ipv4@127.0.0.1:${ports.runtime} level admin
    stats timeout 30s
    maxconn 1000
    nbthread 1

defaults
    timeout connect 1s
    # A refused connection fails at once (no retry after a 1 s turn-around): clients see a dead
    # server immediately and retry themselves, through whatever server is ready by then.
    retries 0

frontend pg
    mode tcp
    bind 127.0.0.1:${ports.pg}
    timeout client 1h
    default_backend pg

backend pg
    mode tcp
    balance roundrobin
    timeout server 1h
    server primary 127.0.0.1:${pgServers.primary}
    server dr 127.0.0.1:${pgServers.dr} disabled

frontend web
    mode http
    bind 127.0.0.1:${ports.web}
    timeout client 30s
    timeout http-request 10s
    default_backend web

backend web
    mode http
    balance roundrobin
    timeout server 30s
    server primary 127.0.0.1:${webServers.primary}
    server dr 127.0.0.1:${webServers.dr} disabled
`;
}

/** One runtime API exchange: the command line in, everything HAProxy answers until it closes. */
export function haproxyCommand(port: number, line: string, timeoutMs = 3000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let answer = '';
    socket.setTimeout(timeoutMs, () => {
      socket.destroy();
      reject(new Error(`haproxy runtime API on 127.0.0.1:${port} did not answer ${JSON.stringify(line)} within ${timeoutMs} ms`));
    });
    socket.on('connect', () => socket.write(`${line}\n`));
    socket.on('data', (d: Buffer) => (answer += d.toString()));
    socket.on('end', () => resolve(answer));
    socket.on('error', reject);
  });
}

export function parseServersState(text: string): HaproxyServerState[] {
  const lines = text.split('\n');
  const header = lines.find((l) => l.startsWith('# be_id'));
  if (!header) throw new Error(`unexpected answer to show servers state: ${text.trim()}`);
  const cols = header.slice(2).trim().split(/\s+/);
  const at = (fields: string[], name: string) => fields[cols.indexOf(name)] ?? '';
  // HAProxy's SRV_ADMF_MAINT: forced, inherited or DNS maintenance. 0x04 (from `disabled` in the
  // config) always comes with 0x01 and stays set after `set server ... state ready` clears 0x01.
  const MAINT = 0x01 | 0x02 | 0x20;
  return lines
    .filter((l) => l.trim() !== '' && !l.startsWith('#') && /\s/.test(l.trim()))
    .map((l) => {
      const f = l.trim().split(/\s+/);
      const opState = Number(at(f, 'srv_op_state'));
      const adminState = Number(at(f, 'srv_admin_state'));
      return {
        backend: at(f, 'be_name'),
        name: at(f, 'srv_name'),
        addr: at(f, 'srv_addr'),
        port: Number(at(f, 'srv_port')),
        opState,
        adminState,
        inTraffic: (opState === 1 || opState === 2) && (adminState & MAINT) === 0,
      };
    });
}

async function startHaproxy(
  taken: Set<number>,
  dir: string,
  pgServers: Record<SiteName, number>,
  webServers: Record<SiteName, number>,
): Promise<{ child: ChildProcess; ports: HaproxyPorts; configPath: string; config: string; logs: () => string }> {
  const bin = onPath('haproxy')!;
  const configPath = join(dir, 'haproxy.cfg');
  let lastError: Error | undefined;
  // A port taken between fixedPort() and HAProxy's bind makes it exit; try again with others.
  for (let attempt = 0; attempt < 3; attempt++) {
    const ports = { pg: await fixedPort(taken), web: await fixedPort(taken), runtime: await fixedPort(taken) };
    const config = haproxyConfig(ports, pgServers, webServers);
    writeFileSync(configPath, config);
    const child = spawn(bin, ['-db', '-f', configPath], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    const logs = capture(child);
    try {
      await waitUntil(
        'haproxy answers on its runtime API',
        async () => {
          if (exited(child)) throw new Error(`haproxy exited (${child.exitCode ?? child.signalCode}): ${logs()}`);
          return haproxyCommand(ports.runtime, 'show info', 1000).then(
            (a) => a.includes('Pid:'),
            () => false,
          );
        },
        10_000,
      );
      return { child, ports, configPath, config, logs };
    } catch (err) {
      await stopChild(child, 'SIGKILL');
      lastError = err as Error;
      if (/cannot bind|Address already in use/i.test(logs())) continue;
      throw err;
    }
  }
  throw lastError ?? new Error('haproxy did not start');
}

// ------------------------------------------------------------------------------------------------
// The lab

function describeLab(lab: Omit<Lab, 'addresses'>) {
  const pgView = (n: LabPg) => ({
    host: n.host,
    port: n.port,
    url: n.url,
    clusterName: n.clusterName,
    dataDir: n.dataDir,
    logFile: n.logFile,
    argv: n.argv,
  });
  return {
    dir: lab.dir,
    synchronous: lab.synchronous,
    pgTraffic: lab.pgTraffic,
    webTraffic: lab.webTraffic,
    haproxyRuntime: lab.haproxyRuntime,
    haproxy: { pid: lab.haproxy.pid, configPath: lab.haproxy.configPath, switchToDr: lab.haproxy.switchTo('dr') },
    primary: pgView(lab.primary),
    replica: pgView(lab.replica),
    apps: { primary: lab.apps.primary, dr: lab.apps.dr },
    sshd: {
      host: lab.sshd.host,
      port: lab.sshd.port,
      user: lab.sshd.user,
      privateKeyPath: lab.sshd.privateKeyPath,
      knownHostsPath: lab.sshd.knownHostsPath,
    },
    redis: lab.redis,
  };
}

async function prepareRedis(db: number): Promise<{ url: string; db: number }> {
  const url = `redis://127.0.0.1:6379/${db}`;
  const r = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1, connectTimeout: 2000, retryStrategy: () => null });
  r.on('error', () => {});
  try {
    await r.connect();
    await r.flushdb();
  } catch (err) {
    throw new Error(`the machine's Redis does not answer on 127.0.0.1:6379 (scripts/setup.sh starts it): ${(err as Error).message}`, {
      cause: err,
    });
  } finally {
    r.disconnect();
  }
  return { url, db };
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

async function pgClient(port: number, timeoutMs: number): Promise<pg.Client> {
  const client = new pg.Client({
    host: '127.0.0.1',
    port,
    user: 'postgres',
    database: 'postgres',
    connectionTimeoutMillis: timeoutMs,
    query_timeout: timeoutMs,
    application_name: 'lab',
  });
  client.on('error', () => {});
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => {});
    throw err;
  }
  return client;
}

/** Starts a lab; see the file's comment. Throws (after cleaning up) when a part does not start. */
export async function startLab(opts: LabOptions = {}): Promise<Lab> {
  const synchronous = opts.synchronous ?? true;
  if (opts.redisDb !== undefined && (!Number.isInteger(opts.redisDb) || opts.redisDb < 0 || opts.redisDb > 15)) {
    throw new Error(`redisDb must be a Redis database number 0-15, not ${opts.redisDb}`);
  }
  await ensureLabPrerequisites(opts.install ?? true);

  const dir = mkdtempSync(join(tmpdir(), 'continuity-lab-'));
  const children: ChildProcess[] = [];
  const pgNodes: PgNode[] = [];
  let sshd: TestSshd | undefined;
  let sshdStarting: Promise<TestSshd> | undefined;
  let stopped = false;

  // The harnesses stop their own PostgreSQL and sshd on exit; this kills the rest. It runs before
  // them: without a killed postmaster's stale lock files, pg_ctl gives up on it at once.
  const onExit = () => {
    for (const c of children) if (!exited(c)) c.kill('SIGKILL');
    for (const n of pgNodes) removeStaleLocks(n);
    rmSync(dir, { recursive: true, force: true });
    if (sshd) rmSync(sshd.dir, { recursive: true, force: true });
  };
  process.prependOnceListener('exit', onExit);

  const teardown = async () => {
    stopped = true;
    const errors: string[] = [];
    // Traffic first, then the sites, then the databases.
    await Promise.all(children.map((c) => stopChild(c).catch((e: unknown) => errors.push(errorText(e)))));
    await Promise.all(
      pgNodes.map(async (n) => {
        removeStaleLocks(n);
        await n.cleanup().catch((e: unknown) => errors.push(errorText(e)));
        // A killed postmaster's children may still be on their way out.
        await reapPg(n.name, n.dataDir).catch((e: unknown) => errors.push(errorText(e)));
      }),
    );
    await sshd?.stop().catch((e: unknown) => errors.push(errorText(e)));
    rmSync(dir, { recursive: true, force: true });
    // Only now: a process that exits half-way through stop() still gets its children killed.
    process.removeListener('exit', onExit);
    if (errors.length > 0) throw new Error(`the lab did not stop cleanly: ${errors.join('; ')}`);
  };

  try {
    // PostgreSQL is the long pole (initdb, base backup); everything else starts beside it, so its
    // ports are chosen first.
    const taken = new Set<number>();
    const pgPorts = { primary: await fixedPort(taken), replica: await fixedPort(taken) };
    sshdStarting = startSshd();
    sshdStarting.then((s) => (sshd = s)).catch(() => {});
    const db = (async () => {
      const primaryNode = await startPgPrimary({ port: pgPorts.primary, conf: { synchronous_commit: 'on' } });
      pgNodes.push(primaryNode);
      await primaryNode.query(`CREATE TABLE orders (id bigserial PRIMARY KEY, note text, at timestamptz DEFAULT now())`);
      const replicaNode = await startPgReplica(primaryNode, { port: pgPorts.replica, conf: { synchronous_commit: 'on' } });
      pgNodes.push(replicaNode);
      if (synchronous) {
        // After the base backup, so the replica (and a promoted replica) has none of this.
        await primaryNode.query(`ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 ("${replicaNode.name}")'`);
        await primaryNode.query(`ALTER SYSTEM SET synchronous_commit = 'remote_apply'`);
        await primaryNode.query('SELECT pg_reload_conf()');
        await waitUntil(
          `${replicaNode.name} is the synchronous standby`,
          async () =>
            (
              await primaryNode.query(`SELECT 1 FROM pg_stat_replication WHERE application_name = $1 AND sync_state = 'sync'`, [
                replicaNode.name,
              ])
            ).length > 0,
          10_000,
        );
      }
      return { primaryNode, replicaNode };
    })();
    const redisReady = opts.redisDb === undefined ? Promise.resolve(undefined) : prepareRedis(opts.redisDb);
    redisReady.catch(() => {});

    // The apps connect lazily and HAProxy has no health checks, so both start beside PostgreSQL.
    const apps = Promise.all(
      (['primary', 'dr'] as const).map((site) =>
        startApp(site, site === 'primary' ? pgPorts.primary : pgPorts.replica, dir).then((started) => {
          children.push(started.child);
          return started;
        }),
      ),
    );
    const proxy = apps.then(([a, b]) =>
      startHaproxy(taken, dir, { primary: pgPorts.primary, dr: pgPorts.replica }, { primary: a!.app.port, dr: b!.app.port }).then(
        (started) => {
          children.unshift(started.child);
          return started;
        },
      ),
    );
    // Everything settles before anything is used, so a failure leaves nothing starting behind teardown's back.
    const settled = await Promise.allSettled([db, apps, proxy, sshdStarting, redisReady]);
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    const { primaryNode, replicaNode } = await db;
    const [appA, appB] = (await apps) as [Awaited<ReturnType<typeof startApp>>, Awaited<ReturnType<typeof startApp>>];
    const hp = await proxy;
    writeFileSync(join(dir, 'haproxy.pid'), `${hp.child.pid}\n`);
    const ssh = await sshdStarting;
    sshd = ssh;
    const redis = await redisReady;

    const primary = wrapPg('primary', primaryNode);
    const replica = wrapPg('replica', replicaNode);
    const nodes = { primary, replica };
    const runtimePort = hp.ports.runtime;
    const command = (line: string) => haproxyCommand(runtimePort, line);
    const servers = async (backend: 'pg' | 'web' = 'pg') => parseServersState(await command(`show servers state ${backend}`));
    let conninfo: string | undefined;

    const pgServersBehindHaproxy = async () => {
      const list = await servers('pg');
      return Promise.all(
        list.map(async (s) => {
          if (!s.inTraffic) return { ...s, writable: false };
          let writable = false;
          const client = await pgClient(s.port, 1000).catch(() => undefined);
          if (client) {
            try {
              const { rows } = await client.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r');
              writable = rows[0]?.r === false;
            } catch {
              writable = false;
            } finally {
              await client.end().catch(() => {});
            }
          }
          return { ...s, writable };
        }),
      );
    };

    const base: Omit<Lab, 'addresses'> = {
      dir,
      synchronous,
      pgTraffic: { host: '127.0.0.1', port: hp.ports.pg, url: `postgres://postgres@127.0.0.1:${hp.ports.pg}/postgres` },
      webTraffic: { host: '127.0.0.1', port: hp.ports.web, url: `http://127.0.0.1:${hp.ports.web}` },
      haproxyRuntime: { host: '127.0.0.1', port: runtimePort },
      haproxy: {
        pid: hp.child.pid!,
        configPath: hp.configPath,
        config: hp.config,
        command,
        commandArgv: (line) => [
          'bash',
          '-c',
          'exec 3<>"/dev/tcp/$0/$1" && printf "%s\\n" "$2" >&3 && cat <&3',
          '127.0.0.1',
          String(runtimePort),
          line,
        ],
        switchTo(site) {
          const old = site === 'dr' ? 'primary' : 'dr';
          return ['pg', 'web']
            .flatMap((b) => [
              `set server ${b}/${old} state maint`,
              `shutdown sessions server ${b}/${old}`,
              `set server ${b}/${site} state ready`,
            ])
            .join('; ');
        },
        servers,
        logs: hp.logs,
      },
      primary,
      replica,
      apps: { primary: appA.app, dr: appB.app },
      sshd: {
        host: ssh.host,
        port: ssh.port,
        user: ssh.user,
        privateKeyPath: ssh.privateKeyPath,
        knownHostsPath: ssh.knownHostsPath,
        hostKeyLine: ssh.hostKeyLine,
        dir: ssh.dir,
        stepSettings: {
          host: ssh.host,
          port: ssh.port,
          username: ssh.user,
          private_key_file: ssh.privateKeyPath,
          known_hosts: ssh.knownHostsPath,
        },
      },
      redis,

      async killPrimary() {
        const pid = primary.postmasterPid();
        if (pid === undefined) throw new Error('the primary is not running');
        process.kill(pid, 'SIGKILL');
        await waitUntil(`postmaster ${pid} gone`, () => !processAlive(pid), 5000);
        return pid;
      },
      async restartPrimary() {
        if (primary.postmasterPid() !== undefined) await primary.stop();
        await primary.start();
      },
      async pauseReplication() {
        const [row] = await replica.query<{ primary_conninfo: string }>('SHOW primary_conninfo');
        if (row?.primary_conninfo) conninfo = row.primary_conninfo;
        await replica.query(`ALTER SYSTEM SET primary_conninfo = ''`);
        await replica.query('SELECT pg_reload_conf()');
        await waitUntil(
          'the replica has stopped streaming',
          async () => (await replica.query('SELECT 1 FROM pg_stat_wal_receiver')).length === 0,
          10_000,
        );
      },
      async resumeReplication() {
        if (conninfo === undefined) throw new Error('replication was not paused by this lab');
        await replica.query(`ALTER SYSTEM SET primary_conninfo = '${conninfo.replace(/'/g, "''")}'`);
        await replica.query('SELECT pg_reload_conf()');
        await waitForStreaming(primaryNode, replicaNode.name, 15_000);
      },
      async write(n, wopts = {}) {
        const timeoutMs = wopts.timeoutMs ?? 2000;
        const note = wopts.note ?? 'lab';
        const result: WriteResult = { ids: [], errors: [] };
        if (wopts.via === 'web') {
          for (let i = 0; i < n; i++) {
            try {
              const res = await fetch(`${base.webTraffic.url}/orders`, {
                method: 'POST',
                headers: { 'content-type': 'application/json' },
                body: JSON.stringify({ note }),
                signal: AbortSignal.timeout(timeoutMs),
              });
              const body = (await res.json().catch(() => ({}))) as { id?: number; error?: string };
              if (res.status === 201 && typeof body.id === 'number') result.ids.push(body.id);
              else result.errors.push(`HTTP ${res.status}${body.error ? `: ${body.error}` : ''}`);
            } catch (err) {
              result.errors.push(errorText(err));
            }
          }
          return result;
        }
        let client: pg.Client | undefined;
        try {
          for (let i = 0; i < n; i++) {
            try {
              client ??= await pgClient(hp.ports.pg, timeoutMs);
              const { rows } = await client.query<{ id: string }>('INSERT INTO orders (note) VALUES ($1) RETURNING id', [note]);
              result.ids.push(Number(rows[0]!.id));
            } catch (err) {
              result.errors.push(errorText(err));
              const dead = client;
              client = undefined;
              await dead?.end().catch(() => {});
            }
          }
        } finally {
          await client?.end().catch(() => {});
        }
        return result;
      },
      async countOrders(node) {
        const [row] = await nodes[node].query<{ n: string }>('SELECT count(*) AS n FROM orders');
        return Number(row!.n);
      },
      async orderIds(node) {
        const rows = await nodes[node].query<{ id: string }>('SELECT id FROM orders ORDER BY id');
        return rows.map((r) => Number(r.id));
      },
      async writablePrimariesBehindHaproxy() {
        return (await pgServersBehindHaproxy()).filter((s) => s.inTraffic && s.writable).length;
      },
      pgServersBehindHaproxy,
      async stop() {
        if (stopped) return;
        await teardown();
      },
    };
    return { ...base, addresses: () => describeLab(base) };
  } catch (err) {
    // An sshd still starting when another part failed is waited for, so teardown stops it too.
    if (sshdStarting) sshd = await sshdStarting.catch(() => undefined);
    await teardown().catch(() => {});
    throw err;
  }
}
