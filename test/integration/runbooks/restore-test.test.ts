import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import pino from 'pino';
import { parse } from 'yaml';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../../../src/daemon.js';
import { hashToken } from '../../../src/http/auth.js';
import type { ExecutionView } from '../../../src/runbooks/executor.js';
import { s3Restore } from '../../../src/runbooks/steps/s3-restore.js';
import type { StepContext } from '../../../src/runbooks/steps/types.js';
import { writeConfig } from '../../helpers/config.js';
import { freshRedisDb } from '../../helpers/redis-db.js';
import { PG, psql, scratchDatabases } from '../../helpers/scratch.js';
import { startS3rver } from '../../helpers/s3rver.js';

const TOKEN = 'tok-restore-test-operator-0123456789';
const BUCKET = 'backups';
// s3rver's built-in account.
const S3_KEY = 'S3RVER';
const MY = ['--host=127.0.0.1', '--port=3306', '--user=root'];
const SOURCE_DB = `continuity_rt_source_${process.pid}`;
const ROWS = 3000;
const RUNBOOKS = ['restore-test-postgres', 'restore-test-mysql', 'restore-test-files'];
// MariaDB's root here has an empty password: the mysql runbook's scratch_password points at an empty variable.
const MYSQL_PASSWORD = '${env:CONTINUITY_TEST_MYSQL_PASSWORD}';
const UTC_TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/;

class Sink extends Writable {
  override _write(_c: Buffer, _e: string, done: () => void) {
    done();
  }
}

const mysql = (sql: string, db?: string) =>
  execFileSync('mysql', [...MY, '--batch', '--skip-column-names', ...(db ? [`--database=${db}`] : []), `--execute=${sql}`], {
    encoding: 'utf8',
    env: { ...process.env, MYSQL_PWD: '' },
  }).trim();
const scratchMysqlDatabases = () => mysql("SHOW DATABASES LIKE 'continuity\\_restore\\_%'").split('\n').filter(Boolean);

