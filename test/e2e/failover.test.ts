import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../../src/daemon.js';
import { hashToken } from '../../src/http/auth.js';
import type { Incident } from '../../src/incidents/manager.js';
import type { IncidentReport } from '../../src/incidents/report.js';
import type { ExecutionView } from '../../src/runbooks/executor.js';
import { writeConfig } from '../helpers/config.js';
import { labFailoverPolicy, labProbes } from '../lab/failover-policy.js';
import { haproxyCommand, haproxyConfig, parseServersState, startLab, type Lab } from '../lab/lab.js';

/**
 * End to end on the lab: a PostgreSQL primary and a synchronous streaming replica behind HAProxy,
 * an application per site, OpenSSH for fencing, and the real daemon with the shipped
 * failover-postgres runbook.
 */
const APPROVER = 'tok-e2e-approver-0123456789';
const VIEWER = 'tok-e2e-viewer-0123456789';
const OPERATOR = 'tok-e2e-operator-0123456789';

class Sink extends Writable {
  lines: Array<Record<string, unknown>> = [];
  override _write(c: Buffer, _e: string, done: () => void) {
    for (const l of c.toString().split('\n').filter(Boolean)) this.lines.push(JSON.parse(l));
    done();
  }
}

/** A TCP proxy on the monitor's path to the primary: stopping it cuts only the monitor's view. */
async function monitorPath(target: number): Promise<{ port: number; cut(): void; restore(): Promise<void> }> {
  let server: net.Server;
  const sockets = new Set<net.Socket>();
  let port = 0;
  const listen = () =>
    new Promise<void>((r) => {
      server = net.createServer((c) => {
        const up = net.connect(target, '127.0.0.1');
        for (const s of [c, up]) {
          sockets.add(s);
          s.on('error', () => {});
          s.on('close', () => sockets.delete(s));
        }
        c.pipe(up).pipe(c);
      });
      server.listen(port, '127.0.0.1', () => {
        port = (server.address() as net.AddressInfo).port;
        r();
      });
    });
  await listen();
  return {
    port,
    cut() {
      server.close();
      for (const s of sockets) s.destroy();
    },
    restore: listen,
  };
}

