/**
 * Restore bench: `npm run bench:restore [size in GiB]` (default 1; fractions such as 0.25 work), or
 * `node --import tsx test/bench/restore.ts 2 --keep-source`.
 *
 * How long Continuity's restore test (the restore_tests manager running the shipped
 * runbooks/restore-test-postgres in the real, compiled daemon) takes to prove a pg_dump -Fc backup
 * of the given size restores, against the fastest way to do the same by hand, on this machine's
 * PostgreSQL (127.0.0.1:5432, user postgres) and an s3rver in this process:
 *
 *   1. the source database continuity_bench_restore_<size>: a few tables of random bytea (1 KiB a
 *      row, from pgcrypto's gen_random_bytes, so pg_dump's compression gains nothing) with primary
 *      keys, filled until its dump is at least the size. Reused when a previous run left it
 *      complete (--keep-source); nothing else is kept between runs;
 *   2. pg_dump -Fc -Z 1 of it to a temp file (level 1: random data does not compress at any level,
 *      and level 1 makes the dump several times faster; restoring inflates either at the same speed),
 *      uploaded with PutObject (a stream with its ContentLength) to s3rver under bench-restore/;
 *   3. Continuity, the way production runs it: built first with `npm run build` (what the
 *      Dockerfile runs: `tsc -p tsconfig.build.json` into dist/, plus the console's static files),
 *      then the daemon as a child process, `node dist/cli.js daemon --config` (with --tsx:
 *      `node --import tsx src/cli.ts daemon --config`, from source and unbuilt, which costs ~30 MiB
 *      of RSS), its log in the temp folder, printed, tail only, on failure. Redis db
 *      --redis-db (12) flushed first, the runbook copied into its runbooks folder, an operator
 *      token, and the backup set configured as a user would: an s3-backup probe
 *      (bench-restore, interval 1h) of the service bench (rto 1h), and
 *      `restore_tests.bench-restore: { runbook: restore-test-postgres, scratch: { postgres: ... },
 *      inputs: { table, min_rows } }` (the manager injects bucket, prefix, s3_* and scratch_*).
 *      The test is started with POST /api/v1/restore-tests/bench-restore/runs and its report
 *      polled (every 100 ms) until it appears; it must pass. continuity_s is the report's
 *      timings.total, what the RTO is held against: from the first step's start to the end of
 *      validation (the scratch database's drop not counted). The report's phase timings (prepare,
 *      download, restore, validate, cleanup) and its steps go to stderr. The daemon's RSS is
 *      sampled every 200 ms and its VmHWM read once the report is in; rss_mb is the larger of
 *      the two (MiB, whole process lifetime);
 *   4. by hand: GetObject to a file, then pg_restore -j <jobs> (default: this machine's CPU count)
 *      into a fresh database, timed together (the createdb before it is not timed);
 *
 * each path after a CHECKPOINT, so neither pays for the other's dirty buffers.
 *
 * Progress goes to stderr; the last line on stdout is
 *
 *   restore size_gib=X continuity_s=X by_hand_s=X ratio=X rss_mb=X
 *
 * with size_gib the dump's real size and ratio = continuity_s / by_hand_s. Exit 1 on any failure.
 * Everything is on 127.0.0.1. Bounded: the restore test and the by-hand restore each have a
 * deadline (10 min + 10 min a GiB), and a watchdog ends the whole bench (cleaning up) if it
 * overruns. Every database it made (the source too, unless --keep-source), the temp folder,
 * s3rver and the daemon go at the end, also on failure, Ctrl-C or SIGTERM. dist/ stays (git-ignored).
 *
 * Options, as flags (`--jobs 2` or `--jobs=2`) or environment variables:
 *   [size]           BENCH_SIZE_GIB      dump size in GiB (default 1)
 *   --jobs N         BENCH_JOBS          pg_restore -j for the by-hand path (default: CPU count)
 *   --redis-db N     BENCH_REDIS_DB      the machine's Redis db the daemon uses (default 12)
 *   --keep-source    BENCH_KEEP_SOURCE=1 keep the source database for the next run
 *   --tsx            BENCH_TSX=1         run the daemon from source through tsx (no build)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import {
  closeSync,
  copyFileSync,
  createReadStream,
  createWriteStream,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  writeSync,
} from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { Redis } from 'ioredis';
import { hashToken } from '../../src/http/auth.js';
import type { RestoreTestReport } from '../../src/restore-tests/report.js';
import type { ExecutionView } from '../../src/runbooks/executor.js';
import { startS3rver } from '../helpers/s3rver.js';
import { bailer, logTail, stopChild } from './child.js';
import { option } from './options.js';

const OPERATOR = 'tok-bench-restore-operator-0123456789';
const RUNBOOK = 'restore-test-postgres';
/** The backup set: the s3-backup probe's id, and the key of its restore test. */
const SET = 'bench-restore';
const SERVICE = 'bench';
const BUCKET = 'backups';
const PREFIX = 'bench-restore/';
/** s3rver's built-in account. */
const S3_KEY = 'S3RVER';
const PG_ARGS = ['--host=127.0.0.1', '--port=5432', '--username=postgres', '--no-password'];
const GIB = 1024 ** 3;
const ROW_BYTES = 1024;
/** Source tables: enough for pg_restore -j to have work for every job on a small machine. */
const TABLES = 4;
/** pg_dump -Fc -Z 1 of 1 KiB random bytea rows is ~1.17x the payload (hex in COPY, then deflate): aim a little low, top up if short. */
const DUMP_PER_PAYLOAD = 1.15;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const started = Date.now();
const say = (line: string) => process.stderr.write(`bench ${((Date.now() - started) / 1000).toFixed(1).padStart(6)}s ${line}\n`);
const message = (err: unknown) => (err instanceof Error ? err.message : String(err));
const mib = (bytes: number) => (bytes / 1024 ** 2).toFixed(1);

