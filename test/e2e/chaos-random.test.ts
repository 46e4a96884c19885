import { describe, expect, it } from 'vitest';
import { runChaos } from '../chaos/chaos.js';

/**
 * 90 s of random faults (test/chaos/chaos.ts) with a fixed seed: kill -9 and SIGSTOP of daemon
 * instances, kill -9 of the private Redis, and the primary PostgreSQL killed, which must lead to a
 * failover. No invariant may break: never two writable primaries, never a failover without a
 * decision record, never a non-idempotent step run twice. The long run is `npm run chaos`.
 */
describe('chaos: random faults on the lab, with an invariant checker', () => {
  it('90 s of random faults, seed 7: at least one failover, no invariant broken', async () => {
    const lines: string[] = [];
    const result = await runChaos({
      durationMs: 90_000,
      seed: 7,
      settleMs: 90_000,
      log: (line) => {
        lines.push(line);
        process.stderr.write(`chaos: ${line}\n`);
      },
    });
    process.stderr.write(
      `chaos duration_s=${result.durationS} faults=${result.faults} failovers=${result.failovers} violations=${result.violations.length} seed=${result.seed}\n`,
    );
    expect(result.violations, lines.join('\n')).toEqual([]);
    expect(result.faults).toBeGreaterThan(5);
    expect(result.failovers, lines.join('\n')).toBeGreaterThanOrEqual(1);
  }, 400_000);
});
