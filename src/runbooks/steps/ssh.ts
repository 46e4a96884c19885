import { Type, type Static } from '@sinclair/typebox';
import { scrubSecrets, sshConnectionSettings, sshSecrets, validateSshConnection, withSshSession } from '../../net/ssh-client.js';
import { shellQuoteAll } from '../../probers/shell-quote.js';
import { reasonOf } from '../../probers/types.js';
import { commandResult, commandResultTypes, ExpectExitCode } from './exit-code.js';
import { defineStep, type StepResult } from './types.js';

const settings = Type.Object(
  {
    ...sshConnectionSettings,
    argv: Type.Optional(
      Type.Array(Type.String({ description: 'One argument; templates are allowed, the value is quoted whatever it holds.' }), {
        minItems: 1,
        description:
          'The program and its arguments, one element each. Each element is single-quoted into one word of the remote command line, so spaces, quotes, $ and ; in a value stay part of it. Set argv or command.',
      }),
    ),
    command: Type.Optional(
      Type.String({
        minLength: 1,
        description:
          "A fixed command line run by the remote user's shell, exactly as written (pipes, redirections). It may not contain templates: pass values through argv. Set argv or command.",
      }),
    ),
    expect_exit_code: ExpectExitCode,
  },
  { additionalProperties: false },
);

type Settings = Static<typeof settings>;

const TEMPLATE_IN_COMMAND = 'command may not contain templates; use argv so each value is quoted';

/**
 * ssh: run one command on a host over SSH, host key verified as the ssh prober does. No shell
 * string is ever built from inputs: `argv` elements are each quoted as one shell word, and a
 * literal `command` may hold no template.
 */
export const ssh = defineStep({
  description:
    'Run one command on a host over SSH (host key verified against known_hosts or a pinned key) and check its exit code; arguments given as a list are each quoted.',
  settings,
  result: { ...commandResultTypes },
  validate(s) {
    const problems = validateSshConnection(s);
    if ((s.argv === undefined) === (s.command === undefined)) problems.push(['', 'set exactly one of argv or command']);
    if (s.argv?.[0] === '') problems.push(['argv.0', 'the program may not be empty']);
    if (s.command?.includes('{{')) problems.push(['command', TEMPLATE_IN_COMMAND]);
    return problems;
  },
  async run(s, ctx) {
    const secrets = sshSecrets(s);
    const result = await runOverSsh(s, ctx).catch((err: unknown): StepResult => ({ ok: false, reason: reasonOf(err), result: {} }));
    return scrub(result, secrets);
  },
});

async function runOverSsh(s: Settings, ctx: { signal: AbortSignal; timeoutMs: number }): Promise<StepResult> {
  let line: string;
  let what: string;
  if (s.argv !== undefined && s.argv.length > 0) {
    try {
      line = shellQuoteAll(s.argv);
    } catch (err) {
      return { ok: false, reason: `argv: ${reasonOf(err)}`, result: {} };
    }
    what = s.argv[0]!;
  } else if (s.command !== undefined) {
    line = s.command;
    what = 'command';
  } else {
    return { ok: false, reason: 'set exactly one of argv or command', result: {} };
  }
  const outcome = await withSshSession(s, ctx, async (session) => ({ end: await session.exec(line), target: session.target }));
  if ('error' in outcome) return { ok: false, reason: outcome.error, result: {} };
  return commandResult(`${what} on ${outcome.value.target}`, outcome.value.end, s.expect_exit_code);
}

/** The result with every secret replaced, in case a server, a library or the command echoed one back. */
function scrub(r: StepResult, secrets: string[]): StepResult {
  if (secrets.length === 0) return r;
  const clean = (text: string) => scrubSecrets(text, secrets);
  const result = Object.fromEntries(Object.entries(r.result).map(([k, v]) => [k, typeof v === 'string' ? clean(v) : v]));
  return {
    ...r,
    result,
    ...(r.reason !== undefined ? { reason: clean(r.reason) } : {}),
    ...(r.output !== undefined ? { output: clean(r.output) } : {}),
  };
}
