import { Type, type Static } from '@sinclair/typebox';
import { Redis } from 'ioredis';
import { defineProber, reasonOf, type Observation, untilAborted } from './types.js';

const settings = Type.Object(
  {
    host: Type.String({ minLength: 1, description: 'Host name or address of the Redis server.' }),
    port: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535, default: 6379, description: 'TCP port (default 6379).' })),
    username: Type.Optional(Type.String({ minLength: 1, description: 'ACL user name (Redis 6+); leave out for the default user.' })),
    password: Type.Optional(
      Type.String({ description: "Password (requirepass or the ACL user's), usually a ${env:...} or ${file:...} reference." }),
    ),
    db: Type.Optional(Type.Integer({ minimum: 0, description: 'Database number to SELECT (default 0).' })),
    expect_role: Type.Optional(
      Type.Union([Type.Literal('master'), Type.Literal('primary'), Type.Literal('replica')], {
        description: 'Fail unless the server is in this role; primary is a synonym of master.',
      }),
    ),
    max_lag_bytes: Type.Optional(
      Type.Integer({
        minimum: 0,
        description: 'Fail when replication lags by more bytes: the worst replica on a master, read but not applied on a replica.',
      }),
    ),
  },
  { additionalProperties: false },
);

type Settings = Static<typeof settings>;

/** redis: PING, then INFO replication: the role, the replicas or the link to the master, and offset lag. */
export const redis = defineProber({
  description: 'Ping Redis and check its role (master or replica), its replicas or its link to the master, and replication offset lag.',
  settings,
  observed: {
    role: 'string',
    connected_replicas: 'int',
    master_link_status: 'string',
    master_host: 'string',
    master_port: 'int',
    master_last_io_seconds_ago: 'int',
    lag_bytes: 'int',
    repl_offset: 'int',
  },
  async run(s, ctx) {
    const client = new Redis({
      host: s.host,
      port: s.port ?? 6379,
      username: s.username,
      password: s.password,
      db: s.db ?? 0,
      // One short-lived connection: a dead peer fails the run at once and nothing reconnects,
      // retries or queues commands in the background after the run is over.
      lazyConnect: true,
      connectTimeout: ctx.timeoutMs,
      commandTimeout: ctx.timeoutMs,
      maxRetriesPerRequest: 0,
      enableOfflineQueue: false,
      // RESP2 works with every server version and keeps AUTH's plain NOAUTH/WRONGPASS replies.
      protocol: 2,
      retryStrategy: () => null,
      reconnectOnError: () => false,
    });
    // A failed connect rejects with a bare "Connection is closed."; the event carries the cause.
    let socketError: unknown;
    client.on('error', (err) => (socketError ??= err));
    try {
      // disconnect() alone half-closes and gives a hung peer seconds to answer: drop the stream too.
      const drop = () => {
        client.disconnect();
        client.stream?.destroy();
      };
      return await untilAborted(ctx.signal, drop, async () => {
        await client.connect();
        return check(client, s);
      });
    } catch (err) {
      const reason = reasonOf(ctx.signal.aborted ? ctx.signal.reason : (socketError ?? err));
      return { ok: false, reason: scrub(reason, s.password), observed: {} };
    } finally {
      client.disconnect();
    }
  },
});

async function check(client: Redis, s: Settings): Promise<Observation> {
  const pong = await client.ping();
  if (pong !== 'PONG') return { ok: false, reason: `PING answered ${JSON.stringify(pong)}`, observed: {} };
  const observed = describeReplication(parseInfo(await client.info('replication')));
  const expected = s.expect_role === 'primary' ? 'master' : s.expect_role;
  if (expected !== undefined && expected !== observed.role) {
    return { ok: false, reason: `expected role ${s.expect_role}, found ${String(observed.role)}`, observed };
  }
  if (s.max_lag_bytes !== undefined && (observed.lag_bytes as number) > s.max_lag_bytes) {
    return {
      ok: false,
      reason: `replication lag ${String(observed.lag_bytes)} bytes is over the limit ${s.max_lag_bytes} bytes`,
      observed,
    };
  }
  return { ok: true, observed };
}

/** INFO's `key:value` lines as a map. */
function parseInfo(text: string): Map<string, string> {
  const info = new Map<string, string>();
  for (const line of text.split(/\r?\n/)) {
    const colon = line.indexOf(':');
    if (colon > 0 && !line.startsWith('#')) info.set(line.slice(0, colon), line.slice(colon + 1).trim());
  }
  return info;
}

function int(value: string | undefined): number {
  const n = Number.parseInt(value ?? '', 10);
  return Number.isFinite(n) ? n : 0;
}

function describeReplication(info: Map<string, string>): Record<string, unknown> {
  const offset = int(info.get('master_repl_offset'));
  const common = { connected_replicas: int(info.get('connected_slaves')), repl_offset: offset };
  if (info.get('role') !== 'slave') {
    // slaveN:ip=...,port=...,state=online,offset=N,lag=S — the worst acknowledged offset is the lag.
    let worst = 0;
    for (const [key, value] of info) {
      if (!/^slave\d+$/.test(key)) continue;
      const acked = /(?:^|,)offset=(\d+)/.exec(value);
      if (acked) worst = Math.max(worst, offset - Number(acked[1]));
    }
    return { role: 'master', ...common, master_link_status: 'none', lag_bytes: worst };
  }
  // A replica cannot know how far its master has got; what it can tell is how much it has read
  // from the master but not yet applied (Redis 7+; older servers: master_repl_offset - slave_repl_offset).
  const applied = int(info.get('slave_repl_offset'));
  const read = info.has('slave_read_repl_offset') ? int(info.get('slave_read_repl_offset')) : offset;
  return {
    role: 'replica',
    ...common,
    master_link_status: info.get('master_link_status') ?? 'down',
    master_host: info.get('master_host') ?? '',
    master_port: int(info.get('master_port')),
    master_last_io_seconds_ago: int(info.get('master_last_io_seconds_ago') ?? '-1'),
    lag_bytes: Math.max(0, read - applied),
  };
}

/** Server replies do not echo passwords today; this keeps it so if one ever does. */
function scrub(reason: string, password: string | undefined): string {
  return password && password.length >= 4 ? reason.split(password).join('[REDACTED]') : reason;
}
