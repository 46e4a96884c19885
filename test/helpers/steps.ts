import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import pino from 'pino';
import { formatDuration } from '../../src/duration.js';
import { reasonOf } from '../../src/probers/types.js';
import { stepKinds, type StepKindName } from '../../src/runbooks/steps/index.js';
import type { ExecutionMode, ProbeView, StepResult } from '../../src/runbooks/steps/types.js';

const stateDir = mkdtempSync(join(tmpdir(), 'continuity-step-'));

export interface RunStepOptions {
  /** The step's timeout (default 2s): its signal aborts then, and the result is back then at the latest. */
  timeoutMs?: number;
  /** An outer signal, as the executor's when an execution is aborted or the daemon stops. */
  signal?: AbortSignal;
  probes?: ProbeView;
  mode?: ExecutionMode;
  executionId?: string;
  stepId?: string;
}

/**
 * Runs one step kind the way the executor does (settings taken as already rendered, with defaults
 * filled in): the timeout enforced from outside the kind, so the result is back at the deadline
 * even if the kind ignored its signal, and a kind that throws yields a failed result.
 */
export async function runStep(
  kind: StepKindName,
  settings: unknown,
  opts: RunStepOptions = {},
): Promise<StepResult & { durationSeconds: number }> {
  const step = stepKinds[kind];
  // Generous: a first SSH handshake on a busy CI machine can take seconds; tests of timeouts set their own.
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const t0 = performance.now();
  const deadline = new AbortController();
  const outer = opts.signal;
  const onOuter = () => deadline.abort(outer!.reason);
  if (outer?.aborted) onOuter();
  else outer?.addEventListener('abort', onOuter, { once: true });
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<StepResult>((resolve) => {
    timer = setTimeout(() => {
      const reason = `timed out after ${formatDuration(timeoutMs)}`;
      deadline.abort(new Error(reason));
      resolve({ ok: false, reason, result: {} });
    }, timeoutMs);
  });
  try {
    const run = (step.run as (s: unknown, c: unknown) => Promise<StepResult>)(
      Value.Default(step.settings as TSchema, structuredClone(settings)),
      {
        executionId: opts.executionId ?? 'exec-test',
        stepId: opts.stepId ?? `test-${kind}`,
        mode: opts.mode ?? 'live',
        signal: deadline.signal,
        timeoutMs,
        log: pino({ level: 'silent' }),
        stateDir,
        ...(opts.probes ? { probes: opts.probes } : {}),
      },
    ).catch((err: unknown): StepResult => ({ ok: false, reason: reasonOf(err), result: {} }));
    const result = await Promise.race([run, timedOut]);
    return { ...result, durationSeconds: (performance.now() - t0) / 1000 };
  } finally {
    clearTimeout(timer);
    outer?.removeEventListener('abort', onOuter);
    if (!deadline.signal.aborted) deadline.abort(new Error('step finished'));
  }
}

/**
 * What the loader would say about a kind's settings block: schema problems (as `path: message`,
 * TypeBox's words) and then the kind's own validate(), run on the settings with defaults filled in.
 */
export function stepProblems(kind: StepKindName, settings: unknown): string[] {
  const step = stepKinds[kind];
  const schema = step.settings as TSchema;
  const errors = [...Value.Errors(schema, settings)].map((e) => `${e.path || '/'}: ${e.message}`);
  if (errors.length) return errors;
  const validate = step.validate as ((s: unknown) => Array<[string, string]>) | undefined;
  return (validate?.(Value.Default(schema, structuredClone(settings))) ?? []).map(([path, message]) =>
    path ? `${path}: ${message}` : message,
  );
}

/** Settings (at any depth, inside lists and unions too) that have no description. */
export function undocumented(schema: unknown, path = ''): string[] {
  const s = schema as { properties?: Record<string, unknown>; items?: unknown; anyOf?: unknown[] };
  const out: string[] = [];
  for (const [key, sub] of Object.entries(s.properties ?? {})) {
    if (!(sub as { description?: string }).description) out.push(`${path}${key}`);
    out.push(...undocumented(sub, `${path}${key}.`));
  }
  if (s.items) out.push(...undocumented(s.items, `${path}[]`));
  for (const alt of s.anyOf ?? []) out.push(...undocumented(alt, path));
  return out;
}
