import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../../../src/daemon.js';
import { hashToken } from '../../../src/http/auth.js';
import type { ExecutionView } from '../../../src/runbooks/executor.js';
import { writeConfig } from '../../helpers/config.js';
import { freshRedisDb } from '../../helpers/redis-db.js';

const TOKEN = 'tok-modes-operator-0123456789';
const SECRET = 'db-password-never-stored-4711';

const SWITCH = `name: switch
version: 1
description: Switch traffic; a drill switches the test endpoint and never pages anyone.
timeout: 5m
inputs:
  endpoint: { type: string, default: prod }
  password: { type: secret, default: '\${env:CONTINUITY_TEST_DB_PASSWORD}' }
  retries: { type: integer, default: 1 }
  fast: { type: boolean, default: false }
steps:
  - id: measure
    kind: shell
    timeout: 10s
    idempotent: true
    retries: { max: 2, backoff: 10ms }
    shell: { argv: [sh, -c, 'n=$(cat "$1" 2>/dev/null || echo 0); echo $((n+1)) > "$1"; [ "$n" -ge 1 ] && echo measured', sh, '{{ execution.id }}.count'], cwd: '\${env:CONTINUITY_TEST_DIR}' }
    outputs: { said: result.stdout }
  - id: login
    kind: shell
    timeout: 10s
    shell: { argv: [echo, 'login with {{ inputs.password }}'] }
  - id: switch
    kind: shell
    timeout: 10s
    drill: { inputs: { endpoint: test } }
    shell: { argv: [echo, 'switch {{ inputs.endpoint }} after {{ steps.measure.outputs.said }}'] }
    outputs: { line: result.stdout }
  - id: page
    kind: shell
    timeout: 10s
    drill: skip
    shell: { argv: [echo, paging the on-call] }
  - id: optional
    kind: shell
    timeout: 10s
    on_failure: continue
    shell: { argv: ['false'] }
`;

class Sink extends Writable {
  raw = '';
  override _write(c: Buffer, _e: string, done: () => void) {
    this.raw += c.toString();
    done();
  }
}

describe('execution modes, retries, outputs and secrets', () => {
  let daemon: Daemon;
  const sink = new Sink();

  beforeAll(async () => {
    const redisUrl = await freshRedisDb(6);
    const cfg = writeConfig({
      config: `daemon:\n  listen: 127.0.0.1:0\n  redis_url: ${redisUrl}\n  runbooks_dir: ../runbooks\n  state_dir: ../var\nauth:\n  tokens:\n    - { name: olga, sha256: ${hashToken(TOKEN)}, roles: [operator] }\nsites:\n  p: { role: primary }\n  d: { role: dr }\nservices: {}\n`,
      probes: {},
    });
    process.env.CONTINUITY_TEST_DB_PASSWORD = SECRET;
    process.env.CONTINUITY_TEST_DIR = cfg.dir;
    mkdirSync(join(cfg.dir, 'runbooks/switch'), { recursive: true });
    writeFileSync(join(cfg.dir, 'runbooks/switch/v1.yaml'), SWITCH);
    daemon = new Daemon({ configPath: cfg.configPath, port: 0, logStream: sink });
    await daemon.start();
  });
  afterAll(async () => {
    await daemon?.stop();
  });

  const run = async (mode: string): Promise<ExecutionView> => {
    const res = await fetch(`${daemon.url}/api/v1/runbooks/switch/executions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ mode }),
    });
    const { execution } = (await res.json()) as { execution: { id: string } };
    for (let i = 0; i < 200; i++) {
      const v = (await (
        await fetch(`${daemon.url}/api/v1/executions/${execution.id}`, { headers: { authorization: `Bearer ${TOKEN}` } })
      ).json()) as ExecutionView;
      if (['succeeded', 'failed', 'aborted'].includes(v.execution.status)) return v;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error('execution did not finish');
  };
  const step = (v: ExecutionView, id: string) => v.steps.find((s) => s.step === id)!;

  it('live: retries an idempotent step, passes outputs on, continues past an optional failure', async () => {
    const v = await run('live');
    expect(v.execution.status).toBe('succeeded');
    expect(step(v, 'measure')).toMatchObject({ status: 'succeeded', attempt: 2, outputs: { said: 'measured' } });
    expect(v.timeline.filter((e) => e.type === 'step_retry').map((e) => e.message)).toEqual([
      'measure failed (sh exited with code 1, expected 0); retry 1 of 2 in 10ms',
    ]);
    expect(step(v, 'switch').outputs).toEqual({ line: 'switch prod after measured' });
    expect(step(v, 'page').status).toBe('succeeded');
    expect(step(v, 'optional')).toMatchObject({ status: 'failed', continued: true });
  });

  it('takes typed inputs from a JSON body as they are (a number stays a number)', async () => {
    const res = await fetch(`${daemon.url}/api/v1/runbooks/switch/executions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ mode: 'dry-run', inputs: { endpoint: 'blue', retries: 3, fast: true } }),
    });
    expect(res.status).toBe(201);
    const body = (await res.json()) as { execution: { inputs: Record<string, unknown> } };
    expect(body.execution.inputs).toEqual({ endpoint: 'blue', retries: 3, fast: true, password: '${env:CONTINUITY_TEST_DB_PASSWORD}' });
    const wrong = await fetch(`${daemon.url}/api/v1/runbooks/switch/executions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ mode: 'dry-run', inputs: { retries: '3' } }),
    });
    expect(await wrong.json()).toEqual({ error: 'Bad Request', message: 'inputs.retries: expected a whole number, got "3"' });
  });

  it('drill: runs steps with their drill inputs and skips what a drill must not do', async () => {
    const v = await run('drill');
    expect(v.execution.status).toBe('succeeded');
    expect(step(v, 'switch').outputs).toEqual({ line: 'switch test after measured' });
    expect(step(v, 'page')).toMatchObject({ status: 'skipped', reason: 'skipped in a drill' });
  });

  it('a secret input is resolved only when the step runs: never in the record, the output or the logs', async () => {
    const v = await run('live');
    expect(v.execution.inputs).toEqual({ endpoint: 'prod', password: '${env:CONTINUITY_TEST_DB_PASSWORD}', retries: 1, fast: false });
    expect(step(v, 'login').output).toBe('login with [REDACTED]');
    expect(JSON.stringify(v)).not.toContain(SECRET);
    expect(sink.raw).not.toContain(SECRET);
    const redis = daemon.executor!.store.redis as import('ioredis').Redis;
    const keys = await redis.keys('*');
    for (const key of keys) {
      const type = await redis.type(key);
      const dump =
        type === 'string'
          ? await redis.get(key)
          : type === 'hash'
            ? JSON.stringify(await redis.hgetall(key))
            : type === 'list'
              ? JSON.stringify(await redis.lrange(key, 0, -1))
              : type === 'stream'
                ? JSON.stringify(await redis.xrange(key, '-', '+'))
                : '';
      expect(dump ?? '', `redis key ${key}`).not.toContain(SECRET);
    }
  });
});
