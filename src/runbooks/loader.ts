import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import type { TSchema } from '@sinclair/typebox';
import type { Redis } from 'ioredis';
import { formatPath, type ConfigIssue } from '../config/errors.js';
import { schemaIssues, withDefaults } from '../config/validate.js';
import { YamlFile } from '../config/yaml-file.js';
import { parseDuration } from '../duration.js';
import { compileExpression, type CompiledExpression } from '../probers/conditions.js';
import { RunbookFileSchema, StepEnvelopeSchema, stepSettingsSchema, type ApprovalConfig, type StepEnvelope } from './schema.js';
import { stepKinds } from './steps/index.js';
import { findRefs, parseRef } from './template.js';

/** A declared input. */
export interface InputDef {
  name: string;
  type: 'string' | 'integer' | 'number' | 'boolean' | 'secret';
  required: boolean;
  default?: string | number | boolean;
  pattern?: string;
  enum?: Array<string | number>;
  description?: string;
}

/** One step, validated, its settings still holding their templates. */
export interface Step {
  id: string;
  kind: string;
  description?: string;
  timeoutMs: number;
  idempotent: boolean;
  retries?: { max: number; backoffMs: number };
  when?: CompiledExpression;
  onFailure: 'abort' | 'continue' | 'rollback';
  /** Groups steps for timing (restore tests: prepare, restore, validate, cleanup). */
  stage?: string;
  drill: 'run' | 'skip' | { inputs: Record<string, string | number | boolean> };
  outputs: Record<string, CompiledExpression>;
  settings: unknown;
  /** For kind approval. */
  approval?: ApprovalConfig;
  phase: 'main' | 'rollback';
}

/** One immutable version of a runbook. */
export interface Runbook {
  name: string;
  version: number;
  /** sha256 of the file's bytes: what an approval approves. */
  hash: string;
  /** The file as shown to people (relative to the working directory). */
  file: string;
  /** The file's absolute path. */
  path: string;
  description: string;
  /** When people last reviewed this version (the file's `reviewed:`), epoch ms of that day 00:00 UTC. */
  reviewedAt?: number;
  timeoutMs: number;
  inputs: InputDef[];
  steps: Step[];
  rollback: Step[];
  notifications: Array<{ url: string; format: 'json' | 'slack'; events?: string[] }>;
}

/** Every loaded runbook version, by name and version. */
export class RunbookSet {
  private readonly byKey = new Map<string, Runbook>();

  constructor(readonly all: Runbook[]) {
    for (const r of all) this.byKey.set(`${r.name}@${r.version}`, r);
  }

  get(name: string, version?: number): Runbook | undefined {
    if (version !== undefined) return this.byKey.get(`${name}@${version}`);
    return this.all.filter((r) => r.name === name).sort((a, b) => b.version - a.version)[0];
  }

  names(): string[] {
    return [...new Set(this.all.map((r) => r.name))].sort();
  }
}

const VERSION_FILE = /^v([1-9][0-9]*)\.ya?ml$/;

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function display(file: string): string {
  const rel = relative(process.cwd(), file);
  return rel.startsWith('..') ? file : rel;
}

/**
 * Loads runbooks/<name>/v<N>.yaml, every file, and reports every problem at once. Step settings
 * are checked against their kind with templates standing in for values, and every template and
 * condition reference is checked against the declared inputs and earlier steps' outputs.
 */
export function loadRunbooks(dir: string): { runbooks: RunbookSet; issues: ConfigIssue[] } {
  const issues: ConfigIssue[] = [];
  const out: Runbook[] = [];
  // No folder, no runbooks: a service that names a runbook is what fails validation then.
  if (!existsSync(dir)) return { runbooks: new RunbookSet([]), issues: [] };
  if (!statSync(dir).isDirectory()) {
    return { runbooks: new RunbookSet([]), issues: [{ file: display(dir), path: '', message: 'is not a folder' }] };
  }
  for (const name of readdirSync(dir).sort()) {
    const folder = join(dir, name);
    if (!statSync(folder).isDirectory()) continue;
    for (const fileName of readdirSync(folder).sort()) {
      if (!/\.ya?ml$/.test(fileName)) continue;
      const file = join(folder, fileName);
      const mine: ConfigIssue[] = [];
      const r = loadRunbookFile(file, name, fileName, mine);
      if (r) out.push(r);
      // In line order, the way a person fixes them.
      issues.push(
        ...mine
          .map((issue, n) => ({ issue, n }))
          .sort((a, b) => (a.issue.line ?? 0) - (b.issue.line ?? 0) || a.n - b.n)
          .map(({ issue }) => issue),
      );
    }
  }
  return { runbooks: new RunbookSet(out), issues };
}

