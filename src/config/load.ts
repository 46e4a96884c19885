import { createHash } from 'node:crypto';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import type { TSchema } from '@sinclair/typebox';
import { CronExpressionParser } from 'cron-parser';
import { defaultInstanceId } from '../cluster/lease.js';
import { parseDuration } from '../duration.js';
import { compileCondition, type CompiledCondition } from '../probers/conditions.js';
import { probers, type ProberKind } from '../probers/index.js';
import { Redactor } from '../redact.js';
import { ConfigError, formatIssue, formatPath, type ConfigIssue } from './errors.js';
import { inputProblem, loadRunbooks, type RunbookSet } from '../runbooks/loader.js';
import {
  AlertmanagerSchema,
  AuthSchema,
  ConfigFileSchema,
  NotificationsSchema,
  DaemonSchema,
  ProbeEnvelopeSchema,
  ProbesFileSchema,
  RestoreTestSchema,
  ServiceSchema,
  type DaemonConfig,
  type ProbeEnvelope,
  type SiteConfig,
} from './schema.js';
import { resolveSecrets } from './secrets.js';
import { schemaIssues, withDefaults } from './validate.js';
import { YamlFile } from './yaml-file.js';

/** The daemon's settings, resolved: paths absolute, durations in milliseconds. */
export interface DaemonSettings {
  listenHost: string;
  listenPort: number;
  redisUrl: string;
  /** Redis through Sentinel: the master group and its sentinels. */
  redisSentinel?: { name: string; sentinels: Array<{ host: string; port: number }> };
  /** A Redis Cluster's seed nodes (daemon.redis_cluster). */
  redisCluster?: Array<{ host: string; port: number }>;
  logLevel: string;
  probesDir: string;
  runbooksDir: string;
  stateDir: string;
  maxConcurrentProbes: number;
  shutdownGraceMs: number;
  runbookConcurrency: number;
  runbookLockDurationMs: number;
  /** This instance's name among those sharing the Redis (always set by loadConfig). */
  instanceId?: string;
  /** The leader lease (always set by loadConfig). */
  leaderLeaseMs?: number;
  /** Whether instances share the probes out through the cluster queue. */
  probeDistribution?: 'local' | 'shared';
}

/** Incident notifications (config `notifications:`). */
export interface NotificationsConfig {
  publicUrl?: string;
  channels: Record<string, { url: string; format: 'json' | 'slack'; description?: string }>;
  escalation: Array<{ notify: string; afterMs: number; deputy?: string }>;
  absent: string[];
  customer?: { channel: string; afterMs: number };
}

/** An API token, by its hash. */
export interface TokenConfig {
  name: string;
  sha256: string;
  roles: string[];
}

/** A business service and its recovery targets. */
export interface Service {
  id: string;
  description?: string;
  rtoMs: number;
  rpoMs: number;
  /** The site serving the service now. */
  activeSite: string;
  failover?: FailoverPolicy;
}

/** When and how a service fails over (config services.<id>.failover). */
export interface FailoverPolicy {
  runbook: string;
  version: number;
  mode: 'approval' | 'automatic';
  primaryDown: string[];
  drReady: string[];
  replica: string;
  primaryDb?: string;
  verify: string;
  cooldownMs: number;
  /** Instances that must see the primary DOWN (services.<id>.failover.vantage_quorum). */
  vantageQuorum: 'majority' | 'all' | number;
  inputs: Record<string, string | number | boolean>;
  /** Inputs that replace `inputs` in a drill (e.g. a staging HAProxy). */
  drillInputs?: Record<string, string | number | boolean>;
}

/** Alertmanager webhook routing (config `alertmanager:`). */
export interface AlertmanagerConfig {
  /** Tried in order; the first whose labels all match names the service. */
  routes: Array<{ match: Record<string, string>; service: string }>;
  /** When no route matches: the label naming the service (only a configured one counts). */
  serviceLabel?: string;
}

/** Where a restore test restores to: the sweeper looks there for leftovers. */
export type ScratchTarget =
  { kind: 'postgres' | 'mysql'; host: string; port: number; user: string; password?: string } | { kind: 'folder'; path: string };

