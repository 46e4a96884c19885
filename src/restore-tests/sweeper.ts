import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import type { ScratchTarget } from '../config/load.js';
import { openMysql } from '../probers/mysql.js';

/** Every scratch copy a restore test makes is named with this prefix and its execution id. */
export const SCRATCH_PREFIX = 'continuity_restore_';
/** What a scratch name may look like (execution ids are letters, digits, - and _). */
const SCRATCH_NAME = /^continuity_restore_[A-Za-z0-9_-]{1,60}$/;
/** A copy of an execution this daemon does not know goes only after being seen unused for this long (another deployment's test may own it). */
export const UNKNOWN_GRACE_MS = 60 * 60 * 1000;
/** A folder whose contents changed this recently is in use. */
const FOLDER_BUSY_MS = 10 * 60 * 1000;

type DbTarget = Extract<ScratchTarget, { host: string }>;

/** What the sweeper asks of the executions: is this one still running here? */
export type ExecutionState = (id: string) => Promise<'active' | 'finished' | 'unknown'>;

/** What the sweeper remembers between sweeps: when it first saw each unknown copy unused. */
export type UnusedSince = Map<string, number>;

export interface SweepOptions {
  signal: AbortSignal;
  unusedSince: UnusedSince;
  /** How long an unknown execution's copy must stay unused before it goes (default UNKNOWN_GRACE_MS). */
  graceMs?: number;
}

export interface SweepResult {
  removed: string[];
  kept: Array<{ name: string; why: string }>;
}

/**
 * Removes what crashed restore tests left behind: scratch databases and folders named
 * continuity_restore_<execution id>, found by that marker. A copy whose execution is still running
 * is kept. One whose execution finished is removed. One whose execution this daemon does not know
 * (its records are gone, or another deployment made it) is removed only once it has been seen
 * unused (no session on the database; a folder unchanged for 10 minutes) for the grace, an hour.
 */
export async function sweep(target: ScratchTarget, state: ExecutionState, opts: SweepOptions): Promise<SweepResult> {
  const keep = keeper(state, opts);
  switch (target.kind) {
    case 'postgres':
      return sweepPostgres(target, keep, opts.signal);
    case 'mysql':
      return sweepMysql(target, keep);
    case 'folder':
      return sweepFolder(target.path, keep);
  }
}

type Keep = (name: string, id: string, inUse: boolean) => Promise<string | undefined>;

/** A name this sweeper may touch, and the execution id in it. */
function executionOf(name: string): string | undefined {
  return SCRATCH_NAME.test(name) ? name.slice(SCRATCH_PREFIX.length) : undefined;
}

async function sweepPostgres(t: DbTarget, keep: Keep, signal: AbortSignal): Promise<SweepResult> {
  const client = new pg.Client({
    host: t.host,
    port: t.port,
    user: t.user,
    password: t.password,
    database: 'postgres',
    connectionTimeoutMillis: 5000,
    statement_timeout: 60_000,
    application_name: 'continuity restore-test sweeper',
  });
  client.on('error', () => {});
  const onAbort = () => void client.end().catch(() => undefined);
  signal.addEventListener('abort', onAbort, { once: true });
  const result: SweepResult = { removed: [], kept: [] };
  try {
    await client.connect();
    const { rows } = await client.query<{ datname: string; sessions: number }>(
      `SELECT d.datname, (SELECT count(*)::int FROM pg_stat_activity a WHERE a.datname = d.datname) AS sessions
         FROM pg_database d WHERE d.datname LIKE 'continuity\\_restore\\_%' ORDER BY d.datname`,
    );
    for (const { datname, sessions } of rows) {
      const id = executionOf(datname);
      if (!id) continue;
      const why = await keep(datname, id, sessions > 0);
      if (why) {
        result.kept.push({ name: datname, why });
        continue;
      }
      // The name comes from the server and matched SCRATCH_NAME; it is still quoted as an identifier.
      await client.query(`DROP DATABASE IF EXISTS ${client.escapeIdentifier(datname)} WITH (FORCE)`);
      result.removed.push(datname);
    }
    return result;
  } finally {
    signal.removeEventListener('abort', onAbort);
    await client.end().catch(() => undefined);
  }
}

async function sweepMysql(t: DbTarget, keep: Keep): Promise<SweepResult> {
  const conn = openMysql({ host: t.host, port: t.port, user: t.user, password: t.password }, 5000);
  const result: SweepResult = { removed: [], kept: [] };
  try {
    const [rows] = await conn.promise().query(
      `SELECT s.SCHEMA_NAME AS name, (SELECT count(*) FROM information_schema.PROCESSLIST p WHERE p.DB = s.SCHEMA_NAME) AS sessions
         FROM information_schema.SCHEMATA s WHERE s.SCHEMA_NAME LIKE 'continuity\\_restore\\_%' ORDER BY s.SCHEMA_NAME`,
    );
    for (const row of rows as Array<{ name: string; sessions: number | string }>) {
      const id = executionOf(row.name);
      if (!id) continue;
      const why = await keep(row.name, id, Number(row.sessions) > 0);
      if (why) {
        result.kept.push({ name: row.name, why });
        continue;
      }
      await conn.promise().query(`DROP DATABASE IF EXISTS \`${row.name.replace(/`/g, '``')}\``);
      result.removed.push(row.name);
    }
    return result;
  } finally {
    conn.destroy();
  }
}

async function sweepFolder(root: string, keep: Keep): Promise<SweepResult> {
  const result: SweepResult = { removed: [], kept: [] };
  const entries = await readdir(root, { withFileTypes: true }).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return [];
    throw err;
  });
  for (const e of entries) {
    const id = executionOf(e.name);
    if (!id || !e.isDirectory()) continue;
    const path = join(root, e.name);
    const modified = (await stat(path)).mtimeMs;
    // A folder changed lately is in use: its mtime says what a session count says of a database.
    const why = await keep(path, id, Date.now() - modified < FOLDER_BUSY_MS);
    if (why) {
      result.kept.push({ name: path, why });
      continue;
    }
    await rm(path, { recursive: true, force: true });
    result.removed.push(path);
  }
  return result;
}

/**
 * Why a scratch copy stays, or undefined when it goes. A copy of an unknown execution goes only
 * once it has been seen unused, sweep after sweep, for the grace: a copy made a moment ago by
 * another deployment (createdb done, pg_restore not yet connected) is never taken.
 */
function keeper(state: ExecutionState, opts: SweepOptions): Keep {
  const grace = opts.graceMs ?? UNKNOWN_GRACE_MS;
  return async (name, id, inUse) => {
    const s = await state(id);
    if (s === 'active') return `execution ${id} is still running`;
    if (s === 'finished') return undefined;
    if (inUse) {
      opts.unusedSince.delete(name);
      return `execution ${id} is unknown here and the copy is in use (another deployment's test?)`;
    }
    const since = opts.unusedSince.get(name) ?? Date.now();
    opts.unusedSince.set(name, since);
    if (Date.now() - since < grace)
      return `execution ${id} is unknown here; unused since ${new Date(since).toISOString()}, removed once unused for ${grace / 60_000} min`;
    opts.unusedSince.delete(name);
    return undefined;
  };
}
