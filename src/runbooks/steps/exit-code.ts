import { Type } from '@sinclair/typebox';
import type { StepResult } from './types.js';

/** What the shell and ssh steps share: the expected exit code, and a command's end as a step result. */

const ExitCode = Type.Integer({ minimum: 0, maximum: 255, description: 'An exit code (0-255).' });

/** `expect_exit_code`: one code or a list of codes that mean success. */
export const ExpectExitCode = Type.Optional(
  Type.Union([ExitCode, Type.Array(ExitCode, { minItems: 1, uniqueItems: true, description: 'Exit codes that all mean success.' })], {
    default: 0,
    description: 'The exit code that means success, or a list of them (default 0).',
  }),
);

/** The result names of a command step and their CEL types. */
export const commandResultTypes = { exit_code: 'int', stdout: 'string', stderr: 'string' } as const;

/** How a command ended. */
export interface CommandEnd {
  /** Null when it ended without one (killed by a signal). */
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

/**
 * The step result of a finished command: ok when its exit code is one expected; `what` names the
 * command in the reason (`pg_ctl`, `systemctl on root@db1`).
 */
export function commandResult(what: string, end: CommandEnd, expect: number | number[] | undefined): StepResult {
  const expected = expect === undefined ? [0] : Array.isArray(expect) ? expect : [expect];
  const result: Record<string, unknown> = { stdout: end.stdout, stderr: end.stderr, ...(end.code !== null ? { exit_code: end.code } : {}) };
  const output = commandOutput(end.stdout, end.stderr);
  if (end.code === null) {
    return {
      ok: false,
      reason: `${what} ended without an exit code${end.signal ? ` (killed by signal ${end.signal})` : ''}`,
      result,
      output,
    };
  }
  if (!expected.includes(end.code)) {
    const said = firstLine(end.stderr) || firstLine(end.stdout);
    return {
      ok: false,
      reason: `${what} exited with code ${end.code}, expected ${orList(expected.map(String))}${said ? `: ${said}` : ''}`,
      result,
      output,
    };
  }
  return { ok: true, result, output };
}

/** stdout, then stderr under a marker, for the execution's timeline. */
export function commandOutput(stdout: string, stderr: string): string {
  return [stdout, stderr ? `--- stderr ---\n${stderr}` : ''].filter(Boolean).join('\n');
}

/** The first non-blank line of a text, cut to 200 characters, for a reason. */
export function firstLine(text: string): string {
  const line = text.trim().split('\n')[0] ?? '';
  return line.length > 200 ? line.slice(0, 200) + '…' : line;
}

/** ["0"] -> "0"; ["0", "1"] -> "0 or 1"; ["0", "1", "2"] -> "0, 1 or 2". */
export function orList(items: string[]): string {
  return items.length < 2 ? (items[0] ?? '') : `${items.slice(0, -1).join(', ')} or ${items.at(-1)}`;
}
