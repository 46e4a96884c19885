import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashToken } from '../../../src/http/auth.js';
import { writeConfig } from '../../helpers/config.js';
import { closedPort } from '../../helpers/net.js';
import { createVethNamespace, netnsUnavailable, type VethNamespace } from '../../helpers/netns.js';
import { startRedisServer, type TestRedisServer } from '../../helpers/redis-server.js';
import { appendStep } from '../../helpers/daemons.js';
import { expectNoWriteOfTheOldEpoch } from '../../helpers/audit.js';
import { until as waitUntil } from '../../helpers/until.js';

/**
 * A leader cut off from the network, not stopped: one daemon runs in a network namespace the test
 * creates (joined to the host by a veth pair with a private link-local /30), the other on the host,
 * both against a private redis-server listening on 127.0.0.1 and on the host end of the pair only.
 * The namespaced daemon leads; its link is taken down while it runs a step. It cannot renew, so it
 * must stop leading within its lease (by its own clock, not told by anyone); the host daemon leads
 * within the lease and some slack and finishes the execution. When the link comes back, the old
 * leader's late writes (the step it finished while cut off) are refused by the fencing script, and
 * it runs no step again. Skipped, with the reason, where network namespaces cannot be made.
 */
const OPERATOR = 'tok-netns-operator-0123456789';
const LEASE_MS = 2500;
/** How late a timer may fire on a busy machine. */
const TIMER_SLACK_MS = 300;
const run = promisify(execFile);

