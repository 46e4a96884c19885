import { mkdirSync } from 'node:fs';
import type { Redis } from 'ioredis';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { defaultInstanceId, LeaderLease } from './cluster/lease.js';
import { SharedProbes } from './cluster/probe-share.js';
import { failoverProbeIds, freshFor, VantageBoard, vantageProbeIds, type VantageReport } from './cluster/vantage.js';
import { ConfigError, formatIssue } from './config/errors.js';
import { loadConfig, type Config } from './config/load.js';
import { Monitor, summarize } from './health/monitor.js';
import { buildServer } from './http/server.js';
import type { Audit } from './http/auth.js';
import { runbookRoutes } from './http/routes/runbooks.js';
import { incidentRoutes } from './http/routes/incidents.js';
import { alertmanagerRoutes } from './http/routes/alertmanager.js';
import { IncidentManager } from './incidents/manager.js';
import { restoreTestRoutes } from './http/routes/restore-tests.js';
import { consoleRoutes } from './http/routes/console.js';
import { RestoreTests } from './restore-tests/manager.js';
import { Executor } from './runbooks/executor.js';
import { checkImmutable, runbookFirstSeen, RunbookSet } from './runbooks/loader.js';
import { createLogger } from './log.js';
import { Metrics } from './metrics.js';
import { redactor } from './redact.js';
import { connectRedis } from './redis-connection.js';
import { VERSION } from './version.js';

/**
 * How often every instance reads the gauges kept in Redis (open incidents, last drill, RTO and RPO
 * achieved, approvals pending, restore-test results): within one scrape interval, cheaply.
 */
const GAUGES_EVERY_MS = 5000;

/** The Redis settings Continuity needs in production, and why. */
const REDIS_EXPECTED = {
  'maxmemory-policy': {
    want: 'noeviction',
    why: 'BullMQ jobs and execution records must never be evicted (with noeviction a full Redis refuses writes instead of losing them)',
  },
  appendonly: { want: 'yes', why: 'with AOF an acknowledged approval or step result survives a Redis restart' },
} as const;

/**
 * Reads Redis' maxmemory-policy and appendonly with CONFIG GET. `ok` is undefined when they could
 * not be read (CONFIG disabled or renamed, as on managed Redis); `problems` says what is set, what is
 * expected and why.
 */
export async function checkRedisConfig(redis: Pick<Redis, 'config'>): Promise<{
  ok: boolean | undefined;
  settings: Record<string, string>;
  problems: string[];
  error?: string;
}> {
  const settings: Record<string, string> = {};
  try {
    for (const name of Object.keys(REDIS_EXPECTED)) {
      const reply = (await redis.config('GET', name)) as unknown;
      const pairs = Array.isArray(reply) ? (reply as unknown[]).map(String) : [];
      const i = pairs.indexOf(name);
      if (i < 0 || pairs[i + 1] === undefined) throw new Error(`CONFIG GET ${name} answered nothing`);
      settings[name] = pairs[i + 1]!;
    }
  } catch (err) {
    return { ok: undefined, settings, problems: [], error: (err as Error).message };
  }
  const problems = Object.entries(REDIS_EXPECTED)
    .filter(([name, e]) => settings[name] !== e.want)
    .map(([name, e]) => `${name} is ${settings[name]}, expected ${e.want}: ${e.why}`);
  return { ok: problems.length === 0, settings, problems };
}

export interface DaemonOptions {
  configPath: string;
  /** Where logs go (default stdout). */
  logStream?: NodeJS.WritableStream;
  /** Overrides daemon.listen's port (0 for any free port, as tests do). */
  port?: number;
  firstRun?: 'spread' | 'now';
}

/** The outcome of the last load or reload, for the status API. */
interface ReloadRecord {
  ok: boolean;
  at: string;
  errors?: string[];
}

/**
 * The long-running process: loads the config once (refusing to start on any problem), runs the
 * probes, serves HTTP, reloads on SIGHUP (an invalid new config is refused whole and the old one
 * keeps running), and on SIGTERM stops scheduling, lets in-flight probes finish by a deadline,
 * and closes Redis and HTTP.
 */
