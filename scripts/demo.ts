/**
 * The demo, what `npm start` runs: `node --import tsx scripts/demo.ts [--wait-for-approval] [--keep]`.
 *
 * It starts the lab (test/lab/lab.ts: a PostgreSQL primary and a synchronous replica behind
 * HAProxy, one app per site, sshd), writes a config for it into a temp folder, starts the daemon in
 * this process with the shipped runbooks/failover-postgres v1 in approval mode, shows writes
 * flowing, kills the primary, and tells the story for a person at a terminal: the incident, the
 * decision sentence, the approval request (approved here after a short pause, or by the person with
 * --wait-for-approval), each step of the runbook, the timeline with RTO achieved per phase and RPO
 * achieved, and a write through HAProxy landing on the promoted replica. Then it stops everything
 * and removes its folders (also on Ctrl-C), unless --keep, which leaves it all up until Ctrl-C.
 * The daemon's JSON logs go to a file whose path is printed; only that file is kept.
 */
import { createWriteStream, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync, type WriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as delay } from 'node:timers/promises';
import { Redis } from 'ioredis';
import pg from 'pg';
import { Daemon } from '../src/daemon.js';
import { formatDuration } from '../src/duration.js';
import { newToken } from '../src/http/auth.js';
import type { Incident } from '../src/incidents/manager.js';
import type { ExecutionView } from '../src/runbooks/executor.js';
import { TERMINAL, type ApprovalRecord, type StepRecord } from '../src/runbooks/store.js';
import { labFailoverPolicy } from '../test/lab/failover-policy.js';
import { startLab, type Lab } from '../test/lab/lab.js';

const USAGE = `usage: node --import tsx scripts/demo.ts [--wait-for-approval] [--keep]
  --wait-for-approval  do not approve the failover: print the command that approves it, and wait
  --keep               leave the lab and the daemon up at the end, until Ctrl-C`;

/** The demo's own database of the machine's Redis (the tests use 3 to 10). */
const REDIS_DB = 13;
const APPROVER = 'demo-approver';
/** How long the demo waits before approving by itself, so a person can read the request. */
const APPROVAL_PAUSE_MS = 3000;
const SERVICE = 'orders';
const RTO = '1h';
const RPO = '30s';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = join(here, '..');

/** Set by Ctrl-C (SIGINT) or SIGTERM: the clean-up runs, the story stops. */
let interrupted = false;
/** Stdout, for the story; silent once interrupted, so nothing of it shows between the clean-up lines. */
const say = (line = '') => void (interrupted || process.stdout.write(line + '\n'));
const tell = (line = '') => void process.stdout.write(line + '\n');
const secs = (s: number) => `${s.toFixed(1)} s`;
const errorText = (err: unknown) => (err instanceof Error ? err.message : String(err));

/** A failure the demo explains in one line before it cleans up and exits 1. */
class DemoError extends Error {}

function parseArgs(argv: string[]): { waitForApproval: boolean; keep: boolean } {
  const opts = { waitForApproval: false, keep: false };
  for (const arg of argv) {
    if (arg === '--wait-for-approval') opts.waitForApproval = true;
    else if (arg === '--keep') opts.keep = true;
    else if (arg === '--help' || arg === '-h') {
      say(USAGE);
      process.exit(0);
    } else {
      process.stderr.write(`demo: unknown argument ${arg}\n${USAGE}\n`);
      process.exit(2);
    }
  }
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
// The commands it prints (node bin/continuity.js ...) are run from the repository.
process.chdir(repoRoot);

// --- what cleanup stops ----------------------------------------------------------------------

let labStarting: Promise<Lab> | undefined;
let lab: Lab | undefined;
let daemon: Daemon | undefined;
let logStream: WriteStream | undefined;
let dir: string | undefined;
let logPath: string | undefined;
let probeWatch: NodeJS.Timeout | undefined;
let cleaning: Promise<void> | undefined;

/** Stops the daemon and the lab, empties the demo's Redis db, removes the temp folder but the log. Runs once. */
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    clearInterval(probeWatch);
    const problems: string[] = [];
    if (daemon) await daemon.stop().catch((e: unknown) => problems.push(`daemon: ${errorText(e)}`));
    if (logStream) await new Promise<void>((r) => logStream!.end(r));
    // A lab still starting (Ctrl-C during start) is stopped as soon as it is up.
    lab ??= await labStarting?.catch(() => undefined);
    if (lab) await lab.stop().catch((e: unknown) => problems.push(`lab: ${errorText(e)}`));
    await flushRedisDb().catch(() => {});
    if (dir) {
      for (const entry of readdirSync(dir)) if (entry !== 'daemon.log') rmSync(join(dir, entry), { recursive: true, force: true });
    }
    tell(
      problems.length
        ? `cleaned up, with problems: ${problems.join('; ')}`
        : 'cleaned up: daemon and lab stopped (HAProxy, apps, PostgreSQL, sshd), their folders removed',
    );
    if (logPath) tell(`daemon log kept: ${logPath}`);
  })();
  return cleaning;
}

