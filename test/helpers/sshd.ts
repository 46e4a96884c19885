import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { access, constants, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Where Debian's openssh-server puts the daemon; override with CONTINUITY_TEST_SSHD. */
const SSHD = process.env.CONTINUITY_TEST_SSHD ?? '/usr/sbin/sshd';

/** A running OpenSSH server on 127.0.0.1, with everything a client needs to log in to it. */
export interface TestSshd {
  host: string;
  port: number;
  /** The user the server lets in: the user running the tests (root in CI). */
  user: string;
  /** An unencrypted ed25519 key listed in the server's authorized_keys. */
  privateKeyPath: string;
  /** A known_hosts file with exactly this server's host key, as `[127.0.0.1]:<port> ssh-ed25519 ...`. */
  knownHostsPath: string;
  /** The server's host public key as `ssh-ed25519 AAAA...` (no comment). */
  hostKeyLine: string;
  /** The server's temp folder (config, keys, pid file); removed by stop(). */
  dir: string;
  /** What sshd has logged so far (it runs with -e), for a failing test's message. */
  logs(): string;
  /** Stops the server and every session it forked, then removes its folder. */
  stop(): Promise<void>;
}

export interface SshdOptions {
  /**
   * Extra sshd_config lines (e.g. `PasswordAuthentication yes`). They are written before the
   * harness's own lines because sshd keeps the first value it reads for most keywords.
   */
  config?: string[];
}

/** Generates an unencrypted ed25519 key pair at `path` (and `path`.pub) with ssh-keygen. */
export async function generateKey(path: string, comment = 'continuity-test'): Promise<{ privateKeyPath: string; publicKeyLine: string }> {
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', path]);
  const pub = (await readFile(`${path}.pub`, 'utf8')).trim();
  return { privateKeyPath: path, publicKeyLine: pub.split(/\s+/).slice(0, 2).join(' ') };
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

/** Resolves once the port answers with an SSH banner, so a test never races sshd's startup. */
async function waitForBanner(port: number, child: ChildProcess, deadlineMs: number, logs: () => string): Promise<void> {
  const until = Date.now() + deadlineMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`sshd exited (${child.exitCode ?? child.signalCode}) before accepting connections:\n${logs()}`);
    }
    const banner = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port });
      const done = (ok: boolean) => {
        s.destroy();
        resolve(ok);
      };
      s.setTimeout(1000, () => done(false));
      s.once('data', (d: Buffer) => done(d.toString('latin1').startsWith('SSH-')));
      s.once('error', () => done(false));
    });
    if (banner) return;
    if (Date.now() > until) throw new Error(`sshd did not accept connections on 127.0.0.1:${port} within ${deadlineMs}ms:\n${logs()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Starts the real OpenSSH server on 127.0.0.1 on a free port, with a fresh host key and client
 * key. It runs in its own process group so stop() also ends the sessions it forked.
 */
export async function startSshd(options: SshdOptions = {}): Promise<TestSshd> {
  try {
    await access(SSHD, constants.X_OK);
  } catch {
    throw new Error(`the OpenSSH server is not installed (no ${SSHD}): install it with \`apt-get install openssh-server\``);
  }
  // sshd refuses to start without its privilege-separation folder, which only the package's
  // service unit creates; without root this fails, and sshd's own message then says why.
  await mkdir('/run/sshd', { recursive: true, mode: 0o755 }).catch(() => {});

  const dir = await mkdtemp(join(tmpdir(), 'continuity-sshd-'));
  try {
    const hostKey = await generateKey(join(dir, 'host_ed25519'), 'continuity-test-host');
    const client = await generateKey(join(dir, 'client_ed25519'), 'continuity-test-client');
    await writeFile(join(dir, 'authorized_keys'), client.publicKeyLine + '\n', { mode: 0o600 });

    // A port taken between freePort() and sshd's bind makes sshd exit; try again with another.
    let lastError: unknown;
    for (let attempt = 0; attempt < 3; attempt++) {
      const port = await freePort();
      const configPath = join(dir, 'sshd_config');
      await writeFile(
        configPath,
        [
          ...(options.config ?? []),
          `Port ${port}`,
          'ListenAddress 127.0.0.1',
          `HostKey ${join(dir, 'host_ed25519')}`,
          `PidFile ${join(dir, 'sshd.pid')}`,
          `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
          'StrictModes no',
          'PermitRootLogin prohibit-password',
          'PubkeyAuthentication yes',
          'PasswordAuthentication no',
          'KbdInteractiveAuthentication no',
          'UsePAM no',
          'PrintMotd no',
          'LogLevel VERBOSE',
          'Subsystem sftp internal-sftp',
          '',
        ].join('\n'),
      );
      let output = '';
      const child = spawn(SSHD, ['-D', '-e', '-f', configPath], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
      child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
      child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
      child.on('error', (err) => (output += `spawn failed: ${err.message}\n`));
      const logs = () => output;
      try {
        await waitForBanner(port, child, 10_000, logs);
      } catch (err) {
        killGroup(child);
        lastError = err;
        if (/Address already in use/.test(output)) continue;
        throw err;
      }

      const knownHostsPath = join(dir, 'known_hosts');
      await writeFile(knownHostsPath, `[127.0.0.1]:${port} ${hostKey.publicKeyLine}\n`);
      // A test process that dies without stop() must not leave a listening sshd behind.
      const onExit = () => killGroup(child);
      process.once('exit', onExit);
      return {
        host: '127.0.0.1',
        port,
        user: userInfo().username,
        privateKeyPath: client.privateKeyPath,
        knownHostsPath,
        hostKeyLine: hostKey.publicKeyLine,
        dir,
        logs,
        async stop() {
          process.removeListener('exit', onExit);
          if (child.exitCode === null && child.signalCode === null) {
            const exited = new Promise((r) => child.once('exit', r));
            killGroup(child);
            await exited;
          }
          await rm(dir, { recursive: true, force: true });
        },
      };
    }
    throw lastError;
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

function killGroup(child: ChildProcess): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, 'SIGTERM');
  } catch {
    // Already gone.
  }
}
