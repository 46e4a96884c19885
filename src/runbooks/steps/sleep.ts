import { Type } from '@sinclair/typebox';
import { Duration } from '../../config/schema.js';
import { parseDuration } from '../../duration.js';
import { defineStep } from './types.js';

/** sleep: wait a fixed time (e.g. for DNS TTLs to pass after a switch). */
export const sleep = defineStep({
  description: 'Wait a fixed time, e.g. for a DNS TTL to pass after a switch.',
  settings: Type.Object({ duration: Duration('How long to wait; shorter than the step timeout.') }, { additionalProperties: false }),
  result: { slept_seconds: 'double' },
  run(s, ctx) {
    const ms = parseDuration(s.duration);
    return new Promise((resolve) => {
      const t0 = Date.now();
      const timer = setTimeout(() => resolve({ ok: true, result: { slept_seconds: ms / 1000 } }), ms);
      ctx.signal.addEventListener(
        'abort',
        () => {
          clearTimeout(timer);
          resolve({ ok: false, reason: 'aborted', result: { slept_seconds: (Date.now() - t0) / 1000 } });
        },
        { once: true },
      );
    });
  },
});
