import { readFileSync } from 'node:fs';
import type { ConfigIssue } from './errors.js';
import { formatPath } from './errors.js';
import type { YamlFile } from './yaml-file.js';

/**
 * Secrets are never written in config files. A string may hold references that are resolved when
 * the config loads: `${env:PGPASSWORD}` (an environment variable) and `${file:/run/secrets/pg}` (a
 * file's content, without its trailing newline). `$${` writes a literal `${`. Every resolved value
 * is returned so the redactor can hide it everywhere.
 */
const REFERENCE = /\$\$\{|\$\{(env|file):([^}]*)\}/g;

export interface ResolveContext {
  file: string;
  yaml?: YamlFile;
  env: NodeJS.ProcessEnv;
  issues: ConfigIssue[];
  secrets: Set<string>;
}

function resolveString(text: string, at: Array<string | number>, ctx: ResolveContext): string {
  if (!text.includes('${')) return text;
  return text.replace(REFERENCE, (match, source: string | undefined, name: string | undefined) => {
    if (match === '$${') return '${';
    const issue = (message: string) => {
      ctx.issues.push({ file: ctx.file, line: ctx.yaml?.lineOf(at), path: formatPath(at), message });
      return '';
    };
    if (!name) return issue(`empty ${source}: reference`);
    let value: string | undefined;
    if (source === 'env') {
      value = ctx.env[name];
      if (value === undefined) return issue(`environment variable ${name} is not set (referenced as \${env:${name}})`);
    } else {
      try {
        value = readFileSync(name, 'utf8').replace(/\r?\n$/, '');
      } catch (err) {
        return issue(`cannot read secret file ${name}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
    }
    ctx.secrets.add(value);
    return value;
  });
}

/** A copy of `value` with every secret reference resolved; problems are added to ctx.issues. */
export function resolveSecrets(value: unknown, at: Array<string | number>, ctx: ResolveContext): unknown {
  if (typeof value === 'string') return resolveString(value, at, ctx);
  if (Array.isArray(value)) return value.map((v, i) => resolveSecrets(v, [...at, i], ctx));
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, resolveSecrets(v, [...at, k], ctx)]));
  }
  return value;
}
