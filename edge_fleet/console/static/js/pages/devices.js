// Devices: a live, sortable, filterable, paginated table; and one device's detail page.
import { api } from '../api.js';
import { ago, badge, clear, fixed, h, link, ms, num, pager, route, table, time } from '../dom.js';
import { latencyPlot } from '../plot.js';

const FILTERS = [
  ['q', 'device id contains'], ['profile', 'profile'], ['group', 'group'], ['model', 'model'],
  ['version', 'version'], ['phase', 'phase'], ['presence', 'presence'],
  ['latency_min', 'p50 ≥ ms'], ['latency_max', 'p50 ≤ ms'],
];
const CHOICES = {
  phase: ['', 'idle', 'downloading', 'verifying', 'installing', 'health_check', 'shadowing', 'switching', 'succeeded', 'failed', 'rolled_back', 'unknown'],
  presence: ['', 'online', 'offline', 'unknown'],
};
const SETTLED = ['idle', 'succeeded', 'failed', 'rolled_back', null, undefined];
const state = { filter: {}, sort: 'id', offset: 0, limit: 50 };

// The served model's drift state (ok, drift, warming_up) with the model it belongs to and its worst feature's PSI
// as a tooltip. Every figure is the device's own text: shown as '-' unless it is a number.
export function driftBadge(drift) {
  if (!drift || typeof drift !== 'object') return '-';
  const b = badge(drift.state);
  const of = drift.model ? `${drift.model}: ` : '';
  const fig = (v) => num(v) ?? '-';
  b.title = of + (drift.worst
    ? `${drift.worst}: PSI ${fig(drift.psi)} (threshold ${fig(drift.threshold)}, window ${fig(drift.frames)}/${fig(drift.window)})`
    : `window ${fig(drift.frames)}/${fig(drift.window)}`);
  b.dataset.test = 'drift';
  return b;
}

// A shadow run's report in one line: verdict, agreement against its minimum, frames, both latencies.
export function shadowLine(s) {
  if (!s || typeof s !== 'object') return null;
  const agree = s.agreement == null ? 'n/a' : fixed(s.agreement, 3);
  return `${s.verdict}: agreement ${agree} (min ${num(s.min_agreement) ?? '-'}) over ${num(s.frames) ?? '-'} frames; `
    + `p50 active ${ms(s.active_p50_ms)}, new ${ms(s.candidate_p50_ms)}; ${s.reason ?? ''}`;
}

function filterForm(onChange) {
  const inputs = FILTERS.map(([key, label]) => {
    const input = CHOICES[key]
      ? h('select', { name: key }, CHOICES[key].map((c) => h('option', { value: c, selected: state.filter[key] === c }, c || 'any')))
      : h('input', { name: key, placeholder: label, value: state.filter[key] || '', size: 10,
        type: key.startsWith('latency') || key === 'version' ? 'number' : 'text', step: 'any', min: 0 });
    return h('label', {}, h('span', {}, label), input);
  });
  const form = h('form', { class: 'filters', 'data-test': 'device-filters' }, inputs,
    h('button', { type: 'submit' }, 'Filter'),
    h('button', { type: 'reset', class: 'link' }, 'clear'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    state.filter = Object.fromEntries([...new FormData(form)].filter(([, v]) => v !== ''));
    state.offset = 0;
    onChange();
  });
  form.addEventListener('reset', () => { state.filter = {}; state.offset = 0; setTimeout(onChange); });
  return form;
}

export async function renderList(view) {
  const results = h('div', { 'data-test': 'device-table' });
  async function refresh() {
    const page = await api('/devices', { query: { ...state.filter, sort: state.sort, limit: state.limit, offset: state.offset } });
    clear(results).append(
      table([
        { title: 'Device', sort: 'id', cell: (d) => link(route('devices', d.id), d.id) },
        { title: 'Profile', sort: 'profile', cell: (d) => d.profile || '-' },
        { title: 'Group', sort: 'group', cell: (d) => d.group || '-' },
        { title: 'Model', sort: 'model', cell: (d) => d.model || '-' },
        { title: 'Version', sort: 'version', cell: (d) => d.version ?? '-' },
        { title: 'Phase', sort: 'phase', cell: (d) => badge(d.phase || 'unknown') },
        { title: 'Presence', sort: 'presence', cell: (d) => badge(d.presence) },
        { title: 'p50', sort: 'latency', cell: (d) => ms(d.latency_p50_ms) },
        { title: 'p99', cell: (d) => ms(d.latency_p99_ms) },
        { title: 'Drift', cell: (d) => driftBadge(d.drift) },
        { title: 'Last seen', sort: 'last_seen', cell: (d) => ago(d.last_seen) },
        { title: 'Last error', cell: (d) => (d.last_error ? h('span', { class: 'error' }, d.last_error) : '') },
      ], page.items, {
        class: 'devices', sort: state.sort, empty: 'no device matches',
        rowAttrs: (d) => ({ 'data-device': d.id }),
        onSort: (s) => { state.sort = s; refresh(); },
      }),
      pager(page, (o) => { state.offset = o; refresh(); }));
  }
  view.append(h('h1', {}, 'Devices'), filterForm(refresh), results);
  await refresh();
  return { refresh };
}

