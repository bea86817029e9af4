// Rollouts: the list with a form to start one (operator), and one rollout's page with its
// progress per stage and per device, and halt / resume / roll back.
import { api } from '../api.js';
import { ago, badge, clear, fixed, h, link, ms, pager, route, table, time } from '../dom.js';
import { shadowLine } from './devices.js';
import { rolloutCard } from './overview.js';

const ACTIONS = [
  ['halt', 'Halt', ['pending', 'running'], 'No new stage starts; devices already updating finish. Resume continues.'],
  ['resume', 'Resume', ['paused'], 'Continue with the next stage.'],
  ['rollback', 'Roll back', ['pending', 'running', 'paused', 'succeeded'],
    'Halt now and send every device that switched its previous bundle.'],
];

async function deployForm(ctx) {
  const [bundles, groups] = await Promise.all([api('/bundles', { query: { limit: 500 } }), api('/groups', { query: { limit: 500 } })]);
  const names = [...new Set(bundles.items.map((b) => `${b.name}:${b.version}`))];
  const field = (label, input) => h('label', {}, h('span', {}, label), input);
  const form = h('form', { class: 'card deploy', 'data-test': 'deploy-form' },
    h('h2', {}, 'Start a rollout'),
    field('Bundle', h('select', { name: 'bundle', required: true }, names.map((n) => h('option', { value: n }, n)))),
    field('Group', h('select', { name: 'group' }, h('option', { value: '' }, '(use the device list)'),
      groups.items.map((g) => h('option', { value: g.name }, `${g.name} (${g.devices})`)))),
    field('or devices', h('input', { name: 'devices', placeholder: 'pi-1,pi-2' })),
    field('Stages %', h('input', { name: 'stages', value: '5,25,100' })),
    field('Max failures', h('input', { name: 'max_failures', value: '0', size: 5 })),
    field('Stage timeout s', h('input', { name: 'stage_timeout', type: 'number', value: '900', min: 1 })),
    field('Stage soak s', h('input', { name: 'stage_soak', type: 'number', value: '0', min: 0 })),
    field('Min shadow agreement', h('input', { name: 'min_shadow_agreement', type: 'number', step: 'any', min: 0, max: 1,
      placeholder: 'none (e.g. 0.9)' })),
    field('Shadow frames', h('input', { name: 'shadow_frames', type: 'number', value: '300', min: 1 })),
    h('button', { type: 'submit' }, 'Start rollout'));
  if (!names.length) form.append(h('p', { class: 'muted' }, 'No bundle published yet.'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = Object.fromEntries(new FormData(form));
    const body = { bundle: f.bundle, stages: f.stages, max_failures: f.max_failures,
      stage_timeout: Number(f.stage_timeout), stage_soak: Number(f.stage_soak) };
    if (f.min_shadow_agreement !== '') {
      body.min_shadow_agreement = Number(f.min_shadow_agreement);
      body.shadow_frames = Number(f.shadow_frames);
    }
    if (f.devices.trim()) body.devices = f.devices.split(',').map((s) => s.trim()).filter(Boolean);
    else if (f.group) body.group = f.group;
    try {
      const r = await api('/rollouts', { method: 'POST', body });
      ctx.flash(`rollout ${r.id} started`, 'ok');
      ctx.go(route('rollouts', r.id));
    } catch (e) { ctx.handle(e); }
  });
  return form;
}

export async function renderList(view, _params, ctx) {
  const list = h('div', { 'data-test': 'rollout-list' });
  let offset = 0;
  async function refresh() {
    const page = await api('/rollouts', { query: { limit: 20, offset } });
    clear(list).append(table([
      { title: 'Rollout', cell: (r) => link(route('rollouts', r.id), r.id) },
      { title: 'Bundle', cell: (r) => r.bundle }, { title: 'Status', cell: (r) => badge(r.status) },
      { title: 'Progress', cell: (r) => `${r.progress.succeeded}/${r.progress.targets} (${r.progress.percent} %)` },
      { title: 'Started by', cell: (r) => r.created_by || '-' }, { title: 'Created', cell: (r) => ago(r.created_at) },
      { title: 'Reason', cell: (r) => r.reason || '' },
    ], page.items, { empty: 'no rollouts yet' }), pager(page, (o) => { offset = o; refresh(); }));
  }
  view.append(h('h1', {}, 'Rollouts'), ctx.may('operator') ? await deployForm(ctx) : null, list);
  await refresh();
  return { refresh };
}

