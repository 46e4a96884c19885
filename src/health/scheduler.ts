import { createHash } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import type { ProbeConfig } from '../config/load.js';
import { probers } from '../probers/index.js';
import { runProbe, type ProbeResult, type RunnableProbe } from '../probers/run.js';

/** What the runner needs of a configured probe (the local scheduler and shared runs both use it). */
export function runnableProbe(probe: ProbeConfig): RunnableProbe {
  return {
    id: probe.id,
    prober: probers[probe.kind] as never,
    settings: probe.settings,
    timeoutMs: probe.timeoutMs,
    conditions: probe.conditions,
  };
}

/** What the scheduler reports for every run. */
export interface RunReport {
  probe: ProbeConfig;
  result: ProbeResult;
  /** Actual start minus planned start, seconds: time lost to a busy loop or the concurrency limit. */
  lagSeconds: number;
}

export interface SchedulerOptions {
  maxConcurrent: number;
  stateDir: string;
  onResult(report: RunReport): void;
  /** A run was due while the previous run of the same probe was still going: it is skipped, not stacked. */
  onSkip?(probe: ProbeConfig): void;
  /** First run of each probe: spread over its interval by a hash of its id (default), or at once. */
  firstRun?: 'spread' | 'now';
}

interface Entry {
  probe: ProbeConfig;
  /** Planned start of the next run, ms (performance-free wall clock: Date.now()). */
  due: number;
  running: boolean;
  removed: boolean;
}

/**
 * Runs every probe at its interval, under a global concurrency limit. One timer serves all probes
 * (a min-heap of due times), so 10,000 probes cost one timer, not 10,000. Each probe's next run is
 * planned from its previous plan, not from when it finished, so runs do not drift; a run still
 * going when the next is due is skipped, so a slow target never piles up work or delays others
 * (its own timeout bounds it). First runs are spread over the interval by a hash of the probe id:
 * a restart does not make every probe fire at once, and the spread is the same every time.
 */
export class Scheduler {
  private heap: Entry[] = [];
  private entries = new Map<string, Entry>();
  private waiting: Entry[] = [];
  private active = 0;
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;
  private stopping = false;
  private readonly abort = new AbortController();
  private readonly inFlight = new Set<Promise<void>>();

  constructor(private readonly opts: SchedulerOptions) {
    // Each run in flight listens on this signal (runProbe removes its listener when the run ends),
    // so up to maxConcurrent listeners is normal; more would be a leak, and still warns.
    setMaxListeners(opts.maxConcurrent + 1, this.abort.signal);
  }

  /** Replaces the probe set. Probes whose fingerprint is unchanged keep their schedule. */
  setProbes(probes: ProbeConfig[]): void {
    const now = Date.now();
    const next = new Map<string, Entry>();
    for (const probe of probes) {
      const old = this.entries.get(probe.id);
      if (old && old.probe.fingerprint === probe.fingerprint) {
        old.probe = probe;
        next.set(probe.id, old);
        continue;
      }
      if (old) old.removed = true;
      const entry: Entry = { probe, due: now + this.firstDelay(probe), running: false, removed: false };
      next.set(probe.id, entry);
      this.push(entry);
    }
    for (const [id, old] of this.entries) if (!next.has(id)) old.removed = true;
    this.entries = next;
    this.waiting = this.waiting.filter((e) => !e.removed);
    this.arm();
  }

  /** Probes currently scheduled. */
  get size(): number {
    return this.entries.size;
  }

  /** Runs in progress. */
  get running(): number {
    return this.active;
  }

  /**
   * Stops scheduling, lets in-flight runs finish for up to `graceMs`, then aborts the rest (their
   * results come back as aborted). Resolves when no run is left.
   */
  async stop(graceMs: number): Promise<void> {
    this.stopping = true;
    clearTimeout(this.timer);
    this.waiting = [];
    if (this.inFlight.size === 0) return;
    const grace = new Promise<void>((r) => setTimeout(r, graceMs).unref());
    await Promise.race([Promise.all(this.inFlight), grace]);
    this.abort.abort(new Error('the daemon is stopping'));
    await Promise.all(this.inFlight);
  }

  private firstDelay(probe: ProbeConfig): number {
    if (this.opts.firstRun === 'now') return 0;
    const h = createHash('sha1').update(probe.id).digest().readUInt32BE(0);
    return h % probe.intervalMs;
  }

  private arm(): void {
    if (this.stopping) return;
    const top = this.heap[0];
    if (!top) return;
    if (top.due >= this.timerAt && this.timer) return;
    clearTimeout(this.timer);
    this.timerAt = top.due;
    this.timer = setTimeout(() => this.tick(), Math.max(0, top.due - Date.now()));
  }

  private tick(): void {
    this.timer = undefined;
    this.timerAt = Infinity;
    const now = Date.now();
    while (this.heap.length > 0 && this.heap[0]!.due <= now) {
      const entry = this.pop()!;
      if (entry.removed) continue;
      const planned = entry.due;
      // Plan the next run from this plan, skipping whole intervals if we fell far behind.
      entry.due = planned + entry.probe.intervalMs * Math.max(1, Math.ceil((now - planned + 1) / entry.probe.intervalMs));
      this.push(entry);
      if (entry.running) {
        this.opts.onSkip?.(entry.probe);
        continue;
      }
      this.start(entry, planned);
    }
    this.arm();
  }

  private start(entry: Entry, planned: number): void {
    if (this.active >= this.opts.maxConcurrent) {
      entry.running = true; // reserved: a due run waits for a slot, and is not queued twice
      this.waiting.push(Object.assign(entry, { planned }));
      return;
    }
    this.active++;
    entry.running = true;
    const probe = entry.probe;
    const run = runProbe(runnableProbe(probe), { stateDir: this.opts.stateDir, signal: this.abort.signal }).then((result) => {
      entry.running = false;
      this.active--;
      if (!entry.removed) this.opts.onResult({ probe, result, lagSeconds: Math.max(0, result.startedAt - planned) / 1000 });
      this.next();
    });
    this.inFlight.add(run);
    void run.finally(() => this.inFlight.delete(run));
  }

  private next(): void {
    while (this.active < this.opts.maxConcurrent && this.waiting.length > 0 && !this.stopping) {
      const entry = this.waiting.shift()! as Entry & { planned: number };
      entry.running = false;
      if (!entry.removed) this.start(entry, entry.planned);
    }
  }

  // A binary min-heap on `due`.
  private push(e: Entry): void {
    const h = this.heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (h[p]!.due <= h[i]!.due) break;
      [h[p], h[i]] = [h[i]!, h[p]!];
      i = p;
    }
  }

  private pop(): Entry | undefined {
    const h = this.heap;
    const top = h[0];
    const last = h.pop();
    if (h.length > 0 && last) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && h[l]!.due < h[m]!.due) m = l;
        if (r < h.length && h[r]!.due < h[m]!.due) m = r;
        if (m === i) break;
        [h[m], h[i]] = [h[i]!, h[m]!];
        i = m;
      }
    }
    return top;
  }
}
