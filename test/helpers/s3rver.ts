import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';

// s3rver ships no types and is CommonJS: the little of it the tests use, typed here.
interface S3rverServer {
  run(): Promise<{ address: string; port: number }>;
  close(): Promise<void>;
}
type S3rverCtor = new (opts: { address: string; port: number; directory: string; silent: boolean }) => S3rverServer;
const S3rver = createRequire(import.meta.url)('s3rver') as S3rverCtor;

/** An S3-protocol server on 127.0.0.1 with one bucket, and an SDK client for the test to fill it. */
export async function startS3rver(opts: { bucket: string; accessKeyId: string; secretAccessKey: string }): Promise<{
  endpoint: string;
  s3: S3Client;
  stop(): Promise<void>;
}> {
  const dir = mkdtempSync(join(tmpdir(), 'continuity-s3rver-'));
  const server = new S3rver({ address: '127.0.0.1', port: 0, directory: dir, silent: true });
  const { port } = await server.run();
  const endpoint = `http://127.0.0.1:${port}`;
  const s3 = new S3Client({
    endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: opts.accessKeyId, secretAccessKey: opts.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
  });
  await s3.send(new CreateBucketCommand({ Bucket: opts.bucket }));
  return {
    endpoint,
    s3,
    async stop() {
      s3.destroy();
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