function loadRunbookFile(path: string, folderName: string, fileName: string, issues: ConfigIssue[]): Runbook | undefined {
  const file = display(path);
  const bytes = readFileSync(path);
  const read = YamlFile.parse(bytes.toString('utf8'), file);
  issues.push(...read.issues);
  const yaml = read.yaml;
  if (!yaml) return undefined;
  const before = issues.length;
  const raw = yaml.data();
  const issue = (at: Array<string | number>, message: string, key = false) =>
    issues.push({ file, line: yaml.lineOf(at, key), path: formatPath(at), message });

  issues.push(...schemaIssues(RunbookFileSchema, raw, { file, yaml, at: [] }));
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) return undefined;
  // From here on every check runs on the parts that are well-formed, so one run reports everything.
  const rb = withDefaults<
    Required<Omit<import('./schema.js').RunbookFile, 'inputs' | 'rollback' | 'notifications'>> & import('./schema.js').RunbookFile
  >(RunbookFileSchema, raw);
  const m = VERSION_FILE.exec(fileName);
  if (typeof rb.name === 'string' && rb.name !== folderName)
    issue(['name'], `"${rb.name}" must be the name of the folder it is in ("${folderName}")`);
  if (!m) issue([], `the file name must be v<version>.yaml (e.g. v${rb.version}.yaml)`);
  else if (typeof rb.version === 'number' && Number(m[1]) !== rb.version)
    issue(['version'], `${rb.version} does not match the file name ${fileName}`);
  const reviewedAt = typeof rb.reviewed === 'string' ? reviewedDate(rb.reviewed) : undefined;
  if (typeof reviewedAt === 'string') issue(['reviewed'], reviewedAt);

  const inputEntries = Object.entries(isPlainObject(rb.inputs) ? rb.inputs : {}).filter(
    ([, d]) => isPlainObject(d) && typeof d.type === 'string',
  );
  const inputs: InputDef[] = inputEntries.map(([name, d]) => ({
    name,
    type: d.type,
    required: d.required ?? false,
    default: d.default,
    pattern: d.pattern,
    enum: d.enum,
    description: d.description,
  }));
  for (const input of inputs) {
    if (input.pattern !== undefined) {
      try {
        new RegExp(input.pattern);
      } catch (err) {
        issue(['inputs', input.name, 'pattern'], `not a regular expression: ${(err as Error).message}`);
      }
    }
    if (input.default !== undefined) {
      const problem = inputProblem(input, input.default);
      if (problem) issue(['inputs', input.name, 'default'], problem);
    }
  }
  const inputNames = new Set(inputs.map((i) => i.name));

  const known = new Map<string, Set<string>>(); // step id -> outputs, of steps before the current one
  const ids = new Set<string>();
  const buildSteps = (list: StepEnvelope[], phase: 'main' | 'rollback'): Step[] =>
    list.flatMap((raw_, index) => {
      const at = [phase === 'main' ? 'steps' : 'rollback', index];
      if (!isPlainObject(raw_)) return [];
      const s = withDefaults<Required<StepEnvelope>>(StepEnvelopeSchema, raw_);
      const n = issues.length;
      if (typeof s.id === 'string') {
        if (ids.has(s.id)) issue([...at, 'id'], `"${s.id}" is already a step of this runbook`);
        ids.add(s.id);
      }
      // A step whose envelope is wrong (already reported) still has its kind's settings checked.
      if (schemaIssues(StepEnvelopeSchema, raw_, { file, at: [] }).length > 0) {
        const loose = raw_ as Record<string, unknown>;
        const kind = loose.kind;
        if (
          typeof kind === 'string' &&
          (kind in stepKinds || kind === 'approval') &&
          isPlainObject(loose[kind]) &&
          findRefs(loose[kind]).length === 0
        ) {
          issues.push(...schemaIssues(stepSettingsSchema(kind) as TSchema, loose[kind], { file, yaml, at: [...at, kind] }));
        }
        return [];
      }
      if (s.retries && !s.idempotent) {
        issue(
          [...at, 'retries'],
          'retries are allowed only on a step marked idempotent: true (a non-idempotent step must never run twice)',
        );
      }
      const rawObj = raw_ as Record<string, unknown>;
      for (const other of [...Object.keys(stepKinds), 'approval']) {
        if (other !== s.kind && other in rawObj) issue([...at, other], `settings for kind ${other} in a step of kind ${s.kind}`, true);
      }
      if (s.kind === 'approval' && s.idempotent) issue([...at, 'idempotent'], 'an approval is a gate, not an action: leave idempotent out');
      const settingsRaw = rawObj[s.kind] ?? (s.kind === 'approval' ? {} : undefined);
      let settings: unknown;
      if (settingsRaw === undefined) {
        issue(at, `a step of kind ${s.kind} needs its settings under "${s.kind}:"`);
      } else {
        settings = checkSettings(s.kind, settingsRaw, [...at, s.kind], { file, yaml, issues, inputs, inputNames, known, issue });
      }
      // References in templates, `when` and outputs.
      const stepVars = { inputs: 'map', steps: 'map' } as const;
      let when: CompiledExpression | undefined;
      if (s.when) {
        try {
          when = compileExpression(s.when, stepVars, 'bool');
          for (const problem of celRefProblems(s.when, inputNames, known)) issue([...at, 'when'], problem);
        } catch (err) {
          issue([...at, 'when'], `"${s.when}": ${(err as Error).message}`);
        }
      }
      const outputs: Record<string, CompiledExpression> = {};
      const resultTypes = s.kind === 'approval' ? {} : stepKinds[s.kind as keyof typeof stepKinds].result;
      for (const [name, expr] of Object.entries(s.outputs ?? {})) {
        try {
          outputs[name] = compileExpression(expr, { result: 'map' });
          for (const ref of expr.matchAll(/\bresult\.([a-z_][a-z0-9_]*)/g)) {
            if (!(ref[1]! in resultTypes)) {
              issue(
                [...at, 'outputs', name],
                `"${expr}": result.${ref[1]} is not a result of kind ${s.kind} (results: ${Object.keys(resultTypes).join(', ') || 'none'})`,
              );
            }
          }
        } catch (err) {
          issue([...at, 'outputs', name], `"${expr}": ${(err as Error).message}`);
        }
      }
      if (typeof s.drill === 'object') {
        for (const name of Object.keys(s.drill.inputs)) {
          if (!inputNames.has(name))
            issue([...at, 'drill', 'inputs', name], `unknown input "${name}" (inputs: ${[...inputNames].join(', ') || 'none'})`, true);
        }
      }
      if (phase === 'main') known.set(s.id, new Set(Object.keys(s.outputs ?? {})));
      if (issues.length > n) return [];
      return [
        {
          id: s.id,
          kind: s.kind,
          description: s.description,
          timeoutMs: parseDuration(s.timeout),
          idempotent: s.idempotent,
          ...(s.retries ? { retries: { max: s.retries.max, backoffMs: parseDuration(s.retries.backoff ?? '1s') } } : {}),
          ...(when ? { when } : {}),
          onFailure: s.on_failure,
          ...(s.stage ? { stage: s.stage } : {}),
          drill: s.drill as Step['drill'],
          outputs,
          settings,
          ...(s.kind === 'approval' ? { approval: settings as ApprovalConfig } : {}),
          phase,
        },
      ];
    });
  const stepList = Array.isArray(rb.steps) ? rb.steps : [];
  const rollbackList = Array.isArray(rb.rollback) ? rb.rollback : [];
  const steps = buildSteps(stepList, 'main');
  const rollback = buildSteps(rollbackList, 'rollback');
  stepList.forEach((s, i) => {
    if (isPlainObject(s) && s.on_failure === 'rollback' && rollbackList.length === 0) {
      issue(['steps', i, 'on_failure'], 'rollback needs rollback steps, and this runbook has none');
    }
  });

  if (issues.length > before) return undefined;
  return {
    name: rb.name,
    version: rb.version,
    hash: createHash('sha256').update(bytes).digest('hex'),
    file,
    path,
    description: rb.description,
    ...(typeof reviewedAt === 'number' ? { reviewedAt } : {}),
    timeoutMs: parseDuration(rb.timeout),
    inputs,
    steps,
    rollback,
    notifications: (rb.notifications ?? []).map((n) => ({
      url: n.url,
      format: n.format ?? 'json',
      ...(n.events ? { events: n.events } : {}),
    })),
  };
}

