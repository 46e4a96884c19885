import { Command } from 'commander';
import Table from 'cli-table3';
import type { Incident } from '../incidents/manager.js';
import { act, apiVerbs, CliError, type ApiOptions, type CliShared } from './runbooks.js';

const out = (text: string): void => void process.stdout.write(text + '\n');
const iso = (ms: number | undefined) => (ms ? new Date(ms).toISOString() : '-');

/** The incident text a person reads at 3 a.m.: the decision first, then the timeline, then RTO/RPO. */
export function incidentText(i: Incident): string {
  const lines = [
    `${i.kind === 'drill' ? 'drill:    ' : 'incident: '} ${i.id}`,
    `service:   ${i.service}`,
    `status:    ${i.status}${i.closeReason ? ` (${i.closeReason})` : ''}`,
    `outage:    since ${iso(i.outageStart)}`,
    `decision:  ${i.decision?.sentence ?? '-'}`,
    ...(i.executionId ? [`execution: ${i.executionId}`] : []),
    ...(i.notifications?.acknowledged
      ? [`acknowledged by ${i.notifications.acknowledged.by} at ${iso(i.notifications.acknowledged.at)}`]
      : []),
    'timeline:',
    ...i.timeline.map((e) => `  ${iso(e.at)}  ${e.type.padEnd(16)} ${e.message}`),
  ];
  if (i.rto) {
    lines.push(
      `RTO achieved: ${i.rto.total.toFixed(1)} s = detection ${i.rto.detection.toFixed(1)} + decision ${i.rto.decision.toFixed(1)} + approval wait ${i.rto.approval_wait.toFixed(1)} + runbook ${i.rto.runbook.toFixed(1)} + verification ${i.rto.verification.toFixed(1)}`,
    );
  }
  if (i.rpo)
    lines.push(
      `RPO achieved: ${i.rpo.bytes !== undefined ? `${i.rpo.bytes} B` : 'unknown'}${i.rpo.seconds !== undefined ? `, ${i.rpo.seconds} s` : ''} (${i.rpo.method})`,
    );
  return lines.join('\n');
}

/** incidents, incident, ack, maintenance: the on-call engineer's verbs for incidents. */
export function registerIncidentCommands(program: Command, shared: CliShared): void {
  const { connect, apiCommand } = apiVerbs(program, shared);

  apiCommand('incidents', 'incidents, newest first')
    .option('--json', 'print them as JSON')
    .action(
      act(async (o: ApiOptions & { json?: boolean }) => {
        const list = await connect(o).get<Incident[]>('/api/v1/incidents');
        if (o.json) return out(JSON.stringify(list, null, 2));
        const t = new Table({ head: ['incident', 'service', 'status', 'outage since', 'decision'], ...shared.tableStyle() });
        for (const i of list)
          t.push([i.id, i.service, i.kind === 'drill' ? `${i.status} (drill)` : i.status, iso(i.outageStart), i.decision?.sentence ?? '-']);
        out(t.toString());
      }),
    );

  apiCommand('incident', 'one incident: decision, timeline, RTO and RPO achieved')
    .argument('<id>', 'the incident id')
    .option('--json', 'print it as JSON')
    .action(
      act(async (id: string, o: ApiOptions & { json?: boolean }) => {
        const i = await connect(o).get<Incident>(`/api/v1/incidents/${encodeURIComponent(id)}`);
        out(o.json ? JSON.stringify(i, null, 2) : incidentText(i));
      }),
    );

  apiCommand('ack', 'acknowledge an incident: its escalation chain stops')
    .argument('<id>', 'the incident id')
    .action(
      act(async (id: string, o: ApiOptions) => {
        const r = await connect(o).post<{ acknowledged: { by: string } }>(`/api/v1/incidents/${encodeURIComponent(id)}/acknowledge`, {});
        out(`acknowledged by ${r.acknowledged.by}`);
      }),
    );

  apiCommand('forecast', 'record how much longer the repair will take; past the customer-notice threshold, customers are told')
    .argument('<id>', 'the incident id')
    .requiredOption('--repair <duration>', 'e.g. 10h')
    .action(
      act(async (id: string, o: ApiOptions & { repair: string }) => {
        const r = await connect(o).post<{ forecastEnd: string; customerNotified: boolean }>(
          `/api/v1/incidents/${encodeURIComponent(id)}/forecast`,
          {
            repair: o.repair,
          },
        );
        out(`expected back by ${r.forecastEnd}${r.customerNotified ? '; customers have been told' : ''}`);
      }),
    );

  apiCommand('drill', "run the service's failover runbook as a drill: recorded like an incident, nothing switched")
    .argument('<service>', 'the service id')
    .option('--no-wait', 'start it and print the ids, without following it')
    .option('--json', 'print the drill (as `continuity incident --json`) when it ends')
    .action(
      act(async (service: string, o: ApiOptions & { wait: boolean; json?: boolean }) => {
        const api = connect(o);
        const r = await api.post<{ incident: { id: string }; execution: { id: string } }>(
          `/api/v1/services/${encodeURIComponent(service)}/drills`,
          {},
        );
        if (!o.wait) return out(`drill ${r.incident.id} started: execution ${r.execution.id}`);
        process.stderr.write(`drill ${r.incident.id} started: execution ${r.execution.id}\n`);
        let asked = false;
        for (;;) {
          const i = await api.get<Incident>(`/api/v1/incidents/${encodeURIComponent(r.incident.id)}`);
          if (i.status !== 'failing_over') {
            out(o.json ? JSON.stringify(i, null, 2) : incidentText(i));
            if (i.status !== 'closed') process.exitCode = 1;
            return;
          }
          if (!asked) {
            const v = await api.get<{ execution: { status: string } }>(`/api/v1/executions/${encodeURIComponent(r.execution.id)}`);
            if (v.execution.status === 'waiting_approval') {
              asked = true;
              process.stderr.write(`waiting for approval: continuity approve ${r.execution.id}\n`);
            }
          }
          await new Promise((res) => setTimeout(res, 1000));
        }
      }),
    );

  apiCommand('active-site', 'say which site serves a service now, e.g. primary after a failback (on the leader)')
    .argument('<service>', 'the service id')
    .argument('<site>', 'the site id')
    .requiredOption('--reason <text>', 'why, for the audit log')
    .action(
      act(async (service: string, site: string, o: ApiOptions & { reason: string }) => {
        const r = await connect(o).put<{ was: string }>(`/api/v1/services/${encodeURIComponent(service)}/active-site`, {
          site,
          reason: o.reason,
        });
        out(`${service}: served from ${site} (was ${r.was})`);
      }),
    );

  apiCommand('maintenance', 'put a service in maintenance (incidents open, nothing runs), or end it with --end')
    .argument('<service>', 'the service id')
    .option('--for <duration>', 'how long, e.g. 2h')
    .option('--reason <text>', 'why: shown in every decision while it lasts')
    .option('--end', 'end the maintenance now')
    .action(
      act(async (service: string, o: ApiOptions & { for?: string; reason?: string; end?: boolean }) => {
        const api = connect(o);
        if (o.end) {
          await api.delete(`/api/v1/services/${encodeURIComponent(service)}/maintenance`);
          return out(`${service}: maintenance ended`);
        }
        if (!o.for || !o.reason) throw new CliError('maintenance needs --for <duration> and --reason <text> (or --end)');
        const r = await api.post<{ until: string }>(`/api/v1/services/${encodeURIComponent(service)}/maintenance`, {
          duration: o.for,
          reason: o.reason,
        });
        out(`${service}: in maintenance until ${r.until} (${o.reason})`);
      }),
    );
}