export class Daemon {
  config!: Config;
  readonly metrics = new Metrics(VERSION);
  log!: Logger;
  monitor!: Monitor;
  /** Runs runbook executions; undefined until Redis has been reached and the runbooks verified. */
  executor: Executor | undefined;
  /** Incidents and failover decisions; started with the executor. */
  incidents: IncidentManager | undefined;
  /** Restore tests: schedules, follow-ups, reports, sweeper; started with the executor. */
  restoreTests: RestoreTests | undefined;
  /** Leadership among the instances sharing the Redis; started with the executor. */
  lease: LeaderLease | undefined;
  /** Probes shared out across the instances (probe_distribution: shared), once Redis was reached. */
  shared: SharedProbes | undefined;
  /** What each instance sees of the probes failovers rely on. */
  vantage: VantageBoard | undefined;
  private clusterTimer: NodeJS.Timeout | undefined;
  private ticking = false;
  /** When the gauges kept in Redis (incidents, executions, restore tests) were last read here. */
  private gaugesReadAt = 0;
  /** Sharing state: on while the queue connection is ready, off (every probe here) while it is not. */
  private sharing = { on: false, since: 0, awaySince: 0, rescheduled: new Map<string, number>() };
  /** The probes a failover policy relies on: never shared out, they run from every instance. */
  private everywhere = new Set<string>();
  /** Elections and depositions, applied one at a time in order. */
  private transitions: Promise<void> = Promise.resolve();
  /** Runbook versions whose content matched their recorded hash. */
  private runbooks = new RunbookSet([]);
  /** When each runbook version was first loaded (epoch ms by `name@vN`), read after checkImmutable. */
  private runbooksFirstSeen = new Map<string, number>();
  private redis!: Redis;
  private queueConnection: Redis | undefined;
  private stopping = false;
  private redisConfigChecked = false;
  private http!: FastifyInstance;
  private lastReload!: ReloadRecord;
  private readonly startedAt = new Date();
  url = '';

  constructor(private readonly opts: DaemonOptions) {
    // Review age at each scrape: the version's reviewed: date, else when it was first loaded.
    this.metrics.runbookReviews = () =>
      this.runbooks.all.flatMap((r) => {
        const at = r.reviewedAt ?? this.runbooksFirstSeen.get(`${r.name}@v${r.version}`);
        return at === undefined ? [] : [{ runbook: r.name, version: r.version, at }];
      });
  }