/** Time zones run up to 14 hours ahead of UTC: a date is in the future only once it is nowhere today yet. */
const AHEAD_OF_UTC_MS = 14 * 3600_000;

/** A `reviewed:` date as epoch ms (00:00 UTC that day), or why it is not one. */
function reviewedDate(text: string): number | string | undefined {
  const m = /^([0-9]{4})-([0-9]{2})-([0-9]{2})$/.exec(text);
  if (!m) return undefined; // the schema reports the shape
  const at = Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]));
  if (new Date(at).toISOString().slice(0, 10) !== text) return `"${text}" is not a date`;
  if (at > Date.now() + AHEAD_OF_UTC_MS) return `"${text}" is in the future`;
  return at;
}

interface SettingsContext {
  file: string;
  yaml: YamlFile;
  issues: ConfigIssue[];
  inputs: InputDef[];
  inputNames: Set<string>;
  known: Map<string, Set<string>>;
  issue: (at: Array<string | number>, message: string, key?: boolean) => void;
}

/** A sample value of each input type, so settings with templates can be type-checked at load. */
const SAMPLE: Record<InputDef['type'], unknown> = { string: 'sample', secret: 'sample', integer: 1, number: 1, boolean: true };

function checkSettings(kind: string, raw: unknown, at: Array<string | number>, ctx: SettingsContext): unknown {
  const refs = findRefs(raw);
  const pathsWithOutputs = new Set<string>();
  for (const ref of refs) {
    try {
      const r = parseRef(ref.expr);
      if (r.type === 'input' && !ctx.inputNames.has(r.name)) {
        ctx.issue([...at, ...ref.at], `{{ ${ref.expr} }}: unknown input "${r.name}" (inputs: ${[...ctx.inputNames].join(', ') || 'none'})`);
      } else if (r.type === 'output') {
        pathsWithOutputs.add(JSON.stringify(ref.at));
        const outs = ctx.known.get(r.step);
        if (!outs) ctx.issue([...at, ...ref.at], `{{ ${ref.expr} }}: no earlier step "${r.step}"`);
        else if (!outs.has(r.name))
          ctx.issue(
            [...at, ...ref.at],
            `{{ ${ref.expr} }}: step "${r.step}" has no output "${r.name}" (outputs: ${[...outs].join(', ') || 'none'})`,
          );
      }
    } catch (err) {
      ctx.issue([...at, ...ref.at], (err as Error).message);
    }
  }
  // Check the shape with templates replaced by sample values of the right type.
  const sample = substitute(raw, ctx.inputs);
  const schema = stepSettingsSchema(kind);
  const shape = schemaIssues(schema as TSchema, sample, { file: ctx.file, yaml: ctx.yaml, at }).filter(
    (i) => ![...pathsWithOutputs].some((p) => i.path.startsWith(formatPath([...at, ...(JSON.parse(p) as Array<string | number>)]))),
  );
  ctx.issues.push(...shape);
  if (shape.length > 0) return undefined;
  const withDefaultsApplied = withDefaults(schema as TSchema, raw);
  if (kind !== 'approval') {
    const validate = stepKinds[kind as keyof typeof stepKinds].validate as ((s: unknown) => Array<[string, string]>) | undefined;
    for (const [rel, message] of validate?.(withDefaults(schema as TSchema, sample)) ?? []) {
      ctx.issue([...at, ...(rel ? rel.split('.').map((x) => (/^\d+$/.test(x) ? Number(x) : x)) : [])], message);
    }
  }
  return withDefaultsApplied;
}

