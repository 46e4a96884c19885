import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { formatIssue } from '../../src/config/errors.js';
import { loadRunbooks } from '../../src/runbooks/loader.js';
import { render } from '../../src/runbooks/template.js';

const root = 'test/fixtures/runbooks';
const invalid = readdirSync(root).filter((c) => existsSync(join(root, c, 'expected.txt')));

describe('runbook files', () => {
  it('loads a valid runbook with its hash, inputs, steps and rollback', () => {
    const { runbooks, issues } = loadRunbooks(join(root, 'valid'));
    expect(issues).toEqual([]);
    const r = runbooks.get('ok')!;
    expect(r.hash).toMatch(/^[0-9a-f]{64}$/);
    expect(r.steps.map((s) => [s.id, s.kind, s.idempotent, s.onFailure])).toEqual([
      ['measure', 'shell', true, 'abort'],
      ['gate', 'approval', false, 'abort'],
      ['act', 'shell', false, 'rollback'],
    ]);
    expect(r.steps[0]!.retries).toEqual({ max: 2, backoffMs: 1000 });
    expect(r.steps[1]!.approval).toEqual({ quorum: 2, roles: ['approver'], on_timeout: 'abort' });
    expect(r.rollback.map((s) => s.id)).toEqual(['undo']);
    expect(r.inputs.find((i) => i.name === 'password')).toMatchObject({ type: 'secret', default: '${env:PGPASSWORD}' });
  });

  it('has one fixture per invalid case', () => expect(invalid.length).toBeGreaterThanOrEqual(7));

  it.each(invalid)('reports every problem of %s with its file, line and path', (name) => {
    const dir = join(root, name);
    const expected = readFileSync(join(dir, 'expected.txt'), 'utf8').trimEnd().split('\n');
    const { runbooks, issues } = loadRunbooks(dir);
    expect(issues.map((i) => formatIssue(i).replaceAll(`${dir}/`, ''))).toEqual(expected);
    expect(runbooks.all).toEqual([]);
  });
});

describe('templates', () => {
  const scope = {
    inputs: { host: 'db-2', port: 5433, secret: '${env:PW}' },
    steps: { measure: { outputs: { lsn: '0/3000060', lag: 0 } } },
    execution: { id: 'x-1', mode: 'drill', runbook: 'failover', version: 3 },
  };
  it('copies values, keeping the type of a whole-string template', () => {
    expect(
      render(
        {
          a: '{{ inputs.port }}',
          b: 'host={{inputs.host}}:{{ inputs.port }}',
          c: ['{{ steps.measure.outputs.lsn }}'],
          d: '{{ execution.mode }}',
        },
        scope,
      ),
    ).toEqual({
      a: 5433,
      b: 'host=db-2:5433',
      c: ['0/3000060'],
      d: 'drill',
    });
  });
  it('leaves a secret reference unresolved: it is resolved only when the step runs', () => {
    expect(render('{{ inputs.secret }}', scope)).toBe('${env:PW}');
  });
  it('refuses anything but a reference, and an undefined value at run time', () => {
    expect(() => render('{{ inputs.host.toUpperCase() }}', scope)).toThrow('is not a template reference');
    expect(() => render('{{ steps.other.outputs.x }}', scope)).toThrow('{{ steps.other.outputs.x }} has no value');
    expect(render('{{ steps.other.outputs.x }}', scope, { missing: (e) => `<${e}>` })).toBe('<steps.other.outputs.x>');
  });
});
