/**
 * One site's application in the lab: a plain node:http server in front of that site's PostgreSQL.
 * The lab starts one per site as a child process (`node --import tsx test/lab/site-app.ts`) with
 * LAB_SITE and LAB_PG_PORT set; it listens on a free loopback port and prints `{"port":N}` as its
 * first stdout line. It exits when its standard input closes, so it dies with the process that
 * started it even when that one is killed outright.
 *
 *   POST /orders  inserts a row into orders (JSON body `{"note": "..."}` optional): 201 `{"id":N}`
 *   GET /health   200 when the database answers and is writable (not in recovery), else 503
 *
 * Every answer carries `X-Site: <site>` so a caller going through HAProxy sees which site served it.
 */
import http from 'node:http';
import pg from 'pg';

const site = process.env.LAB_SITE ?? 'site';
const pgPort = Number(process.env.LAB_PG_PORT);
if (!Number.isInteger(pgPort) || pgPort <= 0) {
  process.stderr.write('site-app: LAB_PG_PORT must be the port of the site database\n');
  process.exit(2);
}

const pool = new pg.Pool({
  host: '127.0.0.1',
  port: pgPort,
  user: 'postgres',
  database: 'postgres',
  max: 8,
  connectionTimeoutMillis: 2000,
  query_timeout: 3000,
  idleTimeoutMillis: 10_000,
  application_name: `lab-app-${site}`,
});
// An idle client whose server went away (a killed primary) emits here; the next request reports it.
pool.on('error', () => {});

function reply(res: http.ServerResponse, status: number, body: Record<string, unknown>): void {
  const text = JSON.stringify({ site, ...body });
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'x-site': site });
  res.end(text);
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

async function readBody(req: http.IncomingMessage): Promise<string> {
  let text = '';
  for await (const chunk of req) {
    text += String(chunk);
    if (text.length > 65_536) throw new Error('request body over 64 KiB');
  }
  return text;
}

async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
  const path = (req.url ?? '/').split('?')[0];
  if (req.method === 'GET' && path === '/health') {
    try {
      const { rows } = await pool.query<{ in_recovery: boolean }>('SELECT pg_is_in_recovery() AS in_recovery');
      if (rows[0]?.in_recovery === false) return reply(res, 200, { status: 'ok', database: 'primary' });
      return reply(res, 503, { status: 'unavailable', reason: 'the database is in recovery (a replica): not writable' });
    } catch (err) {
      return reply(res, 503, { status: 'unavailable', reason: `the database does not answer: ${message(err)}` });
    }
  }
  if (req.method === 'POST' && path === '/orders') {
    let note = `web ${site}`;
    try {
      const text = await readBody(req);
      if (text.trim() !== '') {
        const parsed: unknown = JSON.parse(text);
        if (parsed && typeof parsed === 'object' && typeof (parsed as { note?: unknown }).note === 'string') {
          note = (parsed as { note: string }).note;
        }
      }
    } catch (err) {
      return reply(res, 400, { error: `bad request body: ${message(err)}` });
    }
    try {
      const { rows } = await pool.query<{ id: string }>('INSERT INTO orders (note) VALUES ($1) RETURNING id', [note]);
      return reply(res, 201, { id: Number(rows[0]!.id) });
    } catch (err) {
      return reply(res, 503, { error: message(err) });
    }
  }
  return reply(res, 404, { error: `no route ${req.method} ${path}` });
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err: unknown) => {
    if (!res.headersSent) reply(res, 500, { error: message(err) });
    else res.destroy();
  });
});
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address() as import('node:net').AddressInfo;
  process.stdout.write(`${JSON.stringify({ port })}\n`);
});

const quit = () => process.exit(0);
process.stdin.on('end', quit);
process.stdin.on('close', quit);
process.stdin.resume();
process.on('SIGTERM', quit);
process.on('SIGINT', quit);
