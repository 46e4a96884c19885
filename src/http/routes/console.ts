import { readFile } from 'node:fs/promises';
import type { FastifyInstance, FastifyReply } from 'fastify';

/** The console's files: src/http/console (tsx) or dist/http/console (compiled; `npm run build` copies them). */
const DIR = new URL('../console/', import.meta.url);

const TYPES: Record<string, string> = {
  html: 'text/html; charset=utf-8',
  js: 'text/javascript; charset=utf-8',
  css: 'text/css; charset=utf-8',
  svg: 'image/svg+xml',
  ico: 'image/x-icon',
  png: 'image/png',
};

/**
 * Scripts and styles from this origin only, no inline script or style, no framing, no plugins:
 * every datum is put in the page as text, and a script injected into it would not run anyway.
 */
export const CONSOLE_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

/** A file name of the console's flat folder: no slashes, no dot-dot, a known extension. */
const NAME = /^[a-z0-9][a-z0-9_-]*\.([a-z]+)$/;

/**
 * The console: a web page served by the daemon (GET / redirects to it). Its files need no token;
 * the page asks for one and sends it as a bearer token with every API call.
 */
export function consoleRoutes(app: FastifyInstance): void {
  const send = async (reply: FastifyReply, name: string) => {
    const m = NAME.exec(name);
    const type = m ? TYPES[m[1]!] : undefined;
    if (!m || !type) return reply.code(404).send({ error: 'Not Found', message: `no console file ${name}` });
    let body: Buffer;
    try {
      body = await readFile(new URL(name, DIR));
    } catch {
      return reply.code(404).send({ error: 'Not Found', message: `no console file ${name}` });
    }
    return reply
      .header('content-type', type)
      .header('content-security-policy', CONSOLE_CSP)
      .header('x-content-type-options', 'nosniff')
      .header('referrer-policy', 'no-referrer')
      .header('cache-control', 'no-cache')
      .send(body);
  };

  // A page, not the API: left out of the OpenAPI document, like /docs itself.
  const page = { schema: { hide: true } };
  app.get('/', page, async (_req, reply) => reply.redirect('/console/'));
  app.get('/console', page, async (_req, reply) => reply.redirect('/console/'));
  app.get('/console/', page, async (_req, reply) => send(reply, 'index.html'));
  app.get<{ Params: { '*': string } }>('/console/*', page, async (req, reply) => send(reply, req.params['*'] || 'index.html'));
}