/** A restore test of one backup set (config restore_tests.<set>), checked against its probe and runbook. */
export interface RestoreTestConfig {
  /** The backup set: the id of the s3-backup probe that checks it. */
  set: string;
  runbook: string;
  /** The runbook version run (pinned at load: the newest when the config named none). */
  version: number;
  service: string;
  schedule: string;
  timezone: string;
  pick: 'newest' | 'random';
  windowMs: number;
  scratch: ScratchTarget;
  /** The runbook's inputs: the S3 location from the probe, the scratch target, and the configured ones. */
  inputs: Record<string, string | number | boolean>;
  /** The probe's S3 settings (secrets resolved), to list the set when picking a backup. */
  s3: {
    endpoint?: string;
    region?: string;
    bucket: string;
    prefix: string;
    force_path_style?: boolean;
    access_key_id?: string;
    secret_access_key?: string;
  };
}

/** One configured probe, validated and ready to run. */
export interface ProbeConfig {
  id: string;
  kind: ProberKind;
  description?: string;
  site: string;
  services: string[];
  intervalMs: number;
  timeoutMs: number;
  failureThreshold: number;
  successThreshold: number;
  /** The kind's settings, secrets resolved and defaults applied. */
  settings: unknown;
  conditions: CompiledCondition[];
  /** Where it is defined, `probes/databases.yaml:12`. */
  source: string;
  /** Changes whenever anything about the probe changes (reload keeps state of unchanged probes). */
  fingerprint: string;
}

/** The whole configuration, valid as a unit. */
export interface Config {
  file: string;
  daemon: DaemonSettings;
  sites: Record<string, SiteConfig>;
  primarySite: string;
  services: Record<string, Service>;
  probes: ProbeConfig[];
  runbooks: RunbookSet;
  auth: { tokens: TokenConfig[]; twoPersonRule: boolean };
  notifications: NotificationsConfig;
  /** Absent only in configs built by hand (loadConfig always sets it). */
  alertmanager?: AlertmanagerConfig;
  restoreTests: RestoreTestConfig[];
  /** Every secret value resolved from references, for the redactor. */
  secrets: Set<string>;
}

