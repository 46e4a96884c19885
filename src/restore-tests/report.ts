import type { ExecutionView } from '../runbooks/executor.js';
import { formatDuration } from '../duration.js';

/** The phases a restore test is timed by; `total` is what the RTO is held against. */
export const PHASES = ['total', 'prepare', 'download', 'restore', 'validate', 'cleanup'] as const;
export type Phase = (typeof PHASES)[number];

/** One restore test, as the plans' "emergency plan execution record": JSON, and Markdown for people. */
export interface RestoreTestReport {
  /** The execution id of the runbook run. */
  id: string;
  backupSet: string;
  service: string;
  runbook: string;
  version: number;
  /** schedule, or manual. */
  trigger: 'schedule' | 'manual';
  requestedBy: string;
  startedAt: string;
  finishedAt: string;
  result: 'pass' | 'fail';
  /** Why it failed; absent on a pass. */
  reason?: string;
  backup: { key?: string; bytes?: number; lastModified?: string; ageAtTestSeconds?: number };
  /** Seconds per phase; a phase the runbook has no step for is absent. */
  timings: Partial<Record<Phase, number>>;
  rtoSeconds: number;
  rtoMarginSeconds?: number;
  /** Restore seconds (the restore phase) per GiB of backup. */
  secondsPerGib?: number;
  validation: Array<{ step: string; status: string; reason?: string; outputs?: Record<string, unknown> }>;
  execution: { status: string; reason?: string };
  steps: Array<{ step: string; stage?: string; phase: string; status: string; seconds?: number; reason?: string }>;
}

const GIB = 1024 ** 3;

/**
 * The report of a finished restore-test execution. The RTO is held against the time from the
 * first step's start to the end of the last step that is not cleanup: restoring and proving the
 * data is the recovery; dropping the scratch copy afterwards is not.
 */
export function buildReport(
  view: ExecutionView,
  ctx: { backupSet: string; service: string; rtoSeconds: number; trigger: 'schedule' | 'manual' },
): RestoreTestReport {
  const rec = view.execution;
  const main = view.steps.filter((s) => s.phase === 'main');
  const ran = view.steps.filter((s) => s.startedAt !== undefined);
  const started = Math.min(...ran.map((s) => s.startedAt!), rec.finishedAt ?? rec.updatedAt);
  const timings: Partial<Record<Phase, number>> = {};
  for (const s of view.steps) {
    if (!s.stage || s.durationSeconds === undefined) continue;
    const stage = s.stage as Phase;
    if (!(PHASES as readonly string[]).includes(stage) || stage === 'total') continue;
    timings[stage] = round((timings[stage] ?? 0) + s.durationSeconds);
  }
  const restoreStep = main.find((s) => s.kind === 's3-restore');
  const out = restoreStep?.outputs ?? {};
  if (typeof out.download_seconds === 'number') timings.download = round(out.download_seconds);
  const recoveryEnd = Math.max(
    started,
    ...main.filter((s) => s.stage !== 'cleanup' && s.finishedAt !== undefined).map((s) => s.finishedAt!),
  );
  timings.total = round((recoveryEnd - started) / 1000);

  const bytes = typeof out.bytes === 'number' ? out.bytes : undefined;
  const lastModified = typeof out.last_modified === 'number' ? out.last_modified : undefined;
  const backup: RestoreTestReport['backup'] = {
    ...(typeof out.key === 'string' ? { key: out.key } : {}),
    ...(bytes !== undefined ? { bytes } : {}),
    ...(lastModified !== undefined
      ? { lastModified: new Date(lastModified * 1000).toISOString(), ageAtTestSeconds: Math.round(started / 1000 - lastModified) }
      : {}),
  };
  const succeeded = rec.status === 'succeeded';
  const margin = ctx.rtoSeconds - timings.total;
  let reason: string | undefined;
  if (!succeeded) reason = `${rec.status}: ${rec.reason ?? 'no reason recorded'}`;
  else if (margin < 0)
    reason = `restored and validated, but it took ${formatDuration(timings.total * 1000)}, over the RTO of ${formatDuration(ctx.rtoSeconds * 1000)} of ${ctx.service}`;
  const restoreSeconds = timings.restore;
  return {
    id: rec.id,
    backupSet: ctx.backupSet,
    service: ctx.service,
    runbook: rec.runbook,
    version: rec.version,
    trigger: ctx.trigger,
    requestedBy: rec.requestedBy,
    startedAt: new Date(started).toISOString(),
    finishedAt: new Date(rec.finishedAt ?? Date.now()).toISOString(),
    result: reason === undefined ? 'pass' : 'fail',
    ...(reason !== undefined ? { reason } : {}),
    backup,
    timings,
    rtoSeconds: ctx.rtoSeconds,
    ...(succeeded ? { rtoMarginSeconds: round(margin) } : {}),
    ...(succeeded && bytes && restoreSeconds !== undefined ? { secondsPerGib: round(restoreSeconds / (bytes / GIB)) } : {}),
    validation: main
      .filter((s) => s.stage === 'validate')
      .map((s) => ({
        step: s.step,
        status: s.status,
        ...(s.reason ? { reason: s.reason } : {}),
        ...(s.outputs && Object.keys(s.outputs).length ? { outputs: s.outputs } : {}),
      })),
    execution: { status: rec.status, ...(rec.reason ? { reason: rec.reason } : {}) },
    steps: view.steps.map((s) => ({
      step: s.step,
      ...(s.stage ? { stage: s.stage } : {}),
      phase: s.phase,
      status: s.status,
      ...(s.durationSeconds !== undefined ? { seconds: round(s.durationSeconds) } : {}),
      ...(s.reason ? { reason: s.reason } : {}),
    })),
  };
}