function substitute(value: unknown, inputs: InputDef[]): unknown {
  if (typeof value === 'string') {
    const whole = /^\{\{\s*inputs\.([a-z_][a-z0-9_]*)\s*\}\}$/.exec(value);
    if (whole) {
      const def = inputs.find((i) => i.name === whole[1]);
      return def ? (def.default ?? SAMPLE[def.type]) : value;
    }
    return value;
  }
  if (Array.isArray(value)) return value.map((v) => substitute(v, inputs));
  if (value !== null && typeof value === 'object')
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, substitute(v, inputs)]));
  return value;
}

/** References in a CEL expression to inputs and step outputs that do not exist. */
function celRefProblems(expr: string, inputs: Set<string>, known: Map<string, Set<string>>): string[] {
  const problems: string[] = [];
  for (const m of expr.matchAll(/\binputs\.([a-z_][a-z0-9_]*)/g)) {
    if (!inputs.has(m[1]!)) problems.push(`"${expr}": unknown input "${m[1]}" (inputs: ${[...inputs].join(', ') || 'none'})`);
  }
  for (const m of expr.matchAll(/\bsteps\.([a-z][a-z0-9_]*)(?:\.outputs\.([a-z_][a-z0-9_]*))?/g)) {
    const outs = known.get(m[1]!);
    if (!outs) problems.push(`"${expr}": no earlier step "${m[1]}"`);
    else if (m[2] && !outs.has(m[2])) problems.push(`"${expr}": step "${m[1]}" has no output "${m[2]}"`);
  }
  return problems;
}

