import { Type, type Static } from '@sinclair/typebox';
import type { Connection } from 'mysql2';
import { mysql2 } from '../lazy.js';
import { defineProber, reasonOf, type Observation, untilAborted } from './types.js';

const settings = Type.Object(
  {
    host: Type.String({ minLength: 1, description: 'Host name or address of the MySQL or MariaDB server.' }),
    port: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535, default: 3306, description: 'TCP port (default 3306).' })),
    user: Type.String({
      minLength: 1,
      description: 'User to log in as; it needs REPLICATION CLIENT (MariaDB: SLAVE MONITOR) to read replica status.',
    }),
    password: Type.Optional(Type.String({ description: 'Password of the user, usually a ${env:...} or ${file:...} reference.' })),
    database: Type.Optional(
      Type.String({ minLength: 1, description: 'Default database of the session (needed when query names tables without one).' }),
    ),
    query: Type.Optional(
      Type.String({
        minLength: 1,
        description:
          'A statement run each time in a read-only transaction; its first row is observed as `row` (e.g. SELECT count(*) AS n FROM jobs).',
      }),
    ),
    expect_role: Type.Optional(
      Type.Union([Type.Literal('primary'), Type.Literal('replica')], {
        description: 'Fail unless the server is in this role (a replica is a server with replica status).',
      }),
    ),
    max_lag_seconds: Type.Optional(
      Type.Number({
        minimum: 0,
        description: 'On a replica, fail when Seconds_Behind_Master exceeds this, or is unknown because a thread stopped.',
      }),
    ),
  },
  { additionalProperties: false },
);

type Settings = Static<typeof settings>;
type Row = Record<string, unknown>;

/** mysql: log in to MySQL or MariaDB, `SELECT 1`, and report read_only, the role and replica threads. */
export const mysql = defineProber({
  description:
    'Log in to MySQL or MariaDB and check read_only, the role (primary or replica), the replica threads and lag, and optionally a query.',
  settings,
  observed: {
    role: 'string',
    read_only: 'bool',
    replica_io_running: 'bool',
    replica_sql_running: 'bool',
    lag_seconds: 'double',
    source_host: 'string',
    source_port: 'int',
    last_error: 'string',
    row: 'map',
    rows: 'int',
  },
  async run(s, ctx) {
    const conn = openMysql(s, ctx.timeoutMs);
    const client = conn.promise();
    try {
      return await untilAborted(
        ctx.signal,
        () => conn.destroy(),
        async () => {
          await client.connect();
          return check(client, s, ctx.timeoutMs);
        },
      );
    } catch (err) {
      const reason = reasonOf(ctx.signal.aborted ? ctx.signal.reason : err);
      return { ok: false, reason: scrub(reason, s.password), observed: {} };
    } finally {
      if (ctx.signal.aborted) conn.destroy();
      else closeGracefully(conn);
    }
  },
});

type Client = ReturnType<Connection['promise']>;

/**
 * A MySQL/MariaDB connection as the prober and the sql step open it: values a condition or an
 * output can compare (numbers for DECIMAL, text for dates), one statement per call, and an error
 * listener so a failure surfaces through the pending call instead of crashing the daemon.
 */
export function openMysql(
  c: { host: string; port?: number; user: string; password?: string; database?: string },
  timeoutMs: number,
): Connection {
  // mysql2 is loaded by the first connection, not when the daemon starts.
  const conn = mysql2().createConnection({
    host: c.host,
    port: c.port ?? 3306,
    user: c.user,
    password: c.password,
    database: c.database,
    connectTimeout: timeoutMs,
    decimalNumbers: true,
    dateStrings: true,
    supportBigNumbers: true,
    multipleStatements: false,
  });
  conn.on('error', () => {});
  return conn;
}

async function check(client: Client, s: Settings, timeoutMs: number): Promise<Observation> {
  const query = async (sql: string) => (await client.query({ sql, timeout: timeoutMs }))[0] as Row[];
  const [basics] = await query('SELECT 1 AS one, @@read_only AS read_only');
  const status = await replicaStatus(query);
  const observed: Record<string, unknown> = { read_only: isOn(basics?.read_only), ...describeReplication(status) };
  if (s.query !== undefined) {
    // A probe runs every few seconds for months: a mistyped UPDATE must fail, not rewrite data.
    await query('SET SESSION TRANSACTION READ ONLY');
    // A statement that returns no result set yields a header object, not rows.
    const result = await query(s.query);
    const rows = Array.isArray(result) ? result : [];
    observed.rows = rows.length;
    observed.row = rows[0] ? celRow(rows[0]) : {};
  }
  if (s.expect_role !== undefined && s.expect_role !== observed.role) {
    return { ok: false, reason: `expected role ${s.expect_role}, found ${String(observed.role)}`, observed };
  }
  if (s.max_lag_seconds !== undefined && observed.role === 'replica') {
    const lag = observed.lag_seconds as number | undefined;
    if (lag === undefined) return { ok: false, reason: `replication lag is unknown: ${stoppedThreads(observed)}`, observed };
    if (lag > s.max_lag_seconds) {
      return { ok: false, reason: `replication lag ${lag} s is over the limit ${s.max_lag_seconds} s`, observed };
    }
  }
  return { ok: true, observed };
}

