import type { Service } from '../config/load.js';
import type { ExecutionView } from '../runbooks/executor.js';
import type { Decision, Incident, RtoPhases } from './manager.js';

/**
 * The report the continuity plans ask for after every event, incident or drill: what happened
 * (timeline), why (the decision sentence), how long and how much (RTO and RPO achieved against the
 * service's targets), what the runbook did and who approved what (with the sha256 they approved),
 * and the improvement measures a reviewer has to decide on.
 */
export interface IncidentReport {
  kind: 'incident' | 'drill';
  id: string;
  service: string;
  status: Incident['status'];
  outageStart: string;
  openedAt: string;
  closedAt?: string;
  closeReason?: string;
  requestedBy?: string;
  acknowledged?: { by: string; at: string };
  decision?: Omit<Decision, 'at'> & { at: string };
  rto: { targetSeconds?: number; achieved?: RtoPhases; met?: boolean };
  rpo: { targetSeconds?: number; achieved?: Incident['rpo']; met?: boolean };
  execution?: {
    id: string;
    runbook: string;
    version: number;
    mode: string;
    sha256: string;
    status: string;
    reason?: string;
    requestedBy: string;
    startedAt: string;
    finishedAt?: string;
    steps: Array<{
      step: string;
      kind: string;
      status: string;
      attempt: number;
      durationSeconds?: number;
      reason?: string;
      continued?: boolean;
    }>;
    approvals: Array<{ step: string; who: string; at: string; decision: 'approve' | 'deny'; sha256: string; comment?: string }>;
  };
  timeline: Array<{ at: string; type: string; message: string }>;
  /** What went over target or failed: each one a measure for the reviewer to decide on. */
  improvements: string[];
}

const iso = (ms: number | undefined) => (ms === undefined ? undefined : new Date(ms).toISOString());
const secs = (n: number) => `${Number.isInteger(n) ? n : n.toFixed(1)} s`;

