import net from 'node:net';
import tls from 'node:tls';
import { performance } from 'node:perf_hooks';
import { Type } from '@sinclair/typebox';
import { defineProber, reasonOf } from './types.js';

/** tcp: connect to host:port, optionally over TLS, optionally send a line and expect a reply. */
export const tcp = defineProber({
  description: 'Connect to a TCP port; optionally send text and expect a reply containing a string.',
  settings: Type.Object(
    {
      host: Type.String({ minLength: 1, description: 'Host name or address.' }),
      port: Type.Integer({ minimum: 1, maximum: 65535, description: 'TCP port.' }),
      tls: Type.Optional(Type.Boolean({ description: 'Wrap the connection in TLS (certificate verified).' })),
      send: Type.Optional(Type.String({ description: 'Text written once connected (e.g. "PING\\r\\n").' })),
      expect: Type.Optional(Type.String({ minLength: 1, description: 'The reply must contain this text.' })),
    },
    { additionalProperties: false },
  ),
  observed: { connect_seconds: 'double', reply: 'string' },
  run(s, ctx) {
    return new Promise((resolve) => {
      const t0 = performance.now();
      let connectSeconds = 0;
      let reply = '';
      let settled = false;
      const socket: net.Socket = s.tls
        ? tls.connect({ host: s.host, port: s.port, servername: net.isIP(s.host) ? undefined : s.host })
        : net.connect({ host: s.host, port: s.port });
      const finish = (ok: boolean, reason?: string) => {
        if (settled) return;
        settled = true;
        ctx.signal.removeEventListener('abort', onAbort);
        socket.destroy();
        resolve({ ok, reason, observed: { connect_seconds: connectSeconds, reply } });
      };
      const onAbort = () => finish(false, reasonOf(ctx.signal.reason));
      ctx.signal.addEventListener('abort', onAbort, { once: true });
      socket.once(s.tls ? 'secureConnect' : 'connect', () => {
        connectSeconds = (performance.now() - t0) / 1000;
        if (s.send !== undefined) socket.write(s.send);
        if (s.expect === undefined) finish(true);
      });
      socket.on('data', (chunk: Buffer) => {
        reply += chunk.toString('utf8');
        if (reply.length > 65536) reply = reply.slice(-65536);
        if (s.expect !== undefined && reply.includes(s.expect)) finish(true);
      });
      socket.once('end', () => finish(false, `connection closed before the reply contained ${JSON.stringify(s.expect)}`));
      socket.once('error', (err) => finish(false, reasonOf(err)));
    });
  },
});
