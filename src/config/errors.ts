import { relative, isAbsolute } from 'node:path';

/** One problem in a config file, with its place. */
export interface ConfigIssue {
  /** The file, as given (printed relative to the working directory when inside it). */
  file: string;
  /** 1-based line, when the place is known. */
  line?: number;
  /** Where in the file's data: `probes[2].timeout`, `services.orders.rto`; empty for the whole file. */
  path: string;
  message: string;
}

/** `probes/databases.yaml:14 probes[2].timeout: 30s must be shorter than interval 15s` */
export function formatIssue(issue: ConfigIssue): string {
  const rel = isAbsolute(issue.file) ? relative(process.cwd(), issue.file) : issue.file;
  const file = rel.startsWith('..') || isAbsolute(rel) ? issue.file : rel;
  const where = issue.line !== undefined ? `${file}:${issue.line}` : file;
  return issue.path ? `${where} ${issue.path}: ${issue.message}` : `${where}: ${issue.message}`;
}

/** Every problem found in the config at once; nothing of a config that throws this is applied. */
export class ConfigError extends Error {
  constructor(readonly issues: ConfigIssue[]) {
    super(
      `${issues.length} problem${issues.length === 1 ? '' : 's'} in the configuration:\n` +
        issues.map((i) => '  ' + formatIssue(i)).join('\n'),
    );
    this.name = 'ConfigError';
  }
}

/** Path segments to the printed form: ['probes', 2, 'timeout'] -> probes[2].timeout */
export function formatPath(segments: ReadonlyArray<string | number>): string {
  let out = '';
  for (const s of segments) {
    if (typeof s === 'number') out += `[${s}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(s)) out += out ? `.${s}` : s;
    else out += `[${JSON.stringify(s)}]`;
  }
  return out;
}