interface Options {
  sizeGib: number;
  jobs: number;
  redisDb: number;
  keepSource: boolean;
  tsx: boolean;
}

function parseOptions(): Options {
  const argv = process.argv.slice(2);
  const positional = argv.filter((a, i) => !a.startsWith('--') && !/^--(jobs|redis-db)$/.test(argv[i - 1] ?? ''));
  if (positional.length > 1) throw new Error(`one size at most, got ${positional.join(' ')}`);
  const sizeText = positional[0] ?? process.env.BENCH_SIZE_GIB ?? '1';
  const sizeGib = Number(sizeText);
  if (!Number.isFinite(sizeGib) || sizeGib <= 0 || sizeGib > 50)
    throw new Error(`the size must be a number of GiB in (0, 50], got ${sizeText}`);
  const int = (name: string, env: string, def: number, min: number, max: number): number => {
    const text = option(name, env);
    const v = text === undefined ? def : Number(text);
    if (!Number.isInteger(v) || v < min || v > max) throw new Error(`--${name} must be an integer ${min}-${max}, got ${text}`);
    return v;
  };
  return {
    sizeGib,
    jobs: int('jobs', 'BENCH_JOBS', availableParallelism(), 1, 64),
    redisDb: int('redis-db', 'BENCH_REDIS_DB', 12, 0, 15),
    keepSource: argv.includes('--keep-source') || process.env.BENCH_KEEP_SOURCE === '1',
    tsx: argv.includes('--tsx') || process.env.BENCH_TSX === '1',
  };
}

// ---------------------------------------------------------------------------------------------
// Programs and PostgreSQL.

