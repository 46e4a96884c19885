import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { DURATION_PATTERN } from '../duration.js';
import { probers, proberKinds } from '../probers/index.js';

/**
 * The one source of truth for the shape of every config file: validation, defaults and the JSON
 * Schemas in config/schema/ all come from here. `errorMessage` is our own annotation: the
 * message a person reads when a value breaks the pattern (TypeBox's own would quote the regex).
 */

const ID_PATTERN = '^[a-z0-9][a-z0-9_.-]{0,62}$';
const ID_MESSAGE = 'must be 1-63 lower-case letters, digits, ".", "_" or "-", starting with a letter or digit';

/** A config id: used as a metric label, so kept short and plain. */
export const Id = (description: string) => Type.String({ pattern: ID_PATTERN, description, errorMessage: ID_MESSAGE });

/** A duration such as `500ms`, `15s`, `5m`, `1h`, `1h30m`. */
export const Duration = (description: string, extra: { default?: string } = {}) =>
  Type.String({
    pattern: DURATION_PATTERN,
    description,
    errorMessage: 'is not a duration (expected e.g. 500ms, 15s, 5m, 1h, 1h30m)',
    ...extra,
  });

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace'] as const;

/** The `daemon:` block of config/continuity.yaml. */
export const DaemonSchema = Type.Object(
  {
    listen: Type.Optional(
      Type.String({
        default: '127.0.0.1:9464',
        pattern: '^(\\[[0-9a-fA-F:.]+\\]|[A-Za-z0-9.-]+):[0-9]{1,5}$',
        errorMessage: 'must be host:port, e.g. 127.0.0.1:9464 or [::1]:9464',
        description: 'Address of the HTTP server (API, /metrics, /healthz), host:port.',
      }),
    ),
    redis_url: Type.Optional(
      Type.String({
        default: 'redis://127.0.0.1:6379',
        pattern: '^rediss?://',
        errorMessage: 'must be a redis:// or rediss:// URL',
        description: 'Redis holding queues, executions and audit. A password belongs in a ${env:...} reference.',
      }),
    ),
    log_level: Type.Optional(
      Type.Union(
        LOG_LEVELS.map((l) => Type.Literal(l)),
        { default: 'info', description: 'Least severe level logged.' },
      ),
    ),
    probes_dir: Type.Optional(Type.String({ default: '../probes', description: 'Folder of probes/*.yaml, relative to this file.' })),
    runbooks_dir: Type.Optional(Type.String({ default: '../runbooks', description: 'Folder of runbooks, relative to this file.' })),
    state_dir: Type.Optional(
      Type.String({ default: '../var', description: 'Folder for local state (e.g. file-integrity baselines), relative to this file.' }),
    ),
    max_concurrent_probes: Type.Optional(
      Type.Integer({ minimum: 1, maximum: 10000, default: 500, description: 'Probes running at once, at most.' }),
    ),
    shutdown_grace: Type.Optional(
      Duration('How long in-flight probes may finish after SIGTERM before they are aborted.', { default: '10s' }),
    ),
    runbook_concurrency: Type.Optional(
      Type.Integer({ minimum: 1, maximum: 100, default: 10, description: 'Runbook executions this instance runs at once.' }),
    ),
    runbook_lock_duration: Type.Optional(
      Duration("How long an instance holds an execution without renewing it; a crashed instance's executions are taken over after this.", {
        default: '30s',
      }),
    ),
    instance_id: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 200,
        pattern: '^[^\\s]+$',
        errorMessage: 'must be a name without spaces',
        description: 'The name of this instance among those sharing the Redis (logs, the leader lease). Default: <hostname>-<pid>.',
      }),
    ),
    leader_lease: Type.Optional(
      Duration(
        'Instances sharing the Redis elect one leader (failover decisions, drills, runbook executions, restore-test schedules) through a lease of this length; a lost leader is replaced within it.',
        { default: '10s' },
      ),
    ),
    probe_distribution: Type.Optional(
      Type.Union([Type.Literal('local'), Type.Literal('shared')], {
        default: 'local',
        description:
          'local (default): this instance runs every probe. shared: instances sharing the Redis share the probes out through a BullMQ queue, each run once per interval across the cluster; the probes a failover policy relies on still run from every instance (independent vantage points), and every probe runs here again while the queue is unreachable.',
      }),
    ),
    redis_cluster: Type.Optional(
      Type.Object(
        {
          nodes: Type.Array(
            Type.String({
              pattern: '^(\\[[0-9a-fA-F:.]+\\]|[A-Za-z0-9.-]+):[0-9]{1,5}$',
              errorMessage: 'must be host:port, e.g. 10.0.1.7:6379',
            }),
            { minItems: 1, description: 'Some nodes of the cluster, host:port: the rest are discovered from them.' },
          ),
        },
        {
          additionalProperties: false,
          description:
            'Reach a Redis Cluster: every key and queue Continuity uses is hash-tagged ({continuity}, {continuity-probes}), so each set lives in one slot. redis_url then gives only the password, user and TLS. Not together with redis_sentinel.',
        },
      ),
    ),
    redis_sentinel: Type.Optional(
      Type.Object(
        {
          name: Type.String({ minLength: 1, description: 'The master group Sentinel watches (`sentinel monitor <name> ...`).' }),
          sentinels: Type.Array(
            Type.String({
              pattern: '^(\\[[0-9a-fA-F:.]+\\]|[A-Za-z0-9.-]+):[0-9]{1,5}$',
              errorMessage: 'must be host:port, e.g. 10.0.9.7:26379',
            }),
            { minItems: 1, description: 'Sentinels, host:port: put at least one in the DR site.' },
          ),
        },
        {
          additionalProperties: false,
          description:
            'Reach Redis through Sentinel (a replica in the DR site, promoted when the primary site is lost): the master is asked of the sentinels at every (re)connection. redis_url then gives only the password and the database number.',
        },
      ),
    ),
  },
  { additionalProperties: false, description: 'The daemon process.' },
);

