/**
 * `node --import tsx test/lab/cli.ts up [--async] [--redis-db N]`: starts a lab (test/lab/lab.ts),
 * prints its addresses as JSON on stdout, and keeps it up until Ctrl-C or SIGTERM, then stops it
 * and removes its folders. Another Ctrl-C more than 2 s later exits at once (the exit handlers
 * still kill the lab's processes and remove its folders).
 */
import { performance } from 'node:perf_hooks';
import { startLab, type LabOptions } from './lab.js';

const USAGE = 'usage: node --import tsx test/lab/cli.ts up [--async] [--redis-db N]';

function parse(args: string[]): LabOptions | string {
  const [command, ...rest] = args;
  if (command !== 'up') return USAGE;
  const opts: LabOptions = {};
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i];
    if (arg === '--async') opts.synchronous = false;
    else if (arg === '--redis-db') {
      const db = Number(rest[++i]);
      if (!Number.isInteger(db) || db < 0 || db > 15) return `--redis-db takes a database number 0-15\n${USAGE}`;
      opts.redisDb = db;
    } else return `unknown argument ${arg}\n${USAGE}`;
  }
  return opts;
}

async function main(): Promise<void> {
  const opts = parse(process.argv.slice(2));
  if (typeof opts === 'string') {
    process.stderr.write(`${opts}\n`);
    process.exit(2);
  }
  const t0 = performance.now();
  const lab = await startLab(opts);
  process.stdout.write(`${JSON.stringify(lab.addresses(), null, 2)}\n`);
  process.stderr.write(`lab: up in ${Math.round(performance.now() - t0)} ms; Ctrl-C or SIGTERM stops it\n`);

  let stoppingSince: number | undefined;
  const stop = (signal: NodeJS.Signals) => {
    if (stoppingSince !== undefined) {
      // The same signal often arrives twice (to the process and to its group, as timeout(1) sends it).
      if (Date.now() - stoppingSince > 2000) process.exit(130);
      return;
    }
    stoppingSince = Date.now();
    process.stderr.write(`lab: ${signal}, stopping\n`);
    lab.stop().then(
      () => {
        process.stderr.write('lab: stopped, folders removed\n');
        process.exit(0);
      },
      (err: unknown) => {
        process.stderr.write(`lab: ${err instanceof Error ? err.message : String(err)}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`lab: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