/** Runs a program to its end (never through a shell); rejects with its stderr on a non-zero exit. */
async function run(program: string, args: string[], opts: { timeoutMs?: number } = {}): Promise<string> {
  const child = spawn(program, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-8000)));
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 600_000);
  try {
    const [code, signal] = (await once(child, 'close')) as [number | null, string | null];
    if (code !== 0) throw new Error(`${program} exited with ${code ?? signal}: ${err.trim()}`);
    return out;
  } finally {
    clearTimeout(timer);
  }
}

const psql = (sql: string, db = 'postgres', timeoutMs?: number) =>
  run('psql', [...PG_ARGS, '-X', '-Atq', '-v', 'ON_ERROR_STOP=1', `--dbname=${db}`, '-c', sql], { timeoutMs }).then((o) => o.trim());

const dbExists = async (db: string) => (await psql(`SELECT 1 FROM pg_database WHERE datname = '${db}'`)) === '1';

/** Databases this run made, dropped at the end. */
const madeDatabases = new Set<string>();

async function dropDatabase(db: string): Promise<void> {
  await run('dropdb', [...PG_ARGS, '--if-exists', '--force', db], { timeoutMs: 120_000 });
  madeDatabases.delete(db);
}

// ---------------------------------------------------------------------------------------------
// The source database and its dump.

interface Source {
  db: string;
  /** Rows in each table; the runbook counts the first. */
  rowsPerTable: number[];
}

const tableName = (i: number) => `public.blobs_${i + 1}`;

async function addRows(db: string, rows: number, rowsPerTable: number[]): Promise<void> {
  // Spread over the tables, two INSERTs at a time (gen_random_bytes is CPU-bound in the backend).
  const per = Math.ceil(rows / TABLES);
  const todo = rowsPerTable.map((n, i) => ({ table: tableName(i), from: n + 1, to: n + per, i }));
  const workers = Array.from({ length: Math.min(TABLES, Math.max(1, availableParallelism())) }, async () => {
    for (let t = todo.shift(); t; t = todo.shift()) {
      await psql(
        `INSERT INTO ${t.table} SELECT g, gen_random_bytes(${ROW_BYTES}) FROM generate_series(${t.from}, ${t.to}) g`,
        db,
        3_600_000,
      );
      rowsPerTable[t.i] = t.to;
    }
  });
  await Promise.all(workers);
}

async function readMeta(db: string): Promise<{ complete: boolean; rows: number[] } | undefined> {
  if (!(await dbExists(db))) return undefined;
  const text = await psql(`SELECT coalesce((SELECT complete::text || ' ' || rows::text FROM bench_meta), '')`, db).catch(() => '');
  if (!text) return { complete: false, rows: [] };
  const [complete, rows] = text.split(' ');
  return { complete: complete === 'true', rows: (rows ?? '').replace(/[{}]/g, '').split(',').map(Number) };
}

