import net from 'node:net';
import { Type } from '@sinclair/typebox';
import { reasonOf } from '../../probers/types.js';
import { defineStep } from './types.js';

/** Answers of HAProxy's runtime API that mean a command was refused. */
const REFUSALS = [/no such (server|backend)/i, /unknown command/i, /permission denied/i, /require .* level/i, /^\s*(error|invalid)/im];

/**
 * haproxy: commands to HAProxy's runtime API (the stats socket), the traffic switch real sites use:
 * `set server pg/primary state maint`, `set server pg/dr state ready`, `shutdown sessions server
 * pg/primary`. Commands are sent in one connection, separated by `;`, and each must be accepted.
 */
export const haproxy = defineStep({
  description: "Send commands to HAProxy's runtime API (set server state, shutdown sessions, show servers state); each must be accepted.",
  settings: Type.Object(
    {
      address: Type.String({
        minLength: 1,
        description: 'The runtime API: host:port of a `stats socket ipv4@...` (level admin), or the path of its unix socket.',
      }),
      commands: Type.Array(Type.String({ minLength: 1, pattern: '^[^;\\n]+$', description: 'One runtime command (no ; or newline).' }), {
        minItems: 1,
        description: 'Commands, run in order in one connection.',
      }),
      expect: Type.Optional(
        Type.String({ minLength: 1, description: 'A regular expression the combined answer must match (e.g. to confirm a state).' }),
      ),
    },
    { additionalProperties: false },
  ),
  result: { output: 'string' },
  validate(s) {
    if (s.expect === undefined) return [];
    try {
      new RegExp(s.expect, 'm');
      return [];
    } catch (err) {
      return [['expect', `not a regular expression: ${(err as Error).message}`]];
    }
  },
  run(s, ctx) {
    return new Promise((resolve) => {
      const m = /^(.+):(\d+)$/.exec(s.address);
      const socket =
        m && !s.address.startsWith('/')
          ? net.connect({ host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) })
          : net.connect({ path: s.address });
      let output = '';
      let settled = false;
      const finish = (ok: boolean, reason?: string) => {
        if (settled) return;
        settled = true;
        ctx.signal.removeEventListener('abort', onAbort);
        socket.destroy();
        resolve({ ok, ...(reason ? { reason } : {}), result: { output }, output });
      };
      const onAbort = () => finish(false, reasonOf(ctx.signal.reason));
      ctx.signal.addEventListener('abort', onAbort, { once: true });
      socket.on('connect', () => socket.write(s.commands.join(';') + '\n'));
      socket.on('data', (d: Buffer) => {
        output += d.toString('utf8');
        if (output.length > 1 << 20) output = output.slice(-(1 << 20));
      });
      socket.on('error', (err) => finish(false, `runtime API: ${reasonOf(err)}`));
      socket.on('end', () => {
        const refused = REFUSALS.find((re) => re.test(output));
        if (refused)
          return finish(
            false,
            `HAProxy refused: ${
              output
                .trim()
                .split('\n')
                .find((l) => refused.test(l)) ?? output.trim()
            }`,
          );
        if (s.expect !== undefined && !new RegExp(s.expect, 'm').test(output))
          return finish(false, `the answer does not match ${s.expect}`);
        finish(true);
      });
    });
  },
});
