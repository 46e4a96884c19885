import { performance } from 'node:perf_hooks';
import { Type } from '@sinclair/typebox';
import { formatDuration } from '../duration.js';
import { exchange, headerProblem, loadCa, MAX_BODY_BYTES, parseUrl, withUserAgent, type Exchanged } from '../net/http-request.js';
import { defineProber, reasonOf, type Observation } from './types.js';

export { MAX_BODY_BYTES };
const MAX_REDIRECTS = 5;
const USER_AGENT = 'continuity-probe';
const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;

/** http: one request over HTTP or HTTPS, checked for status, body, latency and certificate lifetime. */
export const http = defineProber({
  description:
    'Send one HTTP(S) request and check the status, the body, the latency and the days left on the TLS certificate. ' +
    'Conditions see the body parsed as JSON as `json`, so a JSON-path check reads `json.data.replicas[0].state == "streaming"`.',
  settings: Type.Object(
    {
      url: Type.String({ minLength: 1, description: 'The http:// or https:// URL to request.' }),
      method: Type.Optional(
        Type.Union(
          METHODS.map((m) => Type.Literal(m)),
          { default: 'GET', description: 'The request method.' },
        ),
      ),
      headers: Type.Optional(
        Type.Record(Type.String(), Type.String(), {
          description: 'Request headers. Values may be secrets: they never appear in reasons or logs.',
        }),
      ),
      body: Type.Optional(Type.String({ description: 'The request body, sent as is (set Content-Type in headers).' })),
      expect_status: Type.Optional(
        Type.Array(Type.Integer({ minimum: 100, maximum: 599 }), {
          minItems: 1,
          description: 'Status codes that count as success; any 2xx when omitted.',
        }),
      ),
      body_contains: Type.Optional(Type.String({ minLength: 1, description: 'The body (its first 1 MiB) must contain this text.' })),
      body_matches: Type.Optional(
        Type.String({ minLength: 1, description: 'The body (its first 1 MiB) must match this JavaScript regular expression.' }),
      ),
      max_latency_seconds: Type.Optional(
        Type.Number({ exclusiveMinimum: 0, description: 'Fail when the full response takes longer than this.' }),
      ),
      min_cert_days_left: Type.Optional(
        Type.Number({ minimum: 0, description: 'https only: fail when the server certificate expires in fewer days than this.' }),
      ),
      ca_file: Type.Optional(
        Type.String({ minLength: 1, description: 'https only: a PEM file of extra CA certificates to trust (a private PKI).' }),
      ),
      insecure_skip_verify: Type.Optional(
        Type.Boolean({
          default: false,
          description: 'https only, insecure: accept any certificate (expiry is still observed and min_cert_days_left still applies).',
        }),
      ),
      follow_redirects: Type.Optional(
        Type.Boolean({
          default: false,
          description: `Follow up to ${MAX_REDIRECTS} redirects; headers are dropped when a redirect leaves the origin.`,
        }),
      ),
    },
    { additionalProperties: false },
  ),
  observed: {
    status: 'int',
    latency_seconds: 'double',
    body: 'string',
    json: 'dyn',
    headers: 'map',
    cert_days_left: 'double',
    tls_version: 'string',
  },
  validate(s) {
    const problems: Array<[string, string]> = [];
    const url = parseUrl(s.url);
    if (url === undefined) problems.push(['url', 'must be an absolute http:// or https:// URL']);
    if (s.body_matches !== undefined) {
      try {
        new RegExp(s.body_matches);
      } catch (err) {
        problems.push(['body_matches', `is not a valid regular expression: ${reasonOf(err)}`]);
      }
    }
    for (const [name, value] of Object.entries(s.headers ?? {})) {
      const problem = headerProblem(name, value);
      if (problem) problems.push([`headers.${name}`, problem]);
    }
    if (url?.protocol === 'http:') {
      for (const key of ['min_cert_days_left', 'ca_file', 'insecure_skip_verify'] as const) {
        // insecure_skip_verify: false is its default, filled in before validation: only true is a mistake.
        if (s[key] !== undefined && s[key] !== false) problems.push([key, 'applies to https:// URLs only']);
      }
    }
    return problems;
  },
  async run(s, ctx): Promise<Observation> {
    const t0 = performance.now();
    let url = parseUrl(s.url);
    // The URL is not quoted: it may carry a password (https://user:secret@host/).
    if (url === undefined) return { ok: false, reason: 'url is not an absolute http:// or https:// URL', observed: {} };
    // Checked again at run time because a header problem must never reach node, whose errors could quote the value.
    for (const [name, value] of Object.entries(s.headers ?? {})) {
      const problem = headerProblem(name, value);
      if (problem) return { ok: false, reason: `header ${name} ${problem}`, observed: {} };
    }

    let ca: string[] | undefined;
    if (s.ca_file !== undefined && url.protocol === 'https:') {
      try {
        // `ca` replaces node's bundle, so keep the public roots next to the private CA.
        ca = await loadCa(s.ca_file);
      } catch (err) {
        return { ok: false, reason: `ca_file: ${reasonOf(err)}`, observed: {} };
      }
    }

    let method: string = s.method ?? 'GET';
    let body = s.body;
    let headers = withUserAgent(s.headers ?? {}, USER_AGENT);
    let res: Exchanged;
    for (let redirects = 0; ; redirects++) {
      const result = await exchange(url, { method, headers, body, ca, insecure: s.insecure_skip_verify === true }, ctx.signal);
      if ('error' in result) return { ok: false, reason: result.error, observed: {} };
      res = result;
      const location = res.headers.location;
      if (!s.follow_redirects || !isRedirect(res.status) || !location) break;
      if (redirects === MAX_REDIRECTS) {
        return { ok: false, reason: `too many redirects (more than ${MAX_REDIRECTS})`, observed: observedOf(res, t0) };
      }
      const next = parseUrl(location, url);
      if (next === undefined) return { ok: false, reason: `redirect to an invalid URL: ${location}`, observed: observedOf(res, t0) };
      // Configured headers may carry credentials meant for this origin only.
      if (next.origin !== url.origin) headers = withUserAgent({}, USER_AGENT);
      if (res.status === 303 || ((res.status === 301 || res.status === 302) && method === 'POST')) {
        method = method === 'HEAD' ? 'HEAD' : 'GET';
        body = undefined;
      }
      url = next;
    }

    const observed = observedOf(res, t0);
    const fail = (reason: string): Observation => ({ ok: false, reason, observed });
    const expected = s.expect_status;
    if (expected ? !expected.includes(res.status) : res.status < 200 || res.status > 299) {
      const redirect = isRedirect(res.status) && res.headers.location ? ` (redirect to ${res.headers.location})` : '';
      return fail(`status ${res.status}${redirect}, expected ${expected ? orList(expected.map(String)) : '2xx'}`);
    }
    const within = res.cut ? ` (in its first ${MAX_BODY_BYTES / 1024 / 1024} MiB)` : '';
    if (s.body_contains !== undefined && !res.body.includes(s.body_contains)) {
      return fail(`body does not contain ${JSON.stringify(s.body_contains)}${within}`);
    }
    if (s.body_matches !== undefined) {
      let pattern: RegExp;
      try {
        pattern = new RegExp(s.body_matches);
      } catch (err) {
        return fail(`body_matches is not a valid regular expression: ${reasonOf(err)}`);
      }
      if (!pattern.test(res.body)) return fail(`body does not match /${s.body_matches}/${within}`);
    }
    const latency = observed.latency_seconds as number;
    if (s.max_latency_seconds !== undefined && latency > s.max_latency_seconds) {
      return fail(`response took ${formatDuration(latency * 1000)} (max ${formatDuration(s.max_latency_seconds * 1000)})`);
    }
    if (s.min_cert_days_left !== undefined && res.certDaysLeft !== undefined && res.certDaysLeft < s.min_cert_days_left) {
      return fail(
        res.certDaysLeft < 0
          ? `certificate expired ${(-res.certDaysLeft).toFixed(1)} days ago`
          : `certificate expires in ${res.certDaysLeft.toFixed(1)} days (min ${s.min_cert_days_left})`,
      );
    }
    return { ok: true, observed };
  },
});

/** The observed values of a response; latency counts from the start of the probe. */
function observedOf(res: Exchanged, t0: number): Record<string, unknown> {
  let json: unknown = null;
  try {
    json = JSON.parse(res.body);
  } catch {
    // Not JSON: `json` stays null, which a condition can test for.
  }
  return {
    status: res.status,
    latency_seconds: (res.endedAt - t0) / 1000,
    body: res.body,
    json,
    headers: res.headers,
    cert_days_left: res.certDaysLeft,
    tls_version: res.tlsVersion,
  };
}

function isRedirect(status: number): boolean {
  return [301, 302, 303, 307, 308].includes(status);
}

/** ["200"] -> "200"; ["200", "204"] -> "200 or 204"; ["200", "201", "204"] -> "200, 201 or 204". */
function orList(items: string[]): string {
  return items.length < 2 ? (items[0] ?? '') : `${items.slice(0, -1).join(', ')} or ${items.at(-1)}`;
}
