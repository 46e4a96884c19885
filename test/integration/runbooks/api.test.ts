import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { writeFileSync } from 'node:fs';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../../../src/daemon.js';
import { hashToken } from '../../../src/http/auth.js';
import { writeConfig } from '../../helpers/config.js';
import { freshRedisDb } from '../../helpers/redis-db.js';

const TOKENS = {
  olga: 'tok-olga-operator-0123456789',
  ann: 'tok-ann-approver-0123456789',
  bob: 'tok-bob-approver-0123456789',
  otto: 'tok-otto-operator-approver-0123',
  vera: 'tok-vera-viewer-0123456789',
};
const ROLES: Record<keyof typeof TOKENS, string[]> = {
  olga: ['operator'],
  ann: ['approver'],
  bob: ['approver'],
  otto: ['operator', 'approver'],
  vera: ['viewer'],
};

const GATE = `name: gate
version: 1
description: Prepare, two approvals, act; undo on denial.
timeout: 5m
inputs:
  target: { type: string, required: true, pattern: '^[a-z]+$', description: what to switch }
steps:
  - id: prepare
    kind: sleep
    timeout: 5s
    idempotent: true
    sleep: { duration: 10ms }
    outputs: { slept: result.slept_seconds }
  - id: approve
    kind: approval
    timeout: 30s
    approval: { quorum: 2, message: switch traffic }
  - id: act
    kind: sleep
    timeout: 5s
    when: steps.prepare.outputs.slept > 0.0
    sleep: { duration: 10ms }
notifications:
  - url: \${env:CONTINUITY_TEST_HOOK}
    events: [approval_needed, succeeded]
rollback:
  - id: undo
    kind: sleep
    timeout: 5s
    idempotent: true
    sleep: { duration: 10ms }
`;
const EXPIRING = `name: expiring
version: 1
description: An approval nobody answers.
timeout: 5m
steps:
  - id: approve
    kind: approval
    timeout: 1s
  - id: act
    kind: sleep
    timeout: 5s
    sleep: { duration: 10ms }
`;

const ESCALATING = `name: escalating
version: 1
description: An approval that escalates instead of expiring.
timeout: 5m
steps:
  - id: approve
    kind: approval
    timeout: 1s
    approval: { on_timeout: escalate, escalate_to: '\${env:CONTINUITY_TEST_HOOK}' }
`;

class Sink extends Writable {
  raw = '';
  override _write(c: Buffer, _e: string, done: () => void) {
    this.raw += c.toString();
    done();
  }
}