export interface LoadOptions {
  env?: NodeJS.ProcessEnv;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** A duration's milliseconds, or the fallback when it is not one (its error is reported by the schema). */
function durationOr(text: unknown, fallback: number): number {
  try {
    return typeof text === 'string' ? parseDuration(text) : fallback;
  } catch {
    return fallback;
  }
}

function display(file: string): string {
  const rel = relative(process.cwd(), file);
  return rel.startsWith('..') ? file : rel;
}

function yamlFiles(dir: string): string[] {
  return readdirSync(dir)
    .filter((f) => /\.ya?ml$/.test(f))
    .sort()
    .map((f) => join(dir, f));
}

/**
 * Loads config/continuity.yaml and every probes/*.yaml, and checks them as a whole. Every problem
 * is collected and thrown at once as a ConfigError; a config that throws is never half-applied.
 */
export function loadConfig(configPath: string, opts: LoadOptions = {}): Config {
  const env = opts.env ?? process.env;
  const issues: ConfigIssue[] = [];
  const secrets = new Set<string>();
  const file = resolve(configPath);
  const name = display(file);

  const main = YamlFile.read(file, name);
  issues.push(...main.issues);
  if (!main.yaml) throw finish(issues, secrets);
  const raw = resolveSecrets(main.yaml.data() ?? {}, [], { file: name, yaml: main.yaml, env, issues, secrets });
  issues.push(...schemaIssues(ConfigFileSchema, raw, { file: name, yaml: main.yaml, at: [] }));
  const lineOf = (segs: Array<string | number>) => main.yaml!.lineOf(segs);

  // From here on, checks run on whatever parts are well-formed, so one run reports everything.
  const rawObj = isObject(raw) ? raw : {};
  const d = withDefaults<DaemonConfig>(DaemonSchema, isObject(rawObj.daemon) ? rawObj.daemon : {});
  const base = dirname(file);
  const listen = /^\[?(.*?)\]?:(\d+)$/.exec(typeof d.listen === 'string' ? d.listen : '') ?? ['', '127.0.0.1', '9464'];
  const daemon: DaemonSettings = {
    listenHost: listen[1]!,
    listenPort: Number(listen[2]),
    redisUrl: String(d.redis_url),
    logLevel: String(d.log_level),
    probesDir: resolve(base, String(d.probes_dir)),
    runbooksDir: resolve(base, String(d.runbooks_dir)),
    stateDir: resolve(base, String(d.state_dir)),
    maxConcurrentProbes: Number(d.max_concurrent_probes),
    shutdownGraceMs: durationOr(d.shutdown_grace, 10_000),
    runbookConcurrency: Number(d.runbook_concurrency),
    runbookLockDurationMs: durationOr(d.runbook_lock_duration, 30_000),
    instanceId: typeof d.instance_id === 'string' && /^\S+$/.test(d.instance_id) ? d.instance_id : defaultInstanceId(),
    leaderLeaseMs: durationOr(d.leader_lease, 10_000),
    probeDistribution: d.probe_distribution === 'shared' ? 'shared' : 'local',
    ...(isObject(d.redis_cluster) && Array.isArray(d.redis_cluster.nodes)
      ? {
          redisCluster: d.redis_cluster.nodes.map((hp) => {
            const m = /^\[?(.*?)\]?:(\d+)$/.exec(String(hp)) ?? ['', '127.0.0.1', '6379'];
            return { host: m[1]!, port: Number(m[2]) };
          }),
        }
      : {}),
    ...(isObject(d.redis_sentinel) && Array.isArray(d.redis_sentinel.sentinels)
      ? {
          redisSentinel: {
            name: String(d.redis_sentinel.name),
            sentinels: d.redis_sentinel.sentinels.map((hp) => {
              const m = /^\[?(.*?)\]?:(\d+)$/.exec(String(hp)) ?? ['', '127.0.0.1', '26379'];
              return { host: m[1]!, port: Number(m[2]) };
            }),
          },
        }
      : {}),
  };
  const authRaw = withDefaults<{ tokens: TokenConfig[]; two_person_rule: boolean }>(AuthSchema, isObject(rawObj.auth) ? rawObj.auth : {});
  const auth = { tokens: Array.isArray(authRaw.tokens) ? authRaw.tokens : [], twoPersonRule: authRaw.two_person_rule !== false };
  const seenHashes = new Map<string, number>();
  auth.tokens.forEach((t, i) => {
    if (!isObject(t) || typeof t.sha256 !== 'string') return;
    const first = seenHashes.get(t.sha256);
    if (first !== undefined)
      issues.push({
        file: name,
        line: lineOf(['auth', 'tokens', i, 'sha256']),
        path: formatPath(['auth', 'tokens', i, 'sha256']),
        message: `the same token as auth.tokens[${first}]`,
      });
    else seenHashes.set(t.sha256, i);
  });
  if (daemon.listenPort > 65535) {
    issues.push({
      file: name,
      line: lineOf(['daemon', 'listen']),
      path: 'daemon.listen',
      message: `port ${daemon.listenPort} is over 65535`,
    });
  }
  if (daemon.redisCluster && daemon.redisSentinel) {
    issues.push({
      file: name,
      line: lineOf(['daemon', 'redis_cluster']),
      path: 'daemon.redis_cluster',
      message: 'redis_cluster and redis_sentinel cannot both be set: a Redis Cluster fails over by itself',
    });
  }
  if ((daemon.leaderLeaseMs ?? 10_000) < 1000) {
    issues.push({
      file: name,
      line: lineOf(['daemon', 'leader_lease']),
      path: 'daemon.leader_lease',
      message: 'must be at least 1s (the leader renews it every third of it)',
    });
  }

  const sites: Record<string, SiteConfig> = isObject(rawObj.sites) ? (rawObj.sites as Record<string, SiteConfig>) : {};
  const roleOf = (id: string) => (isObject(sites[id]) ? sites[id]!.role : undefined);
  const primaries = Object.keys(sites).filter((id) => roleOf(id) === 'primary');
  const drs = Object.keys(sites).filter((id) => roleOf(id) === 'dr');
  if (isObject(rawObj.sites) && primaries.length !== 1) {
    issues.push({
      file: name,
      line: lineOf(['sites']),
      path: 'sites',
      message: `exactly one site must have role primary, found ${primaries.length}${primaries.length ? ` (${primaries.join(', ')})` : ''}`,
    });
  }
  if (isObject(rawObj.sites) && drs.length === 0) {
    issues.push({ file: name, line: lineOf(['sites']), path: 'sites', message: 'at least one site must have role dr' });
  }
  const primarySite = primaries[0] ?? '';

  const services: Record<string, Service> = {};
  for (const [id, s] of Object.entries(isObject(rawObj.services) ? rawObj.services : {})) {
    const svc = withDefaults<{
      description?: string;
      rto: string;
      rpo: string;
      active_site?: string;
      failover?: {
        runbook: string;
        version: number;
        mode: 'approval' | 'automatic';
        primary_down: string[];
        dr_ready: string[];
        replica: string;
        primary_db?: string;
        verify: string;
        cooldown: string;
        vantage_quorum?: 'majority' | 'all' | number;
        inputs?: Record<string, string | number | boolean>;
        drill_inputs?: Record<string, string | number | boolean>;
      };
    }>(ServiceSchema, isObject(s) ? s : {});
    if (svc.active_site !== undefined && !(svc.active_site in sites)) {
      issues.push({
        file: name,
        line: lineOf(['services', id, 'active_site']),
        path: formatPath(['services', id, 'active_site']),
        message: `unknown site "${svc.active_site}" (sites: ${Object.keys(sites).join(', ')})`,
      });
    }
    services[id] = {
      id,
      description: svc.description,
      rtoMs: durationOr(svc.rto, 3_600_000),
      rpoMs: durationOr(svc.rpo, 0),
      activeSite: svc.active_site ?? primarySite,
      ...(isObject(svc.failover) && typeof svc.failover.runbook === 'string'
        ? {
            failover: {
              runbook: svc.failover.runbook,
              version: svc.failover.version,
              mode: svc.failover.mode,
              primaryDown: svc.failover.primary_down ?? [],
              drReady: svc.failover.dr_ready ?? [],
              replica: svc.failover.replica,
              primaryDb: svc.failover.primary_db,
              verify: svc.failover.verify,
              cooldownMs: durationOr(svc.failover.cooldown, 1_800_000),
              vantageQuorum: svc.failover.vantage_quorum ?? 'majority',
              inputs: svc.failover.inputs ?? {},
              ...(isObject(svc.failover.drill_inputs) ? { drillInputs: svc.failover.drill_inputs } : {}),
            },
          }
        : {}),
    };
  }

  const probes: ProbeConfig[] = [];
  if (!existsSync(daemon.probesDir) || !statSync(daemon.probesDir).isDirectory()) {
    issues.push({
      file: name,
      line: main.yaml.lineOf(['daemon', 'probes_dir']),
      path: 'daemon.probes_dir',
      message: `${display(daemon.probesDir)} is not a folder`,
    });
  } else {
    const defined = new Map<string, string>();
    for (const probeFile of yamlFiles(daemon.probesDir)) {
      probes.push(...loadProbesFile(probeFile, { env, issues, secrets, defined, sites, services }));
    }
  }

  const n = withDefaults<{
    public_url?: string;
    channels: Record<string, { url: string; format: 'json' | 'slack'; description?: string }>;
    escalation: Array<{ notify: string; after: string; deputy?: string }>;
    absent: string[];
    customer?: { channel: string; after: string };
  }>(NotificationsSchema, isObject(rawObj.notifications) ? rawObj.notifications : {});
  const channels = isObject(n.channels) ? n.channels : {};
  const needChannel = (at: Array<string | number>, id: unknown) => {
    if (typeof id === 'string' && !(id in channels)) {
      issues.push({
        file: name,
        line: lineOf(['notifications', ...at]),
        path: formatPath(['notifications', ...at]),
        message: `unknown channel "${id}" (channels: ${Object.keys(channels).join(', ') || 'none'})`,
      });
    }
  };
  const escalation = Array.isArray(n.escalation) ? n.escalation.filter(isObject) : [];
  escalation.forEach((e, i) => {
    needChannel(['escalation', i, 'notify'], e.notify);
    if (e.deputy !== undefined) needChannel(['escalation', i, 'deputy'], e.deputy);
  });
  (Array.isArray(n.absent) ? n.absent : []).forEach((a, i) => needChannel(['absent', i], a));
  if (isObject(n.customer)) needChannel(['customer', 'channel'], n.customer.channel);
  const notifications: NotificationsConfig = {
    ...(typeof n.public_url === 'string' ? { publicUrl: n.public_url.replace(/\/$/, '') } : {}),
    channels,
    escalation: escalation.map((e) => ({
      notify: String(e.notify),
      afterMs: durationOr(e.after, 0),
      ...(e.deputy ? { deputy: String(e.deputy) } : {}),
    })),
    absent: Array.isArray(n.absent) ? n.absent.map(String) : [],
    ...(isObject(n.customer)
      ? { customer: { channel: String(n.customer.channel), afterMs: durationOr(n.customer.after, 8 * 3_600_000) } }
      : {}),
  };

  const loaded = loadRunbooks(daemon.runbooksDir);
  issues.push(...loaded.issues);

  // Failover policies name probes and a runbook version: all must exist, and of the right kind.
  const probeKinds = new Map(probes.map((p) => [p.id, p.kind]));
  for (const svc of Object.values(services)) {
    const f = svc.failover;
    if (!f) continue;
    const at = ['services', svc.id, 'failover'];
    const issue = (rel: Array<string | number>, message: string) =>
      issues.push({ file: name, line: lineOf([...at, ...rel]), path: formatPath([...at, ...rel]), message });
    const needProbe = (rel: Array<string | number>, id: string, kind?: string) => {
      const k = probeKinds.get(id);
      if (!k) issue(rel, `unknown probe "${id}"`);
      else if (kind && k !== kind) issue(rel, `"${id}" is a ${k} probe; this needs a ${kind} probe`);
    };
    f.primaryDown.forEach((id, i) => needProbe(['primary_down', i], id));
    f.drReady.forEach((id, i) => needProbe(['dr_ready', i], id));
    needProbe(['replica'], f.replica, 'postgres');
    if (f.primaryDb) needProbe(['primary_db'], f.primaryDb, 'postgres');
    needProbe(['verify'], f.verify);
    const rb = loaded.runbooks.get(f.runbook, f.version);
    if (!rb) {
      const versions = loaded.runbooks.all.filter((r) => r.name === f.runbook).map((r) => `v${r.version}`);
      issue(
        ['version'],
        `no runbook ${f.runbook} version ${f.version} (${versions.length ? `versions: ${versions.join(', ')}` : `no runbook ${f.runbook} in ${display(daemon.runbooksDir)}`})`,
      );
    } else {
      for (const [field, given] of [
        ['inputs', f.inputs],
        ['drill_inputs', f.drillInputs ?? {}],
      ] as const) {
        for (const key of Object.keys(given)) {
          if (!rb.inputs.some((i) => i.name === key))
            issue(
              [field, key],
              `not an input of ${f.runbook} v${f.version} (inputs: ${rb.inputs.map((i) => i.name).join(', ') || 'none'})`,
            );
        }
      }
    }
  }

  // alertmanager: every route names a configured service.
  const am = withDefaults<{ routes: Array<{ match: Record<string, string>; service: string }>; service_label?: string }>(
    AlertmanagerSchema,
    isObject(rawObj.alertmanager) ? rawObj.alertmanager : {},
  );
  const amRoutes = (Array.isArray(am.routes) ? am.routes : []).filter((r) => isObject(r) && isObject(r.match));
  amRoutes.forEach((r, i) => {
    if (typeof r.service === 'string' && !(r.service in services))
      issues.push({
        file: name,
        line: lineOf(['alertmanager', 'routes', i, 'service']),
        path: formatPath(['alertmanager', 'routes', i, 'service']),
        message: `unknown service "${r.service}" (services: ${Object.keys(services).join(', ') || 'none'})`,
      });
  });
  const alertmanager: AlertmanagerConfig = {
    routes: amRoutes.map((r) => ({ match: { ...r.match }, service: String(r.service) })),
    ...(typeof am.service_label === 'string' ? { serviceLabel: am.service_label } : {}),
  };

  const restoreTests = loadRestoreTests(isObject(rawObj.restore_tests) ? rawObj.restore_tests : {}, {
    probes,
    services,
    runbooks: loaded.runbooks,
    issue: (at, message) => issues.push({ file: name, line: lineOf(at), path: formatPath(at), message }),
  });

  if (issues.length > 0) throw finish(issues, secrets);
  return {
    file,
    daemon,
    sites,
    primarySite,
    services,
    probes,
    runbooks: loaded.runbooks,
    auth,
    notifications,
    alertmanager,
    restoreTests,
    secrets,
  };
}

/** The inputs every restore-test runbook takes from the s3-backup probe of its set. */
const S3_INPUTS = ['bucket', 'prefix', 's3_endpoint', 's3_region', 's3_force_path_style'] as const;

/**
 * restore_tests: each key names an s3-backup probe (the backup set), each runbook version exists
 * and takes the inputs given to it, the schedule parses in its time zone, and the service (whose
 * RTO the restore must meet) is known.
 */
function loadRestoreTests(
  raw: Record<string, unknown>,
  ctx: {
    probes: ProbeConfig[];
    services: Record<string, Service>;
    runbooks: RunbookSet;
    issue: (at: Array<string | number>, message: string) => void;
  },
): RestoreTestConfig[] {
  const out: RestoreTestConfig[] = [];
  for (const [set, value] of Object.entries(raw)) {
    if (!isObject(value)) continue;
    const at = ['restore_tests', set];
    const issue = (rel: Array<string | number>, message: string) => ctx.issue([...at, ...rel], message);
    const t = withDefaults<{
      runbook: string;
      version?: number;
      service?: string;
      schedule: string;
      timezone: string;
      pick: 'newest' | 'random';
      window: string;
      scratch: { postgres?: Record<string, unknown>; mysql?: Record<string, unknown>; folder?: string };
      inputs?: Record<string, string | number | boolean>;
    }>(RestoreTestSchema, value);
    let ok = true;
    const bad = (rel: Array<string | number>, message: string) => {
      ok = false;
      issue(rel, message);
    };

    const probe = ctx.probes.find((p) => p.id === set);
    if (!probe) {
      const sets = ctx.probes.filter((p) => p.kind === 's3-backup').map((p) => p.id);
      bad(
        [],
        `unknown backup set "${set}": the key must be the id of an s3-backup probe (${sets.length ? sets.join(', ') : 'none defined'})`,
      );
    } else if (probe.kind !== 's3-backup') bad([], `"${set}" is a ${probe.kind} probe; a restore test needs an s3-backup probe`);

    let service = t.service;
    if (service !== undefined && !(service in ctx.services))
      bad(['service'], `unknown service "${service}" (services: ${Object.keys(ctx.services).join(', ') || 'none'})`);
    if (service === undefined && probe) {
      if (probe.services.length === 1) service = probe.services[0];
      else
        bad(
          [],
          `probe ${set} serves ${probe.services.length ? probe.services.join(', ') : 'no service'}: name the service whose RTO applies (service: ...)`,
        );
    }

    const timezone = String(t.timezone);
    let tzOk = true;
    try {
      new Intl.DateTimeFormat('en', { timeZone: timezone });
    } catch {
      tzOk = false;
      bad(['timezone'], `unknown time zone "${timezone}" (expected an IANA name such as UTC, Europe/Berlin, Asia/Shanghai)`);
    }
    if (tzOk && typeof t.schedule === 'string') {
      try {
        CronExpressionParser.parse(t.schedule, { tz: timezone });
      } catch (err) {
        bad(['schedule'], `not a cron expression (minute hour day-of-month month day-of-week, e.g. 0 3 1 * *): ${(err as Error).message}`);
      }
    }

    const kinds = (['postgres', 'mysql', 'folder'] as const).filter((k) => isObject(t.scratch) && t.scratch[k] !== undefined);
    if (isObject(t.scratch) && kinds.length !== 1)
      bad(['scratch'], `exactly one of postgres, mysql and folder is needed${kinds.length ? `, found ${kinds.join(' and ')}` : ''}`);
    let scratch: ScratchTarget | undefined;
    const kind = kinds[0];
    if (kinds.length === 1 && kind === 'folder') scratch = { kind, path: String(t.scratch.folder) };
    else if (kinds.length === 1 && (kind === 'postgres' || kind === 'mysql')) {
      const db = withDefaults<{ host: string; port: number; user: string; password?: string }>(
        RestoreTestSchema.properties.scratch.properties[kind],
        t.scratch[kind] ?? {},
      );
      scratch = { kind, host: db.host, port: db.port, user: db.user, ...(db.password !== undefined ? { password: db.password } : {}) };
    }

    const rb = typeof t.runbook === 'string' ? ctx.runbooks.get(t.runbook, t.version) : undefined;
    if (typeof t.runbook === 'string' && !rb) {
      const versions = ctx.runbooks.all.filter((r) => r.name === t.runbook).map((r) => `v${r.version}`);
      bad(
        [t.version !== undefined ? 'version' : 'runbook'],
        t.version !== undefined
          ? `no runbook ${t.runbook} version ${t.version}${versions.length ? ` (versions: ${versions.join(', ')})` : ''}`
          : `no runbook ${t.runbook}`,
      );
    }
    const given = t.inputs ?? {};
    const injected: Record<string, string | number | boolean> = {};
    if (probe?.kind === 's3-backup') {
      const s = probe.settings as RestoreTestConfig['s3'];
      Object.assign(injected, {
        bucket: s.bucket,
        prefix: s.prefix ?? '',
        ...(s.endpoint ? { s3_endpoint: s.endpoint } : {}),
        s3_region: s.region ?? 'us-east-1',
        s3_force_path_style: s.force_path_style ?? false,
      });
    }
    if (scratch?.kind === 'folder') injected.scratch_dir = scratch.path;
    else if (scratch) Object.assign(injected, { scratch_host: scratch.host, scratch_port: scratch.port, scratch_user: scratch.user });
    if (rb) {
      const names = new Set(rb.inputs.map((i) => i.name));
      const list = rb.inputs.map((i) => i.name).join(', ') || 'none';
      const needed = [
        ...S3_INPUTS.filter((n) => n !== 's3_endpoint' || 's3_endpoint' in injected),
        ...Object.keys(injected).filter((n) => n.startsWith('scratch_')),
      ];
      const missing = needed.filter((n) => !names.has(n));
      if (missing.length)
        bad(
          ['runbook'],
          `${rb.name} v${rb.version} is not a restore-test runbook for this set: it lacks the input${missing.length > 1 ? 's' : ''} ${missing.join(', ')} (inputs: ${list})`,
        );
      if (t.pick === 'random' && !names.has('key'))
        bad(['pick'], `pick: random needs a runbook with a key input; ${rb.name} v${rb.version} has none`);
      for (const key of Object.keys(given)) {
        if (!names.has(key)) bad(['inputs', key], `not an input of ${rb.name} v${rb.version} (inputs: ${list})`);
        else if (key in injected)
          bad(
            ['inputs', key],
            `set from the ${key.startsWith('scratch_') ? 'scratch target' : `s3-backup probe ${set}`}; leave it out here`,
          );
      }
      for (const def of rb.inputs) {
        const v = given[def.name] ?? injected[def.name];
        // Without an s3-backup probe nothing was injected: that is the error already reported.
        if (v === undefined && def.required && def.default === undefined && probe?.kind === 's3-backup')
          bad(['inputs'], `${rb.name} v${rb.version} needs the input ${def.name}`);
        else if (v !== undefined && def.name in given) {
          const problem = inputProblem(def, v);
          if (problem) bad(['inputs', def.name], problem);
        }
      }
    }
    if (!ok || !rb || !scratch || !service || probe?.kind !== 's3-backup') continue;
    out.push({
      set,
      runbook: rb.name,
      version: rb.version,
      service,
      schedule: t.schedule,
      timezone,
      pick: t.pick,
      windowMs: durationOr(t.window, 30 * 86_400_000),
      scratch,
      inputs: { ...given, ...injected },
      s3: probe.settings as RestoreTestConfig['s3'],
    });
  }
  return out;
}

/** Secrets in messages are redacted before anything prints them. */
function finish(issues: ConfigIssue[], secrets: Set<string>): ConfigError {
  const r = new Redactor();
  r.set(secrets);
  // In file order (the order they were read), then by line: the way a person fixes them.
  const fileOrder = [...new Set(issues.map((i) => i.file))];
  const sorted = issues
    .map((issue, n) => ({ issue, n }))
    .sort(
      (a, b) => fileOrder.indexOf(a.issue.file) - fileOrder.indexOf(b.issue.file) || (a.issue.line ?? 0) - (b.issue.line ?? 0) || a.n - b.n,
    )
    .map(({ issue }) => ({ ...issue, message: r.redact(issue.message) }));
  return new ConfigError(sorted);
}

interface ProbeFileContext {
  env: NodeJS.ProcessEnv;
  issues: ConfigIssue[];
  secrets: Set<string>;
  /** Probe id -> where it was first defined. */
  defined: Map<string, string>;
  sites: Record<string, SiteConfig>;
  services: Record<string, Service>;
}

function loadProbesFile(path: string, ctx: ProbeFileContext): ProbeConfig[] {
  const name = display(path);
  const read = YamlFile.read(path, name);
  ctx.issues.push(...read.issues);
  const yaml = read.yaml;
  if (!yaml) return [];
  const raw = resolveSecrets(yaml.data() ?? {}, [], { file: name, yaml, env: ctx.env, issues: ctx.issues, secrets: ctx.secrets });
  ctx.issues.push(...schemaIssues(ProbesFileSchema, raw, { file: name, yaml, at: [] }));
  if (!isObject(raw) || !Array.isArray(raw.probes)) return [];

  const out: ProbeConfig[] = [];
  raw.probes.forEach((item, index) => {
    if (!isObject(item)) return;
    const at = ['probes', index];
    const before = ctx.issues.length;
    // The envelope's own errors are already reported; the checks below run on the parts that are well-formed.
    const envelopeOk = schemaIssues(ProbeEnvelopeSchema, item, { file: name, at: [] }).length === 0;
    const issue = (rel: Array<string | number>, message: string, key = false) =>
      ctx.issues.push({ file: name, line: yaml.lineOf([...at, ...rel], key), path: formatPath([...at, ...rel]), message });
    const p = withDefaults<Required<ProbeEnvelope>>(ProbeEnvelopeSchema, item);
    const source = `${name}:${yaml.lineOf(at)}`;

    if (typeof p.id === 'string') {
      const first = ctx.defined.get(p.id);
      if (first) issue(['id'], `"${p.id}" is already defined at ${first}`);
      else ctx.defined.set(p.id, source);
    }
    if (typeof p.site === 'string' && !(p.site in ctx.sites)) {
      issue(['site'], `unknown site "${p.site}" (sites: ${Object.keys(ctx.sites).join(', ')})`);
    }
    if (Array.isArray(p.services)) {
      p.services.forEach((s, i) => {
        if (typeof s === 'string' && !(s in ctx.services)) {
          issue(['services', i], `unknown service "${s}" (services: ${Object.keys(ctx.services).join(', ') || 'none'})`);
        }
      });
    }

    const intervalMs = durationOr(p.interval, NaN);
    const timeoutMs = durationOr(p.timeout, NaN);
    if (timeoutMs >= intervalMs) issue(['timeout'], `${p.timeout} must be shorter than interval ${p.interval}`);
    if (timeoutMs <= 0) issue(['timeout'], 'must be longer than 0s');

    if (!(typeof p.kind === 'string' && p.kind in probers)) return;
    const prober = probers[p.kind];
    const item_ = item;
    for (const other of Object.keys(probers)) {
      if (other !== p.kind && other in item_) issue([other], `settings for kind ${other} in a probe of kind ${p.kind}`, true);
    }
    let settings: unknown;
    if (!(p.kind in item_)) {
      issue([], `a probe of kind ${p.kind} needs its settings under "${p.kind}:"`);
    } else {
      const settingIssues = schemaIssues(prober.settings as TSchema, item_[p.kind], { file: name, yaml, at: [...at, p.kind] });
      ctx.issues.push(...settingIssues);
      if (settingIssues.length === 0) {
        settings = withDefaults(prober.settings as TSchema, item_[p.kind]);
        for (const [rel, message] of prober.validate?.(settings as never) ?? []) {
          const relSegs = rel ? rel.split('.').map((s) => (/^\d+$/.test(s) ? Number(s) : s)) : [];
          issue([p.kind, ...relSegs], message);
        }
      }
    }

    const conditions: CompiledCondition[] = [];
    (p.conditions ?? []).forEach((c, i) => {
      try {
        conditions.push(compileCondition(c, prober.observed));
      } catch (err) {
        issue(['conditions', i], `"${c}": ${(err as Error).message}`);
      }
    });

    if (ctx.issues.length > before || !envelopeOk) return;
    const fingerprint = createHash('sha256')
      .update(
        JSON.stringify([
          p.kind,
          p.site,
          p.services,
          p.interval,
          p.timeout,
          p.failure_threshold,
          p.success_threshold,
          settings,
          p.conditions,
        ]),
      )
      .digest('hex')
      .slice(0, 16);
    out.push({
      id: p.id,
      kind: p.kind,
      description: p.description,
      site: p.site,
      services: p.services ?? [],
      intervalMs,
      timeoutMs,
      failureThreshold: p.failure_threshold,
      successThreshold: p.success_threshold,
      settings,
      conditions,
      source,
      fingerprint,
    });
  });
  return out;
}

/** One line per issue, as `continuity validate` prints them. */
export function describeConfigError(err: ConfigError): string {
  return err.issues.map(formatIssue).join('\n');
}
