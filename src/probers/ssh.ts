import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Type, type Static } from '@sinclair/typebox';
import { OUTPUT_LIMIT } from '../capped-output.js';
import {
  scrubSecrets,
  sshConnectionSettings,
  sshSecrets,
  validateSshConnection,
  withSshSession,
  type SshExecResult,
  type SshSession,
} from '../net/ssh-client.js';
import { shellQuote, shellQuoteAll } from './shell-quote.js';
import { defineProber, reasonOf, type Observation, type ProbeContext } from './types.js';

/** stdout and stderr kept of a remote command; the rest is read and dropped so a chatty command cannot fill memory. */
export const SSH_OUTPUT_LIMIT = OUTPUT_LIMIT;

const CHECK_KINDS = ['command', 'disk', 'load', 'memory', 'systemd_unit', 'integrity'] as const;
const EXACTLY_ONE_CHECK = `must set exactly one of: ${CHECK_KINDS.join(', ')}`;

const MaxUsedPercent = (what: string) =>
  Type.Optional(
    Type.Number({
      minimum: 0,
      maximum: 100,
      default: 90,
      description: `Fail when more than this percentage of the ${what} is used (default 90).`,
    }),
  );

const check = Type.Object(
  {
    command: Type.Optional(
      Type.String({
        minLength: 1,
        description:
          "A command line run by the remote user's shell, exactly as written here. Observed: exit_code, stdout, stderr (trailing whitespace removed, each cut to 64 KiB). Succeeds when it exits with expect_exit_code.",
      }),
    ),
    disk: Type.Optional(
      Type.Object(
        {
          path: Type.String({ minLength: 1, description: 'A path on the filesystem to check (e.g. /var/lib/postgresql).' }),
          max_used_percent: MaxUsedPercent('filesystem'),
        },
        { additionalProperties: false, description: 'Filesystem usage from `df -P -k`. Observed: disk_used_percent, disk_free_bytes.' },
      ),
    ),
    load: Type.Optional(
      Type.Object(
        {
          max_load1_per_cpu: Type.Optional(
            Type.Number({
              exclusiveMinimum: 0,
              default: 2,
              description: 'Fail when the 1-minute load average divided by the CPU count exceeds this (default 2).',
            }),
          ),
        },
        {
          additionalProperties: false,
          description: 'Load average from /proc/loadavg and nproc (Linux). Observed: load1, load5, load15, cpus.',
        },
      ),
    ),
    memory: Type.Optional(
      Type.Object(
        { max_used_percent: MaxUsedPercent('memory') },
        {
          additionalProperties: false,
          description:
            'Memory use from /proc/meminfo (Linux): used is MemTotal minus MemAvailable. Observed: memory_used_percent, memory_available_bytes.',
        },
      ),
    ),
    systemd_unit: Type.Optional(
      Type.String({
        minLength: 1,
        description: 'A systemd unit (e.g. nginx.service) that must be active, per `systemctl is-active`. Observed: unit_state.',
      }),
    ),
    integrity: Type.Optional(
      Type.Object(
        {
          files: Type.Array(
            Type.String({ pattern: '^/', errorMessage: 'must be an absolute path', description: 'An absolute path on the remote host.' }),
            {
              minItems: 1,
              uniqueItems: true,
              description: 'Files whose SHA-256 must not change (binaries, configs, canary files).',
            },
          ),
          baseline: Type.Optional(
            Type.Record(
              Type.String(),
              Type.String({ pattern: '^[0-9a-fA-F]{64}$', errorMessage: 'is not a SHA-256 hash (64 hex digits)' }),
              {
                description:
                  'The expected SHA-256 (hex) of every listed file. Without it the first successful run records the hashes in the state folder and later runs compare with those; delete that record to accept a change.',
              },
            ),
          ),
        },
        {
          additionalProperties: false,
          description:
            'File integrity: SHA-256 of each file (`sha256sum`) compared with a baseline. Fails on a changed, missing or unreadable file. Observed: changed_files, files_checked.',
        },
      ),
    ),
  },
  {
    additionalProperties: false,
    minProperties: 1,
    maxProperties: 1,
    errorMessage: EXACTLY_ONE_CHECK,
    description: `What to check on the host: exactly one of ${CHECK_KINDS.join(', ')}.`,
  },
);

