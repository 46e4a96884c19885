import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { redactor } from '../redact.js';
import { VERSION } from '../version.js';

/** What the HTTP server reads from the daemon. */
export interface HttpDeps {
  log: Logger;
  metrics: { registry: { metrics(): Promise<string>; contentType: string } };
  /** The status document of /api/v1/status. */
  status(): unknown;
  /** Readiness: the reasons the daemon is not ready, empty when it is. */
  notReady(): Promise<string[]>;
  /** More routes (the runbook and execution API). */
  routes?: (app: FastifyInstance) => void;
}

/** Tags of the OpenAPI document, by the first path segment after /api/v1/. */
const TAGS: Record<string, string> = {
  health: 'Liveness, readiness, metrics and status: no token needed.',
  runbooks: 'Runbook versions and starting executions.',
  executions: 'Executions: progress, approvals, retry, skip, abort.',
  incidents: 'Incidents, forecasts and maintenance windows.',
  'restore-tests': 'Restore tests of backups: schedules, runs, reports, the sweeper.',
  audit: 'The audit log (admin).',
};
const TAG_OF: Record<string, string> = {
  services: 'incidents',
  'restore-test-reports': 'restore-tests',
  status: 'health',
};

/** The tag of a route by its path, for routes that do not name one. */
function tagOf(url: string): string | undefined {
  const m = /^\/api\/v1\/([a-z-]+)/.exec(url);
  if (!m) return undefined;
  return TAG_OF[m[1]!] ?? m[1];
}

/** Public routes: documented as needing no token (every other route needs a bearer token). */
const PUBLIC = { security: [] as Array<Record<string, string[]>>, tags: ['health'] };

/**
 * The daemon's HTTP face: liveness, readiness, Prometheus metrics, the status API, and the OpenAPI
 * document of every route (/docs/json, with Swagger UI at /docs; both public: the API still needs
 * its tokens). Every answer passes through the redactor, as every log line does.
 */
export function buildServer(deps: HttpDeps): FastifyInstance {
  // Scrapes every few seconds would flood the log: requests are not logged, only errors.
  const app = Fastify({
    loggerInstance: deps.log.child({ component: 'http' }) as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    // Unknown keys in a body are an error, not silently dropped (fastify's default drops them), and
    // no value changes type on the way in (fastify's default turns a JSON true into "true").
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: true } },
  });

  app.addHook('onSend', async (_req, reply, payload) => {
    if (typeof payload === 'string') return redactor.redact(payload);
    return payload;
  });

  // The OpenAPI document is built from the routes' TypeBox schemas. @fastify/swagger sees only
  // routes added after it has loaded, so every route is added in a plugin registered after it.
  void app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'Continuity',
        version: VERSION,
        description:
          'Probes a primary and a DR site, proves backups restore within the RTO, and runs approved failover runbooks. ' +
          'Every call but /healthz, /readyz, /metrics and /api/v1/status needs a bearer token (`continuity token new`); ' +
          'roles: viewer (read), operator (start, retry, skip, abort), approver (answer approvals), admin (everything, the audit log).',
      },
      components: {
        securitySchemes: {
          bearer: { type: 'http', scheme: 'bearer', description: 'A token from `continuity token new`; the config holds its sha256.' },
        },
      },
      security: [{ bearer: [] }],
      tags: Object.entries(TAGS).map(([name, description]) => ({ name, description })),
    },
  });
  // Swagger UI's assets come from the package itself (no CDN), and it sends nothing to a validator.
  void app.register(swaggerUi, { routePrefix: '/docs', uiConfig: { deepLinking: true, validatorUrl: null } });
  app.addHook('onRoute', (route) => {
    const schema = (route.schema ??= {}) as { tags?: string[]; hide?: boolean };
    const tag = tagOf(route.url);
    if (!schema.hide && !schema.tags && tag) schema.tags = [tag];
  });

  void app.register(async (api) => {
    api.get('/healthz', { schema: { ...PUBLIC, summary: 'Liveness: 200 while the process is alive' } }, async () => ({ status: 'ok' }));

    api.get(
      '/readyz',
      { schema: { ...PUBLIC, summary: 'Readiness: 200 when the config is loaded and Redis answers, 503 with the reasons' } },
      async (_req, reply) => {
        const reasons = await deps.notReady();
        if (reasons.length > 0) return reply.code(503).send({ status: 'not ready', reasons });
        return { status: 'ready' };
      },
    );

    api.get('/metrics', { schema: { ...PUBLIC, summary: 'Prometheus metrics' } }, async (_req, reply) => {
      reply.header('content-type', deps.metrics.registry.contentType);
      return deps.metrics.registry.metrics();
    });

    api.get('/api/v1/status', { schema: { ...PUBLIC, summary: 'Sites, services and probes with their state and verdict' } }, async () =>
      deps.status(),
    );

    deps.routes?.(api);
  });

  return app;
}
