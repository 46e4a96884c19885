import { Type } from '@sinclair/typebox';
import { Duration } from '../../config/schema.js';
import { formatDuration, parseDuration } from '../../duration.js';
import { compileCondition, failedCondition, type CompiledCondition } from '../../probers/conditions.js';
import { probers } from '../../probers/index.js';
import type { CelType } from '../../probers/types.js';
import { reasonOf } from '../../probers/types.js';
import { defineStep, type ProbeView } from './types.js';

const STATES = ['UP', 'DOWN', 'PENDING'] as const;
const MIN_INTERVAL_MS = 100;

let observedTypesCache: Record<string, CelType> | undefined;

/**
 * The CEL types of every observed value any probe kind reports, by name. A step does not know the
 * kind of the probe it waits on when its runbook loads, but the names are still checked (a typo
 * fails validation) and typed: no two kinds give one name different types today, and a name that
 * ever gets two is typed dyn.
 */
export function observedTypes(): Record<string, CelType> {
  if (!observedTypesCache) {
    const types: Record<string, CelType> = {};
    for (const prober of Object.values(probers)) {
      for (const [name, type] of Object.entries(prober.observed as Record<string, CelType>)) {
        types[name] = types[name] === undefined || types[name] === type ? type : 'dyn';
      }
    }
    observedTypesCache = types;
  }
  return observedTypesCache;
}

/** wait: poll a probe until it is in a state, or a condition on its observed values holds. */
export const wait = defineStep({
  description:
    "Wait until a probe is in a state (UP, DOWN, PENDING) and/or a CEL condition on its observed values holds, checking every interval until the step's timeout.",
  settings: Type.Object(
    {
      probe: Type.String({ minLength: 1, description: 'The id of the probe to watch.' }),
      state: Type.Optional(
        Type.Union(
          STATES.map((s) => Type.Literal(s)),
          { description: 'The state to wait for: UP, DOWN or PENDING.' },
        ),
      ),
      condition: Type.Optional(
        Type.String({
          minLength: 1,
          description:
            'A CEL expression over the probe\'s last observed values that must be true, e.g. `role == "primary"` or `lag_seconds < 5`.',
        }),
      ),
      interval: Type.Optional(Duration('Time between checks (default 1s).', { default: '1s' })),
    },
    { additionalProperties: false },
  ),
  result: { state: 'string', waited_seconds: 'double' },
  validate(s) {
    const problems: Array<[string, string]> = [];
    if (s.state === undefined && s.condition === undefined) problems.push(['', 'set state, condition or both']);
    if (s.condition !== undefined) {
      try {
        compileCondition(s.condition, observedTypes());
      } catch (err) {
        problems.push(['condition', reasonOf(err)]);
      }
    }
    if (s.interval !== undefined && parseDuration(s.interval) < MIN_INTERVAL_MS) {
      problems.push(['interval', `must be at least ${formatDuration(MIN_INTERVAL_MS)}`]);
    }
    return problems;
  },
  async run(s, ctx) {
    const t0 = Date.now();
    const waited = () => (Date.now() - t0) / 1000;
    if (!ctx.probes) {
      return {
        ok: false,
        reason: 'no probe states to wait on here: wait steps need the daemon, which runs the probes',
        result: { waited_seconds: 0 },
      };
    }
    if (s.state === undefined && s.condition === undefined) return { ok: false, reason: 'set state, condition or both', result: {} };
    let condition: CompiledCondition | undefined;
    if (s.condition !== undefined) {
      try {
        condition = compileCondition(s.condition, observedTypes());
      } catch (err) {
        return { ok: false, reason: `condition: ${reasonOf(err)}`, result: {} };
      }
    }
    const intervalMs = Math.max(MIN_INTERVAL_MS, parseDuration(s.interval ?? '1s'));

    for (;;) {
      if (ctx.signal.aborted) return { ok: false, reason: reasonOf(ctx.signal.reason), result: { waited_seconds: waited() } };
      const seen = look(ctx.probes, s.probe, s.state, condition);
      if ('unknown' in seen) return { ok: false, reason: `unknown probe "${s.probe}"`, result: { waited_seconds: waited() } };
      const result = { state: seen.state, waited_seconds: waited() };
      const after = formatDuration(waited() * 1000);
      if (seen.missing === undefined) return { ok: true, result, output: `probe ${s.probe} is ${seen.state} after ${after}` };
      // No later check fits before the timeout: give up now, with what this one saw.
      if (Date.now() - t0 + intervalMs >= ctx.timeoutMs) return { ok: false, reason: seen.missing(after), result };
      await sleep(intervalMs, ctx.signal);
    }
  },
});

/** One look at the probe: its state, and why it is not there yet (undefined when all that is wanted holds). */
function look(
  probes: ProbeView,
  id: string,
  state: (typeof STATES)[number] | undefined,
  condition: CompiledCondition | undefined,
): { unknown: true } | { state: string; missing?: (after: string) => string } {
  const probe = probes.get(id);
  if (!probe) return { unknown: true };
  if (state !== undefined && probe.state !== state) {
    return { state: probe.state, missing: (after) => `probe ${id} is still ${probe.state} after ${after}, waiting for ${state}` };
  }
  if (condition) {
    const failed = failedCondition([condition], probe.observed);
    if (failed !== undefined) return { state: probe.state, missing: (after) => `probe ${id} after ${after}: ${failed}` };
  }
  return { state: probe.state };
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}
