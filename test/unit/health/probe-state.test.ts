import { describe, expect, it } from 'vitest';
import { ProbeState } from '../../../src/health/probe-state.js';
import type { ProbeResult } from '../../../src/probers/run.js';

let clock = 1_000_000;
const ok = (): ProbeResult => ({ ok: true, reason: 'ok', durationSeconds: 0.01, startedAt: (clock += 1000), observed: {} });
const fail = (reason = 'connect ECONNREFUSED 127.0.0.1:5432'): ProbeResult => ({
  ok: false,
  reason,
  durationSeconds: 0.01,
  startedAt: (clock += 1000),
  observed: {},
});

describe('probe state machine', () => {
  it('starts PENDING and goes UP after success_threshold successes', () => {
    const s = new ProbeState(3, 2);
    expect(s.state).toBe('PENDING');
    expect(s.record(ok())).toBeUndefined();
    expect(s.record(ok())).toMatchObject({ from: 'PENDING', to: 'UP' });
  });

  it('goes PENDING at the first failure and DOWN at failure_threshold, counting the outage from the first failure', () => {
    const s = new ProbeState(3, 1);
    s.record(ok());
    const first = fail();
    expect(s.record(first)).toMatchObject({ from: 'UP', to: 'PENDING' });
    expect(s.failingSince).toBe(first.startedAt);
    expect(s.record(fail())).toBeUndefined();
    const t = s.record(fail('timed out after 5s'));
    expect(t).toEqual({ from: 'PENDING', to: 'DOWN', reason: 'timed out after 5s', failingSince: first.startedAt });
    expect(s.record(fail())).toBeUndefined();
    expect(s.failingSince).toBe(first.startedAt);
  });

  it('does not flap: a blip below the threshold returns to UP at once without an outage', () => {
    const s = new ProbeState(3, 3);
    s.record(ok());
    s.record(ok());
    s.record(ok());
    s.record(fail());
    s.record(fail());
    expect(s.state).toBe('PENDING');
    expect(s.record(ok())).toMatchObject({ from: 'PENDING', to: 'UP' });
    expect(s.failingSince).toBeUndefined();
  });

  it('needs success_threshold successes in a row to leave DOWN; a failure in between restarts the count', () => {
    const s = new ProbeState(1, 3);
    s.record(fail());
    expect(s.state).toBe('DOWN');
    const since = s.failingSince;
    s.record(ok());
    s.record(ok());
    s.record(fail());
    s.record(ok());
    s.record(ok());
    expect(s.state).toBe('DOWN');
    expect(s.failingSince).toBe(since);
    expect(s.record(ok())).toMatchObject({ from: 'DOWN', to: 'UP' });
    expect(s.failingSince).toBeUndefined();
    expect(s.lastFailure?.ok).toBe(false);
  });
});