/** One site: where a copy of the business runs. */
export const SiteSchema = Type.Object(
  {
    role: Type.Union([Type.Literal('primary'), Type.Literal('dr')], { description: 'primary serves; dr stands by to take over.' }),
    description: Type.Optional(Type.String({ description: 'What and where the site is, for people.' })),
  },
  { additionalProperties: false },
);

/** When and how a service fails over to its DR site. */
export const FailoverSchema = Type.Object(
  {
    runbook: Type.String({ pattern: '^[a-z0-9][a-z0-9-]{0,62}$', description: 'The failover runbook (runbooks/<name>/).' }),
    version: Type.Integer({ minimum: 1, description: 'The runbook version this service runs (reviewed and pinned).' }),
    mode: Type.Optional(
      Type.Union([Type.Literal('approval'), Type.Literal('automatic')], {
        default: 'approval',
        description: 'approval (default): an on-call engineer approves each failover; automatic: no approval unless the RPO guard trips.',
      }),
    ),
    primary_down: Type.Array(Id('A probe id'), {
      minItems: 1,
      description: 'Probes whose DOWN state means the primary cannot serve (any one of them).',
    }),
    dr_ready: Type.Optional(
      Type.Array(Id('A probe id'), { default: [], description: 'Probes of the DR site that must be UP before failing over.' }),
    ),
    replica: Id(
      'The postgres probe of the DR replica: the second vantage point (does it still receive from the primary?) and the RPO exposure.',
    ),
    primary_db: Type.Optional(Id('The postgres probe of the primary: its last WAL position gives the data lost (RPO achieved).')),
    verify: Id('The probe of the public endpoint at the DR site: the incident closes when it is UP after the failover.'),
    cooldown: Type.Optional(Duration('No new failover of this service within this time after the last one.', { default: '30m' })),
    vantage_quorum: Type.Optional(
      Type.Union([Type.Literal('majority'), Type.Literal('all'), Type.Integer({ minimum: 1, maximum: 100 })], {
        default: 'majority',
        errorMessage: 'must be majority, all, or a number of instances from 1 to 100',
        description:
          'How many Continuity instances (each a vantage point, among those with a fresh view of the primary_down probes) must see the primary DOWN before a failover: majority (default), all, or a number. Fewer: the monitor path is degraded, no failover.',
      }),
    ),
    inputs: Type.Optional(
      Type.Record(Type.String({ pattern: '^[a-z_][a-z0-9_]{0,62}$' }), Type.Union([Type.String(), Type.Number(), Type.Boolean()]), {
        description: 'Inputs of the runbook.',
      }),
    ),
    drill_inputs: Type.Optional(
      Type.Record(Type.String({ pattern: '^[a-z_][a-z0-9_]{0,62}$' }), Type.Union([Type.String(), Type.Number(), Type.Boolean()]), {
        description:
          'Inputs that replace `inputs` in a drill (`continuity drill <service>`), e.g. a staging HAProxy: a step the runbook runs in a drill (its `drill:` setting) then acts on them, never on production.',
      }),
    ),
  },
  { additionalProperties: false, description: 'Failover policy: which probes decide, what must hold at the DR site, which runbook runs.' },
);

