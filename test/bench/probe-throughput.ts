/**
 * Probe-engine throughput bench: `npm run bench:probes` (or `node --import tsx test/bench/probe-throughput.ts`).
 *
 * Runs the real Monitor (scheduler, runner, tcp and http probers, state machine, verdicts, a real
 * Metrics registry, a silent logger) against N loopback targets served by a child process, so the
 * CPU and RSS measured here are Continuity's alone. It warms up for one interval (every probe runs
 * once: first runs are spread over the interval, as in the daemon), then measures over the duration
 * and prints, as its last line:
 *
 *   probes targets=N probes_per_s=X p50_lag_ms=X p99_lag_ms=X cpu_s_per_1000=X rss_mb=X
 *
 * lag is a run's actual start minus its planned start (what the Scheduler reports; read here by
 * wrapping the schedule-lag histogram the Monitor feeds, no hook in src); cpu is this process's
 * user+system CPU over the window per 1,000 completed probes; rss is the peak over the whole run
 * (sampled every 200 ms). Failed runs are counted with their top reasons: they mean the bench
 * measured the wrong thing. Exit 1 when more than 1% of the measured runs failed.
 *
 * Options, as flags (`--targets 1000` or `--targets=1000`) or environment variables:
 *   --targets N        BENCH_TARGETS       probes (default 10000)
 *   --interval D       BENCH_INTERVAL      probe interval, a duration (default 10s); timeout is min(5s, interval/2)
 *   --warmup D         BENCH_WARMUP        warm-up before the window (default one interval: every probe has run once)
 *   --duration D       BENCH_DURATION      measured window after the warm-up (default 60s)
 *   --http-share F     BENCH_HTTP_SHARE    fraction of http probes, the rest tcp (default 0.5)
 *   --concurrency N    BENCH_CONCURRENCY   daemon.max_concurrent_probes (default 500, the daemon default)
 *   --ports N          BENCH_PORTS         listening ports per kind in the server child (default 100)
 *   --hosts N          BENCH_HOSTS         loopback addresses 127.0.0.2.. the ports are spread over (default 4)
 *   --services N       BENCH_SERVICES      services the probes are spread over, round robin (default 0: none)
 *   --condition EXPR   BENCH_CONDITION     a CEL condition added to every http probe, e.g. 'status == 200'
 *   --scrape D         BENCH_SCRAPE        render the /metrics text (registry.metrics()) every D, as a Prometheus
 *                                          scrape would, in this process (default: never)
 *
 * Examples:
 *   node --import tsx test/bench/probe-throughput.ts
 *   node --import tsx test/bench/probe-throughput.ts --targets 1000 --interval 1s --duration 30s
 */
