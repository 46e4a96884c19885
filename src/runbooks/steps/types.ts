import type { Static, TSchema } from '@sinclair/typebox';
import type { Logger } from 'pino';
import type { CelType } from '../../probers/types.js';

/** How an execution runs: for real, as a drill (test endpoints), or rendered and checked only. */
export type ExecutionMode = 'live' | 'drill' | 'dry-run';

/** What a step kind sees of the daemon besides its settings. */
export interface StepContext {
  executionId: string;
  stepId: string;
  mode: ExecutionMode;
  /** Aborted at the step's timeout, or when the execution is aborted or the daemon stops. */
  signal: AbortSignal;
  timeoutMs: number;
  log: Logger;
  /** Folder for local state, as probers have. */
  stateDir: string;
  /** Probe states, for steps that wait on a probe (absent where no monitor runs, e.g. the CLI). */
  probes?: ProbeView;
  /**
   * Reports how far a long step is (e.g. bytes streamed of the total), for people watching. Cheap to
   * call often: the executor keeps the latest and writes it at most twice a second.
   */
  progress?: (p: { activity?: string; done?: number; total?: number; unit?: string }) => void;
}

/** The read-only view of probes a `wait` step needs. */
export interface ProbeView {
  /** The probe's state and last observed values, or undefined for an unknown probe id. */
  get(id: string): { state: 'UP' | 'PENDING' | 'DOWN'; observed: Record<string, unknown> } | undefined;
  /** Every probe id (to validate a runbook's references at load). */
  ids(): string[];
}

/**
 * What one step run produced. `result` holds the raw values a step's `outputs:` expressions read
 * (as `result.<name>`); `output` is the text kept on the timeline (cut and redacted by the executor).
 */
export interface StepResult {
  ok: boolean;
  /** Why not, in words a person reads; absent when ok. */
  reason?: string;
  result: Record<string, unknown>;
  output?: string;
}

/**
 * One kind of runbook step. Like probers: run() returns a result and never throws (the executor
 * still guards against one that does), honours ctx.signal, and its settings arrive rendered
 * (templates filled in) with secret references resolved.
 */
export interface StepKind<S extends TSchema = TSchema> {
  /** One line for the runbook reference. */
  description: string;
  /** The TypeBox schema of the kind's settings block (`<kind>:` in a step). */
  settings: S;
  /** Names and CEL types of the values in StepResult.result, for `outputs:` expressions. */
  result: Record<string, CelType>;
  /** Cross-field checks the schema cannot express; each as [path below settings, message]. */
  validate?(settings: Static<S>): Array<[string, string]>;
  /** Runs the step once. */
  run(settings: Static<S>, ctx: StepContext): Promise<StepResult>;
}

/** Defines a step kind with its settings type inferred from the schema. */
export function defineStep<S extends TSchema>(kind: StepKind<S>): StepKind<S> {
  return kind;
}
