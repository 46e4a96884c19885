import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { probers } from '../../../src/probers/index.js';
import { MAX_BODY_BYTES } from '../../../src/probers/http.js';
import { closedPort, silentServer } from '../../helpers/net.js';
import { probe } from '../../helpers/probe.js';

const run = promisify(execFile);
const SECRET = 'Bearer s3cret-token-never-shown';

/** Makes a P-256 key and certificate with openssl; `ca` signs it, otherwise it is self-signed. */
async function makeCert(
  dir: string,
  name: string,
  opts: { days: number; ca?: { cert: string; key: string }; isCa?: boolean; san?: string },
): Promise<{ cert: string; key: string }> {
  const key = join(dir, `${name}.key`);
  const cert = join(dir, `${name}.crt`);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key];
  const san = opts.san ?? 'IP:127.0.0.1';
  if (!opts.ca) {
    const ext = opts.isCa
      ? ['-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']
      : ['-addext', `subjectAltName=${san}`];
    await run('openssl', ['req', '-x509', ...ec, '-days', String(opts.days), '-subj', `/CN=${name}`, ...ext, '-out', cert]);
  } else {
    const csr = join(dir, `${name}.csr`);
    const extFile = join(dir, `${name}.ext`);
    await writeFile(extFile, `subjectAltName=${san}\nbasicConstraints=CA:FALSE\n`);
    await run('openssl', ['req', '-new', ...ec, '-subj', `/CN=${name}`, '-out', csr]);
    // -days -1 makes a certificate that expired a day before it was issued: the only way to an
    // expired one with openssl 3.0, which has no -not_after.
    await run('openssl', [
      'x509',
      '-req',
      '-in',
      csr,
      '-CA',
      opts.ca.cert,
      '-CAkey',
      opts.ca.key,
      '-set_serial',
      String(Date.now()),
      '-days',
      String(opts.days),
      '-extfile',
      extFile,
      '-out',
      cert,
    ]);
  }
  return { cert, key };
}

async function listen(server: http.Server): Promise<number> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as AddressInfo).port;
}

function close(server: http.Server): Promise<void> {
  server.closeAllConnections();
  return new Promise((r) => server.close(() => r()));
}

/** The test site: each path is one behaviour a probe can meet. */
const routes: http.RequestListener = (req, res) => {
  const url = new URL(req.url ?? '/', 'http://x');
  switch (url.pathname) {
    case '/ok':
      return res.end('ok');
    case '/json':
      res.setHeader('content-type', 'application/json');
      return res.end(JSON.stringify({ status: 'ok', data: { replicas: [{ state: 'streaming' }, { state: 'catchup' }] } }));
    case '/status':
      res.statusCode = Number(url.searchParams.get('code'));
      return res.end('status page');
    case '/slow':
      setTimeout(() => res.end('late'), 300);
      return;
    case '/echo': {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => res.end(`${req.method} ${body}`));
      return;
    }
    case '/auth':
      res.statusCode = req.headers.authorization === SECRET ? 200 : 401;
      return res.end(req.headers.authorization === undefined ? 'no credentials' : 'credentials');
    case '/redirect':
      res.statusCode = 302;
      res.setHeader('location', url.searchParams.get('to') ?? '/ok');
      return res.end();
    case '/loop':
      res.statusCode = 307;
      res.setHeader('location', '/loop');
      return res.end();
    case '/endless': {
      // Streams until the client hangs up: a prober that buffers it all never finishes.
      const chunk = Buffer.alloc(64 * 1024, 'a');
      const pump = () => {
        while (!res.destroyed && res.write(chunk));
        if (!res.destroyed) res.once('drain', pump);
      };
      return pump();
    }
    default:
      res.statusCode = 404;
      return res.end('not found');
  }
};