/** A business service with its recovery targets. */
export const ServiceSchema = Type.Object(
  {
    description: Type.Optional(Type.String({ description: 'What the service is, for people.' })),
    rto: Type.Optional(Duration('Recovery time objective: outage start to verified recovery, at most.', { default: '1h' })),
    rpo: Type.Optional(Duration('Recovery point objective: data that may be lost, at most (0s: none).', { default: '0s' })),
    active_site: Type.Optional(Id('The site serving the service now (default: the primary site).')),
    failover: Type.Optional(FailoverSchema),
  },
  { additionalProperties: false },
);

/** Roles a token can carry: viewer reads, operator starts and steers executions, approver answers approvals. */
export const ROLES = ['viewer', 'operator', 'approver', 'admin'] as const;

/** API tokens, stored as hashes, each naming a person and their roles. */
export const AuthSchema = Type.Object(
  {
    tokens: Type.Optional(
      Type.Array(
        Type.Object(
          {
            name: Type.String({ minLength: 1, description: 'Who holds the token: recorded on every action and approval.' }),
            sha256: Type.String({
              pattern: '^[0-9a-f]{64}$',
              errorMessage: "must be the 64 hex digits of the token's SHA-256 (`continuity token new` prints it); never the token itself",
              description: 'SHA-256 of the token, hex. The token itself is never stored.',
            }),
            roles: Type.Array(Type.Union(ROLES.map((r) => Type.Literal(r))), {
              minItems: 1,
              uniqueItems: true,
              description: 'viewer, operator, approver, admin.',
            }),
          },
          { additionalProperties: false },
        ),
        { default: [], description: 'Bearer tokens of the API and CLI.' },
      ),
    ),
    two_person_rule: Type.Optional(
      Type.Boolean({
        default: true,
        description: 'Live executions: whoever started one cannot approve it, and a quorum of 2 needs 2 other people.',
      }),
    ),
  },
  { additionalProperties: false, description: 'Who may call the API.' },
);

/** Where incident messages go, who is told in which order, and when customers are told. */
export const NotificationsSchema = Type.Object(
  {
    public_url: Type.Optional(
      Type.String({ description: 'How people reach this daemon (links to approve go there), e.g. https://continuity.example.com.' }),
    ),
    channels: Type.Optional(
      Type.Record(
        Type.String({ pattern: '^[a-z0-9][a-z0-9_.-]{0,62}$' }),
        Type.Object(
          {
            url: Type.String({ minLength: 1, description: 'Webhook URL, usually a ${env:...} reference (it carries a secret).' }),
            format: Type.Optional(
              Type.Union([Type.Literal('json'), Type.Literal('slack')], { default: 'json', description: 'Payload shape.' }),
            ),
            description: Type.Optional(Type.String({ description: 'Who reads it (the on-call engineer, the department lead, ...).' })),
          },
          { additionalProperties: false },
        ),
        { default: {}, additionalProperties: false, description: 'Named webhooks.' },
      ),
    ),
    escalation: Type.Optional(
      Type.Array(
        Type.Object(
          {
            notify: Type.String({ minLength: 1, description: 'The channel told at this level.' }),
            after: Duration('Time after the incident opened, without acknowledgement, before this level is told.'),
            deputy: Type.Optional(
              Type.String({
                minLength: 1,
                description: 'The channel told instead when this level is absent (the plant lead for the general manager).',
              }),
            ),
          },
          { additionalProperties: false },
        ),
        { default: [], description: 'Who is told, in order, until someone acknowledges: first responder, department lead, manager.' },
      ),
    ),
    absent: Type.Optional(
      Type.Array(Type.String(), {
        default: [],
        description: 'Channels whose people are away now: their deputies are told instead (reload with SIGHUP).',
      }),
    ),
    customer: Type.Optional(
      Type.Object(
        {
          channel: Type.String({ minLength: 1, description: 'The customer-facing channel.' }),
          after: Type.Optional(Duration('An outage lasting longer gets a customer notice.', { default: '8h' })),
        },
        { additionalProperties: false },
      ),
    ),
  },
  { additionalProperties: false, description: 'Incident notifications and the escalation chain.' },
);

