import type { StepKind } from './types.js';
import { haproxy } from './haproxy.js';
import { http } from './http.js';
import { notify } from './notify.js';
import { s3Restore } from './s3-restore.js';
import { shell } from './shell.js';
import { sleep } from './sleep.js';
import { sql } from './sql.js';
import { ssh } from './ssh.js';
import { wait } from './wait.js';

/**
 * The registry of step kinds, one file each. `approval` is not here: it is a gate the executor
 * itself handles (it parks the execution instead of running anything).
 */
export const stepKinds = {
  haproxy,
  http,
  notify,
  's3-restore': s3Restore,
  shell,
  sleep,
  sql,
  ssh,
  wait,
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- each kind has its own settings type
} satisfies Record<string, StepKind<any>>;

export type StepKindName = keyof typeof stepKinds;
export const stepKindNames = Object.keys(stepKinds).sort() as StepKindName[];
