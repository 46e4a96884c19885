import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { hostname } from 'node:os';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';

/** The lease: `<instance id> <token> <hostname> <pid> <process nonce>`, with a time to live of the lease time. */
export const LEADER_KEY = '{continuity}:leader';
/** The fencing token: INCR at each acquisition; a write carrying an older token is refused. */
export const EPOCH_KEY = '{continuity}:leader-epoch';

/**
 * Takes the lease when nobody holds it; the new token is INCR of the epoch. Returns the token, or
 * minus the milliseconds the holder's lease has left. An instance that lost its lease only because
 * Redis was away (ARGV[4], its last token) takes it back with that same token when nobody led in
 * between (the epoch is still that token, and the lease is free or still its own, ARGV[5]): its
 * writes under that token stay valid, so a running step is not lost to a Redis restart.
 */
const ACQUIRE = `
local left = redis.call('PTTL', KEYS[1])
local again = tonumber(ARGV[4]) > 0 and redis.call('GET', KEYS[2]) == ARGV[4]
if left ~= -2 then
  if again and redis.call('GET', KEYS[1]) == ARGV[5] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(ARGV[4])
  end
  if left > 0 then return -left end
  return -tonumber(ARGV[2])
end
local token
if again then token = tonumber(ARGV[4]) else token = redis.call('INCR', KEYS[2]) end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. token .. ' ' .. ARGV[3], 'PX', ARGV[2])
return token`;

/** Tells this process from an earlier one that had the same pid (a restarted container's pid 1). */
const PROCESS_NONCE = randomUUID().slice(0, 8);

