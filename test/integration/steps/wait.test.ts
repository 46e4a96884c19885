import { describe, expect, it } from 'vitest';
import { observedTypes, wait } from '../../../src/runbooks/steps/wait.js';
import type { ProbeView } from '../../../src/runbooks/steps/types.js';
import { runStep, stepProblems, undocumented } from '../../helpers/steps.js';

type ProbeState = ReturnType<ProbeView['get']>;

/**
 * The probe view is an in-process interface the monitor implements, so a fake is the real thing's
 * contract: the test changes a probe's state and values while the step polls.
 */
function fakeProbes(initial: Record<string, NonNullable<ProbeState>>) {
  const probes = new Map(Object.entries(initial));
  let reads = 0;
  const view: ProbeView = {
    get(id) {
      reads++;
      return probes.get(id);
    },
    ids: () => [...probes.keys()],
  };
  return {
    view,
    set: (id: string, value: NonNullable<ProbeState>) => probes.set(id, value),
    later: (ms: number, id: string, value: NonNullable<ProbeState>) => setTimeout(() => probes.set(id, value), ms),
    reads: () => reads,
  };
}

describe('wait step', () => {
  it('returns as soon as the probe reaches the state', async () => {
    const fake = fakeProbes({ 'pg-dr': { state: 'DOWN', observed: {} } });
    fake.later(250, 'pg-dr', { state: 'UP', observed: {} });
    const r = await runStep('wait', { probe: 'pg-dr', state: 'UP', interval: '100ms' }, { probes: fake.view, timeoutMs: 3000 });
    expect(r).toMatchObject({ ok: true, result: { state: 'UP' } });
    expect(r.result.waited_seconds).toBeGreaterThanOrEqual(0.25);
    expect(r.result.waited_seconds).toBeLessThan(1);
    expect(r.output).toMatch(/^probe pg-dr is UP after [\d.]+m?s$/);
  });

  it('does not wait when the probe is already there', async () => {
    const fake = fakeProbes({ web: { state: 'UP', observed: {} } });
    const r = await runStep('wait', { probe: 'web', state: 'UP' }, { probes: fake.view });
    expect(r).toMatchObject({ ok: true, result: { state: 'UP' } });
    expect(r.result.waited_seconds).toBeLessThan(0.2);
    expect(fake.reads()).toBe(1);
  });

  it('returns once a condition on the observed values holds (ints, doubles and strings typed as the probers declare them)', async () => {
    const fake = fakeProbes({ 'pg-dr': { state: 'UP', observed: { role: 'replica', lag_seconds: 12.5, replicas: 0 } } });
    fake.later(150, 'pg-dr', { state: 'UP', observed: { role: 'replica', lag_seconds: 0.2, replicas: 0 } });
    fake.later(300, 'pg-dr', { state: 'UP', observed: { role: 'primary', lag_seconds: 0, replicas: 1 } });
    const r = await runStep(
      'wait',
      { probe: 'pg-dr', condition: 'role == "primary" && lag_seconds < 1.0 && replicas >= 1', interval: '100ms' },
      { probes: fake.view, timeoutMs: 3000 },
    );
    expect(r).toMatchObject({ ok: true, result: { state: 'UP' } });
    expect(r.result.waited_seconds).toBeGreaterThanOrEqual(0.3);
  });

  it('wants both the state and the condition when both are set', async () => {
    const fake = fakeProbes({ db: { state: 'DOWN', observed: { role: 'primary' } } });
    fake.later(150, 'db', { state: 'UP', observed: { role: 'replica' } });
    fake.later(350, 'db', { state: 'UP', observed: { role: 'primary' } });
    const r = await runStep(
      'wait',
      { probe: 'db', state: 'UP', condition: 'role == "primary"', interval: '100ms' },
      { probes: fake.view, timeoutMs: 3000 },
    );
    expect(r).toMatchObject({ ok: true, result: { state: 'UP' } });
    expect(r.result.waited_seconds).toBeGreaterThanOrEqual(0.35);
  });

  it('gives up before the timeout with what it saw last', async () => {
    const fake = fakeProbes({ 'pg-dr': { state: 'DOWN', observed: { role: 'replica' } } });
    const r = await runStep('wait', { probe: 'pg-dr', state: 'UP', interval: '100ms' }, { probes: fake.view, timeoutMs: 500 });
    expect(r.ok).toBe(false);
    // Its own reason, not the executor's `timed out after 500ms`: no later check fitted, so it stopped first.
    expect(r.reason).toMatch(/^probe pg-dr is still DOWN after [\d.]+m?s, waiting for UP$/);
    expect(r.result).toMatchObject({ state: 'DOWN' });

    fake.set('pg-dr', { state: 'UP', observed: { role: 'replica' } });
    const c = await runStep(
      'wait',
      { probe: 'pg-dr', condition: 'role == "primary"', interval: '100ms' },
      { probes: fake.view, timeoutMs: 500 },
    );
    expect(c.reason).toMatch(/^probe pg-dr after [\d.]+m?s: condition "role == "primary"" is false \(role="replica"\)$/);
  });

  it('keeps waiting while a value the condition needs is missing, and says so at the end', async () => {
    const fake = fakeProbes({ 'pg-dr': { state: 'UP', observed: {} } });
    const r = await runStep(
      'wait',
      { probe: 'pg-dr', condition: 'lag_seconds < 1.0', interval: '100ms' },
      { probes: fake.view, timeoutMs: 400 },
    );
    expect(r.ok).toBe(false);
    expect(r.reason).toMatch(/^probe pg-dr after [\d.]+m?s: condition "lag_seconds < 1.0" could not be evaluated: /);
    expect(fake.reads()).toBeGreaterThan(1);
  });

  it('fails at once on an unknown probe', async () => {
    const fake = fakeProbes({ web: { state: 'UP', observed: {} } });
    const r = await runStep('wait', { probe: 'nope', state: 'UP' }, { probes: fake.view });
    expect(r).toMatchObject({ ok: false, reason: 'unknown probe "nope"' });
    expect(r.durationSeconds).toBeLessThan(0.2);
  });

  it('fails at once where no probes run', async () => {
    const r = await runStep('wait', { probe: 'web', state: 'UP' });
    expect(r).toMatchObject({
      ok: false,
      reason: 'no probe states to wait on here: wait steps need the daemon, which runs the probes',
    });
  });

  it('stops when aborted', async () => {
    const fake = fakeProbes({ web: { state: 'DOWN', observed: {} } });
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error('aborted: the execution was cancelled')), 150);
    const r = await runStep('wait', { probe: 'web', state: 'UP' }, { probes: fake.view, timeoutMs: 10_000, signal: controller.signal });
    expect(r).toMatchObject({ ok: false, reason: 'aborted: the execution was cancelled' });
    expect(r.durationSeconds).toBeLessThan(3);
  });
});

