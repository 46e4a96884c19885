import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { formatIssue } from '../../src/config/errors.js';
import { Metrics } from '../../src/metrics.js';
import { loadRunbooks } from '../../src/runbooks/loader.js';

const runbook = (reviewed?: string) =>
  `name: rb
version: 1
description: A runbook.
${reviewed === undefined ? '' : `reviewed: ${reviewed}\n`}timeout: 1m
steps:
  - { id: nap, kind: sleep, timeout: 1s, idempotent: true, sleep: { duration: 1ms } }
`;

function load(reviewed?: string) {
  const dir = mkdtempSync(join(tmpdir(), 'continuity-review-'));
  mkdirSync(join(dir, 'rb'));
  writeFileSync(join(dir, 'rb', 'v1.yaml'), runbook(reviewed));
  const { runbooks, issues } = loadRunbooks(dir);
  return { runbook: runbooks.get('rb', 1), issues: issues.map((i) => formatIssue(i).replace(`${dir}/`, '')) };
}

describe('runbook reviewed: dates', () => {
  it('reads a date as 00:00 UTC of that day', () => {
    expect(load('2024-02-29')).toEqual({ runbook: expect.objectContaining({ reviewedAt: Date.UTC(2024, 1, 29) }), issues: [] });
    expect(load('"2024-02-29"').runbook?.reviewedAt).toBe(Date.UTC(2024, 1, 29));
    expect(load().runbook).not.toHaveProperty('reviewedAt');
  });

  it('accepts today wherever it is today, refuses non-dates and dates in the future', () => {
    const today = new Date().toISOString().slice(0, 10);
    expect(load(today).issues).toEqual([]);
    const nextYear = `${new Date().getUTCFullYear() + 1}-01-01`;
    expect(load(nextYear).issues).toEqual([`rb/v1.yaml:4 reviewed: "${nextYear}" is in the future`]);
    expect(load('2023-02-29').issues).toEqual(['rb/v1.yaml:4 reviewed: "2023-02-29" is not a date']);
    expect(load('last week').issues).toEqual(['rb/v1.yaml:4 reviewed: "last week" must be a date, YYYY-MM-DD']);
    expect(load('2024-1-5').issues).toEqual(['rb/v1.yaml:4 reviewed: "2024-1-5" must be a date, YYYY-MM-DD']);
  });
});

describe('continuity_runbook_review_age_seconds', () => {
  it('is computed at each scrape from what the daemon says, and forgets versions no longer loaded', async () => {
    const m = new Metrics('test');
    const now = Date.now();
    let reviews = [
      { runbook: 'failover-postgres', version: 2, at: now - 86_400_000 },
      { runbook: 'failover-postgres', version: 3, at: now + 3_600_000 }, // a date in a time zone ahead of UTC: 0, not negative
    ];
    m.runbookReviews = () => reviews;
    const text = await m.registry.metrics();
    expect(text).toContain('# TYPE continuity_runbook_review_age_seconds gauge');
    const age = Number(/continuity_runbook_review_age_seconds\{runbook="failover-postgres",version="2"\} (\S+)/.exec(text)![1]);
    expect(age).toBeGreaterThanOrEqual(86_400);
    expect(age).toBeLessThan(86_460);
    expect(text).toContain('continuity_runbook_review_age_seconds{runbook="failover-postgres",version="3"} 0');
    reviews = [reviews[0]!];
    expect(await m.registry.metrics()).not.toContain('version="3"');
  });
});
