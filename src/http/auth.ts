import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { TokenConfig } from '../config/load.js';
import type { Actor } from '../runbooks/executor.js';

/** What a route needs: any authenticated person, or one holding a role (admin holds them all). */
export type Need = 'viewer' | 'operator' | 'approver' | 'admin' | 'responder';

/** The hash stored in config for a token: SHA-256, hex. Tokens are random, so a fast hash is enough. */
export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** A new random token and the config line that admits it. */
export function newToken(): { token: string; sha256: string } {
  const token = `cty_${randomBytes(24).toString('base64url')}`;
  return { token, sha256: hashToken(token) };
}

/** The person a bearer token belongs to, or undefined. Compares hashes in constant time. */
export function authenticate(header: string | undefined, tokens: readonly TokenConfig[]): Actor | undefined {
  const m = /^Bearer\s+(\S+)$/i.exec(header ?? '');
  if (!m) return undefined;
  const given = Buffer.from(hashToken(m[1]!), 'hex');
  let found: TokenConfig | undefined;
  for (const t of tokens) {
    const want = Buffer.from(t.sha256, 'hex');
    if (want.length === given.length && timingSafeEqual(want, given)) found = t;
  }
  return found ? { name: found.name, roles: [...found.roles] } : undefined;
}

export function holds(actor: Actor, need: Need): boolean {
  if (need === 'viewer' || actor.roles.includes('admin')) return true;
  // A responder is whoever acts on incidents: an operator or an approver.
  if (need === 'responder') return actor.roles.includes('operator') || actor.roles.includes('approver');
  return actor.roles.includes(need);
}

/** An audit sink: every mutating call, and every refusal, is recorded. */
export type Audit = (entry: { who: string; action: string; target?: string; outcome: string; detail?: string }) => Promise<void>;

/**
 * A fastify preHandler: 401 without a valid token, 403 without the role; both audited with the
 * route, so a probing attacker leaves a trail. The actor is put on the request for the handler.
 */
export function requireRole(need: Need, tokens: () => readonly TokenConfig[], audit: Audit) {
  return async (req: FastifyRequest, reply: FastifyReply) => {
    const action = `${req.method} ${req.routeOptions.url ?? req.url}`;
    const actor = authenticate(req.headers.authorization, tokens());
    if (!actor) {
      await audit({ who: 'anonymous', action, target: req.url, outcome: 'unauthenticated', detail: `from ${req.ip}` });
      return reply
        .code(401)
        .header('www-authenticate', 'Bearer')
        .send({ error: 'Unauthorized', message: 'a valid bearer token is required' });
    }
    if (!holds(actor, need)) {
      await audit({ who: actor.name, action, target: req.url, outcome: 'forbidden', detail: `needs role ${need}` });
      return reply.code(403).send({ error: 'Forbidden', message: `${actor.name} lacks the ${need} role` });
    }
    (req as FastifyRequest & { actor: Actor }).actor = actor;
  };
}

/** The authenticated actor of a request that passed requireRole. */
export function actorOf(req: FastifyRequest): Actor {
  return (req as FastifyRequest & { actor: Actor }).actor;
}
