import { readFileSync } from 'node:fs';
import { setTimeout as delay } from 'node:timers/promises';
import { Command, InvalidArgumentError, Option } from 'commander';
import Table from 'cli-table3';
import { stringify } from 'yaml';
import { loadConfig } from '../config/load.js';
import { ROLES } from '../config/schema.js';
import { formatDuration } from '../duration.js';
import { newToken } from '../http/auth.js';
import type { ExecutionView } from '../runbooks/executor.js';
import type { InputDef, Runbook, Step } from '../runbooks/loader.js';
import { TERMINAL, type ApprovalRecord, type ExecutionRecord, type StepRecord } from '../runbooks/store.js';

/** What the runbook verbs share with the rest of the CLI. */
export interface CliShared {
  configOption: () => Option;
  /** The daemon's base URL: --url, else the config's daemon.listen. */
  daemonUrl: (o: { config: string; url?: string }) => string;
  /** cli-table3 options: plain when stdout is not a terminal. */
  tableStyle: () => object;
}

/** A failure the CLI reports as `continuity: <message>` with exit status 1. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly status?: number,
  ) {
    super(message);
  }
}

export interface ApiOptions {
  config: string;
  url?: string;
  tokenFile?: string;
}

const POLL_MS = 500;
const enc = encodeURIComponent;
const out = (text: string): void => void process.stdout.write(text + '\n');

/**
 * The token comes from --token-file or CONTINUITY_TOKEN, never from the command line, where it
 * would be kept in shell history and shown by ps.
 */