  /** Starts everything; throws ConfigError when the config is invalid (nothing is started then). */
  async start(): Promise<void> {
    const config = loadConfig(this.opts.configPath);
    this.config = config;
    redactor.set(config.secrets);
    this.log = createLogger(config.daemon.logLevel as never, this.opts.logStream);
    mkdirSync(config.daemon.stateDir, { recursive: true });
    this.metrics.configReloadSuccess.set(1);
    this.metrics.configReloadTimestamp.set(Date.now() / 1000);
    this.lastReload = { ok: true, at: new Date().toISOString() };

    this.redis = connectRedis(config.daemon, {
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      connectTimeout: 2000,
      // Back within a second of Redis (readiness, incidents, the API's 503s follow this connection).
      retryStrategy: (times) => Math.min(times * 200, 1000),
    });
    this.redis.on('error', (err) => this.log.debug({ err: err.message }, 'redis error'));
    const connected = await Promise.race([
      this.redis.connect().then(
        () => true,
        () => false,
      ),
      new Promise<false>((r) => setTimeout(() => r(false), 3000).unref()),
    ]);
    if (connected) {
      await this.checkRedisConfig();
      // A runbook version whose content changed is a config error like any other: refuse to start.
      const changed = await checkImmutable(this.redis, config.runbooks.all);
      if (changed.length > 0) {
        this.redis.disconnect();
        throw new ConfigError(changed);
      }
      this.runbooks = config.runbooks;
      await this.readFirstSeen();
    } else {
      this.log.warn('redis not reachable yet: probes run, runbooks wait for it');
    }

    this.monitor = new Monitor(config, this.metrics, this.log, { firstRun: this.opts.firstRun });
    const audit: Audit = async (entry) => {
      this.log.info(entry, 'audit');
      // While Redis is away an answer never waits for its audit record: the log line above keeps it.
      if (this.redis.status !== 'ready') return void this.log.error({ entry }, 'audit write failed: redis unreachable');
      await this.executor?.store.audit(entry).catch((err: Error) => this.log.error({ err: err.message, entry }, 'audit write failed'));
    };
    this.http = buildServer({
      log: this.log,
      metrics: this.metrics,
      status: () => this.status(),
      notReady: () => this.notReady(),
      routes: (app) => {
        consoleRoutes(app);
        incidentRoutes(app, {
          incidents: () => this.incidents,
          tokens: () => this.config.auth.tokens,
          services: () => Object.keys(this.config.services),
          audit,
        });
        alertmanagerRoutes(app, {
          incidents: () => this.incidents,
          tokens: () => this.config.auth.tokens,
          alertmanager: () => this.config.alertmanager,
          services: () => Object.keys(this.config.services),
          audit,
        });
        restoreTestRoutes(app, {
          restoreTests: () => this.restoreTests,
          tokens: () => this.config.auth.tokens,
          audit,
        });
        runbookRoutes(app, {
          executor: () => this.executor,
          runbooks: () => this.runbooks,
          tokens: () => this.config.auth.tokens,
          audit,
        });
      },
    });
    if (connected) await this.startExecutor();
    else void this.startExecutorWhenRedisIsBack(config);
    const port = this.opts.port ?? config.daemon.listenPort;
    await this.http.listen({ host: config.daemon.listenHost, port });
    const addr = this.http.server.address();
    const actualPort = typeof addr === 'object' && addr ? addr.port : port;
    const host = config.daemon.listenHost.includes(':') ? `[${config.daemon.listenHost}]` : config.daemon.listenHost;
    this.url = `http://${host}:${actualPort}`;
    this.log.info(
      {
        version: VERSION,
        probes: config.probes.length,
        services: Object.keys(config.services).length,
        metrics: `${this.url}/metrics`,
        status: `${this.url}/api/v1/status`,
      },
      'continuity started',
    );
  }

