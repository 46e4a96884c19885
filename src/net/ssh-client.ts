import type { EventEmitter } from 'node:events';
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Type, type Static } from '@sinclair/typebox';
import { CappedOutput } from '../capped-output.js';
import { nodeSsh } from '../lazy.js';
import {
  checkHostKey,
  checkPinnedKey,
  hostFieldMatches,
  hostKeyAlgorithms,
  hostKeyName,
  parseKnownHosts,
  parsePublicKeyLine,
  type HostKeyVerdict,
} from '../probers/known-hosts.js';
import { reasonOf } from '../probers/types.js';

/**
 * An SSH session as the ssh prober and the ssh runbook step use it: log in with a key or a
 * password, verify the server's host key (known_hosts, a pinned key, or explicitly not at all),
 * run commands with their output capped, and drop everything when the caller's signal aborts.
 */

const DEFAULT_KNOWN_HOSTS = '~/.ssh/known_hosts';

/** The connection settings both the prober and the step take, as TypeBox properties to spread into a settings object. */
export const sshConnectionSettings = {
  host: Type.String({ minLength: 1, description: 'Host name or address of the SSH server.' }),
  port: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535, default: 22, description: 'SSH port (default 22).' })),
  username: Type.String({ minLength: 1, description: 'User to log in as.' }),
  private_key_file: Type.Optional(
    Type.String({ minLength: 1, description: "Path of the private key (OpenSSH or PEM format); a leading ~ is the daemon user's home." }),
  ),
  private_key: Type.Optional(Type.String({ minLength: 1, description: 'The private key text itself, usually a ${file:...} reference.' })),
  password: Type.Optional(
    Type.String({
      minLength: 1,
      description: 'Password for password authentication, usually a ${env:...} or ${file:...} reference; prefer a key.',
    }),
  ),
  passphrase: Type.Optional(Type.String({ minLength: 1, description: 'Passphrase of an encrypted private key.' })),
  known_hosts: Type.Optional(
    Type.String({
      minLength: 1,
      description: `OpenSSH known_hosts file that must list the server's host key (plain or hashed entries); default ${DEFAULT_KNOWN_HOSTS} of the daemon user.`,
    }),
  ),
  host_key: Type.Optional(
    Type.String({
      minLength: 1,
      description: "The server's host public key pinned as a line such as `ssh-ed25519 AAAA...`, instead of known_hosts.",
    }),
  ),
  insecure_skip_host_key_check: Type.Optional(
    Type.Boolean({
      description:
        'INSECURE: accept whatever host key the server presents, so anyone on the network path can impersonate the host, read the password and fake the result. Only for throwaway labs.',
    }),
  ),
};

/** The connection settings as values (any settings object that spreads sshConnectionSettings has them). */
export type SshConnectionSettings = Static<ReturnType<typeof Type.Object<typeof sshConnectionSettings>>>;

/** Cross-field problems of the connection settings, as [path, message]. */
export function validateSshConnection(s: SshConnectionSettings): Array<[string, string]> {
  const problems: Array<[string, string]> = [];
  const auth = (['private_key_file', 'private_key', 'password'] as const).filter((k) => s[k] !== undefined);
  if (auth.length === 0) problems.push(['', 'set one of private_key_file, private_key or password']);
  if (auth.length > 1) problems.push([auth[1]!, `set only one of ${auth.join(', ')}`]);
  if (s.passphrase !== undefined && s.password !== undefined)
    problems.push(['passphrase', 'a passphrase goes with a private key, not a password']);
  if (s.known_hosts !== undefined && s.host_key !== undefined) problems.push(['host_key', 'set known_hosts or host_key, not both']);
  if (s.insecure_skip_host_key_check && (s.known_hosts !== undefined || s.host_key !== undefined)) {
    problems.push(['insecure_skip_host_key_check', 'cannot be combined with known_hosts or host_key']);
  }
  if (s.host_key !== undefined && !parsePublicKeyLine(s.host_key)) {
    problems.push(['host_key', 'is not a public key line such as `ssh-ed25519 AAAA...`']);
  }
  return problems;
}

/** The secret settings (password, passphrase, key text) long enough to search for in text that leaves. */
export function sshSecrets(s: SshConnectionSettings): string[] {
  return [s.password, s.passphrase, s.private_key].filter((v): v is string => v !== undefined && v.length >= 4);
}