/** The source database with a dump at least `targetBytes` long, and that dump in `dumpPath`. */
async function sourceAndDump(o: Options, db: string, dumpPath: string): Promise<Source> {
  const target = Math.ceil(o.sizeGib * GIB);
  const meta = await readMeta(db);
  // Dropped at the end unless kept, also when reused.
  madeDatabases.add(db);
  let rowsPerTable: number[];
  if (meta?.complete && meta.rows.length === TABLES) {
    rowsPerTable = meta.rows;
    say(`source: reusing ${db} (${rowsPerTable.reduce((a, b) => a + b, 0)} rows of ${ROW_BYTES} random bytes)`);
  } else {
    if (meta) {
      say(`source: ${db} exists but is incomplete: recreating it`);
      await dropDatabase(db);
    }
    await run('createdb', [...PG_ARGS, db]);
    madeDatabases.add(db);
    await psql(
      'CREATE EXTENSION pgcrypto; CREATE TABLE bench_meta (complete boolean NOT NULL, rows bigint[] NOT NULL); ' +
        Array.from(
          { length: TABLES },
          (_, i) =>
            `CREATE TABLE ${tableName(i)} (id bigint PRIMARY KEY, payload bytea NOT NULL); ALTER TABLE ${tableName(i)} ALTER payload SET STORAGE EXTERNAL;`,
        ).join(' '),
      db,
    );
    rowsPerTable = Array.from({ length: TABLES }, () => 0);
    const rows = Math.ceil(target / DUMP_PER_PAYLOAD / ROW_BYTES);
    const t = Date.now();
    say(`source: filling ${db}: ${rows} rows of ${ROW_BYTES} random bytes in ${TABLES} tables`);
    await addRows(db, rows, rowsPerTable);
    say(`source: filled in ${((Date.now() - t) / 1000).toFixed(1)}s`);
  }
  for (let attempt = 1; ; attempt++) {
    const t = Date.now();
    say(`dump: pg_dump -Fc -Z 1 ${db}`);
    await run('pg_dump', [...PG_ARGS, '--format=custom', '--compress=1', `--file=${dumpPath}`, db], { timeoutMs: 3_600_000 });
    const size = statSync(dumpPath).size;
    say(`dump: ${mib(size)} MiB in ${((Date.now() - t) / 1000).toFixed(1)}s`);
    if (size >= target) break;
    if (attempt >= 4) throw new Error(`the dump is still ${size} bytes, short of ${target}, after ${attempt} tries`);
    const more = Math.ceil(((target - size) * 1.02) / DUMP_PER_PAYLOAD / ROW_BYTES) + TABLES;
    say(`dump: ${target - size} bytes short of ${target}: adding ${more} rows`);
    await psql('UPDATE bench_meta SET complete = false', db).catch(() => {});
    await addRows(db, more, rowsPerTable);
  }
  await psql(`DELETE FROM bench_meta; INSERT INTO bench_meta VALUES (true, '{${rowsPerTable.join(',')}}'); ANALYZE`, db);
  return { db, rowsPerTable };
}

// ---------------------------------------------------------------------------------------------
// The daemon, as a child process.

interface DaemonHandle {
  url: string;
  child: ChildProcess;
  logTail(lines?: number): string;
  stop(): Promise<void>;
}

/** What the daemon's config needs of the run: the store, and what the restore test checks. */
interface BenchSet {
  endpoint: string;
  table: string;
  minRows: number;
}

function writeFile(path: string, text: string): void {
  const fd = openSync(path, 'w');
  try {
    writeSync(fd, text);
  } finally {
    closeSync(fd);
  }
}

