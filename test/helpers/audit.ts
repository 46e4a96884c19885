import type { Redis } from 'ioredis';
import { expect } from 'vitest';

/**
 * The audit stream across a change of leader: the old epoch wrote before the new one's first entry,
 * and nothing carrying an older epoch was written after it (a deposed leader's late write is fenced).
 */
export async function expectNoWriteOfTheOldEpoch(client: Redis, oldEpoch: number, newEpoch: number): Promise<void> {
  const audit = await client.xrange('{continuity}:audit', '-', '+');
  const epochOf = (f: string[]) => {
    const i = f.indexOf('epoch');
    return i < 0 ? undefined : Number(f[i + 1]);
  };
  const firstNew = audit.findIndex(([, f]) => epochOf(f) === newEpoch);
  expect(firstNew).toBeGreaterThan(0);
  expect(audit.slice(firstNew).filter(([, f]) => epochOf(f) !== undefined && epochOf(f)! < newEpoch)).toEqual([]);
  expect(audit.slice(0, firstNew).some(([, f]) => epochOf(f) === oldEpoch)).toBe(true);
}
