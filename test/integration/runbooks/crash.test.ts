import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashToken } from '../../../src/http/auth.js';
import { writeConfig } from '../../helpers/config.js';
import { freshRedisDb } from '../../helpers/redis-db.js';
import { startSshd, type TestSshd } from '../../helpers/sshd.js';

/**
 * kill -9 of the daemon at every step boundary and in the middle of steps of a five-step runbook.
 * Steps s2 and s4 append a line to a file over SSH and are not idempotent: each line must be there
 * exactly once at the end. s1, s3 and s5 are idempotent: each must have run (at least once).
 */
const OPERATOR = 'tok-crash-operator-0123456789';

function runbook(log: string, sshd: TestSshd): string {
  const ssh = (id: string) => `  - id: ${id}
    kind: ssh
    timeout: 10s
    ssh:
      host: ${sshd.host}
      port: ${sshd.port}
      username: ${sshd.user}
      private_key_file: ${sshd.privateKeyPath}
      known_hosts: ${sshd.knownHostsPath}
      argv: [sh, -c, 'echo ${id} >> "$1"', sh, '${log}']
`;
  const shell = (id: string) => `  - id: ${id}
    kind: shell
    timeout: 10s
    idempotent: true
    shell:
      argv: [sh, -c, 'echo ${id} >> "$1"', sh, '${log}']
`;
  return `name: five
version: 1
description: Five steps, two of them not idempotent, for crash tests.
timeout: 10m
steps:
${shell('s1')}${ssh('s2')}  - id: s3
    kind: sleep
    timeout: 10s
    idempotent: true
    sleep: { duration: 1500ms }
${ssh('s4')}${shell('s5')}`;
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

interface Scenario {
  /** A failpoint (the daemon kills itself there with SIGKILL), or 'sigkill-during-s3' from outside. */
  crash: string;
  /** For a non-idempotent step that started without a result: what the operator decides. */
  decide?: { step: string; action: 'retry' | 'skip' };
}

const scenarios: Scenario[] = [
  // Every step boundary: before each step starts, and after the last result.
  { crash: 'step:s1:before-start' },
  { crash: 'step:s2:before-start' },
  { crash: 'step:s3:before-start' },
  { crash: 'step:s4:before-start' },
  { crash: 'step:s5:before-start' },
  { crash: 'step:s5:after-result' },
  // The middle of steps. A non-idempotent step started but not run: the operator retries it.
  { crash: 'step:s2:after-start', decide: { step: 's2', action: 'retry' } },
  // A non-idempotent step that ran but whose result was not recorded: the operator sees the line and skips.
  { crash: 'step:s4:after-run', decide: { step: 's4', action: 'skip' } },
  // An idempotent step that ran without a recorded result is simply run again.
  { crash: 'step:s1:after-run' },
  // A real kill -9 from outside while the 1.5 s sleep step runs.
  { crash: 'sigkill-during-s3' },
];

describe('kill -9 at every step boundary and in the middle of steps', () => {
  let sshd: TestSshd;
  const children = new Set<ChildProcess>();

  beforeAll(async () => {
    sshd = await startSshd();
  });
  afterAll(async () => {
    for (const c of children) c.kill('SIGKILL');
    await sshd?.stop();
  });

  it.each(scenarios)(
    '$crash: nothing lost, no idempotent step skipped, no non-idempotent step run twice',
    async (sc) => {
      const redisUrl = await freshRedisDb(5);
      const port = await freePort();
      const cfg = writeConfig({
        config: `daemon:\n  listen: 127.0.0.1:${port}\n  redis_url: ${redisUrl}\n  runbooks_dir: ../runbooks\n  state_dir: ../var\n  runbook_lock_duration: 1s\n  shutdown_grace: 1s\nauth:\n  tokens:\n    - { name: olga, sha256: ${hashToken(OPERATOR)}, roles: [operator] }\nsites:\n  p: { role: primary }\n  d: { role: dr }\nservices: {}\n`,
        probes: {},
      });
      const log = join(cfg.dir, 'lines.txt');
      mkdirSync(join(cfg.dir, 'runbooks/five'), { recursive: true });
      writeFileSync(join(cfg.dir, 'runbooks/five/v1.yaml'), runbook(log, sshd));

      const start = (failpoint?: string) => {
        const child = spawn('node', ['bin/continuity.js', 'daemon', '-c', cfg.configPath], {
          env: { ...process.env, CONTINUITY_FAILPOINTS: failpoint ?? '' },
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        children.add(child);
        let out = '';
        child.stdout!.on('data', (d) => (out += d));
        child.stderr!.on('data', (d) => (out += d));
        const exited = new Promise<NodeJS.Signals | number | null>((r) => child.on('exit', (code, signal) => r(signal ?? code)));
        return { child, exited, output: () => out };
      };
      const api = async (method: string, path: string, body?: unknown) => {
        const res = await fetch(`http://127.0.0.1:${port}${path}`, {
          method,
          headers: { authorization: `Bearer ${OPERATOR}`, ...(body ? { 'content-type': 'application/json' } : {}) },
          body: body ? JSON.stringify(body) : undefined,
        });
        // eslint-disable-next-line @typescript-eslint/no-explicit-any -- an API answer, read loosely by the test
        return (await res.json()) as Record<string, any>;
      };
      const until = async <T>(what: string, fn: () => Promise<T | undefined>, ms = 20_000): Promise<T> => {
        const end = Date.now() + ms;
        for (;;) {
          const v = await fn().catch(() => undefined);
          if (v !== undefined) return v;
          if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
          await new Promise((r) => setTimeout(r, 50));
        }
      };
      const lines = () => (existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n') : []);

      // First daemon: runs until it is killed.
      const a = start(sc.crash.startsWith('step:') ? sc.crash : undefined);
      await until('daemon A up', async () => ((await fetch(`http://127.0.0.1:${port}/healthz`)).ok ? true : undefined));
      const started = await api('POST', '/api/v1/runbooks/five/executions', { idempotency_key: 'crash-test' });
      const id = started.execution.id as string;
      if (sc.crash === 'sigkill-during-s3') {
        await until('s3 running', async () => {
          const v = await api('GET', `/api/v1/executions/${id}`);
          return v.steps.some((s: { step: string; status: string }) => s.step === 's3' && s.status === 'started') ? true : undefined;
        });
        a.child.kill('SIGKILL');
      }
      expect(await a.exited).toBe('SIGKILL');

      // Second daemon: takes the execution over once the dead one's lock expires.
      const b = start();
      try {
        await until('daemon B up', async () => ((await fetch(`http://127.0.0.1:${port}/healthz`)).ok ? true : undefined));
        if (sc.decide) {
          const waiting = await until('awaiting decision', async () => {
            const v = await api('GET', `/api/v1/executions/${id}`);
            return v.execution.status === 'awaiting_decision' ? v : undefined;
          });
          expect(waiting.timeline.at(-1).message).toMatch(
            new RegExp(
              `^step ${sc.decide.step} started at .* but has no recorded result, and it is not idempotent: it will not be run again automatically; an operator must retry, skip or abort it$`,
            ),
          );
          // The operator looks at the world, as a person would: did the line get written?
          const written = lines().includes(sc.decide.step);
          expect(written).toBe(sc.decide.action === 'skip');
          await api('POST', `/api/v1/executions/${id}/steps/${sc.decide.step}/${sc.decide.action}`, { comment: 'checked the file' });
        }
        const done = await until('execution finished', async () => {
          const v = await api('GET', `/api/v1/executions/${id}`);
          return ['succeeded', 'failed', 'aborted'].includes(v.execution.status) ? v : undefined;
        });
        expect(done.execution.status, JSON.stringify(done.timeline)).toBe('succeeded');
        const got = lines();
        // Non-idempotent steps: exactly once. Idempotent steps: at least once, never skipped.
        expect(got.filter((l) => l === 's2')).toEqual(['s2']);
        expect(got.filter((l) => l === 's4')).toEqual(['s4']);
        expect(got).toContain('s1');
        expect(got).toContain('s5');
        expect(done.steps.map((s: { step: string; status: string }) => `${s.step}:${s.status}`)).toEqual(
          ['s1', 's2', 's3', 's4', 's5'].map(
            (s) => `${s}:${sc.decide?.action === 'skip' && s === sc.decide.step ? 'skipped' : 'succeeded'}`,
          ),
        );
      } finally {
        b.child.kill('SIGTERM');
        await b.exited;
      }
    },
    60_000,
  );
});
