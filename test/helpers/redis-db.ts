import { Redis } from 'ioredis';

/**
 * A Redis database of its own for one test file (the machine's Redis has 16): emptied first, so
 * each file starts clean and files running side by side never see each other's keys.
 */
export async function freshRedisDb(db: number): Promise<string> {
  const url = `redis://127.0.0.1:6379/${db}`;
  const r = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await r.connect();
  await r.flushdb();
  r.disconnect();
  return url;
}
