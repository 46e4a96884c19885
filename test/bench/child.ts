import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';

/** The last lines of a log file, for a failure message ('(no log)' when there is none). */
export function logTail(path: string, lines = 30): string {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** Stops a child process: SIGTERM, then SIGKILL after `graceMs`; returns once it has exited. */
export async function stopChild(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = once(child, 'exit');
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await gone;
  clearTimeout(timer);
}

/**
 * A bench's way out: `bail(why, code)` says why, runs `cleanup` and exits with `code` (at the latest
 * after `hardMs`); SIGINT and SIGTERM bail once, with 130.
 */
export function bailer(cleanup: () => Promise<void>, say: (line: string) => void, hardMs: number): (why: string, code: number) => void {
  const bail = (why: string, code: number) => {
    say(`${why}; cleaning up`);
    const hard = setTimeout(() => process.exit(code), hardMs);
    hard.unref();
    void cleanup().finally(() => process.exit(code));
  };
  let signalled = false;
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      if (signalled) return;
      signalled = true;
      bail(sig, 130);
    });
  }
  return bail;
}
