import { createHash } from 'node:crypto';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closedPort, silentServer } from '../../helpers/net.js';
import { probe } from '../../helpers/probe.js';
import { startS3rver } from '../../helpers/s3rver.js';

const BUCKET = 'backups';
// s3rver's built-in account; it checks signatures, so any other key or secret is refused.
const KEY = 'S3RVER';
const SECRET = 'S3RVER';

describe('s3-backup prober', () => {
  let s3rver: Awaited<ReturnType<typeof startS3rver>>;
  let endpoint: string;
  let s3: S3Client;

  const put = (key: string, body: string | Buffer) =>
    s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: typeof body === 'string' ? Buffer.from(body) : body }));
  const sha256 = (body: string | Buffer) => createHash('sha256').update(body).digest('hex');
  const settings = (prefix: string, extra: Record<string, unknown> = {}) => ({
    endpoint,
    region: 'us-east-1',
    bucket: BUCKET,
    prefix,
    force_path_style: true,
    access_key_id: KEY,
    secret_access_key: SECRET,
    max_age: '1h',
    ...extra,
  });
  const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

  beforeAll(async () => {
    s3rver = await startS3rver({ bucket: BUCKET, accessKeyId: KEY, secretAccessKey: SECRET });
    ({ endpoint, s3 } = s3rver);
  });
  afterAll(async () => {
    await s3rver?.stop();
  });

  it('passes on a fresh backup whose SHA-256 sidecar matches', async () => {
    const older = Buffer.alloc(1000, 'a');
    const newest = Buffer.alloc(256 * 1024 + 7, 'orders');
    await put('fresh/2026-10-31.dump', older);
    await put('fresh/2026-10-31.dump.sha256', sha256(older));
    await pause(1100); // s3rver keeps LastModified to the second
    await put('fresh/2026-11-01.dump', newest);
    await put('fresh/2026-11-01.dump.sha256', `${sha256(newest)}  2026-11-01.dump\n`);
    const r = await probe('s3-backup', settings('fresh/', { checksum: 'sha256-sidecar', min_count: 2, min_size_ratio: 0.5 }));
    expect(r).toMatchObject({
      ok: true,
      reason: 'ok',
      observed: {
        newest_key: 'fresh/2026-11-01.dump',
        newest_size_bytes: newest.length,
        previous_size_bytes: older.length,
        backup_count: 2,
        checksum_ok: true,
      },
    });
    expect(r.observed.newest_age_seconds).toBeGreaterThanOrEqual(0);
    expect(r.observed.newest_age_seconds).toBeLessThan(60);
  });

  it('fails when there is no backup under the prefix', async () => {
    const r = await probe('s3-backup', settings('nothing-here/'));
    expect(r).toMatchObject({ ok: false, reason: `no backup under s3://${BUCKET}/nothing-here/`, observed: { backup_count: 0 } });
  });

  it('does not count sidecars as backups', async () => {
    await put('only-sidecar/x.dump.sha256', sha256('x'));
    const r = await probe('s3-backup', settings('only-sidecar/'));
    expect(r).toMatchObject({ ok: false, reason: `no backup under s3://${BUCKET}/only-sidecar/` });
  });

  it('fails when the newest backup is older than max_age', async () => {
    await put('stale/2026-11-01.dump', 'data');
    await pause(1100);
    const r = await probe('s3-backup', settings('stale/', { max_age: '500ms' }));
    expect(r.ok).toBe(false);
    expect(r.reason).toMatch(/^newest backup stale\/2026-11-01\.dump is \d+(\.\d+)?s old \(max 500ms\)$/);
    expect(r.observed.newest_age_seconds).toBeGreaterThan(0.5);
  });

  it('fails when the newest backup is empty', async () => {
    await put('empty/2026-11-01.dump', '');
    const r = await probe('s3-backup', settings('empty/'));
    expect(r).toMatchObject({ ok: false, reason: 'newest backup empty/2026-11-01.dump is 0 bytes', observed: { newest_size_bytes: 0 } });
  });

  it('fails when the newest backup is under min_size_bytes', async () => {
    await put('small/2026-11-01.dump', 'tiny');
    const r = await probe('s3-backup', settings('small/', { min_size_bytes: 1024 }));
    expect(r).toMatchObject({ ok: false, reason: 'newest backup small/2026-11-01.dump is 4 bytes (min 1024)' });
  });

  it('fails when the newest backup shrank below min_size_ratio of the previous one', async () => {
    await put('shrunk/2026-10-31.dump', Buffer.alloc(1000, 'x'));
    await pause(1100);
    await put('shrunk/2026-11-01.dump', Buffer.alloc(120, 'x'));
    const r = await probe('s3-backup', settings('shrunk/', { min_size_ratio: 0.5 }));
    expect(r).toMatchObject({
      ok: false,
      reason: 'newest backup shrunk/2026-11-01.dump is 12% of the previous one (min 50%)',
      observed: { newest_size_bytes: 120, previous_size_bytes: 1000, backup_count: 2 },
    });
  });

  it('fails when fewer than min_count backups are retained', async () => {
    await put('few/2026-10-31.dump', 'one');
    await put('few/2026-11-01.dump', 'two');
    const r = await probe('s3-backup', settings('few/', { min_count: 7 }));
    expect(r).toMatchObject({ ok: false, reason: 'only 2 backups retained (min 7)', observed: { backup_count: 2 } });
  });

  it('fails on a checksum mismatch', async () => {
    await put('corrupt/2026-11-01.dump', 'the real dump');
    await put('corrupt/2026-11-01.dump.sha256', sha256('what was meant to be uploaded'));
    const r = await probe('s3-backup', settings('corrupt/', { checksum: 'sha256-sidecar' }));
    expect(r).toMatchObject({ ok: false, reason: 'checksum mismatch for corrupt/2026-11-01.dump', observed: { checksum_ok: false } });
  });

  it('fails when the checksum sidecar is missing', async () => {
    await put('nosidecar/2026-11-01.dump', 'dump');
    const r = await probe('s3-backup', settings('nosidecar/', { checksum: 'sha256-sidecar' }));
    expect(r).toMatchObject({ ok: false, reason: 'checksum sidecar nosidecar/2026-11-01.dump.sha256 is missing' });
  });

  it('reports an unreachable store in the words of the OS', async () => {
    const port = await closedPort();
    const r = await probe('s3-backup', { ...settings('fresh/'), endpoint: `http://127.0.0.1:${port}` });
    expect(r).toMatchObject({ ok: false, reason: `connect ECONNREFUSED 127.0.0.1:${port}` });
  });

  it('times out against a store that accepts and never answers', async () => {
    const silent = await silentServer();
    try {
      const r = await probe('s3-backup', { ...settings('fresh/'), endpoint: `http://127.0.0.1:${silent.port}` }, { timeoutMs: 300 });
      expect(r).toMatchObject({ ok: false, reason: 'timed out after 300ms' });
      expect(r.durationSeconds).toBeLessThan(3);
    } finally {
      await silent.close();
    }
  });

  it('reports an unknown access key with the store’s error, never the key', async () => {
    const r = await probe('s3-backup', settings('fresh/', { access_key_id: 'NOSUCHKEY1234', secret_access_key: 'wrong-secret-value' }));
    expect(r.ok).toBe(false);
    expect(r.reason).toMatch(/^InvalidAccessKeyId: /);
    expect(r.reason).not.toContain('NOSUCHKEY1234');
    expect(r.reason).not.toContain('wrong-secret-value');
  });

  // s3rver checks the access key id but not SigV4 signatures (its authentication middleware leaves
  // "Signature version 4 calculation" unimplemented), so a wrong secret cannot be shown here.
  it.skip('reports a wrong secret as SignatureDoesNotMatch (skipped: s3rver does not verify SigV4 signatures)', async () => {
    const r = await probe('s3-backup', settings('fresh/', { secret_access_key: 'wrong-secret-value' }));
    expect(r.ok).toBe(false);
    expect(r.reason).toMatch(/^SignatureDoesNotMatch: /);
    expect(r.reason).not.toContain('wrong-secret-value');
  });
});