/** Alerts from Prometheus Alertmanager (POST /api/v1/alertmanager): which service each alert is about. */
export const AlertmanagerSchema = Type.Object(
  {
    routes: Type.Optional(
      Type.Array(
        Type.Object(
          {
            match: Type.Record(Type.String({ pattern: '^[a-zA-Z_][a-zA-Z0-9_]*$' }), Type.String(), {
              minProperties: 1,
              description:
                'Labels the alert must carry, each with exactly this value (all of them), e.g. { alertname: OrdersDown, team: pay }.',
            }),
            service: Id('The service such an alert is about: its incident opens, or the open one is joined.'),
          },
          { additionalProperties: false },
        ),
        { default: [], description: 'Routes from alert labels to a service, tried in order: the first that matches wins.' },
      ),
    ),
    service_label: Type.Optional(
      Type.String({
        pattern: '^[a-zA-Z_][a-zA-Z0-9_]*$',
        description:
          'When no route matches: the label whose value names the service (used only when it names a configured service), e.g. service.',
      }),
    ),
  },
  { additionalProperties: false, description: "Alertmanager webhook: which alerts open or join which service's incident." },
);

const ScratchDb = (kind: string, port: number, user: string) =>
  Type.Object(
    {
      host: Type.Optional(
        Type.String({
          minLength: 1,
          default: '127.0.0.1',
          description: `The ${kind} server the scratch database is made on: never a production one.`,
        }),
      ),
      port: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535, default: port, description: 'Its port.' })),
      user: Type.Optional(Type.String({ minLength: 1, default: user, description: 'A user allowed to create and drop databases.' })),
      password: Type.Optional(
        Type.String({
          description:
            "Its password, a ${env:...} or ${file:...} reference, for the sweeper (the runbook's scratch_password input is its own reference, by default ${env:CONTINUITY_DB_PASSWORD}).",
        }),
      ),
    },
    { additionalProperties: false },
  );

/** A restore test: which backup set, which runbook, when, and where the scratch copy goes. */
export const RestoreTestSchema = Type.Object(
  {
    runbook: Type.String({
      pattern: '^[a-z0-9][a-z0-9-]{0,62}$',
      description: 'The restore-test runbook (runbooks/<name>/), e.g. restore-test-postgres, restore-test-mysql, restore-test-files.',
    }),
    version: Type.Optional(Type.Integer({ minimum: 1, description: 'Its version (default: the newest loaded).' })),
    service: Type.Optional(
      Id("The service whose RTO the restore must meet (default: the s3-backup probe's service, when it has exactly one)."),
    ),
    schedule: Type.Optional(
      Type.String({
        minLength: 1,
        default: '0 3 1 * *',
        description: 'When to run, a cron expression (minute hour day-of-month month day-of-week); default monthly, 03:00 on the 1st.',
      }),
    ),
    timezone: Type.Optional(
      Type.String({ minLength: 1, default: 'UTC', description: 'IANA time zone of the schedule, e.g. Europe/Berlin or Asia/Shanghai.' }),
    ),
    pick: Type.Optional(
      Type.Union([Type.Literal('newest'), Type.Literal('random')], {
        default: 'newest',
        description: 'Which backup: the newest, or a random one of those newer than `window` (proves older backups restore too).',
      }),
    ),
    window: Type.Optional(Duration('With pick: random, pick among backups newer than this.', { default: '30d' })),
    scratch: Type.Object(
      {
        postgres: Type.Optional(ScratchDb('PostgreSQL', 5432, 'postgres')),
        mysql: Type.Optional(ScratchDb('MySQL/MariaDB', 3306, 'root')),
        folder: Type.Optional(
          Type.String({
            pattern: '^/',
            errorMessage: 'must be an absolute path',
            description: 'The folder scratch copies are extracted under.',
          }),
        ),
      },
      {
        additionalProperties: false,
        description:
          'Where the test restores to (exactly one of postgres, mysql, folder). It is given to the runbook as its scratch_* inputs, and the sweeper looks there for continuity_restore_<execution id> leftovers of crashed tests.',
      },
    ),
    inputs: Type.Optional(
      Type.Record(Type.String({ pattern: '^[a-z_][a-z0-9_]{0,62}$' }), Type.Union([Type.String(), Type.Number(), Type.Boolean()]), {
        description: 'Further inputs of the runbook (e.g. table, min_rows). The S3 location comes from the s3-backup probe.',
      }),
    ),
  },
  { additionalProperties: false },
);