const settings = Type.Object(
  {
    ...sshConnectionSettings,
    expect_exit_code: Type.Optional(
      // No schema default: the loader fills defaults in before validate(), which allows this only with a command.
      Type.Integer({ minimum: 0, maximum: 255, description: 'With check.command: the exit code that means success (default 0).' }),
    ),
    check,
  },
  { additionalProperties: false },
);

type Settings = Static<typeof settings>;
type Check = Settings['check'];

/** What a check needs: a way to run a command on the host, and where it is for messages. */
type Remote = Pick<SshSession, 'exec' | 'target'>;

type CheckResult = Omit<Observation, 'observed'> & { observed?: Record<string, unknown> };

/** ssh: log in with a key or password, verify the host key, and check one thing on the host. */
export const ssh = defineProber({
  description:
    "Log in over SSH (host key verified against known_hosts or a pinned key) and check one thing: a command's exit code and output, disk, load, memory, a systemd unit, or file integrity against a baseline.",
  settings,
  observed: {
    connect_seconds: 'double',
    exit_code: 'int',
    stdout: 'string',
    stderr: 'string',
    disk_used_percent: 'double',
    disk_free_bytes: 'int',
    load1: 'double',
    load5: 'double',
    load15: 'double',
    cpus: 'int',
    memory_used_percent: 'double',
    memory_available_bytes: 'int',
    unit_state: 'string',
    changed_files: 'list',
    files_checked: 'int',
  },
  validate(s) {
    const problems = validateSshConnection(s);
    const kinds = CHECK_KINDS.filter((k) => s.check[k] !== undefined);
    if (kinds.length !== 1) problems.push(['check', `${EXACTLY_ONE_CHECK}${kinds.length ? ` (found ${kinds.join(', ')})` : ''}`]);
    if (s.expect_exit_code !== undefined && s.check.command === undefined)
      problems.push(['expect_exit_code', 'only applies to check.command']);
    const integrity = s.check.integrity;
    if (integrity?.baseline) {
      const missing = integrity.files.filter((f) => integrity.baseline![f] === undefined);
      const extra = Object.keys(integrity.baseline).filter((f) => !integrity.files.includes(f));
      if (missing.length) problems.push(['check.integrity.baseline', `has no hash for ${missing.join(', ')}`]);
      if (extra.length) problems.push(['check.integrity.baseline', `has hashes for files not in files: ${extra.join(', ')}`]);
    }
    return problems;
  },
  async run(s, ctx) {
    const secrets = sshSecrets(s);
    const result = await probeOverSsh(s, ctx).catch((err: unknown): Observation => ({ ok: false, reason: reasonOf(err), observed: {} }));
    return scrub(result, secrets);
  },
});

async function probeOverSsh(s: Settings, ctx: ProbeContext): Promise<Observation> {
  const outcome = await withSshSession(s, ctx, async (session): Promise<Observation> => {
    const result = await runCheck(s.check, s, session, ctx);
    return {
      ok: result.ok,
      ...(result.reason ? { reason: result.reason } : {}),
      observed: { connect_seconds: session.connectSeconds, ...result.observed },
    };
  });
  return 'error' in outcome ? { ok: false, reason: outcome.error, observed: {} } : outcome.value;
}

/** The reason for a helper command (df, sha256sum, ...) that did not exit 0. */
function toolFailed(tool: string, r: SshExecResult, remote: Remote): string {
  if (r.code === 127) return `${tool} is not available on ${remote.target}: ${firstLine(r.stderr) || 'command not found'}`;
  const how = r.code !== null ? `exit code ${r.code}` : `signal ${r.signal ?? 'unknown'}`;
  const said = firstLine(r.stderr) || firstLine(r.stdout);
  return `${tool} failed on ${remote.target} (${how})${said ? `: ${said}` : ''}`;
}

