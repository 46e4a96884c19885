import mysql2 from 'mysql2/promise';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SQL_MAX_ROWS, sql } from '../../../src/runbooks/steps/sql.js';
import { closedPort } from '../../helpers/net.js';
import { runStep, stepProblems, undocumented } from '../../helpers/steps.js';

/**
 * Against the machine's own servers: PostgreSQL on 127.0.0.1:5432 (user postgres, trust) and
 * MariaDB on 127.0.0.1:3306 (root, no password). Each test run works in its own table/database.
 */
const HOSTILE = `x'); DROP TABLE victims; -- "; DELETE FROM victims; \\'`;
const suffix = `${process.pid}_${Date.now()}`;

describe('sql step on PostgreSQL', () => {
  const table = `continuity_sql_step_${suffix}`;
  const conn = { driver: 'postgres', host: '127.0.0.1', port: 5432, user: 'postgres', database: 'postgres' } as const;
  const admin = (text: string, values: unknown[] = []) => {
    const client = new pg.Client({ host: '127.0.0.1', port: 5432, user: 'postgres', database: 'postgres' });
    return client
      .connect()
      .then(() => client.query(text, values))
      .finally(() => client.end());
  };

  beforeAll(async () => {
    await admin(`CREATE TABLE ${table} (id serial PRIMARY KEY, v text NOT NULL, n int8 NOT NULL DEFAULT 0, at timestamptz DEFAULT now())`);
  });
  afterAll(async () => {
    await admin(`DROP TABLE IF EXISTS ${table}`);
  });

  it('runs a statement with bind parameters and returns rows, row_count and first', async () => {
    const r = await runStep('sql', {
      ...conn,
      statement: 'SELECT $1::text AS name, $2::int + 1 AS answer, 9007199254740993::int8 AS big',
      params: ['db2', 41],
    });
    expect(r).toMatchObject({
      ok: true,
      result: {
        rows: [{ name: 'db2', answer: 42, big: '9007199254740993' }],
        row_count: 1,
        first: { name: 'db2', answer: 42, big: '9007199254740993' },
      },
    });
  });

  it('keeps a hostile parameter as data', async () => {
    const insert = await runStep('sql', { ...conn, statement: `INSERT INTO ${table} (v) VALUES ($1)`, params: [HOSTILE] });
    expect(insert).toMatchObject({ ok: true, result: { rows: [], row_count: 1, first: null }, output: 'changed 1 row' });
    const read = await runStep('sql', {
      ...conn,
      statement: `SELECT v, count(*) OVER () AS total FROM ${table} WHERE v = $1`,
      params: [HOSTILE],
    });
    expect(read).toMatchObject({ ok: true, result: { row_count: 1, first: { v: HOSTILE, total: 1 } } });
  });

  it('runs one statement only', async () => {
    const r = await runStep('sql', { ...conn, statement: `SELECT 1; DROP TABLE ${table}` });
    expect(r).toMatchObject({ ok: false, reason: 'cannot insert multiple commands into a prepared statement' });
    expect(await admin(`SELECT count(*) FROM ${table}`)).toBeDefined();
  });

  it('counts the rows a statement changed, and checks expect_rows', async () => {
    await admin(`INSERT INTO ${table} (v, n) VALUES ('a', 1), ('b', 2), ('c', 3)`);
    const r = await runStep('sql', {
      ...conn,
      statement: `UPDATE ${table} SET n = n + 10 WHERE n BETWEEN $1 AND $2`,
      params: [1, 2],
      expect_rows: { min: 2, max: 2 },
    });
    expect(r).toMatchObject({ ok: true, result: { row_count: 2, rows: [] } });
    expect(
      await runStep('sql', { ...conn, statement: `SELECT * FROM ${table} WHERE v = $1`, params: ['zzz'], expect_rows: { min: 1 } }),
    ).toMatchObject({
      ok: false,
      reason: 'the statement returned 0 rows, expected at least 1',
      result: { row_count: 0, rows: [], first: null },
    });
    expect(
      await runStep('sql', { ...conn, statement: `DELETE FROM ${table} WHERE n > $1`, params: [0], expect_rows: { max: 1 } }),
    ).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/^the statement changed \d+ rows, expected at most 1$/),
    });
  });

  it(`keeps the first ${SQL_MAX_ROWS} rows, counts them all, and gives dates as text`, async () => {
    const r = await runStep('sql', {
      ...conn,
      statement: "SELECT i, '2024-03-01 12:00:00+00'::timestamptz AS at FROM generate_series(1, 250) AS i",
    });
    expect(r.ok).toBe(true);
    expect(r.result.row_count).toBe(250);
    expect(r.result.rows).toHaveLength(SQL_MAX_ROWS);
    expect(r.result.first).toEqual({ i: 1, at: expect.stringMatching(/^2024-03-01 \d\d:00:00[+-]\d\d/) });
    expect(r.output).toMatch(/^returned 250 rows\n\{"i":1,/);
    expect(r.output).toMatch(/\n\(150 more rows not kept\)$/);
  });

  it("fails with the server's words", async () => {
    expect(await runStep('sql', { ...conn, statement: 'SELECT * FROM continuity_no_such_table' })).toMatchObject({
      ok: false,
      reason: 'relation "continuity_no_such_table" does not exist',
      result: {},
    });
    const port = await closedPort();
    expect(await runStep('sql', { ...conn, port, statement: 'SELECT 1' })).toMatchObject({
      ok: false,
      reason: `connect ECONNREFUSED 127.0.0.1:${port}`,
    });
  });

  it('gives up at the timeout', async () => {
    const r = await runStep('sql', { ...conn, statement: 'SELECT pg_sleep(30)' }, { timeoutMs: 500 });
    expect(r).toMatchObject({ ok: false, reason: 'timed out after 500ms' });
    expect(r.durationSeconds).toBeLessThan(3);
  });

  it('drops the session when aborted, which ends the statement on the server', async () => {
    // A long timeout, so the server's statement_timeout (the step timeout) cannot be what ends it.
    const controller = new AbortController();
    const stepId = `sleeper-${suffix}`;
    const running = runStep('sql', { ...conn, statement: 'SELECT pg_sleep(30)' }, { timeoutMs: 20_000, stepId, signal: controller.signal });
    const sessions = async () =>
      (
        await admin("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name LIKE $1 AND query LIKE '%pg_sleep%'", [
          `%${stepId}`,
        ])
      ).rows[0].n as number;
    const until = Date.now() + 3000;
    while ((await sessions()) === 0 && Date.now() < until) await new Promise((res) => setTimeout(res, 20));
    expect(await sessions()).toBe(1);
    controller.abort(new Error('aborted: the execution was cancelled'));
    expect(await running).toMatchObject({ ok: false, reason: 'aborted: the execution was cancelled' });
    const gone = Date.now() + 3000;
    while ((await sessions()) !== 0 && Date.now() < gone) await new Promise((res) => setTimeout(res, 20));
    expect(await sessions()).toBe(0);
  });
});

