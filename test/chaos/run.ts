/**
 * Chaos run: `npm run chaos -- --duration 10m --seed 7` (or `node --import tsx test/chaos/run.ts ...`).
 *
 * Random faults on the lab with three daemons and a private Redis, and an invariant checker (see
 * chaos.ts). Prints each fault and finding as it happens, and as its last line:
 *
 *   chaos duration_s=X faults=N failovers=N violations=N seed=N
 *
 * Exits 1 when an invariant was broken, 130 when interrupted (SIGINT: everything is cleaned up;
 * a second SIGINT exits at once, the children killed by the helpers' exit hooks).
 */
import { Command, InvalidArgumentError } from 'commander';
import { parseDuration } from '../../src/duration.js';
import { runChaos } from './chaos.js';

const program = new Command()
  .name('chaos')
  .description('Random faults on the lab (daemons, Redis, the primary PostgreSQL) with an invariant checker')
  .option(
    '--duration <duration>',
    'how long faults are injected (e.g. 90s, 10m)',
    (v) => {
      try {
        return parseDuration(v);
      } catch (err) {
        throw new InvalidArgumentError((err as Error).message);
      }
    },
    10 * 60_000,
  )
  .option(
    '--seed <n>',
    'seed of the fault sequence',
    (v) => {
      if (!/^\d+$/.test(v)) throw new InvalidArgumentError('a non-negative integer');
      return Number(v);
    },
    1,
  )
  .option('--settle <duration>', 'after the faults: how long a failover or failback in progress may take to finish', (v) => {
    try {
      return parseDuration(v);
    } catch (err) {
      throw new InvalidArgumentError((err as Error).message);
    }
  })
  .parse();

const opts = program.opts<{ duration: number; seed: number; settle?: number }>();
const controller = new AbortController();
let interrupts = 0;
process.on('SIGINT', () => {
  interrupts++;
  if (interrupts > 1) process.exit(130);
  process.stdout.write('chaos: interrupted, cleaning up (SIGINT again to exit at once)\n');
  controller.abort();
});
process.on('SIGTERM', () => controller.abort());

const started = Date.now();
try {
  const result = await runChaos({
    durationMs: opts.duration,
    seed: opts.seed,
    settleMs: opts.settle,
    signal: controller.signal,
    log: (line) => process.stdout.write(`${line}\n`),
  });
  if (result.violations.length) {
    process.stdout.write(`violations (${result.violations.length}):\n`);
    for (const v of result.violations) process.stdout.write(`  - ${v}\n`);
  }
  if (result.problems.length) {
    process.stdout.write(`problems (${result.problems.length}):\n`);
    for (const p of result.problems) process.stdout.write(`  - ${p}\n`);
  }
  process.stdout.write(
    `chaos duration_s=${result.durationS} faults=${result.faults} failovers=${result.failovers} violations=${result.violations.length} seed=${opts.seed}\n`,
  );
  process.exitCode = result.violations.length > 0 ? 1 : result.interrupted ? 130 : 0;
} catch (err) {
  process.stderr.write(`chaos: ${(err as Error).stack ?? String(err)}\n`);
  process.stdout.write(
    `chaos duration_s=${Math.round((Date.now() - started) / 1000)} faults=0 failovers=0 violations=0 seed=${opts.seed}\n`,
  );
  process.exitCode = 2;
}
// Whatever a library left behind (a socket, a timer) must not keep the process alive.
setTimeout(() => process.exit(), 2000).unref();
