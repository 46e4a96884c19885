import { Cluster, Redis, type RedisOptions } from 'ioredis';
import type { DaemonSettings } from './config/load.js';

/** What redis_url still gives when Sentinel or Cluster names the servers: credentials, TLS, database. */
function credentials(redisUrl: string): Pick<RedisOptions, 'username' | 'password' | 'tls'> & { db: number } {
  const url = new URL(redisUrl);
  const db = Number(url.pathname.replace(/^\//, '') || 0);
  return {
    db: Number.isInteger(db) ? db : 0,
    ...(url.username ? { username: decodeURIComponent(url.username) } : {}),
    ...(url.password ? { password: decodeURIComponent(url.password) } : {}),
    ...(url.protocol === 'rediss:' ? { tls: {} } : {}),
  };
}

/**
 * A connection to the daemon's Redis: redis_url; or, with `redis_sentinel`, the master the
 * sentinels name (asked again at every reconnection, so a replica Sentinel promoted in the DR site
 * is found by itself); or, with `redis_cluster`, a Redis Cluster discovered from its seed nodes.
 * With either, redis_url gives only the password, user, TLS (and, for Sentinel, the database number).
 *
 * A Cluster client is returned under the Redis type: everything Continuity does goes through
 * commands, MULTI and scripts on keys that share one hash tag ({continuity}, {continuity-probes}),
 * which a Cluster client routes to the slot's master as a single Redis would run them.
 */
export function connectRedis(d: Pick<DaemonSettings, 'redisUrl' | 'redisSentinel' | 'redisCluster'>, opts: RedisOptions): Redis {
  if (d.redisCluster) {
    const { db: _db, ...auth } = credentials(d.redisUrl);
    const { lazyConnect, enableOfflineQueue, retryStrategy, ...redisOptions } = opts;
    const cluster = new Cluster(d.redisCluster, {
      redisOptions: { ...redisOptions, ...auth },
      ...(lazyConnect !== undefined ? { lazyConnect } : {}),
      ...(enableOfflineQueue !== undefined ? { enableOfflineQueue } : {}),
      // A lost cluster is looked for again within a second, as a lost single Redis is.
      clusterRetryStrategy: (times) => (retryStrategy ? (retryStrategy(times) ?? 1000) : Math.min(times * 200, 1000)),
      // Slots move during a cluster failover: follow MOVED/ASK and refresh the map.
      slotsRefreshTimeout: 2000,
    });
    return cluster as unknown as Redis;
  }
  if (!d.redisSentinel) return new Redis(d.redisUrl, opts);
  return new Redis({
    ...opts,
    ...credentials(d.redisUrl),
    sentinels: d.redisSentinel.sentinels,
    name: d.redisSentinel.name,
    // A sentinel that does not answer is skipped; the list is tried again after this.
    sentinelRetryStrategy: (times) => Math.min(times * 200, 1000),
  });
}