async function flushRedisDb(): Promise<void> {
  const r = new Redis(`redis://127.0.0.1:6379/${REDIS_DB}`, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null });
  r.on('error', () => {});
  try {
    await r.connect();
    await r.flushdb();
  } finally {
    r.disconnect();
  }
}

let signalledAt: number | undefined;
function onSignal(signal: NodeJS.Signals): void {
  if (signalledAt !== undefined) {
    // The same signal often comes twice (to the process and to its group); a later one exits at
    // once, and the lab's exit handlers still kill its processes and remove its folders.
    if (Date.now() - signalledAt > 2000) process.exit(130);
    return;
  }
  signalledAt = Date.now();
  interrupted = true;
  tell();
  tell(`${signal}: cleaning up (Ctrl-C again in 2 s to exit at once)`);
  void cleanup().finally(() => process.exit(130));
}
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);

// --- helpers ---------------------------------------------------------------------------------

async function until<T>(what: string, ms: number, fn: () => Promise<T | undefined | false> | T | undefined | false): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new DemoError(`timed out after ${formatDuration(ms)} waiting for ${what}`);
    await delay(200);
  }
}

/** One insert per row through HAProxy's pg frontend; returns the ids and the port of the server that committed them. */
async function writeThroughHaproxy(l: Lab, n: number, note: string): Promise<{ ids: number[]; serverPort: number; inRecovery: boolean }> {
  const client = new pg.Client({
    connectionString: l.pgTraffic.url,
    connectionTimeoutMillis: 3000,
    query_timeout: 3000,
    application_name: 'continuity-demo',
  });
  client.on('error', () => {});
  await client.connect();
  try {
    const ids: number[] = [];
    for (let i = 0; i < n; i++) {
      const { rows } = await client.query<{ id: string }>('INSERT INTO orders (note) VALUES ($1) RETURNING id', [note]);
      ids.push(Number(rows[0]!.id));
    }
    const { rows } = await client.query<{ port: number; r: boolean }>('SELECT inet_server_port() AS port, pg_is_in_recovery() AS r');
    return { ids, serverPort: rows[0]!.port, inRecovery: rows[0]!.r };
  } finally {
    await client.end().catch(() => {});
  }
}

/** POST /orders through HAProxy's web frontend; the site that served it answers in X-Site. */
async function postOrder(l: Lab, note: string): Promise<string> {
  const res = await fetch(`${l.webTraffic.url}/orders`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ note }),
    signal: AbortSignal.timeout(5000),
  });
  const body = (await res.json().catch(() => ({}))) as { id?: number; error?: string };
  return `POST ${l.webTraffic.url}/orders -> ${res.status}${body.id !== undefined ? ` order ${body.id}` : ''}${body.error ? ` (${body.error})` : ''}, served by the ${res.headers.get('x-site') ?? '?'} site`;
}

const range = (ids: number[]) => (ids.length > 1 ? `${ids[0]}-${ids[ids.length - 1]}` : String(ids[0]));

