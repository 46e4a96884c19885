import { execFile, spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import { promisify } from 'node:util';
import net from 'node:net';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../../../src/daemon.js';
import { hashToken } from '../../../src/http/auth.js';
import type { Incident } from '../../../src/incidents/manager.js';
import type { IncidentReport } from '../../../src/incidents/report.js';
import { writeConfig } from '../../helpers/config.js';
import { freshRedisDb } from '../../helpers/redis-db.js';

/**
 * An incident's whole life without a lab: maintenance keeps the failover from running while the
 * escalation chain goes on (first responder, department lead, the absent manager's deputy), an
 * acknowledgement stops it, customers are told past the notice threshold; then maintenance ends,
 * the failover runbook runs, the DR endpoint is verified and everyone told is told it recovered.
 */
const OPS = 'tok-incident-operator-0123456789';
const APPROVER = 'tok-incident-approver-0123456789';
const ALERTMANAGER = 'tok-incident-alertmanager-0123456789';
const run = promisify(execFile);

const NOOP = `name: noop-failover
version: 1
description: Stands in for a failover.
timeout: 1m
inputs:
  require_approval: { type: boolean, default: false }
steps:
  - id: approve
    kind: approval
    timeout: 1m
    when: inputs.require_approval
  - id: optional_check
    kind: shell
    timeout: 5s
    on_failure: continue
    shell: { argv: ['false'] }
  - id: switch
    kind: sleep
    timeout: 5s
    idempotent: true
    sleep: { duration: 50ms }
`;

class Sink extends Writable {
  override _write(_c: Buffer, _e: string, done: () => void) {
    done();
  }
}

describe('incident lifecycle: escalation, deputy, acknowledgement, customer notice, maintenance, recovery', () => {
  const received: Array<{ channel: string; body: Record<string, string> }> = [];
  let receiver: http.Server;
  let primary: net.Server;
  let primaryPort: number;
  let dr: net.Server;
  let billing: net.Server;
  let daemon: Daemon;

  beforeAll(async () => {
    receiver = http.createServer((req, res) => {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        received.push({ channel: req.url!.slice(1), body: JSON.parse(body) });
        res.end('ok');
      });
    });
    await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
    const hook = `http://127.0.0.1:${(receiver.address() as net.AddressInfo).port}`;
    primary = net.createServer((s) => s.on('error', () => {}).end());
    await new Promise<void>((r) => primary.listen(0, '127.0.0.1', r));
    primaryPort = (primary.address() as net.AddressInfo).port;
    billing = net.createServer((s) => s.on('error', () => {}).end());
    await new Promise<void>((r) => billing.listen(0, '127.0.0.1', r));
    const billingPort = (billing.address() as net.AddressInfo).port;
    dr = net.createServer((s) => s.on('error', () => {}).end());
    await new Promise<void>((r) => dr.listen(0, '127.0.0.1', r));
    const drPort = (dr.address() as net.AddressInfo).port;

    const redisUrl = await freshRedisDb(14);
    const cfg = writeConfig({
      config: `daemon:
  listen: 127.0.0.1:0
  redis_url: ${redisUrl}
  runbooks_dir: ../runbooks
  state_dir: ../var
auth:
  tokens:
    - { name: olga, sha256: ${hashToken(OPS)}, roles: [operator] }
    - { name: ann, sha256: ${hashToken(APPROVER)}, roles: [approver] }
    - { name: alertmanager, sha256: ${hashToken(ALERTMANAGER)}, roles: [operator] }
alertmanager:
  routes:
    - { match: { alertname: ShopDown, team: pay }, service: shop }
  service_label: service
notifications:
  public_url: https://continuity.example.test
  channels:
    oncall: { url: '${hook}/oncall', description: first responder }
    lead: { url: '${hook}/lead', description: department lead }
    manager: { url: '${hook}/manager', description: general manager }
    plant-lead: { url: '${hook}/plant-lead', description: deputy of the general manager }
    ceo: { url: '${hook}/ceo' }
    customers: { url: '${hook}/customers' }
  escalation:
    - { notify: oncall, after: 0s }
    - { notify: lead, after: 1s }
    - { notify: manager, after: 2s, deputy: plant-lead }
    - { notify: ceo, after: 6s }
  absent: [manager]
  customer: { channel: customers, after: 2500ms }
sites:
  primary: { role: primary }
  dr: { role: dr }
services:
  orders:
    rpo: 1h
    failover:
      runbook: noop-failover
      version: 1
      mode: approval
      primary_down: [app-primary]
      replica: db-replica
      verify: app-dr
      cooldown: 1m
  billing:
    rpo: 1h
    failover:
      runbook: noop-failover
      version: 1
      mode: automatic
      primary_down: [billing-primary]
      replica: db-replica
      verify: app-dr
      cooldown: 1h
  shop:
    rpo: 1h
    failover:
      runbook: noop-failover
      version: 1
      mode: approval
      primary_down: [shop-primary]
      replica: db-replica
      verify: app-dr
      cooldown: 1h
`,
      probes: {
        'p.yaml': `probes:
  - id: app-primary
    kind: tcp
    site: primary
    services: [orders]
    interval: 200ms
    timeout: 150ms
    failure_threshold: 2
    tcp: { host: 127.0.0.1, port: ${primaryPort} }
  - id: billing-primary
    kind: tcp
    site: primary
    services: [billing]
    interval: 200ms
    timeout: 150ms
    failure_threshold: 2
    tcp: { host: 127.0.0.1, port: ${billingPort} }
  - id: shop-primary
    kind: tcp
    site: primary
    services: [shop]
    interval: 200ms
    timeout: 150ms
    failure_threshold: 2
    tcp: { host: 127.0.0.1, port: ${drPort} }
  - id: db-replica
    kind: postgres
    site: dr
    services: [orders]
    interval: 200ms
    timeout: 150ms
    postgres: { host: 127.0.0.1, user: postgres, database: postgres }
  - id: app-dr
    kind: tcp
    site: dr
    interval: 200ms
    timeout: 150ms
    tcp: { host: 127.0.0.1, port: ${drPort} }
`,
      },
    });
    mkdirSync(join(cfg.dir, 'runbooks/noop-failover'), { recursive: true });
    writeFileSync(join(cfg.dir, 'runbooks/noop-failover/v1.yaml'), NOOP);
    daemon = new Daemon({ configPath: cfg.configPath, port: 0, logStream: new Sink(), firstRun: 'now' });
    await daemon.start();
  });
  afterAll(async () => {
    await daemon?.stop();
    for (const s of [receiver, primary, dr, billing]) s?.close();
  });

  const api = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(daemon.url + path, {
      method,
      headers: { authorization: `Bearer ${OPS}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    return { status: res.status, body: res.status === 204 ? undefined : ((await res.json()) as any) }; // eslint-disable-line @typescript-eslint/no-explicit-any
  };
  const until = async <T>(what: string, fn: () => Promise<T | undefined | false>, ms = 15_000): Promise<T> => {
    const end = Date.now() + ms;
    for (;;) {
      const v = await fn();
      if (v) return v;
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const channels = () => received.map((r) => `${r.channel}:${r.body.step}`);

  it('escalates until acknowledged, with the deputy for an absent manager, and tells customers past the threshold', async () => {
    await until('probes up', async () => daemon.status().probes.every((p) => p.state === 'UP'));
    // Maintenance from the CLI, as an operator would set it.
    const m = await run(
      'node',
      ['bin/continuity.js', 'maintenance', 'orders', '--for', '1h', '--reason', 'switch upgrade', '--url', daemon.url],
      {
        env: { ...process.env, CONTINUITY_TOKEN: OPS },
      },
    );
    expect(m.stdout).toMatch(/^orders: in maintenance until \S+ \(switch upgrade\)\n$/);
    primary.close();
    const incident = await until('a decision', async () =>
      ((await api('GET', '/api/v1/incidents')).body as Incident[]).find((i) => i.decision),
    );
    expect(incident.decision?.sentence).toMatch(/^orders: app-primary DOWN 2\/2; in maintenance until .* \(switch upgrade\): no action$/);
    await until('the deputy is told', async () => channels().includes('plant-lead:escalated')).catch(async (e) => {
      const i = (await api('GET', `/api/v1/incidents/${incident.id}`)).body;
      throw new Error(e.message + ' ' + JSON.stringify(received) + JSON.stringify(i) + JSON.stringify(daemon.config.notifications));
    });
    const chain = received.filter((r) => r.channel !== 'customers');
    expect(chain.map((r) => `${r.channel}:${r.body.step}`)).toEqual(['oncall:incident_opened', 'lead:escalated', 'plant-lead:escalated']);
    expect(chain[2]!.body.message).toMatch(/ \(standing in for manager, who is away\)$/);
    expect((await api('POST', `/api/v1/incidents/${incident.id}/acknowledge`)).status).toBe(200);
    await until('customer notice', async () => channels().includes('customers:customer_notice'));
    expect(received.find((r) => r.channel === 'customers')!.body.message).toMatch(/^Service notice: orders has been interrupted since /);
    await new Promise((r) => setTimeout(r, 4500));
    // Acknowledged: the chain stopped before the fourth level.
    expect(channels()).not.toContain('ceo:escalated');
    const i = (await api('GET', `/api/v1/incidents/${incident.id}`)).body as Incident;
    expect(i.notifications.acknowledged?.by).toBe('olga');
    expect(i.executionId).toBeUndefined();
  }, 30_000);

  it('after maintenance the failover runs, the DR endpoint is verified, and everyone told hears it recovered', async () => {
    expect((await api('DELETE', '/api/v1/services/orders/maintenance')).status).toBe(204);
    // Everyone told so far hears that an approval is needed, with the link to it.
    const asked = await until('approval needed', async () =>
      received.find((r) => r.channel === 'oncall' && r.body.step === 'approval_needed'),
    );
    const execution = /\/api\/v1\/executions\/([^;\s]+); approve: continuity approve \1$/.exec(asked.body.message!)?.[1];
    expect(asked.body.message).toContain('Review: https://continuity.example.test/api/v1/executions/');
    expect(execution).toBeDefined();
    // The channels are told one after the other: wait for all three.
    const told = await until('everyone told of the approval', async () => {
      const channelsAsked = received.filter((r) => r.body.step === 'approval_needed').map((r) => r.channel);
      return channelsAsked.length >= 3 ? channelsAsked.sort() : undefined;
    });
    expect(told).toEqual(['lead', 'oncall', 'plant-lead']);
    const view = (await (
      await fetch(`${daemon.url}/api/v1/executions/${execution}`, { headers: { authorization: `Bearer ${OPS}` } })
    ).json()) as {
      execution: { hash: string };
    };
    const ok = await fetch(`${daemon.url}/api/v1/executions/${execution}/approvals`, {
      method: 'POST',
      headers: { authorization: `Bearer ${APPROVER}`, 'content-type': 'application/json' },
      body: JSON.stringify({ decision: 'approve', hash: view.execution.hash }),
    });
    expect(ok.status).toBe(201);
    // A failed step is announced too, even one the runbook goes on after.
    const failed = await until('step failed', async () => received.find((r) => r.channel === 'oncall' && r.body.step === 'step_failed'));
    expect(failed.body.message).toMatch(
      /: failover step optional_check failed \(the runbook goes on\): false exited with code 1, expected 0$/,
    );
    const closed = await until('closed', async () => {
      const list = (await api('GET', '/api/v1/incidents')).body as Incident[];
      return list[0]?.status === 'closed' ? list[0] : undefined;
    }).catch(async (e: Error) => {
      throw new Error(`${e.message}: ${JSON.stringify((await api('GET', '/api/v1/incidents')).body)}`);
    });
    expect(closed.decision!.sentence).toMatch(/; awaiting approval for noop-failover v1$/);
    expect(closed.closeReason).toBe('verified: app-dr UP at the dr site');
    await until('recovered messages', async () => channels().filter((c) => c.endsWith(':recovered')).length >= 3);
    expect(
      channels()
        .filter((c) => c.endsWith(':recovered') || c === 'customers:customer_notice')
        .sort(),
    ).toEqual(
      ['customers:customer_notice', 'customers:customer_notice', 'lead:recovered', 'oncall:recovered', 'plant-lead:recovered'].sort(),
    );
    expect(received.find((r) => r.channel === 'oncall' && r.body.step === 'recovered')!.body.message).toMatch(
      /^Recovered: incident .* closed: verified: app-dr UP at the dr site; RTO achieved \d+ s$/,
    );
    expect(daemon.status().services.find((s) => s.id === 'orders')!.activeSite).toBe('dr');
    // The on-call engineer's view of it, from the CLI.
    const { stdout } = await run('node', ['bin/continuity.js', 'incident', closed.id, '--url', daemon.url], {
      env: { ...process.env, CONTINUITY_TOKEN: OPS },
    });
    expect(stdout).toContain(`incident:  ${closed.id}`);
    expect(stdout).toMatch(
      /^decision: {2}orders: app-primary DOWN 2\/2 from 2 vantage points; .*; awaiting approval for noop-failover v1$/m,
    );
    expect(stdout).toMatch(
      /^RTO achieved: [\d.]+ s = detection [\d.]+ \+ decision [\d.]+ \+ approval wait [\d.]+ \+ runbook [\d.]+ \+ verification [\d.]+$/m,
    );
    expect(stdout).toContain('acknowledged by olga');
  }, 30_000);

  it('no failover within the cool-down after the last one; a repair forecast past the threshold tells customers at once', async () => {
    // As if billing had failed over a minute ago.
    const redis = daemon.executor!.store.redis;
    await redis.set('{continuity}:last-failover:billing', String(Date.now() - 60_000));
    const before = received.length;
    billing.close();
    const incident = await until('a decision', async () =>
      ((await api('GET', '/api/v1/incidents')).body as Incident[]).find((i) => i.service === 'billing' && i.decision),
    );
    expect(incident.decision!.sentence).toMatch(
      /^billing: billing-primary DOWN 2\/2; last failover 1m(\d+s)? ago, within the 1h cool-down: no action$/,
    );
    expect(incident.decision!.action).toBe('none');
    const f = await api('POST', `/api/v1/incidents/${incident.id}/forecast`, { repair: '10h' });
    expect(f.status).toBe(200);
    expect(f.body.customerNotified).toBe(true);
    const notice = received.slice(before).find((r) => r.channel === 'customers')!;
    expect(notice.body.message).toMatch(
      /^Service notice: billing has been interrupted since .*\. We expect it back by .*\. Our teams are restoring it/,
    );
    await new Promise((r) => setTimeout(r, 1000));
    expect(((await api('GET', `/api/v1/incidents/${incident.id}`)).body as Incident).executionId).toBeUndefined();
  }, 30_000);

  const webhook = (body: unknown, token = ALERTMANAGER) =>
    fetch(`${daemon.url}/api/v1/alertmanager`, {
      method: 'POST',
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
  const payload = (alerts: Array<Record<string, unknown>>) => ({
    version: '4',
    groupKey: '{}:{alertname="X"}',
    status: 'firing',
    receiver: 'continuity',
    groupLabels: {},
    commonLabels: {},
    commonAnnotations: {},
    externalURL: 'http://alertmanager.example.test',
    alerts: alerts.map((a) => ({
      status: 'firing',
      annotations: {},
      startsAt: new Date().toISOString(),
      endsAt: '0001-01-01T00:00:00Z',
      generatorURL: '',
      ...a,
    })),
  });

  it('Alertmanager webhook: 401 without a token, 400 naming the field, unmapped and unusable alerts answered 202 with why', async () => {
    expect((await webhook(payload([{ labels: { alertname: 'ShopDown' }, fingerprint: 'f0' }]), '')).status).toBe(401);
    const bad = await webhook(payload([{ labels: { alertname: 'ShopDown' } }]));
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { message: string }).message).toMatch(/alerts\/0.*fingerprint/);
    const badStatus = await webhook({ ...payload([{ labels: {}, fingerprint: 'f0', status: 'burning' }]) });
    expect(badStatus.status).toBe(400);
    expect(((await badStatus.json()) as { message: string }).message).toContain('/alerts/0/status');
    expect((await webhook({ ...payload([]), version: '3' })).status).toBe(400);

    const r = await webhook(
      payload([
        { labels: { alertname: 'DiskFull', instance: 'db-a' }, fingerprint: 'f1' },
        // The route needs both labels.
        { labels: { alertname: 'ShopDown', team: 'ops' }, fingerprint: 'f2' },
        { labels: { alertname: 'Whatever', service: 'nosuch' }, fingerprint: 'f3' },
        // orders failed over above: it is served from the DR site.
        { labels: { alertname: 'OrdersDown', service: 'orders' }, fingerprint: 'f4' },
      ]),
    );
    expect(r.status).toBe(202);
    const body = (await r.json()) as {
      alerts: Array<{ action: string; reason: string }>;
      ignored: Array<{ fingerprint: string; reason: string }>;
    };
    expect(body.alerts.map((a) => a.action)).toEqual(['ignored', 'ignored', 'ignored', 'ignored']);
    expect(body.ignored.map((i) => i.fingerprint)).toEqual(['f1', 'f2', 'f3', 'f4']);
    expect(body.ignored[0]!.reason).toBe('no route matches, and it has no service label (labels: alertname="DiskFull", instance="db-a")');
    expect(body.ignored[2]!.reason).toBe('no route matches, and label service="nosuch" names no configured service');
    expect(body.ignored[3]!.reason).toMatch(/^orders is served from the dr site: incidents open only while the primary site serves/);
    const audit = await daemon.executor!.store.auditLog(20);
    expect(audit.find((e) => e.action === 'alertmanager webhook' && e.outcome === 'recorded')?.detail).toMatch(
      /^4 alerts: 0 opened, 0 joined, 0 recorded, 4 ignored/,
    );
    expect(audit.find((e) => e.action === 'POST /api/v1/alertmanager' && e.outcome === 'unauthenticated')).toBeDefined();
  }, 30_000);

  it('a real Alertmanager: a firing alert opens the service incident (same decision path), another joins it, the resolved one is recorded', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'continuity-am-'));
    const free = await new Promise<number>((r) => {
      const srv = net.createServer().listen(0, '127.0.0.1', () => {
        const port = (srv.address() as net.AddressInfo).port;
        srv.close(() => r(port));
      });
    });
    writeFileSync(join(dir, 'token'), ALERTMANAGER + '\n');
    writeFileSync(
      join(dir, 'alertmanager.yml'),
      `route:
  receiver: continuity
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: continuity
    webhook_configs:
      - url: ${daemon.url}/api/v1/alertmanager
        send_resolved: true
        http_config:
          authorization:
            credentials_file: ${join(dir, 'token')}
`,
    );
    const am: ChildProcess = spawn(
      '/usr/bin/prometheus-alertmanager',
      [
        `--config.file=${join(dir, 'alertmanager.yml')}`,
        `--storage.path=${join(dir, 'data')}`,
        `--web.listen-address=127.0.0.1:${free}`,
        '--cluster.listen-address=',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let amLog = '';
    am.stderr!.on('data', (d: Buffer) => (amLog += d.toString()));
    const amUrl = `http://127.0.0.1:${free}`;
    try {
      await until('alertmanager ready', async () => (await fetch(`${amUrl}/-/ready`).catch(() => undefined))?.ok);
      const post = async (alerts: unknown[]) => {
        const res = await fetch(`${amUrl}/api/v2/alerts`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(alerts),
        });
        expect(res.status, await res.text()).toBe(200);
      };
      const startsAt = new Date(Date.now() - 5000).toISOString();
      const shopDown = { labels: { alertname: 'ShopDown', team: 'pay', severity: 'critical' }, annotations: { summary: 'checkout fails' } };
      await post([{ ...shopDown, startsAt }]);
      const shopIncident = () =>
        api('GET', '/api/v1/incidents').then((r) => (r.body as Incident[]).find((i) => i.service === 'shop' && i.kind === 'incident'));
      const opened = await until('the alert opened shop incident', async () => {
        const i = await shopIncident();
        return i?.decision ? i : undefined;
      }).catch((e: Error) => {
        throw new Error(`${e.message}; alertmanager: ${amLog}`);
      });
      expect(opened.timeline[0]!.type).toBe('opened');
      expect(opened.timeline[0]!.message).toMatch(
        /^shop: alert ShopDown \(alertmanager, fingerprint [0-9a-f]+\): checkout fails firing; outage started /,
      );
      expect(opened.timeline.find((e) => e.type === 'alert_firing')!.message).toMatch(
        /^alert ShopDown \(alertmanager, fingerprint [0-9a-f]+\): checkout fails firing$/,
      );
      // RTO counts from the alert's start, not from its arrival.
      expect(opened.outageStart).toBe(Date.parse(startsAt));
      // The probes' decision path: the second vantage point, DR readiness, approval mode.
      expect(opened.decision!.sentence).toMatch(
        /^shop: alert ShopDown firing \(alertmanager\) from 2 vantage points; replica db-replica lost its primary.*; awaiting approval for noop-failover v1$/,
      );
      // A second alert, routed by its service label, joins the open incident.
      await post([{ labels: { alertname: 'ShopSlow', service: 'shop' }, annotations: { summary: 'p99 over 2 s' }, startsAt }]);
      await until('the second alert joined', async () =>
        (await shopIncident())?.timeline.some((e) => e.type === 'alert_firing' && e.message.startsWith('alert ShopSlow ')),
      );
      // ShopDown resolved: recorded; the incident goes on (its failover waits for an approval).
      await post([{ ...shopDown, startsAt, endsAt: new Date().toISOString() }]);
      const resolved = await until('resolved recorded', async () => {
        const i = await shopIncident();
        return i?.timeline.some((e) => e.type === 'alert_resolved') ? i : undefined;
      });
      expect(resolved.timeline.find((e) => e.type === 'alert_resolved')!.message).toMatch(/^alert ShopDown .* resolved$/);
      expect(resolved.id).toBe(opened.id);
      expect(resolved.status).not.toBe('closed');
      expect(resolved.timeline.filter((e) => e.type === 'alert_firing')).toHaveLength(2);
      const list = ((await api('GET', '/api/v1/incidents')).body as Incident[]).filter((i) => i.service === 'shop');
      expect(list).toHaveLength(1);
    } finally {
      am.kill('SIGTERM');
      await new Promise((r) => am.once('exit', r));
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it('reports: JSON fields and the Markdown sections, from the API and the CLI; drills refused where they must be', async () => {
    const orders = ((await api('GET', '/api/v1/incidents')).body as Incident[]).find((i) => i.service === 'orders')!;
    const r = (await api('GET', `/api/v1/incidents/${orders.id}/report`)).body as IncidentReport;
    expect(r).toMatchObject({ kind: 'incident', id: orders.id, service: 'orders', status: 'closed' });
    expect(r.decision!.sentence).toMatch(/; awaiting approval for noop-failover v1$/);
    expect(r.rto.targetSeconds).toBe(3600);
    expect(r.rto.met).toBe(true);
    expect(r.rto.achieved!.total).toBeGreaterThan(0);
    expect(r.rpo.targetSeconds).toBe(3600);
    expect(r.execution!.steps.map((st) => `${st.step}:${st.status}`)).toEqual([
      'approve:succeeded',
      'optional_check:failed',
      'switch:succeeded',
    ]);
    expect(r.execution!.approvals).toEqual([
      expect.objectContaining({ step: 'approve', who: 'ann', decision: 'approve', sha256: r.execution!.sha256 }),
    ]);
    expect(r.execution!.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(r.timeline.map((e) => e.type)).toContain('runbook.approved');
    expect(r.improvements).toContain('step optional_check (shell) failed (the runbook went on): false exited with code 1, expected 0');
    expect(r.improvements).toContain('RPO achieved could not be measured (not measurable)');

    const md = await fetch(`${daemon.url}/api/v1/incidents/${orders.id}/report?format=markdown`, {
      headers: { authorization: `Bearer ${OPS}` },
    });
    expect(md.headers.get('content-type')).toMatch(/^text\/markdown/);
    const text = await md.text();
    for (const heading of [
      `# Incident report: ${orders.id}`,
      '## Decision',
      '## RTO and RPO',
      '## Runbook execution',
      '### Approvals',
      '## Timeline',
      '## Improvement measures',
      '### Reviewer notes',
    ])
      expect(text, heading).toContain(`\n${heading}\n`.replace(/^\n#/, '#'));
    expect(text).toMatch(/^\| RTO \| 3600 s \| [\d.]+ s \| met \|$/m);
    expect(text).toMatch(new RegExp(`^\\| approve \\| ann \\| \\S+ \\| approve \\| \`${r.execution!.sha256}\` \\| - \\|$`, 'm'));
    expect(text).toContain('- [ ] step optional_check (shell) failed (the runbook went on): false exited with code 1, expected 0');
    expect((await api('GET', '/api/v1/incidents/nosuch/report')).status).toBe(404);
    expect((await api('GET', `/api/v1/incidents/${orders.id}/report?format=pdf`)).status).toBe(400);

    const cli = (...args: string[]) =>
      run('node', ['bin/continuity.js', ...args, '--url', daemon.url], { env: { ...process.env, CONTINUITY_TOKEN: OPS } });
    const { stdout } = await cli('report', 'incident', orders.id);
    expect(stdout).toBe(text + '\n');
    const json = JSON.parse((await cli('report', 'incident', orders.id, '--json')).stdout) as IncidentReport;
    expect(json.improvements).toEqual(r.improvements);
    await expect(cli('report', 'drill', orders.id)).rejects.toMatchObject({
      stderr: expect.stringContaining(`${orders.id} is an incident: continuity report incident ${orders.id}`),
    });

    // Drills: unknown service, a service with an open incident (billing), and the gauge of a service never drilled.
    expect((await api('POST', '/api/v1/services/nosuch/drills', {})).status).toBe(404);
    const refused = await api('POST', '/api/v1/services/billing/drills', {});
    expect(refused.status).toBe(409);
    expect(refused.body.message).toMatch(/^billing has an open incident billing-\S+: no drill until it is closed$/);
    // Safe by default: without drill_inputs the drill would act on production.
    const unsafe = await api('POST', '/api/v1/services/orders/drills', {});
    expect(unsafe.status).toBe(409);
    expect(unsafe.body.message).toMatch(/^services\.orders\.failover\.drill_inputs is not set: a drill runs every step of /);
    const metrics = await (await fetch(`${daemon.url}/metrics`)).text();
    expect(metrics).toContain('continuity_drill_last_success_timestamp_seconds{service="orders"} 0');
    expect(metrics).toContain('continuity_drill_last_success_timestamp_seconds{service="shop"} 0');
  }, 30_000);

  it('after a failback by hand, an operator says the primary serves again: audited, and incidents open there again', async () => {
    // The primary site is repaired and the service moved back by hand (the failback runbook).
    primary = net.createServer((s) => s.on('error', () => {}).end());
    await new Promise<void>((r) => primary.listen(primaryPort, '127.0.0.1', r));
    await until('app-primary UP', async () => daemon.status().probes.find((p) => p.id === 'app-primary')?.state === 'UP');
    expect(daemon.status().services.find((s) => s.id === 'orders')!.activeSite).toBe('dr');

    const bad = await api('PUT', '/api/v1/services/orders/active-site', { site: 'moon', reason: 'typo' });
    expect(bad.status).toBe(400);
    expect(bad.body.message).toBe('unknown site "moon" (sites: primary, dr)');
    expect((await api('PUT', '/api/v1/services/nosuch/active-site', { site: 'primary', reason: 'x' })).status).toBe(404);
    expect((await api('PUT', '/api/v1/services/orders/active-site', { site: 'primary' })).status).toBe(400);

    const { stdout } = await run(
      'node',
      ['bin/continuity.js', 'active-site', 'orders', 'primary', '--reason', 'failback done', '--url', daemon.url],
      {
        env: { ...process.env, CONTINUITY_TOKEN: OPS },
      },
    );
    expect(stdout.trim()).toBe('orders: served from primary (was dr)');
    expect(daemon.status().services.find((s) => s.id === 'orders')!.activeSite).toBe('primary');
    expect(await daemon.executor!.store.redis.get('{continuity}:active-site:orders')).toBe('primary');
    expect(await daemon.executor!.store.auditLog(20)).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          who: 'olga',
          action: 'active site',
          target: 'orders',
          outcome: 'recorded',
          detail: 'dr -> primary: failback done',
        }),
      ]),
    );

    // Served from the primary again, its loss opens an incident again (it would not while at the DR site).
    primary.close();
    const again = await until('a new orders incident', async () =>
      ((await api('GET', '/api/v1/incidents')).body as Incident[]).find((i) => i.service === 'orders' && i.status !== 'closed'),
    );
    expect(again.timeline[0]!.message).toMatch(/^orders: app-primary DOWN; outage started /);
  }, 30_000);
});
