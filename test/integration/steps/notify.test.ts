import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { notify } from '../../../src/runbooks/steps/notify.js';
import { closedPort, silentServer } from '../../helpers/net.js';
import { runStep, stepProblems, undocumented } from '../../helpers/steps.js';

/** Webhook URLs carry their secret in the path, as Slack's do. */
const SECRET_PATH = '/services/T0001/B0002/s3cretWebhookToken';

interface Received {
  url: string;
  headers: http.IncomingHttpHeaders;
  body: unknown;
}

describe('notify step', () => {
  let server: http.Server;
  let base: string;
  const received: Received[] = [];

  beforeAll(async () => {
    server = http.createServer((req, res) => {
      let body = '';
      req.on('data', (d: Buffer) => (body += d.toString()));
      req.on('end', () => {
        received.push({ url: req.url!, headers: req.headers, body: JSON.parse(body) });
        res.writeHead(req.url!.startsWith('/broken') ? 500 : 200, { 'content-type': 'text/plain' });
        res.end(req.url!.startsWith('/broken') ? `internal error at ${req.url}` : 'ok');
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await new Promise<void>((r) => server.close(() => r()));
  });

  it('posts a JSON event: execution, step, mode, severity, message, at', async () => {
    received.length = 0;
    const before = Date.now();
    const r = await runStep(
      'notify',
      { url: `${base}${SECRET_PATH}`, message: 'Failover to dr-east started', severity: 'warning', headers: { 'X-Team': 'dba' } },
      { executionId: 'exec-9', stepId: 'tell-oncall', mode: 'live' },
    );
    expect(r).toMatchObject({ ok: true, result: { status: 200 } });
    expect(received).toHaveLength(1);
    const got = received[0]!;
    expect(got.url).toBe(SECRET_PATH);
    expect(got.headers).toMatchObject({ 'content-type': 'application/json', 'x-team': 'dba', 'user-agent': 'continuity-runbook' });
    expect(got.body).toEqual({
      execution: 'exec-9',
      step: 'tell-oncall',
      mode: 'live',
      severity: 'warning',
      message: 'Failover to dr-east started',
      at: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/),
    });
    const at = Date.parse((got.body as { at: string }).at);
    expect(at).toBeGreaterThanOrEqual(before - 1);
    expect(at).toBeLessThanOrEqual(Date.now());
  });

  it('defaults to severity info', async () => {
    received.length = 0;
    await runStep('notify', { url: `${base}/hook`, message: 'hello' });
    expect(received[0]!.body).toMatchObject({ severity: 'info', mode: 'live' });
  });

  it('posts a Slack message: text and blocks, mrkdwn control characters escaped, a drill marked as one', async () => {
    received.length = 0;
    const r = await runStep(
      'notify',
      {
        url: `${base}${SECRET_PATH}`,
        format: 'slack',
        message: 'Promoted db2 <!channel> & <https://evil.example|click>',
        severity: 'critical',
      },
      { executionId: 'exec-9', stepId: 'tell-oncall', mode: 'drill' },
    );
    expect(r).toMatchObject({ ok: true, result: { status: 200 } });
    const text = ':rotating_light: [DRILL] *critical*: Promoted db2 &lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;';
    expect(received[0]!.body).toEqual({
      text,
      blocks: [
        { type: 'section', text: { type: 'mrkdwn', text } },
        { type: 'context', elements: [{ type: 'mrkdwn', text: 'execution `exec-9` · step `tell-oncall` · mode drill' }] },
      ],
    });
  });

  it('fails when the webhook answers other than 2xx, without showing the URL', async () => {
    const r = await runStep('notify', { url: `${base}/broken${SECRET_PATH}`, message: 'x' });
    expect(r).toEqual(expect.objectContaining({ ok: false, reason: 'webhook answered 500', result: { status: 500 } }));
    expect(JSON.stringify(r)).not.toContain('s3cretWebhookToken');
  });

  it('says the webhook is unreachable with the error code only', async () => {
    const port = await closedPort();
    const r = await runStep('notify', { url: `http://127.0.0.1:${port}${SECRET_PATH}`, message: 'x' });
    expect(r).toMatchObject({ ok: false, reason: 'webhook unreachable: ECONNREFUSED', result: {} });
    expect(JSON.stringify(r)).not.toContain('s3cretWebhookToken');
  });

  it('gives up on a webhook that never answers', async () => {
    const silent = await silentServer();
    try {
      const r = await runStep('notify', { url: `http://127.0.0.1:${silent.port}${SECRET_PATH}`, message: 'x' }, { timeoutMs: 300 });
      expect(r).toMatchObject({ ok: false, reason: 'timed out after 300ms' });
      expect(r.durationSeconds).toBeLessThan(3);
    } finally {
      await silent.close();
    }
  });
});

describe('notify settings', () => {
  it('checks the URL unless it is a reference, and the format and severity', () => {
    expect(stepProblems('notify', { url: 'https://hooks.example.com/x', message: 'hi' })).toEqual([]);
    expect(stepProblems('notify', { url: '${env:SLACK_WEBHOOK}', format: 'slack', message: 'hi' })).toEqual([]);
    expect(stepProblems('notify', { url: 'hooks.example.com/x', message: 'hi' })).toEqual([
      'url: must be an absolute http:// or https:// URL',
    ]);
    expect(stepProblems('notify', { url: 'https://x', message: 'hi', format: 'teams' })).not.toEqual([]);
    expect(stepProblems('notify', { url: 'https://x', message: 'hi', severity: 'panic' })).not.toEqual([]);
    expect(stepProblems('notify', { url: 'https://x', message: '' })).not.toEqual([]);
  });

  it('documents every setting', () => {
    expect(undocumented(notify.settings)).toEqual([]);
    expect(notify.result).toEqual({ status: 'int' });
  });
});
