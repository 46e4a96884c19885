import { Type, type Static } from '@sinclair/typebox';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { TokenConfig } from '../../config/load.js';
import { ExecutionError, type Executor } from '../../runbooks/executor.js';
import type { RunbookSet } from '../../runbooks/loader.js';
import { reasonOf } from '../../probers/types.js';
import { actorOf, requireRole, type Audit } from '../auth.js';

export interface RunbookRouteDeps {
  executor: () => Executor | undefined;
  runbooks: () => RunbookSet;
  tokens: () => readonly TokenConfig[];
  audit: Audit;
}

const Id = Type.String({ minLength: 1, maxLength: 200, pattern: '^[A-Za-z0-9_.@-]+$' });
/** A positive whole number in a URL (no type coercion runs: JSON bodies keep their types exactly). */
const Count = Type.String({ pattern: '^[1-9][0-9]{0,5}$', description: 'A positive whole number.' });
const Comment = Type.Optional(Type.String({ maxLength: 2000, description: 'Why, for the timeline and the audit.' }));

const StartBody = Type.Object(
  {
    inputs: Type.Optional(
      Type.Record(Type.String(), Type.Union([Type.String(), Type.Number(), Type.Boolean()]), { description: "The runbook's inputs." }),
    ),
    mode: Type.Optional(Type.Union([Type.Literal('live'), Type.Literal('drill'), Type.Literal('dry-run')], { default: 'live' })),
    version: Type.Optional(Type.Integer({ minimum: 1, description: 'The version to run (default: the newest).' })),
    idempotency_key: Type.Optional(Type.String({ minLength: 1, maxLength: 200, description: 'Same key, same execution.' })),
  },
  { additionalProperties: false },
);
const ApprovalBody = Type.Object(
  {
    decision: Type.Union([Type.Literal('approve'), Type.Literal('deny')]),
    hash: Type.String({
      pattern: '^[0-9a-f]{64}$',
      description: 'sha256 of the runbook version being approved, as shown with the request.',
    }),
    step: Type.Optional(Type.String({ minLength: 1 })),
    comment: Comment,
  },
  { additionalProperties: false },
);
const CommentBody = Type.Object({ comment: Comment }, { additionalProperties: false });

/**
 * The runbook and execution API. Reading needs any token (viewer); starting and steering needs
 * operator; answering approvals needs approver (or the approval's roles); every mutating call is
 * audited with who, what and the outcome.
 */
