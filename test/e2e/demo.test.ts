import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

/**
 * The README's first command: `npm start` runs scripts/demo.ts after the set-up. Here it runs as a
 * person would run it (a child process, default mode: it approves the failover itself), and must
 * tell the whole story, exit 0 and leave nothing of its lab running.
 */
const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Whether something accepts connections on a loopback port (a refusal is the answer wanted here). */
function answers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.setTimeout(2000, () => {
      s.destroy();
      resolve(true); // no refusal: something is there
    });
    s.on('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', (err: NodeJS.ErrnoException) => resolve(err.code !== 'ECONNREFUSED'));
  });
}

describe('the demo (npm start)', () => {
  let child: ChildProcess | undefined;
  let output = '';
  let code: number | null = null;
  let signal: NodeJS.Signals | null = null;

  beforeAll(async () => {
    child = spawn(process.execPath, ['--import', 'tsx', 'scripts/demo.ts'], {
      cwd: repoRoot,
      env: { ...process.env, NODE_OPTIONS: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => {
      const timer = setTimeout(() => child!.kill('SIGINT'), 200_000);
      child!.once('exit', (c, s) => {
        clearTimeout(timer);
        resolve([c, s]);
      });
    });
  }, 240_000);

  afterAll(() => {
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    // The demo keeps its daemon log for the person who ran it; the test does not need it.
    const log = /^daemon log kept: (\S+)$/m.exec(output)?.[1];
    if (log) rmSync(dirname(log), { recursive: true, force: true });
  });

  it('exits 0 by itself after telling the story', () => {
    expect({ code, signal, tail: code === 0 ? '' : output.slice(-3000) }).toEqual({ code: 0, signal: null, tail: '' });
  });

  it('prints where to look: the API, /metrics, the traffic endpoints and the log file', () => {
    expect(output).toMatch(/^ {2}API: +http:\/\/127\.0\.0\.1:\d+\/api\/v1\/status$/m);
    expect(output).toMatch(/^ {2}metrics: +http:\/\/127\.0\.0\.1:\d+\/metrics$/m);
    expect(output).toMatch(/^ {2}traffic: +HAProxy postgres:\/\/postgres@127\.0\.0\.1:\d+\/postgres and http:\/\/127\.0\.0\.1:\d+$/m);
    expect(output).toMatch(/^ {2}logs: +\/\S+\/daemon\.log \(JSON\)$/m);
    expect(output).toMatch(/^ {2}export CONTINUITY_TOKEN=cty_\S+$/m);
    // No JSON log line reaches the terminal.
    expect(output).not.toMatch(/^\{"level"/m);
  });

  it('shows writes flowing, the kill, the incident and the decision sentence', () => {
    expect(output).toMatch(/^ {2}10 orders written through .*committed on 127\.0\.0\.1:\d+ \(the primary\)$/m);
    expect(output).toMatch(/^ {2}POST .*\/orders -> 201 order \d+, served by the primary site$/m);
    expect(output).toMatch(/^killing the primary PostgreSQL/m);
    expect(output).toMatch(/^incident orders-\S+ opened: orders: orders-pg-primary DOWN/m);
    expect(output).toMatch(
      /^decision: orders: orders-pg-primary DOWN 3\/3 from 2 vantage points; replica orders-pg-replica lost its primary( [\d.]+ s ago)?, lag 0 B; awaiting approval for failover-postgres v1$/m,
    );
  });

  it('shows the approval request, then approves it as demo-approver', () => {
    expect(output).toMatch(/^approval requested, execution failover-postgres-v1-\S+, step approve:$/m);
    expect(output).toMatch(/^ {2}asked: +Fail over to 127\.0\.0\.1:\d+; data at risk: none$/m);
    expect(output).toMatch(/^ {2}runbook: +failover-postgres v1$/m);
    expect(output).toMatch(/^ {2}sha256: +[0-9a-f]{64}$/m);
    expect(output).toMatch(/^ {2}data at risk: none$/m);
    expect(output).toMatch(/^ {4}replica_port: +\d+$/m);
    expect(output).toMatch(/^approving as demo-approver/m);
    expect(output).toMatch(/^ {2}approved by demo-approver, recorded for sha256 [0-9a-f]{12}…$/m);
  });

  it('follows the runbook step by step', () => {
    const steps = [...output.matchAll(/^ {2}step (\S+) +(\S+) +(succeeded|failed, went on|failed, retrying|failed|skipped)\b/gm)].map(
      (m) => `${m[1]}:${m[3]}`,
    );
    expect(steps.filter((s) => !s.endsWith(':failed, retrying'))).toEqual([
      'check_replica:succeeded',
      'approve:succeeded',
      'check_lag:skipped',
      'fence_traffic:succeeded',
      'stop_old_primary:failed, went on',
      'confirm_fenced:succeeded',
      'promote:succeeded',
      'switch_traffic:succeeded',
      'verify_write:succeeded',
    ]);
    expect(output).toMatch(/^execution succeeded in [\d.]+ s$/m);
    expect(output).toMatch(/^incident closed: verified: orders-web-public UP at the dr site$/m);
  });

  it('prints the timeline, RTO achieved per phase and RPO achieved', () => {
    expect(output).toMatch(/^ +\+0\.0 s {2}outage starts/m);
    expect(output).toMatch(/^RTO achieved: [\d.]+ s \(target 1h\)$/m);
    for (const phase of ['detection', 'decision', 'approval wait', 'runbook', 'verification'])
      expect(output).toMatch(new RegExp(`^ {2}${phase}: +[\\d.]+ s$`, 'm'));
    expect(output).toContain('RPO achieved: 0 B');
  });

  it('writes through HAProxy land on the promoted replica afterwards', () => {
    const replicaPort = /^ {2}dr site: +PostgreSQL 127\.0\.0\.1:(\d+) /m.exec(output)?.[1];
    expect(replicaPort).toBeDefined();
    expect(output).toMatch(
      new RegExp(
        `^ {2}5 orders written through .*committed on 127\\.0\\.0\\.1:${replicaPort} \\(the promoted replica, no longer in recovery\\)$`,
        'm',
      ),
    );
    expect(output).toMatch(/^ {2}POST .*\/orders -> 201 order \d+, served by the dr site$/m);
    expect(output).toMatch(/^ {2}all 10 orders acknowledged before the kill are on the promoted replica$/m);
  });

  it('cleans up: nothing answers on any address it printed, and the lab folders are gone', async () => {
    expect(output).toMatch(/^cleaned up: daemon and lab stopped/m);
    const ports = [...new Set([...output.matchAll(/127\.0\.0\.1:(\d+)/g)].map((m) => Number(m[1])))].filter((p) => p !== 6379);
    // The daemon, both PostgreSQL servers, both apps, HAProxy's three frontends and sshd.
    expect(ports.length).toBeGreaterThanOrEqual(9);
    const open: number[] = [];
    for (const port of ports) if (await answers(port)) open.push(port);
    expect(open).toEqual([]);
    for (const input of ['primary_data_dir', 'ssh_key_file']) {
      const path = new RegExp(`^ {4}${input}: +"([^"]+)"$`, 'm').exec(output)?.[1];
      expect(path, input).toBeDefined();
      expect(existsSync(dirname(path!)), path).toBe(false);
    }
  });
});
