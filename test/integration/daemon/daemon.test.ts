import net from 'node:net';
import { Writable } from 'node:stream';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../../../src/daemon.js';
import { checkImmutable, loadRunbooks, runbookFirstSeen } from '../../../src/runbooks/loader.js';
import { writeConfig } from '../../helpers/config.js';
import { closedPort, silentServer } from '../../helpers/net.js';

const run = promisify(execFile);

/** Collects the daemon's JSON log lines. */
class LogSink extends Writable {
  lines: Array<Record<string, unknown>> = [];
  raw = '';
  override _write(chunk: Buffer, _enc: string, done: () => void) {
    this.raw += chunk.toString();
    for (const l of chunk.toString().split('\n').filter(Boolean)) this.lines.push(JSON.parse(l));
    done();
  }
}

async function until<T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, ms = 5000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const SECRET = 'sekrit-token-4711';

describe('daemon', () => {
  let echo: net.Server;
  let echoPort: number;
  let deadPort: number;
  let silent: Awaited<ReturnType<typeof silentServer>>;
  let daemon: Daemon;
  let sink: LogSink;
  let cfg: ReturnType<typeof writeConfig>;
  let probesYaml: string;

  beforeAll(async () => {
    process.env.CONTINUITY_TEST_SECRET = SECRET;
    // The prober resets connections it is done with: the server must not die of ECONNRESET.
    echo = net.createServer((s) => s.on('error', () => {}).on('data', (d) => s.write(d)));
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
    echoPort = (echo.address() as net.AddressInfo).port;
    deadPort = await closedPort();
    silent = await silentServer();
    probesYaml = `probes:
  - id: web
    kind: tcp
    site: primary
    services: [orders]
    interval: 100ms
    timeout: 80ms
    tcp: { host: 127.0.0.1, port: ${echoPort} }
  - id: db
    kind: tcp
    site: primary
    services: [orders]
    interval: 100ms
    timeout: 80ms
    failure_threshold: 2
    tcp: { host: 127.0.0.1, port: ${deadPort} }
  - id: auth
    kind: tcp
    site: dr
    services: [orders]
    interval: 100ms
    timeout: 80ms
    failure_threshold: 1
    tcp: { host: 127.0.0.1, port: ${echoPort}, send: "AUTH \${env:CONTINUITY_TEST_SECRET}", expect: "AUTH" }
    conditions: ['reply == "welcome"']
`;
    cfg = writeConfig({
      config: `daemon:\n  listen: 127.0.0.1:0\n  probes_dir: ../probes\n  state_dir: ../var\n  shutdown_grace: 300ms\nsites:\n  primary: { role: primary }\n  dr: { role: dr }\nservices:\n  orders: { rto: 1h, rpo: 30s }\n`,
      probes: { 'network.yaml': probesYaml },
    });
    sink = new LogSink();
    daemon = new Daemon({ configPath: cfg.configPath, logStream: sink, port: 0, firstRun: 'now' });
    await daemon.start();
  });

  afterAll(async () => {
    echo.close();
    await silent.close();
  });

  const get = async (path: string) => {
    const res = await fetch(daemon.url + path);
    return { status: res.status, text: await res.text() };
  };

  it('is alive and ready (config loaded, Redis reachable)', async () => {
    expect(await get('/healthz')).toEqual({ status: 200, text: '{"status":"ok"}' });
    expect(await get('/readyz')).toEqual({ status: 200, text: '{"status":"ready"}' });
  });

  it('warns once at start when Redis is not set for production (the local Redis runs appendonly no)', async () => {
    const warned = sink.lines.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('redis is not set for production'));
    expect(warned).toHaveLength(1);
    expect(warned[0]).toMatchObject({
      level: 'warn',
      redis: { 'maxmemory-policy': expect.any(String), appendonly: 'no' },
      expected: { 'maxmemory-policy': 'noeviction', appendonly: 'yes' },
    });
    expect(warned[0]!.msg).toContain(
      'appendonly is no, expected yes: with AOF an acknowledged approval or step result survives a Redis restart',
    );
    expect((await get('/metrics')).text).toContain('continuity_redis_config_ok 0');
  });

  it('moves probes to UP and DOWN and derives the service verdict', async () => {
    await until('db DOWN', () => daemon.status().probes.find((p) => p.id === 'db')?.state === 'DOWN');
    await until('web UP', () => daemon.status().probes.find((p) => p.id === 'web')?.state === 'UP');
    const s = daemon.status();
    const db = s.probes.find((p) => p.id === 'db')!;
    expect(db.last?.reason).toBe(`connect ECONNREFUSED 127.0.0.1:${deadPort}`);
    expect(db.failingSince).toBeDefined();
    const orders = s.services.find((x) => x.id === 'orders')!;
    expect(orders).toMatchObject({ verdict: 'DOWN', activeSite: 'primary', downProbes: ['db'], rtoSeconds: 3600, rpoSeconds: 30 });
    expect(orders.outageStart).toBe(db.failingSince);
    expect(s.sites).toEqual([
      { id: 'primary', role: 'primary', description: undefined, verdict: 'DEGRADED' },
      { id: 'dr', role: 'dr', description: undefined, verdict: 'DOWN' },
    ]);
  });

  it('exports metrics by config id that pass promtool check metrics', async () => {
    const { status, text } = await get('/metrics');
    expect(status).toBe(200);
    expect(text).toContain('continuity_probe_state{probe="db",site="primary",state="DOWN"} 1');
    expect(text).toContain('continuity_probe_state{probe="web",site="primary",state="UP"} 1');
    expect(text).toContain('continuity_service_up{service="orders"} 0');
    expect(text).toContain('continuity_service_site_up{service="orders",site="primary"} 0');
    expect(text).toContain('continuity_rto_target_seconds{service="orders"} 3600');
    expect(text).toContain('continuity_config_last_reload_successful 1');
    expect(text).toMatch(/continuity_probe_duration_seconds_bucket\{le="0.005",kind="tcp"\} \d+/);
    expect(text).toContain('process_cpu_seconds_total');
    expect(text).not.toContain('127.0.0.1');
    const metricsFile = join(cfg.dir, 'metrics.txt');
    writeFileSync(metricsFile, text);
    const { stdout, stderr } = await run('sh', ['-c', 'promtool check metrics < "$1"; echo "exit=$?"', 'sh', metricsFile]);
    expect(stdout + stderr).toBe('exit=0\n');
  });

  it('logs one line per state change, not one per run', async () => {
    const runsBefore = daemon.status().probes.length;
    expect(runsBefore).toBe(3);
    await new Promise((r) => setTimeout(r, 500));
    const changes = sink.lines.filter((l) => l.msg === 'probe state changed' && l.probe === 'db');
    expect(changes.map((l) => [l.from, l.to])).toEqual([['PENDING', 'DOWN']]);
    expect(changes[0]!.level).toBe('error');
  });

  it('never lets a secret out: not in logs, not in the status API', async () => {
    await until('auth DOWN', () => daemon.status().probes.find((p) => p.id === 'auth')?.state === 'DOWN');
    const auth = daemon.status().probes.find((p) => p.id === 'auth')!;
    // The reply echoes the secret: the probe saw it, but no answer shows it.
    expect(auth.last?.reason).toContain(SECRET);
    const api = await get('/api/v1/status');
    expect(api.text).not.toContain(SECRET);
    const shown = (JSON.parse(api.text) as ReturnType<Daemon['status']>).probes.find((p) => p.id === 'auth')!;
    expect(shown.last?.reason).toBe('condition "reply == "welcome"" is false (reply="AUTH [REDACTED]")');
    expect(shown.last?.observed.reply).toBe('AUTH [REDACTED]');
    expect(sink.raw).toContain('AUTH [REDACTED]');
    expect(sink.raw).not.toContain(SECRET);
  });

  it('refuses an invalid reload whole and keeps running the old config', async () => {
    cfg.write('probes/network.yaml', probesYaml + '  - id: web\n    kind: tcp\n    site: nowhere\n    tcp: { host: 127.0.0.1, port: 1 }\n');
    const runsBefore = (await get('/metrics')).text.match(/continuity_probe_runs_total\{probe="web",result="success"\} (\d+)/)![1];
    expect(await daemon.reload()).toBe(false);
    const metrics = (await get('/metrics')).text;
    expect(metrics).toContain('continuity_config_last_reload_successful 0');
    expect(metrics).toContain('continuity_config_reloads_total{result="failure"} 1');
    const s = daemon.status();
    expect(s.config.lastReload.ok).toBe(false);
    expect(s.config.lastReload.errors).toEqual([
      `${cfg.dir}/probes/network.yaml:26 probes[3].id: "web" is already defined at ${cfg.dir}/probes/network.yaml:2`,
      `${cfg.dir}/probes/network.yaml:28 probes[3].site: unknown site "nowhere" (sites: primary, dr)`,
    ]);
    expect(s.probes.map((p) => p.id)).toEqual(['web', 'db', 'auth']);
    await until('web still probed', async () => {
      const n = (await get('/metrics')).text.match(/continuity_probe_runs_total\{probe="web",result="success"\} (\d+)/)![1];
      return Number(n) > Number(runsBefore);
    });
    expect(sink.lines.some((l) => l.msg === 'config reload refused; the running config is kept')).toBe(true);
  });

  it('applies a valid reload, keeping the state of unchanged probes', async () => {
    const dbSince = daemon.status().probes.find((p) => p.id === 'db')!.failingSince;
    cfg.write(
      'probes/network.yaml',
      probesYaml.replace(/ {2}- id: auth[\s\S]*$/, '') +
        `  - id: hang\n    kind: tcp\n    site: dr\n    interval: 1s\n    timeout: 900ms\n    tcp: { host: 127.0.0.1, port: ${silent.port}, send: "x", expect: "y" }\n`,
    );
    expect(await daemon.reload()).toBe(true);
    const s = daemon.status();
    expect(s.probes.map((p) => p.id)).toEqual(['web', 'db', 'hang']);
    expect(s.probes.find((p) => p.id === 'db')!.failingSince).toBe(dbSince);
    const metrics = (await get('/metrics')).text;
    expect(metrics).toContain('continuity_config_last_reload_successful 1');
    expect(metrics).not.toContain('probe="auth"');
  });

  it('stops: in-flight probes are aborted at the grace deadline, HTTP closes', async () => {
    // The hang probe takes 900ms of every 1s against a peer that never answers.
    await until('a run in flight', () => daemon.monitor.running > 0);
    const t0 = Date.now();
    await daemon.stop();
    const took = Date.now() - t0;
    expect(took).toBeGreaterThanOrEqual(280); // waited the 300ms grace for it...
    expect(took).toBeLessThan(850); // ...then aborted it rather than waiting for its timeout
    expect(daemon.monitor.running).toBe(0);
    await expect(fetch(daemon.url + '/healthz')).rejects.toThrow();
    expect(sink.lines.at(-1)?.msg).toBe('stopped');
  });
});

