import { describe, expect, it } from 'vitest';
import {
  blobKeyType,
  checkHostKey,
  checkPinnedKey,
  fingerprint,
  hostFieldMatches,
  hostKeyAlgorithms,
  hostKeyName,
  parseKnownHosts,
  parsePublicKeyLine,
} from '../../src/probers/known-hosts.js';

// Real keys made with ssh-keygen; the fingerprints are what `ssh-keygen -lf` printed for them.
const A = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGqATpK+AUrUPSaLrzFq9dxWBF+Vfe82YI+lj/xOMACE';
const A_FP = 'SHA256:7YZXUaFupxgb2AL//82VwNB2SyDUTh+21cSXVk6zb54';
const B = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILrJYRZxDtA8h95j4SiGDdCNUjRuMnGzS9Z6W6w+0557';
const B_FP = 'SHA256:pUcru4f2x60rVZ3lSL08hpnKMys1jG2IiZ4en4kjPqc';
const C_RSA =
  'ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDg9/qI6M5X5v6FU1IPTy/NYQQZ47UA1rOg34AWYTmvb0BrmNsgpBN5llEL4e5NpGyBwx2pCfdzCM/IAAak+iVKwKoW2iIUyzuQ6AEQOohDI1+jqRrzZb9a9umoxBJCgHzAuUh529yb5q26MSbaK4iXDgV1kA11fuCKNkyxzaMdBw==';
const C_FP = 'SHA256:BjnIqPMzM1YeiklzR3M/QcoqN2ip9ryIyj5b87lpKoY';

const blob = (line: string) => parsePublicKeyLine(line)!.blob;
const check = (text: string, name: string, key: string) => checkHostKey(parseKnownHosts(text), name, blob(key), '/etc/kh');

describe('public keys', () => {
  it('decodes a key line and fingerprints it as ssh-keygen does', () => {
    const key = parsePublicKeyLine(`${A} someone@somewhere`)!;
    expect(key.type).toBe('ssh-ed25519');
    expect(blobKeyType(key.blob)).toBe('ssh-ed25519');
    expect(fingerprint(key.blob)).toBe(A_FP);
    expect(fingerprint(blob(C_RSA))).toBe(C_FP);
  });

  it('rejects broken base64 and a type that is not the one inside the key', () => {
    expect(parsePublicKeyLine('ssh-ed25519 not*base64')).toBeUndefined();
    expect(parsePublicKeyLine(A.replace('ssh-ed25519', 'ssh-rsa'))).toBeUndefined();
    expect(parsePublicKeyLine('ssh-ed25519')).toBeUndefined();
    expect(parsePublicKeyLine('')).toBeUndefined();
  });
});

describe('host names', () => {
  it('writes port 22 bare and any other port in brackets', () => {
    expect(hostKeyName('db1.example.com', 22)).toBe('db1.example.com');
    expect(hostKeyName('127.0.0.1', 2222)).toBe('[127.0.0.1]:2222');
  });

  it('matches comma lists, wildcards and negations, case-insensitively', () => {
    expect(hostFieldMatches('db1,db2,10.0.0.5', 'db2')).toBe(true);
    expect(hostFieldMatches('db1,db2', 'db3')).toBe(false);
    expect(hostFieldMatches('DB1.Example.COM', 'db1.example.com')).toBe(true);
    expect(hostFieldMatches('*.example.com', 'db1.example.com')).toBe(true);
    expect(hostFieldMatches('*.example.com', 'example.com')).toBe(false);
    expect(hostFieldMatches('db?', 'db7')).toBe(true);
    expect(hostFieldMatches('*.example.com,!evil.example.com', 'evil.example.com')).toBe(false);
    expect(hostFieldMatches('!evil.example.com', 'db1.example.com')).toBe(false);
  });

  it('keeps the port part of bracketed names exact', () => {
    expect(hostFieldMatches('[127.0.0.1]:2222', '[127.0.0.1]:2222')).toBe(true);
    expect(hostFieldMatches('[127.0.0.1]:2222', '[127.0.0.1]:22222')).toBe(false);
    expect(hostFieldMatches('127.0.0.1', '[127.0.0.1]:2222')).toBe(false);
    expect(hostFieldMatches('[127.0.0.1]:2222', '127.0.0.1')).toBe(false);
  });

  it('matches hashed names made by `ssh-keygen -H`', () => {
    // ssh-keygen -H output for `[127.0.0.1]:2222` and `example.com`.
    expect(hostFieldMatches('|1|GnjSTNCDMTdt9M4umD7M9O1WhTQ=|Wf4PP+WsgRIxE0HwRzFUmGKFQR4=', '[127.0.0.1]:2222')).toBe(true);
    expect(hostFieldMatches('|1|GnjSTNCDMTdt9M4umD7M9O1WhTQ=|Wf4PP+WsgRIxE0HwRzFUmGKFQR4=', '[127.0.0.1]:2223')).toBe(false);
    expect(hostFieldMatches('|1|8bH43uQbgAW0TvmuuV46+eo98BY=|viPFcmwXSbDvPIJgWYxAI4EfXns=', 'example.com')).toBe(true);
    expect(hostFieldMatches('|1|8bH43uQbgAW0TvmuuV46+eo98BY=|viPFcmwXSbDvPIJgWYxAI4EfXns=', 'Example.com')).toBe(false);
    expect(hostFieldMatches('|1|broken', 'example.com')).toBe(false);
  });
});