function firstLine(text: string): string {
  const line = text.trim().split('\n')[0] ?? '';
  return line.length > 200 ? line.slice(0, 200) + '…' : line;
}

function runCheck(c: Check, s: Settings, remote: Remote, ctx: ProbeContext): Promise<CheckResult> {
  if (c.command !== undefined) return commandCheck(c.command, s.expect_exit_code ?? 0, remote);
  if (c.disk) return diskCheck(c.disk.path, c.disk.max_used_percent ?? 90, remote);
  if (c.load) return loadCheck(c.load.max_load1_per_cpu ?? 2, remote);
  if (c.memory) return memoryCheck(c.memory.max_used_percent ?? 90, remote);
  if (c.systemd_unit !== undefined) return unitCheck(c.systemd_unit, remote);
  if (c.integrity) return integrityCheck(c.integrity, remote, ctx);
  return Promise.resolve({ ok: false, reason: `check ${EXACTLY_ONE_CHECK}` });
}

async function commandCheck(command: string, expected: number, remote: Remote): Promise<CheckResult> {
  const r = await remote.exec(command);
  const observed = { stdout: r.stdout, stderr: r.stderr, ...(r.code !== null ? { exit_code: r.code } : {}) };
  if (r.code === null) {
    return { ok: false, reason: `command ended without an exit code${r.signal ? ` (killed by signal ${r.signal})` : ''}`, observed };
  }
  if (r.code !== expected) {
    const said = firstLine(r.stderr) || firstLine(r.stdout);
    return { ok: false, reason: `command exited with code ${r.code}, expected ${expected}${said ? `: ${said}` : ''}`, observed };
  }
  return { ok: true, observed };
}

async function diskCheck(path: string, maxUsed: number, remote: Remote): Promise<CheckResult> {
  const r = await remote.exec(`df -P -k -- ${shellQuote(path)}`);
  if (r.code !== 0) return { ok: false, reason: toolFailed('df', r, remote) };
  // POSIX format: "Filesystem 1024-blocks Used Available Capacity Mounted-on", one line per filesystem.
  const m = /\s(\d+)\s+(\d+)\s+(\d+)\s+\d+%\s+(.*)$/.exec(r.stdout.split('\n').pop() ?? '');
  if (!m) return { ok: false, reason: `cannot read the output of df: ${firstLine(r.stdout.split('\n').pop() ?? '')}` };
  const used = Number(m[2]);
  const available = Number(m[3]);
  // As df computes its Capacity column, but unrounded: reserved blocks count as neither.
  const percent = used + available > 0 ? (used / (used + available)) * 100 : 0;
  const observed = { disk_used_percent: percent, disk_free_bytes: available * 1024 };
  if (percent > maxUsed) {
    return {
      ok: false,
      reason: `disk at ${path} (mounted on ${m[4]}) is ${percent.toFixed(1)}% used, above the ${maxUsed}% limit (${formatBytes(available * 1024)} free)`,
      observed,
    };
  }
  return { ok: true, observed };
}

async function loadCheck(maxPerCpu: number, remote: Remote): Promise<CheckResult> {
  const r = await remote.exec('cat /proc/loadavg && { nproc 2>/dev/null || getconf _NPROCESSORS_ONLN; }');
  if (r.code !== 0) return { ok: false, reason: toolFailed('cat /proc/loadavg', r, remote) };
  const [loadavg = '', nproc = ''] = r.stdout.split('\n');
  const [load1, load5, load15] = loadavg.trim().split(/\s+/).slice(0, 3).map(Number);
  const cpus = Number(nproc.trim());
  if (![load1, load5, load15].every((n) => n !== undefined && Number.isFinite(n)) || !Number.isInteger(cpus) || cpus < 1) {
    return { ok: false, reason: `cannot read the load average: ${JSON.stringify(firstLine(r.stdout))}` };
  }
  const observed = { load1, load5, load15, cpus };
  const perCpu = load1! / cpus;
  if (perCpu > maxPerCpu) {
    return {
      ok: false,
      reason: `load ${load1} on ${cpus} CPU${cpus === 1 ? '' : 's'} is ${perCpu.toFixed(2)} per CPU, above the limit of ${maxPerCpu}`,
      observed,
    };
  }
  return { ok: true, observed };
}

