import { createRequire } from 'node:module';

/**
 * Drivers that only some probes and runbook steps need, loaded the first time one of those runs
 * instead of when the daemon starts: each costs megabytes of heap and code a daemon without such
 * probes never uses. Each is loaded once and cached; a failed load is not cached (the next call
 * tries again and throws the same error).
 *
 * The one copy: mysql2 is CommonJS only, so `require` here and any `import` elsewhere share
 * Node's CommonJS cache. node-ssh ships an ESM and a CommonJS build: it is only ever loaded
 * through `import()` (its ESM build, as a static import would), never required.
 */

const require = createRequire(import.meta.url);

/** A loader that runs `load` on its first call and returns the same value ever after. */
function once<T>(load: () => T): () => T {
  let loaded: { value: T } | undefined;
  return () => (loaded ??= { value: load() }).value;
}

/** mysql2, synchronously (openMysql() hands back a connection at once). */
export const mysql2 = once(() => require('mysql2') as typeof import('mysql2'));

let nodeSshLoading: Promise<typeof import('node-ssh')> | undefined;

/** node-ssh (its ESM build). */
export function nodeSsh(): Promise<typeof import('node-ssh')> {
  nodeSshLoading ??= import('node-ssh').catch((err: unknown) => {
    nodeSshLoading = undefined;
    throw err;
  });
  return nodeSshLoading;
}