/** The text with every secret replaced, in case a server or library echoed one back. */
export function scrubSecrets(text: string, secrets: readonly string[]): string {
  return secrets.reduce((t, secret) => t.split(secret).join('[REDACTED]'), text);
}

/** How one remote command ended, with its output (each stream cut to 64 KiB, trailing whitespace removed). */
export interface SshExecResult {
  /** Null when the command ended without one (killed by a signal, or the server did not say). */
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

/** A logged-in session. */
export interface SshSession {
  /** `user@host` or `user@[host]:port`, for messages. */
  target: string;
  /** Seconds from the start of the connection to a logged-in session. */
  connectSeconds: number;
  /** Runs one command line; rejects with the signal's reason on abort, or when the connection drops mid-command. */
  exec(command: string): Promise<SshExecResult>;
}

// ssh2 ships no types here, and node-ssh's typings lean on them; these are the parts we use.
interface Channel extends EventEmitter {
  stderr: EventEmitter;
  end(): void;
}
interface Connection extends EventEmitter {
  exec(command: string, callback: (err: Error | undefined, channel: Channel) => void): boolean;
  destroy(): void;
}

/**
 * Connects, verifies the host key, logs in, hands the session to `use` and closes the session
 * after. Resolves `{ error }` with a reason that reads well when no session could be made, else
 * `{ value }` with what `use` returned. Rejects with `signal.reason` once the signal aborts (the
 * connection is destroyed at once), and with whatever `use` throws.
 */
export async function withSshSession<T>(
  s: SshConnectionSettings,
  ctx: { signal: AbortSignal; timeoutMs: number },
  use: (session: SshSession) => Promise<T>,
): Promise<{ value: T } | { error: string }> {
  const port = s.port ?? 22;
  const name = hostKeyName(s.host, port);
  const policy = await hostKeyPolicy(s, name);
  if ('error' in policy) return policy;
  const auth = await credentials(s);
  if ('error' in auth) return auth;

  // The host key verdict is kept here: ssh2 only reports "Host denied (verification failed)".
  let refusal: string | undefined;
  const hostVerifier = policy.verify
    ? (key: Buffer) => {
        const verdict = policy.verify!(key);
        if (!verdict.ok) refusal = verdict.reason;
        return verdict.ok;
      }
    : undefined;

  // node-ssh (and ssh2 under it) is loaded by the first session, not when the daemon starts.
  const { NodeSSH } = await nodeSsh();
  const client = new NodeSSH();
  let connection: Connection | undefined;
  const onAbort = () => connection?.destroy();
  ctx.signal.addEventListener('abort', onAbort, { once: true });
  try {
    if (ctx.signal.aborted) throw ctx.signal.reason;
    const t0 = performance.now();
    const connecting = client.connect({
      host: s.host,
      port,
      username: s.username,
      ...auth.config,
      readyTimeout: ctx.timeoutMs,
      ...(hostVerifier ? { hostVerifier } : {}),
      ...(policy.algorithms ? { algorithms: { serverHostKey: policy.algorithms } } : {}),
    });
    // node-ssh creates the client synchronously (we never give it a key path to read first), and
    // stops listening for errors once connected; without our own listener a later error (the
    // server going away mid-command) would be an uncaught exception in the daemon.
    connection = (client.connection as Connection | null) ?? undefined;
    connection?.on('error', () => {});
    try {
      await unlessAborted(connecting, ctx.signal);
    } catch (err) {
      if (ctx.signal.aborted) throw ctx.signal.reason;
      return { error: refusal ?? connectFailure(err, s) };
    }
    const session: SshSession = {
      target: `${s.username}@${name}`,
      connectSeconds: (performance.now() - t0) / 1000,
      exec: (command) => unlessAborted(exec(connection!, command), ctx.signal),
    };
    return { value: await use(session) };
  } finally {
    ctx.signal.removeEventListener('abort', onAbort);
    client.dispose();
  }
}

interface HostKeyPolicy {
  /** Undefined only when the check is explicitly skipped. */
  verify?: (key: Buffer) => HostKeyVerdict;
  /** Host key algorithms to ask for, so the server presents a key type we can verify. */
  algorithms?: string[];
}

async function hostKeyPolicy(s: SshConnectionSettings, name: string): Promise<HostKeyPolicy | { error: string }> {
  if (s.insecure_skip_host_key_check) return {};
  if (s.host_key !== undefined) {
    const pinned = parsePublicKeyLine(s.host_key);
    if (!pinned) return { error: 'host_key is not a public key line such as `ssh-ed25519 AAAA...`' };
    return { verify: (key) => checkPinnedKey(pinned, name, key), algorithms: hostKeyAlgorithms([pinned.type]) };
  }
  const path = expandHome(s.known_hosts ?? DEFAULT_KNOWN_HOSTS);
  let text = '';
  let exists = true;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return { error: `cannot read known_hosts: ${reasonOf(err)}` };
    exists = false;
  }
  const entries = parseKnownHosts(text);
  const known = entries.filter((e) => e.marker === undefined && hostFieldMatches(e.hosts, name)).map((e) => e.key.type);
  return {
    verify: (key) => {
      const verdict = checkHostKey(entries, name, key, path);
      return verdict.ok || exists ? verdict : { ok: false, reason: `${verdict.reason} (the file does not exist)` };
    },
    algorithms: hostKeyAlgorithms(known),
  };
}

