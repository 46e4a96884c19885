import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { cpSync } from 'node:fs';
import { join } from 'node:path';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashToken } from '../../../src/http/auth.js';
import { writeConfig } from '../../helpers/config.js';
import { freshRedisDb } from '../../helpers/redis-db.js';
import { PG, psql, scratchDatabases } from '../../helpers/scratch.js';
import { startS3rver } from '../../helpers/s3rver.js';
import { freePort } from '../../helpers/net.js';
import { until } from '../../helpers/until.js';

/**
 * kill -9 of the daemon in the middle of a restore (pg_restore reading the stream from S3): once a
 * daemon runs again, the interrupted test is ended with a failed verdict, and no scratch database
 * is left behind.
 */
const OPERATOR = 'tok-restore-crash-operator-0123456789';
const BUCKET = 'backups';
const S3_KEY = 'S3RVER';
const SOURCE_DB = `continuity_rtc_source_${process.pid}`;

describe('kill -9 in the middle of a restore test', () => {
  let s3rver: Awaited<ReturnType<typeof startS3rver>>;
  const children = new Set<ChildProcess>();

  beforeAll(async () => {
    psql(`DROP DATABASE IF EXISTS ${SOURCE_DB}`);
    psql(`CREATE DATABASE ${SOURCE_DB}`);
    // Some 60 MB of incompressible rows, dumped uncompressed: pg_restore takes a few seconds to read it.
    psql(
      `CREATE TABLE blobs (id int PRIMARY KEY, b bytea); INSERT INTO blobs SELECT g, decode(string_agg(md5(g::text || '-' || i::text), ''), 'hex') FROM generate_series(1, 3000) g, generate_series(1, 640) i GROUP BY g`,
      SOURCE_DB,
    );
    const dump = execFileSync('pg_dump', [...PG, '-Fc', '-Z0', '-d', SOURCE_DB], { maxBuffer: 512 * 1024 * 1024 });
    s3rver = await startS3rver({ bucket: BUCKET, accessKeyId: S3_KEY, secretAccessKey: S3_KEY });
    await s3rver.s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'blobs/2026-11-27.dump', Body: dump }));
  }, 120_000);

  afterAll(async () => {
    for (const c of children) c.kill('SIGKILL');
    await s3rver?.stop();
    psql(`DROP DATABASE IF EXISTS ${SOURCE_DB} WITH (FORCE)`);
  });

  it('the interrupted test ends failed once a daemon runs again, and its scratch database is swept', async () => {
    const redisUrl = await freshRedisDb(1);
    const port = await freePort();
    const cfg = writeConfig({
      config: `daemon:
  listen: 127.0.0.1:${port}
  redis_url: ${redisUrl}
  runbooks_dir: ../runbooks
  state_dir: ../var
  runbook_lock_duration: 1s
  shutdown_grace: 1s
auth:
  tokens:
    - { name: olga, sha256: ${hashToken(OPERATOR)}, roles: [operator] }
sites:
  p: { role: primary }
  d: { role: dr }
services:
  blobs: { rto: 1h }
restore_tests:
  blobs-backups:
    runbook: restore-test-postgres
    scratch: { postgres: { host: 127.0.0.1, port: 5432, user: postgres } }
    inputs: { table: public.blobs }
`,
      probes: {
        'backups.yaml': `probes:
  - id: blobs-backups
    kind: s3-backup
    site: p
    services: [blobs]
    interval: 1h
    timeout: 10s
    s3-backup: { endpoint: '${s3rver.endpoint}', bucket: ${BUCKET}, prefix: blobs/, force_path_style: true, max_age: 1d, access_key_id: '${S3_KEY}', secret_access_key: '${S3_KEY}' }
`,
      },
    });
    cpSync('runbooks/restore-test-postgres', join(cfg.dir, 'runbooks/restore-test-postgres'), { recursive: true });
    const env = {
      ...process.env,
      CONTINUITY_S3_ACCESS_KEY_ID: S3_KEY,
      CONTINUITY_S3_SECRET_ACCESS_KEY: S3_KEY,
      CONTINUITY_DB_PASSWORD: 'unused-with-trust-auth',
      CONTINUITY_FAILPOINTS: '',
    };
    const start = (failpoints = '') => {
      const child = spawn('node', ['bin/continuity.js', 'daemon', '-c', cfg.configPath], {
        env: { ...env, CONTINUITY_FAILPOINTS: failpoints },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      children.add(child);
      let err = '';
      child.stderr!.on('data', (d) => (err += d));
      const exited = new Promise<NodeJS.Signals | number | null>((r) => child.on('exit', (code, signal) => r(signal ?? code)));
      return { child, exited, stderr: () => err };
    };
    const api = async (method: string, path: string) => {
      const res = await fetch(`http://127.0.0.1:${port}${path}`, {
        method,
        headers: { authorization: `Bearer ${OPERATOR}`, ...(method === 'POST' ? { 'content-type': 'application/json' } : {}) },
        body: method === 'POST' ? '{}' : undefined,
      });
      return { status: res.status, json: (await res.json()) as Record<string, any> }; // eslint-disable-line @typescript-eslint/no-explicit-any
    };

    // The daemon kills itself (SIGKILL) once half the backup has streamed into pg_restore.
    const a = start('step:restore:mid-stream');
    await until('daemon A up', async () => ((await fetch(`http://127.0.0.1:${port}/healthz`)).ok ? true : undefined));
    const started = await api('POST', '/api/v1/restore-tests/blobs-backups/runs');
    expect(started.status).toBe(202);
    const id = started.json.execution.id as string;
    expect(await a.exited).toBe('SIGKILL');
    expect(scratchDatabases()).toContain(`continuity_restore_${id}`);

    const b = start();
    try {
      await until('daemon B up', async () => ((await fetch(`http://127.0.0.1:${port}/healthz`)).ok ? true : undefined));
      // What the dead daemon left: the restore step started, half the backup streamed, no result.
      const left = (await api('GET', `/api/v1/executions/${id}`)).json;
      expect(left.steps.find((s: { step: string }) => s.step === 'restore').status).toBe('started');
      const report = await until(
        'the report of the interrupted test',
        async () => {
          const r = await api('GET', `/api/v1/restore-tests/blobs-backups/reports/${id}`);
          return r.status === 200 ? r.json : undefined;
        },
        60_000,
        { every: 200 },
      );
      expect(report).toMatchObject({ result: 'fail', execution: { status: 'aborted' } });
      expect(report.reason).toContain('interrupted mid-step by a daemon restart');
      await until(
        'the scratch database swept',
        async () => (scratchDatabases().includes(`continuity_restore_${id}`) ? undefined : true),
        20_000,
      );
      // The execution's timeline says who ended it and why.
      const v = (await api('GET', `/api/v1/executions/${id}`)).json;
      expect(v.timeline.map((e: { message: string }) => e.message).join('\n')).toContain('aborted by restore-tests');
    } finally {
      b.child.kill('SIGTERM');
      await b.exited;
    }
  }, 180_000);
});