async function startDaemon(o: Options, dir: string, set: BenchSet): Promise<DaemonHandle> {
  const redisUrl = `redis://127.0.0.1:6379/${o.redisDb}`;
  const redis = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await redis.connect();
  await redis.flushdb();
  redis.disconnect();

  for (const sub of ['config', 'probes', 'var', `runbooks/${RUNBOOK}`]) mkdirSync(join(dir, sub), { recursive: true });
  copyFileSync(`runbooks/${RUNBOOK}/v1.yaml`, join(dir, `runbooks/${RUNBOOK}/v1.yaml`));
  const configPath = join(dir, 'config/continuity.yaml');
  // The backup set as a user configures it: an s3-backup probe, and a restore test keyed by its id.
  // The manager gives the runbook bucket, prefix and s3_* (from the probe) and scratch_* (from scratch).
  writeFile(
    configPath,
    `daemon:
  listen: 127.0.0.1:0
  redis_url: ${redisUrl}
  probes_dir: ../probes
  runbooks_dir: ../runbooks
  state_dir: ../var
auth:
  tokens:
    - { name: bench, sha256: ${hashToken(OPERATOR)}, roles: [operator] }
sites:
  primary: { role: primary }
  dr: { role: dr }
services:
  ${SERVICE}: { rto: 1h }
restore_tests:
  ${SET}:
    runbook: ${RUNBOOK}
    scratch: { postgres: { host: 127.0.0.1, port: 5432, user: postgres } }
    inputs: { table: ${set.table}, min_rows: ${set.minRows} }
`,
  );
  writeFile(
    join(dir, 'probes/backups.yaml'),
    `probes:
  - id: ${SET}
    kind: s3-backup
    site: primary
    services: [${SERVICE}]
    interval: 1h
    timeout: 30s
    s3-backup:
      endpoint: '${set.endpoint}'
      bucket: ${BUCKET}
      prefix: ${PREFIX}
      force_path_style: true
      max_age: 1d
      access_key_id: '\${env:CONTINUITY_S3_ACCESS_KEY_ID}'
      secret_access_key: '\${env:CONTINUITY_S3_SECRET_ACCESS_KEY}'
`,
  );

  const logPath = join(dir, 'daemon.log');
  const log = openSync(logPath, 'a');
  let child: ChildProcess;
  try {
    const entry = o.tsx ? ['--import', 'tsx', 'src/cli.ts'] : ['dist/cli.js'];
    child = spawn(process.execPath, [...entry, 'daemon', '--config', configPath], {
      stdio: ['ignore', log, 'pipe'],
      env: {
        ...process.env,
        CONTINUITY_S3_ACCESS_KEY_ID: S3_KEY,
        CONTINUITY_S3_SECRET_ACCESS_KEY: S3_KEY,
        CONTINUITY_DB_PASSWORD: 'unused-with-trust-auth',
      },
    });
  } catch (err) {
    closeSync(log);
    throw err;
  }
  live.daemonChild = child;
  // stderr to the log too, and the address the daemon prints once it listens.
  let stderr = '';
  const address = new Promise<string>((resolve) => {
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      writeSync(log, d);
      stderr += d;
      const m = /status:\s+(http:\/\/\S+?)\/api\/v1\/status/.exec(stderr);
      if (m) resolve(m[1]!);
    });
  });
  const tail = (lines = 30) => logTail(logPath, lines);
  const stop = async () => {
    await stopChild(child, 10_000);
    try {
      closeSync(log);
    } catch {
      // already closed
    }
  };
  try {
    const url = await Promise.race([
      address,
      once(child, 'exit').then(([code, signal]) => {
        throw new Error(`the daemon exited (${code ?? signal}) before it was ready:\n${tail()}`);
      }),
      sleep(60_000).then(() => {
        throw new Error(`the daemon did not print its address within 60 s:\n${tail()}`);
      }),
    ]);
    return { url, child, logTail: tail, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** Samples a process's VmRSS every 200 ms; `peak()` adds its VmHWM, read then. In bytes. */
function rssSampler(pid: number) {
  const field = (name: string): number | undefined => {
    try {
      const m = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      return m ? Number(m[1]) * 1024 : undefined;
    } catch {
      return undefined;
    }
  };
  let maxRss = field('VmRSS') ?? 0;
  const timer = setInterval(() => (maxRss = Math.max(maxRss, field('VmRSS') ?? 0)), 200);
  return {
    current: () => field('VmRSS') ?? 0,
    peak(): { sampled: number; hwm: number } {
      maxRss = Math.max(maxRss, field('VmRSS') ?? 0);
      return { sampled: maxRss, hwm: field('VmHWM') ?? 0 };
    },
    stop: () => clearInterval(timer),
  };
}

// ---------------------------------------------------------------------------------------------
// The two paths.

interface ContinuityResult {
  seconds: number;
  report: RestoreTestReport;
  rssPeak: number;
  rssHwm: number;
  rssSampled: number;
  rssIdle: number;
}

const PHASES = ['prepare', 'download', 'restore', 'validate', 'cleanup'] as const;
const secs = (n: number | undefined) => (n === undefined ? '-' : n.toFixed(3));

async function continuityPath(o: Options, dir: string, endpoint: string, source: Source, deadlineMs: number): Promise<ContinuityResult> {
  if (o.tsx) say('continuity: --tsx: the daemon runs from source (src/cli.ts through tsx), not compiled');
  else {
    const t = Date.now();
    say('continuity: building the daemon (npm run build: tsc -p tsconfig.build.json into dist/, as the Dockerfile does)');
    await run('npm', ['run', 'build'], { timeoutMs: 300_000 });
    say(`continuity: built in ${((Date.now() - t) / 1000).toFixed(1)}s`);
  }
  say(`continuity: starting the daemon (${o.tsx ? 'node --import tsx src/cli.ts' : 'node dist/cli.js'}, redis db ${o.redisDb})`);
  live.daemon = await startDaemon(o, dir, { endpoint, table: tableName(0), minRows: source.rowsPerTable[0]! });
  const d = live.daemon;
  const rss = rssSampler(d.child.pid!);
  try {
    const auth = { authorization: `Bearer ${OPERATOR}` };
    const alive = () => {
      if (d.child.exitCode !== null || d.child.signalCode !== null)
        throw new Error(`the daemon exited (${d.child.exitCode ?? d.child.signalCode}):\n${d.logTail()}`);
    };
    await psql('CHECKPOINT');
    const rssIdle = rss.current();
    say(`continuity: daemon at ${d.url}, pid ${d.child.pid}, RSS ${mib(rssIdle)} MiB; POST /api/v1/restore-tests/${SET}/runs`);
    const t0 = performance.now();
    const res = await fetch(`${d.url}/api/v1/restore-tests/${SET}/runs`, {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json' },
      body: '{}',
      signal: AbortSignal.timeout(30_000),
    });
    if (res.status !== 202) throw new Error(`POST restore test: HTTP ${res.status}: ${await res.text()}`);
    const { execution } = (await res.json()) as { execution: { id: string } };
    live.executionId = execution.id;
    say(`continuity: restore test started, execution ${execution.id}`);
    let report: RestoreTestReport | undefined;
    let lastSay = performance.now();
    for (;;) {
      alive();
      if (performance.now() - t0 > deadlineMs) throw new Error(`restore test ${execution.id}: no report after ${deadlineMs / 1000}s`);
      const r = await fetch(`${d.url}/api/v1/restore-tests/${SET}/reports/${execution.id}`, {
        headers: auth,
        signal: AbortSignal.timeout(5000),
      }).catch(() => undefined);
      if (r?.status === 200) {
        report = (await r.json()) as RestoreTestReport;
        break;
      }
      await r?.body?.cancel();
      if (performance.now() - lastSay > 5000) {
        lastSay = performance.now();
        // Where the execution is, for people watching: the running step and its progress.
        const v = await fetch(`${d.url}/api/v1/executions/${execution.id}`, { headers: auth, signal: AbortSignal.timeout(5000) })
          .then((x) => (x.ok ? (x.json() as Promise<ExecutionView>) : undefined))
          .catch(() => undefined);
        const running = v?.steps.filter((x) => x.status === 'started').at(-1);
        const p = running?.progress;
        say(
          `continuity: ${v?.execution.status ?? '?'}` +
            (running ? `, step ${running.step}` : '') +
            (p?.done !== undefined ? `, ${p.activity ?? ''} ${p.done}${p.total !== undefined ? `/${p.total}` : ''} ${p.unit ?? ''}` : '') +
            `; daemon RSS ${mib(rss.current())} MiB`,
        );
      }
      await sleep(100);
    }
    const wall = (performance.now() - t0) / 1000;
    const { sampled, hwm } = rss.peak();
    const stepText = report.steps
      .map((x) => `${x.phase === 'rollback' ? 'rollback:' : ''}${x.step}=${x.status === 'succeeded' ? secs(x.seconds) : x.status}`)
      .join(' ');
    if (report.result !== 'pass') {
      throw new Error(`restore test ${execution.id} failed: ${report.reason ?? '(no reason)'}; steps (s): ${stepText}`);
    }
    const total = report.timings.total;
    if (total === undefined) throw new Error(`restore test ${execution.id}: the report has no timings.total`);
    say(
      `continuity: pass; timings.total ${secs(total)}s (held against the RTO ${report.rtoSeconds}s, margin ${secs(report.rtoMarginSeconds)}s); ` +
        `POST to report ${wall.toFixed(3)}s`,
    );
    say(`continuity: phases (s): ${PHASES.map((p) => `${p}=${secs(report.timings[p])}`).join(' ')} (download overlaps restore: streamed)`);
    say(
      `continuity: steps (s): ${stepText}; backup ${report.backup.key ?? '?'} ${report.backup.bytes ?? '?'} bytes, ` +
        `${report.secondsPerGib !== undefined ? `${report.secondsPerGib.toFixed(1)} s/GiB restored` : ''}`,
    );
    say(`continuity: daemon RSS idle ${mib(rssIdle)} MiB, max sampled ${mib(sampled)} MiB, VmHWM ${mib(hwm)} MiB`);
    return { seconds: total, report, rssPeak: Math.max(sampled, hwm), rssHwm: hwm, rssSampled: sampled, rssIdle };
  } finally {
    rss.stop();
    delete live.daemon;
    await d.stop();
  }
}

async function byHandPath(
  o: Options,
  dir: string,
  s3: Awaited<ReturnType<typeof startS3rver>>['s3'],
  key: string,
  source: Source,
  deadlineMs: number,
) {
  const db = `continuity_bench_byhand_${process.pid}`;
  const file = join(dir, 'download.dump');
  await run('createdb', [...PG_ARGS, db]);
  madeDatabases.add(db);
  await psql('CHECKPOINT');
  say(
    `by hand: GetObject to a file, then pg_restore -j ${o.jobs} (${o.jobs === availableParallelism() ? 'the CPU count' : '--jobs'}) into ${db}`,
  );
  const t0 = performance.now();
  const res = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }), { abortSignal: AbortSignal.timeout(deadlineMs) });
  if (!(res.Body instanceof Readable)) throw new Error('GetObject returned no Node.js stream');
  await pipeline(res.Body, createWriteStream(file));
  const t1 = performance.now();
  await run('pg_restore', [...PG_ARGS, '--no-owner', '--no-privileges', '--exit-on-error', `--jobs=${o.jobs}`, `--dbname=${db}`, file], {
    timeoutMs: deadlineMs,
  });
  const t2 = performance.now();
  const rows = Number(await psql(`SELECT count(*) FROM ${tableName(0)}`, db));
  if (rows !== source.rowsPerTable[0]) throw new Error(`by hand: ${tableName(0)} holds ${rows} rows, expected ${source.rowsPerTable[0]}`);
  const seconds = (t2 - t0) / 1000;
  say(
    `by hand: download ${((t1 - t0) / 1000).toFixed(3)}s + pg_restore -j ${o.jobs} ${((t2 - t1) / 1000).toFixed(3)}s = ${seconds.toFixed(3)}s (${rows} rows checked)`,
  );
  rmSync(file, { force: true });
  await dropDatabase(db);
  return { seconds, download: (t1 - t0) / 1000, restore: (t2 - t1) / 1000 };
}

