import net from 'node:net';
import { Type, type Static } from '@sinclair/typebox';
import pg from 'pg';
import { mysql2 } from '../../lazy.js';
import { openMysql } from '../../probers/mysql.js';
import { reasonOf, untilAborted } from '../../probers/types.js';
import { defineStep, type StepContext } from './types.js';

/** Rows kept in the result; row_count still says how many there were. */
export const SQL_MAX_ROWS = 100;

const TEMPLATE_IN_STATEMENT = 'statement may not contain templates; use params: values are sent as bind parameters';

const settings = Type.Object(
  {
    driver: Type.Union([Type.Literal('postgres'), Type.Literal('mysql')], {
      description: 'postgres (PostgreSQL) or mysql (MySQL and MariaDB).',
    }),
    host: Type.String({ minLength: 1, description: 'Host name or address of the database server.' }),
    port: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535, description: 'TCP port (default 5432 for postgres, 3306 for mysql).' })),
    user: Type.String({ minLength: 1, description: 'User (role) to log in as.' }),
    password: Type.Optional(Type.String({ description: 'Password of the user, usually a ${env:...} or ${file:...} reference.' })),
    database: Type.Optional(
      Type.String({ minLength: 1, description: 'Database to connect to (postgres: default the user name; mysql: none).' }),
    ),
    statement: Type.String({
      minLength: 1,
      description:
        'One SQL statement, e.g. `SELECT pg_promote()`. It may not contain templates: values go in params and are referred to as $1, $2 (postgres) or ? (mysql).',
    }),
    params: Type.Optional(
      Type.Array(
        Type.Union([Type.String(), Type.Number(), Type.Boolean(), Type.Null()], {
          description: 'One value; templates are allowed, the value is sent as data and never parsed as SQL.',
        }),
        { description: 'Bind parameters of the statement, in order.' },
      ),
    ),
    expect_rows: Type.Optional(
      Type.Object(
        {
          min: Type.Optional(Type.Integer({ minimum: 0, description: 'Fail when row_count is below this.' })),
          max: Type.Optional(Type.Integer({ minimum: 0, description: 'Fail when row_count is above this.' })),
        },
        {
          additionalProperties: false,
          description: 'Bounds on row_count: the rows returned, or for a statement that returns none, the rows it changed.',
        },
      ),
    ),
  },
  { additionalProperties: false },
);

type Settings = Static<typeof settings>;
type Row = Record<string, unknown>;

/** What a statement produced, whichever the driver. */
interface Outcome {
  rows: Row[];
  /** Rows returned, or rows changed by a statement that returns none. */
  rowCount: number;
  returnsRows: boolean;
}

/** sql: one statement on PostgreSQL or MySQL/MariaDB, values passed as bind parameters. */
export const sql = defineStep({
  description:
    'Run one SQL statement on PostgreSQL or MySQL/MariaDB (e.g. `SELECT pg_promote()`), values passed as bind parameters, and check the row count.',
  settings,
  result: { rows: 'list', row_count: 'int', first: 'dyn' },
  validate(s) {
    const problems: Array<[string, string]> = [];
    if (s.statement.includes('{{')) problems.push(['statement', TEMPLATE_IN_STATEMENT]);
    const { min, max } = s.expect_rows ?? {};
    if (min !== undefined && max !== undefined && min > max) problems.push(['expect_rows', `min ${min} is above max ${max}`]);
    return problems;
  },
  async run(s, ctx) {
    let outcome: Outcome;
    try {
      outcome = s.driver === 'postgres' ? await onPostgres(s, ctx) : await onMysql(s, ctx);
    } catch (err) {
      const reason = reasonOf(ctx.signal.aborted ? ctx.signal.reason : err);
      return { ok: false, reason: scrub(reason, s.password), result: {} };
    }
    const rows = outcome.rows.slice(0, SQL_MAX_ROWS).map(celRow);
    const result = { rows, row_count: outcome.rowCount, first: rows[0] ?? null };
    const verb = outcome.returnsRows ? 'returned' : 'changed';
    const more = outcome.rows.length > rows.length ? `\n(${outcome.rows.length - rows.length} more rows not kept)` : '';
    const output = `${verb} ${count(outcome.rowCount)}${rows.map((r) => `\n${JSON.stringify(r)}`).join('')}${more}`;
    const { min, max } = s.expect_rows ?? {};
    if ((min !== undefined && outcome.rowCount < min) || (max !== undefined && outcome.rowCount > max)) {
      return { ok: false, reason: `the statement ${verb} ${count(outcome.rowCount)}, expected ${bounds(min, max)}`, result, output };
    }
    return { ok: true, result, output };
  },
});

