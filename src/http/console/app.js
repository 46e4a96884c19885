// Continuity console: a plain ES module, no framework, no build step. Every datum goes into the
// page as text (textContent or text nodes, never innerHTML), and the page's Content-Security-Policy
// allows only this file's origin.

const TOKEN_KEY = 'continuity.token';
const POLL_MS = 2000;

// ---------- small helpers ----------

/** An element: h('p', { class: 'x', onclick: fn }, 'text', child, [more]). Strings become text nodes. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const enc = encodeURIComponent;
const pad = (n) => String(n).padStart(2, '0');

/** A time as local YYYY-MM-DD HH:MM:SS, from ms since the epoch or an ISO string. */
function when(t) {
  if (t === undefined || t === null || t === '') return '—';
  const d = new Date(t);
  if (Number.isNaN(d.getTime())) return String(t);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** Seconds as "850 ms", "12.3 s", "4m 10s", "2h 5m", "3d 4h". */
function dur(s) {
  if (s === undefined || s === null || Number.isNaN(Number(s))) return '—';
  s = Number(s);
  const sign = s < 0 ? '-' : '';
  s = Math.abs(s);
  if (s < 1) return `${sign}${Math.round(s * 1000)} ms`;
  if (s < 60) return `${sign}${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  const two = (big, unit, small, unit2) => `${sign}${big}${unit}${small ? ` ${small}${unit2}` : ''}`;
  if (m < 60) return two(m, 'm', Math.floor(s % 60), 's');
  const hr = Math.floor(m / 60);
  if (hr < 48) return two(hr, 'h', m % 60, 'm');
  return two(Math.floor(hr / 24), 'd', hr % 24, 'h');
}

function bytes(n) {
  if (n === undefined || n === null) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

const show = (v) => (v === undefined || v === null ? '—' : typeof v === 'object' ? JSON.stringify(v) : String(v));

/** A coloured word for a status or verdict. */
function badge(text) {
  const t = String(text ?? 'unknown');
  return h('span', { class: `badge b-${t.toLowerCase().replace(/[^a-z0-9]+/g, '-')}` }, t);
}

/** A definition list from [label, value] pairs; values may be nodes. */
function facts(pairs) {
  return h(
    'dl',
    { class: 'facts' },
    pairs.filter(Boolean).map(([k, v]) => [h('dt', null, k), h('dd', null, v ?? '—')]),
  );
}

/** A table that turns into labelled blocks on a narrow screen (each cell carries its column's name). */
function table(columns, rows, empty = 'Nothing yet.') {
  if (rows.length === 0) return h('p', { class: 'empty' }, empty);
  return h(
    'table',
    null,
    h(
      'thead',
      null,
      h(
        'tr',
        null,
        columns.map((c) => h('th', { scope: 'col' }, c)),
      ),
    ),
    h(
      'tbody',
      null,
      rows.map((cells) =>
        h(
          'tr',
          null,
          cells.map((c, i) => h('td', { 'data-label': columns[i] }, h('div', null, c ?? '—'))),
        ),
      ),
    ),
  );
}

function timeline(events) {
  if (!events || events.length === 0) return h('p', { class: 'empty' }, 'No events.');
  return h(
    'ol',
    { class: 'timeline' },
    events.map((e) =>
      h('li', null, h('time', null, when(e.at)), ' ', h('span', { class: 'type' }, e.type), ' ', e.who ? `${e.who}: ` : '', e.message),
    ),
  );
}

const execLink = (id) => h('a', { href: `#/executions/${enc(id)}`, class: 'mono' }, id);

// ---------- the API ----------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const token = () => sessionStorage.getItem(TOKEN_KEY);

/** Calls the API with the bearer token; a refusal throws ApiError with the server's own message. */
async function api(method, path, body) {
  const headers = { authorization: `Bearer ${token() ?? ''}`, accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data = text;
  if ((res.headers.get('content-type') ?? '').includes('json') && text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!res.ok) {
    const message = data && typeof data === 'object' && data.message ? data.message : text || res.statusText;
    throw new ApiError(res.status, message);
  }
  return data;
}

/** A refusal as the operator should read it: status, then the server's message verbatim. */
const refusal = (err) => (err instanceof ApiError ? `${err.status}: ${err.message}` : `Error: ${err.message}`);

// ---------- state kept across re-renders ----------

/** Per-card notes (the result of an action), keyed like "approval:<execution id>". */
const notes = new Map();
/** Comments being typed, so a re-render does not lose them. */
const drafts = new Map();

function note(key) {
  const n = notes.get(key);
  if (!n) return null;
  return h('p', { class: `note ${n.ok ? 'ok' : 'error'}`, role: n.ok ? 'status' : 'alert' }, n.text, n.link ? [' ', n.link] : []);
}

/** A message above the view (kept until dismissed or replaced). */
function flash(text, ok, link) {
  const box = document.getElementById('flash');
  box.replaceChildren(
    h(
      'div',
      { class: `note ${ok ? 'ok' : 'error'}` },
      text,
      link ? [' ', link] : [],
      ' ',
      h('button', { type: 'button', class: 'link', onclick: () => box.replaceChildren() }, 'Dismiss'),
    ),
  );
}

/** Runs an action from a button: disables it, records the outcome under `key`, re-renders. */
async function act(button, key, fn) {
  button.disabled = true;
  try {
    notes.set(key, { ok: true, ...(await fn()) });
  } catch (err) {
    notes.set(key, { ok: false, text: refusal(err) });
  } finally {
    button.disabled = false;
    lastSignature = '';
    void refresh();
  }
}

// ---------- views ----------

/** The newest closed incident per service: its RTO and RPO achieved. */
function lastAchieved(incidents, service) {
  return incidents.find((i) => i.service === service && i.status === 'closed' && (i.rto || i.rpo));
}

function rpoExposure(svc, probes, open) {
  const ev = open?.decision?.evidence;
  if (ev && typeof ev.exposureSeconds === 'number') return `${dur(ev.exposureSeconds)} (lag ${bytes(ev.exposureBytes)})`;
  const lags = probes
    .filter((p) => p.services.includes(svc.id) && typeof p.last?.observed?.lag_seconds === 'number')
    .map((p) => p.last.observed.lag_seconds);
  return lags.length ? `${dur(Math.max(...lags))} replication lag` : '—';
}

const overview = {
  async load() {
    const [status, incidents] = await Promise.all([api('GET', '/api/v1/status'), api('GET', '/api/v1/incidents').catch(() => [])]);
    return { status, incidents, now: Date.now() };
  },
  render({ status, incidents, now }) {
    // The status document names a failover policy when it knows it; otherwise every service gets
    // the button and the server says which have none.
    const policyKnown = status.services.some((s) => 'failover' in s);
    return [
      h('h1', null, 'Overview'),
      h('p', { class: 'meta' }, `Continuity ${status.version}, up since ${when(status.startedAt)}`),
      h('h2', null, 'Sites'),
      h(
        'div',
        { class: 'cards' },
        status.sites.map((s) =>
          h(
            'section',
            { class: 'card' },
            h('h3', null, s.id, ' ', badge(s.verdict)),
            facts([['Role', s.role], s.description && ['About', s.description]]),
          ),
        ),
      ),
      h('h2', null, 'Services'),
      status.services.length === 0
        ? h('p', { class: 'empty' }, 'No services configured.')
        : h(
            'div',
            { class: 'cards' },
            status.services.map((s) => {
              const open = incidents.find((i) => i.service === s.id && i.status !== 'closed');
              const last = lastAchieved(incidents, s.id);
              const outage = s.outageStart ?? (open ? open.outageStart : undefined);
              const down = outage ? (now - new Date(outage).getTime()) / 1000 : undefined;
              const key = `drill:${s.id}`;
              return h(
                'section',
                { class: 'card', 'data-service': s.id },
                h('h3', null, s.id, ' ', badge(s.verdict)),
                s.description ? h('p', { class: 'meta' }, s.description) : null,
                facts([
                  ['Active site', s.activeSite],
                  ['RTO target', dur(s.rtoSeconds)],
                  ['RTO exposure', down === undefined ? 'no outage' : `down for ${dur(down)}`],
                  [
                    'RTO achieved (last)',
                    last?.rto ? `${dur(last.rto.total)} (${last.kind === 'drill' ? 'drill, ' : ''}${when(last.closedAt)})` : '—',
                  ],
                  ['RPO target', dur(s.rpoSeconds)],
                  ['RPO exposure', rpoExposure(s, status.probes, open)],
                  [
                    'RPO achieved (last)',
                    last?.rpo
                      ? [
                          last.rpo.seconds !== undefined ? dur(last.rpo.seconds) : '',
                          last.rpo.bytes !== undefined ? ` ${bytes(last.rpo.bytes)}` : '',
                        ]
                      : '—',
                  ],
                  s.downProbes.length ? ['Down probes', s.downProbes.join(', ')] : null,
                  open
                    ? [open.kind === 'drill' ? 'Drill' : 'Open incident', [badge(open.status), ' ', open.decision?.sentence ?? '']]
                    : null,
                ]),
                !policyKnown || s.failover
                  ? h(
                      'div',
                      { class: 'actions' },
                      h(
                        'button',
                        {
                          type: 'button',
                          class: 'secondary',
                          onclick: (e) =>
                            act(e.currentTarget, key, async () => {
                              const r = await api('POST', `/api/v1/services/${enc(s.id)}/drills`, {});
                              const exec = r?.execution?.id;
                              return {
                                text: `Drill started: incident ${r?.incident?.id ?? '?'}, execution`,
                                link: exec ? execLink(exec) : undefined,
                              };
                            }),
                        },
                        'Start drill',
                      ),
                    )
                  : null,
                note(key),
              );
            }),
          ),
      h('h2', null, 'Probes'),
      table(
        ['Probe', 'Kind', 'Site', 'State', 'Since', 'Last result'],
        status.probes.map((p) => [
          h('span', { class: 'mono' }, p.id),
          p.kind,
          p.site,
          badge(p.state),
          when(p.since),
          p.last ? `${p.last.ok ? '' : 'failed: '}${p.last.reason || (p.last.ok ? 'ok' : '—')} (${when(p.last.at)})` : 'not run yet',
        ]),
        'No probes configured.',
      ),
    ];
  },
};

function incidentCard(i) {
  return h(
    'section',
    { class: 'card wide', 'data-incident': i.id },
    h(
      'h3',
      null,
      i.service,
      ' ',
      badge(i.status),
      ' ',
      i.kind === 'drill' ? [badge('drill'), ' '] : null,
      h('span', { class: 'mono meta' }, i.id),
    ),
    i.decision ? h('blockquote', { class: 'decision' }, i.decision.sentence) : h('p', { class: 'empty' }, 'No decision yet.'),
    facts([
      ['Outage start', when(i.outageStart)],
      ['Opened', when(i.openedAt)],
      i.closedAt ? ['Closed', `${when(i.closedAt)}${i.closeReason ? `: ${i.closeReason}` : ''}`] : null,
      i.executionId ? ['Failover', execLink(i.executionId)] : null,
      i.rto
        ? [
            'RTO achieved',
            `${dur(i.rto.total)} (detection ${dur(i.rto.detection)}, decision ${dur(i.rto.decision)}, approval wait ${dur(i.rto.approval_wait)}, runbook ${dur(i.rto.runbook)}, verification ${dur(i.rto.verification)})`,
          ]
        : null,
      i.rpo
        ? [
            'RPO achieved',
            `${i.rpo.seconds !== undefined ? dur(i.rpo.seconds) : ''} ${i.rpo.bytes !== undefined ? bytes(i.rpo.bytes) : ''} (${i.rpo.method})`,
          ]
        : null,
      i.forecastEnd ? ['Expected back', when(i.forecastEnd)] : null,
      ['Report', h('a', { href: `#/incident-report/${enc(i.id)}` }, 'Read the report')],
    ]),
    h('details', { open: i.status !== 'closed' || undefined }, h('summary', null, `Timeline (${i.timeline.length})`), timeline(i.timeline)),
  );
}

const incidents = {
  load: () => api('GET', '/api/v1/incidents'),
  render(list) {
    const open = list.filter((i) => i.status !== 'closed');
    const past = list.filter((i) => i.status === 'closed');
    return [
      h('h1', null, 'Incidents'),
      h('h2', null, `Open (${open.length})`),
      open.length ? h('div', { class: 'stack' }, open.map(incidentCard)) : h('p', { class: 'empty' }, 'No open incident.'),
      h('h2', null, `Past (${past.length})`),
      past.length ? h('div', { class: 'stack' }, past.map(incidentCard)) : h('p', { class: 'empty' }, 'None.'),
    ];
  },
};

function approvalCard(v) {
  const e = v.execution;
  const waiting = v.steps.find((s) => s.kind === 'approval' && s.status === 'waiting');
  const asked = [...v.timeline].reverse().find((t) => t.type === 'approval_needed' && (!waiting || t.step === waiting.step));
  const answers = v.approvals.filter((a) => !waiting || a.step === waiting.step);
  const key = `approval:${e.id}`;
  const answer = (decision) => (ev) =>
    act(ev.currentTarget, key, async () => {
      const comment = drafts.get(e.id)?.trim();
      await api('POST', `/api/v1/executions/${enc(e.id)}/approvals`, { decision, hash: e.hash, ...(comment ? { comment } : {}) });
      drafts.delete(e.id);
      const text = `${decision === 'approve' ? 'Approved' : 'Denied'} ${e.runbook} v${e.version}:`;
      flash(text, true, execLink(e.id));
      return { text: `${decision === 'approve' ? 'Approval' : 'Denial'} recorded.` };
    });
  const comment = h('textarea', { rows: 2, maxlength: 2000, 'aria-label': `Comment on ${e.id}`, placeholder: 'Comment (optional)' });
  comment.value = drafts.get(e.id) ?? '';
  comment.addEventListener('input', () => drafts.set(e.id, comment.value));
  return h(
    'section',
    { class: 'card wide approval', 'data-execution': e.id },
    h('h3', null, e.runbook, ' ', h('span', { class: 'version' }, `v${e.version}`), ' ', badge(e.mode)),
    asked ? h('p', { class: 'ask' }, asked.message) : null,
    e.inputs && e.inputs.data_at_risk !== undefined ? h('p', { class: 'risk' }, 'Data at risk: ', show(e.inputs.data_at_risk)) : null,
    facts([
      ['Execution', execLink(e.id)],
      ['sha256', h('code', { class: 'hash' }, e.hash)],
      ['Requested by', `${e.requestedBy} at ${when(e.createdAt)}`],
      waiting ? ['Step', `${waiting.step}, expires ${when(waiting.expiresAt)}`] : null,
      [
        'Answers',
        answers.length ? answers.map((a) => `${a.who}: ${a.decision}${a.comment ? ` (${a.comment})` : ''}`).join('; ') : 'none yet',
      ],
    ]),
    h('h4', null, 'Inputs'),
    Object.keys(e.inputs ?? {}).length
      ? facts(Object.entries(e.inputs).map(([k, val]) => [k, h('span', { class: 'mono' }, show(val))]))
      : h('p', { class: 'empty' }, 'No inputs.'),
    comment,
    h(
      'div',
      { class: 'actions' },
      h('button', { type: 'button', class: 'approve', onclick: answer('approve') }, 'Approve'),
      h('button', { type: 'button', class: 'deny', onclick: answer('deny') }, 'Deny'),
    ),
    note(key),
  );
}

const approvals = {
  async load() {
    const list = await api('GET', '/api/v1/executions?limit=500');
    const waiting = list.filter((e) => e.status === 'waiting_approval');
    return Promise.all(waiting.map((e) => api('GET', `/api/v1/executions/${enc(e.id)}`)));
  },
  render(views) {
    return [
      h('h1', null, 'Approvals'),
      views.length
        ? h('div', { class: 'stack' }, views.map(approvalCard))
        : h('p', { class: 'empty' }, 'Nothing is waiting for an approval.'),
    ];
  },
};

const elapsed = (e) => ((e.finishedAt ?? Date.now()) - e.createdAt) / 1000;

const executions = {
  load: () => api('GET', '/api/v1/executions?limit=200'),
  render(list) {
    return [
      h('h1', null, 'Executions'),
      table(
        ['Execution', 'Runbook', 'Mode', 'Status', 'By', 'Started', 'Finished', 'Took'],
        list.map((e) => [
          execLink(e.id),
          `${e.runbook} v${e.version}`,
          e.mode,
          badge(e.status),
          e.requestedBy,
          when(e.createdAt),
          when(e.finishedAt),
          e.finishedAt ? dur(elapsed(e)) : `${dur(elapsed(e))} so far`,
        ]),
        'No executions yet.',
      ),
    ];
  },
};

const execution = {
  load: (id) => api('GET', `/api/v1/executions/${enc(id)}`),
  render(v) {
    const e = v.execution;
    const recorded = new Map(v.steps.map((s) => [`${s.phase}:${s.step}`, s]));
    const rows = v.plan.map((p) => recorded.get(`${p.phase}:${p.id}`) ?? { step: p.id, kind: p.kind, phase: p.phase, status: 'pending' });
    for (const s of v.steps) if (!v.plan.some((p) => p.id === s.step && p.phase === s.phase)) rows.push(s);
    return [
      h('p', null, h('a', { href: '#/executions' }, '← Executions')),
      h('h1', null, `${e.runbook} v${e.version} `, badge(e.status)),
      facts([
        ['Execution', h('span', { class: 'mono', id: 'execution-id' }, e.id)],
        ['Status', h('span', { id: 'execution-status' }, e.status)],
        e.reason ? ['Reason', e.reason] : null,
        ['Mode', e.mode],
        ['sha256', h('code', { class: 'hash' }, e.hash)],
        ['Requested by', e.requestedBy],
        ['Started', when(e.createdAt)],
        ['Finished', when(e.finishedAt)],
        ['Took', e.finishedAt ? dur(elapsed(e)) : `${dur(elapsed(e))} so far`],
        ['Inputs', Object.keys(e.inputs ?? {}).length ? h('span', { class: 'mono' }, JSON.stringify(e.inputs)) : 'none'],
      ]),
      h('h2', null, 'Steps'),
      table(
        ['Step', 'Kind', 'Phase', 'Status', 'Attempt', 'Took', 'Detail'],
        rows.map((s) => [
          h('span', { class: 'mono' }, s.step),
          s.kind,
          s.phase,
          badge(s.status),
          s.attempt ?? '—',
          s.durationSeconds !== undefined ? dur(s.durationSeconds) : '—',
          [
            s.reason ?? '',
            s.progress ? ` ${s.progress.activity ?? ''} ${s.progress.done ?? ''}/${s.progress.total ?? '?'} ${s.progress.unit ?? ''}` : '',
            s.output ? h('pre', null, s.output) : '',
          ],
        ]),
      ),
      v.approvals.length
        ? [
            h('h2', null, 'Approvals'),
            table(
              ['Step', 'Who', 'Decision', 'At', 'Comment'],
              v.approvals.map((a) => [a.step, a.who, badge(a.decision), when(a.at), a.comment ?? '']),
            ),
          ]
        : null,
      h('h2', null, 'Timeline'),
      timeline(v.timeline),
    ];
  },
};

const restoreTests = {
  load: () => api('GET', '/api/v1/restore-tests'),
  render({ restoreTests: sets }) {
    return [
      h('h1', null, 'Restore tests'),
      sets.length === 0
        ? h('p', { class: 'empty' }, 'No restore tests configured.')
        : h(
            'div',
            { class: 'cards' },
            sets.map((t) => {
              const key = `restore:${t.backupSet}`;
              const last = t.last;
              const timings = last?.timings ?? {};
              return h(
                'section',
                { class: 'card', 'data-set': t.backupSet },
                h('h3', null, t.backupSet, ' ', last ? badge(last.result) : badge('never run')),
                last?.reason ? h('p', { class: 'risk' }, last.reason) : null,
                facts([
                  ['Service', t.service],
                  ['Runbook', `${t.runbook} v${t.version}`],
                  ['Schedule', `${t.schedule} (${t.timezone}), pick ${t.pick}`],
                  ['Next run', when(t.nextRun)],
                  ['Last run', last ? `${when(last.finishedAt)} (${last.trigger})` : '—'],
                  ['Last pass', when(t.lastPass)],
                  ['RTO', dur(t.rtoSeconds)],
                  ['Took', timings.total !== undefined ? dur(timings.total) : '—'],
                  [
                    'Phases',
                    ['prepare', 'download', 'restore', 'validate', 'cleanup']
                      .filter((p) => timings[p] !== undefined)
                      .map((p) => `${p} ${dur(timings[p])}`)
                      .join(', ') || '—',
                  ],
                  ['RTO margin', last?.rtoMarginSeconds !== undefined ? dur(last.rtoMarginSeconds) : '—'],
                  last ? ['Report', h('a', { href: `#/report/${enc(last.id)}` }, 'Read the report')] : null,
                ]),
                h(
                  'div',
                  { class: 'actions' },
                  h(
                    'button',
                    {
                      type: 'button',
                      class: 'secondary',
                      onclick: (e) =>
                        act(e.currentTarget, key, async () => {
                          const r = await api('POST', `/api/v1/restore-tests/${enc(t.backupSet)}/runs`);
                          return { text: `${r.created ? 'Started' : 'Already running'}: execution`, link: execLink(r.execution.id) };
                        }),
                    },
                    'Run now',
                  ),
                ),
                note(key),
              );
            }),
          ),
    ];
  },
};

/** A report in Markdown, shown as text (the API needs the token, so a plain link would not do). */
const reportView = (title, back, backText, path) => ({
  load: (id) => api('GET', path(id)),
  render(text, id) {
    return [
      h('p', null, h('a', { href: back }, backText)),
      h('h1', null, `${title} `, h('span', { class: 'mono' }, id)),
      h('pre', { class: 'report' }, text),
    ];
  },
});
const report = reportView(
  'Restore-test report',
  '#/restore-tests',
  '← Restore tests',
  (id) => `/api/v1/restore-test-reports/${enc(id)}?format=markdown`,
);
const incidentReport = reportView(
  'Incident report',
  '#/incidents',
  '← Incidents',
  (id) => `/api/v1/incidents/${enc(id)}/report?format=markdown`,
);

const VIEWS = {
  overview,
  incidents,
  approvals,
  executions,
  execution,
  'restore-tests': restoreTests,
  report,
  'incident-report': incidentReport,
};
/** Which nav entry a view belongs to. */
const NAV_OF = { execution: 'executions', report: 'restore-tests', 'incident-report': 'incidents' };

// ---------- sign-in, routing, polling ----------

function route() {
  const [name, ...rest] = location.hash.replace(/^#\/?/, '').split('/');
  if (name === 'executions' && rest.length) return { name: 'execution', arg: decodeURIComponent(rest.join('/')) };
  return { name: VIEWS[name] ? name : 'overview', arg: decodeURIComponent(rest.join('/')) };
}

const main = () => document.getElementById('main');

function signInView(message) {
  document.getElementById('nav').hidden = true;
  document.getElementById('session').hidden = true;
  document.getElementById('flash').replaceChildren();
  const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' });
  const form = h(
    'form',
    { class: 'card signin' },
    h('h1', null, 'Sign in'),
    h('p', null, 'Paste your API token. It is kept in this tab only (sessionStorage) and sent as a bearer token.'),
    h('label', { for: 'token' }, 'API token'),
    input,
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Sign in')),
    message ? h('p', { class: 'note error', role: 'alert' }, message) : null,
  );
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    try {
      await api('GET', '/api/v1/runbooks');
    } catch (err) {
      sessionStorage.removeItem(TOKEN_KEY);
      signInView(refusal(err));
      return;
    }
    lastSignature = '';
    void refresh();
  });
  main().replaceChildren(form);
  input.focus();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(timer);
  notes.clear();
  drafts.clear();
  lastSignature = '';
  signInView(message);
}

let timer;
let generation = 0;
let lastSignature = '';

function schedule() {
  clearTimeout(timer);
  if (!document.hidden && token()) timer = setTimeout(() => void refresh(), POLL_MS);
}

/** Loads the current view's data and re-renders it when it changed; then polls again. */
async function refresh() {
  clearTimeout(timer);
  if (!token()) return signInView();
  const gen = ++generation;
  const r = route();
  const view = VIEWS[r.name];
  const live = document.getElementById('live');
  document.getElementById('nav').hidden = false;
  document.getElementById('session').hidden = false;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.view === (NAV_OF[r.name] ?? r.name)) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  try {
    const [data, list] = await Promise.all([view.load(r.arg), api('GET', '/api/v1/executions?limit=500').catch(() => undefined)]);
    if (gen !== generation) return; // a newer refresh (another view) has started
    const count = document.getElementById('approval-count');
    const pending = list ? list.filter((e) => e.status === 'waiting_approval').length : 0;
    count.textContent = String(pending);
    count.hidden = pending === 0;
    const signature = JSON.stringify([r, data, [...notes]]);
    if (signature !== lastSignature) {
      lastSignature = signature;
      main().replaceChildren(...[view.render(data, r.arg)].flat(Infinity).filter(Boolean));
    }
    live.textContent = `Live, ${when(Date.now()).slice(11)}`;
    live.className = 'live on';
  } catch (err) {
    if (gen !== generation) return;
    if (err instanceof ApiError && err.status === 401) return signOut(refusal(err));
    // Keep what is shown; say it is stale and why.
    live.textContent = `Not updating: ${refusal(err)}`;
    live.className = 'live off';
    if (lastSignature === '') main().replaceChildren(h('p', { class: 'note error', role: 'alert' }, refusal(err)));
  }
  schedule();
}

document.getElementById('sign-out').addEventListener('click', () => signOut());
window.addEventListener('hashchange', () => {
  lastSignature = '';
  void refresh();
});
document.addEventListener('visibilitychange', () => {
  if (document.hidden) {
    clearTimeout(timer);
    const live = document.getElementById('live');
    live.textContent = 'Paused';
    live.className = 'live off';
  } else void refresh();
});
void refresh();
