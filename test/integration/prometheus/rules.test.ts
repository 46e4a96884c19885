import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { Metrics } from '../../../src/metrics.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const ALERTS = join(ROOT, 'config/prometheus/alerts.yaml');
const ALERT_TESTS = join(ROOT, 'config/prometheus/alerts.test.yaml');
const SCRAPE = join(ROOT, 'config/prometheus/scrape.yaml');
const DASHBOARD = join(ROOT, 'config/grafana/continuity-dashboard.json');

/** Series Prometheus makes itself, not the daemon. */
const PROMETHEUS_OWN = new Set(['up', 'ALERTS']);

/**
 * Labels the rules' summaries and joins rely on, for metrics whose labels are not obvious from the
 * name (failover drills: 0 = never drilled; runbook reviews; the restore-test margin, the only
 * series carrying both backup_set and service).
 */
const LABELS: Record<string, string[]> = {
  continuity_drill_last_success_timestamp_seconds: ['service'],
  continuity_runbook_review_age_seconds: ['runbook', 'version'],
  continuity_restore_test_rto_margin_seconds: ['backup_set', 'service'],
};

const metrics = new Metrics('test');

/** Every series name the daemon's registry exports: histograms and summaries as their _bucket/_sum/_count series too. */
async function exportedNames(): Promise<Set<string>> {
  const names = new Set<string>();
  for (const m of await metrics.registry.getMetricsAsJSON()) {
    names.add(m.name);
    // prom-client types `type` as a numeric enum; at run time it is the string of the exposition format.
    const type = String(m.type);
    if (type === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(m.name + s);
    if (type === 'summary') for (const s of ['_sum', '_count']) names.add(m.name + s);
  }
  return names;
}

const KEYWORDS = new Set([
  'and',
  'or',
  'unless',
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'bool',
  'offset',
  'inf',
  'nan',
]);

/**
 * The metric names a PromQL expression selects: identifiers left once strings, label matchers,
 * ranges and label lists (by, without, on, ignoring, group_left/right) are taken out, that are
 * not numbers, durations, keywords, or functions and aggregations (followed by "(").
 */
export function metricNames(expr: string): string[] {
  const s = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');
  const names: string[] = [];
  for (const m of s.matchAll(/(\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:ms|[smhdwy])?)|([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)) {
    if (m[1] !== undefined || m[3] !== undefined || !m[2] || KEYWORDS.has(m[2].toLowerCase())) continue;
    names.push(m[2]);
  }
  return names;
}

/** Grafana's variables replaced by values Prometheus accepts, so an expr can be checked as PromQL. */
const grafanaToPromql = (expr: string) =>
  expr
    .replace(/\$__rate_interval|\$__interval|\$__range/g, '5m')
    .replace(/\$\{?service\}?/g, '.*')
    .replace(/\$\{?backup_set\}?/g, '.*');

const run = (file: string, args: string[]) =>
  new Promise<{ code: number; output: string }>((resolve) =>
    execFile(file, args, { cwd: ROOT }, (err, stdout, stderr) =>
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, output: stdout + stderr }),
    ),
  );

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
const rules: Rule[] = (parse(readFileSync(ALERTS, 'utf8')) as { groups: Array<{ name: string; rules: Rule[] }> }).groups.flatMap(
  (g) => g.rules,
);

interface Target {
  expr?: string;
  refId?: string;
}
interface Panel {
  id: number;
  type: string;
  title?: string;
  datasource?: { type: string; uid: string };
  targets?: Target[];
  panels?: Panel[];
}
const dashboardText = readFileSync(DASHBOARD, 'utf8');

/** Panels, rows' nested panels included (those of collapsed rows). */
function allPanels(d: { panels: Panel[] }): Panel[] {
  return d.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
}

describe('Prometheus alerting rules (config/prometheus/alerts.yaml)', () => {
  it('pass promtool check rules', async () => {
    const r = await run('promtool', ['check', 'rules', ALERTS]);
    expect(r.code, r.output).toBe(0);
    expect(r.output).toContain(`SUCCESS: ${rules.length} rules found`);
  });

  it('pass their promtool unit tests (config/prometheus/alerts.test.yaml)', async () => {
    const r = await run('promtool', ['test', 'rules', ALERT_TESTS]);
    expect(r.code, r.output).toBe(0);
    expect(r.output).toContain('SUCCESS');
  });

  it('are each tested firing and not firing', () => {
    const tests = (
      parse(readFileSync(ALERT_TESTS, 'utf8')) as {
        tests: Array<{ alert_rule_test?: Array<{ alertname: string; exp_alerts: unknown[] }> }>;
      }
    ).tests;
    const cases = tests.flatMap((t) => t.alert_rule_test ?? []);
    for (const r of rules) {
      const mine = cases.filter((c) => c.alertname === r.alert);
      expect(
        mine.some((c) => c.exp_alerts.length > 0),
        `${r.alert} has no firing case`,
      ).toBe(true);
      expect(
        mine.some((c) => c.exp_alerts.length === 0),
        `${r.alert} has no case that does not fire`,
      ).toBe(true);
    }
  });

  it('each have a severity, a summary and a description', () => {
    expect(rules.map((r) => r.alert)).toEqual([
      'ContinuityServiceDown',
      'ContinuityRpoExposureOverTarget',
      'ContinuityBackupCheckFailing',
      'ContinuityRestoreTestMissing',
      'ContinuityRestoreTestFailed',
      'ContinuityRestoreTimeNearRto',
      'ContinuityRestoreTimeTrendNearRto',
      'ContinuityApprovalWaiting',
      'ContinuityExecutionAwaitingDecision',
      'ContinuityConfigReloadFailed',
      'ContinuityDown',
      'ContinuityFailoverNotDrilled',
      'ContinuityRunbookNotReviewed',
    ]);
    for (const r of rules) {
      expect(['critical', 'warning'], r.alert).toContain(r.labels?.severity);
      expect(r.annotations?.summary, r.alert).toBeTruthy();
      expect(r.annotations?.description, r.alert).toBeTruthy();
      expect(r.for, r.alert).toMatch(/^\d+[smh]$/);
    }
  });

  it('use only metrics the daemon exports (exprs and the queries in annotations)', async () => {
    const known = await exportedNames();
    const used = new Set<string>();
    for (const r of rules) {
      for (const n of metricNames(r.expr)) used.add(n);
      for (const text of Object.values(r.annotations ?? {})) for (const m of text.matchAll(/\bcontinuity_[a-z0-9_]+/g)) used.add(m[0]);
    }
    // The extraction finds what it should (a guard against a regex that finds nothing).
    expect(used).toContain('continuity_service_up');
    expect(used).toContain('continuity_restore_test_last_run_timestamp_seconds');
    expect(used).toContain('continuity_rto_target_seconds');
    expect(used).toContain('up');
    expect(used).not.toContain('time');
    expect(used).not.toContain('group');
    const unknown = [...used].filter((n) => !known.has(n) && !PROMETHEUS_OWN.has(n));
    expect(unknown).toEqual([]);
  });

  it('rely on labels the daemon puts on those metrics', () => {
    for (const [name, labels] of Object.entries(LABELS)) {
      const metric = metrics.registry.getSingleMetric(name) as { labelNames?: string[] } | undefined;
      expect([...(metric?.labelNames ?? [])].sort(), name).toEqual([...labels].sort());
    }
  });
});

