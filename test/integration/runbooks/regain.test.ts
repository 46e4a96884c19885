import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EPOCH_KEY } from '../../../src/cluster/lease.js';
import { Metrics } from '../../../src/metrics.js';
import { Executor } from '../../../src/runbooks/executor.js';
import { loadRunbooks } from '../../../src/runbooks/loader.js';
import { startRedisServer, type TestRedisServer } from '../../helpers/redis-server.js';
import { until } from '../../helpers/until.js';

/**
 * The moment between a step's end and the next step's start, when the lease lapsed only because
 * Redis was away and has not been taken back yet: the executor waits for the lease to come back
 * with the same token and goes on, rather than leaving the job to a stalled-job check. Here the
 * lease is played by the test (the `fence` function), so the order of events is certain, which a
 * real Redis outage does not give (redis-restart.test hits this moment only sometimes).
 */
describe('a run that finds its instance not leading between two steps', () => {
  let redis: TestRedisServer;
  let conn: Redis;
  let dir: string;
  let log: string;
  let lines: string[];
  const logger = pino({ level: 'info' }, { write: (s: string) => void lines.push(s) });

  beforeAll(async () => {
    redis = await startRedisServer();
    conn = new Redis(redis.url, { maxRetriesPerRequest: null });
    dir = mkdtempSync(join(tmpdir(), 'continuity-regain-'));
    log = join(dir, 'steps.txt');
    mkdirSync(join(dir, 'runbooks', 'two'), { recursive: true });
    writeFileSync(
      join(dir, 'runbooks', 'two', 'v1.yaml'),
      `name: two
version: 1
description: A step long enough to lose the lease in, then one more; neither is idempotent.
timeout: 1m
steps:
  - id: first
    kind: shell
    timeout: 10s
    shell:
      argv: [sh, -c, 'echo first-begin >> "$1"; sleep 1; echo first-end >> "$1"', sh, '${log}']
  - id: second
    kind: shell
    timeout: 10s
    shell:
      argv: [sh, -c, 'echo second >> "$1"', sh, '${log}']
`,
    );
  }, 30_000);

  afterAll(async () => {
    conn?.disconnect();
    await redis?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  async function scenario(id: string, regain: { token: number; afterMs: number } | undefined, regainMs: number) {
    lines = [];
    writeFileSync(log, '');
    await conn.flushall();
    await conn.set(EPOCH_KEY, '1');
    const { runbooks, issues } = loadRunbooks(join(dir, 'runbooks'));
    expect(issues).toEqual([]);
    let token: number | undefined = 1;
    const executor = new Executor({
      connection: { host: '127.0.0.1', port: redis.port },
      redis: conn,
      runbooks: () => runbooks,
      log: logger,
      metrics: new Metrics(`regain_${id}`),
      stateDir: dir,
      fence: () => token,
      regainMs,
      lockDurationMs: 5000,
    });
    try {
      await executor.start();
      const { execution } = await executor.startExecution(
        { runbook: 'two', mode: 'live', inputs: {}, idempotencyKey: id },
        { name: 'test', roles: ['operator'] },
      );
      await until('the first step running', async () => (readFileSync(log, 'utf8').includes('first-begin') ? true : undefined), 10_000);
      // The lease lapses (Redis away): the token is gone at once, and the daemon's deposition stops
      // the worker while running steps go on (the close waits for them, up to 5 s).
      token = undefined;
      const stopping = executor.stopWorker({ keepRunning: true });
      await until('the first step ended', async () => (readFileSync(log, 'utf8').includes('first-end') ? true : undefined), 10_000);
      const ended = Date.now();
      if (regain) {
        await new Promise((r) => setTimeout(r, regain.afterMs));
        // Elected: the token is there at once; the election's transition (a new worker) follows the deposition's.
        if (regain.token !== 1) await conn.set(EPOCH_KEY, String(regain.token));
        token = regain.token;
        await stopping;
        await executor.start();
      } else await stopping;
      return { executor, id: execution.id, ended };
    } catch (err) {
      await executor.close();
      throw err;
    }
  }

  /** The execution's record once it succeeded (15 s at most). */
  const succeeded = (executor: Executor, id: string) =>
    until(
      'the execution succeeded',
      async () => {
        const rec = await executor.store.get(id);
        return rec?.status === 'succeeded' ? rec : undefined;
      },
      15_000,
    );

  it('takes the lease back with the same token: the next step runs here, once, and the execution succeeds', async () => {
    const { executor, id } = await scenario('same', { token: 1, afterMs: 700 }, 10_000);
    try {
      const done = await succeeded(executor, id);
      expect(done.status).toBe('succeeded');
      expect(readFileSync(log, 'utf8').trim().split('\n')).toEqual(['first-begin', 'first-end', 'second']);
      const view = await executor.view(id);
      expect(view.steps.map((s) => `${s.step}:${s.status}:${s.attempt}`)).toEqual(['first:succeeded:1', 'second:succeeded:1']);
      expect(lines.join('')).toMatch(/waiting for the lease to come back before the next step/);
      expect(lines.join('')).toMatch(/leading again with the same token: the execution goes on/);
      expect(lines.join('')).not.toMatch(/fenced: a newer leader holds the lease/);
    } finally {
      await executor.close();
    }
  }, 30_000);

  it('leading again with another token (someone led in between): the old run is fenced and gives its job back, the new one resumes it, each step once', async () => {
    const { executor, id, ended } = await scenario('other', { token: 2, afterMs: 300 }, 10_000);
    try {
      const done = await succeeded(executor, id);
      // Given back at once, not after the 5 s lock expired and BullMQ's stalled-job check saw it.
      expect(done.updatedAt - ended).toBeLessThan(4000);
      const text = lines.join('');
      expect(text).toMatch(/fenced: a newer leader holds the lease/);
      expect(text).toMatch(/the job is given back to the queue for the leader/);
      expect(readFileSync(log, 'utf8').trim().split('\n')).toEqual(['first-begin', 'first-end', 'second']);
      const view = await executor.view(id);
      expect(view.steps.map((s) => `${s.step}:${s.status}:${s.attempt}`)).toEqual(['first:succeeded:1', 'second:succeeded:1']);
    } finally {
      await executor.close();
    }
  }, 30_000);

  it('the lease does not come back within regainMs: fenced, nothing more written here', async () => {
    const { executor, id, ended } = await scenario('never', undefined, 800);
    try {
      await until(
        'the run fenced',
        async () => (lines.join('').includes('fenced: a newer leader holds the lease') ? true : undefined),
        10_000,
      );
      const waited = Date.now() - ended;
      expect(waited).toBeGreaterThanOrEqual(700);
      expect(waited).toBeLessThan(5000);
      const view = await executor.view(id);
      expect(view.steps.map((s) => `${s.step}:${s.status}`)).toEqual(['first:succeeded']);
      expect(readFileSync(log, 'utf8')).not.toMatch(/second/);
      // The job is back in the queue for whoever leads (here nobody: no worker runs).
      expect(['delayed', 'waiting']).toContain(await (await executor.queue.getJob(id))!.getState());
    } finally {
      await executor.close();
    }
  }, 30_000);
});
