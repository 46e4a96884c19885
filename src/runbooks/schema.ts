import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { Duration } from '../config/schema.js';
import { stepKinds, stepKindNames } from './steps/index.js';

/**
 * The shape of a runbook file, runbooks/<name>/v<N>.yaml: one file per version, immutable once
 * loaded. Validation, defaults and the JSON Schema come from here, as for the config.
 */
const NAME_PATTERN = '^[a-z0-9][a-z0-9-]{0,62}$';
const STEP_ID_PATTERN = '^[a-z][a-z0-9_]{0,62}$';
const INPUT_PATTERN = '^[a-z_][a-z0-9_]{0,62}$';

/** The approval gate's settings: who may approve, how many, and what happens at the time limit. */
export const ApprovalSettings = Type.Object(
  {
    roles: Type.Optional(
      Type.Array(Type.String({ minLength: 1 }), {
        minItems: 1,
        default: ['approver'],
        description: 'Roles whose holders may approve or deny (an admin may always).',
      }),
    ),
    quorum: Type.Optional(Type.Integer({ minimum: 1, maximum: 10, default: 1, description: 'Distinct approvers needed.' })),
    on_timeout: Type.Optional(
      Type.Union([Type.Literal('abort'), Type.Literal('escalate')], {
        default: 'abort',
        description: 'At the step timeout: abort the execution, or escalate (notify again) and keep waiting for another timeout.',
      }),
    ),
    escalate_to: Type.Optional(Type.String({ description: 'Webhook URL told when the approval escalates (a ${env:...} reference).' })),
    message: Type.Optional(Type.String({ description: 'What the approver is asked, shown with the inputs and the data at risk.' })),
  },
  { additionalProperties: false },
);

/** An input the runbook takes when it is started. */
export const InputSchema = Type.Object(
  {
    type: Type.Union(
      [Type.Literal('string'), Type.Literal('integer'), Type.Literal('number'), Type.Literal('boolean'), Type.Literal('secret')],
      {
        description:
          'secret: the value is a ${env:...} or ${file:...} reference, resolved only when a step runs and never stored resolved.',
      },
    ),
    required: Type.Optional(Type.Boolean({ default: false, description: 'The execution cannot start without it.' })),
    default: Type.Optional(Type.Union([Type.String(), Type.Number(), Type.Boolean()], { description: 'Value when none is given.' })),
    pattern: Type.Optional(Type.String({ description: 'string and secret: a regular expression the value must match.' })),
    enum: Type.Optional(Type.Array(Type.Union([Type.String(), Type.Number()]), { description: 'The allowed values.' })),
    description: Type.Optional(Type.String({ description: 'What the input means, shown to the person starting and approving.' })),
  },
  { additionalProperties: false },
);

const stepCommon = {
  id: Type.String({
    pattern: STEP_ID_PATTERN,
    description: 'Step id, unique in the runbook; templates and conditions refer to it.',
    errorMessage: 'must be lower-case letters, digits and "_", starting with a letter (CEL and templates read it)',
  }),
  kind: Type.Union(
    [...stepKindNames, 'approval'].map((k) => Type.Literal(k)),
    {
      description: 'What the step does; its settings go under a key of the same name.',
    },
  ),
  description: Type.Optional(Type.String({ description: 'What the step does, for the timeline and the approver.' })),
  timeout: Duration('The step fails when it takes longer (for an approval: the time limit).'),
  idempotent: Type.Optional(
    Type.Boolean({
      default: false,
      description:
        'Running it twice is harmless. Only idempotent steps are retried, and re-run after a crash; a non-idempotent step that started without a recorded result waits for an operator.',
    }),
  ),
  retries: Type.Optional(
    Type.Object(
      {
        max: Type.Integer({ minimum: 1, maximum: 20, description: 'Further attempts after a failure.' }),
        backoff: Type.Optional(Duration('Wait before the first retry; doubled before each next one.', { default: '1s' })),
      },
      { additionalProperties: false, description: 'Retries on failure; allowed only on idempotent steps.' },
    ),
  ),
  when: Type.Optional(Type.String({ minLength: 1, description: 'CEL over `inputs` and `steps`: the step runs only when true.' })),
  stage: Type.Optional(
    Type.String({
      pattern: '^[a-z][a-z0-9_]{0,31}$',
      description:
        'A name grouping steps for timing (a restore test times prepare, restore, validate and cleanup apart, and counts cleanup out of its RTO).',
    }),
  ),
  on_failure: Type.Optional(
    Type.Union([Type.Literal('abort'), Type.Literal('continue'), Type.Literal('rollback')], {
      default: 'abort',
      description: 'abort the execution, continue with the next step, or run the rollback steps and stop.',
    }),
  ),
  drill: Type.Optional(
    Type.Union(
      [
        Type.Literal('run'),
        Type.Literal('skip'),
        Type.Object(
          { inputs: Type.Record(Type.String({ pattern: INPUT_PATTERN }), Type.Union([Type.String(), Type.Number(), Type.Boolean()])) },
          { additionalProperties: false },
        ),
      ],
      { default: 'run', description: 'In a drill: run, skip, or run with these inputs instead (e.g. a test endpoint).' },
    ),
  ),
  outputs: Type.Optional(
    Type.Record(Type.String({ pattern: INPUT_PATTERN }), Type.String({ minLength: 1 }), {
      description: "Values kept for later steps, each a CEL expression over `result` (the step kind's raw result).",
    }),
  ),
};

