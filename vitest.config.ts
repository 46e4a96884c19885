import { defineConfig } from 'vitest/config';

/**
 * Tests that start several daemons, a lab, or cut the network measure Continuity only when the
 * machine is not also running the rest of the suite (CI has 2 CPUs): they run after it, one file at
 * a time.
 */
const ALONE = [
  'test/integration/cluster/sharing.test.ts',
  'test/integration/cluster/dr-site.test.ts',
  'test/integration/cluster/netns.test.ts',
  'test/e2e/chaos-*.test.ts',
];

export default defineConfig({
  test: {
    testTimeout: 30_000,
    hookTimeout: 120_000,
    pool: 'forks',
    maxWorkers: 2,
    reporters: ['default', './test/summary-reporter.ts'],
    projects: [
      { extends: true, test: { name: 'suite', include: ['test/**/*.test.ts'], exclude: ALONE, sequence: { groupOrder: 0 } } },
      { extends: true, test: { name: 'alone', include: ALONE, fileParallelism: false, sequence: { groupOrder: 1 } } },
    ],
  },
});