describe('Example Prometheus config (config/prometheus/scrape.yaml)', () => {
  it('passes promtool check config, rule files included', async () => {
    const r = await run('promtool', ['check', 'config', SCRAPE]);
    expect(r.code, r.output).toBe(0);
    expect(r.output).toContain(`SUCCESS: ${rules.length} rules found`);
  });
});

describe('Grafana dashboard (config/grafana/continuity-dashboard.json)', () => {
  const dashboard = JSON.parse(dashboardText) as {
    schemaVersion: number;
    uid: string;
    title: string;
    panels: Panel[];
    templating: { list: Array<{ name: string; type: string; query: unknown; datasource?: { uid: string } }> };
    annotations: { list: Array<{ expr?: string; datasource?: { uid: string } }> };
  };
  const panels = allPanels(dashboard);
  const exprs = [
    ...panels.flatMap((p) => (p.targets ?? []).map((t) => ({ where: `panel ${p.id} "${p.title}" ${t.refId}`, expr: t.expr ?? '' }))),
    ...dashboard.annotations.list.filter((a) => a.expr).map((a, i) => ({ where: `annotation ${i}`, expr: a.expr! })),
  ];
  const tmp = mkdtempSync(join(tmpdir(), 'continuity-dashboard-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('parses, with a datasource variable of type prometheus and service and backup_set variables from label_values', () => {
    expect(dashboard.schemaVersion).toBe(39);
    expect(dashboard.uid).toBe('continuity');
    const vars = Object.fromEntries(dashboard.templating.list.map((v) => [v.name, v]));
    expect(vars.datasource).toMatchObject({ type: 'datasource', query: 'prometheus' });
    for (const name of ['service', 'backup_set']) {
      expect(vars[name]).toMatchObject({ type: 'query', datasource: { uid: '${datasource}' } });
      expect(String(vars[name]!.query)).toMatch(/^label_values\(.+\)$/);
    }
  });

  it('has a title and at least one target on every panel, each with an expr, on the datasource variable', () => {
    expect(panels.length).toBeGreaterThan(20);
    const ids = panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of panels) {
      expect(p.title, `panel ${p.id}`).toBeTruthy();
      if (p.type === 'row') continue;
      expect(p.targets?.length, `panel ${p.id} "${p.title}" has no target`).toBeGreaterThan(0);
      expect(p.datasource?.uid, `panel ${p.id}`).toBe('${datasource}');
      for (const t of p.targets!) expect(t.expr, `panel ${p.id} "${p.title}" ${t.refId}`).toBeTruthy();
    }
  });

  it('queries only metrics the daemon exports (panels, annotations, variables)', async () => {
    const known = await exportedNames();
    const used = new Map<string, string>();
    for (const { where, expr } of exprs) for (const n of metricNames(expr)) used.set(n, where);
    for (const v of dashboard.templating.list) {
      const m = /^label_values\((.+),\s*\w+\)$/.exec(String(v.query));
      if (m) for (const n of metricNames(m[1]!)) used.set(n, `variable ${v.name}`);
    }
    expect(used.has('continuity_probe_duration_seconds_bucket')).toBe(true);
    expect(used.has('histogram_quantile')).toBe(false);
    const unknown = [...used].filter(([n]) => !known.has(n) && !PROMETHEUS_OWN.has(n)).map(([n, where]) => `${n} (${where})`);
    expect(unknown).toEqual([]);
  });

  it('has exprs that are valid PromQL (promtool check rules on them as recording rules)', async () => {
    const file = join(tmp, 'dashboard-exprs.yaml');
    const group = {
      groups: [
        {
          name: 'dashboard',
          rules: exprs.map((e, i) => ({ record: `dashboard:expr_${i}`, expr: grafanaToPromql(e.expr), labels: { where: e.where } })),
        },
      ],
    };
    writeFileSync(file, JSON.stringify(group, null, 1));
    const r = await run('promtool', ['check', 'rules', file]);
    expect(r.code, r.output).toBe(0);
    expect(r.output).toContain(`SUCCESS: ${exprs.length} rules found`);
  });
});
