import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { writeConfig } from '../../helpers/config.js';
import { freePort } from '../../helpers/net.js';

const run = promisify(execFile);
const BIN = 'bin/continuity.js';

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run('node', [BIN, ...args]);
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('continuity CLI', () => {
  it('validate: exit 0 and a summary for a valid config', async () => {
    const r = await cli(['validate', '-c', 'test/fixtures/config/valid/config/continuity.yaml']);
    expect(r).toMatchObject({ code: 0, stderr: '' });
    expect(r.stdout).toBe(
      'test/fixtures/config/valid/config/continuity.yaml: valid: 2 sites, 1 services, 3 probes in 1 files, 0 runbook versions\n',
    );
  });

  it('validate: exit 1 and every problem, each with file and line', async () => {
    const r = await cli(['validate', '-c', 'test/fixtures/config/bad-values/config/continuity.yaml']);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(
      [
        '4 problems in the configuration:',
        '  test/fixtures/config/bad-values/probes/network.yaml:2 probes[0].id: "Web_A" must be 1-63 lower-case letters, digits, ".", "_" or "-", starting with a letter or digit',
        '  test/fixtures/config/bad-values/probes/network.yaml:5 probes[0].interval: "10 seconds" is not a duration (expected e.g. 500ms, 15s, 5m, 1h, 1h30m)',
        '  test/fixtures/config/bad-values/probes/network.yaml:6 probes[0].failure_threshold: must be at least 1, got 0',
        '  test/fixtures/config/bad-values/probes/network.yaml:7 probes[0].tcp.port: must be at most 65535, got 70000',
        '',
      ].join('\n'),
    );
  });

  it('validate: the shipped config, probes and runbooks are valid', async () => {
    const r = await cli(['validate']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  });

  it('daemon: refuses to start on an invalid config, exit 1', async () => {
    const r = await cli(['daemon', '-c', 'test/fixtures/config/timeout-not-shorter/config/continuity.yaml']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      'continuity: refusing to start: 1 problem in the configuration:\n  test/fixtures/config/timeout-not-shorter/probes/databases.yaml:17 probes[2].timeout: 30s must be shorter than interval 15s',
    );
  });

  it('daemon: serves status, reloads on SIGHUP, exits 0 on SIGTERM; status prints a table and JSON', async () => {
    const port = await freePort();
    const probe = (id: string) =>
      `  - id: ${id}\n    kind: tcp\n    site: primary\n    services: [orders]\n    interval: 1s\n    timeout: 500ms\n    tcp: { host: 127.0.0.1, port: ${port} }\n`;
    const cfg = writeConfig({
      config: `daemon:\n  listen: 127.0.0.1:${port}\nsites:\n  primary: { role: primary }\n  dr: { role: dr }\nservices:\n  orders: {}\n`,
      probes: { 'a.yaml': `probes:\n${probe('self')}` },
    });
    const child = spawn('node', [BIN, 'daemon', '-c', cfg.configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    try {
      for (let i = 0; i < 100 && !err.includes('metrics:'); i++) await new Promise((r) => setTimeout(r, 100));
      expect(err).toContain(`status:  http://127.0.0.1:${port}/api/v1/status`);
      expect(err).toContain(`metrics: http://127.0.0.1:${port}/metrics`);

      const json = await cli(['status', '--json', '-c', cfg.configPath]);
      expect(json.code).toBe(0);
      expect(JSON.parse(json.stdout).probes.map((p: { id: string }) => p.id)).toEqual(['self']);
      const table = await cli(['status', '--url', `http://127.0.0.1:${port}`]);
      expect(table.stdout).toMatch(/│ self +│ tcp +│ primary +│/);

      cfg.write('probes/a.yaml', `probes:\n${probe('self')}${probe('self-again')}`);
      child.kill('SIGHUP');
      for (let i = 0; i < 50 && !out.includes('config reloaded'); i++) await new Promise((r) => setTimeout(r, 100));
      const after = await cli(['status', '--json', '-c', cfg.configPath]);
      expect(JSON.parse(after.stdout).probes.map((p: { id: string }) => p.id)).toEqual(['self', 'self-again']);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
    expect(out).toContain('"msg":"stopped"');
  });

  it('status: a clear error when no daemon answers', async () => {
    const port = await freePort();
    const r = await cli(['status', '--url', `http://127.0.0.1:${port}`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`continuity: no daemon answers at http://127.0.0.1:${port}: fetch failed\n`);
  });
});
