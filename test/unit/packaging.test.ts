import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { loadConfig } from '../../src/config/load.js';

/** The Dockerfile as instructions: continuation lines joined, comments dropped, split into stages. */
function dockerfile() {
  const lines = readFileSync('Dockerfile', 'utf8')
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  const stages: Array<{ from: string; lines: string[] }> = [];
  const args: Record<string, string> = {};
  for (const l of lines) {
    const arg = /^ARG (\w+)=(\S+)$/.exec(l);
    if (arg && stages.length === 0) args[arg[1]!] = arg[2]!;
    if (l.startsWith('FROM ')) stages.push({ from: l.slice(5).replace(/\$\{(\w+)\}/, (_, n: string) => args[n] ?? ''), lines: [] });
    else stages.at(-1)?.lines.push(l);
  }
  return { stages, runtime: stages.at(-1)!.lines };
}

interface Compose {
  services: Record<string, Record<string, unknown> & { command?: string[] | string; volumes?: string[]; healthcheck?: { test: string[] } }>;
  configs: Record<string, { content: string }>;
  secrets: Record<string, { file: string }>;
  volumes: Record<string, unknown>;
}

describe('Dockerfile', () => {
  const { stages, runtime } = dockerfile();

  it('builds in one stage and runs in another, on a current Node LTS slim image', () => {
    expect(stages).toHaveLength(2);
    const image = stages[1]!.from;
    expect(image).toMatch(/^node:(\d+)-slim$/);
    const major = Number(/^node:(\d+)/.exec(image)![1]);
    expect(major % 2, 'an LTS line is even').toBe(0);
    expect(major).toBeGreaterThanOrEqual(22);
    expect(stages[0]!.from).toMatch(/ AS build$/);
    expect(stages[0]!.lines).toContain('RUN npm run build');
    const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as { scripts: Record<string, string>; bin: Record<string, string> };
    expect(pkg.scripts.build).toMatch(/^tsc -p tsconfig\.build\.json\b/);
    expect(readFileSync('tsconfig.build.json', 'utf8')).toContain('"outDir": "dist"');
  });

  it('runs the compiled dist/ with the production dependencies only, as a non-root user', () => {
    expect(runtime.some((l) => /^RUN npm ci --omit=dev\b/.test(l))).toBe(true);
    expect(runtime).toContain('COPY --from=build /app/dist ./dist');
    expect(runtime.some((l) => l.includes('node_modules'))).toBe(false);
    // bin/continuity.js falls back to dist/cli.js where there is no src/.
    expect(readFileSync('bin/continuity.js', 'utf8')).toContain("join(root, 'dist', 'cli.js')");
    expect(runtime.some((l) => /^COPY (\S+ )?src\b/.test(l))).toBe(false);
    const user = runtime.filter((l) => l.startsWith('USER ')).at(-1);
    expect(user).toBeDefined();
    expect(user).not.toMatch(/^USER (root|0)\b/);
    expect(runtime).toContain('ENTRYPOINT ["tini", "--", "node", "bin/continuity.js"]');
  });

  it('installs the clients probes and steps call, with tini and CA certificates', () => {
    const apt = runtime.find((l) => l.includes('apt-get install'))!;
    for (const p of ['ca-certificates', 'tini', 'openssh-client', 'postgresql-client', 'mariadb-client', 'iputils-ping']) {
      expect(apt.split(/\s+/)).toContain(p);
    }
    expect(apt).toContain('--no-install-recommends');
    expect(apt).toContain('rm -rf /var/lib/apt/lists/*');
  });

  it('checks /healthz, and declares config, probes, runbooks and the state dir as volumes', () => {
    expect(runtime.find((l) => l.startsWith('HEALTHCHECK '))).toMatch(/CONTINUITY_HEALTH_URL/);
    expect(runtime.find((l) => l.startsWith('ENV CONTINUITY_HEALTH_URL='))).toBe('ENV CONTINUITY_HEALTH_URL=http://127.0.0.1:9464/healthz');
    expect(JSON.parse(runtime.find((l) => l.startsWith('VOLUME '))!.slice(7))).toEqual([
      '/app/config',
      '/app/probes',
      '/app/runbooks',
      '/app/var',
    ]);
    // The shipped config's state_dir (../var from /app/config) is that volume.
    expect(readFileSync('config/continuity.yaml', 'utf8')).toMatch(/^\s+state_dir: \.\.\/var$/m);
  });

  it('copies only what exists, and what .dockerignore lets through', () => {
    const ignored = readFileSync('.dockerignore', 'utf8').split('\n').filter(Boolean);
    for (const stage of stages) {
      for (const l of stage.lines.filter((x) => x.startsWith('COPY ') && !x.includes('--from='))) {
        for (const src of l.split(/\s+/).slice(1, -1)) {
          expect(existsSync(src), src).toBe(true);
          expect(ignored, src).not.toContain(src);
          // Compose secrets live in config/secrets/: the image takes the config file alone.
          if (src.startsWith('config')) expect(src).toBe('config/continuity.yaml');
        }
      }
    }
  });
});

