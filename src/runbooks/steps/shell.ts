import { spawn, type ChildProcess } from 'node:child_process';
import type { Writable } from 'node:stream';
import { stat } from 'node:fs/promises';
import { Type } from '@sinclair/typebox';
import { CappedOutput } from '../../capped-output.js';
import { reasonOf } from '../../probers/types.js';
import { commandOutput, commandResult, commandResultTypes, ExpectExitCode } from './exit-code.js';
import { defineStep, type StepResult } from './types.js';

/** After SIGTERM on abort, how long the command's process group has before SIGKILL. */
export const KILL_GRACE_MS = 2000;

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** shell: run a local program with an argument list; no shell is involved, so no value is ever parsed as shell syntax. */
export const shell = defineStep({
  description: 'Run a local program with its arguments as a list (never through a shell) and check its exit code.',
  settings: Type.Object(
    {
      argv: Type.Array(Type.String({ description: 'One argument, passed as is.' }), {
        minItems: 1,
        description:
          'The program and its arguments, one element each. No shell is involved: spaces, quotes, $ and ; in an element stay part of that one argument. The program is looked up on PATH unless it contains a /.',
      }),
      env: Type.Optional(
        Type.Record(Type.String(), Type.String(), {
          description:
            "Environment variables for the command, on top of the daemon's own environment. CONTINUITY_EXECUTION_ID, CONTINUITY_STEP_ID and CONTINUITY_MODE (live, drill) are always set.",
        }),
      ),
      cwd: Type.Optional(Type.String({ minLength: 1, description: "Working directory of the command (default: the daemon's)." })),
      expect_exit_code: ExpectExitCode,
      stdin: Type.Optional(
        Type.String({
          description: 'Text written to the standard input of the command; without it the command reads end-of-file at once.',
        }),
      ),
    },
    { additionalProperties: false },
  ),
  result: { ...commandResultTypes },
  validate(s) {
    const problems: Array<[string, string]> = [];
    if (s.argv[0] === '') problems.push(['argv.0', 'the program may not be empty']);
    for (const name of Object.keys(s.env ?? {})) {
      if (!ENV_NAME.test(name))
        problems.push([`env.${name}`, 'is not an environment variable name (letters, digits and _, not starting with a digit)']);
    }
    return problems;
  },
  async run(s, ctx) {
    const program = s.argv[0] ?? '';
    if (program === '') return { ok: false, reason: 'argv: the program may not be empty', result: {} };
    for (const name of Object.keys(s.env ?? {})) {
      if (!ENV_NAME.test(name))
        return { ok: false, reason: `env: ${JSON.stringify(name)} is not an environment variable name`, result: {} };
    }
    if (s.cwd !== undefined) {
      // Checked first: spawn reports a missing cwd as ENOENT, which would read as a missing program.
      const problem = await stat(s.cwd).then(
        (st) => (st.isDirectory() ? undefined : `cwd ${s.cwd} is not a directory`),
        (err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? `cwd ${s.cwd} does not exist` : `cwd ${s.cwd}: ${reasonOf(err)}`),
      );
      if (problem) return { ok: false, reason: problem, result: {} };
    }
    if (ctx.signal.aborted) return { ok: false, reason: reasonOf(ctx.signal.reason), result: {} };
    const env = {
      ...process.env,
      ...s.env,
      CONTINUITY_EXECUTION_ID: ctx.executionId,
      CONTINUITY_STEP_ID: ctx.stepId,
      CONTINUITY_MODE: ctx.mode,
    };
    return runProgram(program, s.argv.slice(1), { env, cwd: s.cwd, stdin: s.stdin ?? '' }, ctx.signal, (end) =>
      commandResult(program, end, s.expect_exit_code),
    );
  },
});

/** After the program has exited, how long a stdin feeder has to settle before its pipe is destroyed. */
const FEEDER_GRACE_MS = 1000;

/**
 * Writes a program's standard input and settles when done (e.g. a stream.pipeline into `stdin`);
 * it must end or destroy `stdin`, and honour the abort signal.
 */
export type StdinFeeder = (stdin: Writable) => Promise<void>;

/** How a program run by runProgram ended; stdinError is why its stdin feeder failed, if it did. */
export interface ProgramEnd {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  stdinError?: unknown;
}