import { RunbookSet } from '../../src/runbooks/loader.js';
import { fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import type { Config, ProbeConfig } from '../../src/config/load.js';
import { formatDuration, parseDuration } from '../../src/duration.js';
import { Monitor } from '../../src/health/monitor.js';
import { createLogger } from '../../src/log.js';
import { Metrics } from '../../src/metrics.js';
import { compileCondition } from '../../src/probers/conditions.js';
import { probers } from '../../src/probers/index.js';
import { option } from './options.js';

interface Target {
  kind: 'tcp' | 'http';
  host: string;
  port: number;
}

interface Options {
  targets: number;
  intervalMs: number;
  warmupMs: number;
  durationMs: number;
  scrapeMs: number;
  httpShare: number;
  concurrency: number;
  ports: number;
  hosts: number;
  services: number;
  condition: string | undefined;
}

function parseOptions(): Options {
  const int = (name: string, env: string, def: number, min: number): number => {
    const text = option(name, env);
    const v = text === undefined ? def : Number(text);
    if (!Number.isInteger(v) || v < min) throw new Error(`--${name} must be an integer >= ${min}, got ${text}`);
    return v;
  };
  const duration = (name: string, env: string, def: string): number => parseDuration(option(name, env) ?? def);
  const share = Number(option('http-share', 'BENCH_HTTP_SHARE') ?? 0.5);
  if (!(share >= 0 && share <= 1)) throw new Error('--http-share must be between 0 and 1');
  const intervalMs = duration('interval', 'BENCH_INTERVAL', '10s');
  const scrape = option('scrape', 'BENCH_SCRAPE');
  return {
    targets: int('targets', 'BENCH_TARGETS', 10_000, 1),
    intervalMs,
    warmupMs: option('warmup', 'BENCH_WARMUP') === undefined ? intervalMs : duration('warmup', 'BENCH_WARMUP', '0s'),
    durationMs: duration('duration', 'BENCH_DURATION', '60s'),
    scrapeMs: scrape === undefined ? 0 : parseDuration(scrape),
    httpShare: share,
    concurrency: int('concurrency', 'BENCH_CONCURRENCY', 500, 1),
    ports: int('ports', 'BENCH_PORTS', 100, 1),
    hosts: int('hosts', 'BENCH_HOSTS', 4, 1),
    services: int('services', 'BENCH_SERVICES', 0, 0),
    condition: option('condition', 'BENCH_CONDITION'),
  };
}

// ---------------------------------------------------------------------------------------------
// The server child: TCP listeners that accept, HTTP servers that answer 200 at once.

async function serve(ports: number, hosts: number): Promise<void> {
  // The parent going away (even killed) closes the IPC channel: never outlive it.
  process.on('disconnect', () => process.exit(0));
  const targets: Target[] = [];
  const listen = async (server: net.Server, kind: Target['kind'], host: string) => {
    server.on('error', (err) => {
      console.error(`server child: ${kind} ${host}: ${err.message}`);
      process.exit(1);
    });
    server.listen({ host, port: 0, backlog: 4096 });
    await once(server, 'listening');
    targets.push({ kind, host, port: (server.address() as net.AddressInfo).port });
  };
  for (let i = 0; i < ports; i++) {
    const host = `127.0.0.${2 + (i % hosts)}`;
    const tcpServer = net.createServer((s) => {
      s.on('error', () => {});
      s.resume();
    });
    await listen(tcpServer, 'tcp', host);
    const httpServer = http.createServer((req, res) => {
      req.resume();
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '3' });
      res.end('ok\n');
    });
    httpServer.on('clientError', (_err, socket) => socket.destroy());
    await listen(httpServer, 'http', host);
  }
  process.send!({ targets });
}

