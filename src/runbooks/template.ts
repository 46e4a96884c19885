/**
 * The runbook template language, deliberately tiny: `{{ inputs.<name> }}`,
 * `{{ steps.<id>.outputs.<name> }}` and `{{ execution.<id|mode|runbook|version> }}`, nothing else.
 * There is no expression, filter or code: a template can only copy a value, so a runbook can never
 * run code through its templates. A reference to something undefined is found when the runbook
 * loads, not when the step runs.
 */
const TEMPLATE = /\{\{\s*([^{}]*?)\s*\}\}/g;
const WHOLE = /^\{\{\s*([^{}]*?)\s*\}\}$/;
const REF = /^(?:inputs\.([a-z_][a-z0-9_]*)|steps\.([a-z][a-z0-9_]*)\.outputs\.([a-z_][a-z0-9_]*)|execution\.(id|mode|runbook|version))$/;

/** A parsed template reference. */
export type TemplateRef =
  | { type: 'input'; name: string }
  | { type: 'output'; step: string; name: string }
  | { type: 'execution'; name: 'id' | 'mode' | 'runbook' | 'version' };

/** Values a template is rendered with. */
export interface TemplateScope {
  inputs: Record<string, unknown>;
  steps: Record<string, { outputs: Record<string, unknown> }>;
  execution: { id: string; mode: string; runbook: string; version: number };
}

/** Parses one reference; throws with the reason when it is not one the language has. */
export function parseRef(expr: string): TemplateRef {
  const m = REF.exec(expr);
  if (!m) {
    throw new Error(
      `"{{ ${expr} }}" is not a template reference (expected inputs.<name>, steps.<id>.outputs.<name> or execution.id|mode|runbook|version)`,
    );
  }
  if (m[1]) return { type: 'input', name: m[1] };
  if (m[2]) return { type: 'output', step: m[2], name: m[3]! };
  return { type: 'execution', name: m[4] as 'id' };
}

/** Every template reference in a value (strings inside objects and lists too), with its path. */
export function findRefs(value: unknown, at: Array<string | number> = []): Array<{ at: Array<string | number>; expr: string }> {
  if (typeof value === 'string') return [...value.matchAll(TEMPLATE)].map((m) => ({ at, expr: m[1]! }));
  if (Array.isArray(value)) return value.flatMap((v, i) => findRefs(v, [...at, i]));
  if (value !== null && typeof value === 'object') return Object.entries(value).flatMap(([k, v]) => findRefs(v, [...at, k]));
  return [];
}

function lookup(ref: TemplateRef, scope: TemplateScope): unknown {
  switch (ref.type) {
    case 'input':
      return scope.inputs[ref.name];
    case 'output':
      return scope.steps[ref.step]?.outputs[ref.name];
    case 'execution':
      return scope.execution[ref.name];
  }
}

/**
 * Renders every template in a value. A string that is exactly one template takes the referenced
 * value with its type (so `port: "{{ inputs.port }}"` is a number); inside a longer string a value
 * is written as text (objects as JSON). An undefined value at run time is an error.
 */
export function render(value: unknown, scope: TemplateScope, opts: RenderOptions = {}): unknown {
  if (typeof value === 'string') {
    const whole = WHOLE.exec(value);
    if (whole) return must(parseRef(whole[1]!), whole[1]!, scope, opts);
    return value.replace(TEMPLATE, (_m, expr: string) => {
      const v = must(parseRef(expr), expr, scope, opts);
      return typeof v === 'string' ? v : JSON.stringify(v);
    });
  }
  if (Array.isArray(value)) return value.map((v) => render(v, scope, opts));
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, render(v, scope, opts)]));
  }
  return value;
}

export interface RenderOptions {
  /** What an undefined reference becomes (a dry run shows a placeholder); by default it is an error. */
  missing?: (expr: string) => unknown;
}

function must(ref: TemplateRef, expr: string, scope: TemplateScope, opts: RenderOptions): unknown {
  const v = lookup(ref, scope);
  if (v !== undefined) return v;
  if (opts.missing) return opts.missing(expr);
  throw new Error(`{{ ${expr} }} has no value`);
}

/** Whether a string holds any template. */
export function hasTemplate(text: string): boolean {
  return text.includes('{{');
}
