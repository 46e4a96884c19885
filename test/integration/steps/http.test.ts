import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { http as httpStep, HTTP_BODY_RESULT_LIMIT } from '../../../src/runbooks/steps/http.js';
import { closedPort, silentServer } from '../../helpers/net.js';
import { runStep, stepProblems, undocumented } from '../../helpers/steps.js';

const TOKEN = 'Bearer dns-api-s3cret-token';

interface Received {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

describe('http step', () => {
  let server: http.Server;
  let base: string;
  const received: Received[] = [];

  beforeAll(async () => {
    server = http.createServer((req, res) => {
      let body = '';
      req.on('data', (d: Buffer) => (body += d.toString()));
      req.on('end', () => {
        received.push({ method: req.method!, url: req.url!, headers: req.headers, body });
        if (req.url === '/zones/example.com/records') {
          res.writeHead(201, { 'content-type': 'application/json', 'x-request-id': 'req-7' });
          res.end(JSON.stringify({ id: 7, name: 'db', records: [{ type: 'A', content: '10.0.2.5' }] }));
        } else if (req.url === '/conflict') {
          res.writeHead(422, { 'content-type': 'application/json' });
          res.end('{"error":"record already exists"}\n{"more":"lines"}');
        } else if (req.url === '/big') {
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ pad: 'x'.repeat(100_000), tail: 'end' }));
        } else {
          res.writeHead(200, { 'content-type': 'text/plain' });
          res.end('plain text\n');
        }
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await new Promise<void>((r) => server.close(() => r()));
  });

  it('sends json as a JSON body with its headers, and returns status, body, json and headers', async () => {
    received.length = 0;
    const r = await runStep('http', {
      method: 'POST',
      url: `${base}/zones/example.com/records`,
      headers: { Authorization: TOKEN },
      json: { type: 'A', name: 'db', content: '10.0.2.5', ttl: 60, proxied: false },
    });
    expect(r).toMatchObject({
      ok: true,
      result: {
        status: 201,
        json: { id: 7, name: 'db', records: [{ type: 'A', content: '10.0.2.5' }] },
        headers: { 'x-request-id': 'req-7', 'content-type': 'application/json' },
      },
    });
    expect(JSON.parse(r.result.body as string)).toEqual(r.result.json);
    expect(received).toHaveLength(1);
    expect(received[0]).toMatchObject({
      method: 'POST',
      url: '/zones/example.com/records',
      headers: { authorization: TOKEN, 'content-type': 'application/json', 'user-agent': 'continuity-runbook' },
    });
    expect(JSON.parse(received[0]!.body)).toEqual({ type: 'A', name: 'db', content: '10.0.2.5', ttl: 60, proxied: false });
  });

  it('sends body as is, with the content type the headers give', async () => {
    received.length = 0;
    const r = await runStep('http', { method: 'PUT', url: `${base}/raw`, headers: { 'Content-Type': 'text/plain' }, body: 'drain node-2' });
    expect(r).toMatchObject({ ok: true, result: { status: 200, body: 'plain text\n', json: null } });
    expect(received[0]).toMatchObject({ method: 'PUT', headers: { 'content-type': 'text/plain' }, body: 'drain node-2' });
  });

  it('fails on a status not expected, quoting the first line of the answer but not the URL or headers', async () => {
    const r = await runStep('http', { method: 'POST', url: `${base}/conflict`, headers: { Authorization: TOKEN }, json: {} });
    expect(r).toMatchObject({
      ok: false,
      reason: 'status 422, expected 2xx: {"error":"record already exists"}',
      result: { status: 422, json: null },
    });
    expect(JSON.stringify(r)).not.toContain(TOKEN);
    expect(await runStep('http', { url: `${base}/zones/example.com/records`, expect_status: [200, 204] })).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/^status 201, expected 200 or 204: \{"id":7/),
    });
    expect(await runStep('http', { url: `${base}/conflict`, expect_status: [409, 422] })).toMatchObject({ ok: true });
  });

  it('keeps 64 KiB of the body in the result, but parses json from all it read', async () => {
    const r = await runStep('http', { url: `${base}/big` });
    expect(r.ok).toBe(true);
    expect((r.result.body as string).length).toBe(HTTP_BODY_RESULT_LIMIT);
    expect(r.result.json).toMatchObject({ tail: 'end' });
  });

  it('reports a refused connection and a peer that never answers', async () => {
    const port = await closedPort();
    expect(await runStep('http', { url: `http://127.0.0.1:${port}/x` })).toMatchObject({
      ok: false,
      reason: `connect ECONNREFUSED 127.0.0.1:${port}`,
    });
    const silent = await silentServer();
    try {
      const r = await runStep('http', { url: `http://127.0.0.1:${silent.port}/x` }, { timeoutMs: 300 });
      expect(r).toMatchObject({ ok: false, reason: 'timed out after 300ms' });
      expect(r.durationSeconds).toBeLessThan(3);
    } finally {
      await silent.close();
    }
  });
});

describe('http step settings', () => {
  it('checks the URL unless it holds a template, and takes body or json', () => {
    expect(stepProblems('http', { url: 'https://api.example.com/zones' })).toEqual([]);
    expect(stepProblems('http', { url: '{{ inputs.api }}/zones' })).toEqual([]);
    expect(stepProblems('http', { url: 'ftp://example.com' })).toEqual(['url: must be an absolute http:// or https:// URL']);
    expect(stepProblems('http', { url: 'https://x', body: 'a', json: { a: 1 } })).toEqual(['json: set body or json, not both']);
    expect(stepProblems('http', { url: 'http://x', ca_file: '/ca.pem', insecure_skip_verify: true })).toEqual([
      'ca_file: applies to https:// URLs only',
      'insecure_skip_verify: applies to https:// URLs only',
    ]);
    expect(stepProblems('http', { url: 'https://x', headers: { 'Bad Name': 'v' } })).toEqual([
      'headers.Bad Name: is not a valid header name',
    ]);
    expect(stepProblems('http', { url: 'https://x', method: 'TRACE' })).not.toEqual([]);
    expect(stepProblems('http', { url: 'https://x', follow_redirects: true })).not.toEqual([]);
  });

  it('documents every setting', () => {
    expect(undocumented(httpStep.settings)).toEqual([]);
    expect(httpStep.result).toEqual({ status: 'int', body: 'string', json: 'dyn', headers: 'map' });
  });
});