describe('restore-test runbooks', () => {
  let s3rver: Awaited<ReturnType<typeof startS3rver>>;
  let endpoint: string;
  let s3: S3Client;
  let daemon: Daemon;
  let dump: Buffer;

  const put = (key: string, body: Buffer | string) =>
    s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: typeof body === 'string' ? Buffer.from(body) : body }));
  const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

  beforeAll(async () => {
    psql(`DROP DATABASE IF EXISTS ${SOURCE_DB}`);
    psql(`CREATE DATABASE ${SOURCE_DB}`);
    // The newest row is an hour older than any backup of it.
    psql(
      `CREATE TABLE orders (id int PRIMARY KEY, note text, created_at timestamptz NOT NULL); INSERT INTO orders SELECT g, md5(g::text) || repeat('x', 200), now() - interval '1 hour' - g * interval '1 second' FROM generate_series(1, ${ROWS}) g`,
      SOURCE_DB,
    );
    dump = execFileSync('pg_dump', [...PG, '-Fc', '-d', SOURCE_DB], { maxBuffer: 64 * 1024 * 1024 });

    s3rver = await startS3rver({ bucket: BUCKET, accessKeyId: S3_KEY, secretAccessKey: S3_KEY });
    ({ endpoint, s3 } = s3rver);

    process.env.CONTINUITY_S3_ACCESS_KEY_ID = S3_KEY;
    process.env.CONTINUITY_S3_SECRET_ACCESS_KEY = S3_KEY;
    process.env.CONTINUITY_DB_PASSWORD = 'unused-with-trust-auth';
    process.env.CONTINUITY_TEST_MYSQL_PASSWORD = '';
    const redisUrl = await freshRedisDb(15);
    const cfg = writeConfig({
      config: `daemon:\n  listen: 127.0.0.1:0\n  redis_url: ${redisUrl}\n  runbooks_dir: ../runbooks\n  state_dir: ../var\nauth:\n  tokens:\n    - { name: rita, sha256: ${hashToken(TOKEN)}, roles: [operator] }\nsites:\n  p: { role: primary }\n  d: { role: dr }\nservices: {}\n`,
      probes: {},
    });
    for (const name of RUNBOOKS) {
      mkdirSync(join(cfg.dir, 'runbooks', name), { recursive: true });
      copyFileSync(`runbooks/${name}/v1.yaml`, join(cfg.dir, 'runbooks', name, 'v1.yaml'));
    }
    daemon = new Daemon({ configPath: cfg.configPath, port: 0, logStream: new Sink() });
    await daemon.start();
  }, 60_000);

  afterAll(async () => {
    await daemon?.stop();
    await s3rver?.stop();
    psql(`DROP DATABASE IF EXISTS ${SOURCE_DB} WITH (FORCE)`);
  });

  const start = (runbook: string, inputs: Record<string, unknown>) =>
    fetch(`${daemon.url}/api/v1/runbooks/${runbook}/executions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        mode: 'live',
        inputs: { s3_endpoint: endpoint, s3_force_path_style: true, bucket: BUCKET, ...inputs },
      }),
    });
  const run = async (runbook: string, inputs: Record<string, unknown>): Promise<ExecutionView> => {
    const res = await start(runbook, inputs);
    expect(res.status, await res.clone().text()).toBe(201);
    const { execution } = (await res.json()) as { execution: { id: string } };
    for (let i = 0; i < 600; i++) {
      const v = (await (
        await fetch(`${daemon.url}/api/v1/executions/${execution.id}`, { headers: { authorization: `Bearer ${TOKEN}` } })
      ).json()) as ExecutionView;
      if (['succeeded', 'failed', 'aborted', 'rolled_back'].includes(v.execution.status)) return v;
      await pause(50);
    }
    throw new Error('execution did not finish');
  };
  const step = (v: ExecutionView, id: string) => v.steps.find((s) => s.step === id)!;
  const stages = (v: ExecutionView) => Object.fromEntries(v.steps.map((s) => [s.step, s.stage]));

  describe('restore-test-postgres', () => {
    const runPg = (inputs: Record<string, unknown>) =>
      run('restore-test-postgres', { prefix: 'orders/', table: 'public.orders', ...inputs });
    // A given key, so later tests do not depend on which backup is the newest.
    const firstBackup = { prefix: '', key: 'orders/2026-11-01.dump' };

    it('restores the newest backup into a scratch database, counts its rows and drops it', async () => {
      const before = Date.now() / 1000;
      await put('orders/2026-11-01.dump', dump);
      await pause(1100); // s3rver keeps LastModified to the second: the sidecar is the newest object
      await put('orders/2026-11-01.dump.sha256', 'not a backup');
      const v = await runPg({ min_rows: ROWS });
      expect(v.execution.status, JSON.stringify(v.timeline)).toBe('succeeded');
      expect(step(v, 'create_scratch').status).toBe('succeeded');
      const restore = step(v, 'restore');
      expect(restore).toMatchObject({
        status: 'succeeded',
        outputs: { key: 'orders/2026-11-01.dump', bytes: dump.length, total_bytes: dump.length },
        progress: { activity: 'restore', done: dump.length, total: dump.length, unit: 'bytes' },
      });
      const outputs = restore.outputs as { last_modified: number; download_seconds: number; seconds: number };
      expect(outputs.last_modified).toBeGreaterThanOrEqual(Math.floor(before));
      expect(outputs.last_modified).toBeLessThanOrEqual(Date.now() / 1000);
      expect(outputs.download_seconds).toBeGreaterThan(0);
      expect(outputs.download_seconds).toBeLessThanOrEqual(outputs.seconds);
      expect(restore.output).toContain(`s3://${BUCKET}/orders/2026-11-01.dump: ${dump.length} bytes streamed into pg_restore`);
      expect(step(v, 'count_rows')).toMatchObject({ status: 'succeeded', outputs: { rows: ROWS } });
      expect(step(v, 'assert_rows').status).toBe('skipped');
      expect(step(v, 'newest_row').status).toBe('skipped');
      expect(step(v, 'assert_fresh').status).toBe('skipped');
      expect(step(v, 'drop_scratch').status).toBe('succeeded');
      expect(stages(v)).toEqual({
        create_scratch: 'prepare',
        restore: 'restore',
        count_rows: 'validate',
        assert_rows: 'validate',
        newest_row: 'validate',
        assert_fresh: 'validate',
        drop_scratch: 'cleanup',
      });
      expect(scratchDatabases()).not.toContain(`continuity_restore_${v.execution.id}`);
    });

    it('fails on too few rows, and the rollback drops the scratch database', async () => {
      const v = await runPg({ min_rows: ROWS + 1 });
      expect(v.execution.status).toBe('rolled_back');
      expect(step(v, 'assert_rows')).toMatchObject({
        status: 'failed',
        reason: `sh exited with code 1, expected 0: only ${ROWS} rows in public.orders, expected at least ${ROWS + 1}`,
      });
      expect(step(v, 'drop_scratch_on_failure')).toMatchObject({ status: 'succeeded', stage: 'cleanup' });
      expect(scratchDatabases()).not.toContain(`continuity_restore_${v.execution.id}`);
    });

    it('passes the time_column check when the newest row is recent enough for the backup', async () => {
      const v = await runPg({ ...firstBackup, time_column: 'created_at' });
      expect(v.execution.status, JSON.stringify(v.timeline)).toBe('succeeded');
      const newest = step(v, 'newest_row');
      expect(newest).toMatchObject({ status: 'succeeded', outputs: { fresh: true } });
      const out = newest.outputs as { newest_at: string; backup_at: string; lag_seconds: number };
      expect(out.newest_at).toMatch(UTC_TIME);
      expect(out.backup_at).toMatch(UTC_TIME);
      // The newest row is an hour (and a second) older than the backup, which took seconds to write and upload.
      expect(out.lag_seconds).toBeGreaterThanOrEqual(3600);
      expect(out.lag_seconds).toBeLessThan(3600 + 300);
      expect(step(v, 'assert_fresh').status).toBe('skipped');
      expect(scratchDatabases()).not.toContain(`continuity_restore_${v.execution.id}`);
    });

    it('fails the time_column check with both times when the newest row is older than max_row_lag_seconds', async () => {
      const v = await runPg({ ...firstBackup, time_column: 'created_at', max_row_lag_seconds: 60 });
      expect(v.execution.status).toBe('rolled_back');
      expect(step(v, 'newest_row')).toMatchObject({ status: 'succeeded', outputs: { fresh: false } });
      const { newest_at, backup_at } = step(v, 'newest_row').outputs as { newest_at: string; backup_at: string };
      expect(step(v, 'assert_fresh')).toMatchObject({
        status: 'failed',
        reason: `sh exited with code 1, expected 0: the newest public.orders.created_at is ${newest_at}, more than 60 s (max_row_lag_seconds) before the backup was written at ${backup_at}`,
      });
      expect(step(v, 'drop_scratch_on_failure').status).toBe('succeeded');
      expect(scratchDatabases()).not.toContain(`continuity_restore_${v.execution.id}`);
    });

    it('a time_column that is not a column fails with the server saying so, and is rolled back', async () => {
      const v = await runPg({ ...firstBackup, time_column: 'created_at"; DROP TABLE orders; --' });
      expect(v.execution.status).toBe('rolled_back');
      expect(step(v, 'newest_row')).toMatchObject({ status: 'failed', reason: expect.stringMatching(/column .* does not exist/) });
      expect(scratchDatabases()).not.toContain(`continuity_restore_${v.execution.id}`);
    });

    it('refuses a key outside the prefix: the restore step fails before reading anything', async () => {
      const v = await runPg({ key: 'raw/blob.bin' });
      expect(v.execution.status).toBe('rolled_back');
      expect(step(v, 'restore')).toMatchObject({
        status: 'failed',
        reason: 'key: raw/blob.bin is not under orders/ (newest_under): a key picked must belong to the backup set',
      });
      expect(scratchDatabases()).not.toContain(`continuity_restore_${v.execution.id}`);
    });

    it("a truncated newest backup fails with pg_restore's own error and is rolled back", async () => {
      await pause(1100);
      const half = dump.subarray(0, Math.floor(dump.length / 2));
      await put('orders/2026-11-02.dump', half);
      const v = await runPg({ min_rows: 1 });
      expect(v.execution.status).toBe('rolled_back');
      const restore = step(v, 'restore');
      expect(restore.status).toBe('failed');
      expect(restore.reason).toMatch(/^pg_restore exited with code 1, expected 0: pg_restore: error: /);
      expect(restore.reason).toMatch(/could not read (from )?input file: end of file|too short/);
      expect(restore.output).toContain(`s3://${BUCKET}/orders/2026-11-02.dump: ${half.length} bytes streamed into pg_restore`);
      const failed = v.timeline.filter((e) => e.step === 'restore').map((e) => e.message);
      expect(failed.join('\n')).toContain('pg_restore: error: ');
      expect(v.steps.find((s) => s.step === 'count_rows')?.status).not.toBe('succeeded');
      expect(step(v, 'drop_scratch_on_failure').status).toBe('succeeded');
      expect(scratchDatabases()).not.toContain(`continuity_restore_${v.execution.id}`);
    });
  });

  describe('restore-test-mysql', () => {
    let sqlDump: Buffer;
    const runMy = (inputs: Record<string, unknown>) =>
      run('restore-test-mysql', { table: 'orders', scratch_password: MYSQL_PASSWORD, ...inputs });

    beforeAll(async () => {
      mysql(`DROP DATABASE IF EXISTS ${SOURCE_DB}`);
      mysql(`CREATE DATABASE ${SOURCE_DB}`);
      // DATETIME in UTC, as the runbook reads it; the newest row an hour older than the backup.
      mysql(
        `CREATE TABLE orders (id int PRIMARY KEY, note text, created_at datetime NOT NULL); INSERT INTO orders SELECT seq, CONCAT(MD5(seq), REPEAT('x', 200)), UTC_TIMESTAMP() - INTERVAL 1 HOUR - INTERVAL seq SECOND FROM seq_1_to_${ROWS}`,
        SOURCE_DB,
      );
      sqlDump = execFileSync('mysqldump', [...MY, SOURCE_DB], { maxBuffer: 64 * 1024 * 1024, env: { ...process.env, MYSQL_PWD: '' } });
      await put('mysql/2026-11-01.sql', sqlDump);
      await put('mysql/2026-11-01.sql.gz', gzipSync(sqlDump));
    }, 60_000);

    afterAll(() => {
      mysql(`DROP DATABASE IF EXISTS ${SOURCE_DB}`);
    });

    it('restores a plain mysqldump into a scratch database, checks rows and the newest time, and drops it', async () => {
      const v = await runMy({ key: 'mysql/2026-11-01.sql', min_rows: ROWS, time_column: 'created_at' });
      expect(v.execution.status, JSON.stringify(v.timeline)).toBe('succeeded');
      expect(step(v, 'restore')).toMatchObject({
        status: 'succeeded',
        outputs: { key: 'mysql/2026-11-01.sql', bytes: sqlDump.length, total_bytes: sqlDump.length },
      });
      expect(step(v, 'restore').output).toMatch(
        new RegExp(`^s3://${BUCKET}/mysql/2026-11-01\\.sql: ${sqlDump.length} bytes streamed into mysql$`, 'm'),
      );
      expect(step(v, 'count_rows')).toMatchObject({ status: 'succeeded', outputs: { rows: ROWS } });
      expect(step(v, 'assert_rows').status).toBe('skipped');
      const newest = step(v, 'newest_row');
      expect(newest.status).toBe('succeeded');
      const { newest: at, newest_at } = newest.outputs as { newest: number; newest_at: string };
      expect(newest_at).toMatch(UTC_TIME);
      expect(new Date(newest_at).getTime() / 1000).toBe(at);
      expect(step(v, 'assert_fresh').status).toBe('skipped');
      expect(step(v, 'drop_scratch').status).toBe('succeeded');
      expect(stages(v)).toMatchObject({ create_scratch: 'prepare', restore: 'restore', count_rows: 'validate', drop_scratch: 'cleanup' });
      expect(scratchMysqlDatabases()).not.toContain(`continuity_restore_${v.execution.id}`);
    });

    it('gunzips a .sql.gz dump on its way into mysql', async () => {
      // Both dumps went up in the same second: on equal times the later key (.sql.gz) is the newest.
      const v = await runMy({ prefix: 'mysql/', min_rows: ROWS });
      expect(v.execution.status, JSON.stringify(v.timeline)).toBe('succeeded');
      const gz = gzipSync(sqlDump);
      expect(step(v, 'restore')).toMatchObject({ outputs: { key: 'mysql/2026-11-01.sql.gz', bytes: gz.length, total_bytes: gz.length } });
      expect(step(v, 'restore').output).toContain(`${gz.length} bytes streamed into mysql, gunzipped`);
      expect(step(v, 'count_rows').outputs).toEqual({ rows: ROWS });
      expect(scratchMysqlDatabases()).not.toContain(`continuity_restore_${v.execution.id}`);
    });

    it('fails on too few rows or a too old newest row, and the rollback drops the scratch database', async () => {
      const few = await runMy({ key: 'mysql/2026-11-01.sql.gz', min_rows: ROWS + 1 });
      expect(few.execution.status).toBe('rolled_back');
      expect(step(few, 'assert_rows')).toMatchObject({
        status: 'failed',
        reason: `sh exited with code 1, expected 0: only ${ROWS} rows in orders, expected at least ${ROWS + 1}`,
      });
      expect(step(few, 'drop_scratch_on_failure').status).toBe('succeeded');

      const old = await runMy({ key: 'mysql/2026-11-01.sql.gz', time_column: 'created_at', max_row_lag_seconds: 60 });
      expect(old.execution.status).toBe('rolled_back');
      const { newest_at } = step(old, 'newest_row').outputs as { newest_at: string };
      expect(step(old, 'assert_fresh')).toMatchObject({
        status: 'failed',
        reason: expect.stringMatching(
          new RegExp(
            `^sh exited with code 1, expected 0: the newest orders\\.created_at is ${newest_at}, more than 60 s \\(max_row_lag_seconds\\) before the backup was written at \\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ$`,
          ),
        ),
      });
      const scratch = scratchMysqlDatabases();
      expect(scratch).not.toContain(`continuity_restore_${few.execution.id}`);
      expect(scratch).not.toContain(`continuity_restore_${old.execution.id}`);
    });

    it('refuses a table name that is not a plain identifier before anything runs', async () => {
      const res = await start('restore-test-mysql', {
        key: 'mysql/2026-11-01.sql',
        table: 'orders` WHERE 1=0 --',
        scratch_password: MYSQL_PASSWORD,
      });
      expect(res.status).toBe(400);
      expect(await res.text()).toContain('inputs.table');
    });

    it('the drop counts a database already gone as dropped (a retry after a lost answer), and still fails on a real error', () => {
      const rb = parse(readFileSync('runbooks/restore-test-mysql/v1.yaml', 'utf8')) as {
        steps: Array<{ id: string; shell?: { argv: string[] } }>;
      };
      // sh -c <script> sh, then the mysqladmin arguments.
      const [sh, ...wrapper] = rb.steps.find((s) => s.id === 'drop_scratch')!.shell!.argv.slice(0, 4);
      const drop = (port: number) =>
        spawnSync(
          sh!,
          [...wrapper, '--host=127.0.0.1', `--port=${port}`, '--user=root', '--force', 'drop', `continuity_restore_gone_${process.pid}`],
          {
            encoding: 'utf8',
            env: { ...process.env, MYSQL_PWD: '' },
          },
        );
      expect(drop(3306)).toMatchObject({ status: 0, stdout: expect.stringContaining("database doesn't exist") });
      const refused = drop(1);
      expect(refused.status).toBe(1);
      // mysqladmin rings the terminal bell (BEL) before its error.
      expect(refused.stderr.replace('\u0007', '')).toMatch(/^mysqladmin: connect to server at '127\.0\.0\.1' failed/);
    });

    it("a truncated dump fails with mysql's own error and is rolled back", async () => {
      const half = sqlDump.subarray(0, Math.floor(sqlDump.length / 2));
      await put('mysql/truncated.sql', half);
      const v = await runMy({ key: 'mysql/truncated.sql' });
      expect(v.execution.status).toBe('rolled_back');
      expect(step(v, 'restore')).toMatchObject({
        status: 'failed',
        reason: expect.stringMatching(
          /^mysql exited with code 1, expected 0: ERROR 1064 \(42000\) at line \d+: You have an error in your SQL syntax/,
        ),
      });
      expect(step(v, 'count_rows')).toBeUndefined();
      expect(step(v, 'drop_scratch_on_failure').status).toBe('succeeded');
      expect(scratchMysqlDatabases()).not.toContain(`continuity_restore_${v.execution.id}`);
    });

    it('a truncated .gz fails as a gunzip failure and is rolled back', async () => {
      const gz = gzipSync(sqlDump);
      const half = gz.subarray(0, Math.floor(gz.length / 2));
      await put('mysql/truncated.sql.gz', half);
      const v = await runMy({ key: 'mysql/truncated.sql.gz' });
      expect(v.execution.status).toBe('rolled_back');
      expect(step(v, 'restore')).toMatchObject({
        status: 'failed',
        reason: expect.stringMatching(
          new RegExp(`^gunzip of s3://${BUCKET}/mysql/truncated\\.sql\\.gz failed after ${half.length} bytes: unexpected end of file`),
        ),
      });
      expect(step(v, 'drop_scratch_on_failure').status).toBe('succeeded');
      expect(scratchMysqlDatabases()).not.toContain(`continuity_restore_${v.execution.id}`);
    });
  });

  describe('restore-test-files', () => {
    let scratchDir: string;
    let tree: string;
    let tgz: Buffer;
    const runFiles = (inputs: Record<string, unknown>) => run('restore-test-files', { scratch_dir: scratchDir, ...inputs });
    const leftovers = () => readdirSync(scratchDir).filter((n) => n.startsWith('continuity_restore_'));

    beforeAll(async () => {
      scratchDir = mkdtempSync(join(tmpdir(), 'continuity-rt-scratch-'));
      tree = mkdtempSync(join(tmpdir(), 'continuity-rt-tree-'));
      mkdirSync(join(tree, 'etc/app'), { recursive: true });
      mkdirSync(join(tree, 'data'));
      writeFileSync(join(tree, 'etc/app/config.yaml'), 'port: 8080\n');
      writeFileSync(join(tree, 'data/a.txt'), 'a'.repeat(10_000));
      writeFileSync(join(tree, 'data/b txt; with spaces'), 'b');
      tgz = execFileSync('tar', ['-czf', '-', '-C', tree, '.']);
      await put('files/2026-11-01.tar.gz', tgz);
      await put('plain/files.tar', execFileSync('tar', ['-cf', '-', '-C', tree, '.']));
    });

    afterAll(() => {
      rmSync(scratchDir, { recursive: true, force: true });
      rmSync(tree, { recursive: true, force: true });
    });

    it('extracts a .tar.gz into a scratch folder, counts its files, finds expect_path and removes the folder', async () => {
      const v = await runFiles({ prefix: 'files/', min_files: 3, expect_path: 'etc/app/config.yaml' });
      expect(v.execution.status, JSON.stringify(v.timeline)).toBe('succeeded');
      expect(step(v, 'restore')).toMatchObject({
        status: 'succeeded',
        outputs: { key: 'files/2026-11-01.tar.gz', bytes: tgz.length, total_bytes: tgz.length },
      });
      expect(step(v, 'restore').output).toContain(`${tgz.length} bytes streamed into tar, gunzipped`);
      expect(step(v, 'count_files')).toMatchObject({ status: 'succeeded', outputs: { files: 3 } });
      expect(step(v, 'assert_files').status).toBe('skipped');
      expect(step(v, 'check_path').status).toBe('succeeded');
      expect(step(v, 'drop_scratch').status).toBe('succeeded');
      expect(stages(v)).toEqual({
        create_scratch: 'prepare',
        restore: 'restore',
        count_files: 'validate',
        assert_files: 'validate',
        check_path: 'validate',
        drop_scratch: 'cleanup',
      });
      expect(leftovers()).toEqual([]);
    });

    it('fails when expect_path is missing, and the rollback removes the folder', async () => {
      const v = await runFiles({ key: 'plain/files.tar', expect_path: 'etc/app/missing.yaml' });
      expect(v.execution.status).toBe('rolled_back');
      expect(step(v, 'restore').output).toMatch(/bytes streamed into tar$/m);
      expect(step(v, 'check_path')).toMatchObject({
        status: 'failed',
        reason: 'sh exited with code 1, expected 0: etc/app/missing.yaml is not in the restored tree',
      });
      expect(step(v, 'drop_scratch_on_failure')).toMatchObject({ status: 'succeeded', stage: 'cleanup' });
      expect(leftovers()).toEqual([]);
    });

    it('fails on too few files, and the rollback removes the folder', async () => {
      const v = await runFiles({ key: 'files/2026-11-01.tar.gz', min_files: 4 });
      expect(v.execution.status).toBe('rolled_back');
      expect(step(v, 'assert_files')).toMatchObject({
        status: 'failed',
        reason: 'sh exited with code 1, expected 0: only 3 files restored, expected at least 4',
      });
      expect(leftovers()).toEqual([]);
    });

    it('refuses an expect_path that leaves the tree', async () => {
      for (const path of ['../etc/passwd', '/etc/passwd', 'etc/../../x']) {
        const res = await start('restore-test-files', { key: 'plain/files.tar', scratch_dir: scratchDir, expect_path: path });
        expect(res.status, path).toBe(400);
        expect(await res.text()).toContain('inputs.expect_path');
      }
    });
  });

  describe('the s3-restore step itself', () => {
    const ctx = (signal: AbortSignal, progress?: StepContext['progress']): StepContext => ({
      executionId: 'x1',
      stepId: 'restore',
      mode: 'live',
      signal,
      timeoutMs: 30_000,
      log: pino({ level: 'silent' }),
      stateDir: tmpdir(),
      ...(progress ? { progress } : {}),
    });
    const settings = (extra: Record<string, unknown>) =>
      ({
        endpoint,
        region: 'us-east-1',
        bucket: BUCKET,
        force_path_style: true,
        access_key_id: S3_KEY,
        secret_access_key: S3_KEY,
        ...extra,
      }) as Parameters<typeof s3Restore.run>[0];
    const text = Buffer.from('continuity '.repeat(200_000));
    const never = () => new AbortController().signal;

    it('streams an object given by key into the command, byte for byte', async () => {
      await put('raw/blob.bin', Buffer.alloc(3 * 1024 * 1024 + 5, 'z'));
      const r = await s3Restore.run(settings({ key: 'raw/blob.bin', argv: ['wc', '-c'] }), ctx(never()));
      expect(r).toMatchObject({ ok: true, result: { key: 'raw/blob.bin', bytes: 3 * 1024 * 1024 + 5, exit_code: 0 } });
      expect(r.output).toContain(String(3 * 1024 * 1024 + 5));
      expect(typeof r.result.seconds).toBe('number');
    });

    it('reports a missing object and an empty prefix in S3 terms', async () => {
      const missing = await s3Restore.run(settings({ key: 'raw/none.bin', argv: ['cat'] }), ctx(never()));
      expect(missing).toMatchObject({ ok: false, reason: expect.stringMatching(/^NoSuchKey/) });
      const none = await s3Restore.run(settings({ newest_under: 'nothing/', argv: ['cat'] }), ctx(never()));
      expect(none).toMatchObject({ ok: false, reason: `no object under s3://${BUCKET}/nothing/` });
    });

    it("an empty key restores the newest under newest_under, and the result has the object's size and time", async () => {
      const before = Math.floor(Date.now() / 1000);
      await put('newest/a.bin', 'older');
      await pause(1100);
      await put('newest/b.bin', 'the newest');
      const r = await s3Restore.run(settings({ key: '', newest_under: 'newest/', argv: ['cat'] }), ctx(never()));
      expect(r).toMatchObject({ ok: true, result: { key: 'newest/b.bin', bytes: 10, total_bytes: 10 } });
      expect(r.output).toContain('the newest');
      const { last_modified, download_seconds, seconds } = r.result as { last_modified: number; download_seconds: number; seconds: number };
      expect(last_modified).toBeGreaterThanOrEqual(before);
      expect(last_modified).toBeLessThanOrEqual(Date.now() / 1000);
      expect(download_seconds).toBeGreaterThan(0);
      expect(download_seconds).toBeLessThanOrEqual(seconds);
    });

    it('gunzips a .gz key on its way (decompress auto), and passes it as stored with decompress none', async () => {
      const gz = gzipSync(text);
      await put('raw/text.txt.gz', gz);
      const auto = await s3Restore.run(settings({ key: 'raw/text.txt.gz', argv: ['wc', '-c'] }), ctx(never()));
      expect(auto).toMatchObject({ ok: true, result: { bytes: gz.length, total_bytes: gz.length } });
      expect(auto.output).toContain(`${gz.length} bytes streamed into wc, gunzipped`);
      expect(auto.output).toMatch(new RegExp(`^${text.length}$`, 'm'));
      const none = await s3Restore.run(settings({ key: 'raw/text.txt.gz', decompress: 'none', argv: ['wc', '-c'] }), ctx(never()));
      expect(none).toMatchObject({ ok: true, result: { bytes: gz.length } });
      expect(none.output).toMatch(new RegExp(`^${gz.length}$`, 'm'));
      expect(none.output).not.toContain('gunzipped');
    });

    it('gunzips any key with decompress gzip, and names a gunzip failure as such', async () => {
      await put('raw/text-gz.bin', gzipSync(text));
      const r = await s3Restore.run(settings({ key: 'raw/text-gz.bin', decompress: 'gzip', argv: ['wc', '-c'] }), ctx(never()));
      expect(r).toMatchObject({ ok: true });
      expect(r.output).toMatch(new RegExp(`^${text.length}$`, 'm'));
      await put('raw/not-gzip.gz', text);
      const bad = await s3Restore.run(settings({ key: 'raw/not-gzip.gz', argv: ['wc', '-c'] }), ctx(never()));
      expect(bad).toMatchObject({
        ok: false,
        reason: expect.stringMatching(
          new RegExp(`^gunzip of s3://${BUCKET}/raw/not-gzip\\.gz failed after \\d+ bytes: incorrect header check$`),
        ),
      });
    });

    it('reports progress: download as bytes arrive, then restore while the command still works', async () => {
      const gz = gzipSync(text);
      await put('raw/progress.gz', gz);
      const calls: Array<Parameters<NonNullable<StepContext['progress']>>[0]> = [];
      const r = await s3Restore.run(
        // The command reads everything, then takes a moment: the restore activity is reported before it ends.
        settings({ key: 'raw/progress.gz', argv: ['sh', '-c', 'cat >/dev/null; sleep 0.2'] }),
        ctx(never(), (p) => calls.push(p)),
      );
      expect(r.ok).toBe(true);
      const downloads = calls.filter((c) => c.activity === 'download');
      expect(downloads.length).toBeGreaterThan(0);
      for (const c of downloads) expect(c).toMatchObject({ total: gz.length, unit: 'bytes' });
      const done = downloads.map((c) => c.done!);
      expect(done).toEqual([...done].sort((a, b) => a - b));
      expect(done.at(-1)).toBe(gz.length);
      expect(calls.at(-1)).toEqual({ activity: 'restore', done: gz.length, total: gz.length, unit: 'bytes' });
      expect(calls.filter((c) => c.activity === 'restore')).toHaveLength(1);
    });

    it("quotes the mysql client's error line in the reason, even after warnings", async () => {
      await put('raw/small.sql', 'SELECT 1;');
      const script = 'cat >/dev/null; echo "mysql: [Warning] something" >&2; echo "ERROR 1064 (42000) at line 3: bad" >&2; exit 1';
      const r = await s3Restore.run(settings({ key: 'raw/small.sql', argv: ['sh', '-c', script] }), ctx(never()));
      expect(r).toMatchObject({ ok: false, reason: 'sh exited with code 1, expected 0: ERROR 1064 (42000) at line 3: bad' });
      expect(r.result.stderr).toBe('mysql: [Warning] something\nERROR 1064 (42000) at line 3: bad');
    });

    it('on abort stops the stream and kills the command that stopped reading', async () => {
      await put('raw/big.bin', Buffer.alloc(8 * 1024 * 1024, 'y'));
      const ac = new AbortController();
      setTimeout(() => ac.abort(new Error('step timed out after 300ms')), 300);
      const started = Date.now();
      const r = await s3Restore.run(settings({ key: 'raw/big.bin', argv: ['sh', '-c', 'sleep 30'] }), ctx(ac.signal));
      expect(Date.now() - started).toBeLessThan(5000);
      expect(r).toMatchObject({ ok: false, reason: 'step timed out after 300ms', result: { key: 'raw/big.bin' } });
      expect(r.result.bytes as number).toBeLessThan(8 * 1024 * 1024);
    });

    it('validates: a non-empty key or newest_under; a key with a prefix must lie under it', () => {
      const problem = [['key', 'a non-empty key or newest_under is needed']];
      expect(s3Restore.validate!(settings({ argv: ['cat'] }))).toEqual(problem);
      expect(s3Restore.validate!(settings({ key: '', argv: ['cat'] }))).toEqual(problem);
      expect(s3Restore.validate!(settings({ key: 'a', newest_under: 'b/', argv: ['cat'] }))).toEqual([
        ['key', 'a is not under b/ (newest_under): a key picked must belong to the backup set'],
      ]);
      expect(s3Restore.validate!(settings({ key: 'b/a', newest_under: 'b/', argv: ['cat'] }))).toEqual([]);
      expect(s3Restore.validate!(settings({ key: '', newest_under: 'b/', argv: ['cat'] }))).toEqual([]);
      expect(s3Restore.validate!(settings({ key: 'a', newest_under: '', argv: ['cat'] }))).toEqual([]);
      expect(s3Restore.validate!(settings({ key: '', newest_under: '', argv: ['cat'] }))).toEqual([]);
    });
  });
});
