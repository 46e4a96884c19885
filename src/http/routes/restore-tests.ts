import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { TokenConfig } from '../../config/load.js';
import { reportMarkdown } from '../../restore-tests/report.js';
import type { RestoreTests } from '../../restore-tests/manager.js';
import { ExecutionError } from '../../runbooks/executor.js';
import { actorOf, requireRole, type Audit } from '../auth.js';

export interface RestoreTestRouteDeps {
  restoreTests: () => RestoreTests | undefined;
  tokens: () => readonly TokenConfig[];
  audit: Audit;
}

const SetId = Type.String({ pattern: '^[a-z0-9][a-z0-9_.-]{0,62}$', description: 'The backup set (its s3-backup probe id).' });
const ExecId = Type.String({ minLength: 1, maxLength: 200, pattern: '^[A-Za-z0-9_.@-]+$' });

/**
 * Restore tests: the configured sets with their last verdicts (viewer), starting a test now
 * (operator, audited), a sweep of crashed tests' scratch copies (operator, audited), and reports
 * as JSON or Markdown (viewer).
 */
export function restoreTestRoutes(app: FastifyInstance, deps: RestoreTestRouteDeps): void {
  const role = (need: Parameters<typeof requireRole>[0]) => ({ preHandler: requireRole(need, deps.tokens, deps.audit) });
  const manager = (reply: FastifyReply): RestoreTests | undefined => {
    const m = deps.restoreTests();
    if (!m)
      void reply.code(503).send({ error: 'Service Unavailable', message: 'restore tests are not available yet: Redis is not reachable' });
    return m;
  };

  app.get(
    '/api/v1/restore-tests',
    { ...role('viewer'), schema: { summary: "Each backup set's restore test: schedule, next run, last verdict (viewer)" } },
    async (_req, reply) => {
      const m = manager(reply);
      if (!m) return reply;
      return { restoreTests: await m.summaries() };
    },
  );

  app.post<{ Params: { set: string } }>(
    '/api/v1/restore-tests/:set/runs',
    { ...role('operator'), schema: { summary: 'Start a restore test now (operator; audited)', params: Type.Object({ set: SetId }) } },
    async (req, reply) => {
      const m = manager(reply);
      if (!m) return reply;
      const actor = actorOf(req);
      try {
        const { executionId, created } = await m.runNow(req.params.set, actor);
        await deps.audit({
          who: actor.name,
          action: 'start restore test',
          target: req.params.set,
          outcome: created ? 'started' : 'already started',
          detail: executionId,
        });
        return reply.code(created ? 202 : 200).send({ backupSet: req.params.set, execution: { id: executionId }, created });
      } catch (err) {
        if (err instanceof ExecutionError) {
          await deps.audit({
            who: actor.name,
            action: 'start restore test',
            target: req.params.set,
            outcome: 'refused',
            detail: err.message,
          });
          return reply
            .code(err.status)
            .send({ error: { 400: 'Bad Request', 403: 'Forbidden', 404: 'Not Found', 409: 'Conflict' }[err.status], message: err.message });
        }
        throw err;
      }
    },
  );

  app.post(
    '/api/v1/restore-tests/sweep',
    { ...role('operator'), schema: { summary: "Run the sweeper now: remove crashed tests' scratch copies (operator; audited)" } },
    async (req, reply) => {
      const m = manager(reply);
      if (!m) return reply;
      const actor = actorOf(req);
      const results = await m.sweepAll();
      const removed = results.flatMap((r) => r.removed);
      await deps.audit({
        who: actor.name,
        action: 'sweep restore tests',
        outcome: 'done',
        detail: removed.join(', ') || 'nothing left behind',
      });
      return { results };
    },
  );

  app.get<{ Params: { set: string } }>(
    '/api/v1/restore-tests/:set/reports',
    {
      ...role('viewer'),
      schema: { summary: 'Restore-test reports of a backup set, newest first (viewer)', params: Type.Object({ set: SetId }) },
    },
    async (req, reply) => {
      const m = manager(reply);
      if (!m) return reply;
      return { reports: await m.reports(req.params.set) };
    },
  );

  const Format = Type.Object(
    { format: Type.Optional(Type.Union([Type.Literal('json'), Type.Literal('markdown')], { default: 'json' })) },
    { additionalProperties: false },
  );
  app.get<{ Params: { id: string }; Querystring: { format?: 'json' | 'markdown' } }>(
    '/api/v1/restore-test-reports/:id',
    {
      ...role('viewer'),
      schema: {
        summary: 'One restore-test report by its execution id, JSON or Markdown (viewer)',
        params: Type.Object({ id: ExecId }),
        querystring: Format,
      },
    },
    async (req, reply) => {
      const m = manager(reply);
      if (!m) return reply;
      const r = await m.findReport(req.params.id);
      if (!r) return reply.code(404).send({ error: 'Not Found', message: `no restore-test report of ${req.params.id}` });
      if (req.query.format === 'markdown') return reply.type('text/markdown; charset=utf-8').send(reportMarkdown(r));
      return r;
    },
  );

  app.get<{ Params: { set: string; id: string }; Querystring: { format?: 'json' | 'markdown' } }>(
    '/api/v1/restore-tests/:set/reports/:id',
    {
      ...role('viewer'),
      schema: {
        summary: 'One restore-test report of a backup set, JSON or Markdown (viewer)',
        params: Type.Object({ set: SetId, id: ExecId }),
        querystring: Format,
      },
    },
    async (req, reply) => {
      const m = manager(reply);
      if (!m) return reply;
      const r = await m.report(req.params.set, req.params.id);
      if (!r)
        return reply.code(404).send({ error: 'Not Found', message: `no report of ${req.params.id} for backup set ${req.params.set}` });
      if (req.query.format === 'markdown') return reply.type('text/markdown; charset=utf-8').send(reportMarkdown(r));
      return r;
    },
  );
}
