import { Type, type Static } from '@sinclair/typebox';
import { STATUS_CODES } from 'node:http';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { TokenConfig } from '../../config/load.js';
import { parseDuration } from '../../duration.js';
import { DrillError, type IncidentManager } from '../../incidents/manager.js';
import { incidentReportMarkdown } from '../../incidents/report.js';
import { ExecutionError } from '../../runbooks/executor.js';
import { actorOf, requireRole, type Audit } from '../auth.js';

export interface IncidentRouteDeps {
  incidents: () => IncidentManager | undefined;
  tokens: () => readonly TokenConfig[];
  services: () => string[];
  audit: Audit;
}

const MaintenanceBody = Type.Object(
  {
    reason: Type.String({ minLength: 1, maxLength: 500, description: 'Why: shown in every decision while it lasts.' }),
    duration: Type.String({ pattern: '^(\\d+(\\.\\d+)?(ms|s|m|h|d))+$', description: 'How long, e.g. 2h.' }),
  },
  { additionalProperties: false },
);

/** Incidents (read) and maintenance windows (operator): a service in maintenance opens incidents but runs nothing. */
export function incidentRoutes(app: FastifyInstance, deps: IncidentRouteDeps): void {
  const role = (need: Parameters<typeof requireRole>[0]) => ({ preHandler: requireRole(need, deps.tokens, deps.audit) });
  const manager = (reply: FastifyReply) => {
    const m = deps.incidents();
    if (!m) void reply.code(503).send({ error: 'Service Unavailable', message: 'incidents are not available yet: Redis is not reachable' });
    return m;
  };
  /** A change the manager refused: audited as refused, answered with its status and reason. */
  const refused = async (reply: FastifyReply, err: DrillError | ExecutionError, who: string, action: string, target: string) => {
    await deps.audit({ who, action, target, outcome: 'refused', detail: err.message });
    return reply.code(err.status).send({ error: STATUS_CODES[err.status], message: err.message });
  };

  app.get('/api/v1/incidents', { ...role('viewer'), schema: { summary: 'Incidents, open and closed (viewer)' } }, async (_req, reply) => {
    const m = manager(reply);
    if (!m) return reply;
    return m.list();
  });

  app.get<{ Params: { id: string } }>(
    '/api/v1/incidents/:id',
    {
      ...role('viewer'),
      schema: { summary: 'One incident (viewer)', params: Type.Object({ id: Type.String({ pattern: '^[A-Za-z0-9_.-]+$' }) }) },
    },
    async (req, reply) => {
      const m = manager(reply);
      if (!m) return reply;
      const i = await m.get(req.params.id);
      if (!i) return reply.code(404).send({ error: 'Not Found', message: `no incident ${req.params.id}` });
      return i;
    },
  );

  app.get<{ Params: { id: string }; Querystring: { format?: 'json' | 'markdown' } }>(
    '/api/v1/incidents/:id/report',
    {
      ...role('viewer'),
      schema: {
        params: Type.Object({ id: Type.String({ pattern: '^[A-Za-z0-9_.-]+$' }) }),
        querystring: Type.Object(
          { format: Type.Optional(Type.Union([Type.Literal('json'), Type.Literal('markdown')], { default: 'json' })) },
          { additionalProperties: false },
        ),
      },
    },
    async (req, reply) => {
      const m = manager(reply);
      if (!m) return reply;
      const r = await m.report(req.params.id);
      if (!r) return reply.code(404).send({ error: 'Not Found', message: `no incident ${req.params.id}` });
      if (req.query.format === 'markdown') return reply.type('text/markdown; charset=utf-8').send(incidentReportMarkdown(r));
      return r;
    },
  );

  app.post<{ Params: { service: string } }>(
    '/api/v1/services/:service/drills',
    { ...role('operator'), schema: { params: Type.Object({ service: Type.String({ minLength: 1 }) }) } },
    async (req, reply) => {
      const m = manager(reply);
      if (!m) return reply;
      const actor = actorOf(req);
      try {
        const { incident, executionId } = await m.drill(req.params.service, actor.name);
        await deps.audit({
          who: actor.name,
          action: 'drill',
          target: req.params.service,
          outcome: 'started',
          detail: `${incident.id}: execution ${executionId}`,
        });
        return reply.code(202).send({ incident: { id: incident.id }, execution: { id: executionId } });
      } catch (err) {
        if (!(err instanceof DrillError) && !(err instanceof ExecutionError)) throw err;
        return refused(reply, err, actor.name, 'drill', req.params.service);
      }
    },
  );

  app.post<{ Params: { id: string } }>(
    '/api/v1/incidents/:id/acknowledge',
    {
      ...role('responder'),
      schema: {
        summary: 'Acknowledge an open incident (operator or approver; audited)',
        params: Type.Object({ id: Type.String({ pattern: '^[A-Za-z0-9_.-]+$' }) }),
      },
    },
    async (req, reply) => {
      const m = manager(reply);
      if (!m) return reply;
      const actor = actorOf(req);
      const i = await m.acknowledge(req.params.id, actor.name);
      if (!i) return reply.code(404).send({ error: 'Not Found', message: `no open incident ${req.params.id}` });
      await deps.audit({ who: actor.name, action: 'acknowledge', target: req.params.id, outcome: 'recorded' });
      return { acknowledged: i.notifications.acknowledged };
    },
  );

  app.post<{ Params: { id: string }; Body: { repair: string } }>(
    '/api/v1/incidents/:id/forecast',
    {
      ...role('responder'),
      schema: {
        summary: 'Forecast how long the repair takes: may tell customers (operator or approver; audited)',
        params: Type.Object({ id: Type.String({ pattern: '^[A-Za-z0-9_.-]+$' }) }),
        body: Type.Object(
          {
            repair: Type.String({
              pattern: '^(\\d+(\\.\\d+)?(ms|s|m|h|d))+$',
              description: 'How much longer the repair will take, e.g. 10h.',
            }),
          },
          { additionalProperties: false },
        ),
      },
    },
    async (req, reply) => {
      const m = manager(reply);
      if (!m) return reply;
      const actor = actorOf(req);
      const i = await m.forecast(req.params.id, parseDuration(req.body.repair), actor.name);
      if (!i) return reply.code(404).send({ error: 'Not Found', message: `no open incident ${req.params.id}` });
      await deps.audit({ who: actor.name, action: 'forecast', target: req.params.id, outcome: 'recorded', detail: req.body.repair });
      return { forecastEnd: new Date(i.forecastEnd!).toISOString(), customerNotified: i.notifications.customerNoticeAt !== undefined };
    },
  );

  app.post<{ Params: { service: string }; Body: Static<typeof MaintenanceBody> }>(
    '/api/v1/services/:service/maintenance',
    {
      ...role('operator'),
      schema: {
        summary: 'Put a service in maintenance: incidents open, nothing runs (operator; audited)',
        params: Type.Object({ service: Type.String({ minLength: 1 }) }),
        body: MaintenanceBody,
      },
    },
    async (req, reply) => {
      const m = manager(reply);
      if (!m) return reply;
      const actor = actorOf(req);
      if (!deps.services().includes(req.params.service))
        return reply.code(404).send({ error: 'Not Found', message: `no service ${req.params.service}` });
      const until = Date.now() + parseDuration(req.body.duration);
      await m.setMaintenance(req.params.service, until, req.body.reason, actor.name);
      await deps.audit({
        who: actor.name,
        action: 'maintenance on',
        target: req.params.service,
        outcome: 'recorded',
        detail: `${req.body.duration}: ${req.body.reason}`,
      });
      return reply.code(201).send({ service: req.params.service, until: new Date(until).toISOString(), reason: req.body.reason });
    },
  );

  app.put<{ Params: { service: string }; Body: { site: string; reason: string } }>(
    '/api/v1/services/:service/active-site',
    {
      ...role('operator'),
      schema: {
        summary: 'Say which site serves a service now, e.g. after a failback (operator, on the leader; audited)',
        params: Type.Object({ service: Type.String({ minLength: 1 }) }),
        body: Type.Object(
          {
            site: Type.String({ minLength: 1, description: 'A site id of the config.' }),
            reason: Type.String({ minLength: 1, maxLength: 500, description: 'Why, for the audit log.' }),
          },
          { additionalProperties: false },
        ),
      },
    },
    async (req, reply) => {
      const m = manager(reply);
      if (!m) return reply;
      const actor = actorOf(req);
      const { site, reason } = req.body;
      try {
        const { was } = await m.setActiveSite(req.params.service, site);
        await deps.audit({
          who: actor.name,
          action: 'active site',
          target: req.params.service,
          outcome: 'recorded',
          detail: `${was} -> ${site}: ${reason}`,
        });
        return { service: req.params.service, activeSite: site, was };
      } catch (err) {
        if (!(err instanceof DrillError)) throw err;
        return refused(reply, err, actor.name, 'active site', req.params.service);
      }
    },
  );

  app.delete<{ Params: { service: string } }>(
    '/api/v1/services/:service/maintenance',
    {
      ...role('operator'),
      schema: { summary: 'End a maintenance window (operator; audited)', params: Type.Object({ service: Type.String({ minLength: 1 }) }) },
    },
    async (req, reply) => {
      const m = manager(reply);
      if (!m) return reply;
      const actor = actorOf(req);
      await m.clearMaintenance(req.params.service);
      await deps.audit({ who: actor.name, action: 'maintenance off', target: req.params.service, outcome: 'recorded' });
      return reply.code(204).send();
    },
  );
}
