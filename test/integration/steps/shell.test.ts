import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KILL_GRACE_MS, shell } from '../../../src/runbooks/steps/shell.js';
import { runStep, stepProblems, undocumented } from '../../helpers/steps.js';

/** Whether a process still runs (a zombie, dead but not yet reaped, counts as gone). */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

async function goneWithin(pid: number, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (running(pid) && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  return !running(pid);
}

async function readPid(path: string, ms = 2000): Promise<number> {
  const until = Date.now() + ms;
  for (;;) {
    const text = await readFile(path, 'utf8').catch(() => '');
    if (/^\d+\n/.test(text)) return Number(text.trim());
    if (Date.now() > until) throw new Error(`no pid in ${path}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('shell step', () => {
  let work: string;
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'continuity-shell-step-'));
  });
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
  });

  it('passes each argv element as one argument, never through a shell', async () => {
    const marker = join(work, 'pwned');
    // What a shell would act on if one were involved; only the test's own files are at stake.
    const victim = join(work, 'victim');
    await mkdir(victim);
    const hostile = `it's a "value";rm -rf ${victim} $(touch ${marker}) \`touch ${marker}\` > ${marker} && echo done`;
    const r = await runStep('shell', { argv: ['printf', '[%s]', hostile, 'two words'] });
    expect(r).toMatchObject({ ok: true, result: { exit_code: 0, stdout: `[${hostile}][two words]`, stderr: '' } });
    expect(existsSync(marker)).toBe(false);
    expect(existsSync(victim)).toBe(true);
  });

  it('fails on an unexpected exit code, quoting what the program said', async () => {
    const r = await runStep('shell', { argv: ['sh', '-c', 'echo partial; echo "no such table" >&2; exit 3'] });
    expect(r).toMatchObject({
      ok: false,
      reason: 'sh exited with code 3, expected 0: no such table',
      result: { exit_code: 3, stdout: 'partial', stderr: 'no such table' },
      output: 'partial\n--- stderr ---\nno such table',
    });
  });

  it('takes another exit code, or a list of them, as success', async () => {
    expect(await runStep('shell', { argv: ['sh', '-c', 'exit 3'], expect_exit_code: 3 })).toMatchObject({
      ok: true,
      result: { exit_code: 3 },
    });
    expect(await runStep('shell', { argv: ['sh', '-c', 'exit 1'], expect_exit_code: [0, 1] })).toMatchObject({ ok: true });
    expect(await runStep('shell', { argv: ['true'], expect_exit_code: [1, 2, 3] })).toMatchObject({
      ok: false,
      reason: 'true exited with code 0, expected 1, 2 or 3',
    });
  });

  it('writes stdin, sets env (with the execution context) and cwd', async () => {
    expect(await runStep('shell', { argv: ['cat'], stdin: 'line one\nline two\n' })).toMatchObject({
      ok: true,
      result: { stdout: 'line one\nline two' },
    });
    const r = await runStep(
      'shell',
      {
        argv: ['sh', '-c', 'echo "$GREETING|$CONTINUITY_EXECUTION_ID|$CONTINUITY_STEP_ID|$CONTINUITY_MODE|$(pwd)"'],
        env: { GREETING: 'hi there' },
        cwd: work,
      },
      { executionId: 'exec-42', stepId: 'promote', mode: 'drill' },
    );
    expect(r).toMatchObject({ ok: true, result: { stdout: `hi there|exec-42|promote|drill|${work}` } });
  });

  it('gives a command that reads stdin end-of-file at once when none is given', async () => {
    const r = await runStep('shell', { argv: ['cat'] }, { timeoutMs: 1000 });
    expect(r).toMatchObject({ ok: true, result: { stdout: '' } });
    expect(r.durationSeconds).toBeLessThan(0.9);
  });

  it('says plainly when the program or the folder does not exist', async () => {
    expect(await runStep('shell', { argv: ['continuity-no-such-program', 'x'] })).toEqual(
      expect.objectContaining({ ok: false, reason: 'cannot run continuity-no-such-program: not found on PATH' }),
    );
    expect(await runStep('shell', { argv: [join(work, 'nope')] })).toMatchObject({
      ok: false,
      reason: `cannot run ${join(work, 'nope')}: no such file`,
    });
    const script = join(work, 'not-executable.sh');
    await writeFile(script, '#!/bin/sh\necho hi\n', { mode: 0o644 });
    expect(await runStep('shell', { argv: [script] })).toMatchObject({
      ok: false,
      reason: `cannot run ${script}: permission denied (not executable?)`,
    });
    expect(await runStep('shell', { argv: ['pwd'], cwd: join(work, 'missing') })).toMatchObject({
      ok: false,
      reason: `cwd ${join(work, 'missing')} does not exist`,
    });
  });

  it('keeps at most 64 KiB of each stream', async () => {
    const r = await runStep(
      'shell',
      { argv: ['sh', '-c', "head -c 300000 /dev/zero | tr '\\0' a; head -c 100000 /dev/zero | tr '\\0' b >&2"] },
      { timeoutMs: 5000 },
    );
    expect(r.ok).toBe(true);
    expect((r.result.stdout as string).length).toBe(65536);
    expect((r.result.stderr as string).length).toBe(65536);
  });

  it('kills the whole process group at the timeout', async () => {
    const pidFile = join(work, 'timeout.pid');
    const run = runStep('shell', { argv: ['sh', '-c', `sleep 30 & echo $! > ${pidFile}; wait`] }, { timeoutMs: 500 });
    const sleeper = await readPid(pidFile);
    const r = await run;
    expect(r).toMatchObject({ ok: false, reason: 'timed out after 500ms' });
    expect(r.durationSeconds).toBeLessThan(3);
    expect(await goneWithin(sleeper, 1000)).toBe(true);
  });

  it('kills with SIGKILL what ignores SIGTERM', async () => {
    const pidFile = join(work, 'stubborn.pid');
    const run = runStep('shell', { argv: ['sh', '-c', `trap '' TERM; sleep 30 & echo $! > ${pidFile}; wait`] }, { timeoutMs: 300 });
    const sleeper = await readPid(pidFile);
    expect(await run).toMatchObject({ ok: false, reason: 'timed out after 300ms' });
    // SIGTERM is ignored (sleep inherits the ignored disposition), so it is still there during the grace...
    await new Promise((r) => setTimeout(r, KILL_GRACE_MS / 2));
    expect(running(sleeper)).toBe(true);
    // ...and gone once the SIGKILL follows.
    expect(await goneWithin(sleeper, KILL_GRACE_MS + 1000)).toBe(true);
  });

  it('stops when the execution is aborted, keeping what was printed so far', async () => {
    const pidFile = join(work, 'abort.pid');
    const controller = new AbortController();
    const run = runStep(
      'shell',
      { argv: ['sh', '-c', `echo started; echo $$ > ${pidFile}; sleep 30`] },
      { timeoutMs: 10_000, signal: controller.signal },
    );
    const pid = await readPid(pidFile);
    controller.abort(new Error('aborted: the execution was cancelled'));
    const r = await run;
    expect(r).toMatchObject({ ok: false, reason: 'aborted: the execution was cancelled', result: { stdout: 'started' } });
    expect(r.durationSeconds).toBeLessThan(2);
    expect(await goneWithin(pid, 1000)).toBe(true);
  });

  it('starts nothing when the signal is already aborted', async () => {
    const marker = join(work, 'never');
    const controller = new AbortController();
    controller.abort(new Error('aborted: the daemon is stopping'));
    const r = await runStep('shell', { argv: ['touch', marker] }, { signal: controller.signal });
    expect(r).toMatchObject({ ok: false, reason: 'aborted: the daemon is stopping' });
    await new Promise((res) => setTimeout(res, 100));
    expect(existsSync(marker)).toBe(false);
  });
});

describe('shell settings', () => {
  it('needs a program, takes known fields only and fills in expect_exit_code', () => {
    expect(stepProblems('shell', { argv: ['true'] })).toEqual([]);
    expect(stepProblems('shell', { argv: [] })).not.toEqual([]);
    expect(stepProblems('shell', { argv: ['true'], shell: true })).not.toEqual([]);
    expect(stepProblems('shell', { argv: ['true'], expect_exit_code: 256 })).not.toEqual([]);
    expect(stepProblems('shell', { argv: [''] })).toEqual(['argv.0: the program may not be empty']);
    expect(stepProblems('shell', { argv: ['env'], env: { 'BAD-NAME': 'x', OK_1: 'y' } })).toEqual([
      'env.BAD-NAME: is not an environment variable name (letters, digits and _, not starting with a digit)',
    ]);
  });

  it('documents every setting', () => {
    expect(undocumented(shell.settings)).toEqual([]);
    expect(shell.result).toEqual({ exit_code: 'int', stdout: 'string', stderr: 'string' });
  });
});
