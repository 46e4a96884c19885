import type { TSchema } from '@sinclair/typebox';
import { probers, proberKinds } from './probers/index.js';
import { ApprovalSettings } from './runbooks/schema.js';
import { stepKinds, stepKindNames } from './runbooks/steps/index.js';

/**
 * The probe reference in the README, generated from the registry's own schemas so it cannot drift
 * from what validation accepts (a test compares the README with this).
 */
function typeOf(s: TSchema): string {
  if (s.const !== undefined) return JSON.stringify(s.const);
  const members = (s.anyOf ?? s.oneOf) as TSchema[] | undefined;
  if (members) return members.map(typeOf).join(' | ');
  if (s.type === 'array') return `list of ${typeOf(s.items as TSchema)}`;
  if (s.type === 'object' && s.patternProperties) return 'map';
  if (s.type === 'integer') return 'integer';
  if (s.pattern && String(s.pattern).includes('ms|s|m|h|d')) return 'duration';
  return String(s.type ?? 'any');
}

function cell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

function rows(schema: TSchema, prefix: string, out: string[]): void {
  const required = new Set<string>((schema.required as string[] | undefined) ?? []);
  for (const [key, raw] of Object.entries((schema.properties ?? {}) as Record<string, TSchema>)) {
    const name = prefix + key;
    const dflt = raw.default !== undefined ? `\`${JSON.stringify(raw.default)}\`` : '';
    const isObject = raw.type === 'object' && raw.properties;
    out.push(
      `| \`${name}\` | ${cell(isObject ? 'object' : typeOf(raw))} | ${required.has(key) ? 'yes' : ''} | ${dflt} | ${cell(raw.description ?? '')} |`,
    );
    if (isObject) rows(raw, `${name}.`, out);
  }
}

/** Markdown for every probe kind: what it does, its settings, the values its conditions can use. */
export function probeReference(): string {
  const out: string[] = [];
  for (const kind of proberKinds) {
    const p = probers[kind];
    out.push(`### \`${kind}\``, '', p.description, '', '| setting | type | required | default | meaning |', '|---|---|---|---|---|');
    rows(p.settings as TSchema, '', out);
    out.push(
      '',
      `Observed (for \`conditions\`): ${Object.entries(p.observed)
        .map(([n, t]) => `\`${n}\` (${t})`)
        .join(', ')}.`,
      '',
    );
  }
  return out.join('\n');
}

/** Markdown for every runbook step kind, the approval gate included. */
export function stepReference(): string {
  const out: string[] = [];
  const kinds: Array<[string, { description: string; settings: unknown; result: Record<string, string> }]> = [
    ...stepKindNames.map((k) => [k, stepKinds[k]] as [string, { description: string; settings: unknown; result: Record<string, string> }]),
    [
      'approval',
      {
        description:
          'A gate: the execution parks (holding no worker) until a quorum of approvers approves this runbook version by its hash, someone denies (the rollback steps run), or the step timeout passes.',
        settings: ApprovalSettings,
        result: {},
      },
    ],
  ];
  for (const [kind, k] of kinds.sort(([a], [b]) => a.localeCompare(b))) {
    out.push(`### \`${kind}\``, '', k.description, '', '| setting | type | required | default | meaning |', '|---|---|---|---|---|');
    rows(k.settings as TSchema, '', out);
    const results = Object.entries(k.result).map(([n, t]) => `\`${n}\` (${t})`);
    out.push(
      '',
      results.length
        ? `Results (for \`outputs\`, as \`result.<name>\`): ${results.join(', ')}.`
        : 'Results: none (the step record keeps who approved).',
      '',
    );
  }
  return out.join('\n');
}
