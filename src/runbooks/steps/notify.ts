import { Type } from '@sinclair/typebox';
import { CLOSED_MID_RESPONSE, exchange, headerProblem, parseUrl, withUserAgent } from '../../net/http-request.js';
import { reasonOf } from '../../probers/types.js';
import { defineStep, type StepContext } from './types.js';

const USER_AGENT = 'continuity-runbook';
const SEVERITIES = ['info', 'warning', 'critical'] as const;
type Severity = (typeof SEVERITIES)[number];

/**
 * notify: tell people, through a webhook (a chat incoming webhook, an incident tool). Webhook URLs
 * often carry their secret in the path, so the URL never appears in a reason or in the output.
 */
export const notify = defineStep({
  description: 'Post a message to people through a webhook: a JSON event, or a Slack-compatible message.',
  settings: Type.Object(
    {
      url: Type.String({
        minLength: 1,
        description: 'The webhook URL (http:// or https://), usually a ${env:...} reference: it is a secret and never shown.',
      }),
      format: Type.Optional(
        Type.Union([Type.Literal('json'), Type.Literal('slack')], {
          default: 'json',
          description:
            'json (default): POST {execution, step, mode, severity, message, at}; slack: POST a Slack-compatible {text, blocks} (also what Mattermost and Rocket.Chat take).',
        }),
      ),
      message: Type.String({ minLength: 1, description: 'The message; templates are allowed.' }),
      severity: Type.Optional(
        Type.Union(
          SEVERITIES.map((s) => Type.Literal(s)),
          { default: 'info', description: 'info (default), warning or critical.' },
        ),
      ),
      headers: Type.Optional(
        Type.Record(Type.String(), Type.String(), {
          description: 'Extra request headers, e.g. Authorization with a ${env:...} reference. Values never appear in reasons.',
        }),
      ),
    },
    { additionalProperties: false },
  ),
  result: { status: 'int' },
  validate(s) {
    const problems: Array<[string, string]> = [];
    // A templated or secret-referencing URL is checked once resolved, at run time.
    if (!/\{\{|\$\{/.test(s.url) && parseUrl(s.url) === undefined) problems.push(['url', 'must be an absolute http:// or https:// URL']);
    for (const [name, value] of Object.entries(s.headers ?? {})) {
      const problem = headerProblem(name, value);
      if (problem) problems.push([`headers.${name}`, problem]);
    }
    return problems;
  },
  async run(s, ctx) {
    const url = parseUrl(s.url);
    if (url === undefined) return { ok: false, reason: 'the webhook url is not an absolute http:// or https:// URL', result: {} };
    for (const [name, value] of Object.entries(s.headers ?? {})) {
      const problem = headerProblem(name, value);
      if (problem) return { ok: false, reason: `header ${name} ${problem}`, result: {} };
    }
    const severity = s.severity ?? 'info';
    const payload = s.format === 'slack' ? slackPayload(s.message, severity, ctx) : jsonPayload(s.message, severity, ctx);
    const headers = { ...withUserAgent(s.headers ?? {}, USER_AGENT) };
    if (!Object.keys(headers).some((h) => h.toLowerCase() === 'content-type')) headers['content-type'] = 'application/json';
    const res = await exchange(url, { method: 'POST', headers, body: JSON.stringify(payload), ca: undefined, insecure: false }, ctx.signal);
    if ('error' in res) {
      if (ctx.signal.aborted) return { ok: false, reason: reasonOf(ctx.signal.reason), result: {} };
      // Only node's error code: the full message of some errors names the host or the path.
      const why = res.code ?? (res.error === CLOSED_MID_RESPONSE ? res.error : 'no answer');
      return { ok: false, reason: `webhook unreachable: ${why}`, result: {} };
    }
    const result = { status: res.status };
    if (res.status < 200 || res.status > 299) return { ok: false, reason: `webhook answered ${res.status}`, result };
    return { ok: true, result, output: `webhook answered ${res.status}` };
  },
});

function jsonPayload(message: string, severity: Severity, ctx: StepContext): Record<string, unknown> {
  return { execution: ctx.executionId, step: ctx.stepId, mode: ctx.mode, severity, message, at: new Date().toISOString() };
}

const SLACK_EMOJI: Record<Severity, string> = { info: ':information_source:', warning: ':warning:', critical: ':rotating_light:' };

/**
 * A Slack message: `text` is what notifications and clients without blocks show, the blocks the
 * same message laid out. A drill says so first, so nobody mistakes it for a real outage.
 */
function slackPayload(message: string, severity: Severity, ctx: StepContext): Record<string, unknown> {
  const drill = ctx.mode === 'live' ? '' : `[${ctx.mode.toUpperCase()}] `;
  const text = `${SLACK_EMOJI[severity]} ${drill}*${severity}*: ${slackEscape(message)}`;
  return {
    text,
    blocks: [
      { type: 'section', text: { type: 'mrkdwn', text } },
      {
        type: 'context',
        elements: [
          {
            type: 'mrkdwn',
            text: `execution \`${slackEscape(ctx.executionId)}\` · step \`${slackEscape(ctx.stepId)}\` · mode ${ctx.mode}`,
          },
        ],
      },
    ],
  };
}

/**
 * The three characters Slack's mrkdwn treats as control characters. Without this a message
 * rendered from an input could hold `<!channel>` and page everyone, or a disguised link.
 */
function slackEscape(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}
