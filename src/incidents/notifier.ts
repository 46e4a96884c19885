import type { Logger } from 'pino';
import type { Config } from '../config/load.js';
import { resolveSecrets } from '../config/secrets.js';
import type { ConfigIssue } from '../config/errors.js';
import { redactor } from '../redact.js';
import { stepKinds } from '../runbooks/steps/index.js';

export type Severity = 'info' | 'warning' | 'critical';

/** What the notifier needs to remember per incident (kept on the incident record). */
export interface NotificationState {
  /** Escalation levels already told (indexes into notifications.escalation). */
  levels: number[];
  /** Channels told so far, in order. */
  told: string[];
  acknowledged?: { by: string; at: number };
  customerNoticeAt?: number;
  /** Execution ids whose approval request was announced. */
  approvalsAnnounced: string[];
  /** Failed steps already announced (`<execution>/<step>/<attempt>`). */
  stepFailuresAnnounced?: string[];
}

export function newNotificationState(): NotificationState {
  return { levels: [], told: [], approvalsAnnounced: [] };
}

/**
 * Incident messages and the escalation chain of the continuity plans: the first responder at once,
 * then the department lead, then the manager, each after a time without acknowledgement; a deputy
 * stands in for a level whose person is away. Customers are told when an outage lasts past the
 * notice threshold (8 h by default).
 */
export class IncidentNotifier {
  constructor(
    private readonly config: () => Config,
    private readonly log: Logger,
  ) {}

  /** Tells whoever is due; returns the timeline lines of what was sent. */
  async escalate(
    incident: {
      id: string;
      service: string;
      openedAt: number;
      outageStart: number;
      forecastEnd?: number;
      notifications: NotificationState;
    },
    summary: string,
  ): Promise<string[]> {
    const n = this.config().notifications;
    const st = incident.notifications;
    const now = Date.now();
    const lines: string[] = [];
    if (!st.acknowledged) {
      for (const [i, level] of n.escalation.entries()) {
        if (st.levels.includes(i) || now - incident.openedAt < level.afterMs) continue;
        st.levels.push(i);
        const away = n.absent.includes(level.notify);
        const channel = away && level.deputy ? level.deputy : level.notify;
        const stand =
          away && level.deputy
            ? ` (standing in for ${level.notify}, who is away)`
            : away
              ? ` (${level.notify} is away and has no deputy)`
              : '';
        const text =
          i === 0
            ? `Incident ${incident.id}: ${summary}`
            : `Escalation ${i}: incident ${incident.id} is not acknowledged after ${Math.round((now - incident.openedAt) / 1000)} s: ${summary}`;
        lines.push(await this.send(channel, incident.id, text + stand, 'critical', i === 0 ? 'incident_opened' : 'escalated'));
        if (!st.told.includes(channel)) st.told.push(channel);
      }
    }
    const c = n.customer;
    // Lasted, or is forecast (an engineer's repair estimate) to last, past the customer-notice threshold.
    const lasting = Math.max(now, incident.forecastEnd ?? 0) - incident.outageStart;
    if (c && st.customerNoticeAt === undefined && lasting >= c.afterMs) {
      st.customerNoticeAt = now;
      lines.push(
        await this.send(
          c.channel,
          incident.id,
          `Service notice: ${incident.service} has been interrupted since ${new Date(incident.outageStart).toISOString()}.${incident.forecastEnd && incident.forecastEnd > now ? ` We expect it back by ${new Date(incident.forecastEnd).toISOString()}.` : ''} Our teams are restoring it; we will tell you when it is back.`,
          'warning',
          'customer_notice',
        ),
      );
    }
    return lines;
  }

  /** Tells everyone already told (and customers, if they were) something about the incident. */
  async tellTold(
    incident: { id: string; notifications: NotificationState },
    text: string,
    severity: Severity,
    event: string,
  ): Promise<string[]> {
    const lines: string[] = [];
    for (const channel of incident.notifications.told) lines.push(await this.send(channel, incident.id, text, severity, event));
    const c = this.config().notifications.customer;
    if (event === 'recovered' && c && incident.notifications.customerNoticeAt !== undefined) {
      lines.push(await this.send(c.channel, incident.id, text, 'info', 'customer_notice'));
    }
    return lines;
  }

  private async send(channel: string, incidentId: string, text: string, severity: Severity, event: string): Promise<string> {
    const target = this.config().notifications.channels[channel];
    if (!target) return `notification to ${channel} skipped: no such channel`;
    const issues: ConfigIssue[] = [];
    const secrets = new Set<string>();
    const url = resolveSecrets(target.url, ['notifications', 'channels', channel, 'url'], {
      file: 'notifications',
      env: process.env,
      issues,
      secrets,
    }) as string;
    redactor.add(secrets);
    if (issues.length) return `notification to ${channel} failed: ${issues.map((i) => i.message).join('; ')}`;
    const r = await stepKinds.notify.run(
      { url, format: target.format, message: text, severity },
      {
        executionId: incidentId,
        stepId: event,
        mode: 'live',
        signal: AbortSignal.timeout(5000),
        timeoutMs: 5000,
        log: this.log,
        stateDir: '.',
      },
    );
    if (!r.ok) this.log.warn({ incident: incidentId, channel, event, reason: r.reason }, 'notification failed');
    return r.ok ? `told ${channel} (${event})` : `notification to ${channel} (${event}) failed: ${r.reason}`;
  }
}
