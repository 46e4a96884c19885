import { createHash } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { GetObjectCommand, ListObjectsV2Command, S3Client, type _Object } from '@aws-sdk/client-s3';
import { Type, type Static } from '@sinclair/typebox';
import { DURATION_PATTERN, formatDuration, parseDuration } from '../duration.js';
import { defineProber, reasonOf, type Observation } from './types.js';

const SIDECAR = '.sha256';

/** The connection settings of an S3-compatible store, shared by the s3-backup prober and the s3-restore step. */
export const s3ConnectionSettings = {
  endpoint: Type.Optional(
    Type.String({
      pattern: '^https?://',
      description: 'URL of an S3-compatible store (e.g. http://minio.internal:9000); leave out for AWS S3.',
    }),
  ),
  region: Type.Optional(Type.String({ minLength: 1, default: 'us-east-1', description: 'Region of the bucket (default us-east-1).' })),
  bucket: Type.String({ minLength: 1, description: 'Bucket holding the backup set.' }),
  force_path_style: Type.Optional(
    Type.Boolean({
      default: false,
      description: 'Address the bucket as endpoint/bucket rather than bucket.endpoint (most non-AWS stores).',
    }),
  ),
  access_key_id: Type.Optional(
    Type.String({
      minLength: 1,
      description: 'Access key id, usually a ${env:...} reference; leave out for the default AWS credential chain.',
    }),
  ),
  secret_access_key: Type.Optional(
    Type.String({ minLength: 1, description: 'Secret access key, a ${env:...} or ${file:...} reference; required with access_key_id.' }),
  ),
};

/** What s3Client() needs of the settings. */
export interface S3Connection {
  endpoint?: string;
  region?: string;
  force_path_style?: boolean;
  access_key_id?: string;
  secret_access_key?: string;
}

/** An S3 client for the settings; one attempt (the caller's timeout and retries decide), the caller destroys it. */
export function s3Client(s: S3Connection): S3Client {
  return new S3Client({
    region: s.region ?? 'us-east-1',
    endpoint: s.endpoint,
    forcePathStyle: s.force_path_style ?? false,
    credentials:
      s.access_key_id !== undefined && s.secret_access_key !== undefined
        ? { accessKeyId: s.access_key_id, secretAccessKey: s.secret_access_key }
        : undefined,
    maxAttempts: 1,
  });
}

/** access_key_id and secret_access_key go together: the validate() issue when only one is set. */
export function s3KeyPairIssues(s: S3Connection): Array<[string, string]> {
  if ((s.access_key_id === undefined) === (s.secret_access_key === undefined)) return [];
  return [[s.access_key_id === undefined ? 'access_key_id' : 'secret_access_key', 'access_key_id and secret_access_key go together']];
}

const settings = Type.Object(
  {
    endpoint: s3ConnectionSettings.endpoint,
    region: s3ConnectionSettings.region,
    bucket: s3ConnectionSettings.bucket,
    prefix: Type.Optional(
      Type.String({ default: '', description: 'Key prefix of the backup set (e.g. orders/); every object under it is one backup.' }),
    ),
    force_path_style: s3ConnectionSettings.force_path_style,
    access_key_id: s3ConnectionSettings.access_key_id,
    secret_access_key: s3ConnectionSettings.secret_access_key,
    max_age: Type.String({
      pattern: DURATION_PATTERN,
      errorMessage: 'is not a duration (expected e.g. 500ms, 15s, 5m, 1h, 1h30m)',
      description: 'Fail when the newest backup is older than this (the RPO the service relies on), e.g. 1d or 26h.',
    }),
    min_size_bytes: Type.Optional(
      Type.Integer({
        minimum: 0,
        default: 1,
        description: 'Fail when the newest backup is smaller than this many bytes (default 1: never empty).',
      }),
    ),
    min_size_ratio: Type.Optional(
      Type.Number({
        minimum: 0,
        maximum: 1,
        description: 'Fail when the newest backup is smaller than this fraction of the previous one (e.g. 0.5).',
      }),
    ),
    min_count: Type.Optional(Type.Integer({ minimum: 1, default: 1, description: 'Fail when fewer backups than this are retained.' })),
    checksum: Type.Optional(
      Type.Literal('sha256-sidecar', {
        description: 'sha256-sidecar: the object <key>.sha256 holds the hex SHA-256 of the newest backup, which is streamed and verified.',
      }),
    ),
  },
  { additionalProperties: false },
);