async function startServers(o: Options): Promise<{ child: ChildProcess; targets: Target[] }> {
  // Same loader (tsx), but never the parent's profiling flags.
  const execArgv = process.execArgv.filter(
    (a) => !a.startsWith('--cpu-prof') && !a.startsWith('--heap-prof') && !a.startsWith('--inspect'),
  );
  const child = fork(fileURLToPath(import.meta.url), ['--serve', String(o.ports), String(o.hosts)], {
    execArgv,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const [msg] = (await Promise.race([
    once(child, 'message'),
    once(child, 'exit').then(([code]) => {
      throw new Error(`the server child exited (${code}) before it was ready`);
    }),
  ])) as [{ targets: Target[] }];
  return { child, targets: msg.targets };
}

// ---------------------------------------------------------------------------------------------
// The engine under test.

function buildConfig(o: Options, targets: Target[], stateDir: string): Config {
  const tcpTargets = targets.filter((t) => t.kind === 'tcp');
  const httpTargets = targets.filter((t) => t.kind === 'http');
  const nHttp = Math.round(o.targets * o.httpShare);
  const timeoutMs = Math.min(5000, Math.floor(o.intervalMs / 2));
  const httpConditions = o.condition ? [compileCondition(o.condition, probers.http.observed)] : [];
  const services: Config['services'] = {};
  for (let s = 0; s < o.services; s++) {
    services[`svc-${s}`] = { id: `svc-${s}`, rtoMs: 3_600_000, rpoMs: 0, activeSite: 'primary' };
  }
  const probes: ProbeConfig[] = [];
  for (let i = 0; i < o.targets; i++) {
    const isHttp = i < nHttp;
    const n = isHttp ? i : i - nHttp;
    const t = isHttp ? httpTargets[n % httpTargets.length]! : tcpTargets[n % tcpTargets.length]!;
    const id = `bench-${isHttp ? 'http' : 'tcp'}-${String(n).padStart(5, '0')}`;
    probes.push({
      id,
      kind: isHttp ? 'http' : 'tcp',
      site: i % 2 === 0 ? 'primary' : 'dr',
      services: o.services > 0 ? [`svc-${i % o.services}`] : [],
      intervalMs: o.intervalMs,
      timeoutMs,
      failureThreshold: 3,
      successThreshold: 1,
      settings: isHttp
        ? { url: `http://${t.host}:${t.port}/health`, method: 'GET', insecure_skip_verify: false, follow_redirects: false }
        : { host: t.host, port: t.port },
      conditions: isHttp ? httpConditions : [],
      source: `bench:${i}`,
      fingerprint: id,
    });
  }
  return {
    file: '(bench)',
    daemon: {
      listenHost: '127.0.0.1',
      listenPort: 0,
      redisUrl: 'redis://127.0.0.1:6379',
      logLevel: 'silent',
      probesDir: stateDir,
      runbooksDir: stateDir,
      stateDir,
      maxConcurrentProbes: o.concurrency,
      runbookConcurrency: 1,
      runbookLockDurationMs: 30_000,
      shutdownGraceMs: 2000,
    },
    sites: { primary: { role: 'primary' }, dr: { role: 'dr' } },
    primarySite: 'primary',
    runbooks: new RunbookSet([]),
    auth: { tokens: [], twoPersonRule: true },
    notifications: { channels: {}, escalation: [], absent: [] },
    restoreTests: [],
    services,
    probes,
    secrets: new Set(),
  };
}

function quantile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

const mb = (bytes: number) => bytes / 1024 / 1024;

async function main(): Promise<number> {
  const o = parseOptions();
  const started = Date.now();
  const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1).padStart(6)}s`;
  const say = (line: string) => console.log(`bench ${elapsed()} ${line}`);
  say(
    `targets=${o.targets} interval=${formatDuration(o.intervalMs)} warmup=${formatDuration(o.warmupMs)} duration=${formatDuration(o.durationMs)} ` +
      `http_share=${o.httpShare} scrape=${o.scrapeMs > 0 ? formatDuration(o.scrapeMs) : 'never'} ` +
      `concurrency=${o.concurrency} ports=${o.ports}/kind hosts=${o.hosts} services=${o.services}${o.condition ? ` condition=${JSON.stringify(o.condition)}` : ''} ` +
      `expected=${((o.targets * 1000) / o.intervalMs).toFixed(1)} probes/s`,
  );

  const { child, targets } = await startServers(o);
  let finishing = false;
  child.on('exit', (code, signal) => {
    if (finishing) return;
    console.error(`bench: the server child died (${code ?? signal}); the figures would be wrong`);
    process.exit(1);
  });
  say(`server child pid ${child.pid}: ${targets.length} listeners on ${o.hosts} loopback addresses`);

  const stateDir = mkdtempSync(join(tmpdir(), 'continuity-bench-'));
  const config = buildConfig(o, targets, stateDir);
  const metrics = new Metrics('bench');
  const log = createLogger('silent');

  // What the Monitor records, read by wrapping the metrics it feeds (its behaviour is unchanged).
  let measuring = false;
  const lags: number[] = []; // ms, runs completed in the window
  let periodLags: number[] = [];
  let completed = 0; // in the window
  let failed = 0; // in the window
  let totalRuns = 0;
  let totalFailed = 0;
  let periodRuns = 0;
  let skipped = 0;
  const reasons = new Map<string, number>();

  const lagHist = metrics.scheduleLag;
  const observeLag = lagHist.observe.bind(lagHist) as (v: number) => void;
  lagHist.observe = ((seconds: number) => {
    periodLags.push(seconds * 1000);
    if (measuring) lags.push(seconds * 1000);
    observeLag(seconds);
  }) as typeof lagHist.observe;
  const runs = metrics.probeRuns;
  const incRuns = runs.inc.bind(runs) as (labels: { probe: string; result: string }, value?: number) => void;
  runs.inc = ((labels: { probe: string; result: string }, value?: number) => {
    totalRuns++;
    periodRuns++;
    if (measuring) completed++;
    if (labels.result === 'failure') {
      totalFailed++;
      if (measuring) failed++;
      // The Monitor records the result in the probe's state right after this call (and `monitor`
      // exists by then: no run completes before it is constructed).
      const id = labels.probe;
      queueMicrotask(() => {
        const reason = (monitor.state(id)?.last?.reason ?? 'unknown').replace(/\d+\.\d+\.\d+\.\d+:\d+/g, 'ADDR');
        reasons.set(reason, (reasons.get(reason) ?? 0) + 1);
      });
    }
    incRuns(labels, value);
  }) as typeof runs.inc;
  const skips = metrics.probeSkipped;
  const incSkips = skips.inc.bind(skips) as (labels: { probe: string }) => void;
  skips.inc = ((labels: { probe: string }) => {
    skipped++;
    incSkips(labels);
  }) as typeof skips.inc;

  let peakRss = process.memoryUsage().rss;
  const rssTimer = setInterval(() => {
    peakRss = Math.max(peakRss, process.memoryUsage().rss);
  }, 200);
  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  loopDelay.enable();

  const rssBefore = process.memoryUsage().rss;
  const t0 = Date.now();
  const monitor = new Monitor(config, metrics, log);
  say(
    `monitor started with ${config.probes.length} probes (${Math.round(o.targets * o.httpShare)} http), rss before it=${mb(rssBefore).toFixed(0)}MB; ` +
      `warming up for ${formatDuration(o.warmupMs)}`,
  );

  let lastProgress = Date.now();
  const progress = (phase: string) => {
    const now = Date.now();
    const secs = (now - lastProgress) / 1000;
    lastProgress = now;
    const sorted = Float64Array.from(periodLags).sort();
    const rss = process.memoryUsage().rss;
    peakRss = Math.max(peakRss, rss);
    say(
      `${phase.padEnd(7)} ${(periodRuns / secs).toFixed(1).padStart(7)} probes/s  lag p50=${quantile(sorted, 0.5).toFixed(0)}ms ` +
        `p99=${quantile(sorted, 0.99).toFixed(0)}ms max=${quantile(sorted, 1).toFixed(0)}ms  ` +
        (loopDelay.count > 0
          ? `loop_delay p99=${(loopDelay.percentile(99) / 1e6).toFixed(1)}ms max=${(loopDelay.max / 1e6).toFixed(1)}ms  `
          : 'loop_delay n/a  ') +
        `running=${monitor.running} failed=${totalFailed} skipped=${skipped} rss=${mb(rss).toFixed(0)}MB`,
    );
    periodLags = [];
    periodRuns = 0;
    loopDelay.reset();
  };
  const progressEvery = Math.min(5000, Math.max(1000, o.intervalMs / 2));
  let phase = 'warmup';
  const progressTimer = setInterval(() => progress(phase), progressEvery);

  let scrapes = 0;
  let scrapeMs = 0;
  const scrapeTimer =
    o.scrapeMs > 0
      ? setInterval(() => {
          const s0 = performance.now();
          void metrics.registry.metrics().then(() => {
            scrapes++;
            scrapeMs += performance.now() - s0;
          });
        }, o.scrapeMs)
      : undefined;

  // Warm up (one interval by default), then measure.
  await new Promise((r) => setTimeout(r, Math.max(0, t0 + o.warmupMs - Date.now())));
  const warmupRuns = totalRuns;
  const warmupFailed = totalFailed;
  measuring = true;
  phase = 'measure';
  const cpu0 = process.cpuUsage();
  const w0 = Date.now();
  say(
    `warm-up done: ${warmupRuns} runs, ${warmupFailed} failed, rss=${mb(process.memoryUsage().rss).toFixed(0)}MB; measuring for ${formatDuration(o.durationMs)}`,
  );

  await new Promise((r) => setTimeout(r, o.durationMs));
  measuring = false;
  const cpu = process.cpuUsage(cpu0);
  const windowSeconds = (Date.now() - w0) / 1000;
  clearInterval(progressTimer);
  clearInterval(scrapeTimer);
  progress(phase);
  if (scrapes > 0) say(`metrics scrapes: ${scrapes}, ${(scrapeMs / scrapes).toFixed(0)}ms each on average`);
  clearInterval(rssTimer);
  loopDelay.disable();

  const mem = process.memoryUsage();
  say(
    `memory at the end: rss=${mb(mem.rss).toFixed(0)}MB heap_used=${mb(mem.heapUsed).toFixed(0)}MB heap_total=${mb(mem.heapTotal).toFixed(0)}MB external=${mb(mem.external).toFixed(0)}MB`,
  );
  const t1 = Date.now();
  await monitor.stop(2000);
  say(`monitor stopped in ${Date.now() - t1}ms`);
  finishing = true;
  child.kill('SIGTERM');
  rmSync(stateDir, { recursive: true, force: true });

  const sorted = Float64Array.from(lags).sort();
  const cpuSeconds = (cpu.user + cpu.system) / 1e6;
  const failShare = completed > 0 ? failed / completed : 1;
  say(
    `window ${windowSeconds.toFixed(1)}s: ${completed} runs completed (expected ~${Math.round((o.targets * windowSeconds * 1000) / o.intervalMs)}), ` +
      `${failed} failed (${(failShare * 100).toFixed(2)}%), ${skipped} skipped overall, cpu ${cpuSeconds.toFixed(2)}s ` +
      `(user ${(cpu.user / 1e6).toFixed(2)}s, system ${(cpu.system / 1e6).toFixed(2)}s), lag max ${quantile(sorted, 1).toFixed(0)}ms`,
  );
  if (reasons.size > 0) {
    const top = [...reasons].sort((a, b) => b[1] - a[1]).slice(0, 5);
    say(`failures over the whole run: ${totalFailed}; top reasons:`);
    for (const [reason, count] of top) say(`  ${String(count).padStart(7)}  ${reason}`);
  }
  console.log(
    `probes targets=${o.targets} probes_per_s=${(completed / windowSeconds).toFixed(1)} p50_lag_ms=${quantile(sorted, 0.5).toFixed(1)} ` +
      `p99_lag_ms=${quantile(sorted, 0.99).toFixed(1)} cpu_s_per_1000=${completed > 0 ? ((cpuSeconds / completed) * 1000).toFixed(3) : 'NaN'} ` +
      `rss_mb=${mb(peakRss).toFixed(1)}`,
  );
  return failShare > 0.01 ? 1 : 0;
}

if (process.argv[2] === '--serve') {
  await serve(Number(process.argv[3]), Number(process.argv[4]));
} else {
  // Bounded whatever happens: a hang past the planned end is a failure, not a stuck CI job.
  const o = parseOptions();
  setTimeout(
    () => {
      console.error('bench: still running long after the planned end; giving up');
      process.exit(1);
    },
    o.warmupMs + o.durationMs + 60_000,
  ).unref();
  main().then(
    (code) => process.exit(code),
    (err: unknown) => {
      console.error(`bench: ${err instanceof Error ? err.stack : String(err)}`);
      process.exit(1);
    },
  );
}
