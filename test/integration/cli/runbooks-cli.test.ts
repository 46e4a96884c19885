import { execFile } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../../../src/daemon.js';
import { parseInputValue } from '../../../src/cli/runbooks.js';
import { hashToken } from '../../../src/http/auth.js';
import { writeConfig } from '../../helpers/config.js';
import { freshRedisDb } from '../../helpers/redis-db.js';
import { freePort } from '../../helpers/net.js';

const execFileP = promisify(execFile);
const BIN = 'bin/continuity.js';

// otto starts executions and may approve, but never his own (two-person rule); ann approves; vera reads.
const TOKENS = {
  otto: 'tok-otto-operator-approver-0123',
  ann: 'tok-ann-approver-0123456789',
  vera: 'tok-vera-viewer-0123456789',
};
const ROLES: Record<keyof typeof TOKENS, string[]> = { otto: ['operator', 'approver'], ann: ['approver'], vera: ['viewer'] };

const GATE = `name: gate
version: 1
description: Prepare, approve, act; undo on denial.
timeout: 5m
inputs:
  target: { type: string, required: true, pattern: '^[a-z]+$', description: what to switch }
  ticket: { type: string, pattern: '^[0-9]+$', description: the change ticket }
steps:
  - id: prepare
    kind: sleep
    timeout: 5s
    idempotent: true
    retries: { max: 2 }
    sleep: { duration: 10ms }
    outputs: { slept: result.slept_seconds }
  - id: approve
    kind: approval
    timeout: 1m
    approval: { message: switch traffic }
  - id: act
    kind: sleep
    timeout: 5s
    when: steps.prepare.outputs.slept > 0.0
    drill: skip
    sleep: { duration: 10ms }
rollback:
  - id: undo
    kind: sleep
    timeout: 5s
    idempotent: true
    sleep: { duration: 10ms }
`;

class Sink extends Writable {
  override _write(_c: Buffer, _e: string, done: () => void) {
    done();
  }
}

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