/** config/continuity.yaml. */
export const ConfigFileSchema = Type.Object(
  {
    daemon: Type.Optional(DaemonSchema),
    auth: Type.Optional(AuthSchema),
    notifications: Type.Optional(NotificationsSchema),
    alertmanager: Type.Optional(AlertmanagerSchema),
    sites: Type.Record(Type.String({ pattern: ID_PATTERN }), SiteSchema, {
      description: 'Sites by id: exactly one primary, one or more dr.',
      errorMessage: ID_MESSAGE,
      additionalProperties: false,
    }),
    services: Type.Record(Type.String({ pattern: ID_PATTERN }), ServiceSchema, {
      description: 'Business services by id, with their RTO and RPO.',
      errorMessage: ID_MESSAGE,
      additionalProperties: false,
    }),
    restore_tests: Type.Optional(
      Type.Record(Type.String({ pattern: ID_PATTERN }), RestoreTestSchema, {
        description: 'Restore tests by backup set: each key is the id of the s3-backup probe that checks the set.',
        errorMessage: ID_MESSAGE,
        additionalProperties: false,
        default: {},
      }),
    ),
  },
  { additionalProperties: false, $id: 'https://continuity.dev/schema/continuity.json', title: 'Continuity daemon config' },
);

/** The fields every probe has, whatever its kind. */
const probeCommon = {
  id: Id('Unique probe id, used in metrics labels and logs.'),
  kind: Type.Union(
    proberKinds.map((k) => Type.Literal(k)),
    { description: 'What kind of check this is; its settings go under a key of the same name.' },
  ),
  description: Type.Optional(Type.String({ description: 'What the probe proves, for people.' })),
  site: Id('The site (from config/continuity.yaml) whose target this probe checks.'),
  services: Type.Optional(Type.Array(Id('A service id'), { description: 'Services that depend on the target.', uniqueItems: true })),
  interval: Type.Optional(Duration('Time between runs.', { default: '30s' })),
  timeout: Type.Optional(Duration('A run that takes longer fails; must be shorter than the interval.', { default: '5s' })),
  failure_threshold: Type.Optional(
    Type.Integer({ minimum: 1, maximum: 100, default: 3, description: 'Consecutive failures that make the probe DOWN.' }),
  ),
  success_threshold: Type.Optional(
    Type.Integer({ minimum: 1, maximum: 100, default: 1, description: 'Consecutive successes that bring it back UP.' }),
  ),
  conditions: Type.Optional(
    Type.Array(Type.String({ minLength: 1 }), {
      description: 'CEL expressions over the observed values that must all be true, e.g. `lag_seconds < 5`.',
    }),
  ),
};

/** The probe envelope used for validation: kind settings are checked separately, against their kind. */
export const ProbeEnvelopeSchema = Type.Object(
  { ...probeCommon, ...Object.fromEntries(proberKinds.map((k) => [k, Type.Optional(Type.Unknown())])) },
  { additionalProperties: false },
);

/** probes/*.yaml. */
export const ProbesFileSchema = Type.Object(
  { probes: Type.Array(ProbeEnvelopeSchema, { description: 'The probes in this file.' }) },
  { additionalProperties: false },
);

/** Typed probe as validated (kind settings still unknown here). */
export type ProbeEnvelope = Static<typeof ProbeEnvelopeSchema>;
export type DaemonConfig = Required<Static<typeof DaemonSchema>>;
export type SiteConfig = Static<typeof SiteSchema>;
export type ServiceConfig = Static<typeof ServiceSchema>;

/**
 * The JSON Schema editors use for probes/*.yaml: the envelope with each kind's settings block typed,
 * and `if kind == X then X: required` so completion and checks follow the chosen kind.
 */
export function probesJsonSchema(): TSchema {
  const typedBlocks = Object.fromEntries(proberKinds.map((k) => [k, Type.Optional(probers[k].settings as TSchema)]));
  const probe = Type.Object({ ...probeCommon, ...typedBlocks }, { additionalProperties: false });
  const withKinds = {
    ...probe,
    allOf: proberKinds.map((k) => ({
      if: { properties: { kind: { const: k } }, required: ['kind'] },
      then: { required: [k], description: probers[k].description },
    })),
  };
  return {
    $id: 'https://continuity.dev/schema/probes.json',
    title: 'Continuity probes file',
    type: 'object',
    additionalProperties: false,
    required: ['probes'],
    properties: { probes: { type: 'array', items: withKinds } },
  } as unknown as TSchema;
}