/** Types kept as the text the server sends, so they read the same in an output as in psql. */
const PG_TEXT_TYPES = new Set([
  17, // bytea (as \x hex)
  1082, // date
  1083, // time
  1114, // timestamp
  1184, // timestamptz
  1266, // timetz
]);
const PG_INT8 = 20;
const PG_NUMERIC = 1700;

/** Numbers where JavaScript holds them exactly (int8 beyond 2^53 stays text), dates as text. */
const pgTypes = {
  getTypeParser(oid: number, format?: 'text' | 'binary') {
    if (format !== 'binary') {
      if (PG_TEXT_TYPES.has(oid)) return (value: string) => value;
      if (oid === PG_INT8) return (value: string) => (Number.isSafeInteger(Number(value)) ? Number(value) : value);
      if (oid === PG_NUMERIC) return (value: string) => (Number.isFinite(Number(value)) ? Number(value) : value);
    }
    return pg.types.getTypeParser(oid, format ?? 'text');
  },
} as unknown as pg.CustomTypesConfig;

async function onPostgres(s: Settings, ctx: StepContext): Promise<Outcome> {
  // Our own socket, so an abort can drop a connection that is stuck in the handshake or a query.
  const socket = new net.Socket();
  const client = new pg.Client({
    host: s.host,
    port: s.port ?? 5432,
    user: s.user,
    password: s.password,
    database: s.database,
    stream: () => socket,
    connectionTimeoutMillis: ctx.timeoutMs,
    // The step's own timer ends the step (and cancels the statement); the server's statement_timeout is only a
    // backstop should we vanish, a second later so it never races the step's timer and reports another reason.
    query_timeout: ctx.timeoutMs + 1000,
    statement_timeout: ctx.timeoutMs + 1000,
    application_name: `continuity ${ctx.executionId} ${ctx.stepId}`.slice(0, 63),
    types: pgTypes,
  });
  // A server that goes away mid-run also rejects the pending call; the event alone must not crash us.
  client.on('error', () => {});
  // A dropped socket alone goes unnoticed by a backend busy with a statement, so ask the server to cancel it too.
  const stop = () => {
    cancelOnServer(client, s.host, s.port ?? 5432);
    socket.destroy();
  };
  try {
    return await untilAborted(ctx.signal, stop, async () => {
      await client.connect();
      // The extended protocol even without params: the server then refuses more than one statement.
      const res = await client.query({ text: s.statement, values: s.params ?? [], queryMode: 'extended' } as pg.QueryConfig);
      const returnsRows = res.fields.length > 0;
      return { rows: res.rows as Row[], rowCount: returnsRows ? res.rows.length : (res.rowCount ?? 0), returnsRows };
    });
  } finally {
    if (ctx.signal.aborted) socket.destroy();
    else {
      // Says goodbye (Terminate) so the server logs no broken connection, but never waits long for it.
      const timer = setTimeout(() => socket.destroy(), 1000);
      timer.unref();
      client
        .end()
        .catch(() => socket.destroy())
        .finally(() => clearTimeout(timer));
    }
  }
}

