import { Type, type Static } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { AlertmanagerConfig, TokenConfig } from '../../config/load.js';
import type { ExternalOutcome, IncidentManager } from '../../incidents/manager.js';
import { actorOf, requireRole, type Audit } from '../auth.js';

export interface AlertmanagerRouteDeps {
  incidents: () => IncidentManager | undefined;
  tokens: () => readonly TokenConfig[];
  alertmanager: () => AlertmanagerConfig | undefined;
  services: () => string[];
  audit: Audit;
}

const Labels = Type.Record(Type.String(), Type.String());

/** One alert of Alertmanager's webhook payload (version 4); fields it may add later are let through. */
const Alert = Type.Object({
  status: Type.Union([Type.Literal('firing'), Type.Literal('resolved')]),
  labels: Labels,
  annotations: Labels,
  startsAt: Type.String({ format: 'date-time' }),
  endsAt: Type.String({ format: 'date-time' }),
  generatorURL: Type.Optional(Type.String()),
  fingerprint: Type.String({ minLength: 1 }),
});

/** Alertmanager's webhook payload, version 4 (https://prometheus.io/docs/alerting/latest/configuration/#webhook_config). */
export const AlertmanagerPayload = Type.Object({
  version: Type.Literal('4'),
  groupKey: Type.Optional(Type.String()),
  truncatedAlerts: Type.Optional(Type.Integer({ minimum: 0 })),
  status: Type.Union([Type.Literal('firing'), Type.Literal('resolved')]),
  receiver: Type.Optional(Type.String()),
  groupLabels: Type.Optional(Labels),
  commonLabels: Type.Optional(Labels),
  commonAnnotations: Type.Optional(Labels),
  externalURL: Type.Optional(Type.String()),
  alerts: Type.Array(Alert),
});

/** The service an alert is about: the first route whose labels all match, else the service label when it names a service. */
export function routeAlert(
  labels: Record<string, string>,
  cfg: AlertmanagerConfig | undefined,
  services: readonly string[],
): { service: string } | { reason: string } {
  for (const r of cfg?.routes ?? []) {
    if (Object.entries(r.match).every(([k, v]) => labels[k] === v)) return { service: r.service };
  }
  const label = cfg?.serviceLabel;
  if (label && labels[label] !== undefined) {
    if (services.includes(labels[label]!)) return { service: labels[label]! };
    return { reason: `no route matches, and label ${label}="${labels[label]}" names no configured service` };
  }
  return {
    reason: `no route matches${label ? `, and it has no ${label} label` : ''} (labels: ${
      Object.entries(labels)
        .map(([k, v]) => `${k}="${v}"`)
        .join(', ') || 'none'
    })`,
  };
}

/** Alertmanager's zero time: an alert without an end. */
const ZERO_TIME = /^0001-01-01T/;

/**
 * POST /api/v1/alertmanager: Alertmanager's webhook receiver (operator token, from the webhook's
 * http_config authorization). Each firing alert routed to a service opens or joins its incident;
 * a resolved one is recorded on the timeline. 200 when any alert was acted on, 202 when every one
 * was ignored; either way the answer lists what was done with each alert and why.
 */
export function alertmanagerRoutes(app: FastifyInstance, deps: AlertmanagerRouteDeps): void {
  app.post<{ Body: Static<typeof AlertmanagerPayload> }>(
    '/api/v1/alertmanager',
    { preHandler: requireRole('operator', deps.tokens, deps.audit), schema: { body: AlertmanagerPayload } },
    async (req, reply) => {
      const actor = actorOf(req);
      const m = deps.incidents();
      const target = req.body.receiver ?? 'alertmanager';
      if (!m) {
        await deps.audit({ who: actor.name, action: 'alertmanager webhook', target, outcome: 'unavailable' });
        // A 5xx: Alertmanager sends the notification again later.
        return reply.code(503).send({ error: 'Service Unavailable', message: 'incidents are not available yet: Redis is not reachable' });
      }
      const services = deps.services();
      const results: Array<{ fingerprint: string; alertname: string; status: string; service?: string } & ExternalOutcome> = [];
      for (const a of req.body.alerts) {
        const alertname = a.labels.alertname ?? '(no alertname)';
        const base = { fingerprint: a.fingerprint, alertname, status: a.status };
        const routed = routeAlert(a.labels, deps.alertmanager(), services);
        if ('reason' in routed) {
          results.push({ ...base, action: 'ignored', reason: routed.reason });
          continue;
        }
        const endsAt = ZERO_TIME.test(a.endsAt) ? undefined : Date.parse(a.endsAt);
        // A firing alert counts until Alertmanager sends it resolved (its endsAt in a firing
        // notification is stale: Alertmanager does not notify again when Prometheus extends it).
        const outcome = await m.raiseExternal(routed.service, {
          source: 'alertmanager',
          fingerprint: a.fingerprint,
          alertname,
          status: a.status,
          ...(a.annotations.summary || a.annotations.description ? { summary: a.annotations.summary ?? a.annotations.description } : {}),
          startsAt: Date.parse(a.startsAt),
          ...(endsAt !== undefined && a.status === 'resolved' ? { endsAt } : {}),
        });
        results.push({ ...base, service: routed.service, ...outcome });
      }
      const ignored = results.filter((r) => r.action === 'ignored');
      const count = (action: string) => results.filter((r) => r.action === action).length;
      await deps.audit({
        who: actor.name,
        action: 'alertmanager webhook',
        target,
        outcome: 'recorded',
        detail: `${results.length} alerts: ${count('opened')} opened, ${count('joined')} joined, ${count('recorded')} recorded, ${ignored.length} ignored${
          req.body.groupKey ? `; group ${req.body.groupKey}` : ''
        }`,
      });
      return reply.code(ignored.length === results.length ? 202 : 200).send({
        alerts: results,
        ignored: ignored.map((r) => ({ fingerprint: r.fingerprint, alertname: r.alertname, reason: r.reason })),
      });
    },
  );
}