// ---------------------------------------------------------------------------------------------

/** What the run holds: cleaned up at the end, and on failure, signal or watchdog. */
const live: {
  dir?: string;
  s3rver?: Awaited<ReturnType<typeof startS3rver>>;
  daemon?: DaemonHandle;
  daemonChild?: ChildProcess;
  executionId?: string;
  keepSource?: string;
  redisDb?: number;
} = {};

let cleaning: Promise<void> | undefined;
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    const step = async (what: string, fn: () => Promise<unknown> | unknown) => {
      try {
        await fn();
      } catch (err) {
        say(`cleanup: ${what}: ${message(err)}`);
      }
    };
    await step('daemon', () => live.daemon?.stop());
    await step('s3rver', () => live.s3rver?.stop());
    if (live.executionId) madeDatabases.add(`continuity_restore_${live.executionId}`);
    for (const db of [...madeDatabases]) {
      if (db === live.keepSource) continue;
      await step(`drop ${db}`, () => dropDatabase(db));
    }
    if (live.redisDb !== undefined) {
      await step('redis', async () => {
        const r = new Redis(`redis://127.0.0.1:6379/${live.redisDb}`, { lazyConnect: true, maxRetriesPerRequest: 1 });
        await r.connect();
        await r.flushdb();
        r.disconnect();
      });
    }
    if (live.dir) await step('temp folder', () => rmSync(live.dir!, { recursive: true, force: true }));
  })();
  return cleaning;
}

