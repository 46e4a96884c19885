import { performance } from 'node:perf_hooks';
import { formatDuration } from '../duration.js';
import { failedCondition, type CompiledCondition } from './conditions.js';
import { reasonOf, type Prober } from './types.js';

/** The result of one probe run, as the scheduler records it. */
export interface ProbeResult {
  ok: boolean;
  /** `ok`, or why not, in words a person reads. */
  reason: string;
  durationSeconds: number;
  /** Wall-clock start, milliseconds since the epoch. */
  startedAt: number;
  observed: Record<string, unknown>;
}

/** What the runner needs of a configured probe. */
export interface RunnableProbe {
  id: string;
  prober: Prober;
  settings: unknown;
  timeoutMs: number;
  conditions: CompiledCondition[];
}

/**
 * Runs one probe with its timeout enforced from outside the prober: the result is back at the
 * deadline even if the prober ignores its signal (a peer that accepts and never answers), and a
 * prober that throws yields a failed result, never an exception.
 */
export async function runProbe(probe: RunnableProbe, opts: { stateDir: string; signal?: AbortSignal }): Promise<ProbeResult> {
  const startedAt = Date.now();
  const t0 = performance.now();
  // One controller per run, aborted at the deadline or when opts.signal aborts. Not
  // AbortSignal.any() and no listener left behind: opts.signal lives as long as the scheduler, and
  // anything added to it per run (a listener, or any()'s dependant entry, never pruned on Node 20)
  // would pile up with every run, each addEventListener walking all of them (quadratic CPU, leak).
  const deadline = new AbortController();
  const signal = deadline.signal;
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => {
      deadline.abort(new Error(`timed out after ${formatDuration(probe.timeoutMs)}`));
      resolve('timeout');
    }, probe.timeoutMs);
  });
  const outer = opts.signal;
  let resolveStopped!: (value: 'stopped') => void;
  const stopped = new Promise<'stopped'>((resolve) => (resolveStopped = resolve));
  const onStop = () => {
    resolveStopped('stopped');
    if (!deadline.signal.aborted) deadline.abort(outer?.reason);
  };
  if (outer?.aborted) onStop();
  else outer?.addEventListener('abort', onStop, { once: true });
  const run = probe.prober
    .run(probe.settings as never, { probeId: probe.id, signal, timeoutMs: probe.timeoutMs, stateDir: opts.stateDir })
    .catch((err: unknown) => ({ ok: false, reason: reasonOf(err), observed: {} }));
  try {
    const outcome = await Promise.race([run, timedOut, stopped]);
    const durationSeconds = (performance.now() - t0) / 1000;
    if (outcome === 'timeout') {
      return { ok: false, reason: `timed out after ${formatDuration(probe.timeoutMs)}`, durationSeconds, startedAt, observed: {} };
    }
    if (outcome === 'stopped') {
      return { ok: false, reason: 'aborted: the daemon is stopping', durationSeconds, startedAt, observed: {} };
    }
    const observed = outcome.observed ?? {};
    if (!outcome.ok) {
      return { ok: false, reason: outcome.reason || 'failed', durationSeconds, startedAt, observed };
    }
    const failed = failedCondition(probe.conditions, observed);
    return { ok: failed === undefined, reason: failed ?? 'ok', durationSeconds, startedAt, observed };
  } finally {
    clearTimeout(timer);
    outer?.removeEventListener('abort', onStop);
    if (!deadline.signal.aborted) deadline.abort(new Error('probe finished'));
  }
}