type Settings = Static<typeof settings>;

/** s3-backup: is the newest backup of a set in an S3-compatible store recent, big enough, retained and intact? */
export const s3Backup = defineProber({
  description:
    'Check a backup set in an S3-compatible bucket: the newest backup is recent (RPO), not empty or shrunk, enough are retained, and optionally its SHA-256 sidecar matches.',
  settings,
  observed: {
    newest_key: 'string',
    newest_age_seconds: 'double',
    newest_size_bytes: 'int',
    previous_size_bytes: 'int',
    backup_count: 'int',
    checksum_ok: 'bool',
  },
  validate(s) {
    return s3KeyPairIssues(s);
  },
  async run(s, ctx) {
    // One attempt: the probe's failure threshold already tolerates a blip, and retries would eat the timeout.
    const client = s3Client(s);
    try {
      return await check(client, s, ctx.signal);
    } catch (err) {
      const reason = ctx.signal.aborted ? reasonOf(ctx.signal.reason) : sdkReason(err);
      return { ok: false, reason: scrub(reason, [s.secret_access_key, s.access_key_id]), observed: {} };
    } finally {
      client.destroy();
    }
  },
});

async function check(client: S3Client, s: Settings, signal: AbortSignal): Promise<Observation> {
  const prefix = s.prefix ?? '';
  const backups = await listBackups(client, s.bucket, prefix, signal);

  if (backups.length === 0) return { ok: false, reason: `no backup under s3://${s.bucket}/${prefix}`, observed: { backup_count: 0 } };

  const newest = backups[0]!;
  const previous = backups[1];
  const key = newest.Key!;
  const size = newest.Size ?? 0;
  const ageMs = Math.max(0, Date.now() - newest.LastModified!.getTime());
  const observed: Record<string, unknown> = {
    newest_key: key,
    newest_age_seconds: ageMs / 1000,
    newest_size_bytes: size,
    backup_count: backups.length,
    checksum_ok: null,
  };
  if (previous) observed.previous_size_bytes = previous.Size ?? 0;
  const fail = (reason: string): Observation => ({ ok: false, reason, observed });

  const maxAgeMs = parseDuration(s.max_age);
  if (ageMs > maxAgeMs) return fail(`newest backup ${key} is ${formatAge(ageMs)} old (max ${s.max_age})`);
  const minSize = s.min_size_bytes ?? 1;
  if (size < minSize)
    return fail(size === 0 ? `newest backup ${key} is 0 bytes` : `newest backup ${key} is ${size} bytes (min ${minSize})`);
  if (s.min_size_ratio !== undefined && previous && (previous.Size ?? 0) > 0) {
    const ratio = size / previous.Size!;
    if (ratio < s.min_size_ratio) {
      return fail(`newest backup ${key} is ${percent(ratio, s.min_size_ratio)} of the previous one (min ${percent(s.min_size_ratio)})`);
    }
  }
  const minCount = s.min_count ?? 1;
  if (backups.length < minCount) {
    return fail(`only ${backups.length} backup${backups.length === 1 ? '' : 's'} retained (min ${minCount})`);
  }
  if (s.checksum === 'sha256-sidecar') {
    const expected = await readSidecar(client, s.bucket, key + SIDECAR, signal);
    if (expected === undefined) return fail(`checksum sidecar ${key}${SIDECAR} is missing`);
    if (!/^[0-9a-f]{64}$/.test(expected)) return fail(`checksum sidecar ${key}${SIDECAR} holds no SHA-256 hex digest`);
    const actual = await streamSha256(client, s.bucket, key, signal);
    observed.checksum_ok = actual === expected;
    if (actual !== expected) return fail(`checksum mismatch for ${key}`);
  }
  return { ok: true, observed };
}