  private async startExecutor(): Promise<void> {
    const config = this.config;
    // Back within a second of Redis (BullMQ's blocking connections are copies of this one).
    this.queueConnection = connectRedis(config.daemon, {
      maxRetriesPerRequest: null,
      retryStrategy: (times) => Math.min(times * 200, 1000),
    });
    this.queueConnection.on('error', (err) => this.log.debug({ err: err.message }, 'redis (queue) error'));
    const lease = new LeaderLease({
      redis: this.redis,
      instanceId: config.daemon.instanceId ?? defaultInstanceId(),
      leaseMs: config.daemon.leaderLeaseMs ?? 10_000,
      log: this.log,
      onChange: (leading, token) => {
        this.metrics.leader.set(leading ? 1 : 0);
        if (token !== undefined) this.metrics.leaderEpoch.set(token);
      },
    });
    this.metrics.leader.set(0);
    const executor = new Executor({
      connection: this.queueConnection,
      // Execution records go through the queue's connection, which waits for Redis to come back
      // (offline queue, no retry limit): a step's result is written after a restart, never dropped.
      // The API answers 503 at once while Redis is away (routes check the connection's status).
      redis: this.queueConnection,
      runbooks: () => this.runbooks,
      log: this.log,
      metrics: this.metrics,
      stateDir: config.daemon.stateDir,
      probes: {
        get: (id) => {
          const st = this.monitor.state(id);
          return st ? { state: st.state, observed: st.last?.observed ?? {} } : undefined;
        },
        ids: () => this.config.probes.map((p) => p.id),
      },
      lockDurationMs: config.daemon.runbookLockDurationMs,
      concurrency: config.daemon.runbookConcurrency,
      twoPersonRule: config.auth.twoPersonRule,
      fence: () => lease.token,
      regainMs: config.daemon.leaderLeaseMs ?? 10_000,
    });
    // The worker runs on the leader only (started at election); any instance enqueues.
    this.executor = executor;
    const board = new VantageBoard(this.redis, lease.instanceId);
    this.vantage = board;
    const incidents = new IncidentManager({
      redis: this.redis,
      monitor: this.monitor,
      executor: () => this.executor,
      config: () => this.config,
      log: this.log,
      metrics: this.metrics,
      lease,
      vantage: (ids) =>
        board.views(
          this.config.probes.filter((p) => ids.includes(p.id)),
          this.ownViews(ids),
        ),
    });
    await incidents.start();
    this.incidents = incidents;
    const restoreTests = new RestoreTests({
      connection: this.queueConnection,
      redis: this.redis,
      executor: () => this.executor,
      config: () => this.config,
      log: this.log,
      metrics: this.metrics,
      stateDir: config.daemon.stateDir,
      lockDurationMs: config.daemon.runbookLockDurationMs,
      leading: () => lease.leading,
    });
    await restoreTests.start();
    this.restoreTests = restoreTests;
    this.lease = lease;
    if (config.daemon.probeDistribution === 'shared') {
      this.everywhere = failoverProbeIds(config);
      this.shared = new SharedProbes({
        connection: this.queueConnection,
        instanceId: lease.instanceId,
        stateDir: config.daemon.stateDir,
        concurrency: config.daemon.maxConcurrentProbes,
        log: this.log,
        summarize,
        onResult: (p, r, mine) => this.monitor.recordShared(p, r.result, r.planned, mine),
      });
      this.shared.setProbes(this.sharedProbes());
      await this.shared.start();
      this.setSharing(true);
    }
    this.clusterTimer = setInterval(() => void this.clusterTick(), 1000);
    this.clusterTimer.unref();
    lease.on('elected', (token) =>
      this.transition('election', async () => {
        if (lease.token !== token) return; // deposed meanwhile
        await executor.start();
        await incidents.lead();
        await restoreTests.applySchedules();
        await this.shared?.applySchedules();
        this.log.info(
          { instance: config.daemon.instanceId, token },
          'leading: deciding failovers, running executions, scheduling restore tests',
        );
      }),
    );
    lease.on('deposed', (reason, { unreachable }) =>
      this.transition('deposition', async () => {
        incidents.stepDown();
        // Lapsed only because Redis was away: running steps finish (fenced writes keep them honest).
        await executor.stopWorker({ keepRunning: unreachable });
        this.log.warn({ reason }, 'no longer leading: decisions and executions stopped here');
      }),
    );
    // The first attempt is awaited: a lone instance leads (its worker runs) when start returns.
    await lease.start();
    await this.transitions;
    this.log.info({ runbooks: this.runbooks.all.length, leading: lease.leading }, 'runbook executor started');
  }

  /** The probes shared out: all but those a failover policy relies on (they run from every instance). */
  private sharedProbes() {
    return this.config.probes.filter((p) => !this.everywhere.has(p.id));
  }

  /** Shares the shared probes out (on), or runs every probe here (off: the queue is unreachable). */
  private setSharing(on: boolean): void {
    if (!this.shared || this.sharing.on === on) return;
    this.sharing.on = on;
    this.sharing.since = Date.now();
    this.sharing.rescheduled.clear();
    this.monitor.runLocally((p) => !this.sharing.on || this.everywhere.has(p.id));
    this.metrics.probeSharing.set(on ? 1 : 0);
    if (on)
      this.log.info({ here: this.monitor.scheduledHere, probes: this.config.probes.length }, 'probes shared out through the cluster queue');
    else this.log.warn({ probes: this.config.probes.length }, 'cluster queue unreachable: every probe runs here until it is back');
  }