function configText(l: Lab, approverSha: string): { config: string; probes: string } {
  const config = `# Written by scripts/demo.ts for one run against the lab; removed when the demo ends.
daemon:
  listen: 127.0.0.1:0
  redis_url: redis://127.0.0.1:6379/${REDIS_DB}
  log_level: info
  probes_dir: ../probes
  runbooks_dir: ${join(repoRoot, 'runbooks')}
  state_dir: ../var
  shutdown_grace: 2s
  runbook_lock_duration: 2s
auth:
  tokens:
    - { name: ${APPROVER}, sha256: ${approverSha}, roles: [approver] }
sites:
  primary: { role: primary, description: lab primary site }
  dr: { role: dr, description: lab DR site }
services:
  ${SERVICE}:
    description: Order entry (the lab's orders table and apps)
    rto: ${RTO}
    rpo: ${RPO}
${labFailoverPolicy(l, 'approval')}`;
  const probes = `probes:
  - id: orders-pg-primary
    kind: postgres
    site: primary
    services: [${SERVICE}]
    interval: 1s
    timeout: 800ms
    failure_threshold: 3
    description: the primary database answers and is a primary
    postgres: { host: 127.0.0.1, port: ${l.primary.port}, user: postgres, database: postgres, expect_role: primary }
  - id: orders-pg-replica
    kind: postgres
    site: dr
    services: [${SERVICE}]
    interval: 1s
    timeout: 800ms
    failure_threshold: 3
    description: the DR replica answers (and streams while the primary lives)
    postgres: { host: 127.0.0.1, port: ${l.replica.port}, user: postgres, database: postgres }
  - id: orders-web-public
    kind: http
    site: dr
    interval: 1s
    timeout: 800ms
    failure_threshold: 1
    description: the public endpoint is served by the DR site (true only after a failover)
    http: { url: "${l.webTraffic.url}/health" }
    conditions: ['headers["x-site"] == "dr"']
`;
  return { config, probes };
}

// --- the story -------------------------------------------------------------------------------

