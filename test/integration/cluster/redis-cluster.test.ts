import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import { Cluster } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LEADER_KEY } from '../../../src/cluster/lease.js';
import { Daemon } from '../../../src/daemon.js';
import { hashToken } from '../../../src/http/auth.js';
import { writeConfig } from '../../helpers/config.js';
import { startRedisServer, type TestRedisServer } from '../../helpers/redis-server.js';
import { until } from '../../helpers/until.js';

const run = promisify(execFile);

/**
 * A Redis Cluster of three masters (private redis-servers, cluster mode): two daemons reach it
 * through `daemon.redis_cluster`, elect one leader, share a probe out through the `probes` queue and
 * run an execution from the `runbooks` queue, every key hash-tagged into its slot.
 */
const OPERATOR = 'tok-cluster-operator-0123456789';

class Quiet extends Writable {
  text = '';
  override _write(c: Buffer, _e: string, done: () => void) {
    this.text = (this.text + c.toString()).slice(-100_000);
    done();
  }
}

describe('Redis Cluster', () => {
  const nodes: TestRedisServer[] = [];
  let target: Server;
  let hits = 0;

  beforeAll(async () => {
    for (let i = 0; i < 3; i++)
      nodes.push(
        await startRedisServer({
          args: ['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', '3000'],
        }),
      );
    await run('redis-cli', ['--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-yes'], { timeout: 30_000 });
    for (const n of nodes)
      await until(
        `cluster state ok on ${n.port}`,
        async () =>
          (await run('redis-cli', ['-p', String(n.port), 'cluster', 'info'])).stdout.includes('cluster_state:ok') ? true : undefined,
        30_000,
      );
    target = createServer((_req, res) => (hits++, res.end('ok')));
    await new Promise<void>((r) => target.listen(0, '127.0.0.1', r));
  }, 90_000);
  afterAll(async () => {
    await new Promise((r) => target?.close(r));
    for (const n of nodes) await n.stop();
  });

  it('elects one leader, shares probes and runs executions on a Redis Cluster', async () => {
    const cfg = writeConfig({
      config: `daemon:
  listen: 127.0.0.1:0
  redis_cluster:
    nodes: ['127.0.0.1:${nodes[0]!.port}']
  state_dir: ../var
  shutdown_grace: 1s
  leader_lease: 2s
  probe_distribution: shared
auth:
  tokens:
    - { name: olga, sha256: ${hashToken(OPERATOR)}, roles: [operator] }
sites:
  p: { role: primary }
  d: { role: dr }
services: {}
`,
      probes: {
        'web.yaml': `probes:
  - id: web
    kind: http
    site: p
    interval: 500ms
    timeout: 400ms
    http: { url: 'http://127.0.0.1:${(target.address() as AddressInfo).port}/' }
`,
      },
    });
    const log = join(cfg.dir, 'lines.txt');
    mkdirSync(join(cfg.dir, 'runbooks/two'), { recursive: true });
    writeFileSync(
      join(cfg.dir, 'runbooks/two/v1.yaml'),
      `name: two\nversion: 1\ndescription: Two steps on a cluster.\ntimeout: 5m\nsteps:\n${['a', 'b']
        .map(
          (id) =>
            `  - id: ${id}\n    kind: shell\n    timeout: 10s\n    idempotent: false\n    shell:\n      argv: [sh, -c, 'echo ${id} >> "$1"', sh, '${log}']\n`,
        )
        .join('')}`,
    );
    // Two instances of one config; the second gets its own name.
    const second = join(cfg.dir, 'config/second.yaml');
    writeFileSync(second, readFileSync(cfg.configPath, 'utf8').replace('  leader_lease: 2s', '  leader_lease: 2s\n  instance_id: second'));
    const outs = [new Quiet(), new Quiet()];
    const daemons = [
      new Daemon({ configPath: cfg.configPath, port: 0, logStream: outs[0] }),
      new Daemon({ configPath: second, port: 0, logStream: outs[1] }),
    ];
    const client = new Cluster([{ host: '127.0.0.1', port: nodes[0]!.port }]);
    try {
      for (const d of daemons) await d.start();
      const leaders = daemons.filter((d) => d.lease?.leading);
      expect(leaders).toHaveLength(1);
      expect(await client.get(LEADER_KEY)).toMatch(new RegExp(`^${leaders[0]!.lease!.instanceId} `));

      // The probe runs from the shared queue, and both instances see it UP.
      await until('web UP on both', async () => (daemons.every((d) => d.monitor.state('web')?.state === 'UP') ? true : undefined), 20_000);
      for (const d of daemons)
        expect(d.status().cluster?.probes).toMatchObject({ distribution: 'shared', sharing: true, scheduledHere: 0 });
      const before = hits;
      await new Promise((r) => setTimeout(r, 3000));
      // Once per 500 ms across both instances, not twice.
      expect(hits - before).toBeGreaterThanOrEqual(3);
      expect(hits - before).toBeLessThanOrEqual(9);

      // An execution through the follower's API runs on the leader.
      const follower = daemons.find((d) => !d.lease?.leading)!;
      const res = await fetch(`${follower.url}/api/v1/runbooks/two/executions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${OPERATOR}`, 'content-type': 'application/json' },
        body: JSON.stringify({ idempotency_key: 'on-a-cluster' }),
      });
      expect(res.status, await res.clone().text()).toBe(201);
      const id = ((await res.json()) as { execution: { id: string } }).execution.id;
      const done = await until(
        'execution finished',
        async () => {
          const v = (await (
            await fetch(`${follower.url}/api/v1/executions/${id}`, { headers: { authorization: `Bearer ${OPERATOR}` } })
          ).json()) as {
            execution: { status: string };
          };
          return ['succeeded', 'failed', 'aborted'].includes(v.execution.status) ? v.execution.status : undefined;
        },
        30_000,
      );
      expect(done).toBe('succeeded');
      expect(readFileSync(log, 'utf8').trim().split('\n')).toEqual(['a', 'b']);
    } catch (err) {
      outs.forEach((o, i) => process.stderr.write(`--- daemon ${i}\n${o.text.slice(-4000)}\n`));
      throw err;
    } finally {
      for (const d of daemons) await d.stop().catch(() => undefined);
      client.disconnect();
    }
  }, 90_000);
});