export function runbookRoutes(app: FastifyInstance, deps: RunbookRouteDeps): void {
  const role = (need: Parameters<typeof requireRole>[0]) => ({ preHandler: requireRole(need, deps.tokens, deps.audit) });
  const executor = (reply: FastifyReply): Executor | undefined => {
    const e = deps.executor();
    if (!e) void reply.code(503).send({ error: 'Service Unavailable', message: 'runbooks are not available yet: Redis is not reachable' });
    // Redis away (restarting, failing over): a fast 503, never a wait or a 500; nothing was done.
    else if (e.store.redis.status !== 'ready') return void redisAway(reply);
    return e;
  };
  const redisAway = (reply: FastifyReply, message = 'Redis is not reachable right now: nothing was done; try again when it is back') =>
    reply.code(503).send({ error: 'Service Unavailable', message });
  const fail = async (reply: FastifyReply, err: unknown, who: string, action: string, target: string) => {
    if (err instanceof ExecutionError) {
      await deps.audit({ who, action, target, outcome: 'refused', detail: err.message });
      return reply.code(err.status).send({
        error: err.status === 404 ? 'Not Found' : err.status === 403 ? 'Forbidden' : err.status === 409 ? 'Conflict' : 'Bad Request',
        message: err.message,
      });
    }
    // Redis went away during the call: part of it may have been recorded (look before trying again).
    if (deps.executor()?.store.redis.status !== 'ready')
      return redisAway(reply, `Redis went away during the call (${reasonOf(err)}): look at what was recorded, then try again`);
    throw err;
  };

  app.get('/api/v1/runbooks', { ...role('viewer'), schema: { summary: 'The loaded runbook versions (viewer)' } }, async () =>
    deps.runbooks().all.map((r) => ({ name: r.name, version: r.version, hash: r.hash, description: r.description, file: r.file })),
  );

  app.get<{ Params: { name: string; version: string } }>(
    '/api/v1/runbooks/:name/versions/:version',
    {
      ...role('viewer'),
      schema: { summary: 'One runbook version: inputs and steps (viewer)', params: Type.Object({ name: Id, version: Count }) },
    },
    async (req, reply) => {
      const r = deps.runbooks().get(req.params.name, Number(req.params.version));
      if (!r) return reply.code(404).send({ error: 'Not Found', message: `no runbook ${req.params.name} version ${req.params.version}` });
      return {
        name: r.name,
        version: r.version,
        hash: r.hash,
        description: r.description,
        inputs: r.inputs,
        steps: [...r.steps, ...r.rollback].map((s) => ({
          id: s.id,
          kind: s.kind,
          phase: s.phase,
          description: s.description,
          idempotent: s.idempotent,
          timeoutSeconds: s.timeoutMs / 1000,
        })),
      };
    },
  );

  app.post<{ Params: { name: string }; Body: Static<typeof StartBody> }>(
    '/api/v1/runbooks/:name/executions',
    {
      ...role('operator'),
      schema: {
        summary: 'Start an execution: live, drill or dry-run (operator; audited)',
        params: Type.Object({ name: Id }),
        body: StartBody,
      },
    },
    async (req, reply) => {
      const e = executor(reply);
      if (!e) return reply;
      const actor = actorOf(req);
      const action = 'start execution';
      try {
        const { execution, created } = await e.startExecution(
          {
            runbook: req.params.name,
            version: req.body.version,
            mode: req.body.mode ?? 'live',
            inputs: req.body.inputs ?? {},
            idempotencyKey: req.body.idempotency_key,
          },
          actor,
        );
        await deps.audit({
          who: actor.name,
          action,
          target: execution.id,
          outcome: created ? 'started' : 'already started',
          detail: `${execution.runbook} v${execution.version} ${execution.mode}`,
        });
        return reply.code(created ? 201 : 200).send({ created, execution });
      } catch (err) {
        return fail(reply, err, actor.name, action, req.params.name);
      }
    },
  );

  app.get<{ Querystring: { limit?: string } }>(
    '/api/v1/executions',
    {
      ...role('viewer'),
      schema: {
        summary: 'Executions, newest first (viewer)',
        querystring: Type.Object({ limit: Type.Optional(Count) }, { additionalProperties: false }),
      },
    },
    async (req, reply) => {
      const e = executor(reply);
      if (!e) return reply;
      return e.store.list(Math.min(Number(req.query.limit ?? 100), 1000));
    },
  );

  app.get<{ Params: { id: string } }>(
    '/api/v1/executions/:id',
    { ...role('viewer'), schema: { summary: 'One execution: steps, approvals, timeline (viewer)', params: Type.Object({ id: Id }) } },
    async (req, reply) => {
      const e = executor(reply);
      if (!e) return reply;
      try {
        return await e.view(req.params.id);
      } catch (err) {
        return fail(reply, err, actorOf(req).name, 'view execution', req.params.id);
      }
    },
  );

  app.post<{ Params: { id: string }; Body: Static<typeof ApprovalBody> }>(
    '/api/v1/executions/:id/approvals',
    {
      ...role('viewer'),
      schema: {
        summary: "Approve or deny a waiting approval step (the step's roles, approver by default; audited)",
        params: Type.Object({ id: Id }),
        body: ApprovalBody,
      },
    },
    async (req, reply) => {
      const e = executor(reply);
      if (!e) return reply;
      const actor = actorOf(req);
      const action = req.body.decision === 'approve' ? 'approve' : 'deny';
      try {
        const approval = await e.answerApproval(req.params.id, actor, req.body);
        await deps.audit({
          who: actor.name,
          action,
          target: req.params.id,
          outcome: 'recorded',
          detail: `step ${approval.step} sha256 ${approval.hash.slice(0, 12)}`,
        });
        return reply.code(201).send({ approval });
      } catch (err) {
        return fail(reply, err, actor.name, action, req.params.id);
      }
    },
  );

  for (const action of ['retry', 'skip'] as const) {
    app.post<{ Params: { id: string; step: string }; Body: Static<typeof CommentBody> }>(
      `/api/v1/executions/:id/steps/:step/${action}`,
      {
        ...role('operator'),
        schema: {
          summary: `${action === 'retry' ? 'Retry' : 'Skip'} a step waiting for an operator's decision (operator; audited)`,
          params: Type.Object({ id: Id, step: Id }),
          body: Type.Optional(CommentBody),
        },
      },
      async (req, reply) => {
        const e = executor(reply);
        if (!e) return reply;
        const actor = actorOf(req);
        try {
          await e.decide(req.params.id, req.params.step, action, actor, req.body?.comment);
          await deps.audit({ who: actor.name, action, target: `${req.params.id}/${req.params.step}`, outcome: 'recorded' });
          return reply.code(202).send({ accepted: true });
        } catch (err) {
          return fail(reply, err, actor.name, action, `${req.params.id}/${req.params.step}`);
        }
      },
    );
  }

  app.post<{ Params: { id: string }; Body: Static<typeof CommentBody> }>(
    '/api/v1/executions/:id/abort',
    {
      ...role('operator'),
      schema: { summary: 'Abort an execution (operator; audited)', params: Type.Object({ id: Id }), body: Type.Optional(CommentBody) },
    },
    async (req, reply) => {
      const e = executor(reply);
      if (!e) return reply;
      const actor = actorOf(req);
      try {
        await e.abort(req.params.id, actor, req.body?.comment);
        await deps.audit({ who: actor.name, action: 'abort', target: req.params.id, outcome: 'recorded' });
        return reply.code(202).send({ accepted: true });
      } catch (err) {
        return fail(reply, err, actor.name, 'abort', req.params.id);
      }
    },
  );

  app.get<{ Querystring: { limit?: string } }>(
    '/api/v1/audit',
    {
      ...role('admin'),
      schema: {
        summary: 'The audit log, newest first (admin)',
        querystring: Type.Object({ limit: Type.Optional(Count) }, { additionalProperties: false }),
      },
    },
    async (req, reply) => {
      const e = executor(reply);
      if (!e) return reply;
      return e.store.auditLog(Math.min(Number(req.query.limit ?? 100), 10000));
    },
  );
}
