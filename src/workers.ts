import { setTimeout as delay } from 'node:timers/promises';
import type { Worker } from 'bullmq';
import type { Logger } from 'pino';
import { reasonOf } from './probers/types.js';

/** BullMQ workers across Redis restarts and failovers: closing them without hanging, replacing stuck ones. */

/** How long closing a BullMQ worker may take before it is left behind. */
const WORKER_CLOSE_MS = 5000;
/** How long a worker may stay unable to take jobs while Redis answers before it is replaced. */
const WORKER_STALE_MS = 10_000;

/**
 * Closes a worker, waiting at most WORKER_CLOSE_MS: BullMQ's close() never resolves while Redis is
 * away (its blocking connection stays parked in "reconnecting": taskforcesh/bullmq#4656). A worker
 * left closing takes no more jobs; its running jobs go on (and their locks expire if they stop).
 */
export async function closeWorker(worker: Worker | undefined, log: Logger, what: string): Promise<void> {
  if (!worker) return;
  let timer: NodeJS.Timeout | undefined;
  const closed = await Promise.race([
    worker.close().then(
      () => true,
      (err: unknown) => (log.warn({ err: reasonOf(err) }, `${what} worker: close failed`), true),
    ),
    new Promise<false>((r) => (timer = setTimeout(() => r(false), WORKER_CLOSE_MS))),
  ]);
  clearTimeout(timer);
  if (!closed) log.warn(`${what} worker: not closed within ${WORKER_CLOSE_MS / 1000} s (Redis away); left behind, it takes no more jobs`);
}

/**
 * Watches a BullMQ worker across Redis restarts and failovers. BullMQ leaves reconnecting to
 * ioredis; when Redis answers again (the worker's main connection is ready) but the worker has
 * stopped running, or its blocking connection has not come back to ready (a reconnect that
 * brought no 'ready' event: taskforcesh/bullmq#3185, #4585), for WORKER_STALE_MS, `replace` is
 * called with it (it creates a new worker and closes that one).
 */
export function watchWorker(
  current: () => Worker | undefined,
  replace: (stuck: Worker) => void,
  log: Logger,
  what: string,
  everyMs = 1000,
): NodeJS.Timeout {
  let bad: { worker: Worker; since: number } | undefined;
  let checking = false;
  const statusOf = async (client: Promise<{ status: string }> | undefined) =>
    client ? Promise.race([client.then((c) => c.status), delay(500, 'initializing')]) : 'none';
  const timer = setInterval(() => {
    const worker = current();
    if (checking || !worker || worker.closing) return void (bad = undefined);
    checking = true;
    void (async () => {
      const [main, blocking] = await Promise.all([statusOf(worker.backend.client), statusOf(worker.backend.blockingClient)]);
      if (main !== 'ready' || (worker.isRunning() && blocking === 'ready')) return void (bad = undefined);
      if (bad?.worker !== worker) bad = { worker, since: Date.now() };
      else if (Date.now() - bad.since >= WORKER_STALE_MS) {
        log.warn({ running: worker.isRunning(), blocking }, `${what} worker: Redis answers but the worker takes no jobs; replacing it`);
        bad = undefined;
        replace(worker);
      }
    })()
      .catch((err: unknown) => log.debug({ err: reasonOf(err) }, `${what} worker watchdog`))
      .finally(() => (checking = false));
  }, everyMs);
  timer.unref();
  return timer;
}

/** Where a class keeps its worker, and how it makes a new one. */
export interface WorkerSlot {
  get(): Worker | undefined;
  set(worker: Worker): void;
  create(): Worker;
}

/** Watches the slot's worker (watchWorker) and, when it is stuck, puts a new one in its place and closes the old one. */
export function superviseWorker(slot: WorkerSlot, log: Logger, what: string): NodeJS.Timeout {
  return watchWorker(
    slot.get,
    (stuck) => {
      if (slot.get() !== stuck) return;
      slot.set(slot.create());
      void closeWorker(stuck, log, what);
    },
    log,
    what,
  );
}