async function memoryCheck(maxUsed: number, remote: Remote): Promise<CheckResult> {
  const r = await remote.exec('cat /proc/meminfo');
  if (r.code !== 0) return { ok: false, reason: toolFailed('cat /proc/meminfo', r, remote) };
  const kib = (field: string) => {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(r.stdout);
    return m ? Number(m[1]) : undefined;
  };
  const total = kib('MemTotal');
  const available = kib('MemAvailable');
  if (!total || available === undefined) {
    return { ok: false, reason: '/proc/meminfo has no MemTotal and MemAvailable (MemAvailable needs Linux 3.14 or later)' };
  }
  const percent = ((total - available) / total) * 100;
  const observed = { memory_used_percent: percent, memory_available_bytes: available * 1024 };
  if (percent > maxUsed) {
    return {
      ok: false,
      reason: `memory is ${percent.toFixed(1)}% used, above the ${maxUsed}% limit (${formatBytes(available * 1024)} available)`,
      observed,
    };
  }
  return { ok: true, observed };
}

async function unitCheck(unit: string, remote: Remote): Promise<CheckResult> {
  // sd_booted()'s test: systemctl may be installed where systemd is not PID 1 (containers), and
  // then prints nothing to stdout, which would read as a mysterious empty state.
  const booted = await remote.exec('test -d /run/systemd/system');
  if (booted.code !== 0) {
    return { ok: false, reason: `systemd is not running on ${remote.target} (no /run/systemd/system), so unit ${unit} cannot be checked` };
  }
  const r = await remote.exec(`systemctl is-active -- ${shellQuote(unit)}`);
  const state = firstLine(r.stdout);
  if (!state) return { ok: false, reason: toolFailed('systemctl is-active', r, remote) };
  if (state !== 'active') return { ok: false, reason: `unit ${unit} is ${state}`, observed: { unit_state: state } };
  return { ok: true, observed: { unit_state: state } };
}

/** What the integrity check keeps between runs, per probe. */
interface IntegrityRecord {
  /** `user@host` or `user@[host]:port` the hashes were taken on: a probe pointed elsewhere starts afresh. */
  target: string;
  recorded_at: string;
  files: Record<string, string>;
}

async function integrityCheck(c: NonNullable<Check['integrity']>, remote: Remote, ctx: ProbeContext): Promise<CheckResult> {
  const r = await remote.exec(`sha256sum -- ${shellQuoteAll(c.files)}`);
  // sha256sum exits 1 when some file is unreadable but still hashes the others; 127 and the like mean no tool.
  if (r.code !== 0 && r.code !== 1) return { ok: false, reason: toolFailed('sha256sum', r, remote) };
  const hashes = parseSha256sum(r.stdout);
  const unreadable = c.files.filter((f) => !hashes.has(f));

  let baseline: Record<string, string>;
  if (c.baseline) {
    baseline = Object.fromEntries(Object.entries(c.baseline).map(([f, h]) => [f, h.toLowerCase()]));
  } else {
    const recorded = await loadRecord(ctx, remote.target);
    if ('error' in recorded) return { ok: false, reason: recorded.error };
    baseline = recorded.files;
    // Trust on first sight, file by file: a file newly added to the list is recorded now, while a
    // changed file keeps its old hash so the alarm stays until someone deals with it.
    const next: Record<string, string> = {};
    for (const f of c.files) {
      const hash = baseline[f] ?? hashes.get(f);
      if (hash !== undefined) next[f] = hash;
    }
    if (JSON.stringify(next) !== JSON.stringify(baseline))
      await saveRecord(ctx, { target: remote.target, recorded_at: new Date().toISOString(), files: next });
    baseline = next;
  }

  const changed = c.files.filter((f) => hashes.has(f) && baseline[f] !== undefined && hashes.get(f) !== baseline[f]);
  const observed = { changed_files: c.files.filter((f) => changed.includes(f) || unreadable.includes(f)), files_checked: hashes.size };
  const problems: string[] = [];
  if (changed.length) problems.push(`${count(changed.length, 'file')} changed since the baseline: ${list(changed)}`);
  if (unreadable.length) {
    const why = unreadable.map((f) => `${f} (${sha256sumError(r.stderr, f)})`);
    problems.push(`${count(unreadable.length, 'file')} could not be read: ${list(why)}`);
  }
  if (problems.length) return { ok: false, reason: problems.join('; '), observed };
  return { ok: true, observed };
}

