import { execFile, execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, utimesSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../../../src/daemon.js';
import { hashToken } from '../../../src/http/auth.js';
import type { RestoreTestReport } from '../../../src/restore-tests/report.js';
import { writeConfig } from '../../helpers/config.js';
import { freshRedisDb } from '../../helpers/redis-db.js';
import { PG, psql, scratchDatabases } from '../../helpers/scratch.js';
import { startS3rver } from '../../helpers/s3rver.js';
import { until } from '../../helpers/until.js';

/**
 * Restore tests end to end, in process: a real PostgreSQL dump in s3rver, the daemon's restore-test
 * manager starting the restore-test-postgres runbook, the verdict against the service's RTO, the
 * reports, the metrics, the job schedulers and the sweeper.
 */
const OPERATOR = 'tok-restore-manager-operator-0123456789';
const VIEWER = 'tok-restore-manager-viewer-0123456789';
const BUCKET = 'backups';
const S3_KEY = 'S3RVER';
const SOURCE_DB = `continuity_rtm_source_${process.pid}`;
const ROWS = 2000;

class Sink extends Writable {
  override _write(_c: Buffer, _e: string, done: () => void) {
    done();
  }
}

const cli = (args: string[], token: string) =>
  new Promise<{ status: number; stdout: string; stderr: string }>((resolve) => {
    execFile(
      'node',
      ['bin/continuity.js', ...args],
      { env: { ...process.env, CONTINUITY_TOKEN: token }, timeout: 60_000 },
      (err, stdout, stderr) => resolve({ status: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });

describe('restore tests (manager)', () => {
  let s3rver: Awaited<ReturnType<typeof startS3rver>>;
  let s3: S3Client;
  let daemon: Daemon;
  let cfg: ReturnType<typeof writeConfig>;
  let scratchFolder: string;

  const probes = (endpoint: string) => `probes:
  - id: orders-backups
    kind: s3-backup
    site: p
    services: [orders]
    interval: 1h
    timeout: 10s
    s3-backup: { endpoint: '${endpoint}', bucket: ${BUCKET}, prefix: orders/, force_path_style: true, max_age: 1d, access_key_id: '${S3_KEY}', secret_access_key: '${S3_KEY}' }
  - id: ledger-backups
    kind: s3-backup
    site: p
    services: [ledger]
    interval: 1h
    timeout: 10s
    s3-backup: { endpoint: '${endpoint}', bucket: ${BUCKET}, prefix: orders/, force_path_style: true, max_age: 1d, access_key_id: '${S3_KEY}', secret_access_key: '${S3_KEY}' }
  - id: empty-backups
    kind: s3-backup
    site: p
    services: [orders]
    interval: 1h
    timeout: 10s
    s3-backup: { endpoint: '${endpoint}', bucket: ${BUCKET}, prefix: nothing/, force_path_style: true, max_age: 1d, access_key_id: '${S3_KEY}', secret_access_key: '${S3_KEY}' }
  - id: random-backups
    kind: s3-backup
    site: p
    services: [orders]
    interval: 1h
    timeout: 10s
    s3-backup: { endpoint: '${endpoint}', bucket: ${BUCKET}, prefix: orders/, force_path_style: true, max_age: 1d, access_key_id: '${S3_KEY}', secret_access_key: '${S3_KEY}' }
  - id: files-backups
    kind: s3-backup
    site: p
    services: [orders]
    interval: 1h
    timeout: 10s
    s3-backup: { endpoint: '${endpoint}', bucket: ${BUCKET}, prefix: files/, force_path_style: true, max_age: 1d, access_key_id: '${S3_KEY}', secret_access_key: '${S3_KEY}' }
`;
  const config = (redisUrl: string, ordersSchedule = '0 3 1 * *') => `daemon:
  listen: 127.0.0.1:0
  redis_url: ${redisUrl}
  runbooks_dir: ../runbooks
  state_dir: ../var
  runbook_lock_duration: 2s
auth:
  tokens:
    - { name: rita, sha256: ${hashToken(OPERATOR)}, roles: [operator] }
    - { name: vic, sha256: ${hashToken(VIEWER)}, roles: [viewer] }
sites:
  p: { role: primary }
  d: { role: dr }
services:
  orders: { rto: 1h }
  ledger: { rto: 1ms }
restore_tests:
  orders-backups:
    runbook: restore-test-postgres
    schedule: '${ordersSchedule}'
    timezone: Asia/Shanghai
    scratch: { postgres: { host: 127.0.0.1, port: 5432, user: postgres } }
    inputs: { table: public.orders, min_rows: ${ROWS} }
  ledger-backups:
    runbook: restore-test-postgres
    scratch: { postgres: { host: 127.0.0.1, port: 5432, user: postgres } }
    inputs: { table: public.orders }
  empty-backups:
    runbook: restore-test-postgres
    scratch: { postgres: { host: 127.0.0.1, port: 5432, user: postgres } }
    inputs: { table: public.orders }
  random-backups:
    runbook: restore-test-postgres
    pick: random
    window: 1d
    scratch: { postgres: { host: 127.0.0.1, port: 5432, user: postgres } }
    inputs: { table: public.orders }
  files-backups:
    runbook: restore-test-files
    scratch: { folder: ${scratchFolder} }
`;

  const api = async (method: string, path: string, token = OPERATOR) => {
    const res = await fetch(`${daemon.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(method === 'POST' ? { 'content-type': 'application/json' } : {}) },
      body: method === 'POST' ? '{}' : undefined,
    });
    const text = await res.text();
    return { status: res.status, text, json: () => JSON.parse(text) as Record<string, any> }; // eslint-disable-line @typescript-eslint/no-explicit-any
  };
  const runTest = async (set: string): Promise<RestoreTestReport> => {
    const started = await api('POST', `/api/v1/restore-tests/${set}/runs`);
    expect(started.status, started.text).toBe(202);
    const id = started.json().execution.id as string;
    return until(
      `the report of ${id}`,
      async () => {
        const r = await api('GET', `/api/v1/restore-tests/${set}/reports/${id}`, VIEWER);
        return r.status === 200 ? (r.json() as RestoreTestReport) : undefined;
      },
      60_000,
    );
  };
  const metric = async (name: string, labels: string) => {
    const text = await (await fetch(`${daemon.url}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
    return line === undefined ? undefined : Number(line.split(' ').at(-1));
  };

  beforeAll(async () => {
    psql(`DROP DATABASE IF EXISTS ${SOURCE_DB}`);
    psql(`CREATE DATABASE ${SOURCE_DB}`);
    psql(
      `CREATE TABLE orders (id int PRIMARY KEY, note text); INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, ${ROWS}) g`,
      SOURCE_DB,
    );
    const dump = execFileSync('pg_dump', [...PG, '-Fc', '-d', SOURCE_DB], { maxBuffer: 64 * 1024 * 1024 });
    s3rver = await startS3rver({ bucket: BUCKET, accessKeyId: S3_KEY, secretAccessKey: S3_KEY });
    s3 = s3rver.s3;
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'orders/2026-11-27.dump', Body: dump }));

    process.env.CONTINUITY_S3_ACCESS_KEY_ID = S3_KEY;
    process.env.CONTINUITY_S3_SECRET_ACCESS_KEY = S3_KEY;
    process.env.CONTINUITY_DB_PASSWORD = 'unused-with-trust-auth';
    const redisUrl = await freshRedisDb(2);
    cfg = writeConfig({ config: '', probes: {} });
    scratchFolder = join(cfg.dir, 'scratch');
    mkdirSync(scratchFolder);
    cfg.write('config/continuity.yaml', config(redisUrl));
    cfg.write('probes/backups.yaml', probes(s3rver.endpoint));
    for (const rb of ['restore-test-postgres', 'restore-test-files'])
      cpSync(join('runbooks', rb), join(cfg.dir, 'runbooks', rb), { recursive: true });
    // A small tree as a tar.gz backup for the files set.
    const tree = join(cfg.dir, 'tree');
    mkdirSync(join(tree, 'etc'), { recursive: true });
    cfg.write('tree/etc/app.conf', 'x=1\n');
    const tar = execFileSync('tar', ['-czf', '-', '-C', tree, '.']);
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'files/2026-11-27.tar.gz', Body: tar }));

    daemon = new Daemon({ configPath: cfg.configPath, port: 0, logStream: new Sink() });
    await daemon.start();
  }, 60_000);

  afterAll(async () => {
    await daemon?.stop();
    await s3rver?.stop();
    psql(`DROP DATABASE IF EXISTS ${SOURCE_DB} WITH (FORCE)`);
  });

  it('on demand: restores, validates, passes within the RTO, and reports it as JSON, Markdown, files and metrics', async () => {
    const r = await runTest('orders-backups');
    expect(r, JSON.stringify(r)).toMatchObject({
      backupSet: 'orders-backups',
      service: 'orders',
      runbook: 'restore-test-postgres',
      trigger: 'manual',
      requestedBy: 'rita',
      result: 'pass',
      rtoSeconds: 3600,
      backup: { key: 'orders/2026-11-27.dump' },
      execution: { status: 'succeeded' },
    });
    expect(r.backup.bytes).toBeGreaterThan(1000);
    expect(r.backup.ageAtTestSeconds).toBeGreaterThanOrEqual(0);
    // Timed apart: prepare, restore (with the download streamed into it), validate, cleanup; total excludes cleanup.
    for (const phase of ['total', 'prepare', 'download', 'restore', 'validate', 'cleanup'] as const)
      expect(r.timings[phase]).toBeGreaterThan(0);
    expect(r.timings.download!).toBeLessThanOrEqual(r.timings.restore!);
    expect(r.timings.total!).toBeGreaterThanOrEqual(r.timings.prepare! + r.timings.restore!);
    expect(r.rtoMarginSeconds).toBeCloseTo(3600 - r.timings.total!, 2);
    expect(r.secondsPerGib).toBeGreaterThan(0);
    expect(r.validation.length).toBeGreaterThan(0);
    expect(r.validation.find((v) => v.outputs?.rows !== undefined)?.outputs?.rows).toBe(ROWS);
    expect(scratchDatabases()).not.toContain(`continuity_restore_${r.id}`);

    expect((await api('GET', `/api/v1/restore-test-reports/${r.id}`, VIEWER)).json()).toEqual(r);
    const md = await api('GET', `/api/v1/restore-tests/orders-backups/reports/${r.id}?format=markdown`, VIEWER);
    expect(md.status).toBe(200);
    expect(md.text).toContain('# Restore test: orders-backups — PASS');
    expect(md.text).toContain('orders/2026-11-27.dump');
    const dir = join(cfg.dir, 'var/reports/restore-tests/orders-backups');
    const files = readdirSync(dir).filter((f) => f.includes(r.id));
    expect(files.sort()).toEqual([`${r.finishedAt.slice(0, 10)}-${r.id}.json`, `${r.finishedAt.slice(0, 10)}-${r.id}.md`]);
    expect(
      JSON.parse(
        readFileSync(
          join(
            dir,
            files.find((f) => f.endsWith('.json'))!,
          ),
          'utf8',
        ),
      ),
    ).toEqual(r);

    expect(await metric('continuity_restore_test_success', 'backup_set="orders-backups"')).toBe(1);
    expect(await metric('continuity_restore_test_duration_seconds', 'backup_set="orders-backups",phase="total"')).toBe(r.timings.total);
    expect(await metric('continuity_restore_test_duration_seconds', 'backup_set="orders-backups",phase="download"')).toBe(
      r.timings.download,
    );
    expect(await metric('continuity_restore_test_rto_margin_seconds', 'backup_set="orders-backups",service="orders"')).toBe(
      r.rtoMarginSeconds,
    );
    expect(await metric('continuity_restore_test_last_success_timestamp_seconds', 'backup_set="orders-backups"')).toBe(
      Date.parse(r.finishedAt) / 1000,
    );
    expect(await metric('continuity_restore_test_seconds_per_gib', 'backup_set="orders-backups",window="recent"')).toBe(r.secondsPerGib);
    expect(await metric('continuity_restore_tests_total', 'backup_set="orders-backups",trigger="manual",result="pass"')).toBe(1);
  }, 90_000);

  it('fails a restore that validates but takes longer than the RTO, saying by how much', async () => {
    const r = await runTest('ledger-backups');
    expect(r.execution.status, JSON.stringify(r)).toBe('succeeded');
    expect(r.timings.total!, JSON.stringify(r)).toBeGreaterThan(0.001);
    expect(r.result).toBe('fail');
    expect(r.reason).toMatch(/^restored and validated, but it took .+, over the RTO of 1ms of ledger$/);
    expect(r.rtoMarginSeconds).toBeLessThan(0);
    expect(await metric('continuity_restore_test_success', 'backup_set="ledger-backups"')).toBe(0);
    expect(await metric('continuity_restore_test_last_success_timestamp_seconds', 'backup_set="ledger-backups"')).toBeUndefined();
    expect(await metric('continuity_restore_test_rto_margin_seconds', 'backup_set="ledger-backups",service="ledger"')).toBe(
      r.rtoMarginSeconds,
    );
  }, 90_000);

  it('fails with the reason when there is no backup, and leaves no scratch database', async () => {
    const r = await runTest('empty-backups');
    expect(r.result).toBe('fail');
    expect(r.reason).toContain(`no object under s3://${BUCKET}/nothing/`);
    expect(r.execution.status).toBe('rolled_back');
    expect(scratchDatabases()).not.toContain(`continuity_restore_${r.id}`);
    expect(await metric('continuity_restore_test_success', 'backup_set="empty-backups"')).toBe(0);
  }, 90_000);

  it('restores a tar.gz into a scratch folder and removes it', async () => {
    const r = await runTest('files-backups');
    expect(r.result, r.reason).toBe('pass');
    expect(readdirSync(scratchFolder)).toEqual([]);
  }, 90_000);

  it('pick: random restores one of the backups in the window, named in the inputs and the report', async () => {
    const dump = execFileSync('pg_dump', [...PG, '-Fc', '-d', SOURCE_DB], { maxBuffer: 64 * 1024 * 1024 });
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'orders/2026-11-28.dump', Body: dump }));
    const r = await runTest('random-backups');
    expect(r.result, r.reason).toBe('pass');
    expect(['orders/2026-11-27.dump', 'orders/2026-11-28.dump']).toContain(r.backup.key);
    const view = await api('GET', `/api/v1/executions/${r.id}`, VIEWER);
    expect(view.json().execution.inputs.key).toBe(r.backup.key);
  }, 90_000);

  it('the CLI runs a test, following it to its verdict', async () => {
    // Not spawnSync: the daemon answering the CLI runs in this process.
    const run = await cli(['restore-test', 'orders-backups', '--url', daemon.url], OPERATOR);
    expect(run.status, run.stderr).toBe(0);
    expect(run.stderr).toMatch(/^restore test of orders-backups: execution restore-test-postgres-v1-\S+$/m);
    // Not a terminal: one line per phase change, the last the execution's end.
    expect(run.stderr.trimEnd().split('\n').at(-1)).toBe('succeeded');
    expect(run.stdout).toMatch(/^PASS: restore test of orders-backups \(orders, RTO 3600 s\)$/m);
    expect(run.stdout).toMatch(/^timings: {2}total \d+\.\d s = prepare /m);
    expect(run.stdout).toContain('report:   continuity restore-tests report orders-backups restore-test-postgres-v1-');
    const list = await cli(['restore-tests', '--url', daemon.url, '--json'], VIEWER);
    expect(list.status, list.stderr).toBe(0);
    expect(JSON.parse(list.stdout).map((t: { backupSet: string }) => t.backupSet)).toContain('orders-backups');
  }, 90_000);

  it('lists the sets with their schedule (cron in its time zone), next run and last verdict; viewers may not start one', async () => {
    const list = await api('GET', '/api/v1/restore-tests', VIEWER);
    expect(list.status).toBe(200);
    const orders = list.json().restoreTests.find((t: { backupSet: string }) => t.backupSet === 'orders-backups');
    expect(orders).toMatchObject({
      service: 'orders',
      rtoSeconds: 3600,
      schedule: '0 3 1 * *',
      timezone: 'Asia/Shanghai',
      last: { result: 'pass' },
    });
    // 03:00 on the 1st in Shanghai (UTC+8) is 19:00 UTC on the last day of the month before.
    const next = new Date(orders.nextRun);
    expect(next.getTime()).toBeGreaterThan(Date.now());
    expect(next.getUTCHours()).toBe(19);
    expect(next.getUTCMinutes()).toBe(0);
    expect(new Date(next.getTime() + 86_400_000).getUTCDate()).toBe(1);
    expect((await api('POST', '/api/v1/restore-tests/orders-backups/runs', VIEWER)).status).toBe(403);
    const unknown = await api('POST', '/api/v1/restore-tests/nope/runs');
    expect(unknown.status).toBe(404);
    expect(unknown.json().message).toContain('no restore test for backup set nope');
  });

  it('the sweeper removes scratch copies of finished and unknown tests, keeps those in use', async () => {
    const finished = (await daemon.restoreTests!.reports('orders-backups'))[0]!.id;
    for (const name of [`continuity_restore_${finished}`, 'continuity_restore_gone-exec-1', 'continuity_restore_inuse-exec-2']) {
      psql(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      psql(`CREATE DATABASE "${name}"`);
    }
    // A session in the unknown execution's copy: another instance may be restoring into it.
    const holder = execFileSync('sh', [
      '-c',
      `psql ${PG.join(' ')} -X -d continuity_restore_inuse-exec-2 -c 'SELECT pg_sleep(8)' >/dev/null 2>&1 & echo $!`,
    ])
      .toString()
      .trim();
    await until('the holding session', async () =>
      psql("SELECT count(*) FROM pg_stat_activity WHERE datname = 'continuity_restore_inuse-exec-2'") === '1' ? true : undefined,
    );
    const old = join(scratchFolder, 'continuity_restore_files-exec-3');
    mkdirSync(old);
    utimesSync(old, new Date(Date.now() - 2 * 3600_000), new Date(Date.now() - 2 * 3600_000));
    const fresh = join(scratchFolder, 'continuity_restore_files-exec-4');
    mkdirSync(fresh);

    // First sweep, default grace: the unknown copy nobody uses is only noted (another deployment may have just made it).
    const first = await api('POST', '/api/v1/restore-tests/sweep');
    const kept = first.json().results.flatMap((r: { kept: Array<{ name: string; why: string }> }) => r.kept);
    expect(kept.find((k: { name: string }) => k.name === 'continuity_restore_gone-exec-1')?.why).toMatch(
      /^execution gone-exec-1 is unknown here; unused since \S+, removed once unused for 60 min$/,
    );
    expect(scratchDatabases()).toContain('continuity_restore_gone-exec-1');
    daemon.restoreTests!.unknownGraceMs = 0;
    const res = await api('POST', '/api/v1/restore-tests/sweep');
    expect(res.status).toBe(200);
    const removed = [...first.json().results, ...res.json().results].flatMap((r: { removed: string[] }) => r.removed);
    expect(removed).toEqual(expect.arrayContaining([`continuity_restore_${finished}`, 'continuity_restore_gone-exec-1', old]));
    expect(removed).not.toContain('continuity_restore_inuse-exec-2');
    expect(removed).not.toContain(fresh);
    // Only these names: other test files restore into scratch databases of their own meanwhile.
    const left = scratchDatabases();
    expect(left).toContain('continuity_restore_inuse-exec-2');
    expect(left).not.toContain('continuity_restore_gone-exec-1');
    expect(left).not.toContain(`continuity_restore_${finished}`);
    expect(existsSync(fresh)).toBe(true);
    process.kill(Number(holder));
    psql('DROP DATABASE IF EXISTS "continuity_restore_inuse-exec-2" WITH (FORCE)');
    expect(await metric('continuity_restore_sweeper_removed_total', 'backup_set="orders-backups"')).toBeGreaterThanOrEqual(2);
  }, 30_000);

  it('a schedule runs the test by itself (BullMQ job scheduler), and a reload puts the monthly schedule back', async () => {
    // Every second, for a moment: the first scheduled run is enough.
    cfg.write('config/continuity.yaml', config(daemon.config.daemon.redisUrl, '* * * * * *'));
    expect(await daemon.reload()).toBe(true);
    const scheduled = await until(
      'a scheduled report',
      async () => (await daemon.restoreTests!.reports('orders-backups')).find((r) => r.trigger === 'schedule'),
      60_000,
    );
    cfg.write('config/continuity.yaml', config(daemon.config.daemon.redisUrl));
    expect(await daemon.reload()).toBe(true);
    expect(scheduled).toMatchObject({ result: 'pass', requestedBy: 'schedule' });
    const schedulers = await daemon.restoreTests!.queue.getJobSchedulers(0, -1);
    expect(schedulers.find((s) => s.key === 'restore-test:orders-backups')).toMatchObject({ pattern: '0 3 1 * *', tz: 'Asia/Shanghai' });
    // What the second-by-second schedule started still ends, and cleans up after itself.
    await until('no restore test running', async () => ((await daemon.executor!.store.active()).length === 0 ? true : undefined), 60_000);
    // None of this daemon's executions left a scratch database (other test files make their own meanwhile).
    const ours = new Set((await daemon.executor!.store.list(1000)).map((e) => `continuity_restore_${e.id}`));
    await until('scratch databases gone', async () => (scratchDatabases().some((d) => ours.has(d)) ? undefined : true), 10_000);
  }, 120_000);
});
