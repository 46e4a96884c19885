import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { Daemon } from '../../../src/daemon.js';
import { writeConfig } from '../../helpers/config.js';
import { closedPort } from '../../helpers/net.js';
import { until } from '../../helpers/until.js';

/**
 * A real Prometheus scraping an in-process daemon with the shipped rules loaded: the job, the
 * series and their labels as a scrape makes them, the rules healthy against real series, and the
 * dashboard's queries accepted by the real query engine. The daemon runs without Redis (nothing
 * listens at its redis_url): probes and /metrics do not need it, and no Redis database is touched.
 */
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const ALERTS = join(ROOT, 'config/prometheus/alerts.yaml');
const DASHBOARD = join(ROOT, 'config/grafana/continuity-dashboard.json');

class Sink extends Writable {
  override _write(_c: Buffer, _e: string, done: () => void) {
    done();
  }
}

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}
interface ApiAnswer<T> {
  status: 'success' | 'error';
  error?: string;
  data: T;
}

describe('Prometheus scraping the daemon (config/prometheus)', () => {
  let echo: net.Server;
  let daemon: Daemon;
  let cfg: ReturnType<typeof writeConfig>;
  let promDir: string;
  let prometheus: ChildProcess | undefined;
  let promUrl: string;
  let promOutput = '';
  let target: string;

  const api = async <T>(path: string): Promise<ApiAnswer<T>> => {
    const res = await fetch(promUrl + path);
    return (await res.json()) as ApiAnswer<T>;
  };
  const query = (q: string) => api<{ resultType: string; result: Sample[] }>(`/api/v1/query?query=${encodeURIComponent(q)}`);

  beforeAll(async () => {
    echo = net.createServer((s) => s.on('error', () => {}).on('data', (d) => s.write(d)));
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
    const echoPort = (echo.address() as net.AddressInfo).port;
    const deadPort = await closedPort();
    const noRedis = await closedPort();
    cfg = writeConfig({
      config: `daemon:
  listen: 127.0.0.1:0
  redis_url: redis://127.0.0.1:${noRedis}/0
  probes_dir: ../probes
  state_dir: ../var
  shutdown_grace: 300ms
sites:
  primary: { role: primary }
  dr: { role: dr }
services:
  orders: { rto: 1h, rpo: 30s }
  billing: { rto: 4h }
`,
      probes: {
        'network.yaml': `probes:
  - id: web
    kind: tcp
    site: primary
    services: [orders]
    interval: 500ms
    timeout: 400ms
    tcp: { host: 127.0.0.1, port: ${echoPort} }
  - id: billing-db
    kind: tcp
    site: primary
    services: [billing]
    interval: 500ms
    timeout: 400ms
    failure_threshold: 1
    tcp: { host: 127.0.0.1, port: ${deadPort} }
`,
      },
    });
    daemon = new Daemon({ configPath: cfg.configPath, logStream: new Sink(), port: 0, firstRun: 'now' });
    await daemon.start();
    target = new URL(daemon.url).host;

    promDir = mkdtempSync(join(tmpdir(), 'continuity-prometheus-'));
    const promPort = await closedPort();
    promUrl = `http://127.0.0.1:${promPort}`;
    writeFileSync(
      join(promDir, 'prometheus.yml'),
      JSON.stringify({
        global: { scrape_interval: '1s', scrape_timeout: '900ms', evaluation_interval: '1s' },
        rule_files: [ALERTS],
        scrape_configs: [{ job_name: 'continuity', static_configs: [{ targets: [target] }] }],
      }),
    );
    prometheus = spawn(
      'prometheus',
      [
        `--config.file=${join(promDir, 'prometheus.yml')}`,
        `--storage.tsdb.path=${join(promDir, 'data')}`,
        `--web.listen-address=127.0.0.1:${promPort}`,
        '--log.level=warn',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    prometheus.stdout!.on('data', (d: Buffer) => (promOutput += d.toString()));
    prometheus.stderr!.on('data', (d: Buffer) => (promOutput += d.toString()));
    prometheus.on('exit', (code, signal) => (promOutput += `\n[prometheus exited: ${code ?? signal}]`));
    try {
      await until('Prometheus ready', async () => ((await fetch(`${promUrl}/-/ready`)).ok ? true : undefined), 30_000);
    } catch (err) {
      throw new Error(`${(err as Error).message}\n${promOutput}`, { cause: err });
    }
  }, 60_000);

  afterAll(async () => {
    if (prometheus && prometheus.exitCode === null && prometheus.signalCode === null) {
      const exited = new Promise((r) => prometheus!.once('exit', r));
      prometheus.kill('SIGTERM');
      const clean = await Promise.race([exited.then(() => true), pause(5000).then(() => false)]);
      if (!clean) {
        prometheus.kill('SIGKILL');
        await exited;
      }
    }
    await daemon?.stop();
    await new Promise((r) => echo?.close(r));
    if (promDir) rmSync(promDir, { recursive: true, force: true });
    if (cfg) rmSync(cfg.dir, { recursive: true, force: true });
  });

  it('scrapes the probe series with the job and instance labels', async () => {
    const sample = await until(
      'continuity_probe_success of probe web = 1',
      async () => {
        const r = await query('continuity_probe_success');
        return r.data.result.find((s) => s.metric.probe === 'web' && s.value[1] === '1');
      },
      30_000,
    ).catch((err: Error) => {
      throw new Error(`${err.message}\nPrometheus output:\n${promOutput}`, { cause: err });
    });
    expect(sample.metric).toEqual({
      __name__: 'continuity_probe_success',
      job: 'continuity',
      instance: target,
      probe: 'web',
      kind: 'tcp',
      site: 'primary',
    });
    const up = await query('up{job="continuity"}');
    expect(up.data.result.map((s) => [s.metric.instance, s.value[1]])).toEqual([[target, '1']]);
  }, 40_000);

  it('loads every alert rule of alerts.yaml, healthy once evaluated against the scraped series', async () => {
    const expected = (parse(readFileSync(ALERTS, 'utf8')) as { groups: Array<{ rules: Array<{ alert: string }> }> }).groups
      .flatMap((g) => g.rules)
      .map((r) => r.alert);
    type RuleState = { name: string; type: string; health: string; lastError?: string };
    const groups = await until(
      'every rule evaluated',
      async () => {
        const r = await api<{ groups: Array<{ name: string; rules: RuleState[] }> }>('/api/v1/rules');
        const rules = r.data.groups.flatMap((g) => g.rules);
        return rules.length === expected.length && rules.every((x) => x.health !== 'unknown') ? r.data.groups : undefined;
      },
      20_000,
    );
    expect(groups.map((g) => g.name)).toEqual(['continuity']);
    const rules = groups[0]!.rules;
    expect(rules.map((r) => r.name)).toEqual(expected);
    for (const r of rules)
      expect({ name: r.name, type: r.type, health: r.health, lastError: r.lastError ?? '' }).toEqual({
        name: r.name,
        type: 'alerting',
        health: 'ok',
        lastError: '',
      });
  }, 30_000);

  it('evaluates a rule on real series: billing down makes ContinuityServiceDown pending, with its labels', async () => {
    const alert = await until(
      'ContinuityServiceDown pending for billing',
      async () => {
        const r = await api<{ alerts: Array<{ labels: Record<string, string>; state: string }> }>('/api/v1/alerts');
        return r.data.alerts.find((a) => a.labels.alertname === 'ContinuityServiceDown');
      },
      20_000,
    );
    expect(alert).toMatchObject({
      state: 'pending',
      labels: { alertname: 'ContinuityServiceDown', service: 'billing', job: 'continuity', instance: target, severity: 'critical' },
    });
    const down = await api<{ alerts: Array<{ labels: Record<string, string> }> }>('/api/v1/alerts');
    expect(down.data.alerts.filter((a) => a.labels.alertname === 'ContinuityDown')).toEqual([]);
  }, 30_000);

  it("accepts every dashboard query in Prometheus' query engine", async () => {
    const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as {
      panels: Array<{ title: string; targets?: Array<{ expr: string; refId: string }> }>;
    };
    const failures: string[] = [];
    for (const p of dashboard.panels) {
      for (const t of p.targets ?? []) {
        const expr = t.expr
          .replace(/\$__rate_interval|\$__interval|\$__range/g, '1m')
          .replace(/\$\{?service\}?/g, '.*')
          .replace(/\$\{?backup_set\}?/g, '.*');
        const r = await query(expr);
        if (r.status !== 'success') failures.push(`${p.title} ${t.refId}: ${r.error}\n  ${expr}`);
      }
    }
    expect(failures).toEqual([]);
    // And the daemon's own series are there for the panels that show them.
    const rto = await query('continuity_rto_target_seconds');
    expect(Object.fromEntries(rto.data.result.map((s) => [s.metric.service, s.value[1]]))).toEqual({ orders: '3600', billing: '14400' });
  }, 30_000);
});