export function readToken(o: ApiOptions): string {
  if (o.tokenFile) {
    let text: string;
    try {
      text = readFileSync(o.tokenFile, 'utf8');
    } catch (err) {
      throw new CliError(`cannot read the token file ${o.tokenFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    const token = text.trim();
    if (!token) throw new CliError(`the token file ${o.tokenFile} is empty`);
    return token;
  }
  const token = process.env.CONTINUITY_TOKEN?.trim();
  if (token) return token;
  throw new CliError(
    'no API token: set CONTINUITY_TOKEN to your token (or pass --token-file <path>); an admin makes one with `continuity token new`',
  );
}

/** The daemon's HTTP API, with the caller's bearer token. */
export class Api {
  constructor(
    readonly url: string,
    private readonly token: string,
  ) {}

  get<T>(path: string): Promise<T> {
    return this.call<T>('GET', path);
  }

  post<T>(path: string, body: unknown): Promise<T> {
    return this.call<T>('POST', path, body);
  }

  put<T>(path: string, body: unknown): Promise<T> {
    return this.call<T>('PUT', path, body);
  }

  delete<T>(path: string): Promise<T> {
    return this.call<T>('DELETE', path);
  }

  private async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res: Response;
    try {
      res = await fetch(this.url + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(10_000),
      });
    } catch (err) {
      // The same words as `continuity status`.
      throw new CliError(`no daemon answers at ${this.url}: ${(err as Error).message}`);
    }
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      // Not JSON: keep the text for the message.
    }
    if (!res.ok) {
      const e = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as { error?: string; message?: string };
      let message = `${res.status} ${e.error ?? res.statusText}: ${e.message ?? (text || 'no message')}`;
      if (res.status === 401) message += ' (check the token in CONTINUITY_TOKEN or --token-file)';
      throw new CliError(message, res.status);
    }
    return parsed as T;
  }
}

/** Runs an action; a CliError becomes a message on stderr and exit status 1. */
export function act<A extends unknown[]>(fn: (...args: A) => Promise<void> | void): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (err) {
      if (!(err instanceof CliError)) throw err;
      process.stderr.write(`continuity: ${err.message}\n`);
      process.exitCode = 1;
    }
  };
}

const positiveInt = (what: string) => (text: string) => {
  if (!/^[1-9][0-9]*$/.test(text)) throw new InvalidArgumentError(`${what} must be a whole number of at least 1`);
  return Number(text);
};
const collect = (value: string, previous: string[] | undefined) => [...(previous ?? []), value];

/** An --input value: a number or boolean when it looks like one ("0042" stays text), text otherwise. */
export function parseInputValue(text: string): string | number | boolean {
  if (text === 'true') return true;
  if (text === 'false') return false;
  if (/^-?(0|[1-9][0-9]*)(\.[0-9]+)?$/.test(text)) return Number(text);
  return text;
}

// --- formatting ------------------------------------------------------------------------------

const time = (ms: number | undefined) => (ms === undefined ? '-' : new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z'));
const isoTime = (iso: string) => iso.replace(/\.\d{3}Z$/, 'Z');
const value = (v: unknown) => JSON.stringify(v);

/** Aligned `key  value` lines. */
function fields(rows: Array<[string, string | undefined]>, indent = ''): string[] {
  const shown = rows.filter((r): r is [string, string] => r[1] !== undefined);
  const width = Math.max(...shown.map(([k]) => k.length)) + 1;
  return shown.map(([k, v]) => `${indent}${`${k}:`.padEnd(width)} ${v}`);
}

function inputLines(inputs: Record<string, unknown>, indent: string): string[] {
  const entries = Object.entries(inputs);
  if (entries.length === 0) return [`${indent}inputs: none`];
  return [
    `${indent}inputs:`,
    ...fields(
      entries.map(([k, v]) => [k, value(v)]),
      `${indent}  `,
    ),
  ];
}

function timelineLine(e: ExecutionView['timeline'][number]): string {
  return `${isoTime(e.at)}  ${e.type.padEnd(18)}  ${e.message}`;
}

/** The steps of an execution in the runbook's order, the ones not reached yet included. */
function stepsTable(view: ExecutionView, style: object): string {
  const t = new Table({ head: ['step', 'kind', 'status', 'attempt', 'duration', 'reason'], ...style });
  const key = (phase: string, id: string) => `${phase}:${id}`;
  const records = new Map(view.steps.map((s) => [key(s.phase, s.step), s]));
  const rows: Array<{ id: string; kind: string; phase: string; rec?: StepRecord }> = view.plan.map((p) => ({
    id: p.id,
    kind: p.kind,
    phase: p.phase,
    rec: records.get(key(p.phase, p.id)),
  }));
  // Records of steps the loaded runbook no longer has (its file changed or is gone).
  const planned = new Set(view.plan.map((p) => key(p.phase, p.id)));
  for (const s of view.steps) if (!planned.has(key(s.phase, s.step))) rows.push({ id: s.step, kind: s.kind, phase: s.phase, rec: s });
  for (const { id, kind, phase, rec } of rows) {
    let status = rec?.status ?? '-';
    if (rec?.retrying) status += ' (retrying)';
    if (rec?.continued) status += ' (continued)';
    let duration = '-';
    if (rec?.durationSeconds !== undefined) duration = formatDuration(rec.durationSeconds * 1000);
    else if (rec?.requestedAt !== undefined && rec.finishedAt !== undefined) duration = formatDuration(rec.finishedAt - rec.requestedAt);
    const reason = rec?.reason ?? (rec?.status === 'waiting' ? `expires ${time(rec.expiresAt)}` : '');
    t.push([
      phase === 'rollback' ? `${id} (rollback)` : id,
      kind,
      status,
      rec && rec.attempt > 0 ? String(rec.attempt) : '-',
      duration,
      reason,
    ]);
  }
  return t.toString();
}

/** For a dry run: each step's settings as they would be sent, rendered (outputs of earlier steps as placeholders). */
function planLines(view: ExecutionView): string[] {
  const planned = view.steps.filter((s) => s.status === 'planned');
  if (planned.length === 0) return [];
  const lines = ['plan (nothing was run):'];
  for (const s of planned) {
    lines.push(`  ${s.phase === 'rollback' ? `${s.step} (rollback)` : s.step} (${s.kind}):`);
    const text = s.plan === undefined ? 'no settings\n' : stringify(s.plan);
    for (const l of text.trimEnd().split('\n')) lines.push(`    ${l}`);
  }
  return lines;
}

/** When people are needed: what they are asked, and the exact commands that answer. */
function waitingLines(view: ExecutionView, how: string): string[] {
  const ex = view.execution;
  if (ex.status === 'awaiting_decision') {
    const stuck = view.steps.find((s) => s.status === 'started' && s.phase === ex.phase);
    const step = stuck?.step ?? '<step>';
    return [
      `waiting for an operator: step ${step} started at ${time(stuck?.startedAt)} without a recorded result, and it is not idempotent`,
      `  to run it again: continuity retry ${ex.id} ${step}${how}`,
      `  to skip it:      continuity skip ${ex.id} ${step}${how}`,
      `  to stop:         continuity abort ${ex.id}${how}`,
    ];
  }
  const waiting = view.steps.find((s) => s.status === 'waiting');
  if (!waiting || TERMINAL.has(ex.status)) return [];
  const asked = [...view.timeline]
    .reverse()
    .find((e) => e.step === waiting.step && (e.type === 'approval_needed' || e.type === 'approval_escalated'));
  const answered = view.approvals.filter((a: ApprovalRecord) => a.step === waiting.step && a.hash === ex.hash);
  return [
    `approval waiting: step ${waiting.step}`,
    ...fields(
      [
        ['asked', asked?.message.replace(`${waiting.step}: `, '')],
        ['runbook', `${ex.runbook} v${ex.version}`],
        ['sha256', ex.hash],
        ['mode', ex.mode],
        ['requested by', ex.requestedBy],
        ['approved by', answered.length ? answered.map((a) => a.who).join(', ') : undefined],
        ['expires', time(waiting.expiresAt)],
      ],
      '  ',
    ),
    ...inputLines(ex.inputs, '  '),
    `  to approve: continuity approve ${ex.id}${how}`,
    `  to deny:    continuity deny ${ex.id}${how} --comment "<why>"`,
  ];
}

function executionText(view: ExecutionView, style: object, how: string): string {
  const ex = view.execution;
  const lines = [
    ...fields([
      ['execution', ex.id],
      ['runbook', `${ex.runbook} v${ex.version}`],
      ['sha256', ex.hash],
      ['mode', ex.mode],
      ['status', ex.status],
      ['reason', ex.reason],
      ['requested by', ex.requestedBy],
      ['started', time(ex.createdAt)],
      ['finished', ex.finishedAt === undefined ? undefined : time(ex.finishedAt)],
    ]),
    ...inputLines(ex.inputs, ''),
    '',
    'steps:',
    stepsTable(view, style),
    '',
    'timeline:',
    ...view.timeline.map((e) => `  ${timelineLine(e)}`),
  ];
  const plan = planLines(view);
  if (plan.length) lines.push('', ...plan);
  const waiting = waitingLines(view, how);
  if (waiting.length) lines.push('', ...waiting);
  return lines.join('\n');
}

/** Options to repeat in the commands printed for the next person (never the token). */
function howToReach(o: ApiOptions, cmd: Command): string {
  if (o.url) return ` --url ${shellWord(o.url)}`;
  return cmd.getOptionValueSource('config') === 'cli' ? ` -c ${shellWord(o.config)}` : '';
}

/** A word as a POSIX shell reads it back. */
const shellWord = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

function describeStep(s: Step): string[] {
  const kind = s.approval ? `approval: ${s.approval.quorum} of ${s.approval.roles.join('/')}` : s.kind;
  const idempotent = s.kind === 'approval' ? '-' : s.idempotent ? (s.retries ? `yes, ${s.retries.max} retries` : 'yes') : 'no';
  const drill =
    typeof s.drill === 'object'
      ? `with ${Object.entries(s.drill.inputs)
          .map(([k, v]) => `${k}=${value(v)}`)
          .join(', ')}`
      : s.drill;
  return [s.id, kind, idempotent, formatDuration(s.timeoutMs), s.when?.source ?? '-', s.onFailure, drill];
}

function describeInput(i: InputDef): string[] {
  const allowed = [i.pattern ? `pattern ${i.pattern}` : '', i.enum ? `one of ${i.enum.map(value).join(', ')}` : '']
    .filter(Boolean)
    .join('; ');
  return [i.name, i.type, i.required ? 'yes' : 'no', i.default === undefined ? '-' : value(i.default), allowed || '-', i.description ?? ''];
}

function runbookText(rb: Runbook, style: object): string {
  const lines = fields([
    ['runbook', rb.name],
    ['version', String(rb.version)],
    ['sha256', rb.hash],
    ['file', rb.file],
    ['description', rb.description],
    ['timeout', formatDuration(rb.timeoutMs)],
  ]);
  if (rb.inputs.length === 0) lines.push('inputs: none');
  else {
    const t = new Table({ head: ['input', 'type', 'required', 'default', 'allowed', 'description'], ...style });
    for (const i of rb.inputs) t.push(describeInput(i));
    lines.push('inputs:', t.toString());
  }
  const head = ['step', 'kind', 'idempotent', 'timeout', 'when', 'on failure', 'drill'];
  const steps = new Table({ head, ...style });
  for (const s of rb.steps) steps.push(describeStep(s));
  lines.push('steps:', steps.toString());
  if (rb.rollback.length) {
    const rollback = new Table({ head, ...style });
    for (const s of rb.rollback) rollback.push(describeStep(s));
    lines.push('rollback (run when a step fails with on_failure rollback, or an approval is denied):', rollback.toString());
  }
  return lines.join('\n');
}

/** A YAML scalar for a flow mapping: plain when safe, double-quoted (JSON is valid YAML) otherwise. */
const yamlScalar = (s: string) => (/^[A-Za-z0-9_.@][A-Za-z0-9_.@ -]*$/.test(s) && !/\s$/.test(s) ? s : JSON.stringify(s));

// --- the verbs -------------------------------------------------------------------------------

/** What every verb that talks to the daemon shares: its options (config, URL, token file) and the client. */
export function apiVerbs(program: Command, shared: CliShared) {
  return {
    connect: (o: ApiOptions) => new Api(shared.daemonUrl(o), readToken(o)),
    apiCommand: (name: string, description: string) =>
      program
        .command(name)
        .description(description)
        .addOption(shared.configOption())
        .option('--url <url>', "the daemon's base URL (default: from the config's daemon.listen)")
        .option('--token-file <path>', 'read the API token from this file (default: the CONTINUITY_TOKEN environment variable)'),
  };
}

export function registerRunbookCommands(program: Command, shared: CliShared): void {
  const style = shared.tableStyle;
  const { connect, apiCommand } = apiVerbs(program, shared);

  apiCommand('run', 'start an execution of a runbook; prints its id and status')
    .argument('<runbook>', 'the runbook name')
    .option('--version <n>', 'the version to run (default: the newest)', positiveInt('--version'))
    .addOption(
      new Option('--mode <mode>', 'live, drill, or dry-run (renders every step, runs none)')
        .choices(['live', 'drill', 'dry-run'])
        .default('live'),
    )
    .option(
      '--input <key=value>',
      'an input; repeat for each (numbers and true/false are typed unless the input is declared text)',
      collect,
    )
    .option('--idempotency-key <key>', 'the same key starts the same execution once (e.g. the incident id)')
    .option(
      '--wait',
      'follow the timeline until the execution finishes or waits for people; exit 1 when it ends failed, aborted or rolled back',
    )
    .action(
      act(
        async (
          name: string,
          o: ApiOptions & { version?: number; mode: string; input?: string[]; idempotencyKey?: string; wait?: boolean },
          cmd: Command,
        ) => {
          const given = new Map<string, string>();
          for (const pair of o.input ?? []) {
            const eq = pair.indexOf('=');
            if (eq <= 0) throw new CliError(`--input ${pair}: expected key=value`);
            const key = pair.slice(0, eq);
            if (given.has(key)) throw new CliError(`--input ${key} is given twice`);
            given.set(key, pair.slice(eq + 1));
          }
          const api = connect(o);
          const declared = given.size ? await declaredInputs(api, name, o.version) : new Map<string, InputDef['type']>();
          const inputs = Object.fromEntries(
            [...given].map(([k, v]) => [k, declared.get(k) === 'string' || declared.get(k) === 'secret' ? v : parseInputValue(v)]),
          );
          const { created, execution } = await api.post<{ created: boolean; execution: ExecutionRecord }>(
            `/api/v1/runbooks/${enc(name)}/executions`,
            {
              inputs,
              mode: o.mode,
              ...(o.version ? { version: o.version } : {}),
              ...(o.idempotencyKey ? { idempotency_key: o.idempotencyKey } : {}),
            },
          );
          out(
            `${created ? 'started' : 'already started'} ${execution.id}: ${execution.status} (${execution.runbook} v${execution.version}, ${execution.mode})`,
          );
          if (!o.wait) return;
          const view = await follow(api, execution.id);
          const ex = view.execution;
          const plan = ex.status === 'succeeded' ? planLines(view) : [];
          if (plan.length) out(plan.join('\n'));
          out(`${ex.id}: ${ex.status}${ex.reason ? ` (${ex.reason})` : ''}`);
          const waiting = waitingLines(view, howToReach(o, cmd));
          if (waiting.length) out(waiting.join('\n'));
          if (TERMINAL.has(ex.status) && ex.status !== 'succeeded') process.exitCode = 1;
        },
      ),
    );

  apiCommand('executions', 'list executions, newest first')
    .option('--limit <n>', 'how many (default 100)', positiveInt('--limit'))
    .option('--json', 'print the execution records as JSON')
    .action(
      act(async (o: ApiOptions & { limit?: number; json?: boolean }) => {
        const list = await connect(o).get<ExecutionRecord[]>(`/api/v1/executions${o.limit ? `?limit=${o.limit}` : ''}`);
        if (o.json) return out(JSON.stringify(list, null, 2));
        if (list.length === 0) return out('no executions');
        const t = new Table({ head: ['id', 'runbook', 'version', 'mode', 'status', 'requested by', 'started', 'reason'], ...style() });
        for (const e of list)
          t.push([e.id, e.runbook, String(e.version), e.mode, e.status, e.requestedBy, time(e.createdAt), e.reason ?? '']);
        out(t.toString());
      }),
    );

  apiCommand('execution', 'one execution: its steps and timeline, and what is waiting for an answer')
    .argument('<id>', 'the execution id')
    .option('--json', 'print the execution view as JSON')
    .action(
      act(async (id: string, o: ApiOptions & { json?: boolean }, cmd: Command) => {
        const view = await connect(o).get<ExecutionView>(`/api/v1/executions/${enc(id)}`);
        if (o.json) return out(JSON.stringify(view, null, 2));
        out(executionText(view, style(), howToReach(o, cmd)));
      }),
    );

  const answer = (decision: 'approve' | 'deny') =>
    act(async (id: string, o: ApiOptions & { comment?: string }) => {
      const api = connect(o);
      // What the approver sees is what is approved: the hash sent is the one of the record shown.
      const view = await api.get<ExecutionView>(`/api/v1/executions/${enc(id)}`);
      const ex = view.execution;
      const waiting = view.steps.find((s) => s.status === 'waiting');
      if (!waiting || TERMINAL.has(ex.status)) throw new CliError(`execution ${id} is ${ex.status}, not waiting for an approval`, 409);
      out(
        [
          `${decision === 'approve' ? 'approving' : 'denying'} step ${waiting.step} of ${ex.id}:`,
          ...fields(
            [
              ['runbook', `${ex.runbook} v${ex.version}`],
              ['sha256', ex.hash],
              ['mode', ex.mode],
              ['requested by', ex.requestedBy],
            ],
            '  ',
          ),
          ...inputLines(ex.inputs, '  '),
        ].join('\n'),
      );
      const { approval } = await api.post<{ approval: ApprovalRecord }>(`/api/v1/executions/${enc(id)}/approvals`, {
        decision,
        hash: ex.hash,
        step: waiting.step,
        ...(o.comment ? { comment: o.comment } : {}),
      });
      out(`${decision === 'approve' ? 'approved' : 'denied'} by ${approval.who}: recorded for sha256 ${approval.hash.slice(0, 12)}…`);
    });

  apiCommand('approve', 'approve the approval an execution waits for, after showing what it approves')
    .argument('<id>', 'the execution id')
    .option('--comment <text>', 'why, for the timeline and the audit')
    .action(answer('approve'));

  apiCommand('deny', 'deny the approval an execution waits for: it stops, running its rollback steps if it has any')
    .argument('<id>', 'the execution id')
    .requiredOption('--comment <text>', 'why, for the timeline and the audit')
    .action(answer('deny'));

  for (const [verb, description] of [
    ['retry', 'run again a non-idempotent step that started without a recorded result'],
    ['skip', 'skip a non-idempotent step that started without a recorded result'],
  ] as const) {
    apiCommand(verb, description)
      .argument('<id>', 'the execution id')
      .argument('<step>', 'the step id')
      .option('--comment <text>', 'why, for the timeline and the audit')
      .action(
        act(async (id: string, step: string, o: ApiOptions & { comment?: string }) => {
          await connect(o).post(`/api/v1/executions/${enc(id)}/steps/${enc(step)}/${verb}`, o.comment ? { comment: o.comment } : {});
          out(`${verb} of step ${step} of ${id}: accepted`);
        }),
      );
  }

  apiCommand('abort', 'stop an execution at the next step boundary (a running step is aborted)')
    .argument('<id>', 'the execution id')
    .option('--comment <text>', 'why, for the timeline and the audit')
    .action(
      act(async (id: string, o: ApiOptions & { comment?: string }) => {
        await connect(o).post(`/api/v1/executions/${enc(id)}/abort`, o.comment ? { comment: o.comment } : {});
        out(`abort of ${id}: accepted`);
      }),
    );

  const runbook = program.command('runbook').description("the config's runbooks, read from their files (no daemon needed)");
  runbook
    .command('list')
    .description('every runbook version')
    .addOption(shared.configOption())
    .action((o: { config: string }) => {
      const set = loadConfig(o.config).runbooks;
      if (set.all.length === 0) return out('no runbooks');
      const t = new Table({ head: ['runbook', 'version', 'sha256', 'description'], ...style() });
      for (const r of [...set.all].sort((a, b) => a.name.localeCompare(b.name) || a.version - b.version))
        t.push([r.name, String(r.version), `${r.hash.slice(0, 12)}…`, r.description]);
      out(t.toString());
    });
  runbook
    .command('show')
    .description('one runbook version: inputs, steps and rollback steps')
    .argument('<name>', 'the runbook name')
    .argument('[version]', 'the version (default: the newest)', positiveInt('version'))
    .addOption(shared.configOption())
    .action(
      act((name: string, version: number | undefined, o: { config: string }) => {
        const set = loadConfig(o.config).runbooks;
        const rb = set.get(name, version);
        if (!rb) {
          const versions = set.all.filter((r) => r.name === name).map((r) => r.version);
          throw new CliError(
            versions.length
              ? `no version ${version} of runbook ${name} (versions: ${versions.sort((a, b) => a - b).join(', ')})`
              : `no runbook ${name} (runbooks: ${set.names().join(', ') || 'none'})`,
          );
        }
        out(runbookText(rb, style()));
      }),
    );

  const token = program.command('token').description('API tokens');
  token
    .command('new')
    .description('make a token for a person: prints it once, and the line that admits it in the config')
    .requiredOption('--name <person>', 'who holds it: recorded on every action and approval')
    .requiredOption('--roles <roles>', `comma-separated: ${ROLES.join(', ')}`)
    .action(
      act((o: { name: string; roles: string }) => {
        const name = o.name.trim();
        if (!name) throw new CliError('--name is empty');
        const roles = [...new Set(o.roles.split(',').map((r) => r.trim()))].filter(Boolean);
        const unknown = roles.filter((r) => !(ROLES as readonly string[]).includes(r));
        if (roles.length === 0 || unknown.length) {
          throw new CliError(`--roles ${o.roles}: ${unknown.length ? `unknown ${unknown.join(', ')}; ` : ''}roles are ${ROLES.join(', ')}`);
        }
        const { token: secret, sha256 } = newToken();
        out(
          [
            `token for ${name} (shown once, and stored nowhere: hand it over now):`,
            '',
            `  ${secret}`,
            '',
            'add this line under auth.tokens in the config, then reload the daemon (SIGHUP):',
            '',
            `    - { name: ${yamlScalar(name)}, sha256: ${sha256}, roles: [${roles.join(', ')}] }`,
          ].join('\n'),
        );
      }),
    );
}

/** The declared types of a runbook version's inputs, so text inputs stay text; empty when unknown. */
async function declaredInputs(api: Api, name: string, version: number | undefined): Promise<Map<string, InputDef['type']>> {
  try {
    let v = version;
    if (v === undefined) {
      const all = await api.get<Array<{ name: string; version: number }>>('/api/v1/runbooks');
      v = Math.max(0, ...all.filter((r) => r.name === name).map((r) => r.version));
      if (v === 0) return new Map();
    }
    const rb = await api.get<{ inputs: InputDef[] }>(`/api/v1/runbooks/${enc(name)}/versions/${v}`);
    return new Map(rb.inputs.map((i) => [i.name, i.type]));
  } catch (err) {
    // An unknown runbook or version: starting it says so.
    if (err instanceof CliError && err.status === 404) return new Map();
    throw err;
  }
}

/** Prints each new timeline event until the execution finishes or waits for people. */
async function follow(api: Api, id: string): Promise<ExecutionView> {
  let seen = 0;
  for (;;) {
    const view = await api.get<ExecutionView>(`/api/v1/executions/${enc(id)}`);
    for (const e of view.timeline.slice(seen)) out(timelineLine(e));
    seen = view.timeline.length;
    const s = view.execution.status;
    if (TERMINAL.has(s) || s === 'waiting_approval' || s === 'awaiting_decision') return view;
    await delay(POLL_MS);
  }
}