async function until<T>(what: string, fn: () => Promise<T | undefined | false>, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function startDaemon(
  lab: Lab,
  opts: { primaryPort: number; redisDb: number; rpo?: string; mode?: 'approval' | 'automatic'; drillInputs?: string },
) {
  const cfg = writeConfig({
    config: `daemon:
  listen: 127.0.0.1:0
  redis_url: redis://127.0.0.1:6379/${opts.redisDb}
  runbooks_dir: ../runbooks
  state_dir: ../var
  runbook_lock_duration: 2s
auth:
  tokens:
    - { name: ann, sha256: ${hashToken(APPROVER)}, roles: [approver] }
    - { name: vera, sha256: ${hashToken(VIEWER)}, roles: [viewer] }
    - { name: olga, sha256: ${hashToken(OPERATOR)}, roles: [operator] }
sites:
  primary: { role: primary }
  dr: { role: dr }
services:
  orders:
    rto: 1h
    rpo: ${opts.rpo ?? '30s'}
${labFailoverPolicy(lab, opts.mode ?? 'approval')}${opts.drillInputs ? `      drill_inputs: ${opts.drillInputs}\n` : ''}`,
    probes: {
      'databases.yaml': labProbes(lab, opts.primaryPort),
    },
  });
  mkdirSync(join(cfg.dir, 'runbooks'));
  cpSync('runbooks/failover-postgres', join(cfg.dir, 'runbooks/failover-postgres'), { recursive: true });
  process.env.CONTINUITY_DB_PASSWORD = '';
  const sink = new Sink();
  const daemon = new Daemon({ configPath: cfg.configPath, port: 0, logStream: sink, firstRun: 'now' });
  await daemon.start();
  const api = async (method: string, path: string, body?: unknown, token = VIEWER) => {
    const res = await fetch(daemon.url + path, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    return res.status === 204 ? undefined : ((await res.json()) as unknown);
  };
  return { daemon, sink, api };
}

describe('failover on the lab', () => {
  describe('1 and 5: primary killed → incident → approval → failover → writes on the promoted replica; the old primary stays fenced', () => {
    let lab: Lab;
    let d: Awaited<ReturnType<typeof startDaemon>>;

    beforeAll(async () => {
      lab = await startLab({ redisDb: 8 });
      d = await startDaemon(lab, { primaryPort: lab.primary.port, redisDb: 8 });
    }, 60_000);
    afterAll(async () => {
      await d?.daemon.stop();
      await lab?.stop();
    });

    it('fails over with one approval and measures RTO and RPO', async () => {
      await until('primary and replica UP', async () => d.daemon.status().probes.filter((p) => p.state === 'UP').length >= 2);
      const before = await lab.write(20, { note: 'before' });
      expect(before.errors).toEqual([]);

      await lab.killPrimary();
      const incident = await until('a failover decision', async () => {
        const list = (await d.api('GET', '/api/v1/incidents')) as Incident[];
        return list.find((i) => i.executionId);
      });
      expect(incident.decision!.action).toBe('failover');
      expect(incident.decision!.sentence).toMatch(
        /^orders: orders-pg-primary DOWN 3\/3 from 2 vantage points; replica orders-pg-replica lost its primary( [\d.]+ s ago)?, lag \d+ B; awaiting approval for failover-postgres v1$/,
      );
      expect(d.sink.lines.filter((l) => l.msg === incident.decision!.sentence)).toHaveLength(1);

      const exec = await until('approval waiting', async () => {
        const v = (await d.api('GET', `/api/v1/executions/${incident.executionId}`)) as ExecutionView;
        return v.execution.status === 'waiting_approval' ? v : undefined;
      });
      const waiting = exec.steps.find((s) => s.step === 'approve')!;
      expect(waiting.status).toBe('waiting');
      expect(exec.timeline.find((e) => e.type === 'approval_needed')!.message).toContain(
        `Fail over to 127.0.0.1:${lab.replica.port}; data at risk: none`,
      );
      // Nothing has been touched before the approval: HAProxy still sends traffic to the (dead) primary.
      expect((await lab.pgServersBehindHaproxy()).filter((s) => s.inTraffic).map((s) => s.name)).toEqual(['primary']);

      const approved = (await d.api(
        'POST',
        `/api/v1/executions/${incident.executionId}/approvals`,
        { decision: 'approve', hash: exec.execution.hash, comment: 'replica in sync' },
        APPROVER,
      )) as { approval: { who: string } };
      expect(approved.approval.who).toBe('ann');

      const closed = await until(
        'incident closed',
        async () => {
          const i = (await d.api('GET', `/api/v1/incidents/${incident.id}`)) as Incident;
          return i.status === 'closed' ? i : undefined;
        },
        60_000,
      );
      expect(closed.closeReason).toBe('verified: orders-web-public UP at the dr site');
      // One timeline: probe evidence, the decision, the approval and each step of the runbook, the verification.
      const types = closed.timeline.map((e) => e.type);
      for (const t of [
        'opened',
        'decision',
        'failover_started',
        'runbook.approval_needed',
        'runbook.approved',
        'runbook.step_succeeded',
        'failover_done',
        'closed',
      ]) {
        expect(types, t).toContain(t);
      }
      expect(closed.timeline.map((e) => e.at)).toEqual([...closed.timeline.map((e) => e.at)].sort((a, b) => a - b));
      const done = (await d.api('GET', `/api/v1/executions/${incident.executionId}`)) as ExecutionView;
      expect(done.steps.map((s) => `${s.step}:${s.status}`)).toEqual([
        'check_replica:succeeded',
        'approve:succeeded',
        'check_lag:skipped',
        'fence_traffic:succeeded',
        'stop_old_primary:failed',
        'confirm_fenced:succeeded',
        'promote:succeeded',
        'switch_traffic:succeeded',
        'verify_write:succeeded',
      ]);
      // The old primary was dead: stopping it failed, and the runbook went on (it is out of traffic).
      expect(done.steps.find((s) => s.step === 'stop_old_primary')!.continued).toBe(true);

      // Writes succeed through HAProxy on the promoted replica, and nothing acknowledged was lost.
      const after = await lab.write(10, { note: 'after' });
      expect(after.errors).toEqual([]);
      const onReplica = await lab.orderIds('replica');
      expect(before.ids.filter((id) => !onReplica.includes(id))).toEqual([]);
      expect(await lab.writablePrimariesBehindHaproxy()).toBe(1);

      // RTO and RPO.
      expect(closed.rto!.total).toBeGreaterThan(0);
      expect(closed.rto!.total).toBeCloseTo(
        closed.rto!.detection + closed.rto!.decision + closed.rto!.approval_wait + closed.rto!.runbook + closed.rto!.verification,
        0,
      );
      expect(closed.rpo).toMatchObject({ bytes: 0, seconds: 0 });
      const metrics = await (await fetch(d.daemon.url + '/metrics')).text();
      expect(metrics).toMatch(/continuity_rto_achieved_seconds\{service="orders",phase="total"\} [\d.]+/);
      expect(metrics).toContain('continuity_rpo_achieved_bytes{service="orders"} 0');
      expect(metrics).toContain('continuity_failovers_total{service="orders",outcome="succeeded"} 1');
      expect(metrics).toContain('continuity_incidents_open 0');
      expect(metrics).toContain('continuity_service_up{service="orders"} 1');
    }, 120_000);

    it('5: the old primary comes back and stays fenced: never two writable primaries behind HAProxy', async () => {
      await lab.restartPrimary();
      await until(
        'old primary probed UP again',
        async () => d.daemon.status().probes.find((p) => p.id === 'orders-pg-primary')?.state === 'UP',
      );
      for (let i = 0; i < 5; i++) {
        expect(await lab.writablePrimariesBehindHaproxy()).toBe(1);
        await new Promise((r) => setTimeout(r, 300));
      }
      const list = (await d.api('GET', '/api/v1/incidents')) as Incident[];
      expect(list.filter((i) => i.status !== 'closed')).toEqual([]);
      expect(list).toHaveLength(1);
    }, 60_000);
  });

  describe('2 and 3: not fooled', () => {
    let lab: Lab;
    let d: Awaited<ReturnType<typeof startDaemon>>;
    let path: Awaited<ReturnType<typeof monitorPath>>;

    beforeAll(async () => {
      lab = await startLab({ redisDb: 9 });
      path = await monitorPath(lab.primary.port);
      d = await startDaemon(lab, { primaryPort: path.port, redisDb: 9 });
      await until('primary and replica UP', async () => d.daemon.status().probes.filter((p) => p.state === 'UP').length >= 2);
    }, 60_000);
    afterAll(async () => {
      await d?.daemon.stop();
      await lab?.stop();
    });

    it('3: a flapping primary (down and up faster than the thresholds) opens nothing', async () => {
      path.cut();
      await new Promise((r) => setTimeout(r, 700));
      await path.restore();
      await new Promise((r) => setTimeout(r, 2000));
      expect(d.daemon.status().probes.find((p) => p.id === 'orders-pg-primary')!.state).toBe('UP');
      expect(await d.api('GET', '/api/v1/incidents')).toEqual([]);
    }, 30_000);

    it('2: only the monitor path to the primary is cut while the replica still streams: no failover', async () => {
      path.cut();
      const incident = await until('a decision', async () =>
        ((await d.api('GET', '/api/v1/incidents')) as Incident[]).find((i) => i.decision),
      );
      expect(incident.decision!.action).toBe('none');
      expect(incident.decision!.sentence).toMatch(
        /^orders: monitor path degraded: orders-pg-primary DOWN 3\/3 from this monitor, but replica orders-pg-replica still streams from its primary \(last message [\d.]+ s ago\): no failover$/,
      );
      await new Promise((r) => setTimeout(r, 2000));
      const again = (await d.api('GET', `/api/v1/incidents/${incident.id}`)) as Incident;
      expect(again.executionId).toBeUndefined();
      expect((await d.api('GET', '/api/v1/executions')) as unknown[]).toEqual([]);
      expect((await lab.write(3)).errors).toEqual([]);
      // When the path comes back, the incident closes without a failover.
      await path.restore();
      const closed = await until('closed', async () => {
        const i = (await d.api('GET', `/api/v1/incidents/${incident.id}`)) as Incident;
        return i.status === 'closed' ? i : undefined;
      });
      expect(closed.closeReason).toBe('the primary recovered before any failover');
    }, 60_000);
  });

  describe('4: replica lag over the RPO target', () => {
    let lab: Lab;
    let d: Awaited<ReturnType<typeof startDaemon>>;

    beforeAll(async () => {
      lab = await startLab({ redisDb: 10, synchronous: false });
      d = await startDaemon(lab, { primaryPort: lab.primary.port, redisDb: 10, rpo: '1s', mode: 'automatic' });
      await until('primary and replica UP', async () => d.daemon.status().probes.filter((p) => p.state === 'UP').length >= 2);
    }, 60_000);
    afterAll(async () => {
      await d?.daemon.stop();
      await lab?.stop();
    });

    it('even in automatic mode, the failover waits for an approval that accepts the loss', async () => {
      // One replayed transaction first: the replica's lag in seconds is measured from the last one.
      await lab.write(1, { note: 'replayed' });
      await until('replayed', async () => (await lab.orderIds('replica')).length > 0);
      await lab.replica.query('SELECT pg_wal_replay_pause()');
      await lab.write(5, { note: 'not yet replayed' });
      await until('replica lag over 1 s', async () => {
        const o = d.daemon.status().probes.find((p) => p.id === 'orders-pg-replica')?.last?.observed;
        return typeof o?.lag_seconds === 'number' && o.lag_seconds > 1.5;
      });
      await lab.killPrimary();
      const incident = await until('a failover decision', async () =>
        ((await d.api('GET', '/api/v1/incidents')) as Incident[]).find((i) => i.executionId),
      );
      expect(incident.decision!.sentence).toMatch(
        /; RPO guard: lag [\d.]+ s is over the RPO 1s, accept up to \d+ s of data loss; awaiting approval for failover-postgres v1$/,
      );
      const exec = await until('approval waiting', async () => {
        const v = (await d.api('GET', `/api/v1/executions/${incident.executionId}`)) as ExecutionView;
        return v.execution.status === 'waiting_approval' ? v : undefined;
      });
      expect(exec.execution.inputs.require_approval).toBe(true);
      expect(exec.timeline.find((e) => e.type === 'approval_needed')!.message).toMatch(/data at risk: up to \d+ s of data \(lag \d+ B\)/);
      // Nobody approves: nothing is fenced or promoted meanwhile.
      await new Promise((r) => setTimeout(r, 1000));
      expect(exec.steps.map((s) => s.step)).toEqual(['check_replica', 'approve']);
      expect(await lab.replica.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')).toEqual([{ r: true }]);
    }, 60_000);

    it('the runbook itself refuses to promote a replica behind its limit when nobody accepted the loss', async () => {
      // Run by hand, without the decision: no approval asked, no data at risk stated.
      const incidentExec = ((await d.api('GET', '/api/v1/incidents')) as Incident[])[0]!.executionId!;
      await d.api('POST', `/api/v1/executions/${incidentExec}/abort`, { comment: 'test' }, OPERATOR);
      const inputs = (await d.api('GET', `/api/v1/executions/${incidentExec}`)) as ExecutionView;
      const started = (await d.api(
        'POST',
        '/api/v1/runbooks/failover-postgres/executions',
        {
          inputs: { ...inputs.execution.inputs, require_approval: false, data_at_risk: 'none', max_lag_bytes: 1 },
          idempotency_key: 'by-hand',
        },
        OPERATOR,
      )) as { execution: { id: string } };
      const done = await until('finished', async () => {
        const v = (await d.api('GET', `/api/v1/executions/${started.execution.id}`)) as ExecutionView;
        return ['failed', 'aborted', 'succeeded'].includes(v.execution.status) ? v : undefined;
      });
      expect(done.execution.status).toBe('failed');
      expect(done.execution.reason).toMatch(
        /^step check_lag failed: sh exited with code 1, expected 0: replica lag \d+ B is over the limit of 1 B and no data loss was accepted$/,
      );
      expect(done.steps.map((s) => s.step)).toEqual(['check_replica', 'approve', 'check_lag']);
      expect(await lab.replica.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')).toEqual([{ r: true }]);
    }, 60_000);
  });

  describe('6: a drill: the failover runbook in drill mode against a staging switch; production untouched', () => {
    let lab: Lab;
    let d: Awaited<ReturnType<typeof startDaemon>>;
    let staging: { child: ChildProcess; dir: string; runtime: number };
    const freePort = () =>
      new Promise<number>((r) => {
        const srv = net.createServer().listen(0, '127.0.0.1', () => {
          const port = (srv.address() as net.AddressInfo).port;
          srv.close(() => r(port));
        });
      });

    beforeAll(async () => {
      // Describes run one after the other: this one takes db 8 again once the first has finished.
      lab = await startLab({ redisDb: 8 });
      // The staging traffic switch a drill fences instead of production's: an HAProxy in front of the same servers.
      const dir = mkdtempSync(join(tmpdir(), 'continuity-drill-haproxy-'));
      const ports = { pg: await freePort(), web: await freePort(), runtime: await freePort() };
      writeFileSync(
        join(dir, 'haproxy.cfg'),
        haproxyConfig(ports, { primary: lab.primary.port, dr: lab.replica.port }, { primary: lab.apps.primary.port, dr: lab.apps.dr.port }),
      );
      const child = spawn('haproxy', ['-db', '-f', join(dir, 'haproxy.cfg')], { stdio: 'ignore' });
      staging = { child, dir, runtime: ports.runtime };
      await until('staging haproxy', async () => (await haproxyCommand(ports.runtime, 'show info', 1000)).includes('Pid:'), 10_000);
      d = await startDaemon(lab, {
        primaryPort: lab.primary.port,
        redisDb: 8,
        drillInputs: `{ haproxy: '127.0.0.1:${ports.runtime}' }`,
      });
    }, 60_000);
    afterAll(async () => {
      await d?.daemon.stop();
      await lab?.stop();
      if (staging) {
        staging.child.kill('SIGTERM');
        rmSync(staging.dir, { recursive: true, force: true });
      }
    });

    it('runs, is approved, reports its RTO, sets the drill metric, and leaves the primary serving and the active site alone', async () => {
      await until('primary and replica UP', async () => d.daemon.status().probes.filter((p) => p.state === 'UP').length >= 2);
      const metrics = () => fetch(d.daemon.url + '/metrics').then((r) => r.text());
      expect(await metrics()).toContain('continuity_drill_last_success_timestamp_seconds{service="orders"} 0');

      const cli = (...args: string[]) =>
        promisify(execFile)('node', ['bin/continuity.js', ...args, '--url', d.daemon.url], {
          env: { ...process.env, CONTINUITY_TOKEN: OPERATOR },
        });
      const started = await cli('drill', 'orders', '--no-wait');
      const [, drillId, executionId] = /^drill (\S+) started: execution (\S+)\n$/.exec(started.stdout) ?? [];
      expect(drillId).toMatch(/^orders-drill-/);
      // One drill at a time.
      const again = (await d.api('POST', '/api/v1/services/orders/drills', {}, OPERATOR)) as { message: string };
      expect(again.message).toBe(`a drill of orders is running: ${drillId}`);

      const exec = await until('approval waiting', async () => {
        const v = (await d.api('GET', `/api/v1/executions/${executionId}`)) as ExecutionView;
        return v.execution.status === 'waiting_approval' ? v : undefined;
      });
      expect(exec.execution.mode).toBe('drill');
      expect(exec.execution.inputs.haproxy).toBe(`127.0.0.1:${staging.runtime}`);
      await d.api('POST', `/api/v1/executions/${executionId}/approvals`, { decision: 'approve', hash: exec.execution.hash }, APPROVER);

      const drill = await until('drill closed', async () => {
        const i = (await d.api('GET', `/api/v1/incidents/${drillId}`)) as Incident;
        return i.status !== 'failing_over' ? i : undefined;
      });
      expect(drill.kind).toBe('drill');
      expect(drill.status).toBe('closed');
      expect(drill.closeReason).toBe(`drill succeeded: execution ${executionId}; the active site stays primary`);
      expect(drill.rto!.total).toBeGreaterThan(0);
      expect(drill.rto!.runbook).toBeGreaterThan(0);
      expect(drill.rto!.detection).toBe(0);
      expect(drill.rto!.total).toBeCloseTo(drill.rto!.decision + drill.rto!.approval_wait + drill.rto!.runbook, 0);
      expect(drill.timeline.map((e) => e.type)).toEqual(
        expect.arrayContaining(['opened', 'decision', 'drill_started', 'runbook.approved', 'closed']),
      );
      const done = (await d.api('GET', `/api/v1/executions/${executionId}`)) as ExecutionView;
      expect(done.steps.map((s) => `${s.step}:${s.status}`)).toEqual([
        'check_replica:succeeded',
        'approve:succeeded',
        'check_lag:skipped',
        'fence_traffic:succeeded',
        'stop_old_primary:skipped',
        'confirm_fenced:succeeded',
        'promote:skipped',
        'switch_traffic:skipped',
        'verify_write:succeeded',
      ]);

      // Production: the primary still serves behind HAProxy, the replica is still a replica, writes go on.
      expect((await lab.pgServersBehindHaproxy()).filter((s) => s.inTraffic).map((s) => s.name)).toEqual(['primary']);
      expect(await lab.writablePrimariesBehindHaproxy()).toBe(1);
      expect(await lab.replica.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')).toEqual([{ r: true }]);
      expect((await lab.write(3)).errors).toEqual([]);
      // The staging switch took the fencing.
      const stagingPg = parseServersState(await haproxyCommand(staging.runtime, 'show servers state pg'));
      expect(stagingPg.find((s) => s.name === 'primary')!.inTraffic).toBe(false);
      expect(d.daemon.status().services.find((s) => s.id === 'orders')!.activeSite).toBe('primary');
      // Not a failover: no cool-down started, nothing counted, no incident open.
      expect(await d.daemon.executor!.store.redis.get('{continuity}:last-failover:orders')).toBeNull();
      const m = await metrics();
      expect(m).not.toMatch(/continuity_failovers_total\{service="orders"/);
      expect(m).toContain('continuity_incidents_open 0');
      const at = Number(/continuity_drill_last_success_timestamp_seconds\{service="orders"\} ([\d.e+]+)/.exec(m)?.[1]);
      expect(at * 1000).toBeCloseTo(drill.executionFinishedAt!, -3);
      expect(((await d.api('GET', '/api/v1/incidents')) as Incident[]).map((i) => i.id)).toEqual([drillId]);

      // The drill report.
      const report = (await d.api('GET', `/api/v1/incidents/${drillId}/report`)) as IncidentReport;
      expect(report).toMatchObject({ kind: 'drill', requestedBy: 'olga', rto: { targetSeconds: 3600, met: true } });
      expect(report.execution!.approvals.map((a) => `${a.who}:${a.decision}:${a.sha256}`)).toEqual([`ann:approve:${exec.execution.hash}`]);
      const md = (await cli('report', 'drill', drillId!)).stdout;
      expect(md).toMatch(new RegExp(`^# Drill report: ${drillId}\\n`));
      expect(md).toMatch(/^\| RTO \| 3600 s \| [\d.]+ s \| met \|$/m);
      expect(md).toContain('| promote | sql | skipped |');
      expect(md).toContain('## Improvement measures');

      // A daemon started later sets the gauge from the stored drills.
      const later = new Daemon({ configPath: d.daemon.config.file, port: 0, logStream: new Sink(), firstRun: 'now' });
      await later.start();
      try {
        const m2 = await (await fetch(later.url + '/metrics')).text();
        expect(m2).toContain(`continuity_drill_last_success_timestamp_seconds{service="orders"} ${at}`);
      } finally {
        await later.stop();
      }
    }, 120_000);
  });
});