describe('runbook API, approvals and tokens', () => {
  let daemon: Daemon;
  let cfg: ReturnType<typeof writeConfig>;
  const sink = new Sink();

  const hooks: Array<Record<string, string>> = [];
  let receiver: http.Server;

  beforeAll(async () => {
    // A local receiver stands in for the team's chat webhook.
    receiver = http.createServer((req, res) => {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        hooks.push(JSON.parse(body));
        res.end('ok');
      });
    });
    await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
    process.env.CONTINUITY_TEST_HOOK = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook/s3cr3t-path-token`;
    const redisUrl = await freshRedisDb(3);
    const tokens = Object.entries(TOKENS)
      .map(([name, t]) => `    - { name: ${name}, sha256: ${hashToken(t)}, roles: [${ROLES[name as keyof typeof TOKENS].join(', ')}] }`)
      .join('\n');
    cfg = writeConfig({
      config: `daemon:\n  listen: 127.0.0.1:0\n  redis_url: ${redisUrl}\n  runbooks_dir: ../runbooks\n  state_dir: ../var\nauth:\n  tokens:\n${tokens}\nsites:\n  p: { role: primary }\n  d: { role: dr }\nservices: {}\n`,
      probes: {},
    });
    for (const [name, text] of [
      ['gate', GATE],
      ['expiring', EXPIRING],
      ['escalating', ESCALATING],
    ] as const) {
      mkdirSync(join(cfg.dir, 'runbooks', name), { recursive: true });
      writeFileSync(join(cfg.dir, 'runbooks', name, 'v1.yaml'), text);
    }
    daemon = new Daemon({ configPath: cfg.configPath, port: 0, logStream: sink });
    await daemon.start();
  });
  afterAll(async () => {
    await daemon?.stop();
    receiver?.close();
  });

  const call = async (method: string, path: string, who?: keyof typeof TOKENS | 'nobody', body?: unknown) => {
    const headers: Record<string, string> = {};
    if (who === 'nobody') headers.authorization = 'Bearer not-a-real-token';
    else if (who) headers.authorization = `Bearer ${TOKENS[who]}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(daemon.url + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : undefined };
  };
  const waitFor = async (id: string, status: string, ms = 10_000) => {
    const end = Date.now() + ms;
    for (;;) {
      const v = await call('GET', `/api/v1/executions/${id}`, 'vera');
      if (v.body.execution.status === status) return v.body;
      if (Date.now() > end)
        throw new Error(`execution ${id} is ${v.body.execution.status}, not ${status}: ${JSON.stringify(v.body.timeline)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const hashOf = (name: string) => daemon.config.runbooks.get(name)!.hash;

  it('refuses calls without a valid token (401) or without the role (403), and audits both', async () => {
    expect((await call('POST', '/api/v1/runbooks/gate/executions', undefined, { inputs: { target: 'orders' } })).status).toBe(401);
    expect((await call('POST', '/api/v1/runbooks/gate/executions', 'nobody', { inputs: { target: 'orders' } })).status).toBe(401);
    const forbidden = await call('POST', '/api/v1/runbooks/gate/executions', 'vera', { inputs: { target: 'orders' } });
    expect(forbidden).toEqual({ status: 403, body: { error: 'Forbidden', message: 'vera lacks the operator role' } });
    expect((await call('GET', '/api/v1/executions')).status).toBe(401);
    expect((await call('GET', '/api/v1/audit', 'olga')).status).toBe(403);
    const audit = await call('GET', '/api/v1/audit?limit=10', 'otto');
    expect(audit.status).toBe(403);
  });

  it('answers a malformed body with a 400 that says what is wrong', async () => {
    const bad = await call('POST', '/api/v1/runbooks/gate/executions', 'olga', { inputs: { target: 'orders' }, mode: 'yolo' });
    expect(bad.status).toBe(400);
    expect(bad.body.message).toContain('body/mode');
    const unknown = await call('POST', '/api/v1/runbooks/gate/executions', 'olga', { inputs: { target: 'orders' }, force: true });
    expect(unknown.status).toBe(400);
    expect(unknown.body.message).toContain('must NOT have additional properties');
    const input = await call('POST', '/api/v1/runbooks/gate/executions', 'olga', { inputs: { target: 'Orders!' } });
    expect(input).toEqual({ status: 400, body: { error: 'Bad Request', message: 'inputs.target: "Orders!" does not match ^[a-z]+$' } });
    const missing = await call('POST', '/api/v1/runbooks/gate/executions', 'olga', {});
    expect(missing.body.message).toBe('inputs.target: is required');
    expect((await call('POST', '/api/v1/runbooks/nope/executions', 'olga', {})).status).toBe(404);
  });

  it('a dry run renders and checks every step and runs none', async () => {
    const r = await call('POST', '/api/v1/runbooks/gate/executions', 'olga', { inputs: { target: 'orders' }, mode: 'dry-run' });
    expect(r.status).toBe(201);
    const v = await waitFor(r.body.execution.id, 'succeeded');
    expect(v.steps.map((s: { step: string; status: string }) => [s.step, s.status])).toEqual([
      ['prepare', 'planned'],
      ['approve', 'planned'],
      ['act', 'planned'],
    ]);
    expect(v.execution.reason).toBe('dry run: every step rendered and checked, none run');
  });

  it('needs a quorum of two distinct approvers, never the requester, each approving the version by its hash', async () => {
    const r = await call('POST', '/api/v1/runbooks/gate/executions', 'otto', {
      inputs: { target: 'orders' },
      idempotency_key: 'incident-1',
    });
    expect(r.status).toBe(201);
    const id = r.body.execution.id;
    const again = await call('POST', '/api/v1/runbooks/gate/executions', 'otto', {
      inputs: { target: 'orders' },
      idempotency_key: 'incident-1',
    });
    expect(again.status).toBe(200);
    expect(again.body).toMatchObject({ created: false, execution: { id } });

    const waiting = await waitFor(id, 'waiting_approval');
    expect(waiting.timeline.map((e: { type: string }) => e.type)).toContain('approval_needed');
    const metrics = await (await fetch(daemon.url + '/metrics')).text();
    expect(metrics).toContain('continuity_approvals_pending 1');

    const hash = hashOf('gate');
    const self = await call('POST', `/api/v1/executions/${id}/approvals`, 'otto', { decision: 'approve', hash });
    expect(self).toEqual({
      status: 403,
      body: { error: 'Forbidden', message: 'two-person rule: otto started this execution and cannot approve or deny it' },
    });
    const operator = await call('POST', `/api/v1/executions/${id}/approvals`, 'olga', { decision: 'approve', hash });
    expect(operator.body.message).toBe('olga lacks a role that may answer this approval (approver)');
    const wrongHash = await call('POST', `/api/v1/executions/${id}/approvals`, 'ann', { decision: 'approve', hash: '0'.repeat(64) });
    expect(wrongHash.status).toBe(409);
    expect(wrongHash.body.message).toMatch(/^this approval is for sha256 000000000000…, but the execution runs gate v1 with sha256 /);

    expect(
      (await call('POST', `/api/v1/executions/${id}/approvals`, 'ann', { decision: 'approve', hash, comment: 'lag is 0' })).status,
    ).toBe(201);
    const twice = await call('POST', `/api/v1/executions/${id}/approvals`, 'ann', { decision: 'approve', hash });
    expect(twice).toEqual({ status: 409, body: { error: 'Conflict', message: 'ann has already answered this approval' } });
    await new Promise((r) => setTimeout(r, 300));
    expect((await call('GET', `/api/v1/executions/${id}`, 'vera')).body.execution.status).toBe('waiting_approval');

    expect((await call('POST', `/api/v1/executions/${id}/approvals`, 'bob', { decision: 'approve', hash })).status).toBe(201);
    const done = await waitFor(id, 'succeeded');
    expect(done.steps.find((s: { step: string }) => s.step === 'approve').outputs).toEqual({ approvers: ['ann', 'bob'] });
    expect(done.steps.find((s: { step: string }) => s.step === 'act').status).toBe('succeeded');
    expect(done.approvals.map((a: { who: string; hash: string }) => [a.who, a.hash])).toEqual([
      ['ann', hash],
      ['bob', hash],
    ]);
    // Webhooks are sent without holding up the execution: the last one may land just after it ends.
    for (let i = 0; i < 100 && hooks.filter((h) => h.execution === id).length < 2; i++) await new Promise((r) => setTimeout(r, 20));
    const mine = hooks.filter((h) => h.execution === id);
    expect(mine.map((h) => [h.step, h.severity])).toEqual([
      ['approval_needed', 'warning'],
      ['succeeded', 'info'],
    ]);
    expect(mine[0]!.message).toBe(
      `gate v1 (live) needs 2 approvals from approver: switch traffic. Review: continuity execution ${id}; approve: continuity approve ${id}`,
    );
    const after = await (await fetch(daemon.url + '/metrics')).text();
    expect(after).toContain('continuity_runbook_executions_total{runbook="gate",version="1",mode="live",outcome="succeeded"} 1');
    expect(after).toMatch(/continuity_approval_wait_seconds_count\{runbook="gate"\} [1-9]/);
    expect(after).toMatch(/continuity_runbook_step_duration_seconds_count\{kind="sleep"\} [1-9]/);

    const audit = await call('GET', '/api/v1/audit?limit=50', undefined);
    expect(audit.status).toBe(401);
  });

  it('a denial aborts the execution and runs the rollback steps', async () => {
    const r = await call('POST', '/api/v1/runbooks/gate/executions', 'olga', { inputs: { target: 'billing' } });
    const id = r.body.execution.id;
    await waitFor(id, 'waiting_approval');
    await call('POST', `/api/v1/executions/${id}/approvals`, 'ann', {
      decision: 'deny',
      hash: hashOf('gate'),
      comment: 'replica is behind',
    });
    const v = await waitFor(id, 'rolled_back');
    expect(v.execution.reason).toBe('approval approve denied by ann: replica is behind');
    expect(v.steps.map((s: { step: string; status: string }) => [s.step, s.status])).toEqual([
      ['prepare', 'succeeded'],
      ['approve', 'failed'],
      ['undo', 'succeeded'],
    ]);
  });

  it('an approval nobody answers expires and aborts', async () => {
    const r = await call('POST', '/api/v1/runbooks/expiring/executions', 'olga', {});
    const v = await waitFor(r.body.execution.id, 'aborted', 15_000);
    expect(v.execution.reason).toBe('approval approve expired');
    expect(v.steps.map((s: { step: string; status: string }) => [s.step, s.status])).toEqual([['approve', 'failed']]);
  });

  it('an approval set to escalate tells the escalation webhook and keeps waiting', async () => {
    const r = await call('POST', '/api/v1/runbooks/escalating/executions', 'olga', {});
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    const id = r.body.execution.id;
    const end = Date.now() + 10_000;
    while (!hooks.some((h) => h.execution === id && h.step === 'approval_escalated') && Date.now() < end)
      await new Promise((res) => setTimeout(res, 50));
    const hook = hooks.find((h) => h.execution === id && h.step === 'approval_escalated')!;
    expect(hook.severity).toBe('critical');
    expect(hook.message).toMatch(
      new RegExp(
        `^escalating v1: approval approve of ${id} has no quorum \\(0 of 1\\) after 1s; escalated. Approve: continuity approve ${id}$`,
      ),
    );
    expect((await call('GET', `/api/v1/executions/${id}`, 'vera')).body.execution.status).toBe('waiting_approval');
    await call('POST', `/api/v1/executions/${id}/approvals`, 'ann', { decision: 'approve', hash: hashOf('escalating') });
    const v = await waitFor(id, 'succeeded');
    expect(v.timeline.map((e: { type: string }) => e.type)).toContain('approval_escalated');
  });

  it('refuses to approve a version whose file has changed since the execution started', async () => {
    const r = await call('POST', '/api/v1/runbooks/gate/executions', 'olga', { inputs: { target: 'stock' } });
    const id = r.body.execution.id;
    await waitFor(id, 'waiting_approval');
    const hash = hashOf('gate');
    writeFileSync(join(cfg.dir, 'runbooks/gate/v1.yaml'), GATE.replace('quorum: 2', 'quorum: 1'));
    const res = await call('POST', `/api/v1/executions/${id}/approvals`, 'ann', { decision: 'approve', hash });
    expect(res.status).toBe(409);
    expect(res.body.message).toMatch(
      /runbooks\/gate\/v1\.yaml has changed since this execution started \(sha256 [0-9a-f]{12}…, now [0-9a-f]{12}…\): a changed version cannot be approved$/,
    );
    // And the daemon refuses to load the changed version at all.
    expect(await daemon.reload()).toBe(false);
    expect(daemon.status().config.lastReload.errors?.[0]).toMatch(
      /gate version 1 was first loaded with sha256 [0-9a-f]{12}…, and this file's content \(sha256 [0-9a-f]{12}…\) differs: a version is immutable, save the change as a new version$/,
    );
    writeFileSync(join(cfg.dir, 'runbooks/gate/v1.yaml'), GATE);
    await call('POST', `/api/v1/executions/${id}/abort`, 'olga', { comment: 'test done' });
    await waitFor(id, 'aborted');
  });

  it('an admin reads the audit: who did what, and the refusals', async () => {
    const ids = { admin: 'tok-adam-admin-0123456789' };
    cfg.write(
      'config/continuity.yaml',
      (await import('node:fs'))
        .readFileSync(cfg.configPath, 'utf8')
        .replace('    - { name: olga', `    - { name: adam, sha256: ${hashToken(ids.admin)}, roles: [admin] }\n    - { name: olga`),
    );
    expect(await daemon.reload()).toBe(true);
    const res = await fetch(daemon.url + '/api/v1/audit?limit=200', { headers: { authorization: `Bearer ${ids.admin}` } });
    const audit = (await res.json()) as Array<Record<string, string>>;
    const seen = audit.map((a) => `${a.who} ${a.action} ${a.outcome}`);
    expect(seen).toContain('anonymous POST /api/v1/runbooks/:name/executions unauthenticated');
    expect(seen).toContain('vera POST /api/v1/runbooks/:name/executions forbidden');
    expect(seen).toContain('otto approve refused');
    expect(seen).toContain('ann approve recorded');
    expect(seen).toContain('ann deny recorded');
    expect(seen).toContain('olga abort recorded');
    expect(sink.raw).not.toContain(TOKENS.ann);
    expect(sink.raw).not.toContain('s3cr3t-path-token');
  });
});
