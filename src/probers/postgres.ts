import net from 'node:net';
import { Type, type Static } from '@sinclair/typebox';
import pg from 'pg';
import { defineProber, reasonOf, type Observation, untilAborted } from './types.js';

const settings = Type.Object(
  {
    host: Type.String({ minLength: 1, description: 'Host name or address of the PostgreSQL server.' }),
    port: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535, default: 5432, description: 'TCP port (default 5432).' })),
    user: Type.String({ minLength: 1, description: 'Role to log in as; it needs pg_monitor (or superuser) to read replication status.' }),
    password: Type.Optional(Type.String({ description: 'Password of the role, usually a ${env:...} or ${file:...} reference.' })),
    database: Type.String({ minLength: 1, description: 'Database to connect to (e.g. postgres).' }),
    sslmode: Type.Optional(
      Type.Union([Type.Literal('disable'), Type.Literal('require'), Type.Literal('verify-full')], {
        default: 'disable',
        description:
          'disable (default): plain TCP; require: TLS without verifying the certificate; verify-full: TLS with the certificate verified against the host name.',
      }),
    ),
    expect_role: Type.Optional(
      Type.Union([Type.Literal('primary'), Type.Literal('replica')], {
        description: 'Fail unless the server is in this role (a replica is a server in recovery).',
      }),
    ),
    max_lag_seconds: Type.Optional(
      Type.Number({
        minimum: 0,
        description:
          'Fail when replication lag exceeds this many seconds: the worst replica on a primary, replay behind receive on a replica.',
      }),
    ),
    max_lag_bytes: Type.Optional(
      Type.Integer({
        minimum: 0,
        description:
          'Fail when replication lag exceeds this many bytes of WAL: the worst replica on a primary, replay behind receive on a replica.',
      }),
    ),
  },
  { additionalProperties: false },
);

type Settings = Static<typeof settings>;

/** postgres: log in, `SELECT 1`, and report the server's role and replication state. */
export const postgres = defineProber({
  description: 'Log in to PostgreSQL and check its role (primary or replica), its replicas or WAL receiver, and replication lag.',
  settings,
  observed: {
    role: 'string',
    replicas: 'int',
    lag_seconds: 'double',
    lag_bytes: 'int',
    wal_lsn: 'string',
    wal_receiver_status: 'string',
    wal_receiver_streaming: 'bool',
    wal_receiver_last_msg_age_seconds: 'double',
    upstream_host: 'string',
    upstream_port: 'int',
    replay_paused: 'bool',
  },
  async run(s, ctx) {
    // Our own socket, so an abort can drop a connection that is stuck in the handshake or a query.
    const socket = new net.Socket();
    const client = new pg.Client({
      host: s.host,
      port: s.port ?? 5432,
      user: s.user,
      password: s.password,
      database: s.database,
      ssl: s.sslmode === 'require' ? { rejectUnauthorized: false } : s.sslmode === 'verify-full' ? { rejectUnauthorized: true } : false,
      stream: () => socket,
      connectionTimeoutMillis: ctx.timeoutMs,
      query_timeout: ctx.timeoutMs,
      statement_timeout: ctx.timeoutMs,
      application_name: `continuity ${ctx.probeId}`.slice(0, 63),
    });
    // A server that goes away mid-run also rejects the pending call; the event alone must not crash us.
    client.on('error', () => {});
    try {
      return await untilAborted(
        ctx.signal,
        () => socket.destroy(),
        async () => {
          await client.connect();
          return check(client, s);
        },
      );
    } catch (err) {
      const reason = reasonOf(ctx.signal.aborted ? ctx.signal.reason : err);
      return { ok: false, reason: scrub(reason, s.password), observed: {} };
    } finally {
      if (ctx.signal.aborted) socket.destroy();
      else closeGracefully(client, socket);
    }
  },
});

/** Says goodbye (Terminate) so the server logs no broken connection, but never waits long for it. */
function closeGracefully(client: pg.Client, socket: net.Socket): void {
  const timer = setTimeout(() => socket.destroy(), 1000);
  timer.unref();
  client
    .end()
    .catch(() => socket.destroy())
    .finally(() => clearTimeout(timer));
}

interface Basics extends Record<string, unknown> {
  in_recovery: boolean;
  can_read_stats: boolean;
}