  /** This instance's current view of some probes, as published on the vantage board. */
  private ownViews(ids: Iterable<string>): Map<string, VantageReport> {
    const views = new Map<string, VantageReport>();
    for (const id of ids) {
      const st = this.monitor.state(id);
      if (st?.last) views.set(id, { state: st.state, at: st.last.startedAt, ok: st.last.ok, reason: st.last.reason });
    }
    return views;
  }

  /**
   * Each second: publishes this instance's views of the primary_down probes; follows the queue
   * connection (away for 2 s: every probe runs here; back: shared again); and, on the leader,
   * puts back the scheduler of a shared probe no instance has run for two intervals (an iteration
   * lost with the instance that was taking it).
   */
  private async clusterTick(): Promise<void> {
    if (this.stopping || this.ticking) return;
    this.ticking = true;
    try {
      await this.clusterTickOnce();
    } finally {
      this.ticking = false;
    }
  }

  private async clusterTickOnce(): Promise<void> {
    const now = Date.now();
    if (this.redis.status === 'ready' && this.vantage) {
      const views = [...this.ownViews(vantageProbeIds(this.config))].map(([probe, report]) => ({ probe, report }));
      await this.vantage.publish(views).catch((err: Error) => this.log.debug({ err: err.message }, 'vantage views not published'));
    }
    if (this.redis.status === 'ready' && now - this.gaugesReadAt >= GAUGES_EVERY_MS) {
      this.gaugesReadAt = now;
      // What the leader (or the instance that ran a restore test) wrote, on this instance's /metrics too.
      await Promise.all([this.incidents?.followLeader(), this.executor?.refreshGauges(), this.restoreTests?.refreshMetrics()]).catch(
        (err: Error) => this.log.debug({ err: err.message }, 'gauges not read from Redis'),
      );
    }
    if (!this.shared) return;
    const ready = this.queueConnection?.status === 'ready';
    if (ready) this.sharing.awaySince = 0;
    else this.sharing.awaySince ||= now;
    if (!ready && now - this.sharing.awaySince >= 2000) this.setSharing(false);
    else if (ready) this.setSharing(true);
    if (!this.sharing.on || !this.lease?.leading) return;
    // At most a few per second: an overloaded cluster makes many probes late at once, and putting
    // their schedulers back all together would only add to the load.
    let budget = 20;
    for (const p of this.sharedProbes()) {
      const since = this.shared.knownSince(p);
      if (since === undefined) continue; // no longer shared (a reload while this tick ran)
      const last = Math.max(
        this.monitor.state(p.id)?.last?.startedAt ?? 0,
        since,
        this.sharing.since,
        this.sharing.rescheduled.get(p.id) ?? 0,
      );
      // Silent: no run for as long as a vantage view stays fresh (two runs missed, the timeout, 1 s).
      if (now - last <= freshFor(p)) continue;
      if (budget-- <= 0) break;
      this.sharing.rescheduled.set(p.id, now);
      this.log.warn(
        { probe: p.id, silentSeconds: (now - last) / 1000 },
        'shared probe silent for two intervals: its scheduler is put back',
      );
      await this.shared.schedule(p).catch((err: Error) => this.log.warn({ probe: p.id, err: err.message }, 'shared probe not rescheduled'));
    }
  }

  /** Queues an election's or deposition's work behind the previous one's. */
  private transition(what: string, work: () => Promise<void>): void {
    this.transitions = this.transitions
      .then(work)
      .catch((err: Error) => this.log.error({ err: err.message }, `${what}: not applied fully`));
  }

  private async startExecutorWhenRedisIsBack(config: Config): Promise<void> {
    while (!this.stopping) {
      await new Promise((r) => setTimeout(r, 2000).unref());
      if (this.redis.status !== 'ready') continue;
      await this.checkRedisConfig();
      const changed = await checkImmutable(this.redis, config.runbooks.all).catch(() => undefined);
      if (!changed) continue;
      if (changed.length > 0) {
        this.log.error({ errors: changed.map(formatIssue) }, 'runbooks refused: a version changed; fix them and reload');
        return;
      }
      this.runbooks = config.runbooks;
      await this.readFirstSeen();
      await this.startExecutor();
      return;
    }
  }