describe('continuity CLI: runbooks and executions', () => {
  let daemon: Daemon;
  let cfg: ReturnType<typeof writeConfig>;

  /** Runs the CLI as a person would: the token only in the environment. */
  async function cli(args: string[], who?: keyof typeof TOKENS | { token: string }, env: NodeJS.ProcessEnv = {}): Promise<Result> {
    const childEnv: NodeJS.ProcessEnv = { ...process.env, ...env };
    delete childEnv.CONTINUITY_TOKEN;
    delete childEnv.CONTINUITY_CONFIG;
    if (who) childEnv.CONTINUITY_TOKEN = typeof who === 'string' ? TOKENS[who] : who.token;
    try {
      const { stdout, stderr } = await execFileP('node', [BIN, ...args], { env: childEnv });
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as Result;
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  }
  const at = () => ['--url', daemon.url];

  const call = async (method: string, path: string, who: keyof typeof TOKENS, body?: unknown) => {
    const headers: Record<string, string> = { authorization: `Bearer ${TOKENS[who]}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(daemon.url + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    return res.json();
  };
  const waitFor = async (id: string, status: string) => {
    const end = Date.now() + 10_000;
    for (;;) {
      const v = await call('GET', `/api/v1/executions/${id}`, 'vera');
      if (v.execution.status === status) return v;
      if (Date.now() > end) throw new Error(`execution ${id} is ${v.execution.status}, not ${status}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const start = async (target: string) => {
    const r = await call('POST', '/api/v1/runbooks/gate/executions', 'otto', { inputs: { target } });
    await waitFor(r.execution.id, 'waiting_approval');
    return r.execution.id as string;
  };
  const hash = () => daemon.config.runbooks.get('gate')!.hash;

  beforeAll(async () => {
    const redisUrl = await freshRedisDb(4);
    const tokens = Object.entries(TOKENS)
      .map(([name, t]) => `    - { name: ${name}, sha256: ${hashToken(t)}, roles: [${ROLES[name as keyof typeof TOKENS].join(', ')}] }`)
      .join('\n');
    cfg = writeConfig({
      config: `daemon:\n  listen: 127.0.0.1:0\n  redis_url: ${redisUrl}\n  runbooks_dir: ../runbooks\n  state_dir: ../var\nauth:\n  tokens:\n${tokens}\nsites:\n  p: { role: primary }\n  d: { role: dr }\nservices: {}\n`,
      probes: {},
    });
    mkdirSync(join(cfg.dir, 'runbooks', 'gate'), { recursive: true });
    writeFileSync(join(cfg.dir, 'runbooks', 'gate', 'v1.yaml'), GATE);
    daemon = new Daemon({ configPath: cfg.configPath, port: 0, logStream: new Sink() });
    await daemon.start();
  });
  afterAll(async () => {
    await daemon?.stop();
  });

  /** Rows of a plain (non-TTY) cli-table3 table, as arrays of trimmed cells. */
  const rows = (text: string) =>
    text
      .split('\n')
      .filter((l) => l.startsWith('│'))
      .map((l) =>
        l
          .split('│')
          .slice(1, -1)
          .map((c) => c.trim()),
      );

  let approved = '';

  it('run --wait follows the timeline to the approval, then shows what is asked and how to answer', async () => {
    const r = await cli(['run', 'gate', '--input', 'target=orders', '--input', 'ticket=4711', '--wait', ...at()], 'otto');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    const m = /^started (gate-v1-[0-9a-f]{12}): queued \(gate v1, live\)$/.exec(lines[0]!);
    expect(m).not.toBeNull();
    approved = m![1]!;
    // Each new event once, in order, then where it stopped.
    expect(lines.slice(1, 5).map((l) => l.replace(/^\S+Z {2}/, ''))).toEqual([
      'created             live execution of gate v1 requested by otto',
      'step_started        prepare (sleep) started, attempt 1',
      expect.stringMatching(/^step_succeeded {6}prepare succeeded in \d+ms$/),
      `approval_needed     approve: waiting for 1 approval from approver of gate v1 (sha256 ${hash().slice(0, 12)}…): switch traffic`,
    ]);
    expect(lines[5]).toBe(`${approved}: waiting_approval`);
    // The declared text input stays text although it looks like a number.
    expect(r.stdout).toContain(
      `    target: "orders"\n    ticket: "4711"\n  to approve: continuity approve ${approved} --url ${daemon.url}\n`,
    );
  });

  it('execution shows the steps, the timeline and the waiting approval: hash, inputs, the command; the requester cannot approve', async () => {
    const [view, self] = await Promise.all([cli(['execution', approved, ...at()], 'vera'), cli(['approve', approved, ...at()], 'otto')]);
    expect(view.code).toBe(0);
    expect(view.stdout).toContain(
      `execution:    ${approved}\nrunbook:      gate v1\nsha256:       ${hash()}\nmode:         live\nstatus:       waiting_approval\n`,
    );
    expect(rows(view.stdout).slice(0, 5)).toEqual([
      ['step', 'kind', 'status', 'attempt', 'duration', 'reason'],
      ['prepare', 'sleep', 'succeeded', '1', expect.stringMatching(/^\d+ms$/), ''],
      ['approve', 'approval', 'waiting', '1', '-', expect.stringMatching(/^expires \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/)],
      ['act', 'sleep', '-', '-', '-', ''],
      ['undo (rollback)', 'sleep', '-', '-', '-', ''],
    ]);
    const waiting = view.stdout.slice(view.stdout.indexOf('approval waiting:'));
    expect(waiting.split('\n')).toEqual([
      'approval waiting: step approve',
      `  asked:        waiting for 1 approval from approver of gate v1 (sha256 ${hash().slice(0, 12)}…): switch traffic`,
      '  runbook:      gate v1',
      `  sha256:       ${hash()}`,
      '  mode:         live',
      '  requested by: otto',
      expect.stringMatching(/^ {2}expires: {6}\S+Z$/),
      '  inputs:',
      '    target: "orders"',
      '    ticket: "4711"',
      `  to approve: continuity approve ${approved} --url ${daemon.url}`,
      `  to deny:    continuity deny ${approved} --url ${daemon.url} --comment "<why>"`,
      '',
    ]);

    expect(self.code).toBe(1);
    expect(self.stderr).toBe('continuity: 403 Forbidden: two-person rule: otto started this execution and cannot approve or deny it\n');
  });

  it('approve by an approver: shows what is approved, sends its hash, and the execution succeeds', async () => {
    const r = await cli(['approve', approved, '--comment', 'lag is 0', ...at()], 'ann');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(
      [
        `approving step approve of ${approved}:`,
        '  runbook:      gate v1',
        `  sha256:       ${hash()}`,
        '  mode:         live',
        '  requested by: otto',
        '  inputs:',
        '    target: "orders"',
        '    ticket: "4711"',
        `approved by ann: recorded for sha256 ${hash().slice(0, 12)}…`,
        '',
      ].join('\n'),
    );
    const done = await waitFor(approved, 'succeeded');
    expect(done.approvals).toMatchObject([{ who: 'ann', decision: 'approve', hash: hash(), comment: 'lag is 0' }]);

    const view = await cli(['execution', approved, ...at()], 'vera');
    expect(view.stdout).toContain('status:       succeeded\nreason:       every step done\n');
    expect(rows(view.stdout).map((c) => c.slice(0, 3))).toEqual([
      ['step', 'kind', 'status'],
      ['prepare', 'sleep', 'succeeded'],
      ['approve', 'approval', 'succeeded'],
      ['act', 'sleep', 'succeeded'],
      ['undo (rollback)', 'sleep', '-'],
    ]);
    expect(view.stdout).toMatch(/ {2}\S+Z {2}approved {12}ann approved: lag is 0\n/);
    expect(view.stdout).not.toContain('approval waiting');
  });

  let denied = '';
  let aborted = '';
  let dry = '';

  it('deny rolls the execution back; abort stops one', async () => {
    denied = await start('billing');
    const deny = await cli(['deny', denied, '--comment', 'replica is behind', ...at()], 'ann');
    expect(deny.code).toBe(0);
    expect(deny.stdout).toContain(`denying step approve of ${denied}:\n`);
    expect(deny.stdout).toContain(`denied by ann: recorded for sha256 ${hash().slice(0, 12)}…\n`);
    expect((await waitFor(denied, 'rolled_back')).execution.reason).toBe('approval approve denied by ann: replica is behind');

    aborted = await start('stock');
    const abort = await cli(['abort', aborted, '--comment', 'test done', ...at()], 'otto');
    expect(abort).toEqual({ code: 0, stdout: `abort of ${aborted}: accepted\n`, stderr: '' });
    expect((await waitFor(aborted, 'aborted')).execution.reason).toBe('aborted by otto: test done');
  });

  it('a dry run with --wait prints the plan: each step with its rendered settings', async () => {
    const r = await cli(['run', 'gate', '--mode', 'dry-run', '--input', 'target=orders', '--wait', ...at()], 'otto');
    expect(r.code).toBe(0);
    dry = /^started (\S+): queued \(gate v1, dry-run\)$/m.exec(r.stdout)![1]!;
    expect(r.stdout.slice(r.stdout.indexOf('plan (nothing was run):'))).toBe(
      [
        'plan (nothing was run):',
        '  prepare (sleep):',
        '    duration: 10ms',
        '  approve (approval):',
        '    message: switch traffic',
        '    roles:',
        '      - approver',
        '    quorum: 1',
        '    on_timeout: abort',
        '  act (sleep):',
        '    duration: 10ms',
        `${dry}: succeeded (dry run: every step rendered and checked, none run)`,
        '',
      ].join('\n'),
    );
  });

  it('executions: a table of them, newest first', async () => {
    const r = await cli(['executions', ...at()], 'vera');
    expect(r.code).toBe(0);
    expect(rows(r.stdout).map((c) => c.slice(0, 6))).toEqual([
      ['id', 'runbook', 'version', 'mode', 'status', 'requested by'],
      [dry, 'gate', '1', 'dry-run', 'succeeded', 'otto'],
      [aborted, 'gate', '1', 'live', 'aborted', 'otto'],
      [denied, 'gate', '1', 'live', 'rolled_back', 'otto'],
      [approved, 'gate', '1', 'live', 'succeeded', 'otto'],
    ]);
    expect(rows(r.stdout)[3]![7]).toBe('approval approve denied by ann: replica is behind');
  });

  it('runbook show (offline, from the files) and token new', async () => {
    const [show, token] = await Promise.all([
      cli(['runbook', 'show', 'gate', '1', '-c', cfg.configPath]),
      cli(['token', 'new', '--name', 'carol', '--roles', 'operator,approver']),
    ]);
    expect(show.stderr).toBe('');
    expect(show.stdout).toBe(
      [
        'runbook:     gate',
        'version:     1',
        `sha256:      ${hash()}`,
        `file:        ${daemon.config.runbooks.get('gate')!.file}`,
        'description: Prepare, approve, act; undo on denial.',
        'timeout:     5m',
        'inputs:',
        '┌────────┬────────┬──────────┬─────────┬──────────────────┬───────────────────┐',
        '│ input  │ type   │ required │ default │ allowed          │ description       │',
        '├────────┼────────┼──────────┼─────────┼──────────────────┼───────────────────┤',
        '│ target │ string │ yes      │ -       │ pattern ^[a-z]+$ │ what to switch    │',
        '├────────┼────────┼──────────┼─────────┼──────────────────┼───────────────────┤',
        '│ ticket │ string │ no       │ -       │ pattern ^[0-9]+$ │ the change ticket │',
        '└────────┴────────┴──────────┴─────────┴──────────────────┴───────────────────┘',
        'steps:',
        '┌─────────┬─────────────────────────┬────────────────┬─────────┬───────────────────────────────────┬────────────┬───────┐',
        '│ step    │ kind                    │ idempotent     │ timeout │ when                              │ on failure │ drill │',
        '├─────────┼─────────────────────────┼────────────────┼─────────┼───────────────────────────────────┼────────────┼───────┤',
        '│ prepare │ sleep                   │ yes, 2 retries │ 5s      │ -                                 │ abort      │ run   │',
        '├─────────┼─────────────────────────┼────────────────┼─────────┼───────────────────────────────────┼────────────┼───────┤',
        '│ approve │ approval: 1 of approver │ -              │ 1m      │ -                                 │ abort      │ run   │',
        '├─────────┼─────────────────────────┼────────────────┼─────────┼───────────────────────────────────┼────────────┼───────┤',
        '│ act     │ sleep                   │ no             │ 5s      │ steps.prepare.outputs.slept > 0.0 │ abort      │ skip  │',
        '└─────────┴─────────────────────────┴────────────────┴─────────┴───────────────────────────────────┴────────────┴───────┘',
        'rollback (run when a step fails with on_failure rollback, or an approval is denied):',
        '┌──────┬───────┬────────────┬─────────┬──────┬────────────┬───────┐',
        '│ step │ kind  │ idempotent │ timeout │ when │ on failure │ drill │',
        '├──────┼───────┼────────────┼─────────┼──────┼────────────┼───────┤',
        '│ undo │ sleep │ yes        │ 5s      │ -    │ abort      │ run   │',
        '└──────┴───────┴────────────┴─────────┴──────┴────────────┴───────┘',
        '',
      ].join('\n'),
    );

    expect(token.code).toBe(0);
    const secret = /^ {2}(cty_[A-Za-z0-9_-]{32})$/m.exec(token.stdout)![1]!;
    const line = /^ {4}- \{ name: carol, sha256: ([0-9a-f]{64}), roles: \[operator, approver\] \}$/m.exec(token.stdout);
    expect(line).not.toBeNull();
    expect(line![1]).toBe(hashToken(secret));
  });

  it('refusals: a wrong token (401), no token, a missing role (403), a step not waiting (409), no daemon', async () => {
    const tokenFile = join(cfg.dir, 'wrong-token');
    writeFileSync(tokenFile, 'tok-nobody-0123456789\n', { mode: 0o600 });
    const [wrong, none, viewer, retry, down] = await Promise.all([
      cli(['executions', '--token-file', tokenFile, ...at()], 'vera'),
      cli(['executions', ...at()]),
      cli(['run', 'gate', '--input', 'target=orders', ...at()], 'vera'),
      cli(['retry', aborted, 'act', ...at()], 'otto'),
      cli(['execution', approved, '--url', `http://127.0.0.1:${await freePort()}`], 'vera'),
    ]);
    // --token-file wins over the environment.
    expect(wrong).toEqual({
      code: 1,
      stdout: '',
      stderr: 'continuity: 401 Unauthorized: a valid bearer token is required (check the token in CONTINUITY_TOKEN or --token-file)\n',
    });
    expect(none.code).toBe(1);
    expect(none.stderr).toBe(
      'continuity: no API token: set CONTINUITY_TOKEN to your token (or pass --token-file <path>); an admin makes one with `continuity token new`\n',
    );
    expect(viewer).toEqual({ code: 1, stdout: '', stderr: 'continuity: 403 Forbidden: vera lacks the operator role\n' });
    expect(retry.code).toBe(1);
    expect(retry.stderr).toBe(`continuity: 409 Conflict: execution ${aborted} is aborted, not waiting for an operator's decision\n`);
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/^continuity: no daemon answers at http:\/\/127\.0\.0\.1:\d+: fetch failed\n$/);
  });

  it('--input values: numbers and booleans when they look like one, text otherwise', () => {
    expect(['3', '-2.5', 'true', 'false', '0042', '1e3', 'orders', ''].map(parseInputValue)).toEqual([
      3,
      -2.5,
      true,
      false,
      '0042',
      '1e3',
      'orders',
      '',
    ]);
  });
});