function actionButtons(r, ctx, after) {
  if (!ctx.may('operator')) return null;
  return h('div', { class: 'actions' }, ACTIONS.map(([action, label, from, help]) => h('button', {
    type: 'button', 'data-action': action, title: help, disabled: !from.includes(r.status) || Boolean(r.request),
    class: action === 'rollback' ? 'danger' : '',
    onclick: async (ev) => {
      if (action === 'rollback' && !window.confirm(`Roll back ${r.bundle} on every device that switched?`)) return;
      ev.target.disabled = true;
      try {
        await api(`/rollouts/${encodeURIComponent(r.id)}/${action}`, { method: 'POST' });
        ctx.flash(`${label.toLowerCase()}: done`, 'ok');
      } catch (e) { ctx.handle(e); }
      after();
    },
  }, label)));
}

export async function renderDetail(view, [id], ctx) {
  const root = h('div', { class: 'rollout' });
  view.append(root);
  async function refresh() {
    const r = await api(`/rollouts/${encodeURIComponent(id)}`);
    clear(root).append(
      h('h1', {}, 'Rollout ', h('span', { class: 'mono' }, r.id)),
      h('p', { class: 'status-line' }, badge(r.status), ' ', h('span', { 'data-test': 'rollout-status' }, r.status),
        ` · ${r.bundle} · stage ${Math.max(r.stage, 0) + 1}/${r.stages.length} · started by ${r.created_by || '-'} ${ago(r.created_at)}`,
        r.request ? h('span', { class: 'muted' }, ` · ${r.request} requested`) : null),
      actionButtons(r, ctx, refresh),
      rolloutCard(r),
      h('section', { class: 'card' }, h('h2', {}, 'Devices'), table([
        { title: 'Device', cell: (t) => (t.stage < 0 ? h('span', { class: 'mono' }, t.device_id) : link(route('devices', t.device_id), t.device_id)) },
        { title: 'Stage', cell: (t) => (t.stage < 0 ? 'skipped' : String(t.stage + 1)) },
        { title: 'Status', cell: (t) => badge(t.status) }, { title: 'Reason', cell: (t) => t.reason || '' },
        { title: 'Sent', cell: (t) => time(t.sent_at) }, { title: 'Done', cell: (t) => time(t.done_at) },
        { title: 'Shadow run', cell: (t) => shadowLine(t.shadow) || '' },
      ], r.devices, { rowAttrs: (t) => ({ 'data-device': t.device_id }) })),
      r.shadow ? h('section', { class: 'card', 'data-test': 'stage-shadow' }, h('h2', {}, 'Shadow runs per stage'), table([
        { title: 'Stage', cell: (s) => String(s.stage) },
        { title: 'Verdicts', cell: (s) => (s.shadow ? Object.entries(s.shadow.verdicts).map(([v, n]) => `${n} ${v}`).join(', ') : '-') },
        { title: 'Agreement min / mean', cell: (s) => (s.shadow && s.shadow.agreement_min != null
          ? `${fixed(s.shadow.agreement_min, 3)} / ${fixed(s.shadow.agreement_mean, 3)}` : '-') },
        { title: 'Frames', cell: (s) => (s.shadow ? String(s.shadow.frames) : '-') },
        { title: 'p50 active / new', cell: (s) => (s.shadow ? `${ms(s.shadow.active_p50_ms)} / ${ms(s.shadow.candidate_p50_ms)}` : '-') },
      ], r.stage_progress, { rowAttrs: (s) => ({ 'data-stage': String(s.stage) }) })) : null,
      h('section', { class: 'card' }, h('h2', {}, 'Settings'), h('dl', { class: 'facts' },
        [['Stages (cumulative devices)', r.stages.join(', ')], ['Max failures', String(r.max_failures)],
          ['Stage timeout', `${r.stage_timeout} s`], ['Stage soak', `${r.stage_soak} s`],
          ['Download', r.source_url || 'MQTT blocks'],
          ['Shadow gate', r.shadow ? `agreement ≥ ${r.shadow.min_agreement} over ${r.shadow.frames} live frames `
            + `(wait ≤ ${r.shadow.timeout_s} s)` : 'none: switch after the health check']].map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]))));
  }
  await refresh();
  return { refresh };
}
