import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Command, Option } from 'commander';
import Table from 'cli-table3';
import { registerIncidentCommands } from './cli/incidents.js';
import { registerReportCommands } from './cli/reports.js';
import { registerRestoreTestCommands } from './cli/restore-tests.js';
import { registerRunbookCommands } from './cli/runbooks.js';
import { ConfigError } from './config/errors.js';
import { loadConfig } from './config/load.js';
import { jsonSchemas } from './config/json-schemas.js';
import { runDaemon } from './daemon.js';
import { probers } from './probers/index.js';
import { runProbe } from './probers/run.js';
import { probeReference, stepReference } from './reference.js';
import { VERSION } from './version.js';

const program = new Command()
  .name('continuity')
  .description('Business-continuity daemon: watches a primary and a DR site and runs approved failover runbooks.')
  .version(VERSION)
  // Options after a verb are the verb's own: `run --version 2` picks a runbook version.
  .enablePositionalOptions();

const configOption = () =>
  new Option('-c, --config <file>', 'the daemon config file').env('CONTINUITY_CONFIG').default('config/continuity.yaml');

/** The daemon's base URL: --url, else the config's daemon.listen (a wildcard address means this host). */
function daemonUrl(o: { config: string; url?: string }): string {
  if (o.url) return o.url.replace(/\/+$/, '');
  const c = loadConfig(o.config);
  const host = c.daemon.listenHost === '0.0.0.0' ? '127.0.0.1' : c.daemon.listenHost === '::' ? '::1' : c.daemon.listenHost;
  return `http://${host.includes(':') ? `[${host}]` : host}:${c.daemon.listenPort}`;
}

/** Colours only on a terminal: piped output stays plain text. */
const tableStyle = () => (process.stdout.isTTY ? {} : { style: { head: [], border: [] } });

program
  .command('daemon')
  .description('run the daemon: probes, health, HTTP API and /metrics')
  .addOption(configOption())
  .action(async (o: { config: string }) => {
    await runDaemon({ configPath: o.config });
  });

program
  .command('validate')
  .description('check the config, probes and runbooks; exit 0 when valid, 1 with every problem otherwise')
  .addOption(configOption())
  .action((o: { config: string }) => {
    try {
      const c = loadConfig(o.config);
      const files = new Set(c.probes.map((p) => p.source.replace(/:\d+$/, '')));
      process.stdout.write(
        `${o.config}: valid: ${Object.keys(c.sites).length} sites, ${Object.keys(c.services).length} services, ${c.probes.length} probes in ${files.size} files, ${c.runbooks.all.length} runbook versions\n`,
      );
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      process.stderr.write(`${err.message}\n`);
      process.exitCode = 1;
    }
  });

interface StatusDoc {
  sites: Array<{ id: string; role: string; verdict: string }>;
  services: Array<{ id: string; verdict: string; activeSite: string; rtoSeconds: number; rpoSeconds: number; downProbes: string[] }>;
  probes: Array<{
    id: string;
    kind: string;
    site: string;
    state: string;
    since: string;
    last?: { reason: string; durationSeconds: number };
  }>;
}

program
  .command('status')
  .description('what a running daemon sees: sites, services and probes')
  .addOption(configOption())
  .option('--url <url>', "the daemon's base URL (default: from the config's daemon.listen)")
  .option('--json', 'print the status document as JSON')
  .action(async (o: { config: string; url?: string; json?: boolean }) => {
    const url = daemonUrl(o);
    let doc: StatusDoc;
    try {
      const res = await fetch(`${url}/api/v1/status`, { signal: AbortSignal.timeout(5000) });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      doc = (await res.json()) as StatusDoc;
    } catch (err) {
      process.stderr.write(`continuity: no daemon answers at ${url}: ${(err as Error).message}\n`);
      process.exitCode = 1;
      return;
    }
    if (o.json) {
      process.stdout.write(JSON.stringify(doc, null, 2) + '\n');
      return;
    }
    const style = tableStyle();
    const sites = new Table({ head: ['site', 'role', 'verdict'], ...style });
    for (const s of doc.sites) sites.push([s.id, s.role, s.verdict]);
    const services = new Table({ head: ['service', 'verdict', 'active site', 'RTO', 'RPO', 'down probes'], ...style });
    for (const s of doc.services)
      services.push([s.id, s.verdict, s.activeSite, `${s.rtoSeconds}s`, `${s.rpoSeconds}s`, s.downProbes.join(', ')]);
    const probesT = new Table({ head: ['probe', 'kind', 'site', 'state', 'since', 'last result'], ...style });
    for (const p of doc.probes)
      probesT.push([p.id, p.kind, p.site, p.state, p.since, p.last ? `${p.last.reason} (${p.last.durationSeconds}s)` : '-']);
    process.stdout.write(`${sites.toString()}\n${services.toString()}\n${probesT.toString()}\n`);
  });

program
  .command('probe')
  .description('run one configured probe once and print its result (for debugging a probe)')
  .argument('<id>', 'the probe id')
  .addOption(configOption())
  .action(async (id: string, o: { config: string }) => {
    const c = loadConfig(o.config);
    const p = c.probes.find((x) => x.id === id);
    if (!p) {
      process.stderr.write(`continuity: no probe "${id}" (probes: ${c.probes.map((x) => x.id).join(', ')})\n`);
      process.exitCode = 1;
      return;
    }
    const result = await runProbe(
      { id: p.id, prober: probers[p.kind] as never, settings: p.settings, timeoutMs: p.timeoutMs, conditions: p.conditions },
      { stateDir: c.daemon.stateDir },
    );
    const { redactor } = await import('./redact.js');
    redactor.set(c.secrets);
    process.stdout.write(redactor.redact(JSON.stringify(result, null, 2)) + '\n');
    process.exitCode = result.ok ? 0 : 1;
  });

program
  .command('reference')
  .description("print the probe reference, or with --steps the runbook step reference (Markdown), generated from the kinds' schemas")
  .option('--steps', 'the runbook step kinds instead of the probe kinds')
  .action((o: { steps?: boolean }) => {
    process.stdout.write((o.steps ? stepReference() : probeReference()) + '\n');
  });

program
  .command('schema')
  .description('write the JSON Schemas of the config files (for editors) into a folder')
  .option('-o, --out <dir>', 'where to write them', 'config/schema')
  .action((o: { out: string }) => {
    const dir = resolve(o.out);
    mkdirSync(dir, { recursive: true });
    for (const [name, schema] of Object.entries(jsonSchemas())) {
      writeFileSync(join(dir, name), JSON.stringify(schema, null, 2) + '\n');
      process.stdout.write(`wrote ${join(o.out, name)}\n`);
    }
  });

registerRunbookCommands(program, { configOption, daemonUrl, tableStyle });
registerIncidentCommands(program, { configOption, daemonUrl, tableStyle });
registerRestoreTestCommands(program, { configOption, daemonUrl, tableStyle });
registerReportCommands(program, { configOption, daemonUrl, tableStyle });

const isMain = process.argv[1] !== undefined && /continuity(\.js)?$|cli\.(ts|js)$/.test(process.argv[1]);
if (isMain) {
  program.parseAsync(process.argv).catch((err: unknown) => {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      process.exit(1);
    }
    process.stderr.write(`continuity: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  });
}