describe('http prober', () => {
  let dir: string;
  let plain: http.Server;
  let other: http.Server;
  let selfSigned: https.Server;
  let caSigned: https.Server;
  let expired: https.Server;
  let port: number;
  let otherPort: number;
  let selfSignedPort: number;
  let caSignedPort: number;
  let expiredPort: number;
  let caFile: string;
  let silent: Awaited<ReturnType<typeof silentServer>>;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'continuity-http-'));
    const self = await makeCert(dir, 'self', { days: 5 });
    const ca = await makeCert(dir, 'Continuity Test CA', { days: 30, isCa: true });
    const leaf = await makeCert(dir, 'leaf', { days: 30, ca });
    const old = await makeCert(dir, 'old', { days: -1, ca });
    caFile = ca.cert;
    const tlsOf = async (c: { cert: string; key: string }) => ({ cert: await readFile(c.cert), key: await readFile(c.key) });

    plain = http.createServer(routes);
    other = http.createServer(routes);
    selfSigned = https.createServer(await tlsOf(self), routes);
    caSigned = https.createServer(await tlsOf(leaf), routes);
    expired = https.createServer(await tlsOf(old), routes);
    port = await listen(plain);
    otherPort = await listen(other);
    selfSignedPort = await listen(selfSigned);
    caSignedPort = await listen(caSigned);
    expiredPort = await listen(expired);
    silent = await silentServer();
  });
  afterAll(async () => {
    await Promise.all([plain, other, selfSigned, caSigned, expired].filter(Boolean).map(close));
    await silent?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const url = (path: string) => `http://127.0.0.1:${port}${path}`;

  describe('over plain http', () => {
    it('succeeds on a 2xx and observes status, body, headers and latency', async () => {
      const r = await probe('http', { url: url('/ok') });
      expect(r).toMatchObject({ ok: true, reason: 'ok' });
      expect(r.observed).toMatchObject({ status: 200, body: 'ok', json: null, tls_version: '' });
      expect((r.observed.headers as Record<string, string>)['content-length']).toBe('2');
      expect(r.observed.latency_seconds).toBeGreaterThan(0);
      expect(r.observed.cert_days_left).toBeUndefined();
    });

    it('fails on a status outside the default 2xx', async () => {
      const r = await probe('http', { url: url('/status?code=503') });
      expect(r).toMatchObject({ ok: false, reason: 'status 503, expected 2xx' });
      expect(r.observed.status).toBe(503);
    });

    it('checks expect_status, which may accept a non-2xx status', async () => {
      expect(await probe('http', { url: url('/ok'), expect_status: [204] })).toMatchObject({
        ok: false,
        reason: 'status 200, expected 204',
      });
      expect(await probe('http', { url: url('/status?code=500'), expect_status: [200, 201, 204] })).toMatchObject({
        ok: false,
        reason: 'status 500, expected 200, 201 or 204',
      });
      expect((await probe('http', { url: url('/status?code=404'), expect_status: [404] })).ok).toBe(true);
    });

    it('checks body_contains', async () => {
      expect((await probe('http', { url: url('/ok'), body_contains: 'ok' })).ok).toBe(true);
      expect(await probe('http', { url: url('/ok'), body_contains: 'healthy' })).toMatchObject({
        ok: false,
        reason: 'body does not contain "healthy"',
      });
    });

    it('checks body_matches', async () => {
      expect((await probe('http', { url: url('/json'), body_matches: '"state":"stream\\w+"' })).ok).toBe(true);
      expect(await probe('http', { url: url('/ok'), body_matches: '^OK$' })).toMatchObject({
        ok: false,
        reason: 'body does not match /^OK$/',
      });
    });

    it('parses a JSON body for conditions (a JSON-path check)', async () => {
      const good = await probe(
        'http',
        { url: url('/json') },
        {
          conditions: ['status == 200 && json.status == "ok"', 'json.data.replicas[0].state == "streaming"'],
        },
      );
      expect(good).toMatchObject({ ok: true, reason: 'ok' });
      expect(good.observed.json).toEqual({ status: 'ok', data: { replicas: [{ state: 'streaming' }, { state: 'catchup' }] } });

      const bad = await probe('http', { url: url('/json') }, { conditions: ['json.data.replicas[1].state == "streaming"'] });
      expect(bad).toMatchObject({ ok: false, reason: 'condition "json.data.replicas[1].state == "streaming"" is false' });
    });

    it('observes response headers under lower-case names', async () => {
      const r = await probe('http', { url: url('/json') }, { conditions: ['headers["content-type"] == "application/json"'] });
      expect(r.ok).toBe(true);
      const wrong = await probe('http', { url: url('/ok') }, { conditions: ['"content-type" in headers'] });
      expect(wrong).toMatchObject({ ok: false, reason: 'condition ""content-type" in headers" is false' });
    });

    it('fails when the response is slower than max_latency_seconds', async () => {
      const r = await probe('http', { url: url('/slow'), max_latency_seconds: 0.1 });
      expect(r.ok).toBe(false);
      expect(r.reason).toMatch(/^response took 3\d\dms \(max 100ms\)$/);
      expect(r.observed.latency_seconds).toBeGreaterThanOrEqual(0.3);
      expect((await probe('http', { url: url('/slow'), max_latency_seconds: 1 })).ok).toBe(true);
    });

    it('sends method, body and headers, and never shows header values in reasons', async () => {
      const echoed = await probe('http', { url: url('/echo'), method: 'POST', body: 'ping', body_contains: 'POST ping' });
      expect(echoed.ok).toBe(true);

      expect((await probe('http', { url: url('/auth'), headers: { Authorization: SECRET } })).ok).toBe(true);
      const denied = await probe('http', { url: url('/auth'), headers: { Authorization: `${SECRET}-wrong` } });
      expect(denied).toMatchObject({ ok: false, reason: 'status 401, expected 2xx' });

      const broken = { url: url('/auth'), headers: { Authorization: `${SECRET}\r\nX-Injected: 1` } };
      const r = await probe('http', broken);
      expect(r).toMatchObject({
        ok: false,
        reason: 'header Authorization has a value with characters not allowed in a header (the value is not shown)',
      });
      expect(JSON.stringify(probers.http.validate!(broken as never))).not.toContain('s3cret');
    });

    it('does not follow redirects unless asked, and says where it was sent', async () => {
      expect(await probe('http', { url: url('/redirect') })).toMatchObject({
        ok: false,
        reason: 'status 302 (redirect to /ok), expected 2xx',
      });
      const followed = await probe('http', { url: url('/redirect'), follow_redirects: true, body_contains: 'ok' });
      expect(followed).toMatchObject({ ok: true });
      expect(followed.observed.status).toBe(200);
    });

    it('drops configured headers when a redirect leaves the origin', async () => {
      const to = encodeURIComponent(`http://127.0.0.1:${otherPort}/auth`);
      const sameOrigin = await probe('http', {
        url: url(`/redirect?to=/auth`),
        headers: { Authorization: SECRET },
        follow_redirects: true,
      });
      expect(sameOrigin.ok).toBe(true);
      const crossOrigin = await probe('http', {
        url: url(`/redirect?to=${to}`),
        headers: { Authorization: SECRET },
        follow_redirects: true,
        expect_status: [401],
        body_contains: 'no credentials',
      });
      expect(crossOrigin).toMatchObject({ ok: true, reason: 'ok' });
    });

    it('stops after too many redirects', async () => {
      const r = await probe('http', { url: url('/loop'), follow_redirects: true });
      expect(r).toMatchObject({ ok: false, reason: 'too many redirects (more than 5)' });
    });

    it('cuts an endless body at 1 MiB instead of buffering it', async () => {
      const r = await probe('http', { url: url('/endless') }, { timeoutMs: 5000 });
      expect(r).toMatchObject({ ok: true });
      expect((r.observed.body as string).length).toBe(MAX_BODY_BYTES);
      const missing = await probe('http', { url: url('/endless'), body_contains: 'b' }, { timeoutMs: 5000 });
      expect(missing).toMatchObject({ ok: false, reason: 'body does not contain "b" (in its first 1 MiB)' });
    });

    it('reports a refused connection in the words of the OS', async () => {
      const closed = await closedPort();
      const r = await probe('http', { url: `http://127.0.0.1:${closed}/` });
      expect(r).toMatchObject({ ok: false, reason: `connect ECONNREFUSED 127.0.0.1:${closed}` });
    });

    it('times out against a server that accepts and never answers', async () => {
      const r = await probe('http', { url: `http://127.0.0.1:${silent.port}/` }, { timeoutMs: 300 });
      expect(r).toMatchObject({ ok: false, reason: 'timed out after 300ms' });
      expect(r.durationSeconds).toBeGreaterThanOrEqual(0.29);
      expect(r.durationSeconds).toBeLessThan(3);
    });

    it('closes its connection when the signal aborts', async () => {
      let closed!: () => void;
      const connectionClosed = new Promise<void>((r) => (closed = r));
      const hung = http.createServer((req) => req.socket.once('close', () => closed()));
      const hungPort = await listen(hung);
      try {
        const abort = new AbortController();
        setTimeout(() => abort.abort(new Error('stopped by the test')), 100);
        const r = await probers.http.run(
          { url: `http://127.0.0.1:${hungPort}/` },
          {
            probeId: 'abort',
            signal: abort.signal,
            timeoutMs: 10_000,
            stateDir: dir,
          },
        );
        expect(r).toMatchObject({ ok: false, reason: 'stopped by the test' });
        await connectionClosed;
      } finally {
        await close(hung);
      }
    });
  });

  describe('over https', () => {
    const tlsUrl = (p: number, path = '/ok') => `https://127.0.0.1:${p}${path}`;

    it("refuses a self-signed certificate in node's words", async () => {
      const r = await probe('http', { url: tlsUrl(selfSignedPort) });
      expect(r).toMatchObject({ ok: false, reason: 'self-signed certificate' });
    });

    it('accepts any certificate with insecure_skip_verify and still observes its expiry', async () => {
      const r = await probe('http', { url: tlsUrl(selfSignedPort), insecure_skip_verify: true });
      expect(r).toMatchObject({ ok: true });
      expect(r.observed.tls_version).toBe('TLSv1.3');
      expect(r.observed.cert_days_left).toBeGreaterThan(4.9);
      expect(r.observed.cert_days_left).toBeLessThanOrEqual(5);
    });

    it('fails when the certificate expires sooner than min_cert_days_left', async () => {
      const r = await probe('http', { url: tlsUrl(selfSignedPort), insecure_skip_verify: true, min_cert_days_left: 14 });
      expect(r).toMatchObject({ ok: false, reason: 'certificate expires in 5.0 days (min 14)' });
      const enough = await probe('http', { url: tlsUrl(selfSignedPort), insecure_skip_verify: true, min_cert_days_left: 4 });
      expect(enough.ok).toBe(true);
    });

    it('does not trust a private CA unless ca_file names it', async () => {
      expect(await probe('http', { url: tlsUrl(caSignedPort) })).toMatchObject({
        ok: false,
        reason: 'unable to verify the first certificate',
      });
      const r = await probe(
        'http',
        { url: tlsUrl(caSignedPort, '/json'), ca_file: caFile, min_cert_days_left: 14 },
        {
          conditions: ['cert_days_left > 29.0 && tls_version == "TLSv1.3" && json.status == "ok"'],
        },
      );
      expect(r).toMatchObject({ ok: true, reason: 'ok' });
    });

    it("reports an expired certificate in node's words", async () => {
      expect(await probe('http', { url: tlsUrl(expiredPort), ca_file: caFile })).toMatchObject({
        ok: false,
        reason: 'certificate has expired',
      });
      const skipped = await probe('http', { url: tlsUrl(expiredPort), insecure_skip_verify: true, min_cert_days_left: 1 });
      expect(skipped).toMatchObject({ ok: false });
      expect(skipped.reason).toMatch(/^certificate expired (0\.\d|1\.0) days ago$/);
    });

    it('says which ca_file it could not read', async () => {
      const missing = join(dir, 'missing.pem');
      const r = await probe('http', { url: tlsUrl(caSignedPort), ca_file: missing });
      expect(r).toMatchObject({ ok: false, reason: `ca_file: ENOENT: no such file or directory, open '${missing}'` });
    });
  });

  describe('validate', () => {
    const validate = (s: object) => probers.http.validate!(s as never);

    it('accepts a plain configuration', () => {
      expect(validate({ url: 'https://example.test/health', body_matches: '^ok', min_cert_days_left: 14 })).toEqual([]);
    });

    it('rejects a bad URL, a bad regular expression and https-only settings on http', () => {
      expect(validate({ url: 'ftp://example.test/' })).toEqual([['url', 'must be an absolute http:// or https:// URL']]);
      expect(validate({ url: 'http://example.test/', body_matches: '(' })).toEqual([
        ['body_matches', 'is not a valid regular expression: Invalid regular expression: /(/: Unterminated group'],
      ]);
      expect(validate({ url: 'http://example.test/', min_cert_days_left: 14, ca_file: '/ca.pem' })).toEqual([
        ['min_cert_days_left', 'applies to https:// URLs only'],
        ['ca_file', 'applies to https:// URLs only'],
      ]);
    });

    it('rejects a bad header without quoting its value', () => {
      expect(validate({ url: 'http://example.test/', headers: { 'Bad Name': 'x', 'X-Token': `${SECRET}\n` } })).toEqual([
        ['headers.Bad Name', 'is not a valid header name'],
        ['headers.X-Token', 'has a value with characters not allowed in a header (the value is not shown)'],
      ]);
    });
  });
});
