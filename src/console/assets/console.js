// orgwarden console: plain JavaScript over the sidecar's /v1/console/* JSON.
// Everything shown comes from those answers; nothing here decides anything.
// With an admin token on the server, the token typed in the login form is
// kept in sessionStorage (this tab only) and sent as a bearer header; it
// never goes into a URL.
'use strict';

const TOKEN_KEY = 'orgwarden.console.token';
const RULES = [
  ['explicit_role', 'explicit role'],
  ['default_role', 'default role'],
  ['admin_override', 'admin override'],
  ['personal_owner', 'personal owner'],
  ['collaborator', 'collaborator (capped)'],
  ['transfer_target', 'transfer target admin'],
  ['org_admin', 'organization admin'],
  ['org_member', 'organization member'],
  ['invitee', 'invitee'],
  ['policy', 'other policy'],
];
const RULE_NAMES = Object.fromEntries(RULES);

const $ = (id) => document.getElementById(id);

// A DOM element; children are nodes or strings (always text, never HTML).
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function clear(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

class AuthError extends Error {}
class ApiError extends Error {
  constructor(status, error) {
    super(error ? `${error.message}${error.field ? ` (${error.field})` : ''}` : `HTTP ${status}`);
    this.status = status;
    this.code = error && error.code;
  }
}

async function api(path, options = {}) {
  const headers = { Accept: 'application/json' };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method: options.method || 'GET', headers, cache: 'no-store' };
  if (options.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(options.body);
  }
  const response = await fetch(path, init);
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (response.status === 401) {
    showLogin(token ? 'That token was refused.' : '');
    throw new AuthError('admin token required');
  }
  if (!response.ok) throw new ApiError(response.status, body && body.error);
  return body;
}

// ---- session -----------------------------------------------------------

function showLogin(message) {
  $('login').hidden = false;
  $('main').hidden = true;
  $('login-error').textContent = message || '';
  $('token').focus();
}

function hideLogin() {
  $('login').hidden = true;
  $('main').hidden = false;
  $('sign-out').hidden = !sessionStorage.getItem(TOKEN_KEY);
}

$('login-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const token = $('token').value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $('token').value = '';
  hideLogin();
  route();
});

// The forms are bound when the script loads, not when their page is first
// shown (that waits for the catalog): a submit never leaves the page.
$('try-form').addEventListener('submit', (event) => {
  event.preventDefault();
  getCatalog().then(decide).catch(report('try'));
});
$('workspace-form').addEventListener('submit', (event) => {
  event.preventDefault();
  location.hash = `#access?workspace=${encodeURIComponent($('workspace').value.trim())}`;
});
$('principal-form').addEventListener('submit', (event) => {
  event.preventDefault();
  location.hash = `#access?principal=${encodeURIComponent($('map-principal').value.trim())}`;
});

$('sign-out').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin('');
});

// ---- routing -----------------------------------------------------------

