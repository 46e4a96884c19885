import { Redis, type RedisOptions } from 'ioredis';
import type { DaemonSettings } from './config/load.js';

/**
 * A connection to the daemon's Redis: redis_url, or, with `redis_sentinel`, the master the
 * sentinels name (asked again at every reconnection, so a replica Sentinel promoted in the DR site
 * is found by itself); redis_url then gives only the password, user, TLS and database number.
 */
export function connectRedis(d: Pick<DaemonSettings, 'redisUrl' | 'redisSentinel'>, opts: RedisOptions): Redis {
  if (!d.redisSentinel) return new Redis(d.redisUrl, opts);
  const url = new URL(d.redisUrl);
  const db = Number(url.pathname.replace(/^\//, '') || 0);
  return new Redis({
    ...opts,
    sentinels: d.redisSentinel.sentinels,
    name: d.redisSentinel.name,
    db: Number.isInteger(db) ? db : 0,
    ...(url.username ? { username: decodeURIComponent(url.username) } : {}),
    ...(url.password ? { password: decodeURIComponent(url.password) } : {}),
    ...(url.protocol === 'rediss:' ? { tls: {} } : {}),
    // A sentinel that does not answer is skipped; the list is tried again after this.
    sentinelRetryStrategy: (times) => Math.min(times * 200, 1000),
  });
}
