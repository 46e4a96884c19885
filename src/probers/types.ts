import type { Static, TSchema } from '@sinclair/typebox';

/** The CEL type of one observed value; conditions are type-checked against these at load time. */
export type CelType = 'int' | 'double' | 'string' | 'bool' | 'dyn' | 'list' | 'map';

/** What a prober gets besides its settings. */
export interface ProbeContext {
  /** The probe's config id, for messages and per-probe state. */
  probeId: string;
  /** Aborted when the probe's timeout passes or the daemon stops: close sockets, kill children. */
  signal: AbortSignal;
  /** The probe's timeout in milliseconds (the signal fires then). */
  timeoutMs: number;
  /** A folder where a prober may keep state between runs (e.g. file-integrity baselines). */
  stateDir: string;
}

/**
 * What one run of a prober saw. `ok: false` carries a reason a person reads, such as
 * `connect ECONNREFUSED 127.0.0.1:5432`; `observed` holds the values conditions can test.
 */
export interface Observation {
  ok: boolean;
  reason?: string;
  observed: Record<string, unknown>;
}

/**
 * One kind of check. A prober returns an Observation and never throws (the runner still guards
 * against one that does), honours ctx.signal, and never touches metrics: the scheduler owns them.
 */
export interface Prober<S extends TSchema = TSchema> {
  /** One line for the probe reference. */
  description: string;
  /** The TypeBox schema of the kind's settings block (`<kind>:` in a probe). */
  settings: S;
  /** Names and CEL types of the observed values a condition may use. */
  observed: Record<string, CelType>;
  /** Cross-field checks the schema cannot express; each problem as [path below settings, message]. */
  validate?(settings: Static<S>): Array<[string, string]>;
  /** Runs one check. */
  run(settings: Static<S>, ctx: ProbeContext): Promise<Observation>;
}

/** Defines a prober with its settings type inferred from the schema. */
export function defineProber<S extends TSchema>(prober: Prober<S>): Prober<S> {
  return prober;
}

/** The reason text of anything thrown: node's own messages already read well (`connect ECONNREFUSED ...`). */
export function reasonOf(err: unknown): string {
  if (err instanceof AggregateError && err.errors.length > 0) {
    return err.errors.map(reasonOf).join('; ');
  }
  if (err instanceof Error) return err.message || err.name;
  return String(err);
}

/**
 * Runs work a peer can leave hanging, racing it against the signal: on abort, `drop` tears the
 * connection down at once and the run rejects with the signal's reason (destroying a socket alone
 * does not settle a pending handshake in the database drivers).
 */
export async function untilAborted<T>(signal: AbortSignal, drop: () => void, work: () => Promise<T>): Promise<T> {
  if (signal.aborted) throw signal.reason;
  let onAbort = () => {};
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => {
      drop();
      reject(signal.reason);
    };
  });
  aborted.catch(() => {});
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    return await Promise.race([work(), aborted]);
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}