/** Replica status rows (one per replication channel), the MySQL 8.0.22+/MariaDB 10.5+ way or the old way. */
async function replicaStatus(query: (sql: string) => Promise<Row[]>): Promise<Row[]> {
  try {
    return await query('SHOW REPLICA STATUS');
  } catch (err) {
    if ((err as { errno?: number }).errno !== 1064) throw err; // ER_PARSE_ERROR: a server older than the new word
    return query('SHOW SLAVE STATUS');
  }
}

/** MySQL 8.0.22+ renamed the columns (Source_*, Replica_*); MariaDB and older servers keep the old names. */
function column(row: Row, newName: string, oldName: string): unknown {
  return row[newName] ?? row[oldName];
}

function describeReplication(status: Row[]): Record<string, unknown> {
  if (status.length === 0) {
    return { role: 'primary', replica_io_running: false, replica_sql_running: false, lag_seconds: 0, last_error: '' };
  }
  // With several channels (multi-source), the replica is only as healthy as its worst channel.
  const io = status.every((r) => column(r, 'Replica_IO_Running', 'Slave_IO_Running') === 'Yes');
  const sql = status.every((r) => column(r, 'Replica_SQL_Running', 'Slave_SQL_Running') === 'Yes');
  const lags = status.map((r) => column(r, 'Seconds_Behind_Source', 'Seconds_Behind_Master'));
  const errors = status.flatMap((r) => [r.Last_IO_Error, r.Last_SQL_Error]).filter((e): e is string => typeof e === 'string' && e !== '');
  const first = status[0]!;
  const observed: Record<string, unknown> = {
    role: 'replica',
    replica_io_running: io,
    replica_sql_running: sql,
    source_host: String(column(first, 'Source_Host', 'Master_Host') ?? ''),
    source_port: Number(column(first, 'Source_Port', 'Master_Port') ?? 0),
    last_error: errors.join('; '),
  };
  // NULL while a thread is stopped or still connecting: unknown, not zero.
  if (lags.every((l) => l !== null && l !== undefined)) observed.lag_seconds = Math.max(...lags.map(Number));
  return observed;
}

function stoppedThreads(observed: Record<string, unknown>): string {
  const stopped = [observed.replica_io_running ? '' : 'IO', observed.replica_sql_running ? '' : 'SQL'].filter(Boolean);
  const which =
    stopped.length === 0
      ? 'the server reports no lag'
      : `the ${stopped.join(' and ')} thread${stopped.length > 1 ? 's are' : ' is'} not running`;
  const error = observed.last_error ? ` (${String(observed.last_error)})` : '';
  return which + error;
}

/** read_only is 0/1 on most servers and an enum (OFF, ON, NO_LOCK, ...) on MariaDB 11. */
function isOn(value: unknown): boolean {
  if (typeof value === 'number' || typeof value === 'bigint') return Number(value) !== 0;
  if (typeof value === 'string') return !['0', 'OFF'].includes(value.toUpperCase());
  return Boolean(value);
}

/** Binary columns arrive as Buffers; CEL compares them best as text. */
function celRow(row: Row): Row {
  return Object.fromEntries(Object.entries(row).map(([k, v]) => [k, Buffer.isBuffer(v) ? v.toString('utf8') : v]));
}

/** Says goodbye (COM_QUIT) so the server logs no aborted connection, but never waits long for it. */
function closeGracefully(conn: Connection): void {
  const timer = setTimeout(() => conn.destroy(), 1000);
  timer.unref();
  conn.end(() => clearTimeout(timer));
}

/** Driver messages do not echo passwords today; this keeps it so if one ever does. */
function scrub(reason: string, password: string | undefined): string {
  return password && password.length >= 4 ? reason.split(password).join('[REDACTED]') : reason;
}
