import { readFile } from 'node:fs/promises';
import { request as httpRequest, validateHeaderName, validateHeaderValue, type ClientRequest, type IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest, type RequestOptions as HttpsRequestOptions } from 'node:https';
import { performance } from 'node:perf_hooks';
import tls from 'node:tls';
import { reasonOf } from '../probers/types.js';

/**
 * One HTTP(S) request and its response, as the http prober and the http and notify runbook steps
 * send them: a fresh connection each time, the body read up to a cap, and everything torn down
 * when the caller's signal aborts. No redirect is followed here; the prober does that itself.
 */

/** Bodies are read up to this size and cut there, so a huge or endless response cannot exhaust memory. */
export const MAX_BODY_BYTES = 1024 * 1024;

/** The error of a response cut short by the server; it names nothing of the request. */
export const CLOSED_MID_RESPONSE = 'the connection closed in the middle of the response';

/** What one request/response exchange produced. */
export interface Exchanged {
  status: number;
  /** Lower-case names, repeated headers joined by ", ". */
  headers: Record<string, string>;
  body: string;
  /** The body reached MAX_BODY_BYTES and the rest was not read. */
  cut: boolean;
  /** performance.now() when the body was read (or cut). */
  endedAt: number;
  certDaysLeft?: number;
  tlsVersion: string;
}

/** A request that got no response; `code` is node's error code (ECONNREFUSED, ...) when there is one. */
export interface ExchangeError {
  error: string;
  code?: string;
}

export interface RequestOptions {
  method: string;
  headers: Record<string, string>;
  body: string | undefined;
  /** https only: the CAs to trust instead of node's bundle (see loadCa). */
  ca: string[] | undefined;
  /** https only: accept any certificate. */
  insecure: boolean;
}

/** One request on a fresh connection (agent: false), read up to the body cap, torn down on abort. */
export function exchange(url: URL, o: RequestOptions, signal: AbortSignal): Promise<Exchanged | ExchangeError> {
  return new Promise((resolve) => {
    let settled = false;
    let req: ClientRequest | undefined;
    const finish = (result: Exchanged | ExchangeError) => {
      if (settled) return;
      settled = true;
      signal.removeEventListener('abort', onAbort);
      req?.destroy();
      resolve(result);
    };
    const onAbort = () => finish({ error: reasonOf(signal.reason) });
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });

    const options: HttpsRequestOptions = { method: o.method, headers: o.headers, agent: false };
    if (url.protocol === 'https:') {
      options.ca = o.ca;
      options.rejectUnauthorized = !o.insecure;
    }
    const failed = (err: unknown): ExchangeError => {
      const code = (err as NodeJS.ErrnoException).code;
      return { error: reasonOf(err), ...(typeof code === 'string' ? { code } : {}) };
    };
    try {
      req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(url, options);
    } catch (err) {
      return finish(failed(err));
    }
    req.on('error', (err) => finish(failed(err)));
    req.on('response', (res) => {
      let certDaysLeft: number | undefined;
      let tlsVersion = '';
      const socket = res.socket;
      if (socket instanceof tls.TLSSocket) {
        tlsVersion = socket.getProtocol() ?? '';
        const validTo = Date.parse(socket.getPeerCertificate().valid_to);
        if (Number.isFinite(validTo)) certDaysLeft = (validTo - Date.now()) / 86_400_000;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      let cut = false;
      const done = () =>
        finish({
          status: res.statusCode ?? 0,
          headers: flatHeaders(res.headers),
          body: Buffer.concat(chunks).toString('utf8'),
          cut,
          endedAt: performance.now(),
          certDaysLeft,
          tlsVersion,
        });
      res.on('data', (chunk: Buffer) => {
        if (settled) return;
        const room = MAX_BODY_BYTES - size;
        if (chunk.length > room) {
          chunks.push(chunk.subarray(0, room));
          cut = true;
          done();
          return;
        }
        chunks.push(chunk);
        size += chunk.length;
      });
      res.on('end', done);
      res.on('error', (err) => finish(err.message === 'aborted' ? { error: CLOSED_MID_RESPONSE } : failed(err)));
    });
    req.end(o.body);
  });
}

/** The URL if it is an absolute http:// or https:// one (or one relative to `base`), else undefined. */
export function parseUrl(text: string, base?: URL): URL | undefined {
  try {
    const url = new URL(text, base);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url : undefined;
  } catch {
    return undefined;
  }
}

/** Why a header cannot be sent, in words that never quote its value (it may be a secret). */
export function headerProblem(name: string, value: string): string | undefined {
  try {
    validateHeaderName(name);
  } catch {
    return 'is not a valid header name';
  }
  try {
    validateHeaderValue(name, value);
  } catch {
    return 'has a value with characters not allowed in a header (the value is not shown)';
  }
  return undefined;
}

/** The headers with a User-Agent added unless one is set (in any letter case). */
export function withUserAgent(headers: Record<string, string>, userAgent: string): Record<string, string> {
  if (Object.keys(headers).some((h) => h.toLowerCase() === 'user-agent')) return headers;
  return { 'user-agent': userAgent, ...headers };
}

/** The CAs for `ca_file`: node's public roots plus the file's, since `ca` replaces node's bundle. */
export async function loadCa(path: string): Promise<string[]> {
  return [...tls.rootCertificates, await readFile(path, 'utf8')];
}

/** Response headers as a map of lower-case name to one string (repeated headers joined by ", "). */
function flatHeaders(headers: IncomingHttpHeaders): Record<string, string> {
  const flat: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined) flat[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  return flat;
}
