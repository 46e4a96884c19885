import type { ProbeResult } from '../probers/run.js';

/** UP: serving. PENDING: not yet known, or failing but not yet DOWN. DOWN: failed `failure_threshold` times in a row. */
export type ProbeStateName = 'UP' | 'PENDING' | 'DOWN';
export const PROBE_STATES: readonly ProbeStateName[] = ['UP', 'PENDING', 'DOWN'];

/** A change of state, as logged once and counted. */
export interface Transition {
  from: ProbeStateName;
  to: ProbeStateName;
  /** The reason of the result that caused it. */
  reason: string;
  /** Outage start (first failure of the current run), when going DOWN. */
  failingSince?: number;
}

/**
 * The state machine of one probe. Thresholds keep one lost packet from paging anyone: a probe goes
 * DOWN only after `failureThreshold` failures in a row, and comes back UP only after
 * `successThreshold` successes in a row. It remembers when the current run of failures began:
 * that is the outage start RTO is counted from, not the moment the threshold was crossed.
 */
export class ProbeState {
  state: ProbeStateName = 'PENDING';
  /** When the probe entered its current state, ms since the epoch. */
  since: number;
  consecutiveFailures = 0;
  consecutiveSuccesses = 0;
  /** Start of the first failed run of the current run of failures; cleared when UP again. */
  failingSince: number | undefined;
  last: ProbeResult | undefined;
  /** The last failed result, kept so a person sees why even after a recovery. */
  lastFailure: ProbeResult | undefined;
  /** The last successful result: what the target last said while it could (e.g. a primary's last WAL position). */
  lastSuccess: ProbeResult | undefined;

  constructor(
    readonly failureThreshold: number,
    readonly successThreshold: number,
    now = Date.now(),
  ) {
    this.since = now;
  }

  /** Records one result; returns the transition when the state changed. */
  record(result: ProbeResult): Transition | undefined {
    this.last = result;
    const from = this.state;
    if (result.ok) {
      this.lastSuccess = result;
      this.consecutiveSuccesses++;
      this.consecutiveFailures = 0;
      // A probe that was failing but never reached DOWN had no outage: it is UP again at once.
      const recovered = from === 'PENDING' && this.failingSince !== undefined;
      if (from !== 'UP' && (recovered || this.consecutiveSuccesses >= this.successThreshold)) {
        this.failingSince = undefined;
        return this.move('UP', result);
      }
      return undefined;
    }
    this.lastFailure = result;
    this.consecutiveFailures++;
    this.consecutiveSuccesses = 0;
    this.failingSince ??= result.startedAt;
    if (this.consecutiveFailures >= this.failureThreshold && from !== 'DOWN') return this.move('DOWN', result);
    if (from === 'UP') return this.move('PENDING', result);
    return undefined;
  }

  private move(to: ProbeStateName, result: ProbeResult): Transition {
    const from = this.state;
    this.state = to;
    this.since = result.startedAt + result.durationSeconds * 1000;
    return { from, to, reason: result.reason, ...(to === 'DOWN' ? { failingSince: this.failingSince } : {}) };
  }
}