  /** Reads when each runbook version was first loaded, for continuity_runbook_review_age_seconds. */
  private async readFirstSeen(): Promise<void> {
    this.runbooksFirstSeen = await runbookFirstSeen(this.redis).catch((err: Error) => {
      this.log.warn({ err: err.message }, 'could not read when runbook versions were first loaded');
      return this.runbooksFirstSeen;
    });
  }

  /** Warns once, at start, when Redis is not set for production; sets continuity_redis_config_ok. */
  private async checkRedisConfig(): Promise<void> {
    if (this.redisConfigChecked) return;
    this.redisConfigChecked = true;
    const { ok, settings, problems, error } = await checkRedisConfig(this.redis);
    const expected = Object.fromEntries(Object.entries(REDIS_EXPECTED).map(([name, e]) => [name, e.want]));
    if (ok === undefined) {
      this.log.warn(
        { err: error, expected },
        'redis settings could not be checked (CONFIG GET refused): make sure maxmemory-policy is noeviction and appendonly is yes',
      );
      return;
    }
    this.metrics.redisConfigOk.set(ok ? 1 : 0);
    if (!ok) this.log.warn({ redis: settings, expected }, `redis is not set for production: ${problems.join('; ')}`);
  }

  /**
   * Loads the config again. An invalid config is refused whole: the running config keeps going,
   * the refusal is logged with every problem, and continuity_config_last_reload_successful is 0.
   */
  async reload(): Promise<boolean> {
    try {
      const next = loadConfig(this.opts.configPath);
      if (this.redis.status === 'ready') {
        const changed = await checkImmutable(this.redis, next.runbooks.all);
        if (changed.length > 0) throw new ConfigError(changed);
        this.runbooks = next.runbooks;
        await this.readFirstSeen();
      }
      for (const [key, now, was] of [
        [
          'daemon.listen',
          `${next.daemon.listenHost}:${next.daemon.listenPort}`,
          `${this.config.daemon.listenHost}:${this.config.daemon.listenPort}`,
        ],
        ['daemon.redis_url', next.daemon.redisUrl, this.config.daemon.redisUrl],
        ['daemon.redis_cluster', JSON.stringify(next.daemon.redisCluster ?? null), JSON.stringify(this.config.daemon.redisCluster ?? null)],
        [
          'daemon.redis_sentinel',
          JSON.stringify(next.daemon.redisSentinel ?? null),
          JSON.stringify(this.config.daemon.redisSentinel ?? null),
        ],
      ] as const) {
        if (now !== was) this.log.warn({ key }, 'this setting changes only at restart; the running value is kept');
      }
      redactor.set([...next.secrets]);
      this.config = next;
      this.everywhere = failoverProbeIds(next);
      this.shared?.setProbes(this.sharedProbes());
      this.monitor.apply(next);
      // The leader owns the schedulers; another instance leaves them to it.
      if (this.lease?.leading ?? true) {
        await this.restoreTests
          ?.applySchedules()
          .catch((err: Error) => this.log.error({ err: err.message }, 'restore-test schedules not applied'));
        await this.shared
          ?.applySchedules()
          .catch((err: Error) => this.log.error({ err: err.message }, 'shared probe schedules not applied'));
      }
      this.log.level = next.daemon.logLevel;
      this.metrics.configReloadSuccess.set(1);
      this.metrics.configReloadTimestamp.set(Date.now() / 1000);
      this.metrics.configReloads.inc({ result: 'success' });
      this.lastReload = { ok: true, at: new Date().toISOString() };
      this.log.info({ probes: next.probes.length }, 'config reloaded');
      return true;
    } catch (err) {
      const errors = err instanceof ConfigError ? err.issues.map(formatIssue) : [(err as Error).message];
      this.metrics.configReloadSuccess.set(0);
      this.metrics.configReloads.inc({ result: 'failure' });
      this.lastReload = { ok: false, at: new Date().toISOString(), errors };
      this.log.error({ errors }, 'config reload refused; the running config is kept');
      return false;
    }
  }

