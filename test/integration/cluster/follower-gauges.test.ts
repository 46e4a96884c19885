import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashToken } from '../../../src/http/auth.js';
import { daemonCluster, type DaemonCluster, type DaemonInstance } from '../../helpers/daemons.js';
import { closedPort } from '../../helpers/net.js';
import { startRedisServer, type TestRedisServer } from '../../helpers/redis-server.js';
import { until } from '../../helpers/until.js';

/**
 * Prometheus scrapes every instance, and alerts such as "approval waiting" or "no drill for 180
 * days" read whichever answers. An instance that does not lead shows on its /metrics what the
 * leader decided (open incidents, approvals pending, the last drill), and every instance shows a
 * restore test's result whichever instance ran it, within a few seconds, not what it read at its start.
 */
const OPERATOR = 'tok-gauges-operator-0123456789';
const APPROVER = 'tok-gauges-approver-0123456789';
/** Within this a follower's gauges follow the leader's (read every 5 s). */
const FOLLOW_MS = 15_000;

const RUNBOOK = `name: gated
version: 1
description: An approval, then a short sleep; stands in for a failover.
timeout: 5m
inputs:
  require_approval: { type: boolean, default: true }
steps:
  - id: approve
    kind: approval
    timeout: 5m
    when: inputs.require_approval
  - id: switch
    kind: sleep
    timeout: 5s
    idempotent: true
    sleep: { duration: 50ms }
`;

async function listen(port = 0): Promise<net.Server> {
  const s = net.createServer((c) => c.on('error', () => {}).end());
  await new Promise<void>((r) => s.listen(port, '127.0.0.1', r));
  return s;
}
const portOf = (s: net.Server) => (s.address() as net.AddressInfo).port;
const close = (s: net.Server) => new Promise<void>((r) => s.close(() => r()));