async function credentials(s: SshConnectionSettings): Promise<{ config: Record<string, string> } | { error: string }> {
  if (s.password !== undefined) return { config: { password: s.password } };
  let key = s.private_key;
  if (key === undefined && s.private_key_file !== undefined) {
    try {
      key = await readFile(expandHome(s.private_key_file), 'utf8');
    } catch (err) {
      return { error: `cannot read private_key_file: ${reasonOf(err)}` };
    }
  }
  if (key === undefined) return { error: 'no credentials: set one of private_key_file, private_key or password' };
  return { config: { privateKey: key, ...(s.passphrase !== undefined ? { passphrase: s.passphrase } : {}) } };
}

/** A failed connect in words: node's socket errors read well already, ssh2's own less so. */
function connectFailure(err: unknown, s: SshConnectionSettings): string {
  const e = err as Error & { level?: string; code?: string };
  if (e.level === 'client-authentication') {
    return `authentication failed for user ${s.username} (${s.password !== undefined ? 'password' : 'publickey'})`;
  }
  if (e.level === 'client-timeout') return 'timed out waiting for the SSH handshake';
  // node-ssh's wording for a connection closed before the handshake finished.
  if (e.code === 'ETIMEDOUT' && e.message === 'No response from server')
    return 'the server closed the connection before the SSH handshake finished';
  return reasonOf(err);
}

/** Settles like `promise`, or rejects with the signal's reason as soon as it aborts. */
function unlessAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  // The promise may still reject after an abort (a destroyed connection); that is expected, not unhandled.
  promise.catch(() => {});
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/** Runs one command over the connection (our own exec, for the output cap and the exit signal). */
function exec(connection: Connection, command: string): Promise<SshExecResult> {
  return new Promise((resolve, reject) => {
    const onClose = () => reject(new Error('the SSH connection closed while the command was running'));
    connection.once('close', onClose);
    connection.exec(command, (err, channel) => {
      if (err) {
        connection.removeListener('close', onClose);
        reject(err);
        return;
      }
      const stdout = new CappedOutput();
      const stderr = new CappedOutput();
      let code: number | null = null;
      let signal: string | null = null;
      channel.on('data', (d: Buffer) => stdout.push(d));
      channel.stderr.on('data', (d: Buffer) => stderr.push(d));
      channel.on('exit', (c: number | null, sig?: string) => {
        code = typeof c === 'number' ? c : null;
        signal = sig ?? null;
      });
      channel.on('error', () => {});
      channel.once('close', () => {
        connection.removeListener('close', onClose);
        resolve({ code, signal, stdout: stdout.text(), stderr: stderr.text() });
      });
      // Commands that read stdin get end-of-file at once instead of waiting for the timeout.
      channel.end();
    });
  });
}

/** A leading `~` as the daemon user's home. */
export function expandHome(path: string): string {
  return path === '~' || path.startsWith('~/') ? join(homedir(), path.slice(1)) : path;
}