export function buildIncidentReport(incident: Incident, service: Service | undefined, view: ExecutionView | undefined): IncidentReport {
  const rtoTarget = service ? service.rtoMs / 1000 : undefined;
  const rpoTarget = service ? service.rpoMs / 1000 : undefined;
  const rtoMet = incident.rto && rtoTarget !== undefined ? incident.rto.total <= rtoTarget : undefined;
  const rpoSeconds = incident.rpo?.seconds;
  const rpoMet =
    incident.rpo && rpoTarget !== undefined
      ? rpoSeconds !== undefined
        ? rpoSeconds <= rpoTarget
        : incident.rpo.bytes === 0
          ? true
          : undefined
      : undefined;
  // The last record of each step (retries and later attempts replace earlier ones).
  const steps = (view?.steps ?? []).map((st) => ({
    step: st.step,
    kind: st.kind,
    status: st.status,
    attempt: st.attempt,
    ...(st.durationSeconds !== undefined ? { durationSeconds: st.durationSeconds } : {}),
    ...(st.reason ? { reason: st.reason } : {}),
    ...(st.continued ? { continued: true } : {}),
  }));

  const improvements: string[] = [];
  const kind = incident.kind ?? 'incident';
  if (incident.rto && rtoTarget !== undefined && rtoMet === false) {
    const [phase, value] = Object.entries(incident.rto)
      .filter(([p]) => p !== 'total')
      .sort(([, a], [, b]) => b - a)[0]!;
    improvements.push(
      `RTO achieved ${secs(incident.rto.total)} is over the target ${secs(rtoTarget)} (longest phase: ${phase.replace('_', ' ')} ${secs(value)})`,
    );
  }
  if (incident.rpo && rpoTarget !== undefined && rpoMet === false)
    improvements.push(`RPO achieved ${secs(rpoSeconds!)} is over the target ${secs(rpoTarget)}`);
  if (incident.rpo && incident.rpo.bytes === undefined && kind === 'incident')
    improvements.push(`RPO achieved could not be measured (${incident.rpo.method})`);
  if (view && view.execution.status !== 'succeeded')
    improvements.push(
      `runbook execution ${view.execution.id} ended ${view.execution.status}${view.execution.reason ? `: ${view.execution.reason}` : ''}`,
    );
  for (const st of steps.filter((s) => s.status === 'failed'))
    improvements.push(
      `step ${st.step} (${st.kind}) failed${st.continued ? ' (the runbook went on)' : ''}: ${st.reason ?? 'no reason given'}`,
    );
  for (const a of view?.approvals ?? []) if (a.decision === 'deny') improvements.push(`${a.who} denied step ${a.step}: ${a.comment ?? ''}`);
  if (incident.status === 'failover_failed') improvements.push(`the ${kind === 'drill' ? 'drill' : 'failover'} did not complete`);
  else if (incident.status !== 'closed') improvements.push(`the ${kind} is not closed yet (${incident.status})`);
  if (kind === 'incident' && incident.notifications?.told.length && !incident.notifications.acknowledged)
    improvements.push('nobody acknowledged the incident: the escalation chain ran to its end');

  return {
    kind,
    id: incident.id,
    service: incident.service,
    status: incident.status,
    outageStart: iso(incident.outageStart)!,
    openedAt: iso(incident.openedAt)!,
    ...(incident.closedAt ? { closedAt: iso(incident.closedAt) } : {}),
    ...(incident.closeReason ? { closeReason: incident.closeReason } : {}),
    ...(incident.requestedBy ? { requestedBy: incident.requestedBy } : {}),
    ...(incident.notifications?.acknowledged
      ? { acknowledged: { by: incident.notifications.acknowledged.by, at: iso(incident.notifications.acknowledged.at)! } }
      : {}),
    ...(incident.decision ? { decision: { ...incident.decision, at: iso(incident.decision.at)! } } : {}),
    rto: {
      ...(rtoTarget !== undefined ? { targetSeconds: rtoTarget } : {}),
      ...(incident.rto ? { achieved: incident.rto } : {}),
      ...(rtoMet !== undefined ? { met: rtoMet } : {}),
    },
    rpo: {
      ...(rpoTarget !== undefined ? { targetSeconds: rpoTarget } : {}),
      ...(incident.rpo ? { achieved: incident.rpo } : {}),
      ...(rpoMet !== undefined ? { met: rpoMet } : {}),
    },
    ...(view
      ? {
          execution: {
            id: view.execution.id,
            runbook: view.execution.runbook,
            version: view.execution.version,
            mode: view.execution.mode,
            sha256: view.execution.hash,
            status: view.execution.status,
            ...(view.execution.reason ? { reason: view.execution.reason } : {}),
            requestedBy: view.execution.requestedBy,
            startedAt: iso(view.execution.createdAt)!,
            ...(view.execution.finishedAt ? { finishedAt: iso(view.execution.finishedAt) } : {}),
            steps,
            approvals: view.approvals.map((a) => ({
              step: a.step,
              who: a.who,
              at: iso(a.at)!,
              decision: a.decision,
              sha256: a.hash,
              ...(a.comment ? { comment: a.comment } : {}),
            })),
          },
        }
      : {}),
    timeline: incident.timeline.map((e) => ({ at: iso(e.at)!, type: e.type, message: e.message })),
    improvements,
  };
}

/** A Markdown table cell: pipes escaped, one line. */
const cell = (v: unknown) => (v === undefined || v === '' ? '-' : String(v).replace(/\|/g, '\\|').replace(/\n/g, ' '));
const verdict = (met: boolean | undefined) => (met === undefined ? 'not measured' : met ? 'met' : '**missed**');

