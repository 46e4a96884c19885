import { pino, type Logger, type LevelWithSilent } from 'pino';
import { redactor } from './redact.js';

/**
 * JSON logs, one constant message per event with the data in fields
 * (`{"probe":"orders-pg-a","from":"UP","to":"DOWN","msg":"probe state changed"}`). Every line passes
 * through the redactor on its way out, so no secret reaches a log whatever field it hides in.
 */
export function createLogger(level: LevelWithSilent = 'info', out: NodeJS.WritableStream = process.stdout): Logger {
  return pino(
    { level, base: { app: 'continuity' }, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (label) => ({ level: label }) } },
    { write: (line: string) => out.write(redactor.redact(line)) },
  );
}
