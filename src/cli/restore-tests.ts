import { setTimeout as delay } from 'node:timers/promises';
import { Command } from 'commander';
import Table from 'cli-table3';
import cliProgress from 'cli-progress';
import type { RestoreTestSummary } from '../restore-tests/manager.js';
import type { RestoreTestReport } from '../restore-tests/report.js';
import type { ExecutionView } from '../runbooks/executor.js';
import { TERMINAL, type StepRecord } from '../runbooks/store.js';
import { act, apiVerbs, CliError, type Api, type ApiOptions, type CliShared } from './runbooks.js';

const out = (text: string): void => void process.stdout.write(text + '\n');
const err = (text: string): void => void process.stderr.write(text + '\n');
const MIB = 1024 * 1024;
const secs = (n: number | undefined) => (n === undefined ? '-' : `${n.toFixed(1)} s`);

/** restore-test <set>, restore-tests, restore-tests sweep, restore-tests report: the plan owner's verbs. */
export function registerRestoreTestCommands(program: Command, shared: CliShared): void {
  const { connect, apiCommand } = apiVerbs(program, shared);

  apiCommand('restore-test', 'run a restore test of a backup set now, showing its progress, then its verdict')
    .argument('<backup-set>', 'the backup set (the id of its s3-backup probe)')
    .option('--no-wait', 'start it and print the execution id, without following it')
    .option('--json', 'print the final report as JSON')
    .action(
      act(async (set: string, o: ApiOptions & { wait: boolean; json?: boolean }) => {
        const api = connect(o);
        const started = await api.post<{ execution: { id: string }; created: boolean }>(
          `/api/v1/restore-tests/${encodeURIComponent(set)}/runs`,
          {},
        );
        const id = started.execution.id;
        if (!o.wait) return out(id);
        err(`restore test of ${set}: execution ${id}`);
        await follow(api, id);
        const report = await waitForReport(api, set, id);
        if (o.json) out(JSON.stringify(report, null, 2));
        else out(reportText(report));
        if (report.result !== 'pass') throw new CliError(`restore test of ${set} failed: ${report.reason ?? 'see the report'}`);
      }),
    );

  const group = program.command('restore-tests').description('restore tests: the sets, their last verdicts, reports, the sweeper');

  const list = (o: ApiOptions & { json?: boolean }) => async () => {
    const { restoreTests } = await connect(o).get<{ restoreTests: RestoreTestSummary[] }>('/api/v1/restore-tests');
    if (o.json) return out(JSON.stringify(restoreTests, null, 2));
    const t = new Table({
      head: ['backup set', 'service', 'runbook', 'schedule', 'next run', 'last', 'total', 'RTO margin', 'last pass'],
      ...shared.tableStyle(),
    });
    for (const r of restoreTests) {
      t.push([
        r.backupSet,
        r.service,
        `${r.runbook} v${r.version}`,
        `${r.schedule} ${r.timezone}`,
        r.nextRun ?? '-',
        r.last ? `${r.last.result}${r.last.reason ? `: ${r.last.reason.slice(0, 60)}` : ''}` : 'never run',
        secs(r.last?.timings.total),
        secs(r.last?.rtoMarginSeconds),
        r.lastPass ?? '-',
      ]);
    }
    out(t.toString());
  };
  withApiOptions(group.command('list', { isDefault: true }), shared)
    .description('each backup set: schedule, next run, the last verdict and RTO margin')
    .option('--json', 'print them as JSON')
    .action(act(async (o: ApiOptions & { json?: boolean }) => list(o)()));

  withApiOptions(group.command('sweep'), shared)
    .description('remove scratch databases and folders that crashed restore tests left behind')
    .action(
      act(async (o: ApiOptions) => {
        const { results } = await connect(o).post<{
          results: Array<{ backupSet: string; removed: string[]; kept: Array<{ name: string; why: string }> }>;
        }>('/api/v1/restore-tests/sweep', {});
        for (const r of results) {
          for (const name of r.removed) out(`removed ${name}`);
          for (const k of r.kept) out(`kept ${k.name}: ${k.why}`);
        }
        if (results.every((r) => r.removed.length === 0)) out('nothing left behind');
      }),
    );

  withApiOptions(group.command('report'), shared)
    .description('the report of a restore test (the newest of the set by default), Markdown or JSON')
    .argument('<backup-set>', 'the backup set')
    .argument('[execution]', 'the execution id of the test (default: the newest)')
    .option('--json', 'print it as JSON')
    .action(
      act(async (set: string, id: string | undefined, o: ApiOptions & { json?: boolean }) => {
        const api = connect(o);
        const base = `/api/v1/restore-tests/${encodeURIComponent(set)}/reports`;
        let execution = id;
        if (!execution) {
          const { reports } = await api.get<{ reports: RestoreTestReport[] }>(base);
          if (!reports[0]) throw new CliError(`no restore test of ${set} has finished yet`);
          execution = reports[0].id;
        }
        const path = `${base}/${encodeURIComponent(execution)}`;
        if (o.json) out(JSON.stringify(await api.get<RestoreTestReport>(path), null, 2));
        else out(await api.get<string>(`${path}?format=markdown`));
      }),
    );
}