  /** Stops scheduling, lets in-flight probes finish or aborts them at the grace deadline, closes HTTP and Redis. */
  async stop(): Promise<void> {
    if (!this.monitor) return; // never started
    this.log.info({ graceSeconds: this.config.daemon.shutdownGraceMs / 1000 }, 'stopping');
    this.stopping = true;
    this.incidents?.stop();
    clearInterval(this.clusterTimer);
    await this.vantage?.withdraw(vantageProbeIds(this.config)).catch(() => undefined);
    await this.shared?.close();
    await this.monitor.stop(this.config.daemon.shutdownGraceMs);
    await this.http.close();
    await this.restoreTests?.close();
    await this.executor?.close();
    // Released once nothing runs here any more, so another instance leads at once.
    this.lease?.removeAllListeners();
    await this.lease?.stop();
    await this.transitions;
    this.queueConnection?.disconnect();
    this.redis.disconnect();
    this.log.info('stopped');
  }

  /** Reasons the daemon is not ready (config loaded and Redis reachable), empty when ready. */
  async notReady(): Promise<string[]> {
    const reasons: string[] = [];
    if (!this.config) reasons.push('config not loaded');
    try {
      await Promise.race([this.redis.ping(), new Promise((_, rej) => setTimeout(() => rej(new Error('no answer in 1s')), 1000).unref())]);
    } catch (err) {
      reasons.push(`redis unreachable: ${(err as Error).message}`);
    }
    return reasons;
  }

  /** The document of /api/v1/status and `continuity status`. */
  status() {
    const v = this.monitor.current;
    return {
      version: VERSION,
      startedAt: this.startedAt.toISOString(),
      // Several instances may share the Redis: which one this is, and who decides (as this one last saw it).
      ...(this.lease
        ? {
            cluster: {
              instance: this.lease.instanceId,
              leading: this.lease.leading,
              leader: this.lease.knownLeader ?? null,
              probes: {
                distribution: this.config.daemon.probeDistribution ?? 'local',
                sharing: this.sharing.on,
                scheduledHere: this.monitor.scheduledHere,
                sharedRunningHere: this.shared?.running ?? 0,
              },
            },
          }
        : {}),
      config: { file: this.config.file, lastReload: this.lastReload },
      sites: Object.entries(this.config.sites).map(([id, s]) => ({
        id,
        role: s.role,
        description: s.description,
        verdict: v.sites[id] ?? 'UNKNOWN',
      })),
      services: Object.values(this.config.services).map((s) => {
        const sv = v.services[s.id];
        return {
          id: s.id,
          description: s.description,
          rtoSeconds: s.rtoMs / 1000,
          rpoSeconds: s.rpoMs / 1000,
          activeSite: sv?.activeSite ?? s.activeSite,
          verdict: sv?.verdict ?? 'UNKNOWN',
          sites: sv?.sites ?? {},
          downProbes: sv?.downProbes ?? [],
          ...(sv?.outageStart ? { outageStart: new Date(sv.outageStart).toISOString() } : {}),
        };
      }),
      probes: this.monitor.probes(),
    };
  }
}

/** Runs the daemon until SIGTERM/SIGINT; SIGHUP reloads. Exits 1 on invalid config. */
export async function runDaemon(opts: DaemonOptions): Promise<void> {
  const daemon = new Daemon(opts);
  try {
    await daemon.start();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`continuity: refusing to start: ${err.message}\n`);
      process.exit(1);
    }
    throw err;
  }
  process.stderr.write(
    `continuity: watching ${daemon.config.probes.length} probes\n  status:  ${daemon.url}/api/v1/status\n  metrics: ${daemon.url}/metrics\n`,
  );
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    daemon.log.info({ signal }, 'signal received');
    daemon.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        daemon.log.error({ err }, 'error while stopping');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => void daemon.reload());
}
