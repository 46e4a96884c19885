import { createHash, createHmac } from 'node:crypto';

/**
 * OpenSSH known_hosts files (sshd(8), "SSH_KNOWN_HOSTS FILE FORMAT"): one key per line as
 * `[marker] hosts keytype base64 [comment]`, where hosts is a comma-separated list of patterns
 * (`*`, `?`, `!negation`, `[host]:port` for a port other than 22) or one hashed name
 * `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`.
 */

/** A public key: its type name and its SSH wire-format blob (the base64 part of a .pub line, decoded). */
export interface PublicKey {
  type: string;
  blob: Buffer;
}

/** One usable line of a known_hosts file. */
export interface KnownHostsEntry {
  /** 1-based line number, for messages. */
  line: number;
  marker?: 'revoked' | 'cert-authority';
  /** The host field as written (patterns or a hashed name). */
  hosts: string;
  key: PublicKey;
}

/** The outcome of checking a server's host key. */
export type HostKeyVerdict = { ok: true } | { ok: false; reason: string };

/** The name a host is listed under: `host` on port 22, `[host]:port` otherwise (as ssh writes it). */
export function hostKeyName(host: string, port: number): string {
  return port === 22 ? host : `[${host}]:${port}`;
}

/** The key type written inside a wire-format blob (its first length-prefixed string), or undefined. */
export function blobKeyType(blob: Buffer): string | undefined {
  if (blob.length < 4) return undefined;
  const len = blob.readUInt32BE(0);
  if (len === 0 || len > 64 || 4 + len > blob.length) return undefined;
  return blob.subarray(4, 4 + len).toString('latin1');
}

/** The fingerprint ssh shows by default: `SHA256:` and unpadded base64 of the blob's SHA-256. */
export function fingerprint(blob: Buffer): string {
  return 'SHA256:' + createHash('sha256').update(blob).digest('base64').replace(/=+$/, '');
}

/** `ssh-ed25519 SHA256:...`, the way keys appear in reasons. */
export function describeKey(blob: Buffer): string {
  return `${blobKeyType(blob) ?? 'unknown-type'} ${fingerprint(blob)}`;
}

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/** Decodes `keytype base64`; undefined when the base64 is broken or names another type than the blob holds. */
function decodeKey(type: string, base64: string): PublicKey | undefined {
  if (!BASE64.test(base64)) return undefined;
  const blob = Buffer.from(base64, 'base64');
  if (blobKeyType(blob) !== type) return undefined;
  return { type, blob };
}

/** Parses a public key line such as `ssh-ed25519 AAAA... comment` (a .pub file, a pinned key). */
export function parsePublicKeyLine(text: string): PublicKey | undefined {
  const [type, base64] = text.trim().split(/\s+/);
  if (!type || !base64) return undefined;
  return decodeKey(type, base64);
}

/**
 * The usable entries of a known_hosts file. Lines that cannot be parsed are skipped, as ssh does,
 * so one damaged line does not lock out every other host.
 */
export function parseKnownHosts(text: string): KnownHostsEntry[] {
  const entries: KnownHostsEntry[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const fields = line.split(/\s+/);
    let marker: KnownHostsEntry['marker'];
    if (fields[0]!.startsWith('@')) {
      const name = fields.shift()!.slice(1);
      if (name !== 'revoked' && name !== 'cert-authority') return;
      marker = name;
    }
    const [hosts, type, base64] = fields;
    if (!hosts || !type || !base64) return;
    const key = decodeKey(type, base64);
    if (!key) return;
    entries.push({ line: i + 1, ...(marker ? { marker } : {}), hosts, key });
  });
  return entries;
}

function wildcardMatch(pattern: string, name: string): boolean {
  const re = pattern
    .replace(/[.+^${}()|[\]\\]/g, '\\$&')
    .replace(/\*/g, '.*')
    .replace(/\?/g, '.');
  return new RegExp(`^${re}$`, 's').test(name);
}

