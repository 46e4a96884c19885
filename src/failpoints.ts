/**
 * Failpoints for crash tests, as etcd's gofail: `CONTINUITY_FAILPOINTS=step:promote:after-run`
 * makes the process kill itself (SIGKILL, no cleanup) when it reaches that point. Off unless the
 * variable is set; the names are listed where failpoint() is called.
 */
const armed = new Set(
  (process.env.CONTINUITY_FAILPOINTS ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean),
);

export function failpoint(name: string): void {
  if (armed.size > 0 && armed.has(name)) process.kill(process.pid, 'SIGKILL');
}