describe('parseKnownHosts', () => {
  it('keeps markers and line numbers, and skips comments, blank and broken lines', () => {
    const entries = parseKnownHosts(
      [
        '# a comment',
        '',
        `db1,db2 ${A} comment here`,
        `@revoked * ${B}`,
        `@cert-authority *.example.com ${C_RSA}`,
        `@unknown-marker db3 ${A}`,
        'db4 ssh-ed25519',
        `db5 ${A.replace('AAAAC3', 'AAAAC4')}`,
        `   [10.0.0.1]:2200   ${B}   `,
      ].join('\r\n'),
    );
    expect(entries.map((e) => [e.line, e.marker, e.hosts, e.key.type])).toEqual([
      [3, undefined, 'db1,db2', 'ssh-ed25519'],
      [4, 'revoked', '*', 'ssh-ed25519'],
      [5, 'cert-authority', '*.example.com', 'ssh-rsa'],
      [9, undefined, '[10.0.0.1]:2200', 'ssh-ed25519'],
    ]);
  });
});

describe('checkHostKey', () => {
  it('accepts a listed key, plain, bracketed or hashed', () => {
    expect(check(`db1,db2 ${A}`, 'db2', A)).toEqual({ ok: true });
    expect(check(`[127.0.0.1]:2222 ${A}`, '[127.0.0.1]:2222', A)).toEqual({ ok: true });
    expect(check(`|1|GnjSTNCDMTdt9M4umD7M9O1WhTQ=|Wf4PP+WsgRIxE0HwRzFUmGKFQR4= ${A}`, '[127.0.0.1]:2222', A)).toEqual({ ok: true });
  });

  it('accepts the key when the host also has lines with other keys', () => {
    expect(check(`db1 ${C_RSA}\ndb1 ${B}\ndb1 ${A}`, 'db1', A)).toEqual({ ok: true });
  });

  it('calls an unlisted host unknown, naming the key and the file', () => {
    expect(check(`db1 ${A}`, '[127.0.0.1]:2222', A)).toEqual({
      ok: false,
      reason: `host key for [127.0.0.1]:2222 (ssh-ed25519 ${A_FP}) is not in /etc/kh`,
    });
    expect(check('', 'db1', A)).toEqual({ ok: false, reason: `host key for db1 (ssh-ed25519 ${A_FP}) is not in /etc/kh` });
  });

  it('calls a listed host with another key a possible man-in-the-middle, preferring a line of the same type', () => {
    expect(check(`db1 ${C_RSA}\ndb1 ${B}`, 'db1', A)).toEqual({
      ok: false,
      reason:
        `host key for db1 (ssh-ed25519 ${A_FP}) does not match ssh-ed25519 ${B_FP} in /etc/kh line 2: ` +
        'possible man-in-the-middle attack (if the host was reinstalled, replace its line)',
    });
    expect(check(`db1 ${C_RSA}`, 'db1', A)).toMatchObject({
      ok: false,
      reason: expect.stringContaining(`does not match ssh-rsa ${C_FP} in /etc/kh line 1`),
    });
  });

  it('refuses a revoked key even when it is also listed for the host, and for any host', () => {
    expect(check(`db1 ${A}\n@revoked db1 ${A}`, 'db1', A)).toEqual({
      ok: false,
      reason: `host key for db1 (ssh-ed25519 ${A_FP}) is marked @revoked in /etc/kh line 2`,
    });
    expect(check(`db1 ${A}\n@revoked other ${A}`, 'db1', A)).toMatchObject({ ok: false, reason: expect.stringContaining('@revoked') });
    expect(check(`db1 ${A}\n@revoked * ${B}`, 'db1', A)).toEqual({ ok: true });
  });

  it('never accepts a key through a @cert-authority line', () => {
    expect(check(`@cert-authority db1 ${A}`, 'db1', A)).toEqual({
      ok: false,
      reason: `host key for db1 (ssh-ed25519 ${A_FP}) is not in /etc/kh`,
    });
  });

  it('lets a negated pattern rule a host out', () => {
    expect(check(`*,!db1 ${A}`, 'db1', A)).toMatchObject({ ok: false, reason: expect.stringContaining('is not in /etc/kh') });
    expect(check(`*,!db1 ${A}`, 'db2', A)).toEqual({ ok: true });
  });
});

describe('checkPinnedKey', () => {
  it('accepts the pinned key and names both keys on a mismatch', () => {
    const pinned = parsePublicKeyLine(A)!;
    expect(checkPinnedKey(pinned, 'db1', blob(A))).toEqual({ ok: true });
    expect(checkPinnedKey(pinned, '[db1]:2200', blob(B))).toEqual({
      ok: false,
      reason: `host key for [db1]:2200 (ssh-ed25519 ${B_FP}) does not match the pinned host_key (ssh-ed25519 ${A_FP}): possible man-in-the-middle attack`,
    });
  });
});

describe('hostKeyAlgorithms', () => {
  it('offers only the algorithms of the known key types, best first, or all when none is usable', () => {
    expect(hostKeyAlgorithms(['ssh-rsa'])).toEqual(['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa']);
    expect(hostKeyAlgorithms(['ssh-rsa', 'ssh-ed25519'])).toEqual(['ssh-ed25519', 'rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa']);
    expect(hostKeyAlgorithms(['sk-ssh-ed25519@openssh.com'])).toBeUndefined();
    expect(hostKeyAlgorithms([])).toBeUndefined();
  });
});