/** The report as Markdown, for the review meeting: sections in the order the plans ask for them. */
export function incidentReportMarkdown(r: IncidentReport): string {
  const title = r.kind === 'drill' ? 'Drill report' : 'Incident report';
  const out = [
    `# ${title}: ${r.id}`,
    '',
    '| | |',
    '|---|---|',
    `| service | ${cell(r.service)} |`,
    `| kind | ${r.kind} |`,
    `| status | ${cell(r.status)} |`,
    `| ${r.kind === 'drill' ? 'drill start' : 'outage start'} | ${r.outageStart} |`,
    `| opened | ${r.openedAt} |`,
    `| closed | ${cell(r.closedAt)}${r.closeReason ? ` (${cell(r.closeReason)})` : ''} |`,
    ...(r.requestedBy ? [`| requested by | ${cell(r.requestedBy)} |`] : []),
    ...(r.acknowledged ? [`| acknowledged | by ${cell(r.acknowledged.by)} at ${r.acknowledged.at} |`] : []),
    '',
    '## Decision',
    '',
    r.decision ? `> ${r.decision.sentence}` : '_No decision was taken._',
    '',
    ...(r.decision ? [`Action: ${r.decision.action}, at ${r.decision.at}.`, ''] : []),
    '## RTO and RPO',
    '',
    '| | target | achieved | verdict |',
    '|---|---|---|---|',
    `| RTO | ${r.rto.targetSeconds !== undefined ? secs(r.rto.targetSeconds) : '-'} | ${r.rto.achieved ? secs(r.rto.achieved.total) : '-'} | ${verdict(r.rto.met)} |`,
    `| RPO | ${r.rpo.targetSeconds !== undefined ? secs(r.rpo.targetSeconds) : '-'} | ${
      r.rpo.achieved
        ? [
            r.rpo.achieved.seconds !== undefined ? secs(r.rpo.achieved.seconds) : undefined,
            r.rpo.achieved.bytes !== undefined ? `${r.rpo.achieved.bytes} B` : undefined,
          ]
            .filter(Boolean)
            .join(', ') || 'unknown'
        : '-'
    } | ${verdict(r.rpo.met)} |`,
    '',
  ];
  if (r.rto.achieved) {
    const p = r.rto.achieved;
    out.push(
      `RTO phases: detection ${secs(p.detection)}, decision ${secs(p.decision)}, approval wait ${secs(p.approval_wait)}, runbook ${secs(p.runbook)}, verification ${secs(p.verification)}.`,
      '',
    );
  }
  if (r.rpo.achieved) out.push(`RPO method: ${r.rpo.achieved.method}.`, '');
  out.push('## Runbook execution', '');
  const e = r.execution;
  if (!e) out.push('_No runbook ran._', '');
  else {
    out.push(
      `Execution \`${e.id}\`: ${e.runbook} v${e.version}, mode ${e.mode}, sha256 \`${e.sha256}\`, requested by ${cell(e.requestedBy)} at ${e.startedAt}; ${e.status}${e.finishedAt ? ` at ${e.finishedAt}` : ''}${e.reason ? ` (${cell(e.reason)})` : ''}.`,
      '',
      '| step | kind | status | attempt | duration | reason |',
      '|---|---|---|---|---|---|',
      ...e.steps.map(
        (s) =>
          `| ${cell(s.step)} | ${s.kind} | ${s.status}${s.continued ? ' (went on)' : ''} | ${s.attempt} | ${s.durationSeconds !== undefined ? secs(s.durationSeconds) : '-'} | ${cell(s.reason)} |`,
      ),
      '',
      '### Approvals',
      '',
    );
    if (e.approvals.length === 0) out.push('_No approval was asked._', '');
    else
      out.push(
        '| step | who | when | decision | sha256 | comment |',
        '|---|---|---|---|---|---|',
        ...e.approvals.map((a) => `| ${cell(a.step)} | ${cell(a.who)} | ${a.at} | ${a.decision} | \`${a.sha256}\` | ${cell(a.comment)} |`),
        '',
      );
  }
  out.push('## Timeline', '', '| at | event | what |', '|---|---|---|');
  for (const t of r.timeline) out.push(`| ${t.at} | ${cell(t.type)} | ${cell(t.message)} |`);
  out.push('', '## Improvement measures', '');
  if (r.improvements.length === 0) out.push('Nothing went over target or failed.', '');
  else {
    out.push('What went over target or failed; the reviewer ticks each one once a measure is decided:', '');
    for (const i of r.improvements) out.push(`- [ ] ${cell(i)}`);
    out.push('');
  }
  out.push(
    '### Reviewer notes',
    '',
    '_To be written by the reviewer: what will change (plan, runbook, monitoring, people), who does it, and by when._',
    '',
    'Reviewed by: ____________________  Date: ____________',
    '',
  );
  return out.join('\n');
}