describe('wait settings', () => {
  it('wants a state or a condition, a condition that compiles, and a sane interval', () => {
    expect(stepProblems('wait', { probe: 'web', state: 'UP' })).toEqual([]);
    expect(stepProblems('wait', { probe: 'pg', condition: 'role == "primary" && lag_seconds < 5.0' })).toEqual([]);
    expect(stepProblems('wait', { probe: 'web' })).toEqual(['set state, condition or both']);
    expect(stepProblems('wait', { probe: 'web', state: 'UNKNOWN' })).not.toEqual([]);
    expect(stepProblems('wait', { probe: 'pg', condition: 'rol == "primary"' })).toEqual([
      expect.stringMatching(/^condition: .*rol.* \(observed values: .*role.*\)$/),
    ]);
    expect(stepProblems('wait', { probe: 'pg', condition: 'lag_seconds' })).toEqual([
      'condition: must be true or false, but is of type double',
    ]);
    expect(stepProblems('wait', { probe: 'web', state: 'UP', interval: '10ms' })).toEqual(['interval: must be at least 100ms']);
  });

  it('types every observed name of every probe kind', () => {
    expect(observedTypes()).toMatchObject({ role: 'string', lag_seconds: 'double', status: 'int', exit_code: 'int', json: 'dyn' });
  });

  it('documents every setting', () => {
    expect(undocumented(wait.settings)).toEqual([]);
    expect(wait.result).toEqual({ state: 'string', waited_seconds: 'double' });
  });
});