/** A labelled sample's value from an instance's /metrics, or undefined. */
async function sample(inst: DaemonInstance, name: string, labels = ''): Promise<number | undefined> {
  const text = await (await fetch(`${inst.url}/metrics`, { signal: AbortSignal.timeout(3000) })).text();
  const line = text.split('\n').find((l) => l.startsWith(labels ? `${name}{${labels}}` : `${name} `));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

describe('the gauges of an instance that does not lead', () => {
  let redis: TestRedisServer;
  let cluster: DaemonCluster;
  let primary: net.Server;
  let primaryPort: number;
  let dr: net.Server;
  let leader: DaemonInstance;
  let follower: DaemonInstance;
  let scratch: string;

  beforeAll(async () => {
    redis = await startRedisServer();
    primary = await listen();
    primaryPort = portOf(primary);
    dr = await listen();
    // A restore test whose S3 never answers: it fails, quickly, with a report like any other.
    const s3 = `http://127.0.0.1:${await closedPort()}`;
    scratch = mkdtempSync(join(tmpdir(), 'continuity-gauges-'));
    cluster = await daemonCluster({
      token: OPERATOR,
      config: (ctx) => `daemon:
  listen: 127.0.0.1:${ctx.port}
  redis_url: ${redis.url}
  runbooks_dir: ../runbooks
  state_dir: ../var
  shutdown_grace: 1s
  instance_id: ${ctx.instanceId}
  leader_lease: 3s
auth:
  tokens:
    - { name: olga, sha256: ${hashToken(OPERATOR)}, roles: [operator] }
    - { name: ann, sha256: ${hashToken(APPROVER)}, roles: [approver] }
sites:
  primary: { role: primary }
  dr: { role: dr }
services:
  orders:
    rpo: 1h
    failover:
      runbook: gated
      version: 1
      mode: approval
      primary_down: [app-primary]
      replica: db-replica
      verify: app-dr
      cooldown: 1m
      drill_inputs: { require_approval: false }
  files: { rto: 1h }
restore_tests:
  files-backups:
    runbook: restore-test-files
    scratch: { folder: ${scratch} }
`,
      probes: {
        'probes.yaml': `probes:
  - id: app-primary
    kind: tcp
    site: primary
    services: [orders]
    interval: 300ms
    timeout: 250ms
    failure_threshold: 2
    tcp: { host: 127.0.0.1, port: ${primaryPort} }
  - id: db-replica
    kind: postgres
    site: dr
    services: [orders]
    interval: 1s
    timeout: 900ms
    postgres: { host: 127.0.0.1, user: postgres, database: postgres }
  - id: app-dr
    kind: tcp
    site: dr
    interval: 300ms
    timeout: 250ms
    tcp: { host: 127.0.0.1, port: ${portOf(dr)} }
  - id: files-backups
    kind: s3-backup
    site: primary
    services: [files]
    interval: 1h
    timeout: 5s
    s3-backup: { endpoint: '${s3}', bucket: backups, prefix: files/, force_path_style: true, max_age: 1d, access_key_id: none, secret_access_key: none }
`,
      },
      prepare: (ctx) => {
        mkdirSync(join(ctx.dir, 'runbooks', 'gated'), { recursive: true });
        writeFileSync(join(ctx.dir, 'runbooks', 'gated', 'v1.yaml'), RUNBOOK);
        cpSync(join('runbooks', 'restore-test-files'), join(ctx.dir, 'runbooks', 'restore-test-files'), { recursive: true });
      },
    });
    await cluster.startAll();
    leader = await cluster.leader();
    follower = cluster.instances.find((i) => i !== leader)!;
  }, 60_000);

  afterAll(async () => {
    await cluster?.close();
    for (const s of [primary, dr]) if (s?.listening) await close(s);
    await redis?.stop();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  const followerShows = (what: string, name: string, labels: string, ok: (v: number | undefined) => boolean) =>
    until(
      `the follower's ${what}`,
      async () => {
        const v = await sample(follower, name, labels);
        return ok(v) ? (v ?? null) : undefined;
      },
      FOLLOW_MS,
      { detail: () => follower.tail(20) },
    );

  /** Approves an execution once it waits for approval (ann; olga started it: two people). */
  const approve = async (id: string) => {
    const hash = await until('the execution waiting for approval', async () => {
      const v = await leader.api<{ execution: { hash: string; status: string } }>('GET', `/api/v1/executions/${id}`);
      return v.execution.status === 'waiting_approval' ? v.execution.hash : undefined;
    });
    await leader.api('POST', `/api/v1/executions/${id}/approvals`, { decision: 'approve', hash }, APPROVER);
  };

  it('an incident the leader opens and closes: the follower counts it open, then closed', async () => {
    expect(await sample(follower, 'continuity_incidents_open')).toBe(0);
    // In maintenance an incident opens and nothing runs; it closes when the primary answers again.
    await leader.api('POST', '/api/v1/services/orders/maintenance', { duration: '10m', reason: 'gauge test' });
    await close(primary);
    await until('the incident open on the leader', async () =>
      (await sample(leader, 'continuity_incidents_open')) === 1 ? true : undefined,
    );
    const opened = Date.now();
    await followerShows('open incidents', 'continuity_incidents_open', '', (v) => v === 1);
    const seen = Date.now() - opened;
    primary = await listen(primaryPort);
    await until('the incident closed on the leader', async () =>
      (await sample(leader, 'continuity_incidents_open')) === 0 ? true : undefined,
    );
    await followerShows('open incidents', 'continuity_incidents_open', '', (v) => v === 0);
    await leader.api('DELETE', '/api/v1/services/orders/maintenance');
    console.log(`follower-gauges: the follower counted the incident open ${seen} ms after the leader`);
  }, 60_000);

  it('an approval waiting and given: the follower counts it pending, then not', async () => {
    // Started through the follower (any instance enqueues); the leader runs it.
    const { execution } = await follower.api<{ execution: { id: string } }>('POST', '/api/v1/runbooks/gated/executions', {
      idempotency_key: 'gauges',
    });
    await followerShows('approvals pending', 'continuity_approvals_pending', '', (v) => v === 1);
    await approve(execution.id);
    await until('the execution done', async () => {
      const v = await leader.api<{ execution: { status: string } }>('GET', `/api/v1/executions/${execution.id}`);
      return v.execution.status === 'succeeded' ? true : undefined;
    });
    await followerShows('approvals pending', 'continuity_approvals_pending', '', (v) => v === 0);
  }, 60_000);

  it('a drill the leader runs: the follower shows when the last one succeeded', async () => {
    expect(await sample(follower, 'continuity_drill_last_success_timestamp_seconds', 'service="orders"')).toBe(0);
    const started = Date.now() / 1000;
    // In approval mode a drill asks for approval as a failover would.
    const drill = await leader.api<{ execution: { id: string } }>('POST', '/api/v1/services/orders/drills', {});
    await approve(drill.execution.id);
    const at = await followerShows(
      'last drill',
      'continuity_drill_last_success_timestamp_seconds',
      'service="orders"',
      (v) => (v ?? 0) > 0,
    );
    expect(at).toBeGreaterThanOrEqual(Math.floor(started));
    expect(at).toBe(await sample(leader, 'continuity_drill_last_success_timestamp_seconds', 'service="orders"'));
  }, 60_000);

  it('a restore test, whichever instance ran it: every instance shows its result', async () => {
    const { execution } = await follower.api<{ execution: { id: string } }>('POST', '/api/v1/restore-tests/files-backups/runs', {});
    const report = await until(
      'the report',
      async () => {
        const r = await follower.request<{ result: string; finishedAt: string }>(
          'GET',
          `/api/v1/restore-tests/files-backups/reports/${execution.id}`,
        );
        return r.status === 200 ? r.body : undefined;
      },
      60_000,
    );
    expect(report.result).toBe('fail');
    for (const inst of [leader, follower]) {
      await until(
        `${inst.name}'s restore-test gauges`,
        async () => ((await sample(inst, 'continuity_restore_test_success', 'backup_set="files-backups"')) === 0 ? true : undefined),
        FOLLOW_MS,
      );
      expect(await sample(inst, 'continuity_restore_test_last_run_timestamp_seconds', 'backup_set="files-backups"')).toBe(
        Date.parse(report.finishedAt) / 1000,
      );
    }
  }, 90_000);
});
