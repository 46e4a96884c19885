import { describe, expect, it } from 'vitest';
import { checkRedisConfig } from '../../src/daemon.js';

/** A stand-in for ioredis' config(): answers CONFIG GET from a table, or refuses it. */
function fakeRedis(settings: Record<string, string> | Error) {
  return {
    config: async (_op: string, name: string) => {
      if (settings instanceof Error) throw settings;
      return name in settings ? [name, settings[name]] : [];
    },
  } as unknown as Parameters<typeof checkRedisConfig>[0];
}

describe('checkRedisConfig', () => {
  it('is ok with noeviction and appendonly yes', async () => {
    expect(await checkRedisConfig(fakeRedis({ 'maxmemory-policy': 'noeviction', appendonly: 'yes' }))).toEqual({
      ok: true,
      settings: { 'maxmemory-policy': 'noeviction', appendonly: 'yes' },
      problems: [],
    });
  });

  it('says what is set, what is expected and why', async () => {
    const r = await checkRedisConfig(fakeRedis({ 'maxmemory-policy': 'allkeys-lru', appendonly: 'no' }));
    expect(r.ok).toBe(false);
    expect(r.problems).toEqual([
      'maxmemory-policy is allkeys-lru, expected noeviction: BullMQ jobs and execution records must never be evicted (with noeviction a full Redis refuses writes instead of losing them)',
      'appendonly is no, expected yes: with AOF an acknowledged approval or step result survives a Redis restart',
    ]);
  });

  it('tolerates CONFIG being disabled or renamed: not checked, not failed', async () => {
    const r = await checkRedisConfig(fakeRedis(new Error("ERR unknown command 'CONFIG', with args beginning with: 'GET'")));
    expect(r).toMatchObject({ ok: undefined, problems: [] });
    expect(r.error).toContain('unknown command');
    expect((await checkRedisConfig(fakeRedis({}))).ok).toBeUndefined();
  });
});
