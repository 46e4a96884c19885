import { isIPv6 } from 'node:net';
import { Resolver } from 'node:dns/promises';
import { Type } from '@sinclair/typebox';
import { defineProber, reasonOf, type Observation } from './types.js';

const RECORD_TYPES = ['A', 'AAAA', 'CNAME', 'MX', 'TXT', 'NS', 'SRV'] as const;
type RecordType = (typeof RECORD_TYPES)[number];

/** dns: resolve one name at one given server and check the answers. */
export const dns = defineProber({
  description:
    'Ask one DNS server for one name and record type (over UDP, retried over TCP when the answer is truncated); ' +
    'optionally require answers to be present.',
  settings: Type.Object(
    {
      name: Type.String({ minLength: 1, description: 'The name to resolve, e.g. db.example.com.' }),
      server: Type.String({
        minLength: 1,
        description: 'The DNS server to ask: an IP address, optionally with a port (10.0.0.53, 10.0.0.53:5353, [fd00::53]:5353).',
      }),
      type: Type.Optional(
        Type.Union(
          RECORD_TYPES.map((t) => Type.Literal(t)),
          { default: 'A', description: 'The record type to ask for.' },
        ),
      ),
      expect: Type.Optional(
        Type.Array(Type.String({ minLength: 1 }), {
          minItems: 1,
          description:
            'Answers that must all be present (others may be too), written as `dig +short` prints them without quotes: ' +
            '10.0.0.5, mail.example.com, "10 mail.example.com" (MX), "10 5 5432 db.example.com" (SRV), the text of a TXT record. ' +
            'Names compare case-insensitively and without the trailing dot.',
        }),
      ),
    },
    { additionalProperties: false },
  ),
  observed: { answers: 'list', answer_count: 'int' },
  validate(s) {
    try {
      new Resolver().setServers([s.server]);
      return [];
    } catch {
      return [['server', 'must be an IP address, optionally with a port (10.0.0.53, 10.0.0.53:5353, [fd00::53]:5353)']];
    }
  },
  run(s, ctx) {
    const type: RecordType = s.type ?? 'A';
    return new Promise<Observation>((resolve) => {
      let settled = false;
      const finish = (result: Observation) => {
        if (settled) return;
        settled = true;
        ctx.signal.removeEventListener('abort', onAbort);
        resolver?.cancel();
        resolve(result);
      };
      const fail = (reason: string) => finish({ ok: false, reason, observed: { answers: [], answer_count: 0 } });
      const onAbort = () => fail(`${s.name}: no answer from ${s.server} (${reasonOf(ctx.signal.reason)})`);
      let resolver: Resolver | undefined;
      if (ctx.signal.aborted) return onAbort();
      ctx.signal.addEventListener('abort', onAbort, { once: true });
      try {
        // One try whose timeout is the probe's: the runner's deadline is what ends a silent server.
        resolver = new Resolver({ timeout: ctx.timeoutMs, tries: 1 });
        resolver.setServers([s.server]);
      } catch (err) {
        return fail(`server ${JSON.stringify(s.server)}: ${reasonOf(err)}`);
      }
      query(resolver, s.name, type).then(
        (answers) => {
          const observed = { answers, answer_count: answers.length };
          const present = new Set(answers.map((a) => normalize(type, a)));
          const missing = (s.expect ?? []).filter((e) => !present.has(normalize(type, e)));
          if (missing.length === 0) return finish({ ok: true, observed });
          const got = answers.length ? answers.map((a) => JSON.stringify(a)).join(', ') : 'none';
          finish({
            ok: false,
            reason: `${s.name}: expected ${missing.map((m) => JSON.stringify(m)).join(', ')} among the ${type} answers at ${s.server}, got ${got}`,
            observed,
          });
        },
        (err: unknown) => fail(failureReason(err, s.name, type, s.server)),
      );
    });
  },
});

/** The answers of one query, each as one string the way `dig +short` prints it (TXT unquoted, chunks joined). */
async function query(resolver: Resolver, name: string, type: RecordType): Promise<string[]> {
  switch (type) {
    case 'A':
      return resolver.resolve4(name);
    case 'AAAA':
      return resolver.resolve6(name);
    case 'CNAME':
      return resolver.resolveCname(name);
    case 'NS':
      return resolver.resolveNs(name);
    case 'MX':
      return (await resolver.resolveMx(name)).map((r) => `${r.priority} ${r.exchange}`);
    case 'SRV':
      return (await resolver.resolveSrv(name)).map((r) => `${r.priority} ${r.weight} ${r.port} ${r.name}`);
    case 'TXT':
      // A TXT record is a list of strings of up to 255 bytes each; readers (SPF, DKIM) join them.
      return (await resolver.resolveTxt(name)).map((chunks) => chunks.join(''));
  }
}

/** The comparable form of an answer: names lower-case without the final dot, IPv6 in its shortest form. */
function normalize(type: RecordType, answer: string): string {
  if (type === 'TXT') return answer;
  if (type === 'AAAA' && isIPv6(answer)) return new URL(`http://[${answer}]/`).hostname.slice(1, -1);
  return answer.trim().toLowerCase().replace(/\.$/, '');
}

/** A resolver error in DNS terms: node's own message is `queryA ENOTFOUND example.test`. */
function failureReason(err: unknown, name: string, type: RecordType, server: string): string {
  switch ((err as NodeJS.ErrnoException).code) {
    case 'ENOTFOUND':
      return `${name}: no such name (NXDOMAIN) at ${server}`;
    case 'ENODATA':
      return `${name}: no ${type} records at ${server}`;
    case 'ESERVFAIL':
      return `${name}: server failure (SERVFAIL) at ${server}`;
    case 'EREFUSED':
      return `${name}: query refused (REFUSED) by ${server}`;
    case 'ETIMEOUT':
      return `${name}: no answer from ${server} (timed out)`;
    case 'ECONNREFUSED':
      return `${name}: connection refused by ${server}`;
    case 'EFORMERR':
      return `${name}: ${server} could not parse the query (FORMERR)`;
    case 'EBADRESP':
      return `${name}: malformed answer from ${server}`;
    default:
      return `${name}: ${reasonOf(err)} (at ${server})`;
  }
}