// The daemon above runs on the default Redis URL (DB 0); so do these, with runbook names of their
// own, removed afterwards.
describe('runbook review age', () => {
  const tag = randomBytes(4).toString('hex');
  const names = { reviewed: `reviewed-${tag}`, unreviewed: `unreviewed-${tag}` };
  const runbookYaml = (name: string, reviewed?: string) =>
    `name: ${name}\nversion: 1\ndescription: A runbook.\n${reviewed ? `reviewed: ${reviewed}\n` : ''}timeout: 1m\n` +
    `steps:\n  - { id: nap, kind: sleep, timeout: 1s, idempotent: true, sleep: { duration: 1ms } }\n`;
  let redis: Redis;
  let cfg: ReturnType<typeof writeConfig>;

  beforeAll(async () => {
    redis = new Redis('redis://127.0.0.1:6379/0', { lazyConnect: true, maxRetriesPerRequest: 1 });
    await redis.connect();
    cfg = writeConfig({
      config: `daemon:\n  listen: 127.0.0.1:0\nsites:\n  primary: { role: primary }\n  dr: { role: dr }\nservices:\n  orders: { rto: 1h, rpo: 30s }\n`,
      probes: { 'p.yaml': 'probes: []\n' },
    });
    for (const [name, reviewed] of [
      [names.reviewed, '2024-02-29'],
      [names.unreviewed, undefined],
    ] as const) {
      mkdirSync(join(cfg.dir, 'runbooks', name), { recursive: true });
      cfg.write(`runbooks/${name}/v1.yaml`, runbookYaml(name, reviewed));
    }
  });

  afterAll(async () => {
    for (const key of ['{continuity}:runbook-hashes', '{continuity}:runbook-first-seen'])
      await redis.hdel(key, `${names.reviewed}@v1`, `${names.unreviewed}@v1`);
    await redis.del(`{t-${tag}}:runbook-hashes`, `{t-${tag}}:runbook-first-seen`);
    redis.disconnect();
  });

  it('checkImmutable records when a version was first seen, and gives a hash recorded before that a time once', async () => {
    const key = `{t-${tag}}:runbook-hashes`;
    const { runbooks } = loadRunbooks(join(cfg.dir, 'runbooks'));
    const [reviewed, unreviewed] = runbooks.all;
    // A record from before first-seen times existed: the hash alone.
    await redis.hset(key, `${unreviewed!.name}@v1`, unreviewed!.hash);
    const t0 = Date.now();
    expect(await checkImmutable(redis, runbooks.all, key)).toEqual([]);
    const first = await runbookFirstSeen(redis, key);
    expect([...first.keys()].sort()).toEqual([`${reviewed!.name}@v1`, `${unreviewed!.name}@v1`]);
    for (const at of first.values()) expect(at).toBeGreaterThanOrEqual(t0);
    expect(await redis.hget(key, `${reviewed!.name}@v1`)).toBe(reviewed!.hash); // the hash record keeps its shape
    await new Promise((r) => setTimeout(r, 5));
    expect(await checkImmutable(redis, runbooks.all, key)).toEqual([]);
    expect(await runbookFirstSeen(redis, key)).toEqual(first); // never moved forward
  });

  it('exports continuity_runbook_review_age_seconds: from the reviewed: date, else from the first load', async () => {
    const d = new Daemon({ configPath: cfg.configPath, logStream: new LogSink(), port: 0 });
    const t0 = Date.now();
    await d.start();
    try {
      const text = await (await fetch(`${d.url}/metrics`)).text();
      const age = (name: string) =>
        Number(new RegExp(`continuity_runbook_review_age_seconds\\{runbook="${name}",version="1"\\} (\\S+)`).exec(text)?.[1]);
      expect(age(names.reviewed)).toBeCloseTo((Date.now() - Date.UTC(2024, 1, 29)) / 1000, -1);
      expect(age(names.unreviewed)).toBeGreaterThanOrEqual(0);
      expect(age(names.unreviewed)).toBeLessThanOrEqual((Date.now() - t0) / 1000 + 1);
    } finally {
      await d.stop();
    }
  });
});