function withApiOptions(cmd: Command, shared: CliShared): Command {
  return cmd
    .addOption(shared.configOption())
    .option('--url <url>', "the daemon's base URL (default: from the config's daemon.listen)")
    .option('--token-file <path>', 'read the API token from this file (default: the CONTINUITY_TOKEN environment variable)');
}

/**
 * Follows the execution until it ends: on a terminal, a progress bar of the bytes streamed from S3
 * with the phase; otherwise one line per phase and per quarter of the download.
 */
async function follow(api: Api, id: string): Promise<void> {
  const tty = process.stderr.isTTY === true;
  const bar = tty
    ? new cliProgress.SingleBar(
        {
          format: '{phase} |{bar}| {percentage}% {done}/{all} MiB {step}',
          stream: process.stderr,
          hideCursor: true,
          clearOnComplete: false,
        },
        cliProgress.Presets.shades_classic,
      )
    : undefined;
  let barStarted = false;
  let lastLine = '';
  let lastQuarter = -1;
  try {
    for (;;) {
      const view = await api.get<ExecutionView>(`/api/v1/executions/${encodeURIComponent(id)}`);
      const running = view.steps.find((s) => s.status === 'started');
      const phase = running ? (running.progress?.activity ?? running.stage ?? running.step) : view.execution.status;
      const p = running?.progress;
      if (bar && p?.total) {
        const payload = { phase: phase.padEnd(8), done: (p.done! / MIB).toFixed(1), all: (p.total / MIB).toFixed(1), step: running!.step };
        if (!barStarted) bar.start(p.total, p.done ?? 0, payload);
        else bar.update(p.done ?? 0, payload);
        barStarted = true;
      } else if (!bar) {
        const quarter = p?.total ? Math.floor(((p.done ?? 0) / p.total) * 4) : -1;
        const line =
          stepLine(running, phase) +
          (p?.total && quarter !== lastQuarter ? ` ${Math.min(100, quarter * 25)}% of ${(p.total / MIB).toFixed(1)} MiB` : '');
        if (line !== lastLine && (quarter !== lastQuarter || !p?.total)) {
          err(line);
          lastLine = line;
          lastQuarter = quarter;
        }
      }
      if (TERMINAL.has(view.execution.status)) return;
      await delay(500);
    }
  } finally {
    bar?.stop();
  }
}

function stepLine(step: StepRecord | undefined, phase: string): string {
  return step ? `${phase}: ${step.step}` : phase;
}

/** The report follows the execution's end by up to a second (the daemon polls it). */
async function waitForReport(api: Api, set: string, id: string): Promise<RestoreTestReport> {
  for (let i = 0; i < 60; i++) {
    try {
      return await api.get<RestoreTestReport>(`/api/v1/restore-tests/${encodeURIComponent(set)}/reports/${encodeURIComponent(id)}`);
    } catch (e) {
      if (!(e instanceof CliError) || e.status !== 404) throw e;
    }
    await delay(500);
  }
  throw new CliError(`execution ${id} ended, but no report of it appeared: see continuity execution ${id}`);
}

/** The verdict first, then the timings. */
export function reportText(r: RestoreTestReport): string {
  const t = r.timings;
  return [
    `${r.result === 'pass' ? 'PASS' : 'FAIL'}: restore test of ${r.backupSet} (${r.service}, RTO ${r.rtoSeconds} s)${r.reason ? `: ${r.reason}` : ''}`,
    `backup:   ${r.backup.key ?? '-'}${r.backup.bytes !== undefined ? `, ${r.backup.bytes} bytes` : ''}${r.backup.lastModified ? `, taken ${r.backup.lastModified}` : ''}`,
    `timings:  total ${secs(t.total)} = prepare ${secs(t.prepare)} + restore ${secs(t.restore)} (download ${secs(t.download)}, streamed into it) + validate ${secs(t.validate)}; cleanup ${secs(t.cleanup)}`,
    `margin:   ${secs(r.rtoMarginSeconds)} inside the RTO${r.secondsPerGib !== undefined ? `; ${r.secondsPerGib.toFixed(1)} s per GiB` : ''}`,
    ...r.validation.map((v) => `check:    ${v.step} ${v.status}${v.reason ? `: ${v.reason}` : ''}`),
    `report:   continuity restore-tests report ${r.backupSet} ${r.id}`,
  ].join('\n');
}