/**
 * Spawns the program in its own process group, so an abort can end everything it started: SIGTERM
 * to the group, SIGKILL after KILL_GRACE_MS. Its stdin is a text, or fed by a StdinFeeder. Settles
 * once the process has exited (and the feeder has settled).
 */
export function runProgram(
  program: string,
  args: string[],
  o: { env: NodeJS.ProcessEnv; cwd: string | undefined; stdin: string | StdinFeeder },
  signal: AbortSignal,
  finished: (end: ProgramEnd) => StepResult,
): Promise<StepResult> {
  return new Promise((resolve) => {
    const stdout = new CappedOutput();
    const stderr = new CappedOutput();
    let child: ChildProcess;
    let settled = false;
    let killTimer: NodeJS.Timeout | undefined;
    const settle = (result: StepResult) => {
      if (settled) return;
      settled = true;
      signal.removeEventListener('abort', onAbort);
      resolve(result);
    };
    const killGroup = (sig: NodeJS.Signals) => {
      try {
        process.kill(-child.pid!, sig);
      } catch {
        // The group is gone already.
      }
    };
    const onAbort = () => {
      if (child.pid === undefined) return;
      // The whole group, even when the program itself has exited: a child it left behind may be what still runs.
      killGroup('SIGTERM');
      killTimer = setTimeout(() => killGroup('SIGKILL'), KILL_GRACE_MS);
      killTimer.unref();
      if (child.exitCode !== null || child.signalCode !== null) ended(child.exitCode, child.signalCode);
    };
    try {
      // detached: a new session and process group led by the child, so killing -pid reaches its children too.
      child = spawn(program, args, { cwd: o.cwd, env: o.env, stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    } catch (err) {
      // Thrown at once for bad arguments, e.g. a NUL byte in an argument or a value.
      return settle({ ok: false, reason: `cannot run ${program}: ${reasonOf(err)}`, result: {} });
    }
    child.stdout!.on('data', (d: Buffer) => stdout.push(d));
    child.stderr!.on('data', (d: Buffer) => stderr.push(d));
    // A command that exits without reading its input makes the write fail with EPIPE: not our failure.
    child.stdin!.on('error', () => {});
    let fed: Promise<unknown> = Promise.resolve(undefined);
    let feeding = false;
    if (typeof o.stdin === 'string') child.stdin!.end(o.stdin);
    else {
      feeding = true;
      fed = o.stdin(child.stdin!).then(
        () => undefined,
        (err: unknown) => err ?? new Error('stdin feeder failed'),
      );
      void fed.finally(() => (feeding = false));
    }
    child.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(killTimer);
      settle({ ok: false, reason: spawnFailure(program, err), result: {} });
    });
    // The SIGKILL of an abort stays scheduled after the exit: what in the group ignored SIGTERM must still end.
    let ending = false;
    const ended = (code: number | null, sig: NodeJS.Signals | null) => {
      if (ending || settled) return;
      ending = true;
      // The feeder gets a moment to finish; then its pipe goes, so a stalled source cannot hold the step.
      const grace = feeding ? setTimeout(() => child.stdin!.destroy(), FEEDER_GRACE_MS) : undefined;
      void fed.then((stdinError) => {
        clearTimeout(grace);
        report(code, sig, stdinError);
      });
    };
    const report = (code: number | null, sig: NodeJS.Signals | null, stdinError: unknown) => {
      const end = { code, signal: sig, stdout: stdout.text(), stderr: stderr.text(), ...(stdinError !== undefined ? { stdinError } : {}) };
      if (signal.aborted) {
        const result = { stdout: end.stdout, stderr: end.stderr, ...(code !== null ? { exit_code: code } : {}) };
        settle({ ok: false, reason: reasonOf(signal.reason), result, output: commandOutput(end.stdout, end.stderr) });
      } else {
        settle(finished(end));
      }
    };
    // Normally wait for 'close' (all output read); after an abort the exit alone is enough, as a
    // process that escaped the group may hold the pipes open.
    child.on('close', ended);
    child.on('exit', (code, sig) => {
      if (signal.aborted) ended(code, sig);
    });
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
  });
}

function spawnFailure(program: string, err: NodeJS.ErrnoException): string {
  if (err.code === 'ENOENT') return `cannot run ${program}: ${program.includes('/') ? 'no such file' : 'not found on PATH'}`;
  if (err.code === 'EACCES') return `cannot run ${program}: permission denied (not executable?)`;
  return `cannot run ${program}: ${reasonOf(err)}`;
}