/** The step envelope for validation; kind settings are checked separately against their kind. */
export const StepEnvelopeSchema = Type.Object(
  {
    ...stepCommon,
    ...Object.fromEntries([...stepKindNames, 'approval'].map((k) => [k, Type.Optional(Type.Unknown())])),
  },
  { additionalProperties: false },
);

/** Where a webhook is told about the execution's events. */
export const NotificationSchema = Type.Object(
  {
    url: Type.String({ minLength: 1, description: 'Webhook URL (a ${env:...} reference: URLs often carry tokens).' }),
    format: Type.Optional(Type.Union([Type.Literal('json'), Type.Literal('slack')], { default: 'json', description: 'Payload shape.' })),
    events: Type.Optional(
      Type.Array(
        Type.Union(
          ['started', 'approval_needed', 'step_failed', 'awaiting_decision', 'succeeded', 'failed', 'aborted'].map((e) => Type.Literal(e)),
        ),
        { description: 'Which events (default: all).' },
      ),
    ),
  },
  { additionalProperties: false },
);

/** A runbook file. */
export const RunbookFileSchema = Type.Object(
  {
    name: Type.String({
      pattern: NAME_PATTERN,
      description: 'The runbook name: the folder it lives in.',
      errorMessage: 'must be lower-case letters, digits and "-"',
    }),
    version: Type.Integer({ minimum: 1, description: 'The version: the file is v<version>.yaml. A version never changes once loaded.' }),
    description: Type.String({ minLength: 1, description: 'What the runbook does and when to use it.' }),
    reviewed: Type.Optional(
      Type.String({
        pattern: '^[0-9]{4}-[0-9]{2}-[0-9]{2}$',
        description:
          'When people last reviewed this version, YYYY-MM-DD (not in the future). continuity_runbook_review_age_seconds counts from it; without it, from when the version was first loaded.',
        errorMessage: 'must be a date, YYYY-MM-DD',
      }),
    ),
    timeout: Duration('The whole execution fails when it takes longer (approval waits included).'),
    inputs: Type.Optional(
      Type.Record(Type.String({ pattern: INPUT_PATTERN }), InputSchema, { additionalProperties: false, description: 'Inputs by name.' }),
    ),
    steps: Type.Array(StepEnvelopeSchema, { minItems: 1, description: 'The steps, run in order.' }),
    rollback: Type.Optional(
      Type.Array(StepEnvelopeSchema, {
        description: 'Steps run, in order, when a step fails with on_failure: rollback, or an approval is denied.',
      }),
    ),
    notifications: Type.Optional(Type.Array(NotificationSchema, { description: 'Webhooks told about the execution.' })),
  },
  { additionalProperties: false, $id: 'https://continuity.dev/schema/runbook.json', title: 'Continuity runbook version' },
);

export type RunbookFile = Static<typeof RunbookFileSchema>;
export type StepEnvelope = Static<typeof StepEnvelopeSchema>;
export type ApprovalConfig = Required<Pick<Static<typeof ApprovalSettings>, 'roles' | 'quorum' | 'on_timeout'>> &
  Static<typeof ApprovalSettings>;

/** The settings schema of a step kind, the approval gate included. */
export function stepSettingsSchema(kind: string): TSchema {
  return kind === 'approval' ? ApprovalSettings : (stepKinds[kind as keyof typeof stepKinds].settings as TSchema);
}

/** The JSON Schema editors use for runbook files: step settings typed by kind, as for probes. */
export function runbookJsonSchema(): TSchema {
  const kinds = [...stepKindNames, 'approval'];
  const step = {
    ...Type.Object(
      { ...stepCommon, ...Object.fromEntries(kinds.map((k) => [k, Type.Optional(stepSettingsSchema(k))])) },
      { additionalProperties: false },
    ),
    allOf: kinds.map((k) => ({
      if: { properties: { kind: { const: k } }, required: ['kind'] },
      then: { required: k === 'approval' ? [] : [k] },
    })),
  };
  const file = JSON.parse(JSON.stringify(RunbookFileSchema)) as Record<string, Record<string, unknown>>;
  file.properties!.steps = { ...(file.properties!.steps as object), items: step };
  file.properties!.rollback = { ...(file.properties!.rollback as object), items: step };
  return file as unknown as TSchema;
}