async function main(): Promise<number> {
  say('Continuity demo: a primary and a DR site on this machine, and a failover with one approval.');
  say();
  say('starting the lab: PostgreSQL primary + synchronous replica, HAProxy, one app per site, sshd...');
  const t0 = Date.now();
  labStarting = startLab({ redisDb: REDIS_DB });
  const l = await labStarting;
  lab = l;
  if (interrupted) return 130;
  say(`lab up in ${secs((Date.now() - t0) / 1000)}`);
  say(`  primary site: PostgreSQL 127.0.0.1:${l.primary.port} (primary), app ${l.apps.primary.url}`);
  say(`  dr site:      PostgreSQL 127.0.0.1:${l.replica.port} (synchronous replica), app ${l.apps.dr.url}`);
  say(`  traffic:      HAProxy ${l.pgTraffic.url} and ${l.webTraffic.url}`);
  say(`  HAProxy runtime API 127.0.0.1:${l.haproxyRuntime.port}, sshd (fencing) 127.0.0.1:${l.sshd.port}`);
  say();

  // The config, as failover.test.ts writes one.
  dir = mkdtempSync(join(tmpdir(), 'continuity-demo-'));
  mkdirSync(join(dir, 'config'));
  mkdirSync(join(dir, 'probes'));
  const { token, sha256 } = newToken();
  const text = configText(l, sha256);
  const configPath = join(dir, 'config', 'continuity.yaml');
  writeFileSync(configPath, text.config);
  writeFileSync(join(dir, 'probes', 'lab.yaml'), text.probes);
  logPath = join(dir, 'daemon.log');
  logStream = createWriteStream(logPath);
  // The runbook's db_password input defaults to this variable: the lab trusts loopback.
  process.env.CONTINUITY_DB_PASSWORD ??= '';

  const d = new Daemon({ configPath, port: 0, logStream, firstRun: 'now' });
  daemon = d;
  await d.start();
  if (!d.executor) throw new DemoError(`the daemon runs without its runbook executor (Redis db ${REDIS_DB} unreachable?)`);
  const url = d.url;
  say(`daemon up, config ${configPath}`);
  say(`  API:     ${url}/api/v1/status`);
  say(`  metrics: ${url}/metrics`);
  say(`  logs:    ${logPath} (JSON)`);
  say(`  service ${SERVICE}: RTO ${RTO}, RPO ${RPO}; failover by runbooks/failover-postgres v1 after an approval`);
  say(`demo approver token (role approver, valid for this run only):`);
  say(`  export CONTINUITY_TOKEN=${token}`);
  say(`  node bin/continuity.js executions --url ${url}`);
  say();

  const api = async <T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> => {
    const res = await fetch(url + path, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(10_000),
    });
    const parsed = (await res.json().catch(() => undefined)) as (T & { message?: string }) | undefined;
    if (!res.ok) throw new DemoError(`${method} ${path}: ${res.status} ${parsed?.message ?? ''}`);
    return parsed as T;
  };

  say('waiting for the probes (every 1 s)...');
  await until(
    'both databases probed UP',
    30_000,
    () => d.status().probes.filter((p) => p.id.startsWith('orders-pg-') && p.state === 'UP').length === 2,
  );
  await until('a first result of every probe', 10_000, () => d.status().probes.every((p) => p.last));
  const lastState = new Map<string, string>();
  for (const p of d.status().probes) {
    lastState.set(p.id, p.state);
    const why = p.id === 'orders-web-public' && p.state !== 'UP' ? ': the primary site serves it (UP only after a failover)' : '';
    say(`  ${p.id.padEnd(18)} ${p.site.padEnd(8)} ${p.state}${why}`);
  }
  // From now on every probe state change is printed as it happens.
  probeWatch = setInterval(() => {
    for (const p of d.status().probes) {
      const was = lastState.get(p.id);
      if (was === p.state) continue;
      lastState.set(p.id, p.state);
      say(`  probe ${p.id}: ${was} -> ${p.state}${p.state !== 'UP' && p.last?.reason ? ` (${p.last.reason})` : ''}`);
    }
  }, 100);
  say();

  say('writes flowing through HAProxy:');
  const before = await writeThroughHaproxy(l, 10, 'demo before');
  say(
    `  10 orders written through ${l.pgTraffic.url}: ids ${range(before.ids)}, committed on 127.0.0.1:${before.serverPort} (the primary)`,
  );
  say(`  ${await postOrder(l, 'demo before (web)')}`);
  say();

  await delay(1000);
  say('killing the primary PostgreSQL (kill -9 of its postmaster)...');
  const pid = await l.killPrimary();
  say(`  postmaster ${pid} is gone (${new Date().toISOString()})`);

  // Follows the incident and its execution, printing what is new on each look.
  let incident: Incident | undefined;
  let view: ExecutionView | undefined;
  let eventsShown = 0;
  const stepShown = new Map<string, string>();
  /** Prints what is new since the last look: incident events and step results, in the order they happened. */
  const look = async (): Promise<void> => {
    const list = await api<Incident[]>('GET', '/api/v1/incidents');
    const id = incident?.id;
    incident = id ? (list.find((i) => i.id === id) ?? incident) : list.find((i) => i.service === SERVICE);
    if (!incident) return;
    const lines: Array<[number, string]> = incident.timeline.slice(eventsShown).map((e) => [e.at, incidentLine(incident!, e)]);
    eventsShown = incident.timeline.length;
    if (incident.executionId) {
      view = await api<ExecutionView>('GET', `/api/v1/executions/${encodeURIComponent(incident.executionId)}`);
      for (const s of view.steps) {
        const line = stepLine(s);
        if (line) lines.push([s.finishedAt ?? Date.now(), line]);
      }
    }
    for (const [, line] of lines.sort((a, b) => a[0] - b[0])) say(line);
  };
  const incidentLine = (i: Incident, e: Incident['timeline'][number]): string => {
    if (e.type === 'opened') return `incident ${i.id} opened: ${e.message}`;
    if (e.type === 'closed') return `incident closed: ${e.message}`;
    return `${e.type.replace(/_/g, ' ')}: ${e.message}`;
  };
  /** A step's result, once per result (a retry is a new one); undefined when there is nothing new. */
  const stepLine = (s: StepRecord): string | undefined => {
    if (s.status === 'started' || s.status === 'waiting' || s.status === 'planned') return undefined;
    const key = `${s.phase}:${s.step}`;
    const sig = `${s.status}:${s.attempt}`;
    if (stepShown.get(key) === sig) return undefined;
    stepShown.set(key, sig);
    const took =
      s.durationSeconds !== undefined
        ? formatDuration(s.durationSeconds * 1000)
        : s.requestedAt !== undefined && s.finishedAt !== undefined
          ? formatDuration(s.finishedAt - s.requestedAt)
          : '';
    let status: string = s.status;
    if (s.retrying) status += ', retrying';
    if (s.continued) status += ', went on';
    const who = s.outputs?.approvers;
    const note = s.reason ?? (Array.isArray(who) ? `approved by ${who.join(', ')}` : '');
    const name = `${s.phase === 'rollback' ? '(rollback) ' : ''}${s.step}`;
    return `  step ${name.padEnd(17)} ${s.kind.padEnd(8)} ${status.padEnd(15)} ${took.padStart(6)}${note ? `  ${note}` : ''}`;
  };

  await until('an incident with a failover decision', 45_000, async () => {
    await look();
    return incident?.executionId !== undefined;
  });
  const waiting = await until('the approval request', 30_000, async () => {
    await look();
    if (view && TERMINAL.has(view.execution.status))
      throw new DemoError(`the execution ended ${view.execution.status} before any approval`);
    return view?.execution.status === 'waiting_approval' ? view : undefined;
  });
  const ex = waiting.execution;
  const asked = waiting.timeline.find((e) => e.type === 'approval_needed');
  const step = waiting.steps.find((s) => s.status === 'waiting')!;
  say();
  say(`approval requested, execution ${ex.id}, step ${step.step}:`);
  say(`  asked:        ${asked?.message.replace(/^.*?…\): /, '') ?? '-'}`);
  say(`  runbook:      ${ex.runbook} v${ex.version}`);
  say(`  sha256:       ${ex.hash}`);
  say(`  data at risk: ${String(ex.inputs.data_at_risk ?? 'unknown')}`);
  say(`  requested by: ${ex.requestedBy}`);
  say('  inputs:');
  const width = Math.max(...Object.keys(ex.inputs).map((k) => k.length)) + 1;
  for (const [k, v] of Object.entries(ex.inputs)) say(`    ${`${k}:`.padEnd(width)} ${JSON.stringify(v)}`);
  say();

  if (opts.waitForApproval) {
    say('waiting for your approval; in another terminal, in this folder:');
    say(`  CONTINUITY_TOKEN=${token} node bin/continuity.js approve ${ex.id} --url ${url}`);
    say(`(or deny it: the same with deny ${ex.id} --comment "<why>" instead)`);
    // Only the execution is watched here: its steps are printed under the heading below.
    const answered = await until('an answer', Infinity, async () => {
      const v = await api<ExecutionView>('GET', `/api/v1/executions/${encodeURIComponent(ex.id)}`);
      return v.execution.status !== 'waiting_approval' ? v : undefined;
    });
    const answer: ApprovalRecord | undefined = answered.approvals.find((a) => a.step === step.step);
    if (answer?.decision === 'deny') {
      await until('the execution to stop', 30_000, async () => {
        await look();
        return view && TERMINAL.has(view.execution.status);
      });
      say(`denied by ${answer.who}: the execution ${view!.execution.status}; nothing was fenced, promoted or switched`);
      return 0;
    }
    say(`approved by ${answer?.who ?? 'someone'}${answer ? `, recorded for sha256 ${answer.hash.slice(0, 12)}…` : ''}`);
  } else {
    say(`approving as ${APPROVER} in ${formatDuration(APPROVAL_PAUSE_MS)} (npm start -- --wait-for-approval lets you do it)`);
    await delay(APPROVAL_PAUSE_MS);
    say(`approving as ${APPROVER}: runbook ${ex.runbook} v${ex.version}, sha256 ${ex.hash.slice(0, 12)}…`);
    const { approval } = await api<{ approval: ApprovalRecord }>('POST', `/api/v1/executions/${encodeURIComponent(ex.id)}/approvals`, {
      decision: 'approve',
      hash: ex.hash,
      step: step.step,
      comment: 'demo: replica in sync, approved by the demo itself',
    });
    say(`  approved by ${approval.who}, recorded for sha256 ${approval.hash.slice(0, 12)}…`);
  }

  say();
  say('the runbook, step by step:');
  const done = await until('the execution to finish', 120_000, async () => {
    await look();
    return view && TERMINAL.has(view.execution.status) ? view : undefined;
  });
  if (done.execution.status !== 'succeeded') {
    throw new DemoError(`the execution ended ${done.execution.status}${done.execution.reason ? `: ${done.execution.reason}` : ''}`);
  }
  say(`execution ${done.execution.status} in ${secs((done.execution.finishedAt! - done.execution.createdAt) / 1000)}`);
  const closed = await until('the incident to close', 60_000, async () => {
    await look();
    if (incident?.status === 'failover_failed') throw new DemoError(`the failover failed: ${incident.timeline.at(-1)?.message ?? ''}`);
    return incident?.status === 'closed' ? incident : undefined;
  });
  clearInterval(probeWatch);

  // The timeline, from the first failed probe run of the outage.
  say();
  say('timeline, from the outage start:');
  const approveStep = done.steps.find((s) => s.kind === 'approval');
  const events: Array<[number, string]> = [
    [closed.outageStart, 'outage starts: first failed run of orders-pg-primary'],
    ...closed.timeline.map((e): [number, string] => [e.at, `${e.type.replace(/_/g, ' ')}: ${e.message}`]),
  ];
  if (approveStep?.requestedAt) events.push([approveStep.requestedAt, 'approval asked']);
  if (approveStep?.finishedAt) events.push([approveStep.finishedAt, `approved by ${done.approvals.map((a) => a.who).join(', ')}`]);
  if (closed.executionFinishedAt) events.push([closed.executionFinishedAt, 'runbook finished']);
  events.sort((a, b) => a[0] - b[0]);
  for (const [at, what] of events) say(`  ${`+${secs((at - closed.outageStart) / 1000)}`.padStart(9)}  ${what}`);
  say();
  const rto = closed.rto!;
  say(`RTO achieved: ${secs(rto.total)} (target ${RTO})`);
  for (const [phase, value] of [
    ['detection', rto.detection],
    ['decision', rto.decision],
    ['approval wait', rto.approval_wait],
    ['runbook', rto.runbook],
    ['verification', rto.verification],
  ] as const)
    say(`  ${`${phase}:`.padEnd(15)} ${secs(value)}`);
  const rpo = closed.rpo;
  if (rpo?.bytes !== undefined) {
    say(`RPO achieved: ${rpo.bytes} B${rpo.seconds !== undefined ? `, ${rpo.seconds} s` : ''} of data lost (target ${RPO})`);
    say(`  measured as the ${rpo.method}`);
  } else say(`RPO achieved: not measurable (target ${RPO})`);
  say();

  say('after the failover, through the same HAProxy:');
  const after = await writeThroughHaproxy(l, 5, 'demo after');
  const where =
    after.serverPort === l.replica.port && !after.inRecovery
      ? 'the promoted replica, no longer in recovery'
      : `${after.inRecovery ? 'a server in recovery' : 'a writable server'}, not the promoted replica`;
  say(`  5 orders written through ${l.pgTraffic.url}: ids ${range(after.ids)}, committed on 127.0.0.1:${after.serverPort} (${where})`);
  if (after.serverPort !== l.replica.port) throw new DemoError('writes did not land on the promoted replica');
  if (after.ids[0]! > before.ids[before.ids.length - 1]! + 2)
    say('  (the ids jump: a promoted PostgreSQL goes on from its last logged sequence value, up to 32 ahead)');
  say(`  ${await postOrder(l, 'demo after (web)')}`);
  const onReplica = new Set(await l.orderIds('replica'));
  const lost = before.ids.filter((id) => !onReplica.has(id));
  say(
    lost.length === 0
      ? `  all ${before.ids.length} orders acknowledged before the kill are on the promoted replica`
      : `  ${lost.length} orders acknowledged before the kill are missing on the promoted replica: ${lost.join(', ')}`,
  );
  say(`  writable primaries behind HAProxy: ${await l.writablePrimariesBehindHaproxy()}`);
  say();
  return 0;
}

main().then(
  async (code) => {
    if (interrupted) return;
    if (opts.keep && code === 0) {
      say(`--keep: the lab and the daemon stay up (API ${daemon?.url}/api/v1/status); Ctrl-C stops them and cleans up`);
      return;
    }
    await cleanup();
    process.exit(code);
  },
  async (err: unknown) => {
    if (interrupted) return;
    say();
    say(`demo failed: ${errorText(err)}`);
    if (!(err instanceof DemoError) && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
    await cleanup();
    process.exit(1);
  },
);
