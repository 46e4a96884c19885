import { mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../../src/daemon.js';
import { hashToken } from '../../src/http/auth.js';
import { writeConfig } from '../helpers/config.js';
import { closedPort } from '../helpers/net.js';
import { startRedisServer } from '../helpers/redis-server.js';

/**
 * The console in a real browser (Debian's chromium, driven by playwright-core; no browser is
 * downloaded): an operator starts an execution through the API, the approver signs in, sees the
 * pending approval with the runbook, version and sha256, approves it, and watches the execution
 * go on to succeeded without a reload. The operator approving it is refused by the two-person
 * rule, and the page says so in the server's words. Every view fits a 375 px wide phone.
 */

const TOKENS = { olga: 'tok-console-olga-0123456789', abe: 'tok-console-abe-0123456789' };
const SHOTS = 'test-results/console';
// A value that would be markup if the page ever used innerHTML: it must show as text.
const HOSTILE = '<img src=x id=pwned><b>bold</b>';

const TINY = `name: tiny
version: 1
description: Ask, then act.
timeout: 5m
inputs:
  target: { type: string, required: true }
  data_at_risk: { type: string, default: none }
steps:
  - id: approve
    kind: approval
    timeout: 5m
    approval: { message: 'switch {{ inputs.target }} to the DR site' }
  - id: act
    kind: shell
    timeout: 10s
    shell: { argv: ['sh', '-c', 'sleep 1; echo switched'] }
`;

class Sink extends Writable {
  override _write(_c: Buffer, _e: string, done: () => void) {
    done();
  }
}

describe('console: a web page served by the daemon', () => {
  let redis: Awaited<ReturnType<typeof startRedisServer>>;
  let web: net.Server;
  let daemon: Daemon;
  let browser: Browser;
  let executionId = '';
  let hash = '';
  const pageErrors: string[] = [];

  beforeAll(async () => {
    mkdirSync(SHOTS, { recursive: true });
    redis = await startRedisServer();
    web = net.createServer((s) => s.on('error', () => {}).end());
    await new Promise<void>((r) => web.listen(0, '127.0.0.1', r));
    const webPort = (web.address() as net.AddressInfo).port;
    const drPort = await closedPort();
    const cfg = writeConfig({
      config: `daemon:
  listen: 127.0.0.1:0
  redis_url: ${redis.url}
  runbooks_dir: ../runbooks
  state_dir: ../var
auth:
  two_person_rule: true
  tokens:
    - { name: olga, sha256: ${hashToken(TOKENS.olga)}, roles: [operator, approver] }
    - { name: abe, sha256: ${hashToken(TOKENS.abe)}, roles: [approver] }
sites:
  primary: { role: primary, description: Plant A }
  dr: { role: dr, description: Plant B }
services:
  orders:
    description: Order entry
    rto: 1h
    rpo: 30s
`,
      probes: {
        'p.yaml': `probes:
  - id: orders-web
    kind: tcp
    site: primary
    services: [orders]
    interval: 500ms
    timeout: 300ms
    tcp: { host: 127.0.0.1, port: ${webPort} }
  - id: orders-web-dr
    kind: tcp
    site: dr
    services: [orders]
    interval: 500ms
    timeout: 300ms
    failure_threshold: 1
    tcp: { host: 127.0.0.1, port: ${drPort} }
`,
      },
    });
    mkdirSync(join(cfg.dir, 'runbooks/tiny'), { recursive: true });
    writeFileSync(join(cfg.dir, 'runbooks/tiny/v1.yaml'), TINY);
    daemon = new Daemon({ configPath: cfg.configPath, port: 0, logStream: new Sink(), firstRun: 'now' });
    await daemon.start();
    browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      headless: true,
      args: process.getuid?.() === 0 ? ['--no-sandbox'] : [],
    });
  });

  afterAll(async () => {
    await browser?.close();
    await daemon?.stop();
    web?.close();
    await redis?.stop();
  });

  const api = async (method: string, path: string, who: keyof typeof TOKENS, body?: unknown) => {
    const headers: Record<string, string> = { authorization: `Bearer ${TOKENS[who]}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(daemon.url + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    return { status: res.status, body: (await res.json()) as { execution: { id: string; hash: string; status: string } } };
  };

  const open = async (width: number, height: number): Promise<Page> => {
    const context = await browser.newContext({ viewport: { width, height } });
    const page = await context.newPage();
    page.on('pageerror', (err) => pageErrors.push(err.message));
    page.on('console', (m) => {
      if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) pageErrors.push(m.text());
    });
    await page.goto(daemon.url + '/');
    return page;
  };

  const signIn = async (page: Page, who: keyof typeof TOKENS) => {
    await page.fill('#token', TOKENS[who]);
    await page.click('button[type=submit]');
    await page.locator('#nav').waitFor({ state: 'visible' });
  };

  /** The page is no wider than the viewport: nothing scrolls sideways. */
  const overflow = (page: Page) => page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);

  const shot = (page: Page, name: string) => page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });

  it('serves the page with its content types and a strict Content-Security-Policy', async () => {
    // Every body is read to its end: a response left unread keeps its connection busy, and the
    // daemon's HTTP server would then wait for it (keep-alive, 72 s) when it stops.
    const get = async (path: string, init?: RequestInit) => {
      const res = await fetch(daemon.url + path, init);
      return { status: res.status, headers: res.headers, text: await res.text() };
    };
    const root = await get('/', { redirect: 'manual' });
    expect(root.status).toBe(302);
    expect(root.headers.get('location')).toBe('/console/');
    const index = await get('/console/');
    expect(index.status).toBe(200);
    expect(index.headers.get('content-type')).toBe('text/html; charset=utf-8');
    const csp = index.headers.get('content-security-policy') ?? '';
    expect(csp).toContain("default-src 'self'");
    expect(csp).toContain("script-src 'self'");
    expect(csp).not.toContain('unsafe-inline');
    const html = index.text;
    expect(html).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/); // no inline script
    expect(html).not.toMatch(/\son[a-z]+=/); // no inline handlers
    for (const [file, type] of [
      ['app.js', 'text/javascript; charset=utf-8'],
      ['style.css', 'text/css; charset=utf-8'],
    ]) {
      const res = await get(`/console/${file}`);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe(type);
      expect(res.headers.get('content-security-policy')).toBe(csp);
    }
    // A page, not the API: not in the OpenAPI document.
    const paths = Object.keys((JSON.parse((await get('/docs/json')).text) as { paths: Record<string, unknown> }).paths);
    expect(paths.filter((p) => p === '/' || p.startsWith('/console'))).toEqual([]);
    expect((await get('/console/nothing.js')).status).toBe(404);
    expect((await get('/console/%2e%2e/routes/console.ts')).status).toBe(404);
    expect((await get('/console/..%2F..%2F..%2Fpackage.json')).status).toBe(404);
  });

  it('olga starts an execution through the API; it waits for an approval', async () => {
    const started = await api('POST', '/api/v1/runbooks/tiny/executions', 'olga', { inputs: { target: 'orders', data_at_risk: HOSTILE } });
    expect(started.status).toBe(201);
    executionId = started.body.execution.id;
    hash = started.body.execution.hash;
    expect(hash).toMatch(/^[0-9a-f]{64}$/);
    const end = Date.now() + 10_000;
    while ((await api('GET', `/api/v1/executions/${executionId}`, 'olga')).body.execution.status !== 'waiting_approval') {
      if (Date.now() > end) throw new Error('the execution never waited for an approval');
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  it('on a phone, olga approving her own execution is refused by the two-person rule, in the server words', async () => {
    const page = await open(375, 812);
    await shot(page, '01-phone-sign-in');
    await signIn(page, 'olga');
    await page.locator('[data-service="orders"]').waitFor();
    await page.locator('text=orders-web-dr').first().waitFor();
    await shot(page, '02-phone-overview');
    expect(await overflow(page)).toBeLessThanOrEqual(0);

    await page.click('#nav a[data-view="approvals"]');
    const card = page.locator(`[data-execution="${executionId}"]`);
    await card.waitFor();
    expect(await overflow(page)).toBeLessThanOrEqual(0);
    await card.locator('button.approve').click();
    const refusal = card.locator('.note.error');
    await refusal.waitFor();
    expect(await refusal.textContent()).toBe('403: two-person rule: olga started this execution and cannot approve or deny it');
    await shot(page, '03-phone-two-person-rule-refusal');
    expect(await overflow(page)).toBeLessThanOrEqual(0);

    for (const view of ['incidents', 'executions', 'restore-tests']) {
      await page.click(`#nav a[data-view="${view}"]`);
      await page
        .locator('main h1')
        .filter({ hasText: view === 'restore-tests' ? 'Restore tests' : view[0]!.toUpperCase() + view.slice(1) })
        .waitFor();
      expect(await overflow(page), view).toBeLessThanOrEqual(0);
    }
    await page.context().close();
    expect((await api('GET', `/api/v1/executions/${executionId}`, 'olga')).body.execution.status).toBe('waiting_approval');
  });

  it('abe signs in, sees the approval with runbook, version and sha256, approves, and watches it succeed without a reload', async () => {
    const page = await open(1280, 900);
    await signIn(page, 'abe');
    await page.locator('[data-service="orders"]').waitFor();
    await shot(page, '04-desktop-overview');
    // The badge in the navigation counts what waits for an approval.
    await expect.poll(() => page.locator('#approval-count').textContent()).toBe('1');

    await page.click('#nav a[data-view="approvals"]');
    const card = page.locator(`[data-execution="${executionId}"]`);
    await card.waitFor();
    const text = (await card.textContent()) ?? '';
    expect(text).toContain('tiny');
    expect(text).toContain('v1');
    expect(text).toContain(hash);
    expect(text).toContain('switch orders to the DR site');
    expect(text).toContain('olga');
    // Data from the server is text, never markup.
    expect(text).toContain(`Data at risk: ${HOSTILE}`);
    expect(await page.locator('#pwned').count()).toBe(0);
    await shot(page, '05-desktop-approval-pending');

    // A marker on the window: a reload would lose it.
    await page.evaluate(() => ((window as unknown as { marker: string }).marker = 'same page'));
    await card.locator('textarea').fill('checked with olga on the phone');
    await card.locator('button.approve').click();
    const flash = page.locator('#flash .note.ok');
    await flash.waitFor();
    expect(await flash.textContent()).toContain('Approved tiny v1');
    await card.waitFor({ state: 'detached' });
    await shot(page, '06-desktop-approved');

    await flash.locator('a').click();
    const status = page.locator('#execution-status');
    await status.waitFor();
    await expect.poll(() => status.textContent(), { timeout: 15_000 }).toBe('succeeded');
    expect(await page.evaluate(() => (window as unknown as { marker?: string }).marker)).toBe('same page');
    const detail = (await page.locator('main').textContent()) ?? '';
    expect(detail).toContain('approved by abe');
    expect(detail).toContain('checked with olga on the phone');
    await shot(page, '07-desktop-execution-succeeded');

    // The execution's page on a phone fits too.
    await page.setViewportSize({ width: 375, height: 812 });
    await page.waitForTimeout(100);
    expect(await overflow(page)).toBeLessThanOrEqual(0);
    await shot(page, '08-phone-execution-succeeded');
    await page.context().close();
  }, 60_000);

  it('a drill is asked for from the overview and the answer (or the refusal) is shown', async () => {
    const page = await open(375, 812);
    await signIn(page, 'olga');
    const card = page.locator('[data-service="orders"]');
    await card.locator('button', { hasText: 'Start drill' }).click();
    // Drills may not be served yet, and orders has no failover policy: either way, the page tells.
    await card.locator('.note').waitFor();
    expect(((await card.locator('.note').textContent()) ?? '').length).toBeGreaterThan(0);
    await shot(page, '09-phone-drill-answer');
    expect(await overflow(page)).toBeLessThanOrEqual(0);
    await page.click('#sign-out');
    await page.locator('#token').waitFor();
    expect(await page.evaluate(() => sessionStorage.getItem('continuity.token'))).toBeNull();
    await page.context().close();
  });

  it('ran with no script error and no Content-Security-Policy violation', () => {
    expect(pageErrors).toEqual([]);
  });
});