function round(n: number): number {
  return Math.round(n * 1000) / 1000;
}

const seconds = (n: number | undefined) => (n === undefined ? '—' : `${n.toFixed(1)} s`);
const cell = (s: unknown) => String(s).replace(/\|/g, '\\|').replace(/\n/g, ' ');

/** The report for people: what was restored, how long each phase took, what was checked, the verdict. */
export function reportMarkdown(r: RestoreTestReport): string {
  const lines = [
    `# Restore test: ${r.backupSet} — ${r.result === 'pass' ? 'PASS' : 'FAIL'}`,
    '',
    r.result === 'pass'
      ? `Restored and validated in ${seconds(r.timings.total)}, ${seconds(r.rtoMarginSeconds)} inside the RTO of ${formatDuration(r.rtoSeconds * 1000)} of ${r.service}.`
      : `**Failed:** ${cell(r.reason)}`,
    '',
    '| | |',
    '|---|---|',
    `| Backup set | ${r.backupSet} |`,
    `| Service | ${r.service} (RTO ${formatDuration(r.rtoSeconds * 1000)}) |`,
    `| Backup | ${r.backup.key ?? '—'} |`,
    `| Size | ${r.backup.bytes !== undefined ? `${r.backup.bytes} bytes (${(r.backup.bytes / GIB).toFixed(3)} GiB)` : '—'} |`,
    `| Backup taken | ${r.backup.lastModified ?? '—'}${r.backup.ageAtTestSeconds !== undefined ? ` (${formatDuration(r.backup.ageAtTestSeconds * 1000)} before the test)` : ''} |`,
    `| Runbook | ${r.runbook} v${r.version}, execution ${r.id} |`,
    `| Started by | ${r.trigger === 'schedule' ? 'the schedule' : r.requestedBy} |`,
    `| Started | ${r.startedAt} |`,
    `| Finished | ${r.finishedAt} |`,
    `| RTO margin | ${seconds(r.rtoMarginSeconds)} |`,
    `| Restore speed | ${r.secondsPerGib !== undefined ? `${r.secondsPerGib.toFixed(1)} s per GiB` : '—'} |`,
    '',
    '## Timings',
    '',
    '| Phase | Seconds |',
    '|---|---|',
    ...(['total', 'prepare', 'download', 'restore', 'validate', 'cleanup'] as const)
      .filter((p) => r.timings[p] !== undefined)
      .map(
        (p) =>
          `| ${p}${p === 'total' ? ' (held against the RTO; cleanup not counted)' : p === 'download' ? ' (overlaps restore: streamed)' : ''} | ${seconds(r.timings[p])} |`,
      ),
    '',
    '## Validation',
    '',
    ...(r.validation.length
      ? r.validation.map(
          (v) =>
            `- ${v.step}: ${v.status}${v.reason ? ` — ${cell(v.reason)}` : ''}${
              v.outputs
                ? ` (${Object.entries(v.outputs)
                    .map(([k, x]) => `${k} = ${cell(x)}`)
                    .join(', ')})`
                : ''
            }`,
        )
      : ['- no validation step ran']),
    '',
    '## Steps',
    '',
    '| Step | Stage | Status | Seconds | Reason |',
    '|---|---|---|---|---|',
    ...r.steps.map(
      (s) =>
        `| ${s.phase === 'rollback' ? `rollback: ${s.step}` : s.step} | ${s.stage ?? ''} | ${s.status} | ${s.seconds?.toFixed(1) ?? ''} | ${cell(s.reason ?? '')} |`,
    ),
    '',
    `Execution ${r.execution.status}${r.execution.reason ? `: ${cell(r.execution.reason)}` : ''}.`,
    '',
  ];
  return lines.join('\n');
}