describe('sql step on MariaDB', () => {
  const db = `continuity_sql_step_${suffix}`;
  const conn = { driver: 'mysql', host: '127.0.0.1', port: 3306, user: 'root', database: db } as const;
  let admin: mysql2.Connection;

  beforeAll(async () => {
    admin = await mysql2.createConnection({ host: '127.0.0.1', port: 3306, user: 'root' });
    await admin.query(`CREATE DATABASE ${db}`);
    await admin.query(`CREATE TABLE ${db}.victims (id int AUTO_INCREMENT PRIMARY KEY, v text NOT NULL, n int NOT NULL DEFAULT 0)`);
  });
  afterAll(async () => {
    await admin?.query(`DROP DATABASE IF EXISTS ${db}`);
    await admin?.end();
  });

  it('runs a statement with bind parameters', async () => {
    const r = await runStep('sql', {
      ...conn,
      statement: 'SELECT ? AS name, ? + 1 AS answer, CAST(2.5 AS DECIMAL(4,2)) AS d',
      params: ['db2', 41],
    });
    expect(r).toMatchObject({ ok: true, result: { row_count: 1, first: { name: 'db2', answer: 42, d: 2.5 } } });
  });

  it('keeps a hostile parameter as data', async () => {
    expect(await runStep('sql', { ...conn, statement: 'INSERT INTO victims (v) VALUES (?)', params: [HOSTILE] })).toMatchObject({
      ok: true,
      result: { row_count: 1, rows: [], first: null },
    });
    const r = await runStep('sql', { ...conn, statement: 'SELECT v FROM victims WHERE v = ?', params: [HOSTILE] });
    expect(r).toMatchObject({ ok: true, result: { row_count: 1, first: { v: HOSTILE } } });
    const [rows] = await admin.query(`SELECT count(*) AS n FROM ${db}.victims`);
    expect(rows).toEqual([{ n: 1 }]);
  });

  it('runs one statement only, with or without params', async () => {
    expect(await runStep('sql', { ...conn, statement: 'SELECT 1; DROP TABLE victims' })).toMatchObject({
      ok: false,
      reason: expect.stringContaining('You have an error in your SQL syntax'),
    });
    expect(await runStep('sql', { ...conn, statement: 'SELECT ?; DROP TABLE victims', params: [1] })).toMatchObject({
      ok: false,
      reason: expect.stringContaining('You have an error in your SQL syntax'),
    });
    const [tables] = await admin.query(`SHOW TABLES FROM ${db}`);
    expect(tables).toHaveLength(1);
  });

  it('counts the rows a statement changed, and checks expect_rows', async () => {
    await admin.query(`INSERT INTO ${db}.victims (v, n) VALUES ('a', 1), ('b', 2), ('c', 3)`);
    expect(
      await runStep('sql', {
        ...conn,
        statement: 'UPDATE victims SET n = n + 10 WHERE n BETWEEN ? AND ?',
        params: [1, 2],
        expect_rows: { min: 2 },
      }),
    ).toMatchObject({
      ok: true,
      result: { row_count: 2 },
    });
    expect(
      await runStep('sql', { ...conn, statement: 'SELECT * FROM victims WHERE n > 100', expect_rows: { min: 1, max: 5 } }),
    ).toMatchObject({
      ok: false,
      reason: 'the statement returned 0 rows, expected between 1 and 5',
    });
  });

  it('gives up at the timeout', async () => {
    const r = await runStep('sql', { ...conn, statement: 'SELECT SLEEP(30)' }, { timeoutMs: 500 });
    expect(r).toMatchObject({ ok: false, reason: 'timed out after 500ms' });
    expect(r.durationSeconds).toBeLessThan(3);
  });

  it('kills the statement on the server when aborted', async () => {
    const marker = `step_abort_${suffix}`;
    const statement = `SELECT SLEEP(30) AS ${marker}`;
    const sessions = async () => {
      const [rows] = await admin.query('SELECT id FROM information_schema.processlist WHERE info = ?', [statement]);
      return (rows as unknown[]).length;
    };
    const controller = new AbortController();
    const running = runStep('sql', { ...conn, statement }, { timeoutMs: 20_000, signal: controller.signal });
    const until = Date.now() + 3000;
    while ((await sessions()) === 0 && Date.now() < until) await new Promise((res) => setTimeout(res, 20));
    expect(await sessions()).toBe(1);
    controller.abort(new Error('aborted: the execution was cancelled'));
    expect(await running).toMatchObject({ ok: false, reason: 'aborted: the execution was cancelled' });
    const gone = Date.now() + 3000;
    while ((await sessions()) !== 0 && Date.now() < gone) await new Promise((res) => setTimeout(res, 20));
    expect(await sessions()).toBe(0);
  });
});

describe('sql step settings', () => {
  const base = { driver: 'postgres', host: 'db1', user: 'ops' };

  it('refuses a template in the statement: values go in params', () => {
    expect(stepProblems('sql', { ...base, statement: 'SELECT pg_promote()' })).toEqual([]);
    expect(stepProblems('sql', { ...base, statement: 'UPDATE t SET site = $1', params: ['{{ inputs.site }}'] })).toEqual([]);
    expect(stepProblems('sql', { ...base, statement: "UPDATE t SET site = '{{ inputs.site }}'" })).toEqual([
      'statement: statement may not contain templates; use params: values are sent as bind parameters',
    ]);
    expect(stepProblems('sql', { ...base, statement: 'SELECT 1', expect_rows: { min: 3, max: 1 } })).toEqual([
      'expect_rows: min 3 is above max 1',
    ]);
    expect(stepProblems('sql', { ...base, driver: 'oracle', statement: 'SELECT 1' })).not.toEqual([]);
  });

  it('documents every setting', () => {
    expect(undocumented(sql.settings)).toEqual([]);
    expect(sql.result).toEqual({ rows: 'list', row_count: 'int', first: 'dyn' });
  });
});
