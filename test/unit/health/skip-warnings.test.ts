import { describe, expect, it } from 'vitest';
import { SkipWarnings } from '../../../src/health/monitor.js';

describe('SkipWarnings', () => {
  it('warns at the first skipped run of a probe, then at most once a minute with the count since', () => {
    let now = 0;
    const w = new SkipWarnings(60_000, () => now);
    expect(w.skip('a')).toBe(1);
    const quiet = Array.from({ length: 99 }, () => ((now += 500), w.skip('a')));
    expect(quiet.every((n) => n === 0)).toBe(true); // 99 runs within 49.5 s
    // Another probe has its own first warning.
    expect(w.skip('b')).toBe(1);
    now = 60_000;
    expect(w.skip('a')).toBe(100); // the 99 quiet ones and this one
    now += 1000;
    expect(w.skip('a')).toBe(0);
    // A skip after a long quiet time is told at once.
    now += 3_600_000;
    expect(w.skip('a')).toBe(2);
  });
});
