import type { TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { ValueErrorType, type ValueError } from '@sinclair/typebox/errors';
import { formatPath, type ConfigIssue } from './errors.js';
import type { YamlFile } from './yaml-file.js';

type Segments = Array<string | number>;

/** Where a value sits in a file, for messages. */
export interface Place {
  file: string;
  yaml?: YamlFile;
  /** Segments from the file's root to the value being validated. */
  at: Segments;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a mapping';
  if (typeof value === 'string') return `"${value.length > 40 ? value.slice(0, 40) + '…' : value}"`;
  return `${typeof value} ${String(value)}`;
}

function constants(schema: TSchema): unknown[] | undefined {
  const members = (schema.anyOf ?? schema.oneOf) as TSchema[] | undefined;
  if (!members || !members.every((m) => 'const' in m)) return undefined;
  return members.map((m) => m.const);
}

function message(e: ValueError, key: string | number | undefined): string {
  const s = e.schema as TSchema & { errorMessage?: string };
  switch (e.type) {
    case ValueErrorType.ObjectRequiredProperty:
      return 'is required';
    case ValueErrorType.ObjectAdditionalProperties: {
      const known = Object.keys((e.schema as TSchema).properties ?? {});
      if (known.length === 0) return s.errorMessage ? `key "${String(key)}" ${s.errorMessage}` : 'unknown key';
      return `unknown key (expected one of: ${known.join(', ')})`;
    }
    case ValueErrorType.StringPattern:
      return s.errorMessage ? `${describe(e.value)} ${s.errorMessage}` : `${describe(e.value)} does not match ${s.pattern}`;
    case ValueErrorType.StringMinLength:
      return s.minLength === 1 ? 'must not be empty' : `must be at least ${s.minLength} characters`;
    case ValueErrorType.StringMaxLength:
      return `must be at most ${s.maxLength} characters`;
    case ValueErrorType.String:
      return `expected a string, got ${describe(e.value)}`;
    case ValueErrorType.Integer:
      return `expected a whole number, got ${describe(e.value)}`;
    case ValueErrorType.Number:
      return `expected a number, got ${describe(e.value)}`;
    case ValueErrorType.Boolean:
      return `expected true or false, got ${describe(e.value)}`;
    case ValueErrorType.Array:
      return `expected a list, got ${describe(e.value)}`;
    case ValueErrorType.Object:
      return `expected a mapping, got ${describe(e.value)}`;
    case ValueErrorType.IntegerMinimum:
    case ValueErrorType.NumberMinimum:
      return `must be at least ${s.minimum}, got ${String(e.value)}`;
    case ValueErrorType.IntegerMaximum:
    case ValueErrorType.NumberMaximum:
      return `must be at most ${s.maximum}, got ${String(e.value)}`;
    case ValueErrorType.ArrayMinItems:
      return `must have at least ${s.minItems} item${s.minItems === 1 ? '' : 's'}`;
    case ValueErrorType.ArrayUniqueItems:
      return 'must not repeat an item';
    case ValueErrorType.Union:
    case ValueErrorType.Literal: {
      const allowed = constants(s);
      if (allowed) return `${describe(e.value)} is not one of: ${allowed.join(', ')}`;
      return s.errorMessage ?? e.message;
    }
    default:
      return s.errorMessage ?? e.message;
  }
}

/** Splits a TypeBox JSON pointer into segments, numbers where the data holds a list. */
function segmentsOf(pointer: string, root: unknown): Segments {
  const out: Segments = [];
  let node = root;
  for (const raw of pointer.split('/').slice(1)) {
    const seg = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (Array.isArray(node) && /^\d+$/.test(seg)) {
      out.push(Number(seg));
      node = node[Number(seg)];
    } else {
      out.push(seg);
      node = node !== null && typeof node === 'object' ? (node as Record<string, unknown>)[seg] : undefined;
    }
  }
  return out;
}

/** Every schema violation of `value`, one issue per place, each with its line. */
export function schemaIssues(schema: TSchema, value: unknown, place: Place): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const seen = new Set<string>();
  for (const e of Value.Errors(schema, value)) {
    const rel = segmentsOf(e.path, value);
    const full = [...place.at, ...rel];
    const path = formatPath(full);
    if (seen.has(path)) continue;
    seen.add(path);
    const key = rel[rel.length - 1];
    issues.push({
      file: place.file,
      line: place.yaml?.lineOf(full, e.type === ValueErrorType.ObjectAdditionalProperties),
      path,
      message: message(e, key),
    });
  }
  return issues;
}

/** A copy of `value` with the schema's defaults filled in (call after it validated). */
export function withDefaults<T>(schema: TSchema, value: unknown): T {
  return Value.Default(schema, structuredClone(value)) as T;
}
