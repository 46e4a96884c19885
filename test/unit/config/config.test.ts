import { readdirSync, readFileSync, existsSync, mkdtempSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { describe, expect, it } from 'vitest';
import { ConfigError, formatIssue } from '../../../src/config/errors.js';
import { loadConfig } from '../../../src/config/load.js';
import { jsonSchemas } from '../../../src/config/json-schemas.js';

const root = 'test/fixtures/config';
const invalid = readdirSync(root).filter((c) => existsSync(join(root, c, 'expected.txt')));

function issuesOf(dir: string): string[] {
  try {
    loadConfig(join(dir, 'config/continuity.yaml'), { env: {} });
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return err.issues.map((i) => formatIssue(i).replaceAll(`${dir}/`, ''));
  }
  return [];
}

describe('config', () => {
  it('loads a valid config with defaults applied', () => {
    const c = loadConfig(join(root, 'valid/config/continuity.yaml'), { env: {} });
    expect(c.primarySite).toBe('primary');
    expect(c.services.orders).toMatchObject({ rtoMs: 3_600_000, rpoMs: 300_000, activeSite: 'primary' });
    expect(c.probes.map((p) => p.id)).toEqual(['orders-web-a', 'orders-web-b', 'orders-api-a']);
    const b = c.probes[1]!;
    expect(b).toMatchObject({ intervalMs: 30_000, timeoutMs: 5_000, failureThreshold: 3, successThreshold: 1, site: 'dr' });
    expect(b.source).toBe(`${root}/valid/probes/network.yaml:9`);
    expect(b.conditions.map((x) => x.source)).toEqual(['connect_seconds < 0.5']);
  });

  it('has one fixture per invalid case', () => expect(invalid.length).toBeGreaterThanOrEqual(12));

  it.each(invalid)('reports every problem of %s at once, each with its file and line', (name) => {
    const dir = join(root, name);
    const expected = readFileSync(join(dir, 'expected.txt'), 'utf8').trimEnd().split('\n');
    expect(issuesOf(dir)).toEqual(expected);
  });

  it('resolves ${env:...} and ${file:...} secrets and redacts them from error messages', () => {
    const dir = mkdtempSync(join(tmpdir(), 'continuity-config-'));
    mkdirSync(join(dir, 'config'));
    mkdirSync(join(dir, 'probes'));
    writeFileSync(join(dir, 'secret'), 'file-secret-value\n');
    writeFileSync(join(dir, 'config/continuity.yaml'), 'sites: { p: { role: primary }, d: { role: dr } }\nservices: {}\n');
    writeFileSync(
      join(dir, 'probes/x.yaml'),
      [
        'probes:',
        '  - id: a',
        '    kind: tcp',
        '    site: p',
        '    tcp: { host: 127.0.0.1, port: 1, send: "AUTH ${env:PW} ${file:' + join(dir, 'secret') + '} $${literal}" }',
        '  - id: b',
        '    kind: tcp',
        '    site: p',
        '    tcp: { host: 127.0.0.1, port: "${env:PW}" }',
      ].join('\n'),
    );
    let err: ConfigError | undefined;
    try {
      loadConfig(join(dir, 'config/continuity.yaml'), { env: { PW: 'hunter2-very-secret' } });
    } catch (e) {
      err = e as ConfigError;
    }
    expect(err?.issues.map((i) => i.message)).toEqual(['expected a whole number, got "[REDACTED]"']);
    writeFileSync(join(dir, 'probes/x.yaml'), readFileSync(join(dir, 'probes/x.yaml'), 'utf8').split('\n').slice(0, 5).join('\n'));
    const c = loadConfig(join(dir, 'config/continuity.yaml'), { env: { PW: 'hunter2-very-secret' } });
    expect((c.probes[0]!.settings as { send: string }).send).toBe('AUTH hunter2-very-secret file-secret-value ${literal}');
    expect([...c.secrets].sort()).toEqual(['file-secret-value', 'hunter2-very-secret']);
  });

  it('keeps config/schema/ in step with the schema code (run `continuity schema` after a change)', () => {
    for (const [name, schema] of Object.entries(jsonSchemas())) {
      const onDisk = JSON.parse(readFileSync(join('config/schema', name), 'utf8'));
      expect(onDisk, `config/schema/${name} is stale`).toEqual(JSON.parse(JSON.stringify(schema)));
    }
  });
});
