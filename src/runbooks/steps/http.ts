import { Type } from '@sinclair/typebox';
import { exchange, headerProblem, loadCa, parseUrl, withUserAgent } from '../../net/http-request.js';
import { reasonOf } from '../../probers/types.js';
import { firstLine, orList } from './exit-code.js';
import { defineStep } from './types.js';

/** The body kept in the result (the response is read up to 1 MiB, and `json` parsed from all of that). */
export const HTTP_BODY_RESULT_LIMIT = 64 * 1024;
const USER_AGENT = 'continuity-runbook';
const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;

/** http: one HTTP(S) call, e.g. to a DNS provider's or a load balancer's API. */
export const http = defineStep({
  description: "Send one HTTP(S) request (a DNS provider's or a load balancer's API) and check its status; the response is in the result.",
  settings: Type.Object(
    {
      method: Type.Optional(
        Type.Union(
          METHODS.map((m) => Type.Literal(m)),
          { default: 'GET', description: 'The request method (default GET).' },
        ),
      ),
      url: Type.String({ minLength: 1, description: 'The http:// or https:// URL. It is never shown in reasons (it may carry a token).' }),
      headers: Type.Optional(
        Type.Record(Type.String(), Type.String(), {
          description: 'Request headers, e.g. Authorization with a ${env:...} reference. Values never appear in reasons.',
        }),
      ),
      body: Type.Optional(Type.String({ description: 'The request body, sent as is (set Content-Type in headers); not with json.' })),
      json: Type.Optional(
        Type.Unknown({
          description: 'A value sent as the JSON body, with Content-Type application/json unless headers set one; not with body.',
        }),
      ),
      expect_status: Type.Optional(
        Type.Array(Type.Integer({ minimum: 100, maximum: 599, description: 'A status code.' }), {
          minItems: 1,
          description: 'Status codes that count as success; any 2xx when omitted. Redirects are not followed.',
        }),
      ),
      ca_file: Type.Optional(
        Type.String({ minLength: 1, description: 'https only: a PEM file of extra CA certificates to trust (a private PKI).' }),
      ),
      insecure_skip_verify: Type.Optional(
        Type.Boolean({
          default: false,
          description: 'https only, insecure: accept any certificate, so anyone on the path can answer instead.',
        }),
      ),
    },
    { additionalProperties: false },
  ),
  result: { status: 'int', body: 'string', json: 'dyn', headers: 'map' },
  validate(s) {
    const problems: Array<[string, string]> = [];
    if (s.body !== undefined && s.json !== undefined) problems.push(['json', 'set body or json, not both']);
    // A URL with a template or a secret reference in it is checked once rendered, at run time.
    const later = /\{\{|\$\{/.test(s.url);
    const url = later ? undefined : parseUrl(s.url);
    if (url === undefined && !later) problems.push(['url', 'must be an absolute http:// or https:// URL']);
    for (const [name, value] of Object.entries(s.headers ?? {})) {
      const problem = headerProblem(name, value);
      if (problem) problems.push([`headers.${name}`, problem]);
    }
    if (url?.protocol === 'http:') {
      if (s.ca_file !== undefined) problems.push(['ca_file', 'applies to https:// URLs only']);
      if (s.insecure_skip_verify) problems.push(['insecure_skip_verify', 'applies to https:// URLs only']);
    }
    return problems;
  },
  async run(s, ctx) {
    // The URL is not quoted in reasons: it may carry a token or a password.
    const url = parseUrl(s.url);
    if (url === undefined) return { ok: false, reason: 'url is not an absolute http:// or https:// URL', result: {} };
    for (const [name, value] of Object.entries(s.headers ?? {})) {
      const problem = headerProblem(name, value);
      if (problem) return { ok: false, reason: `header ${name} ${problem}`, result: {} };
    }
    let ca: string[] | undefined;
    if (s.ca_file !== undefined && url.protocol === 'https:') {
      try {
        ca = await loadCa(s.ca_file);
      } catch (err) {
        return { ok: false, reason: `ca_file: ${reasonOf(err)}`, result: {} };
      }
    }
    let headers = withUserAgent(s.headers ?? {}, USER_AGENT);
    let body = s.body;
    if (s.json !== undefined) {
      body = JSON.stringify(s.json);
      if (!Object.keys(headers).some((h) => h.toLowerCase() === 'content-type'))
        headers = { ...headers, 'content-type': 'application/json' };
    }
    const method = s.method ?? 'GET';
    const res = await exchange(url, { method, headers, body, ca, insecure: s.insecure_skip_verify === true }, ctx.signal);
    if ('error' in res) return { ok: false, reason: res.error, result: {} };

    let json: unknown = null;
    try {
      json = JSON.parse(res.body);
    } catch {
      // Not JSON: `json` stays null, which an output expression can test for.
    }
    const kept = cut(res.body, HTTP_BODY_RESULT_LIMIT);
    const result = { status: res.status, body: kept, json, headers: res.headers };
    const output = `${method} answered ${res.status}${kept ? `\n${kept}` : ''}`;
    const expected = s.expect_status;
    if (expected ? !expected.includes(res.status) : res.status < 200 || res.status > 299) {
      const said = firstLine(res.body);
      return {
        ok: false,
        reason: `status ${res.status}, expected ${expected ? orList(expected.map(String)) : '2xx'}${said ? `: ${said}` : ''}`,
        result,
        output,
      };
    }
    return { ok: true, result, output };
  },
});

/** The text cut to at most `bytes` bytes of UTF-8, never inside a character. */
function cut(text: string, bytes: number): string {
  const buf = Buffer.from(text, 'utf8');
  if (buf.length <= bytes) return text;
  let end = bytes;
  // Back up over continuation bytes (10xxxxxx) to the start of the character that does not fit.
  while (end > 0 && (buf[end]! & 0xc0) === 0x80) end--;
  return buf.subarray(0, end).toString('utf8');
}
