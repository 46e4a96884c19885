import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ssh } from '../../../src/runbooks/steps/ssh.js';
import { generateKey, startSshd, type TestSshd } from '../../helpers/sshd.js';
import { runStep, stepProblems, undocumented } from '../../helpers/steps.js';

const run = promisify(execFile);

describe('ssh step', () => {
  let sshd: TestSshd;
  let work: string;
  let target: string;

  beforeAll(async () => {
    sshd = await startSshd();
    work = await mkdtemp(join(tmpdir(), 'continuity-ssh-step-'));
    target = `${sshd.user}@[127.0.0.1]:${sshd.port}`;
  });
  afterAll(async () => {
    await sshd?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  /** Settings that log in to the test sshd with its key and verify its host key against its known_hosts. */
  const login = (extra: Record<string, unknown>) => ({
    host: sshd.host,
    port: sshd.port,
    username: sshd.user,
    private_key_file: sshd.privateKeyPath,
    known_hosts: sshd.knownHostsPath,
    ...extra,
  });

  it('quotes each argv element as one word: a hostile value reaches the program as data', async () => {
    const marker = join(work, 'pwned');
    // What a shell would act on if the quoting failed; only the test's own files are at stake.
    const victim = join(work, 'victim');
    await mkdir(victim);
    const hostile = `it's "quoted"; rm -rf ${victim}; $(touch ${marker}) \`touch ${marker}\` > ${marker} | tee ${marker} \\ $HOME *\nsecond line`;
    const r = await runStep('ssh', login({ argv: ['printf', '[%s]', hostile, 'two words'] }));
    expect(r).toMatchObject({ ok: true, result: { exit_code: 0, stdout: `[${hostile}][two words]`, stderr: '' } });
    expect(existsSync(marker)).toBe(false);
    expect(existsSync(victim)).toBe(true);
  });

  it('appends a line to a file on the host and reads it back', async () => {
    const file = join(work, "runbook log's.txt");
    await writeFile(file, 'first\n');
    const line = `promoted db2 at 12:00; it's "done"`;
    const append = await runStep('ssh', login({ argv: ['sh', '-c', 'printf "%s\\n" "$1" >> "$2"', 'append', line, file] }));
    expect(append).toMatchObject({ ok: true, result: { exit_code: 0 } });
    const back = await runStep('ssh', login({ argv: ['cat', file] }));
    expect(back).toMatchObject({ ok: true, result: { stdout: `first\n${line}` } });
    expect(await readFile(file, 'utf8')).toBe(`first\n${line}\n`);
  });

  it('runs a literal command line with the remote shell', async () => {
    const r = await runStep('ssh', login({ command: 'echo hello | tr a-z A-Z; echo careful >&2' }));
    expect(r).toMatchObject({
      ok: true,
      result: { exit_code: 0, stdout: 'HELLO', stderr: 'careful' },
      output: 'HELLO\n--- stderr ---\ncareful',
    });
  });

  it('fails on an unexpected exit code, naming the program and the host', async () => {
    expect(await runStep('ssh', login({ command: 'echo "replica not found" >&2; exit 3' }))).toMatchObject({
      ok: false,
      reason: `command on ${target} exited with code 3, expected 0: replica not found`,
      result: { exit_code: 3 },
    });
    expect(await runStep('ssh', login({ argv: ['false'] }))).toMatchObject({
      ok: false,
      reason: `false on ${target} exited with code 1, expected 0`,
    });
    expect(await runStep('ssh', login({ argv: ['false'], expect_exit_code: [0, 1] }))).toMatchObject({
      ok: true,
      result: { exit_code: 1 },
    });
  });

  it('refuses a host whose key is not in known_hosts, and runs nothing there', async () => {
    const other = await generateKey(join(work, 'other_host'));
    const knownHosts = join(work, 'known_hosts_other');
    await writeFile(knownHosts, `[127.0.0.1]:${sshd.port} ${other.publicKeyLine}\n`);
    const { stdout } = await run('ssh-keygen', ['-l', '-f', join(sshd.dir, 'host_ed25519.pub')]);
    const fingerprint = stdout.split(' ')[1]!;
    const marker = join(work, 'should-not-exist');
    const r = await runStep('ssh', login({ known_hosts: knownHosts, argv: ['touch', marker] }));
    expect(r).toMatchObject({
      ok: false,
      reason:
        `host key for [127.0.0.1]:${sshd.port} (ssh-ed25519 ${fingerprint}) does not match ssh-ed25519 ` +
        `${(await run('ssh-keygen', ['-l', '-f', `${other.privateKeyPath}.pub`])).stdout.split(' ')[1]} in ${knownHosts} line 1: ` +
        'possible man-in-the-middle attack (if the host was reinstalled, replace its line)',
    });
    const unknown = join(work, 'known_hosts_empty');
    await writeFile(unknown, '');
    expect(await runStep('ssh', login({ known_hosts: unknown, argv: ['touch', marker] }))).toMatchObject({
      ok: false,
      reason: `host key for [127.0.0.1]:${sshd.port} (ssh-ed25519 ${fingerprint}) is not in ${unknown}`,
    });
    expect(existsSync(marker)).toBe(false);
  });

  it('logs in with a pinned host key', async () => {
    const r = await runStep('ssh', { ...login({ argv: ['echo', 'pinned'] }), known_hosts: undefined, host_key: sshd.hostKeyLine });
    expect(r).toMatchObject({ ok: true, result: { stdout: 'pinned' } });
  });

  it('gives up on a command that outlives the timeout', async () => {
    const r = await runStep('ssh', login({ argv: ['sleep', '5'] }), { timeoutMs: 800 });
    expect(r).toMatchObject({ ok: false, reason: 'timed out after 800ms' });
    expect(r.durationSeconds).toBeLessThan(3);
  });
});

describe('ssh step settings', () => {
  const base = { host: 'db1', username: 'ops', private_key_file: '/k' };

  it('refuses a template in a literal command, and wants exactly one of argv or command', () => {
    expect(stepProblems('ssh', { ...base, argv: ['pg_ctlcluster', '{{ inputs.version }}', 'main', 'promote'] })).toEqual([]);
    expect(stepProblems('ssh', { ...base, command: 'systemctl restart nginx' })).toEqual([]);
    expect(stepProblems('ssh', { ...base, command: 'pg_ctlcluster {{ inputs.version }} main promote' })).toEqual([
      'command: command may not contain templates; use argv so each value is quoted',
    ]);
    expect(stepProblems('ssh', base)).toEqual(['set exactly one of argv or command']);
    expect(stepProblems('ssh', { ...base, argv: ['true'], command: 'true' })).toEqual(['set exactly one of argv or command']);
    expect(stepProblems('ssh', { ...base, argv: [] })).not.toEqual([]);
  });

  it('checks the connection settings as the prober does', () => {
    expect(stepProblems('ssh', { ...base, private_key_file: undefined, argv: ['true'] })).toEqual([
      'set one of private_key_file, private_key or password',
    ]);
    expect(stepProblems('ssh', { ...base, insecure_skip_host_key_check: true, host_key: 'ssh-ed25519 AAAA', argv: ['true'] })).toEqual([
      'insecure_skip_host_key_check: cannot be combined with known_hosts or host_key',
      'host_key: is not a public key line such as `ssh-ed25519 AAAA...`',
    ]);
  });

  it('documents every setting and names the insecure switch as insecure', () => {
    expect(undocumented(ssh.settings)).toEqual([]);
    expect(ssh.settings.properties.insecure_skip_host_key_check.description).toMatch(/^INSECURE/);
    expect(ssh.result).toEqual({ exit_code: 'int', stdout: 'string', stderr: 'string' });
  });
});