/** Extends the lease when it still holds this value. */
const RENEW = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`;

/** Deletes the lease when it still holds this value (also: a dead holder's, on this host). */
const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;

export interface LeaseOptions {
  redis: Redis;
  instanceId: string;
  /** The lease time: a lost leader is replaced within it. */
  leaseMs: number;
  log: Logger;
  /** Called on each election and deposition (metrics). */
  onChange?: (leading: boolean, token: number | undefined) => void;
}

/** The default instance id: `<hostname>-<pid>`. */
export function defaultInstanceId(): string {
  return `${hostname()}-${process.pid}`;
}

/**
 * Leadership among instances sharing one Redis: a lease (SET NX PX) renewed every lease/3 by a
 * compare-and-PEXPIRE, with a fencing token (INCR of the epoch at each acquisition) that the
 * leader's writes carry. Emits `elected` (token) and `deposed` (reason). A renewal that finds the
 * lease gone or held by another deposes at once; one that cannot reach Redis deposes when the lease
 * would have expired, counted from when the last successful renewal was sent: an instance never
 * believes it leads past its lease. Transitions run one at a time, in order (their listeners are
 * awaited through `transitions`).
 */
export class LeaderLease extends EventEmitter<{ elected: [number]; deposed: [string, { unreachable: boolean }] }> {
  /** The fencing token while leading, else undefined. */
  token: number | undefined;
  /** What the lease key holds while this instance leads. */
  private value: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private expiry: NodeJS.Timeout | undefined;
  /** An extra attempt at the moment the holder's lease runs out. */
  private retry: NodeJS.Timeout | undefined;
  private stopped = false;
  private busy = false;
  private readonly host = hostname();
  /** The token and lease value lost only because Redis was away: taken back as they were if nobody led since. */
  private lost: { token: number; value: string } | undefined;
  /** The holder's instance id as last seen by an acquisition attempt (a follower's view of the leader). */
  private seenHolder: string | undefined;

  constructor(private readonly opts: LeaseOptions) {
    super();
  }

  get leading(): boolean {
    return this.token !== undefined;
  }

  /** Makes the first attempt (so a lone instance leads when start returns), then keeps at it every lease/3. */
  async start(): Promise<void> {
    this.stopped = false;
    await this.step();
    this.timer = setInterval(() => void this.step(), Math.max(50, Math.floor(this.opts.leaseMs / 3)));
    this.timer.unref();
  }

  /** Stops trying; a leader releases the lease (compare-and-DEL) so another takes over at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    clearTimeout(this.retry);
    const value = this.value;
    if (value !== undefined) {
      this.depose('the instance is stopping');
      await this.opts.redis.eval(RELEASE, 1, LEADER_KEY, value).catch(() => undefined);
    }
  }

  /** The leader as this instance last knew it: itself while leading, else the holder its last attempt saw. */
  get knownLeader(): string | undefined {
    return this.leading ? this.opts.instanceId : this.seenHolder;
  }

  get instanceId(): string {
    return this.opts.instanceId;
  }

  /** Who holds the lease now: `{ instanceId, token }`, or undefined. */
  async holder(): Promise<{ instanceId: string; token: number } | undefined> {
    const raw = await this.opts.redis.get(LEADER_KEY);
    if (!raw) return undefined;
    const [instanceId, token] = raw.split(' ');
    return { instanceId: instanceId!, token: Number(token) };
  }

  /** One renewal (leading) or acquisition attempt (not leading). */
  private async step(): Promise<void> {
    if (this.busy || this.stopped) return;
    this.busy = true;
    try {
      if (this.value !== undefined) await this.renew(this.value);
      else await this.acquire();
    } finally {
      this.busy = false;
    }
  }

  private async acquire(): Promise<void> {
    const sentAt = Date.now();
    let token: number;
    try {
      await this.clearDeadHolder();
      token = Number(
        await this.opts.redis.eval(
          ACQUIRE,
          2,
          LEADER_KEY,
          EPOCH_KEY,
          this.opts.instanceId,
          this.opts.leaseMs,
          `${this.host} ${process.pid} ${PROCESS_NONCE}`,
          this.lost?.token ?? 0,
          this.lost?.value ?? '',
        ),
      );
    } catch (err) {
      this.opts.log.debug({ err: (err as Error).message }, 'leader lease: could not try to acquire');
      return;
    }
    if (this.stopped) return;
    if (token <= 0) {
      // Held: try again the moment it expires (a lost leader is replaced within its lease, not a third later).
      clearTimeout(this.retry);
      this.retry = setTimeout(() => void this.step(), -token + 5);
      this.retry.unref();
      return;
    }
    // The new epoch on a replica before anything is written under it: were Redis to fail over now,
    // the promoted replica would not hand the same token out again (an old leader could use it).
    const replicated = await this.replicated();
    if (this.stopped) return;
    if (replicated === false)
      this.opts.log.warn({ token }, 'leader: the new epoch reached no replica in time; a Redis failover now could issue it again');
    this.value = `${this.opts.instanceId} ${token} ${this.host} ${process.pid} ${PROCESS_NONCE}`;
    this.token = token;
    this.lost = undefined;
    this.armExpiry(sentAt);
    this.opts.log.info({ instance: this.opts.instanceId, token }, 'leader: elected');
    this.opts.onChange?.(true, token);
    this.emit('elected', token);
  }

  /**
   * Waits (WAIT 1, at most a third of the lease, capped at 1 s) until a replica has what was
   * written, where the Redis has replicas. Undefined where that cannot be known (no replica, a
   * Redis Cluster client, INFO refused), false when no replica acknowledged in time.
   */
  private async replicated(): Promise<boolean | undefined> {
    const redis = this.opts.redis as Redis & { isCluster?: boolean };
    if (redis.isCluster) return undefined;
    try {
      const info = await redis.info('replication');
      const replicas = Number(/^connected_slaves:(\d+)/m.exec(info)?.[1] ?? 0);
      if (replicas === 0) return undefined;
      return (await redis.wait(1, Math.min(1000, Math.floor(this.opts.leaseMs / 3)))) >= 1;
    } catch {
      return undefined;
    }
  }

  /**
   * A lease held by a process of this host that no longer exists (kill -9, a crash) is released at
   * once instead of waiting for it to expire: a restarted daemon leads again without delay (also in
   * a restarted container, whose daemon has the same hostname and pid as the one before it). A live
   * holder (even stopped, SIGSTOP), or another daemon of this same process (tests), is left to its lease.
   */
  private async clearDeadHolder(): Promise<void> {
    const raw = await this.opts.redis.get(LEADER_KEY);
    this.seenHolder = raw ? raw.split(' ')[0] : undefined;
    if (!raw) return;
    const [, , host, pidText, nonce] = raw.split(' ');
    const pid = Number(pidText);
    if (host !== this.host || !Number.isInteger(pid) || pid <= 0) return;
    if (pid === process.pid) {
      if (nonce === PROCESS_NONCE) return; // this very process
    } else {
      try {
        process.kill(pid, 0);
        return; // alive
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ESRCH') return;
      }
    }
    if (Number(await this.opts.redis.eval(RELEASE, 1, LEADER_KEY, raw)) === 1)
      this.opts.log.warn({ holder: raw.split(' ')[0], pid }, 'leader lease: its holder on this host is gone; released');
  }

  private async renew(value: string): Promise<void> {
    const sentAt = Date.now();
    let ok: number;
    try {
      ok = Number(await this.opts.redis.eval(RENEW, 1, LEADER_KEY, value, this.opts.leaseMs));
    } catch (err) {
      // Unreachable: lead on until the lease would have expired (armExpiry), no longer.
      this.opts.log.warn({ err: (err as Error).message }, 'leader lease: renewal failed; still leading until the lease expires');
      return;
    }
    if (this.value !== value) return; // deposed meanwhile
    if (ok === 1) this.armExpiry(sentAt);
    else this.depose('the lease was lost (expired, deleted, or taken by another instance)');
  }

  /** Deposes at `from + lease` unless a renewal pushes it further. */
  private armExpiry(from: number): void {
    clearTimeout(this.expiry);
    this.expiry = setTimeout(
      () => this.depose('the lease expired without a successful renewal', true),
      Math.max(0, from + this.opts.leaseMs - Date.now()),
    );
    this.expiry.unref();
  }

  private depose(reason: string, unreachable = false): void {
    if (this.value === undefined) return;
    clearTimeout(this.expiry);
    const token = this.token;
    this.lost = unreachable && token !== undefined ? { token, value: this.value } : undefined;
    this.value = undefined;
    this.token = undefined;
    this.opts.log.warn({ instance: this.opts.instanceId, token, reason }, 'leader: deposed');
    this.opts.onChange?.(false, undefined);
    this.emit('deposed', reason, { unreachable });
  }
}
