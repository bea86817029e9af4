// Overview: devices by phase and presence, active rollouts with a progress bar per stage,
// the devices heard from most recently, and the latest finished rollouts.
import { api } from '../api.js';
import { ago, badge, bar, clear, h, link, pct, route, table } from '../dom.js';

export function counts(title, values, testid) {
  const entries = Object.entries(values || {});
  return h('section', { class: 'card counts', 'data-test': testid },
    h('h2', {}, title),
    entries.length
      ? h('dl', {}, entries.map(([k, n]) => [h('dt', {}, badge(k)), h('dd', { 'data-key': k }, String(n))]))
      : h('p', { class: 'muted' }, 'no devices yet'));
}

export function rolloutCard(r) {
  const p = r.progress;
  return h('article', { class: 'rollout-card', 'data-rollout': r.id },
    h('header', {}, link(route('rollouts', r.id), r.bundle), ' ', badge(r.status),
      h('span', { class: 'muted' }, ` ${r.id}`)),
    h('div', { class: 'overall' }, bar(p.succeeded, p.failed, p.targets, 'all targets'),
      h('span', { class: 'pct', 'data-test': 'rollout-percent' }, pct(p.percent))),
    h('ol', { class: 'stages' }, r.stage_progress.map((s) => h('li', { 'data-state': s.state },
      h('span', { class: 'stage-name' }, `stage ${s.stage} (${s.devices} device${s.devices === 1 ? '' : 's'})`),
      bar(s.succeeded, s.failed, s.devices, `stage ${s.stage}`),
      h('span', { class: 'pct' }, `${s.succeeded}/${s.devices}`)))),
    r.reason ? h('p', { class: 'reason' }, r.reason) : null);
}

export async function render(view, _params, ctx) {
  const root = h('div', { class: 'overview' });
  view.append(h('h1', {}, 'Fleet overview'), root);

  async function refresh() {
    const [o, recent] = await Promise.all([api('/overview'), api('/devices', { query: { sort: '-last_seen', limit: 10 } })]);
    ctx.overview = o;
    clear(root).append(
      h('div', { class: 'grid' },
        h('section', { class: 'card total' }, h('h2', {}, 'Devices'),
          h('p', { class: 'big', 'data-test': 'device-total' }, String(o.counts.total.devices)),
          h('p', {}, link('#/devices', 'all devices ›'))),
        counts('By presence', o.counts.presence, 'presence-counts'),
        counts('By update phase', o.counts.phase, 'phase-counts'),
        h('section', { class: 'card total' }, h('h2', {}, 'Bundles'), h('p', { class: 'big' }, String(o.bundles)),
          h('p', {}, link('#/bundles', 'all bundles ›')))),
      h('section', { class: 'card' }, h('h2', {}, 'Active rollouts'),
        o.active_rollouts.length ? o.active_rollouts.map(rolloutCard) : h('p', { class: 'muted' }, 'none running'),
        ctx.may('operator') ? h('p', {}, link('#/rollouts', 'start a rollout ›')) : null),
      h('section', { class: 'card', 'data-test': 'recent-devices' }, h('h2', {}, 'Recently heard from'),
        table([
          { title: 'Device', cell: (d) => link(route('devices', d.id), d.id) },
          { title: 'Model', cell: (d) => (d.model ? `${d.model}:${d.version}` : '-') },
          { title: 'Phase', cell: (d) => badge(d.phase || 'unknown') },
          { title: 'Presence', cell: (d) => badge(d.presence) },
          { title: 'Last seen', cell: (d) => ago(d.last_seen) },
        ], recent.items, { empty: 'no device has reported yet: start `edge-agent serve --broker ...`' })),
      h('section', { class: 'card' }, h('h2', {}, 'Finished recently'),
        o.recent_rollouts.length ? o.recent_rollouts.map(rolloutCard) : h('p', { class: 'muted' }, 'none')));
  }

  await refresh();
  return { refresh };
}
