import { runbookJsonSchema } from '../runbooks/schema.js';
import { ConfigFileSchema, probesJsonSchema } from './schema.js';

/** The JSON Schemas `continuity schema` writes to config/schema/, by file name. */
export function jsonSchemas(): Record<string, unknown> {
  return {
    'continuity.schema.json': ConfigFileSchema,
    'probes.schema.json': probesJsonSchema(),
    'runbook.schema.json': runbookJsonSchema(),
  };
}