function parseHash() {
  const hash = location.hash.replace(/^#/, '');
  const [page, query] = hash.split('?');
  return { page: page || 'status', params: new URLSearchParams(query || '') };
}

let current = null;
function route() {
  const { page, params } = parseHash();
  const name = ['status', 'try', 'access', 'runs'].includes(page) ? page : 'status';
  for (const p of document.querySelectorAll('.page')) p.hidden = p.id !== `page-${name}`;
  for (const a of document.querySelectorAll('header nav a')) a.classList.toggle('active', a.dataset.page === name);
  current = name;
  const handlers = { status: showStatus, try: showTry, access: showAccess, runs: showRuns };
  handlers[name](params).catch(report(`${name}`));
}

function report(where) {
  return (e) => {
    if (e instanceof AuthError) return;
    const target = { status: 'last-error', try: 'try-error', access: 'access-error', runs: 'runs-error' }[where];
    if (target) $(target).textContent = e.message;
    else console.error(e);
  };
}

window.addEventListener('hashchange', route);

// ---- status ------------------------------------------------------------

let statusTimer = null;

async function showStatus() {
  clearTimeout(statusTimer);
  await refreshStatus();
}

function card(label, value, cls) {
  return el('div', { class: `card ${cls || ''}` }, el('div', { class: 'label', text: label }), el('div', { class: 'value', text: value }));
}

async function refreshStatus() {
  clearTimeout(statusTimer);
  try {
    const s = await api('/v1/console/status');
    hideLogin();
    renderServing(s);
    const facts = s.facts || {};
    clear($('status-cards'),
      card('Policy generation', s.generation),
      card('Fact revision', `${s.revision}`, ''),
      card('Facts from', facts.source === 'store' ? `store ${facts.store}` : 'entity files'),
      card('Loaded at', s.loaded_at.replace('T', ' ').replace(/\.\d+/, '')),
      card('Reloads', `${s.reloads} (${s.reload_failures} failed)`),
      card('State', s.stale ? 'stale' : 'serving', s.stale ? 'bad' : 'good'),
      card('Watching files', s.watch ? `yes (${s.watch.debounce_ms} ms)` : 'no'));
    const err = s.last_error;
    if (err) {
      clear($('last-error'), el('div', { class: 'reload-error', 'data-testid': 'reload-error' },
        el('h3', { text: 'The last reload failed: still serving the last good files' }),
        el('p', {}, el('span', { class: 'muted', text: `${err.at}  ` }), el('code', { text: err.summary })),
        err.diagnostics.map((d) => el('pre', { class: 'diag', 'data-location': d.location, text: d.rendered || d.message }))));
    } else {
      clear($('last-error'), el('p', { class: 'reload-ok', 'data-testid': 'reload-ok', text: s.reload_failures > 0 ? 'The last reload succeeded: the earlier error is cleared.' : 'No reload error.' }));
    }
    clear($('warnings'), s.warnings.length ? [el('h3', { text: `Warnings (${s.warnings.length})` }), s.warnings.map((w) => el('pre', { text: w.rendered || w.message }))] : []);
    clear($('files').tBodies[0], s.files.map((f) => el('tr', {},
      el('td', { class: 'mono', text: f.path }), el('td', { text: f.kind }), el('td', { text: f.bytes }), el('td', { class: 'digest', text: f.sha256 }))));
  } catch (e) {
    if (!(e instanceof AuthError)) $('last-error').textContent = `Cannot read the status: ${e.message}`;
    if (e instanceof AuthError) return;
  }
  if (current === 'status') statusTimer = setTimeout(refreshStatus, 1000);
}

function renderServing(s) {
  const node = $('serving');
  node.textContent = `generation ${s.generation} · revision ${s.revision}${s.stale ? ' · stale' : ''}`;
  node.classList.toggle('stale', !!s.stale);
}

// ---- catalog and completion ---------------------------------------------

let catalog = null;
async function getCatalog() {
  if (!catalog) catalog = await api('/v1/console/catalog');
  return catalog;
}

function debounce(fn, ms) {
  let t = null;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

async function fillCompletions(list, types, text) {
  if (!types.length) return;
  const q = new URLSearchParams({ types: types.join(','), q: text || '', limit: '30' });
  const answer = await api(`/v1/console/complete?${q}`);
  clear(list, answer.items.map((uid) => el('option', { value: uid })));
}

function actionInfo(name) {
  if (!catalog) return null;
  const id = (name || '').trim().replace(/^.*::"/, '').replace(/"$/, '');
  return catalog.actions.find((a) => a.id === id || a.uid === name) || null;
}

function typeOf(ref) {
  const m = /^(.*)::"/.exec((ref || '').trim());
  return m ? m[1] : null;
}

// Types whose name ends like `typed` (`User` matches `Prefect::User`).
function matchTypes(types, typed) {
  if (!typed) return types;
  const hit = types.filter((t) => t === typed || t.endsWith(`::${typed}`));
  return hit.length ? hit : types;
}

// ---- try a request -----------------------------------------------------

let tryWired = false;
async function showTry(params) {
  const c = await getCatalog();
  hideLogin();
  if (!tryWired) {
    tryWired = true;
    const principal = $('principal');
    const action = $('action');
    const resource = $('resource');
    const refreshActions = () => {
      const pt = typeOf(principal.value);
      const rt = typeOf(resource.value);
      const named = (types, t) => !t || types.some((x) => x === t || x.endsWith(`::${t}`));
      const fits = c.actions.filter((a) => named(a.principals, pt) && named(a.resources, rt));
      clear($('action-options'), (fits.length ? fits : c.actions).map((a) => el('option', { value: a.id })));
    };
    principal.addEventListener('input', debounce(() => {
      const a = actionInfo(action.value);
      fillCompletions($('principal-options'), matchTypes(a ? a.principals : c.principal_types, typeOf(principal.value)), principal.value).catch(report('try'));
      refreshActions();
    }, 120));
    resource.addEventListener('input', debounce(() => {
      const a = actionInfo(action.value);
      fillCompletions($('resource-options'), matchTypes(a ? a.resources : c.resource_types, typeOf(resource.value)), resource.value).catch(report('try'));
      refreshActions();
    }, 120));
    action.addEventListener('input', () => renderContextHint(actionInfo(action.value)));
    refreshActions();
  }
  for (const k of ['principal', 'action', 'resource']) if (params.get(k)) $(k).value = params.get(k);
  if (params.get('principal') && params.get('action') && params.get('resource')) await decide();
}

function renderContextHint(action) {
  const hint = $('context-hint');
  if (!action || !action.context.length) {
    hint.textContent = action ? `${action.id} takes no context.` : '';
    return;
  }
  hint.textContent = `Context of ${action.id}: ` + action.context
    .map((a) => `${a.name}${a.required ? '' : '?'}: ${a.type}`).join(', ') +
    ' (e.g. {"ip": "10.0.0.1"}; extension values as strings)';
}

async function decide() {
  $('try-error').textContent = '';
  const text = $('context').value.trim();
  let context;
  if (text) {
    try { context = JSON.parse(text); } catch (e) { $('try-error').textContent = `Context: invalid JSON: ${e.message}`; return; }
  }
  const body = { principal: $('principal').value.trim(), action: $('action').value.trim(), resource: $('resource').value.trim() };
  if (context !== undefined) body.context = context;
  $('decide').disabled = true;
  try {
    const d = await api('/v1/console/decide', { method: 'POST', body });
    renderDecision(d);
  } catch (e) {
    clear($('try-result'));
    throw e;
  } finally {
    $('decide').disabled = false;
  }
}

function groundChip(ground) {
  const g = ground || 'policy';
  return el('span', { class: `chip ${g}`, text: RULE_NAMES[g] || g });
}

function becauseList(list) {
  return el('ul', {}, list.map((b) => el('li', {},
    el('code', { text: b.policy }), b.origin ? el('span', { class: 'muted', text: ` (${b.origin})` }) : null,
    b.facts.length ? el('ul', {}, b.facts.map((f) => el('li', {}, groundChip(f.ground), f.text))) : null)));
}

function renderDecision(d) {
  const out = [];
  out.push(el('div', { class: `decision ${d.decision}`, id: 'decision', 'data-testid': 'decision', text: d.decision }));
  out.push(el('p', { class: 'reason', id: 'reason', 'data-testid': 'reason', text: d.reason }));
  out.push(el('p', { class: 'muted' }, `${d.request.principal} · ${d.request.action} · ${d.request.resource} — generation ${d.generation}, revision ${d.revision}`));
  for (const n of d.notes) out.push(el('p', { class: 'error', text: `Note: ${n}` }));
  out.push(el('h3', { text: d.policies.length ? 'Determining policies' : 'Determining policies: none' }));
  out.push(el('div', { id: 'policies' }, d.policies.map((p) => el('details', { class: 'policy', 'data-policy': p.id },
    el('summary', {}, el('span', { class: `effect-${p.effect}`, text: p.effect }), ' ', el('code', { text: p.id }), ' — ',
      el('a', { href: `#policy-${p.id}`, class: 'mono', onclick: (ev) => { ev.preventDefault(); ev.target.closest('details').toggleAttribute('open'); } },
        p.line ? `${p.file}:${p.line}` : `${p.file || 'unknown file'}`)),
    el('pre', { text: p.text || '' })))));
  if (d.errors.length) {
    out.push(el('h3', { text: 'Evaluation errors' }));
    out.push(el('ul', {}, d.errors.map((e) => el('li', { class: 'error', text: e }))));
  }
  if (d.granted_by.length) {
    out.push(el('h3', { text: `Why ${d.request.action.replace(/^.*::/, '')} is granted` }));
    out.push(becauseList(d.granted_by));
  }
  out.push(el('h3', { text: `What ${d.request.principal} holds on ${d.request.resource} (${d.holds.length})` }));
  if (d.holds.length) {
    out.push(el('table', { class: 'grid', id: 'holds' },
      el('thead', {}, el('tr', {}, el('th', { text: 'action' }), el('th', { text: 'granted by' }))),
      el('tbody', {}, d.holds.map((h) => el('tr', {}, el('td', { class: 'mono', text: h.action }), el('td', {}, becauseList(h.granted_by)))))));
  } else {
    out.push(el('p', { class: 'muted', text: 'Nothing.' }));
  }
  if (catalog && catalog.workspace_type && d.request.resource.startsWith(`${catalog.workspace_type}::`)) {
    out.push(el('p', {}, el('a', { href: `#access?workspace=${encodeURIComponent(d.request.resource)}`, text: 'Open the access map of this workspace' })));
  }
  clear($('try-result'), out);
}

// ---- access map ----------------------------------------------------------

let accessWired = false;
async function showAccess(params) {
  const c = await getCatalog();
  hideLogin();
  if (!accessWired) {
    accessWired = true;
    clear($('legend'), RULES.map(([k, label]) => el('span', {}, el('span', { class: `swatch ${k}` }), label)));
    const ws = $('workspace');
    ws.addEventListener('input', debounce(() => {
      if (c.workspace_type) fillCompletions($('workspace-options'), [c.workspace_type], ws.value).catch(report('access'));
    }, 120));
    const p = $('map-principal');
    p.addEventListener('input', debounce(() => {
      fillCompletions($('map-principal-options'), matchTypes(c.principal_types, typeOf(p.value)), p.value).catch(report('access'));
    }, 120));
  }
  $('access-error').textContent = '';
  if (params.get('workspace')) {
    $('workspace').value = params.get('workspace');
    const m = await api(`/v1/console/access/workspace?${new URLSearchParams({ resource: params.get('workspace') })}`);
    renderMap({
      title: `Who holds what on ${m.workspace.uid}` + (m.workspace.organization ? ` (organization ${m.workspace.organization})` : m.workspace.owner ? ` (personal workspace of ${m.workspace.owner})` : ''),
      corner: 'principal',
      scopes: m.scopes,
      rows: m.principals.map((r) => ({ label: r.uid, key: r.uid, cells: r.cells, href: `#access?principal=${encodeURIComponent(r.uid)}` })),
      truncated: m.truncated, max: m.max_rows, revision: m.revision,
      principalOf: (row) => row.key, workspaceOf: () => m.workspace.uid,
    });
  } else if (params.get('principal')) {
    $('map-principal').value = params.get('principal');
    const m = await api(`/v1/console/access/principal?${new URLSearchParams({ principal: params.get('principal') })}`);
    renderMap({
      title: `Workspaces of ${m.principal.uid}` + (m.principal.stored ? '' : ' (not in the facts)'),
      corner: 'workspace',
      scopes: m.scopes,
      rows: m.workspaces.map((w) => ({ label: `${w.uid}${w.kind ? ` · ${w.kind}` : ''}`, key: w.uid, cells: w.cells, href: `#access?workspace=${encodeURIComponent(w.uid)}` })),
      truncated: m.truncated, max: m.max_rows, revision: m.revision,
      principalOf: () => m.principal.uid, workspaceOf: (row) => row.key,
    });
  } else {
    clear($('access-title'), el('p', { class: 'muted', text: 'Pick a workspace to see who holds each scope, or a principal to see its workspaces.' }));
    clear($('heatmap'));
  }
}

let pinned = null;
function renderMap(m) {
  clear($('access-title'), el('h3', { id: 'map-title', text: m.title }),
    el('p', { class: 'muted', text: `${m.rows.length} row(s) · ${m.scopes.length} action(s) · revision ${m.revision}. Hover a cell for why; click to pin.` }),
    m.truncated ? el('p', { class: 'error', text: `Only the first ${m.max} rows are shown.` }) : null);
  const head = el('tr', {}, el('th', { class: 'row', text: m.corner }), m.scopes.map((s) => el('th', { class: 'scope', title: s }, el('div', { text: s }))));
  const body = m.rows.map((row) => el('tr', { 'data-row': row.key },
    el('th', { class: 'row' }, el('a', { href: row.href, text: row.label })),
    m.scopes.map((s) => {
      const cell = row.cells[s];
      if (!cell) return el('td', { class: 'cell', 'data-principal': m.principalOf(row), 'data-workspace': m.workspaceOf(row), 'data-scope': s, 'data-rule': 'none', title: `${s}: not held` });
      const td = el('td', {
        class: `cell held ${cell.rule}`,
        'data-principal': m.principalOf(row), 'data-workspace': m.workspaceOf(row), 'data-scope': s, 'data-rule': cell.rule,
        title: `${row.key} · ${s}: ${RULE_NAMES[cell.rule] || cell.rule}\n${cell.why.join('\n')}`,
      });
      td.addEventListener('mouseenter', (ev) => showCell(ev, row, s, cell, false));
      td.addEventListener('mouseleave', () => { if (pinned !== td) $('cell-info').hidden = true; });
      td.addEventListener('click', (ev) => {
        if (pinned) pinned.classList.remove('pinned');
        pinned = pinned === td ? null : td;
        if (pinned) td.classList.add('pinned');
        showCell(ev, row, s, cell, true);
      });
      return td;
    })));
  clear($('heatmap'), el('thead', {}, head), el('tbody', {}, body));
  $('cell-info').hidden = true;
}

function showCell(ev, row, scope, cell, stay) {
  const info = $('cell-info');
  clear(info,
    el('div', {}, el('strong', { text: `${row.key} · ${scope}` })),
    el('div', {}, groundChip(cell.rule), el('span', { text: `through ${cell.policies.join(', ')}` })),
    el('ul', {}, cell.why.map((w) => el('li', { text: w }))));
  info.hidden = false;
  const r = ev.target.getBoundingClientRect();
  info.style.left = `${Math.min(r.right + 8, window.innerWidth - 560)}px`;
  info.style.top = `${Math.max(8, r.top - 10)}px`;
  info.dataset.pinned = stay ? 'yes' : 'no';
}

// ---- matrices and proofs --------------------------------------------------

let runsTimer = null;
let runsWired = false;

async function showRuns() {
  if (!runsWired) {
    runsWired = true;
    for (const kind of ['matrices', 'verify']) {
      $(`run-${kind}`).addEventListener('click', () => startRun(kind).catch(report('runs')));
    }
  }
  await refreshRuns();
}

async function startRun(kind) {
  $('runs-error').textContent = '';
  await api('/v1/console/runs', { method: 'POST', body: { kind } });
  await refreshRuns();
}

async function refreshRuns() {
  clearTimeout(runsTimer);
  const r = await api('/v1/console/runs');
  hideLogin();
  $('runs-intro').textContent = `Matrix files: ${r.matrices_path} · properties: ${r.properties_path}. One run at a time, at most ${r.timeout_s} s; runs use the files and facts the sidecar serves.`;
  for (const kind of ['matrices', 'verify']) $(`run-${kind}`).disabled = !!r.running;
  renderRun($('run-matrices-result'), 'Matrices', r.matrices, renderMatrices);
  renderRun($('run-verify-result'), 'Proofs (verify)', r.verify, renderVerify);
  if (r.running && current === 'runs') runsTimer = setTimeout(() => refreshRuns().catch(report('runs')), 1000);
}

function renderRun(node, title, result, details) {
  if (!result) { clear(node, el('h3', { text: title }), el('p', { class: 'muted', text: 'Not run yet.' })); return; }
  const head = el('h3', {}, `${title} `, el('span', { class: `state ${result.state}`, 'data-testid': `state-${result.kind}`, text: result.state }));
  const meta = el('p', { class: 'muted', text: [
    result.started_at ? `started ${result.started_at}` : null,
    result.elapsed_ms !== undefined ? `${(result.elapsed_ms / 1000).toFixed(1)} s` : null,
    result.generation !== undefined ? `generation ${result.generation}, revision ${result.revision}` : null,
  ].filter(Boolean).join(' · ') });
  const body = [];
  if (result.message) body.push(el('pre', { class: 'run-message', text: result.message }));
  if (result.state !== 'running' && !result.message) body.push(details(result));
  clear(node, head, meta, body);
}

function renderMatrices(r) {
  const parts = [el('p', { 'data-testid': 'matrices-summary', text: `${r.passed} passed, ${r.failed} failed` })];
  if (r.failures.length) {
    parts.push(el('h4', { text: 'Failures' }));
    parts.push(r.failures.map((f) => el('div', { class: 'failure' },
      el('div', {}, el('code', { text: `${f.file}:${f.line}:${f.column}` }), ` ${f.name}`),
      el('div', { text: `expected ${f.expected}, got ${f.actual}${f.reasons && f.reasons.length ? ` (by ${f.reasons.join(', ')})` : ''}` }),
      f.message && f.message !== `expected ${f.expected}, got ${f.actual}` ? el('div', { class: 'muted', text: f.message }) : null)));
  }
  parts.push(el('table', { class: 'grid' },
    el('thead', {}, el('tr', {}, el('th', { text: 'file' }), el('th', { text: 'name' }), el('th', { text: 'passed' }), el('th', { text: 'failed' }))),
    el('tbody', {}, r.files.map((f) => el('tr', {}, el('td', { class: 'mono', text: f.file }), el('td', { text: f.name || '' }), el('td', { text: f.passed }), el('td', { class: f.failed ? 'error' : '', text: f.failed }))))));
  return el('div', {}, parts);
}

function renderVerify(r) {
  const s = r.summary || {};
  const parts = [el('p', { 'data-testid': 'verify-summary', text: `${s.proved} of ${s.checks} checks proved (${s.counterexamples} counterexample(s), ${s.unknown} unknown, ${s.errors} error(s)) · ${r.solver || ''}` })];
  if (r.note) parts.push(el('p', { class: 'muted', text: r.note }));
  if (r.failures.length) {
    parts.push(el('h4', { text: 'Not proved' }));
    parts.push(r.failures.map((f) => el('div', { class: 'failure' },
      el('div', {}, el('strong', { text: f.property }), ` ${f.status} in ${f.environment.principal} × ${f.environment.action} × ${f.environment.resource}`),
      f.detail ? el('div', { text: f.detail }) : null,
      f.counterexample ? el('pre', { text: JSON.stringify(f.counterexample, null, 2) }) : null)));
  }
  parts.push(el('table', { class: 'grid' },
    el('thead', {}, el('tr', {}, el('th', { text: 'property' }), el('th', { text: 'rules' }), el('th', { text: 'proved' }))),
    el('tbody', {}, r.properties.map((p) => el('tr', {}, el('td', { class: 'mono', text: p.property }), el('td', { text: (p.rules || []).join(', ') }),
      el('td', { class: p.proved === p.checks ? '' : 'error', text: `${p.proved} / ${p.checks}` }))))));
  return el('div', {}, parts);
}

// ---- start ---------------------------------------------------------------

route();