/** Sends the protocol's CancelRequest for the session's running statement, on a connection of its own. */
function cancelOnServer(client: pg.Client, host: string, port: number): void {
  const { processID, secretKey } = client as unknown as { processID?: unknown; secretKey?: unknown };
  if (typeof processID !== 'number' || typeof secretKey !== 'number') return;
  const request = Buffer.alloc(16);
  request.writeInt32BE(16, 0);
  request.writeInt32BE(80877102, 4); // the CancelRequest code
  request.writeInt32BE(processID, 8);
  request.writeInt32BE(secretKey, 12);
  const socket = net.connect({ host, port }, () => socket.end(request));
  socket.on('error', () => {});
  socket.setTimeout(1000, () => socket.destroy());
}

async function onMysql(s: Settings, ctx: StepContext): Promise<Outcome> {
  const conn = openMysql(s, ctx.timeoutMs);
  const client = conn.promise();
  try {
    // A dropped connection does not stop a running statement on the server either, so kill it from a second one.
    const stop = () => {
      killQuery(s, conn.threadId);
      conn.destroy();
    };
    return await untilAborted(ctx.signal, stop, async () => {
      await client.connect();
      const options = { sql: s.statement, timeout: ctx.timeoutMs };
      // With params a server-side prepared statement (values bound, never spliced into the text);
      // without, the plain protocol, since some statements cannot be prepared.
      const [answer] = s.params?.length ? await client.execute(options, s.params) : await client.query(options);
      return mysqlOutcome(answer);
    });
  } finally {
    if (ctx.signal.aborted) conn.destroy();
    else {
      // Says goodbye (COM_QUIT) so the server logs no aborted connection, but never waits long for it.
      const timer = setTimeout(() => conn.destroy(), 1000);
      timer.unref();
      conn.end(() => clearTimeout(timer));
    }
  }
}

/** `KILL QUERY` for the session's running statement, from a connection of its own, given up after 2s. */
function killQuery(s: Settings, threadId: number | null): void {
  if (typeof threadId !== 'number') return;
  const killer = mysql2().createConnection({
    host: s.host,
    port: s.port ?? 3306,
    user: s.user,
    password: s.password,
    connectTimeout: 2000,
  });
  killer.on('error', () => {});
  const timer = setTimeout(() => killer.destroy(), 2000);
  timer.unref();
  killer.query(`KILL QUERY ${Math.trunc(threadId)}`, () => {
    clearTimeout(timer);
    try {
      killer.end(() => {});
    } catch {
      killer.destroy();
    }
  });
}

/** Rows, or the OK packet of a statement that returns none; a CALL answers with result sets and then an OK packet. */
function mysqlOutcome(answer: unknown): Outcome {
  let value = answer;
  if (Array.isArray(value) && Array.isArray(value[0])) value = value[0];
  if (Array.isArray(value)) return { rows: value as Row[], rowCount: value.length, returnsRows: true };
  const affected = (value as { affectedRows?: number }).affectedRows;
  return { rows: [], rowCount: typeof affected === 'number' ? affected : 0, returnsRows: false };
}

/** A row as CEL reads it: binary columns as text. */
function celRow(row: Row): Row {
  return Object.fromEntries(
    Object.entries(row).map(([k, v]) => [k, Buffer.isBuffer(v) ? v.toString('utf8') : v instanceof Date ? v.toISOString() : v]),
  );
}

function count(n: number): string {
  return `${n} row${n === 1 ? '' : 's'}`;
}

function bounds(min: number | undefined, max: number | undefined): string {
  if (min !== undefined && max !== undefined) return min === max ? `exactly ${min}` : `between ${min} and ${max}`;
  return min !== undefined ? `at least ${min}` : `at most ${max}`;
}

/** Driver messages do not echo passwords today; this keeps it so if one ever does. */
function scrub(reason: string, password: string | undefined): string {
  return password && password.length >= 4 ? reason.split(password).join('[REDACTED]') : reason;
}
