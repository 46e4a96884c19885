import { Command } from 'commander';
import type { IncidentReport } from '../incidents/report.js';
import type { RestoreTestReport } from '../restore-tests/report.js';
import { act, apiVerbs, CliError, type ApiOptions, type CliShared } from './runbooks.js';

const out = (text: string): void => void process.stdout.write(text + '\n');

function withApiOptions(cmd: Command, shared: CliShared): Command {
  return cmd
    .addOption(shared.configOption())
    .option('--url <url>', "the daemon's base URL (default: from the config's daemon.listen)")
    .option('--token-file <path>', 'read the API token from this file (default: the CONTINUITY_TOKEN environment variable)')
    .option('--json', 'print it as JSON (default: Markdown)');
}

/** report incident|drill|restore-test <id>: the after-event reports the plans ask for, Markdown or JSON. */
export function registerReportCommands(program: Command, shared: CliShared): void {
  const { connect } = apiVerbs(program, shared);
  const group = program.command('report').description('after-event reports: incident, drill, restore-test (Markdown, or JSON with --json)');

  for (const kind of ['incident', 'drill'] as const) {
    withApiOptions(group.command(kind), shared)
      .description(
        `the report of ${kind === 'incident' ? 'an incident' : 'a drill'}: timeline, decision, RTO and RPO against the targets, runbook steps and approvals, improvement measures`,
      )
      .argument('<id>', `the ${kind} id (continuity incidents lists them)`)
      .action(
        act(async (id: string, o: ApiOptions & { json?: boolean }) => {
          const api = connect(o);
          const path = `/api/v1/incidents/${encodeURIComponent(id)}/report`;
          const r = await api.get<IncidentReport>(path);
          if (r.kind !== kind)
            throw new CliError(`${id} is ${r.kind === 'drill' ? 'a drill' : 'an incident'}: continuity report ${r.kind} ${id}`);
          out(o.json ? JSON.stringify(r, null, 2) : await api.get<string>(`${path}?format=markdown`));
        }),
      );
  }

  withApiOptions(group.command('restore-test'), shared)
    .description('the report of a restore test, by its execution id')
    .argument('<execution>', 'the execution id of the restore test')
    .action(
      act(async (id: string, o: ApiOptions & { json?: boolean }) => {
        const api = connect(o);
        const path = `/api/v1/restore-test-reports/${encodeURIComponent(id)}`;
        if (o.json) out(JSON.stringify(await api.get<RestoreTestReport>(path), null, 2));
        else out(await api.get<string>(`${path}?format=markdown`));
      }),
    );
}