/** Five steps: s2 and s4 append a line and are not idempotent; s3 sleeps (the link is cut then). */
function runbook(log: string): string {
  const shell = (id: string, idempotent: boolean) => appendStep(id, idempotent, log);
  return `name: five
version: 1
description: Five steps, two of them not idempotent, for the cut-off leader test.
timeout: 10m
steps:
${shell('s1', true)}${shell('s2', false)}  - id: s3
    kind: sleep
    timeout: 30s
    idempotent: true
    sleep: { duration: 5s }
${shell('s4', false)}${shell('s5', true)}`;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- API answers and log lines, read loosely by the test
type Json = Record<string, any>;

interface Instance {
  name: string;
  /** Where its HTTP listens, as the host reaches it. */
  base: string;
  child: ChildProcess;
  exited: Promise<NodeJS.Signals | number | null>;
  output(): string;
}

const unavailable = netnsUnavailable();

describe.skipIf(unavailable !== undefined)(
  `a leader cut off by a network namespace${unavailable ? ` (skipped: ${unavailable})` : ''}`,
  () => {
    let ns: VethNamespace | undefined;
    /** Why the namespace could not be made here (the test is then skipped with it). */
    let nsError: string | undefined;
    let redis: TestRedisServer | undefined;
    const instances: Instance[] = [];
    const dirs: string[] = [];
    let log = '';

    // A run that dies half-way leaves no daemon or namespace behind.
    const emergency = () => {
      for (const i of instances) i.child.kill('SIGKILL');
      if (ns) spawnSync('ip', ['netns', 'del', ns.name], { stdio: 'ignore' });
    };
    process.once('exit', emergency);

    const detail = () => instances.map((i) => `--- ${i.name} output ---\n${i.output().slice(-5000)}`).join('\n');
    const until = <T>(what: string, fn: () => Promise<T | undefined>, ms?: number) => waitUntil(what, fn, ms, { detail });
    const lines = () => (existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n').filter(Boolean) : []);
    const count = (line: string) => lines().filter((l) => l === line).length;

    const api = async (inst: Instance, method: string, path: string, body?: unknown) => {
      const res = await fetch(`${inst.base}${path}`, {
        method,
        headers: { authorization: `Bearer ${OPERATOR}`, ...(body ? { 'content-type': 'application/json' } : {}) },
        body: body ? JSON.stringify(body) : undefined,
        signal: AbortSignal.timeout(3000),
      });
      return { status: res.status, json: (await res.json().catch(() => ({}))) as Json };
    };
    const metric = async (inst: Instance, name: string): Promise<number | undefined> => {
      const text = await (await fetch(`${inst.base}/metrics`, { signal: AbortSignal.timeout(3000) })).text();
      const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
      return m ? Number(m[1]) : undefined;
    };
    /** The JSON log lines of an instance with this msg, written after `from` (an offset in its output). */
    const logged = (inst: Instance, msg: string, from = 0): Json[] =>
      inst
        .output()
        .slice(from)
        .split('\n')
        .filter((l) => l.includes(`"msg":"${msg}"`))
        .map((l) => JSON.parse(l) as Json);

    const start = (name: string, cfgPath: string, base: string, netns?: string): Instance => {
      const argv = ['node', 'bin/continuity.js', 'daemon', '-c', cfgPath];
      // `ip netns exec` execs node in the namespace: the child's pid is the daemon's.
      const child = netns
        ? spawn('ip', ['netns', 'exec', netns, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] })
        : spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout!.on('data', (d: Buffer) => (out = out + d.toString()));
      child.stderr!.on('data', (d: Buffer) => (out = out + d.toString()));
      const exited = new Promise<NodeJS.Signals | number | null>((r) => child.once('exit', (code, signal) => r(signal ?? code)));
      const inst = { name, base, child, exited, output: () => out };
      instances.push(inst);
      return inst;
    };
    const config = (instanceId: string, listen: string, redisUrl: string) => {
      const cfg = writeConfig({
        config: `daemon:
  listen: ${listen}
  redis_url: ${redisUrl}
  runbooks_dir: ../runbooks
  state_dir: ../var
  runbook_lock_duration: 2s
  shutdown_grace: 1s
  instance_id: ${instanceId}
  leader_lease: ${LEASE_MS}ms
auth:
  tokens:
    - { name: olga, sha256: ${hashToken(OPERATOR)}, roles: [operator] }
sites:
  p: { role: primary }
  d: { role: dr }
services: {}
`,
        probes: {},
      });
      dirs.push(cfg.dir);
      mkdirSync(join(cfg.dir, 'runbooks/five'), { recursive: true });
      writeFileSync(join(cfg.dir, 'runbooks/five/v1.yaml'), runbook(log));
      return cfg.configPath;
    };

    beforeAll(async () => {
      try {
        ns = await createVethNamespace();
        // The namespace's loopback starts down; the daemon in it may want it.
        await run('ip', ['-n', ns.name, 'link', 'set', 'lo', 'up']);
      } catch (err) {
        nsError = (err as Error).message.split('\n')[0];
        await ns?.remove();
        ns = undefined;
        return;
      }
      // Redis on loopback and on the host end of the pair only: no other address of this machine.
      redis = await startRedisServer({ args: ['--bind', '127.0.0.1', ns.hostAddress, '--protected-mode', 'no'] });
      const scratch = mkdtempSync(join(tmpdir(), 'continuity-netns-'));
      dirs.push(scratch);
      log = join(scratch, 'lines.txt');
    }, 60_000);

    afterAll(async () => {
      for (const i of instances) i.child.kill('SIGKILL');
      await Promise.all(instances.map((i) => i.exited));
      await ns?.remove();
      await redis?.stop();
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
      process.removeListener('exit', emergency);
    });

    it('the cut-off leader deposes itself within its lease, the other leads and finishes, late writes are fenced', async (ctx) => {
      if (!ns || !redis) return ctx.skip(`network namespaces unavailable here: ${nsError ?? 'not created'}`);
      const [cutPort, hostPort] = [await closedPort(), await closedPort()];
      const cut = start(
        'ns-1',
        config('ns-1', `${ns.nsAddress}:${cutPort}`, `redis://${ns.hostAddress}:${redis.port}`),
        `http://${ns.nsAddress}:${cutPort}`,
        ns.name,
      );
      const leads = async (inst: Instance) => ((await metric(inst, 'continuity_leader')) === 1 ? true : undefined);
      await until('ns-1 leading', () => leads(cut), 60_000);
      const host = start('host-1', config('host-1', `127.0.0.1:${hostPort}`, redis.url), `http://127.0.0.1:${hostPort}`);
      await until('host-1 ready', async () => ((await fetch(`${host.base}/readyz`)).ok ? true : undefined), 60_000);
      await until('host-1 sees ns-1 lead', async () =>
        (await api(host, 'GET', '/api/v1/status')).json.cluster?.leader === 'ns-1' ? true : undefined,
      );
      expect(await metric(host, 'continuity_leader')).toBe(0);
      const oldEpoch = (await metric(cut, 'continuity_leader_epoch'))!;

      // The host instance takes the request (any instance enqueues); the namespaced leader runs it.
      const started = await api(host, 'POST', '/api/v1/runbooks/five/executions', { idempotency_key: 'netns-cut' });
      expect(started.status, JSON.stringify(started.json)).toBe(201);
      const id = started.json.execution.id as string;
      await until('s3 running on ns-1', async () => {
        const v = (await api(host, 'GET', `/api/v1/executions/${id}`)).json;
        return v.steps?.some((s: Json) => s.step === 's3' && s.status === 'started') ? true : undefined;
      });
      expect(lines()).toEqual(['s1', 's2']);

      // Cut: the namespace's end of the pair goes down; ns-1 runs on, unable to reach Redis.
      const mark = cut.output().length;
      const cutAt = Date.now();
      await ns.setLinkUp(false);

      const deposed = await until('ns-1 deposes itself', async () => logged(cut, 'leader: deposed', mark)[0], 3 * LEASE_MS + 10_000);
      const deposedMs = Date.parse(deposed.time as string) - cutAt;
      expect(deposed.reason).toBe('the lease expired without a successful renewal');
      await until('host-1 leading', () => leads(host), 3 * LEASE_MS + 10_000);
      const takeoverMs = Date.now() - cutAt;
      const elected = logged(host, 'leader: elected').at(-1)!;
      const electedMs = Date.parse(elected.time as string) - cutAt;
      process.stderr.write(
        `netns: link cut; ns-1 deposed itself after ${deposedMs} ms, host-1 elected after ${electedMs} ms (seen leading after ${takeoverMs} ms; lease ${LEASE_MS} ms)\n`,
      );
      // Within its lease by its own clock (it last renewed before the cut; a timer on a busy machine
      // fires a little late), and not leading on beside the new leader (the same slack).
      expect(deposedMs).toBeLessThanOrEqual(LEASE_MS + TIMER_SLACK_MS);
      expect(Date.parse(deposed.time as string)).toBeLessThanOrEqual(Date.parse(elected.time as string) + TIMER_SLACK_MS);
      expect(takeoverMs).toBeLessThanOrEqual(LEASE_MS + 3000);
      const newEpoch = (await metric(host, 'continuity_leader_epoch'))!;
      expect(newEpoch).toBeGreaterThan(oldEpoch);

      // host-1 resumes at s3 and finishes, while ns-1 is still cut off.
      const done = await until(
        'the execution finished on host-1',
        async () => {
          const v = (await api(host, 'GET', `/api/v1/executions/${id}`)).json;
          return ['succeeded', 'failed', 'aborted', 'awaiting_decision'].includes(v.execution?.status) ? v : undefined;
        },
        90_000,
      );
      expect(done.execution.status, JSON.stringify(done.timeline)).toBe('succeeded');
      const finishedMs = Date.now() - cutAt;

      // The link comes back: ns-1's late write (the result of the s3 it ran on) reaches Redis and is refused.
      const upAt = Date.now();
      await ns.setLinkUp(true);
      await until(
        'ns-1 fenced',
        async () => (logged(cut, 'fenced: a newer leader holds the lease', mark).length ? true : undefined),
        120_000,
      );
      const fencedMs = Date.now() - upAt;
      await until('ns-1 reachable, not leading', async () => ((await metric(cut, 'continuity_leader')) === 0 ? true : undefined), 30_000);
      await until(
        'ns-1 sees host-1 lead',
        async () => ((await api(cut, 'GET', '/api/v1/status')).json.cluster?.leader === 'host-1' ? true : undefined),
        30_000,
      );
      process.stderr.write(
        `netns: execution finished ${finishedMs} ms after the cut; ns-1's late write fenced ${fencedMs} ms after the link came back\n`,
      );
      // Time for anything ns-1 would still do (its job lock is long gone), then nothing ran twice.
      await new Promise((r) => setTimeout(r, 3000));
      expect(count('s2')).toBe(1);
      expect(count('s4')).toBe(1);
      expect(count('s5')).toBe(1);
      expect(lines()).toContain('s1');
      expect(logged(cut, 'leader: elected', mark)).toEqual([]);
      expect(await metric(host, 'continuity_leader')).toBe(1);

      const final = (await api(host, 'GET', `/api/v1/executions/${id}`)).json;
      expect(final.execution.status).toBe('succeeded');
      const results = final.timeline.filter((e: Json) => e.type === 'step_succeeded').map((e: Json) => e.step);
      expect(results).toEqual(['s1', 's2', 's3', 's4', 's5']);
      // The audit stream: no write of the old epoch after the first of the new one.
      const client = new Redis(redis.url, { maxRetriesPerRequest: 1 });
      try {
        await expectNoWriteOfTheOldEpoch(client, oldEpoch, newEpoch);
      } finally {
        client.disconnect();
      }
    }, 240_000);
  },
);
