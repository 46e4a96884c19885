import { Readable, Transform, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { Type, type Static } from '@sinclair/typebox';
import { listBackups, s3Client, s3ConnectionSettings, s3KeyPairIssues, scrub, sdkReason } from '../../probers/s3-backup.js';
import { failpoint } from '../../failpoints.js';
import { reasonOf } from '../../probers/types.js';
import { commandOutput, commandResult } from './exit-code.js';
import { runProgram, type ProgramEnd } from './shell.js';
import { defineStep, type StepContext, type StepResult } from './types.js';

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Errors of the stdin pipe when the restore command stops reading: its own exit code tells what happened. */
const PIPE_CLOSED = new Set(['EPIPE', 'ERR_STREAM_PREMATURE_CLOSE', 'ERR_STREAM_DESTROYED', 'ECONNRESET']);

const settings = Type.Object(
  {
    ...s3ConnectionSettings,
    key: Type.Optional(
      Type.String({
        description:
          "Key of the object to restore (templates allowed). An empty key counts as none, so a runbook can pass an optional input whose default is ''.",
      }),
    ),
    newest_under: Type.Optional(
      Type.String({
        description:
          'Restore the newest object under this key prefix (e.g. orders/; empty: the whole bucket), ignoring .sha256 sidecars. With a non-empty key as well, that key is restored and must lie under this prefix (a restore test picking one backup of the set).',
      }),
    ),
    decompress: Type.Optional(
      Type.Union([Type.Literal('auto'), Type.Literal('gzip'), Type.Literal('none')], {
        default: 'auto',
        description:
          'gzip: gunzip the object on its way into the command (streamed, never on disk); none: pass it as stored; auto (default): gzip when the key ends in .gz or .tgz.',
      }),
    ),
    argv: Type.Array(Type.String({ description: 'One argument, passed as is.' }), {
      minItems: 1,
      description:
        'The restore command and its arguments, one element each (e.g. [pg_restore, --no-owner, -d, scratch]); the object is streamed into its standard input. No shell is involved.',
    }),
    env: Type.Optional(
      Type.Record(Type.String(), Type.String(), {
        description:
          "Environment variables for the command (e.g. PGPASSWORD), on top of the daemon's own environment. CONTINUITY_EXECUTION_ID, CONTINUITY_STEP_ID and CONTINUITY_MODE are always set.",
      }),
    ),
  },
  { additionalProperties: false },
);

/** s3-restore: stream one object of an S3-compatible store into a restore command, never holding it in memory or on disk. */
export const s3Restore = defineStep({
  description:
    'Stream one object of an S3-compatible bucket (a key, or the newest under a prefix) into the standard input of a restore command such as pg_restore, and check its exit code.',
  settings,
  result: {
    key: 'string',
    bytes: 'int',
    total_bytes: 'int',
    last_modified: 'double',
    exit_code: 'int',
    stderr: 'string',
    seconds: 'double',
    download_seconds: 'double',
  },
  validate: problemsOf,
  async run(s, ctx) {
    const problems = problemsOf(s);
    if (problems.length > 0) return { ok: false, reason: problems.map(([at, msg]) => `${at}: ${msg}`).join('; '), result: {} };
    const secrets = [s.secret_access_key, s.access_key_id];
    const started = performance.now();
    const client = s3Client(s);
    try {
      let object: S3Object;
      try {
        const key = s.key ? s.key : await newestKey(client, s.bucket, s.newest_under ?? '', ctx.signal);
        const res = await client.send(new GetObjectCommand({ Bucket: s.bucket, Key: key }), { abortSignal: ctx.signal });
        if (!(res.Body instanceof Readable)) throw new Error(`reading ${key}: the S3 client returned no Node.js stream`);
        object = { key, where: `s3://${s.bucket}/${key}`, body: res.Body, totalBytes: res.ContentLength, lastModified: res.LastModified };
      } catch (err) {
        const reason = ctx.signal.aborted ? reasonOf(ctx.signal.reason) : sdkReason(err);
        return { ok: false, reason: scrub(reason, secrets), result: {} };
      }
      const decompress = s.decompress ?? 'auto';
      const gunzip = decompress === 'gzip' || (decompress === 'auto' && GZIP_KEY.test(object.key));
      return await restore(s.argv, s.env, object, gunzip, started, ctx, secrets);
    } finally {
      client.destroy();
    }
  },
});

/** Keys that decompress: auto gunzips. */
const GZIP_KEY = /\.(gz|tgz)$/i;

/** The object being restored, as GetObject answered. */
interface S3Object {
  key: string;
  /** s3://bucket/key, for reasons and output. */
  where: string;
  body: Readable;
  /** Its size as stored (ContentLength), when the store says. */
  totalBytes: number | undefined;
  lastModified: Date | undefined;
}

function problemsOf(s: Static<typeof settings>): Array<[string, string]> {
  const problems = s3KeyPairIssues(s);
  // An empty key is no key (the newest under newest_under is restored); an empty newest_under is the whole bucket.
  if (!s.key && s.newest_under === undefined) problems.push(['key', 'a non-empty key or newest_under is needed']);
  if (s.key && s.newest_under && !s.key.startsWith(s.newest_under))
    problems.push(['key', `${s.key} is not under ${s.newest_under} (newest_under): a key picked must belong to the backup set`]);
  if (s.argv[0] === '') problems.push(['argv.0', 'the program may not be empty']);
  for (const name of Object.keys(s.env ?? {})) {
    if (!ENV_NAME.test(name))
      problems.push([`env.${name}`, 'is not an environment variable name (letters, digits and _, not starting with a digit)']);
  }
  return problems;
}

async function newestKey(client: S3Client, bucket: string, prefix: string, signal: AbortSignal): Promise<string> {
  const newest = (await listBackups(client, bucket, prefix, signal))[0];
  if (!newest) throw new Error(`no object under s3://${bucket}/${prefix}`);
  return newest.Key!;
}

/** Where in the pipeline something went wrong first: the download, the gunzip, or the command's stdin. */
type Stage = 'source' | 'gunzip' | 'stdin';

/**
 * Pipes the body (gunzipped on the way when asked) into the command's stdin with backpressure; on
 * abort the pipeline destroys every part and runProgram kills the group.
 */
function restore(
  argv: string[],
  extraEnv: Record<string, string> | undefined,
  object: S3Object,
  gunzip: boolean,
  started: number,
  ctx: StepContext,
  secrets: Array<string | undefined>,
): Promise<StepResult> {
  const program = argv[0]!;
  const { key, where, body, totalBytes } = object;
  const total = totalBytes !== undefined ? { total: totalBytes } : {};
  let bytes = 0;
  let lastRead = started;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      const before = bytes;
      bytes += chunk.length;
      lastRead = performance.now();
      // Crash tests: the daemon dies with half the backup in the restore command.
      if (totalBytes && before < totalBytes / 2 && bytes >= totalBytes / 2) failpoint(`step:${ctx.stepId}:mid-stream`);
      ctx.progress?.({ activity: 'download', done: bytes, ...total, unit: 'bytes' });
      done(null, chunk);
    },
    flush(done) {
      // The last byte is read; what follows is the command working through what it was given.
      lastRead = performance.now();
      ctx.progress?.({ activity: 'restore', done: bytes, ...total, unit: 'bytes' });
      done();
    },
  });
  const inflate = gunzip ? createGunzip() : undefined;
  // A failing part makes the pipeline destroy the others with the same error, so the first one to fail is the origin.
  let failure: { at: Stage; err: unknown } | undefined;
  const origin = (at: Stage) => (err: unknown) => (failure ??= { at, err });
  body.on('error', origin('source'));
  inflate?.on('error', origin('gunzip'));
  const feed = (stdin: Writable) => {
    stdin.on('error', origin('stdin'));
    return inflate
      ? pipeline(body, counter, inflate, stdin, { signal: ctx.signal })
      : pipeline(body, counter, stdin, { signal: ctx.signal });
  };
  const env = {
    ...process.env,
    ...extraEnv,
    CONTINUITY_EXECUTION_ID: ctx.executionId,
    CONTINUITY_STEP_ID: ctx.stepId,
    CONTINUITY_MODE: ctx.mode,
  };
  const streamed = () => ({
    key,
    bytes,
    ...(totalBytes !== undefined ? { total_bytes: totalBytes } : {}),
    ...(object.lastModified ? { last_modified: object.lastModified.getTime() / 1000 } : {}),
    seconds: (performance.now() - started) / 1000,
    download_seconds: (lastRead - started) / 1000,
  });
  const finished = (end: ProgramEnd): StepResult => {
    const base = commandResult(program, { ...end, stderr: errorLineFirst(end.stderr) }, 0);
    const result = { ...streamed(), stderr: end.stderr, ...(end.code !== null ? { exit_code: end.code } : {}) };
    const output =
      `${where}: ${bytes} bytes streamed into ${program}${gunzip ? ', gunzipped' : ''}\n${commandOutput(end.stdout, end.stderr)}`.trimEnd();
    // A rejected pipeline whose parts emitted no error (a premature close) is the command's stdin closing.
    const trouble = failure ?? (end.stdinError !== undefined ? { at: 'stdin' as const, err: end.stdinError } : undefined);
    // A command that stops reading is not the stream's failure: its own exit code tells what happened.
    // (tar stops at its end-of-archive marker, before the gzip trailer: the gunzip then sees a premature
    // close from downstream; a real gunzip failure is a zlib error such as Z_DATA_ERROR.)
    const closedBelow = (trouble?.at === 'stdin' || trouble?.at === 'gunzip') && PIPE_CLOSED.has(codeOf(trouble.err));
    if (!trouble || closedBelow) return { ...base, result, output };
    const why = scrub(sdkReason(trouble.err), secrets);
    const what = {
      source: `reading ${where} failed`,
      gunzip: `gunzip of ${where} failed`,
      stdin: `writing into ${program} failed`,
    }[trouble.at];
    const tool = base.ok ? '' : `; ${base.reason}`;
    return { ok: false, reason: `${what} after ${bytes} bytes: ${why}${tool}`, result, output };
  };
  return runProgram(program, argv.slice(1), { env, cwd: undefined, stdin: feed }, ctx.signal, finished).then((r) =>
    // An abort or a spawn failure: still say what was streamed.
    r.result.key === undefined ? { ...r, result: { ...r.result, ...streamed() } } : r,
  );
}

/**
 * The mysql client's error (`ERROR 1064 (42000) at line 40: ...`) may follow warnings or, with
 * MariaDB, the failing statement: it is put first, so a failure's reason quotes it.
 */
function errorLineFirst(stderr: string): string {
  const line = /^ERROR \d+ \([0-9A-Z]{5}\).*$/m.exec(stderr)?.[0];
  return line && !stderr.startsWith(line) ? `${line}\n${stderr}` : stderr;
}

function codeOf(err: unknown): string {
  return (err as { code?: string } | null)?.code ?? '';
}
