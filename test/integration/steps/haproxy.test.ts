import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { haproxy } from '../../../src/runbooks/steps/haproxy.js';
import type { StepContext } from '../../../src/runbooks/steps/types.js';
import { pino } from 'pino';
import { freePort } from '../../helpers/net.js';

const ctx = (): StepContext => ({
  executionId: 'x',
  stepId: 'switch',
  mode: 'live',
  signal: new AbortController().signal,
  timeoutMs: 5000,
  log: pino({ level: 'silent' }),
  stateDir: tmpdir(),
});

describe('haproxy step (the runtime API of a real HAProxy)', () => {
  let proc: ChildProcess;
  let address: string;

  beforeAll(async () => {
    const [runtime, front] = [await freePort(), await freePort()];
    const dir = mkdtempSync(join(tmpdir(), 'continuity-haproxy-'));
    writeFileSync(
      join(dir, 'haproxy.cfg'),
      `global\n    stats socket ipv4@127.0.0.1:${runtime} level admin\ndefaults\n    mode tcp\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\nfrontend pg\n    bind 127.0.0.1:${front}\n    default_backend pg\nbackend pg\n    server primary 127.0.0.1:1\n    server dr 127.0.0.1:2\n`,
    );
    proc = spawn('haproxy', ['-f', join(dir, 'haproxy.cfg'), '-db'], { stdio: 'ignore' });
    address = `127.0.0.1:${runtime}`;
    for (let i = 0; i < 100; i++) {
      const ok = await new Promise<boolean>((r) => {
        const s = net.connect({ host: '127.0.0.1', port: runtime }, () => (s.destroy(), r(true)));
        s.on('error', () => r(false));
      });
      if (ok) break;
      await new Promise((r) => setTimeout(r, 50));
    }
  });
  afterAll(() => proc?.kill('SIGKILL'));

  it('switches traffic: old server to maint, new server ready, and confirms it', async () => {
    await haproxy.run({ address, commands: ['set server pg/dr state maint'] }, ctx());
    const r = await haproxy.run({ address, commands: ['set server pg/primary state maint', 'set server pg/dr state ready'] }, ctx());
    expect(r).toMatchObject({ ok: true });
    // show servers state: ... srv_name srv_addr srv_op_state srv_admin_state; admin state 1 is forced maintenance.
    const show = await haproxy.run(
      { address, commands: ['show servers state pg'], expect: '^\\d+ pg \\d+ primary 127\\.0\\.0\\.1 \\d+ 1 ' },
      ctx(),
    );
    expect(show.ok, show.reason).toBe(true);
    expect(show.result.output).toMatch(/ dr 127\.0\.0\.1 \d+ 0 /);
  });

  it('fails when HAProxy refuses a command, saying what it answered', async () => {
    const r = await haproxy.run({ address, commands: ['set server pg/nonesuch state maint'] }, ctx());
    expect(r).toMatchObject({ ok: false, reason: 'HAProxy refused: No such server.' });
  });

  it('fails when the answer does not match expect, and when the runtime API is unreachable', async () => {
    expect(await haproxy.run({ address, commands: ['show servers state pg'], expect: 'no-such-text' }, ctx())).toMatchObject({
      ok: false,
      reason: 'the answer does not match no-such-text',
    });
    const r = await haproxy.run({ address: '127.0.0.1:1', commands: ['show info'] }, ctx());
    expect(r).toMatchObject({ ok: false, reason: 'runtime API: connect ECONNREFUSED 127.0.0.1:1' });
  });
});
