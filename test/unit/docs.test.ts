import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { probeReference, stepReference } from '../../src/reference.js';
import { loadRunbooks } from '../../src/runbooks/loader.js';
import { probers, proberKinds } from '../../src/probers/index.js';

describe('docs', () => {
  it('the README probe reference is generated from the registry (run `npm run docs` after a change)', () => {
    const readme = readFileSync('README.md', 'utf8');
    const section = /<!-- probe-reference:start -->\n([\s\S]*)<!-- probe-reference:end -->/.exec(readme)?.[1];
    expect(section).toBe(probeReference() + '\n');
  });

  it('the README step reference is generated from the step kinds', () => {
    const readme = readFileSync('README.md', 'utf8');
    const section = /<!-- step-reference:start -->\n([\s\S]*)<!-- step-reference:end -->/.exec(readme)?.[1];
    expect(section).toBe(stepReference() + '\n');
  });

  it('the README runbook example is a valid runbook', () => {
    const readme = readFileSync('README.md', 'utf8');
    const example = /```yaml\n(name: failover-postgres\n[\s\S]*?)```/.exec(readme)?.[1];
    expect(example).toBeDefined();
    const dir = mkdtempSync(join(tmpdir(), 'continuity-readme-'));
    mkdirSync(join(dir, 'failover-postgres'));
    writeFileSync(join(dir, 'failover-postgres', 'v3.yaml'), example!);
    const { runbooks, issues } = loadRunbooks(dir);
    expect(issues).toEqual([]);
    expect(runbooks.get('failover-postgres', 3)?.steps.map((st) => st.id)).toEqual(['check_lag', 'approve', 'promote']);
  });

  it('every kind documents every setting and observed value', () => {
    for (const kind of proberKinds) {
      const p = probers[kind];
      expect(p.description.length, kind).toBeGreaterThan(20);
      const walk = (schema: { properties?: Record<string, { description?: string; properties?: unknown }> }, path: string) => {
        for (const [key, s] of Object.entries(schema.properties ?? {})) {
          expect(s.description, `${kind}.${path}${key} has no description`).toBeTruthy();
          if (s.properties) walk(s as never, `${path}${key}.`);
        }
      };
      walk(p.settings as never, '');
      expect(Object.keys(p.observed).length, kind).toBeGreaterThan(0);
    }
  });
});