async function main(o: Options): Promise<void> {
  const slug = String(o.sizeGib).replace(/[^0-9]/g, '_');
  const sourceDb = `continuity_bench_restore_${slug}`;
  if (o.keepSource) live.keepSource = sourceDb;
  live.redisDb = o.redisDb;
  const deadlineMs = 600_000 + o.sizeGib * 600_000;
  say(
    `restore: size ${o.sizeGib} GiB, source ${sourceDb}${o.keepSource ? ' (kept)' : ''}, by-hand jobs ${o.jobs}, redis db ${o.redisDb}, ${availableParallelism()} CPUs`,
  );
  live.dir = mkdtempSync(join(tmpdir(), 'continuity-bench-restore-'));
  const dir = live.dir;
  const dumpPath = join(dir, 'source.dump');
  const source = await sourceAndDump(o, sourceDb, dumpPath);
  const size = statSync(dumpPath).size;

  live.s3rver = await startS3rver({ bucket: BUCKET, accessKeyId: S3_KEY, secretAccessKey: S3_KEY });
  const { endpoint, s3 } = live.s3rver;
  const key = `${PREFIX}${sourceDb}.dump`;
  const t = Date.now();
  await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: createReadStream(dumpPath), ContentLength: size }));
  say(`upload: s3://${BUCKET}/${key} (${mib(size)} MiB) to s3rver at ${endpoint} in ${((Date.now() - t) / 1000).toFixed(1)}s`);
  rmSync(dumpPath);

  const c = await continuityPath(o, dir, endpoint, source, deadlineMs);
  const h = await byHandPath(o, dir, s3, key, source, deadlineMs);

  const ratio = c.seconds / h.seconds;
  const sizeGib = size / GIB;
  if (c.rssPeak > 200 * 1024 ** 2) say(`note: the daemon's RSS peaked at ${mib(c.rssPeak)} MiB, above 200 MiB`);
  if (ratio > 1) say(`note: Continuity took ${ratio.toFixed(3)}x the by-hand time (its pg_restore reads stdin: no -j)`);
  // Cleanup before the last line, so nothing prints after it.
  await cleanup();
  console.log(
    `restore size_gib=${sizeGib.toFixed(3)} continuity_s=${c.seconds.toFixed(3)} by_hand_s=${h.seconds.toFixed(3)} ` +
      `ratio=${ratio.toFixed(3)} rss_mb=${mib(c.rssPeak)}`,
  );
}

const o = parseOptions();
const bail = bailer(cleanup, say, 60_000);
// Last resort: never leave the daemon behind, whatever ends this process.
process.on('exit', () => {
  const c = live.daemonChild;
  if (c && c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});
// Bounded whatever happens: filling, dumping, both paths with their deadlines, and cleanup.
setTimeout(() => bail('still running long past the planned end; giving up', 1), (30 + 40 * o.sizeGib) * 60_000).unref();
main(o).then(
  () => process.exit(0),
  (err: unknown) => {
    say(`FAILED: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    cleanup().finally(() => process.exit(1));
  },
);
