import { describe, expect, it } from 'vitest';
import { failoverProbeIds, freshFor, requiredVotes, vantageProbeIds } from '../../../src/cluster/vantage.js';
import type { Service } from '../../../src/config/load.js';

describe('vantage quorum', () => {
  it('needs a majority of the instances with a fresh view by default, all of them, or a fixed number', () => {
    expect([1, 2, 3, 4, 5].map((n) => requiredVotes('majority', n))).toEqual([1, 2, 2, 3, 3]);
    expect([1, 2, 3].map((n) => requiredVotes('all', n))).toEqual([1, 2, 3]);
    expect(requiredVotes('all', 0)).toBe(1);
    // A fixed number larger than the instances up is not lowered: the decision waits.
    expect(requiredVotes(3, 2)).toBe(3);
  });

  it('keeps an observation for two intervals plus the timeout, plus 1 s for the once-a-second publishing', () => {
    expect(freshFor({ intervalMs: 5000, timeoutMs: 2000 })).toBe(13_000);
  });

  it('runs every probe a failover policy names from every instance, and publishes the primary_down ones', () => {
    const failover = {
      runbook: 'f',
      version: 1,
      mode: 'approval',
      primaryDown: ['pg-a', 'web-a'],
      drReady: ['pg-b-ready'],
      replica: 'pg-b',
      primaryDb: 'pg-a',
      verify: 'web-b',
      cooldownMs: 0,
      vantageQuorum: 'majority',
      inputs: {},
    } satisfies Service['failover'];
    const services: Record<string, Service> = {
      orders: { id: 'orders', rtoMs: 1, rpoMs: 1, activeSite: 'p', failover },
      wiki: { id: 'wiki', rtoMs: 1, rpoMs: 1, activeSite: 'p' },
    };
    expect([...failoverProbeIds({ services })].sort()).toEqual(['pg-a', 'pg-b', 'pg-b-ready', 'web-a', 'web-b']);
    expect([...vantageProbeIds({ services })].sort()).toEqual(['pg-a', 'web-a']);
  });
});
