import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { probers, type ProberKind } from '../../src/probers/index.js';
import { compileCondition } from '../../src/probers/conditions.js';
import { runProbe, type ProbeResult } from '../../src/probers/run.js';

const stateDir = mkdtempSync(join(tmpdir(), 'continuity-probe-'));

/** Runs one probe of a kind through the same runner the scheduler uses (timeout, conditions). */
export function probe(
  kind: ProberKind,
  settings: unknown,
  opts: { timeoutMs?: number; conditions?: string[]; id?: string } = {},
): Promise<ProbeResult> {
  const prober = probers[kind];
  return runProbe(
    {
      id: opts.id ?? `test-${kind}`,
      prober: prober as never,
      settings,
      // Generous: a first SSH handshake or TLS setup on a busy CI machine can take seconds; tests of timeouts set their own.
      timeoutMs: opts.timeoutMs ?? 10_000,
      conditions: (opts.conditions ?? []).map((c) => compileCondition(c, prober.observed)),
    },
    { stateDir },
  );
}
