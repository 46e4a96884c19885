import type { Prober } from './types.js';
import { dns } from './dns.js';
import { http } from './http.js';
import { icmp } from './icmp.js';
import { mysql } from './mysql.js';
import { postgres } from './postgres.js';
import { redis } from './redis.js';
import { s3Backup } from './s3-backup.js';
import { ssh } from './ssh.js';
import { tcp } from './tcp.js';

/**
 * The registry: every probe kind, one file each. Config validation, the JSON Schema and the probe
 * reference are all derived from this map, so a kind is added here and nowhere else.
 */
export const probers = {
  dns,
  http,
  icmp,
  mysql,
  postgres,
  redis,
  's3-backup': s3Backup,
  ssh,
  tcp,
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- each kind has its own settings type
} satisfies Record<string, Prober<any>>;

export type ProberKind = keyof typeof probers;
export const proberKinds = Object.keys(probers).sort() as ProberKind[];