async function check(client: pg.Client, s: Settings): Promise<Observation> {
  // This first statement is also the `SELECT 1` that proves the session can run queries.
  const [basics] = (
    await client.query<Basics>(`SELECT pg_is_in_recovery() AS in_recovery, pg_has_role('pg_read_all_stats', 'USAGE') AS can_read_stats`)
  ).rows;
  if (!basics) return { ok: false, reason: 'the server answered the first query with no row', observed: {} };
  // Without the privilege pg_stat_replication and pg_stat_wal_receiver come back as NULLs, which
  // would read as "no replicas" or "not streaming": a false alarm, so say what is missing instead.
  if (!basics.can_read_stats) {
    return { ok: false, reason: `role "${s.user}" needs pg_monitor (or pg_read_all_stats) to read replication status`, observed: {} };
  }
  const observed = basics.in_recovery ? await replicaView(client) : await primaryView(client);
  const role = observed.role as string;
  if (s.expect_role !== undefined && s.expect_role !== role) {
    return { ok: false, reason: `expected role ${s.expect_role}, found ${role}`, observed };
  }
  const lagSeconds = observed.lag_seconds as number | undefined;
  const lagBytes = observed.lag_bytes as number | undefined;
  const unknown = `replication lag is unknown: ${lagBytes === undefined ? 'no WAL received from a primary yet' : 'no transaction replayed since the replica started'}`;
  if (s.max_lag_seconds !== undefined) {
    if (lagSeconds === undefined) return { ok: false, reason: unknown, observed };
    if (lagSeconds > s.max_lag_seconds) {
      return { ok: false, reason: `replication lag ${formatSeconds(lagSeconds)} s is over the limit ${s.max_lag_seconds} s`, observed };
    }
  }
  if (s.max_lag_bytes !== undefined) {
    if (lagBytes === undefined) return { ok: false, reason: unknown, observed };
    if (lagBytes > s.max_lag_bytes) {
      return { ok: false, reason: `replication lag ${lagBytes} bytes is over the limit ${s.max_lag_bytes} bytes`, observed };
    }
  }
  return { ok: true, observed };
}

/** A primary: its streaming replicas and the worst of their replay lags. */
async function primaryView(client: pg.Client): Promise<Record<string, unknown>> {
  // replay_lag turns NULL once an idle replica has caught up, hence the coalesce to 0.
  const [row] = (
    await client.query<{ wal_lsn: string; replicas: number; lag_bytes: number; lag_seconds: number }>(
      `SELECT pg_current_wal_lsn()::text AS wal_lsn,
              count(*) FILTER (WHERE state = 'streaming')::int AS replicas,
              coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0)::float8 AS lag_bytes,
              coalesce(max(extract(epoch FROM replay_lag)), 0)::float8 AS lag_seconds
         FROM pg_stat_replication`,
    )
  ).rows;
  return {
    role: 'primary',
    replicas: row?.replicas ?? 0,
    lag_seconds: row?.lag_seconds ?? 0,
    lag_bytes: Math.round(row?.lag_bytes ?? 0),
    wal_lsn: row?.wal_lsn ?? '',
    wal_receiver_status: 'none',
    wal_receiver_streaming: false,
    replay_paused: false,
  };
}

interface ReplicaRow {
  status: string | null;
  sender_host: string | null;
  sender_port: number | null;
  last_msg_age: number | null;
  wal_lsn: string | null;
  lag_bytes: number | null;
  lag_seconds: number | null;
  replay_paused: boolean;
  replicas: number;
}

/** A replica: its WAL receiver (is it still streaming from its primary?) and replay behind receive. */
async function replicaView(client: pg.Client): Promise<Record<string, unknown>> {
  // Lag in seconds is 0 when everything received is replayed: otherwise the age of the last
  // replayed transaction would grow on an idle primary and raise a false alarm.
  const [row] = (
    await client.query<ReplicaRow>(
      `SELECT r.status, r.sender_host, r.sender_port,
              extract(epoch FROM now() - r.last_msg_receipt_time)::float8 AS last_msg_age,
              pg_last_wal_replay_lsn()::text AS wal_lsn,
              greatest(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::float8 AS lag_bytes,
              CASE WHEN pg_last_wal_receive_lsn() IS NULL THEN NULL
                   WHEN pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0
                   ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())
              END::float8 AS lag_seconds,
              pg_is_wal_replay_paused() AS replay_paused,
              (SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming')::int AS replicas
         FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS r ON true`,
    )
  ).rows;
  const observed: Record<string, unknown> = {
    role: 'replica',
    replicas: row?.replicas ?? 0,
    wal_lsn: row?.wal_lsn ?? '',
    // No row: no WAL receiver runs, as the primary is unreachable (or the replica only restores from an archive).
    wal_receiver_status: row?.status ?? 'none',
    wal_receiver_streaming: row?.status === 'streaming',
    replay_paused: row?.replay_paused ?? false,
  };
  if (row?.lag_seconds != null) observed.lag_seconds = Math.max(0, row.lag_seconds);
  if (row?.lag_bytes != null) observed.lag_bytes = Math.round(row.lag_bytes);
  if (row?.last_msg_age != null) observed.wal_receiver_last_msg_age_seconds = Math.max(0, row.last_msg_age);
  if (row?.sender_host != null) observed.upstream_host = row.sender_host;
  if (row?.sender_port != null) observed.upstream_port = row.sender_port;
  return observed;
}

function formatSeconds(seconds: number): number {
  return +seconds.toFixed(seconds < 10 ? 2 : 1);
}

/** Driver messages do not echo passwords today; this keeps it so if one ever does. */
function scrub(reason: string, password: string | undefined): string {
  return password && password.length >= 4 ? reason.split(password).join('[REDACTED]') : reason;
}
