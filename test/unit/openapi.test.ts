import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashToken } from '../../src/http/auth.js';
import { incidentRoutes } from '../../src/http/routes/incidents.js';
import { restoreTestRoutes } from '../../src/http/routes/restore-tests.js';
import { runbookRoutes } from '../../src/http/routes/runbooks.js';
import { buildServer } from '../../src/http/server.js';
import { redactor } from '../../src/redact.js';
import { RunbookSet } from '../../src/runbooks/loader.js';
import { VERSION } from '../../src/version.js';

const SECRET = 'openapi-test-secret-5150';
const TOKEN = 'cty_openapi-test-token';

/** The daemon's HTTP server with its real routes and no Redis behind them (runbooks answer 503). */
function server() {
  const audit = async () => {};
  const tokens = () => [{ name: 'vera', sha256: hashToken(TOKEN), roles: ['viewer' as const] }];
  return buildServer({
    log: pino({ level: 'silent' }),
    metrics: { registry: { metrics: async () => 'continuity_build_info 1\n', contentType: 'text/plain' } },
    status: () => ({ echoed: `peer said ${SECRET}` }),
    notReady: async () => [],
    routes: (app) => {
      incidentRoutes(app, { incidents: () => undefined, tokens, services: () => [], audit });
      restoreTestRoutes(app, { restoreTests: () => undefined, tokens, audit });
      runbookRoutes(app, { executor: () => undefined, runbooks: () => new RunbookSet([]), tokens, audit });
    },
  });
}

describe('OpenAPI document and Swagger UI', () => {
  const app = server();
  beforeAll(() => redactor.set([SECRET]));
  afterAll(async () => {
    redactor.set([]);
    await app.close();
  });

  it('serves OpenAPI 3 at /docs/json without a token, documenting every route and the bearer scheme', async () => {
    const res = await app.inject('/docs/json');
    expect(res.statusCode).toBe(200);
    const doc = res.json<{
      openapi: string;
      info: { title: string; version: string };
      paths: Record<string, Record<string, { tags?: string[]; summary?: string; security?: unknown[]; parameters?: unknown[] }>>;
      components: { securitySchemes: Record<string, unknown> };
      security: unknown[];
    }>();
    expect(doc.openapi).toMatch(/^3\.\d+\.\d+$/);
    expect(doc.info).toMatchObject({ title: 'Continuity', version: VERSION });
    expect(doc.components.securitySchemes.bearer).toMatchObject({ type: 'http', scheme: 'bearer' });
    expect(doc.security).toEqual([{ bearer: [] }]);
    for (const path of [
      '/api/v1/restore-tests',
      '/api/v1/executions',
      '/api/v1/executions/{id}/approvals',
      '/api/v1/runbooks/{name}/executions',
      '/api/v1/incidents',
      '/api/v1/services/{service}/maintenance',
    ]) {
      expect(Object.keys(doc.paths)).toContain(path);
    }
    // The UI's own routes are not part of the API.
    expect(Object.keys(doc.paths).filter((p) => p.startsWith('/docs'))).toEqual([]);
    // Every operation has a tag (by its path unless it names one); the public ones say they need no token.
    for (const [path, ops] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(ops)) expect(op.tags?.length, `${method} ${path}`).toBe(1);
    }
    expect(doc.paths['/api/v1/executions/{id}/approvals']!.post!.summary).toMatch(/^Approve or deny/);
    expect(doc.paths['/api/v1/restore-tests/{set}/runs']!.post!.summary).toBe('Start a restore test now (operator; audited)');
    for (const path of ['/healthz', '/readyz', '/metrics', '/api/v1/status']) expect(doc.paths[path]!.get!.security).toEqual([]);
    expect(doc.paths['/api/v1/executions']!.get!.security).toBeUndefined();
    expect(doc.paths['/api/v1/executions']!.get!.tags).toEqual(['executions']);
    // TypeBox schemas become parameters and request bodies.
    expect(doc.paths['/api/v1/executions']!.get!.parameters).toEqual([
      expect.objectContaining({ in: 'query', name: 'limit', schema: expect.objectContaining({ pattern: '^[1-9][0-9]{0,5}$' }) }),
    ]);
    const start = doc.paths['/api/v1/runbooks/{name}/executions']!.post as unknown as {
      requestBody: { content: { 'application/json': { schema: { properties: Record<string, unknown> } } } };
    };
    expect(Object.keys(start.requestBody.content['application/json'].schema.properties)).toEqual([
      'inputs',
      'mode',
      'version',
      'idempotency_key',
    ]);
  });

  it('serves Swagger UI at /docs from its own assets, nothing from another host', async () => {
    const page = await app.inject('/docs');
    expect(page.statusCode).toBe(200);
    expect(page.headers['content-type']).toMatch(/^text\/html/);
    const sources = [...page.body.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1]!);
    expect(sources).toContain('/docs/static/swagger-ui-bundle.js');
    expect(sources.filter((s) => /^(https?:)?\/\//.test(s))).toEqual([]);
    for (const asset of sources) expect((await app.inject(asset)).statusCode, asset).toBe(200);
    const init = await app.inject('/docs/static/swagger-initializer.js');
    expect(init.body).toContain('validatorUrl: null');
    expect(init.body).not.toMatch(/https?:\/\/(?!stackoverflow\.com)/);
  });

  it('keeps the API behind its tokens and every answer behind the redactor', async () => {
    expect((await app.inject('/api/v1/executions')).statusCode).toBe(401);
    expect((await app.inject('/api/v1/restore-tests')).statusCode).toBe(401);
    const authed = await app.inject({ url: '/api/v1/executions', headers: { authorization: `Bearer ${TOKEN}` } });
    expect(authed.statusCode).toBe(503); // past the token check; no Redis behind this server
    const status = await app.inject('/api/v1/status');
    expect(status.body).toBe('{"echoed":"peer said [REDACTED]"}');
    expect((await app.inject('/healthz')).body).toBe('{"status":"ok"}');
  });
});