/** Why a value does not fit an input, or undefined. Secret values must be references. */
export function inputProblem(def: InputDef, value: unknown): string | undefined {
  switch (def.type) {
    case 'string':
    case 'secret':
      if (typeof value !== 'string') return `expected a string, got ${typeof value}`;
      if (def.type === 'secret' && !/^\$\{(env|file):[^}]+\}$/.test(value)) {
        return 'a secret input takes a ${env:NAME} or ${file:/path} reference, never the secret itself';
      }
      if (def.pattern && !new RegExp(def.pattern).test(value)) return `"${value}" does not match ${def.pattern}`;
      break;
    case 'integer':
      if (typeof value !== 'number' || !Number.isInteger(value)) return `expected a whole number, got ${JSON.stringify(value)}`;
      break;
    case 'number':
      if (typeof value !== 'number' || !Number.isFinite(value)) return `expected a number, got ${JSON.stringify(value)}`;
      break;
    case 'boolean':
      if (typeof value !== 'boolean') return `expected true or false, got ${JSON.stringify(value)}`;
      break;
  }
  if (def.enum && !def.enum.includes(value as string | number)) return `${JSON.stringify(value)} is not one of: ${def.enum.join(', ')}`;
  return undefined;
}

/** Where checkImmutable records when each version was first seen (epoch ms), next to its hash. */
function firstSeenKey(key: string): string {
  return key.replace(/runbook-hashes$/, 'runbook-first-seen');
}

/**
 * A version is immutable: the first time a version is loaded its sha256 is recorded in Redis, and
 * a later file with other content under the same version is refused, naming the file. When the
 * version was first seen is recorded too, in a hash of its own (`{continuity}:runbook-first-seen`,
 * epoch ms): a hash recorded before that existed gets the time it is first checked now.
 */
export async function checkImmutable(redis: Redis, runbooks: Runbook[], key = '{continuity}:runbook-hashes'): Promise<ConfigIssue[]> {
  const issues: ConfigIssue[] = [];
  for (const r of runbooks) {
    const field = `${r.name}@v${r.version}`;
    const set = await redis.hsetnx(key, field, r.hash);
    if (set === 1) {
      await redis.hset(firstSeenKey(key), field, String(Date.now()));
      continue;
    }
    const recorded = await redis.hget(key, field);
    if (recorded === r.hash) await redis.hsetnx(firstSeenKey(key), field, String(Date.now()));
    if (recorded !== r.hash) {
      issues.push({
        file: r.file,
        path: '',
        message: `${r.name} version ${r.version} was first loaded with sha256 ${recorded?.slice(0, 12)}…, and this file's content (sha256 ${r.hash.slice(0, 12)}…) differs: a version is immutable, save the change as a new version`,
      });
    }
  }
  return issues;
}

/** When each runbook version was first seen (recorded by checkImmutable), epoch ms by `name@vN`. */
export async function runbookFirstSeen(redis: Redis, key = '{continuity}:runbook-hashes'): Promise<Map<string, number>> {
  const all = await redis.hgetall(firstSeenKey(key));
  return new Map(
    Object.entries(all)
      .map(([field, ms]) => [field, Number(ms)] as const)
      .filter(([, ms]) => Number.isFinite(ms)),
  );
}