/** Path -> hash from sha256sum output; GNU escapes names with a backslash or newline and marks the line with `\`. */
function parseSha256sum(stdout: string): Map<string, string> {
  const hashes = new Map<string, string>();
  for (const line of stdout.split('\n')) {
    const m = /^(\\?)([0-9a-fA-F]{64}) [ *](.*)$/.exec(line);
    if (!m) continue;
    const name = m[1] ? m[3]!.replace(/\\(.)/g, (_, ch: string) => (ch === 'n' ? '\n' : ch === 'r' ? '\r' : ch)) : m[3]!;
    hashes.set(name, m[2]!.toLowerCase());
  }
  return hashes;
}

/** sha256sum's complaint about one file (`sha256sum: /x: No such file or directory` -> `No such file or directory`). */
function sha256sumError(stderr: string, file: string): string {
  // GNU quotes unusual names in messages: 'a b', "it's", or shell-style when both kinds are needed.
  const names = [file, `'${file}'`, `"${file}"`, shellQuote(file)];
  const lines = stderr.split('\n');
  for (const name of names) {
    const prefix = `sha256sum: ${name}: `;
    const line = lines.find((l) => l.startsWith(prefix));
    if (line) return line.slice(prefix.length);
  }
  return 'missing or unreadable';
}

function recordPath(ctx: ProbeContext): string {
  return join(ctx.stateDir, 'ssh-integrity', `${encodeURIComponent(ctx.probeId)}.json`);
}

async function loadRecord(ctx: ProbeContext, target: string): Promise<{ files: Record<string, string> } | { error: string }> {
  const path = recordPath(ctx);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { files: {} };
    return { error: `cannot read the integrity baseline: ${reasonOf(err)}` };
  }
  // A damaged record is an error, not a reason to record afresh: that would accept whatever the files hold now.
  try {
    const record = JSON.parse(text) as IntegrityRecord;
    if (typeof record.files !== 'object' || record.files === null) throw new Error('no "files" in it');
    return record.target === target ? { files: record.files } : { files: {} };
  } catch (err) {
    return { error: `the integrity baseline ${path} is damaged (${reasonOf(err)}); delete it to record a new one` };
  }
}

async function saveRecord(ctx: ProbeContext, record: IntegrityRecord): Promise<void> {
  const path = recordPath(ctx);
  await mkdir(join(ctx.stateDir, 'ssh-integrity'), { recursive: true });
  // Written aside and renamed, so a crash mid-write never leaves a half baseline behind.
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify(record, null, 2) + '\n');
  await rename(tmp, path);
}

function count(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? '' : 's'}`;
}

/** A list for a reason: the first ten, then how many more. */
function list(items: string[]): string {
  return items.length <= 10 ? items.join(', ') : `${items.slice(0, 10).join(', ')} and ${items.length - 10} more`;
}

function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

/** The observation with every secret replaced, in case a server or library echoed one back. */
function scrub(o: Observation, secrets: string[]): Observation {
  if (secrets.length === 0) return o;
  const clean = (text: string) => scrubSecrets(text, secrets);
  const observed = Object.fromEntries(Object.entries(o.observed).map(([k, v]) => [k, typeof v === 'string' ? clean(v) : v]));
  return { ...o, ...(o.reason !== undefined ? { reason: clean(o.reason) } : {}), observed };
}