function groupForm(d, ctx, onDone) {
  if (!ctx.may('operator')) return null;
  const input = h('input', { name: 'group', value: d.group || '', placeholder: 'group', maxlength: 64 });
  const form = h('form', { class: 'inline', 'data-test': 'group-form' }, input, h('button', { type: 'submit' }, 'Set group'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await api(`/devices/${encodeURIComponent(d.id)}/group`, { method: 'PUT', body: { group: input.value.trim() || null } });
      ctx.flash('group saved', 'ok');
      onDone();
    } catch (e) { ctx.handle(e); }
  });
  return form;
}

export async function renderDetail(view, [id], ctx) {
  const root = h('div', { class: 'device' });
  view.append(root);
  async function refresh() {
    const d = await api(`/devices/${encodeURIComponent(id)}`);
    const facts = [
      ['Profile', d.profile], ['Group', d.group], ['Model', d.model ? `${d.model}:${d.version}` : null],
      ['Phase', badge(d.phase || 'unknown')], ['Presence', badge(d.presence)], ['Last seen', ago(d.last_seen)],
      ['Latency p50 / p99', `${ms(d.latency_p50_ms)} / ${ms(d.latency_p99_ms)}`],
      ['Inferences / errors', `${d.inferences ?? '-'} / ${d.errors ?? '-'}`], ['Agent', d.agent_version],
      ['Update in flight', d.target && !SETTLED.includes(d.phase)
        ? `${d.target.name}:${d.target.version} (${d.phase}, ${Math.round((d.progress || 0) * 100)} %)` : null],
      ['Previous bundle', d.previous ? `${d.previous.name}:${d.previous.version}` : null],
      ['Drift of live inputs', [driftBadge(d.drift), d.drift && d.drift.model
        ? h('span', { class: 'muted', 'data-test': 'drift-model' }, ` of ${d.drift.model}`) : null]],
      ['Last shadow run', shadowLine(d.shadow)],
    ];
    clear(root).append(
      h('h1', {}, 'Device ', h('span', { class: 'mono', 'data-test': 'device-id' }, d.id)),
      h('section', { class: 'card' }, h('dl', { class: 'facts' }, facts.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '-')])),
        groupForm(d, ctx, refresh)),
      h('section', { class: 'card', 'data-test': 'last-error' }, h('h2', {}, 'Last error'),
        d.last_error ? h('pre', { class: 'error' }, d.last_error) : h('p', { class: 'muted' }, 'none')),
      h('section', { class: 'card' }, h('h2', {}, 'Latency over time'), latencyPlot(d.latency_series)),
      h('section', { class: 'card', 'data-test': 'history' }, h('h2', {}, `Update history (${d.history_total})`),
        table([
          { title: 'When', cell: (e) => time(e.at) }, { title: 'Phase', cell: (e) => badge(e.phase || 'unknown') },
          { title: 'Bundle', cell: (e) => (e.model ? `${e.model}:${e.version}` : '-') },
          { title: 'Deployment', cell: (e) => e.deployment_id || '-' },
          { title: 'Error', cell: (e) => (e.last_error ? h('span', { class: 'error' }, e.last_error) : '') },
        ], d.history, { empty: 'no reports yet' })),
      h('section', { class: 'card' }, h('h2', {}, 'Rollouts that targeted it'),
        table([
          { title: 'Rollout', cell: (r) => link(route('rollouts', r.rollout_id), r.rollout_id) },
          { title: 'Bundle', cell: (r) => r.bundle }, { title: 'Its status', cell: (r) => badge(r.status) },
          { title: 'Reason', cell: (r) => r.reason || '' },
        ], d.rollouts, { empty: 'none' })));
  }
  await refresh();
  return { refresh };
}