/** Whether a host field (a pattern list or a hashed name) matches a name such as `[10.0.0.5]:2222`. */
export function hostFieldMatches(field: string, name: string): boolean {
  if (field.startsWith('|1|')) {
    const [, , salt, hash] = field.split('|');
    if (!salt || !hash) return false;
    const mac = createHmac('sha1', Buffer.from(salt, 'base64')).update(name).digest('base64');
    return mac === hash;
  }
  const lower = name.toLowerCase();
  let matched = false;
  for (const raw of field.split(',')) {
    const negated = raw.startsWith('!');
    const pattern = (negated ? raw.slice(1) : raw).toLowerCase();
    if (!pattern || !wildcardMatch(pattern, lower)) continue;
    // As in ssh: a matching negated pattern rules the host out whatever else matches.
    if (negated) return false;
    matched = true;
  }
  return matched;
}

/**
 * Checks the key a server presented against known_hosts entries. `source` names the file in
 * reasons. The order follows ssh: a revoked key is refused outright, a listed key is accepted, a
 * host listed only with other keys is a possible man-in-the-middle, an unlisted host is unknown.
 */
export function checkHostKey(entries: readonly KnownHostsEntry[], name: string, presented: Buffer, source: string): HostKeyVerdict {
  const offered = describeKey(presented);
  // A revoked key is refused for every host, whatever its line's host field says: revocation means
  // the private key is out, and whoever holds it can be any host.
  const revoked = entries.find((e) => e.marker === 'revoked' && e.key.blob.equals(presented));
  if (revoked) {
    return { ok: false, reason: `host key for ${name} (${offered}) is marked @revoked in ${source} line ${revoked.line}` };
  }
  // @cert-authority lines sign host certificates; plain keys are never accepted through them.
  const forHost = entries.filter((e) => e.marker === undefined && hostFieldMatches(e.hosts, name));
  if (forHost.some((e) => e.key.blob.equals(presented))) return { ok: true };
  if (forHost.length > 0) {
    const listed = forHost.find((e) => e.key.type === blobKeyType(presented)) ?? forHost[0]!;
    return {
      ok: false,
      reason:
        `host key for ${name} (${offered}) does not match ${describeKey(listed.key.blob)} in ${source} line ${listed.line}: ` +
        'possible man-in-the-middle attack (if the host was reinstalled, replace its line)',
    };
  }
  return { ok: false, reason: `host key for ${name} (${offered}) is not in ${source}` };
}

/** Checks the presented key against one pinned key (the `host_key` setting). */
export function checkPinnedKey(pinned: PublicKey, name: string, presented: Buffer): HostKeyVerdict {
  if (pinned.blob.equals(presented)) return { ok: true };
  return {
    ok: false,
    reason: `host key for ${name} (${describeKey(presented)}) does not match the pinned host_key (${describeKey(pinned.blob)}): possible man-in-the-middle attack`,
  };
}

// ssh2's host key algorithms, best first; an RSA key can be offered under three signature names.
const ALGORITHMS_BY_KEY_TYPE: Array<[string, string[]]> = [
  ['ssh-ed25519', ['ssh-ed25519']],
  ['ecdsa-sha2-nistp256', ['ecdsa-sha2-nistp256']],
  ['ecdsa-sha2-nistp384', ['ecdsa-sha2-nistp384']],
  ['ecdsa-sha2-nistp521', ['ecdsa-sha2-nistp521']],
  ['ssh-rsa', ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa']],
  ['ssh-dss', ['ssh-dss']],
];

/**
 * The host key algorithms to offer when the host is known with keys of these types, or undefined
 * to offer them all. Like ssh, we ask for a type we can verify: a server with an ed25519 and an
 * RSA key, known only by its RSA key, would otherwise present ed25519 and look unknown.
 */
export function hostKeyAlgorithms(knownTypes: Iterable<string>): string[] | undefined {
  const types = new Set(knownTypes);
  const algorithms = ALGORITHMS_BY_KEY_TYPE.filter(([type]) => types.has(type)).flatMap(([, algs]) => algs);
  return algorithms.length > 0 ? algorithms : undefined;
}
