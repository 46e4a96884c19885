import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Value } from '@sinclair/typebox/value';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runProbe } from '../../../src/probers/run.js';
import { ssh } from '../../../src/probers/ssh.js';
import { closedPort } from '../../helpers/net.js';
import { probe } from '../../helpers/probe.js';
import { generateKey, startSshd, type TestSshd } from '../../helpers/sshd.js';

const run = promisify(execFile);

/** The fingerprint as OpenSSH itself prints it, so our own fingerprinting is not checked against itself. */
async function sshFingerprint(pubPath: string): Promise<string> {
  const { stdout } = await run('ssh-keygen', ['-l', '-f', pubPath]);
  return stdout.split(' ')[1]!;
}

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

describe('ssh prober', () => {
  let sshd: TestSshd;
  let work: string;
  let hostFp: string;
  let name: string;

  beforeAll(async () => {
    sshd = await startSshd();
    work = await mkdtemp(join(tmpdir(), 'continuity-ssh-test-'));
    hostFp = await sshFingerprint(join(sshd.dir, 'host_ed25519.pub'));
    name = `[127.0.0.1]:${sshd.port}`;
  });
  afterAll(async () => {
    await sshd?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  /** Settings that log in to the test sshd with its key and verify its host key. */
  const login = (extra: Record<string, unknown> = {}) => ({
    host: sshd.host,
    port: sshd.port,
    username: sshd.user,
    private_key_file: sshd.privateKeyPath,
    known_hosts: sshd.knownHostsPath,
    ...extra,
  });

  describe('command', () => {
    it('runs a command and observes its exit code, stdout and stderr', async () => {
      const r = await probe('ssh', login({ check: { command: 'echo hello; echo warning >&2' } }));
      expect(r).toMatchObject({ ok: true, reason: 'ok' });
      expect(r.observed).toMatchObject({ exit_code: 0, stdout: 'hello', stderr: 'warning' });
      expect(r.observed.connect_seconds).toBeGreaterThan(0);
      expect(r.observed.connect_seconds).toBeLessThan(r.durationSeconds);
    });

    it('fails on an unexpected exit code, quoting what the command said', async () => {
      const r = await probe('ssh', login({ check: { command: 'echo "no such table" >&2; exit 3' } }));
      expect(r).toMatchObject({ ok: false, reason: 'command exited with code 3, expected 0: no such table' });
      expect(r.observed).toMatchObject({ exit_code: 3, stderr: 'no such table' });
    });

    it('accepts another exit code when expect_exit_code says so', async () => {
      expect(await probe('ssh', login({ check: { command: 'exit 3' }, expect_exit_code: 3 }))).toMatchObject({ ok: true });
      expect(await probe('ssh', login({ check: { command: 'true' }, expect_exit_code: 3 }))).toMatchObject({
        ok: false,
        reason: 'command exited with code 0, expected 3',
      });
    });

    it('fails when a condition on stdout is not met', async () => {
      const r = await probe('ssh', login({ check: { command: 'echo hi' } }), { conditions: ['stdout == "hello"'] });
      expect(r).toMatchObject({ ok: false, reason: 'condition "stdout == "hello"" is false (stdout="hi")' });
    });

    it('passes a condition on stdout that is met', async () => {
      const r = await probe('ssh', login({ check: { command: 'echo replication ok' } }), {
        conditions: ['stdout.contains("ok") && exit_code == 0'],
      });
      expect(r).toMatchObject({ ok: true, reason: 'ok' });
    });

    it('gives up on a command that outlives the timeout', async () => {
      const r = await probe('ssh', login({ check: { command: 'sleep 5' } }), { timeoutMs: 800 });
      expect(r).toMatchObject({ ok: false, reason: 'timed out after 800ms' });
      expect(r.durationSeconds).toBeLessThan(3);
    });

    it('keeps at most 64 KiB of output', async () => {
      const r = await probe('ssh', login({ check: { command: "head -c 300000 /dev/zero | tr '\\0' a" } }), { timeoutMs: 5000 });
      expect(r.ok).toBe(true);
      expect((r.observed.stdout as string).length).toBe(65536);
    });

    it('logs in with the key given as text and a pinned host key', async () => {
      const key = await readFile(sshd.privateKeyPath, 'utf8');
      const r = await probe('ssh', {
        host: sshd.host,
        port: sshd.port,
        username: sshd.user,
        private_key: key,
        host_key: sshd.hostKeyLine,
        check: { command: 'echo pinned' },
      });
      expect(r).toMatchObject({ ok: true, observed: { stdout: 'pinned' } });
    });
  });

  describe('disk', () => {
    it('reports the filesystem of a path, quoting a path with spaces and a quote', async () => {
      const dir = join(work, "it's a dir");
      await mkdir(dir);
      const r = await probe('ssh', login({ check: { disk: { path: dir } } }));
      expect(r).toMatchObject({ ok: true });
      const { stdout } = await run('df', ['-P', '-k', '--', dir]);
      const [, , used, avail] = stdout.trim().split('\n').pop()!.split(/\s+/).map(Number);
      expect(r.observed.disk_used_percent).toBeCloseTo((used! / (used! + avail!)) * 100, 0);
      expect(Math.abs((r.observed.disk_free_bytes as number) - avail! * 1024)).toBeLessThan(256 * 1024 * 1024);
    });

    it('fails above max_used_percent', async () => {
      const r = await probe('ssh', login({ check: { disk: { path: work, max_used_percent: 0 } } }));
      expect(r.ok).toBe(false);
      expect(r.reason).toMatch(
        new RegExp(`^disk at ${work} \\(mounted on /.*\\) is \\d+\\.\\d% used, above the 0% limit \\(\\d+(\\.\\d)? [KMGTP]?i?B free\\)$`),
      );
    });

    it('says what df said about a missing path', async () => {
      const r = await probe('ssh', login({ check: { disk: { path: '/nonexistent/dir' } } }));
      expect(r).toMatchObject({
        ok: false,
        reason: `df failed on ${sshd.user}@${name} (exit code 1): df: /nonexistent/dir: No such file or directory`,
      });
    });
  });

  describe('load', () => {
    it('reports the load averages and the CPU count', async () => {
      const r = await probe('ssh', login({ check: { load: {} } }));
      expect(r).toMatchObject({ ok: true });
      const [local1, , local15] = (await readFile('/proc/loadavg', 'utf8')).split(' ').map(Number);
      const { stdout } = await run('nproc');
      expect(r.observed.cpus).toBe(Number(stdout.trim()));
      expect(Math.abs((r.observed.load1 as number) - local1!)).toBeLessThan(2);
      expect(Math.abs((r.observed.load15 as number) - local15!)).toBeLessThan(1);
      expect(typeof r.observed.load5).toBe('number');
    });
  });

  describe('memory', () => {
    it('reports memory use from /proc/meminfo', async () => {
      const r = await probe('ssh', login({ check: { memory: {} } }));
      const info = await readFile('/proc/meminfo', 'utf8');
      const kib = (f: string) => Number(new RegExp(`^${f}:\\s+(\\d+)`, 'm').exec(info)![1]);
      const used = ((kib('MemTotal') - kib('MemAvailable')) / kib('MemTotal')) * 100;
      if (used > 90) expect(r.ok).toBe(false);
      else expect(r).toMatchObject({ ok: true });
      expect(Math.abs((r.observed.memory_used_percent as number) - used)).toBeLessThan(5);
      expect(r.observed.memory_available_bytes).toBeGreaterThan(0);
    });

    it('fails above max_used_percent', async () => {
      const r = await probe('ssh', login({ check: { memory: { max_used_percent: 0 } } }));
      expect(r.ok).toBe(false);
      expect(r.reason).toMatch(/^memory is \d+\.\d% used, above the 0% limit \(\d+(\.\d)? [KMGT]iB available\)$/);
    });
  });

  describe('systemd_unit', () => {
    it.runIf(!existsSync('/run/systemd/system'))('says plainly that a host without systemd cannot check a unit', async () => {
      const r = await probe('ssh', login({ check: { systemd_unit: 'ssh.service' } }));
      expect(r).toMatchObject({
        ok: false,
        reason: `systemd is not running on ${sshd.user}@${name} (no /run/systemd/system), so unit ssh.service cannot be checked`,
      });
    });

    it.runIf(existsSync('/run/systemd/system'))('reports the state of a unit on a systemd host', async () => {
      const r = await probe('ssh', login({ check: { systemd_unit: 'continuity-no-such-unit.service' } }));
      expect(r).toMatchObject({
        ok: false,
        reason: 'unit continuity-no-such-unit.service is inactive',
        observed: { unit_state: 'inactive' },
      });
    });
  });

  describe('integrity', () => {
    it('records a baseline on the first run, then names the files that changed or went missing', async () => {
      const dir = await mkdtemp(join(work, 'integrity-'));
      const a = join(dir, 'ls');
      const b = join(dir, "canary 'quoted'.txt");
      const c = join(dir, 'back\\slash');
      await writeFile(a, 'binary');
      await writeFile(b, 'canary');
      await writeFile(c, 'odd name');
      const settings = login({ check: { integrity: { files: [a, b, c] } } });
      const id = 'integrity-record';
      const stateDir = join(dir, 'state');
      const check = () => probeWithState(stateDir, settings, id);

      const first = await check();
      expect(first).toMatchObject({ ok: true, observed: { changed_files: [], files_checked: 3 } });
      const record = JSON.parse(await readFile(join(stateDir, 'ssh-integrity', `${id}.json`), 'utf8'));
      expect(record.files).toEqual({ [a]: sha256('binary'), [b]: sha256('canary'), [c]: sha256('odd name') });

      expect(await check()).toMatchObject({ ok: true });

      await writeFile(b, 'infected');
      expect(await check()).toMatchObject({
        ok: false,
        reason: `1 file changed since the baseline: ${b}`,
        observed: { changed_files: [b], files_checked: 3 },
      });

      await writeFile(a, 'trojaned');
      await unlink(c);
      expect(await check()).toMatchObject({
        ok: false,
        reason: `2 files changed since the baseline: ${a}, ${b}; 1 file could not be read: ${c} (No such file or directory)`,
        observed: { changed_files: [a, b, c], files_checked: 2 },
      });

      // The alarm stays: a changed file never becomes the new baseline by itself.
      await writeFile(c, 'odd name');
      expect(await check()).toMatchObject({ ok: false, reason: `2 files changed since the baseline: ${a}, ${b}` });
    });

    it('compares with a baseline given in config, and records nothing', async () => {
      const dir = await mkdtemp(join(work, 'integrity-'));
      const a = join(dir, 'a.conf');
      await writeFile(a, 'listen 80');
      const stateDir = join(dir, 'state');
      const good = await probeWithState(
        stateDir,
        login({ check: { integrity: { files: [a], baseline: { [a]: sha256('listen 80').toUpperCase() } } } }),
        'cfg',
      );
      expect(good).toMatchObject({ ok: true, observed: { changed_files: [], files_checked: 1 } });
      const bad = await probeWithState(
        stateDir,
        login({ check: { integrity: { files: [a], baseline: { [a]: sha256('listen 8080') } } } }),
        'cfg',
      );
      expect(bad).toMatchObject({ ok: false, reason: `1 file changed since the baseline: ${a}` });
      expect(existsSync(stateDir)).toBe(false);
    });

    it('refuses to record a baseline for a file it cannot read', async () => {
      const missing = join(work, 'not-there');
      const stateDir = join(work, 'state-missing');
      const r = await probeWithState(stateDir, login({ check: { integrity: { files: [missing] } } }), 'missing');
      expect(r).toMatchObject({
        ok: false,
        reason: `1 file could not be read: ${missing} (No such file or directory)`,
        observed: { changed_files: [missing], files_checked: 0 },
      });
      expect(existsSync(join(stateDir, 'ssh-integrity', 'missing.json'))).toBe(false);
    });
  });

  describe('connection failures', () => {
    it('reports a refused connection in the words of the OS', async () => {
      const port = await closedPort();
      const r = await probe('ssh', login({ port, check: { command: 'true' } }));
      expect(r).toMatchObject({ ok: false, reason: `connect ECONNREFUSED 127.0.0.1:${port}` });
    });

    it('times out against a peer that accepts and never answers, and drops the connection', async () => {
      const sockets = new Set<net.Socket>();
      const server = net.createServer((s) => {
        sockets.add(s);
        // Read (and ignore) everything, so the client's close is seen; never write a byte.
        s.resume();
        s.on('error', () => {});
        s.on('close', () => sockets.delete(s));
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const port = (server.address() as net.AddressInfo).port;
      try {
        const r = await probe('ssh', login({ port, check: { command: 'true' } }), { timeoutMs: 300 });
        expect(r).toMatchObject({ ok: false, reason: 'timed out after 300ms' });
        expect(r.durationSeconds).toBeGreaterThanOrEqual(0.29);
        expect(r.durationSeconds).toBeLessThan(3);
        const until = Date.now() + 1000;
        while (sockets.size > 0 && Date.now() < until) await new Promise((res) => setTimeout(res, 20));
        expect(sockets.size).toBe(0);
      } finally {
        for (const s of sockets) s.destroy();
        await new Promise<void>((res) => server.close(() => res()));
      }
    });

    it('reports a key the server does not accept as an authentication failure', async () => {
      const other = await generateKey(join(work, 'stranger_ed25519'));
      const r = await probe('ssh', login({ private_key_file: other.privateKeyPath, check: { command: 'true' } }));
      expect(r).toMatchObject({ ok: false, reason: `authentication failed for user ${sshd.user} (publickey)` });
    });

    it('reports a refused password without ever showing it', async () => {
      const password = 'correct horse battery staple';
      const r = await probe('ssh', { ...login({ check: { command: 'true' } }), private_key_file: undefined, password });
      expect(r).toMatchObject({ ok: false, reason: `authentication failed for user ${sshd.user} (password)` });
      expect(JSON.stringify(r)).not.toContain(password);
    });

    it('says which private_key_file it could not read', async () => {
      const r = await probe('ssh', login({ private_key_file: join(work, 'no-key'), check: { command: 'true' } }));
      expect(r).toMatchObject({
        ok: false,
        reason: `cannot read private_key_file: ENOENT: no such file or directory, open '${join(work, 'no-key')}'`,
      });
    });
  });

  describe('host key verification', () => {
    it('refuses a host that is not in known_hosts, naming its key and the file', async () => {
      const path = join(work, 'known_hosts_other');
      const other = await generateKey(join(work, 'other_host'));
      await writeFile(path, `[127.0.0.1]:1 ${other.publicKeyLine}\nexample.com ${sshd.hostKeyLine}\n`);
      const marker = join(work, 'should-not-exist');
      const r = await probe('ssh', login({ known_hosts: path, check: { command: `touch ${marker}` } }));
      expect(r).toMatchObject({ ok: false, reason: `host key for ${name} (ssh-ed25519 ${hostFp}) is not in ${path}` });
      expect(r.observed).toEqual({});
      expect(existsSync(marker)).toBe(false);
    });

    it('says so when the known_hosts file does not exist', async () => {
      const path = join(work, 'no-such-known_hosts');
      const r = await probe('ssh', login({ known_hosts: path, check: { command: 'true' } }));
      expect(r).toMatchObject({
        ok: false,
        reason: `host key for ${name} (ssh-ed25519 ${hostFp}) is not in ${path} (the file does not exist)`,
      });
    });

    it('refuses a host whose key differs from the one listed: possible man-in-the-middle', async () => {
      const path = join(work, 'known_hosts_changed');
      const other = await generateKey(join(work, 'impostor'));
      await writeFile(path, `# the old key\n[127.0.0.1]:${sshd.port} ${other.publicKeyLine}\n`);
      const r = await probe('ssh', login({ known_hosts: path, check: { command: 'true' } }));
      const otherFp = await sshFingerprint(`${other.privateKeyPath}.pub`);
      expect(r).toMatchObject({
        ok: false,
        reason:
          `host key for ${name} (ssh-ed25519 ${hostFp}) does not match ssh-ed25519 ${otherFp} in ${path} line 2: ` +
          'possible man-in-the-middle attack (if the host was reinstalled, replace its line)',
      });
    });

    it('refuses a pinned host_key that differs', async () => {
      const other = await generateKey(join(work, 'pinned_other'));
      const r = await probe('ssh', login({ known_hosts: undefined, host_key: other.publicKeyLine, check: { command: 'true' } }));
      const otherFp = await sshFingerprint(`${other.privateKeyPath}.pub`);
      expect(r).toMatchObject({
        ok: false,
        reason: `host key for ${name} (ssh-ed25519 ${hostFp}) does not match the pinned host_key (ssh-ed25519 ${otherFp}): possible man-in-the-middle attack`,
      });
    });

    it('accepts hashed known_hosts entries written by ssh-keygen -H', async () => {
      const path = join(work, 'known_hosts_hashed');
      const other = await generateKey(join(work, 'hashed_other'));
      await writeFile(path, `other.example ${other.publicKeyLine}\n${await readFile(sshd.knownHostsPath, 'utf8')}`);
      await run('ssh-keygen', ['-H', '-f', path]);
      const hashed = await readFile(path, 'utf8');
      expect(hashed).not.toContain('127.0.0.1');
      expect(hashed.split('\n').filter((l) => l.startsWith('|1|'))).toHaveLength(2);
      const r = await probe('ssh', login({ known_hosts: path, check: { command: 'echo hashed' } }));
      expect(r).toMatchObject({ ok: true, observed: { stdout: 'hashed' } });
    });

    it('refuses a key marked @revoked', async () => {
      const path = join(work, 'known_hosts_revoked');
      await writeFile(path, `${await readFile(sshd.knownHostsPath, 'utf8')}@revoked * ${sshd.hostKeyLine}\n`);
      const r = await probe('ssh', login({ known_hosts: path, check: { command: 'true' } }));
      expect(r).toMatchObject({ ok: false, reason: `host key for ${name} (ssh-ed25519 ${hostFp}) is marked @revoked in ${path} line 2` });
    });

    it('skips the check only when told to, insecurely', async () => {
      const r = await probe('ssh', login({ known_hosts: undefined, insecure_skip_host_key_check: true, check: { command: 'true' } }));
      expect(r).toMatchObject({ ok: true });
    });
  });

  describe('a host known only by its RSA key', () => {
    let both: TestSshd;
    let rsaLine: string;

    beforeAll(async () => {
      const dir = await mkdtemp(join(tmpdir(), 'continuity-rsa-host-'));
      await run('ssh-keygen', ['-q', '-t', 'rsa', '-b', '2048', '-N', '', '-f', join(dir, 'host_rsa')]);
      rsaLine = (await readFile(join(dir, 'host_rsa.pub'), 'utf8')).split(' ').slice(0, 2).join(' ');
      // The harness's ed25519 key comes after this one; sshd offers both.
      both = await startSshd({ config: [`HostKey ${join(dir, 'host_rsa')}`] });
    });
    afterAll(async () => {
      await both?.stop();
    });

    it('asks for the RSA key instead of being offered the unknown ed25519 one', async () => {
      const path = join(work, 'known_hosts_rsa');
      await writeFile(path, `[127.0.0.1]:${both.port} ${rsaLine}\n`);
      const settings = { host: both.host, port: both.port, username: both.user, private_key_file: both.privateKeyPath, known_hosts: path };
      const r = await probe('ssh', { ...settings, check: { command: 'echo rsa' } });
      expect(r).toMatchObject({ ok: true, observed: { stdout: 'rsa' } });
    });
  });
});

describe('ssh settings', () => {
  const base = { host: 'db1', username: 'probe', private_key_file: '/k', check: { command: 'true' } };

  it('lets the schema require exactly one check', () => {
    expect(Value.Check(ssh.settings, base)).toBe(true);
    expect(Value.Check(ssh.settings, { ...base, check: {} })).toBe(false);
    expect(Value.Check(ssh.settings, { ...base, check: { command: 'true', load: {} } })).toBe(false);
    expect(Value.Check(ssh.settings, { ...base, check: { reboot: true } })).toBe(false);
    expect(ssh.settings.properties.check).toMatchObject({ minProperties: 1, maxProperties: 1, additionalProperties: false });
  });

  it('says what is wrong across fields', () => {
    expect(ssh.validate!(base as never)).toEqual([]);
    expect(ssh.validate!({ ...base, check: {} } as never)).toEqual([
      ['check', 'must set exactly one of: command, disk, load, memory, systemd_unit, integrity'],
    ]);
    expect(ssh.validate!({ ...base, check: { command: 'x', disk: { path: '/' } } } as never)).toEqual([
      ['check', 'must set exactly one of: command, disk, load, memory, systemd_unit, integrity (found command, disk)'],
    ]);
    expect(ssh.validate!({ ...base, private_key_file: undefined } as never)).toEqual([
      ['', 'set one of private_key_file, private_key or password'],
    ]);
    expect(ssh.validate!({ ...base, password: 'pw' } as never)).toEqual([['password', 'set only one of private_key_file, password']]);
    expect(ssh.validate!({ ...base, known_hosts: '/kh', host_key: 'ssh-ed25519 AAAA' } as never)).toEqual([
      ['host_key', 'set known_hosts or host_key, not both'],
      ['host_key', 'is not a public key line such as `ssh-ed25519 AAAA...`'],
    ]);
    expect(ssh.validate!({ ...base, insecure_skip_host_key_check: true, known_hosts: '/kh' } as never)).toEqual([
      ['insecure_skip_host_key_check', 'cannot be combined with known_hosts or host_key'],
    ]);
    expect(ssh.validate!({ ...base, check: { load: {} }, expect_exit_code: 1 } as never)).toEqual([
      ['expect_exit_code', 'only applies to check.command'],
    ]);
    expect(
      ssh.validate!({
        ...base,
        check: { integrity: { files: ['/a', '/b'], baseline: { '/a': 'x'.repeat(64), '/c': 'y'.repeat(64) } } },
      } as never),
    ).toEqual([
      ['check.integrity.baseline', 'has no hash for /b'],
      ['check.integrity.baseline', 'has hashes for files not in files: /c'],
    ]);
  });

  it('accepts every check kind once the loader has filled in the defaults', () => {
    const checks = [
      { command: 'true' },
      { disk: { path: '/' } },
      { load: {} },
      { memory: {} },
      { systemd_unit: 'nginx.service' },
      { integrity: { files: ['/etc/passwd'] } },
    ];
    for (const check of checks) {
      const settings = Value.Default(ssh.settings, structuredClone({ ...base, check }));
      expect(Value.Check(ssh.settings, settings)).toBe(true);
      expect(ssh.validate!(settings as never)).toEqual([]);
    }
    expect(Value.Default(ssh.settings, structuredClone({ ...base, check: { disk: { path: '/' } } }))).toMatchObject({
      port: 22,
      check: { disk: { path: '/', max_used_percent: 90 } },
    });
  });

  it('names the insecure switch as insecure and documents every field', () => {
    expect(ssh.settings.properties.insecure_skip_host_key_check.description).toMatch(/^INSECURE/);
    const undocumented: string[] = [];
    const walk = (schema: { description?: string; properties?: Record<string, unknown> }, path: string) => {
      for (const [key, sub] of Object.entries(schema.properties ?? {})) {
        const s = sub as { description?: string; properties?: Record<string, unknown> };
        if (!s.description) undocumented.push(`${path}${key}`);
        walk(s, `${path}${key}.`);
      }
    };
    walk(ssh.settings, '');
    expect(undocumented).toEqual([]);
  });
});

/** Runs the ssh prober through the real runner with a state folder the test can look into. */
function probeWithState(stateDir: string, settings: unknown, id: string) {
  return runProbe({ id, prober: ssh as never, settings, timeoutMs: 10_000, conditions: [] }, { stateDir });
}