describe('config/docker-compose.example.yaml', () => {
  const compose = parse(readFileSync('config/docker-compose.example.yaml', 'utf8')) as Compose;
  const { redis, continuity } = compose.services;

  it('runs Redis set for production, on a volume, with a health check', () => {
    const command = [redis!.command].flat().join(' ');
    expect(command).toContain('--appendonly yes');
    expect(command).toContain('--maxmemory-policy noeviction');
    expect(redis!.volumes).toEqual(['redis-data:/data']);
    expect(redis!.healthcheck!.test.join(' ')).toContain('redis-cli ping');
    expect(compose.volumes).toHaveProperty('redis-data');
  });

  it('runs the daemon built from the repository, after Redis is healthy, with its secrets from files', () => {
    expect(continuity!.build).toBe('..');
    expect(existsSync(resolve('config', continuity!.build as string, 'Dockerfile'))).toBe(true);
    expect(continuity!.depends_on).toEqual({ redis: { condition: 'service_healthy' } });
    expect(continuity!.healthcheck!.test.join(' ')).toContain('/healthz');
    for (const v of continuity!.volumes!) {
      const [from] = v.split(':');
      if (from!.startsWith('.')) expect(existsSync(resolve('config', from!)), v).toBe(true);
    }
    expect(continuity!.volumes).toContain('continuity-var:/app/var');
    expect(compose.secrets.redis_password!.file).toBe('./secrets/redis_password.txt');
    // Nothing secret is written in the file: environment values come from the environment.
    for (const value of Object.values(continuity!.environment as Record<string, string>)) expect(value).toMatch(/^\$\{\w+:-\}$/);
  });

  it('holds a valid daemon config for the container, listening for Prometheus and reaching Redis by its service name', () => {
    // Compose turns $$ into $; the paths are the container's.
    const content = compose.configs.continuity!.content.replaceAll('$$', '$');
    const config = parse(content) as { daemon: Record<string, string> };
    expect(config.daemon.listen).toBe('0.0.0.0:9464');
    expect(config.daemon.redis_url).toBe('redis://:${file:/run/secrets/redis_password}@redis:6379');
    const dir = mkdtempSync(join(tmpdir(), 'continuity-compose-'));
    writeFileSync(join(dir, 'redis_password'), 'pw-from-a-secret-file\n');
    const file = join(dir, 'continuity.yaml');
    writeFileSync(
      file,
      content
        .replaceAll('/run/secrets/', `${dir}/`)
        .replaceAll('/app/probes', resolve('probes'))
        .replaceAll('/app/runbooks', resolve('runbooks')),
    );
    const c = loadConfig(file, { env: {} });
    expect(c.daemon).toMatchObject({ listenHost: '0.0.0.0', listenPort: 9464, redisUrl: 'redis://:pw-from-a-secret-file@redis:6379' });
    expect(c.probes.length).toBeGreaterThan(0);
    expect(c.runbooks.all.length).toBeGreaterThan(0);
  });
});