/**
 * The backups under a prefix, newest first: every object but `.sha256` sidecars and folder markers.
 * On equal times (stores with 1-second precision) the later key first, as backups are named by date.
 */
export async function listBackups(client: S3Client, bucket: string, prefix: string, signal: AbortSignal): Promise<_Object[]> {
  const backups: _Object[] = [];
  let token: string | undefined;
  do {
    const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix || undefined, ContinuationToken: token }), {
      abortSignal: signal,
    });
    for (const o of page.Contents ?? []) {
      if (o.Key && !o.Key.endsWith(SIDECAR) && !o.Key.endsWith('/') && o.LastModified) backups.push(o);
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  backups.sort((a, b) => b.LastModified!.getTime() - a.LastModified!.getTime() || (b.Key! < a.Key! ? -1 : b.Key! > a.Key! ? 1 : 0));
  return backups;
}

/** The digest in `<key>.sha256`: the first word, as `sha256sum` writes `<hex>  <file>`; undefined if there is no sidecar. */
async function readSidecar(client: S3Client, bucket: string, key: string, signal: AbortSignal): Promise<string | undefined> {
  try {
    const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }), { abortSignal: signal });
    const text = (await res.Body?.transformToString('utf8')) ?? '';
    return text.trim().split(/\s+/)[0]?.toLowerCase() ?? '';
  } catch (err) {
    if ((err as { name?: string }).name === 'NoSuchKey') return undefined;
    throw err;
  }
}

/** SHA-256 of an object, streamed chunk by chunk: a backup may be far larger than memory. */
async function streamSha256(client: S3Client, bucket: string, key: string, signal: AbortSignal): Promise<string> {
  const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }), { abortSignal: signal });
  const body = res.Body;
  if (!(body instanceof Readable)) throw new Error(`reading ${key}: the S3 client returned no Node.js stream`);
  const hash = createHash('sha256');
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      done();
    },
  });
  // pipeline destroys the body (and its socket) on abort or error.
  await pipeline(body, sink, { signal });
  return hash.digest('hex');
}

/** The SDK's error code and message (`InvalidAccessKeyId: The AWS Access Key Id ...`), or node's own. */
export function sdkReason(err: unknown): string {
  const e = err as { name?: string; message?: string; $metadata?: unknown; Code?: string };
  if (e && typeof e === 'object' && e.$metadata !== undefined && e.name && e.name !== 'Error') {
    const message = e.message && e.message !== e.name && e.message !== 'UnknownError' ? e.message : '';
    return message ? `${e.name}: ${message}` : e.name;
  }
  return reasonOf(err);
}

function formatAge(ms: number): string {
  if (ms < 60_000) return formatDuration(ms);
  for (const [unit, size] of [
    ['days', 86_400_000],
    ['hours', 3_600_000],
    ['minutes', 60_000],
  ] as const) {
    if (ms >= size) return `${+(ms / size).toFixed(1)} ${unit}`;
  }
  return formatDuration(ms);
}

/** A fraction as a whole percentage, with a decimal when rounding would make it read as the limit. */
function percent(ratio: number, limit?: number): string {
  const whole = Math.round(ratio * 100);
  if (limit !== undefined && whole >= Math.round(limit * 100)) return `${+(ratio * 100).toFixed(2)}%`;
  return `${whole}%`;
}

/** The SDK does not echo keys in its messages today; this keeps it so if it ever does. */
export function scrub(reason: string, secrets: Array<string | undefined>): string {
  let out = reason;
  for (const secret of secrets) if (secret && secret.length >= 4) out = out.split(secret).join('[REDACTED]');
  return out;
}
