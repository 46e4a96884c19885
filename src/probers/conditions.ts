import { Environment } from '@marcbachmann/cel-js';
import type { CelType } from './types.js';

/**
 * Conditions are CEL expressions over a prober's observed values, e.g.
 * `status == 200 && latency_seconds < 0.5`. CEL is side-effect free and not Turing complete, so an
 * operator's condition can never run code; expressions are parsed and type-checked when config
 * loads, so a typo fails `continuity validate`, not a probe at 3 a.m.
 */
export interface CompiledCondition {
  source: string;
  /** Observed names the expression mentions (shown with their values when it fails). */
  names: string[];
  evaluate(observed: Record<string, unknown>): boolean;
}

function environment(observed: Record<string, CelType>): Environment {
  const env = new Environment({ homogeneousAggregateLiterals: false });
  for (const [name, type] of Object.entries(observed)) env.registerVariable(name, type);
  return env;
}

const envCache = new WeakMap<Record<string, CelType>, Environment>();

function firstLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0]!.trim();
}

/** Compiles one condition; throws an Error whose message says what is wrong with it. */
export function compileCondition(source: string, observed: Record<string, CelType>): CompiledCondition {
  let env = envCache.get(observed);
  if (!env) {
    env = environment(observed);
    envCache.set(observed, env);
  }
  const checked = env.check(source);
  if (!checked.valid) throw new Error(`${firstLine(checked.error)} (observed values: ${Object.keys(observed).join(', ')})`);
  if (checked.type !== 'bool') throw new Error(`must be true or false, but is of type ${checked.type}`);
  const program = env.parse(source);
  const names = Object.keys(observed).filter((n) => new RegExp(`\\b${n}\\b`).test(source));
  const types = observed;
  return {
    source,
    names,
    evaluate(values) {
      const context: Record<string, unknown> = {};
      for (const [name, type] of Object.entries(types)) context[name] = toCel(values[name], type);
      return program(context) === true;
    },
  };
}

/** CEL's int is a BigInt in cel-js; every other JS value maps as it is. */
function toCel(value: unknown, type: CelType): unknown {
  if (type === 'int' && typeof value === 'number' && Number.isFinite(value)) return BigInt(Math.trunc(value));
  if (value === undefined) return null;
  return value;
}

/** Evaluates conditions in order; returns the reason of the first that fails, or undefined. */
export function failedCondition(conditions: CompiledCondition[], observed: Record<string, unknown>): string | undefined {
  for (const c of conditions) {
    let ok: boolean;
    try {
      ok = c.evaluate(observed);
    } catch (err) {
      return `condition "${c.source}" could not be evaluated: ${firstLine(err)}`;
    }
    if (!ok) {
      const values = c.names
        .map((n) => [n, observed[n]] as const)
        .filter(([, v]) => v === null || ['string', 'number', 'boolean'].includes(typeof v))
        .map(([n, v]) => `${n}=${typeof v === 'string' ? JSON.stringify(v.length > 80 ? v.slice(0, 80) + '…' : v) : String(v)}`);
      return `condition "${c.source}" is false${values.length ? ` (${values.join(', ')})` : ''}`;
    }
  }
  return undefined;
}

/** A compiled CEL expression of any result type (runbook `outputs:` and `when:`). */
export interface CompiledExpression {
  source: string;
  evaluate(vars: Record<string, unknown>): unknown;
}

const exprEnvs = new Map<string, Environment>();

/**
 * Compiles a CEL expression over variables of the given types; throws with what is wrong. Values
 * are converted back from CEL's BigInt ints to numbers when they are safe integers.
 */
export function compileExpression(source: string, vars: Record<string, CelType>, expect?: 'bool'): CompiledExpression {
  const key = JSON.stringify(vars);
  let env = exprEnvs.get(key);
  if (!env) {
    env = environment(vars);
    exprEnvs.set(key, env);
  }
  const checked = env.check(source);
  if (!checked.valid) throw new Error(firstLine(checked.error));
  if (expect === 'bool' && checked.type !== 'bool' && checked.type !== 'dyn')
    throw new Error(`must be true or false, but is of type ${checked.type}`);
  const program = env.parse(source);
  return {
    source,
    evaluate(values) {
      return fromCel(program(values));
    },
  };
}

function fromCel(value: unknown): unknown {
  if (typeof value === 'bigint') return Number.isSafeInteger(Number(value)) ? Number(value) : value.toString();
  if (Array.isArray(value)) return value.map(fromCel);
  if (value instanceof Map) return Object.fromEntries([...value.entries()].map(([k, v]) => [String(k), fromCel(v)]));
  if (value instanceof Uint8Array) return Buffer.from(value).toString('base64');
  if (value !== null && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fromCel(v)]));
  }
  return value;
}
