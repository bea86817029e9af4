// Bundles: the list with an upload form (admin), and one bundle's manifest as a reviewer reads it:
// precision, the accuracy gate's evidence, sizes, host latency, signer, files.
import { api, download } from '../api.js';
import { ago, bytes, clear, h, link, pager, route, table } from '../dom.js';

function uploadForm(ctx, after) {
  if (!ctx.may('admin')) return null;
  const file = h('input', { type: 'file', name: 'bundle', accept: '.edgebundle', required: true });
  const form = h('form', { class: 'card inline', 'data-test': 'upload-form' }, h('h2', {}, 'Publish a bundle'), file,
    h('button', { type: 'submit' }, 'Upload and verify'),
    h('p', { class: 'muted' }, 'Verified against the fleet\'s trusted keys, exactly like `edge-fleet publish`.'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = file.files[0];
    if (!f) return;
    try {
      const b = await api('/bundles', { method: 'POST', raw: f, query: { filename: f.name } });
      ctx.flash(`published ${b.name}:${b.version} for ${b.profile}`, 'ok');
      form.reset();
      after();
    } catch (e) { ctx.handle(e); }
  });
  return form;
}

export async function renderList(view, _params, ctx) {
  const list = h('div', { 'data-test': 'bundle-list' });
  let offset = 0;
  async function refresh() {
    const page = await api('/bundles', { query: { limit: 50, offset } });
    clear(list).append(table([
      { title: 'Bundle', cell: (b) => link(route('bundles', b.sha256), `${b.name}:${b.version}`) },
      { title: 'Profile', cell: (b) => b.profile }, { title: 'Precision', cell: (b) => b.precision || '-' },
      { title: 'Format', cell: (b) => `${b.format || '-'} / ${b.runtime || '-'}` }, { title: 'Size', cell: (b) => bytes(b.size) },
      { title: 'Signed by', cell: (b) => h('span', { class: 'mono' }, b.key_id) }, { title: 'Published', cell: (b) => ago(b.published_at) },
    ], page.items, { empty: 'no bundle published yet' }), pager(page, (o) => { offset = o; refresh(); }));
  }
  view.append(h('h1', {}, 'Bundles'), uploadForm(ctx, refresh), list);
  await refresh();
  return { refresh };
}

function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter(([, v]) => v !== undefined).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '-')]));
}

function accuracy(a) {
  if (!a) return h('p', { class: 'muted' }, 'no accuracy evidence in the manifest');
  if (a.checked === false) return h('p', { class: 'muted' }, 'the accuracy gate was not run for this bundle');
  const shown = Object.entries(a).filter(([, v]) => typeof v !== 'object');
  return facts(shown.map(([k, v]) => [k.replaceAll('_', ' '), typeof v === 'number' && v <= 1 && v > 0 && /accuracy|agreement/.test(k)
    ? `${(100 * v).toFixed(2)} %` : String(v)]));
}

function latency(l) {
  if (!l) return h('p', { class: 'muted' }, 'no host latency in the manifest');
  return facts(Object.entries(l).filter(([, v]) => typeof v !== 'object').map(([k, v]) => [k.replaceAll('_', ' '), String(v)]));
}

export async function renderDetail(view, [sha], ctx) {
  const b = await api(`/bundles/${encodeURIComponent(sha)}`);
  const filename = `${b.name}-v${b.version}-${b.profile}.edgebundle`;
  view.append(
    h('h1', {}, 'Bundle ', h('span', { class: 'mono', 'data-test': 'bundle-name' }, `${b.name}:${b.version}`)),
    h('section', { class: 'card' }, facts([
      ['Profile', b.profile], ['Precision', b.precision], ['Format / runtime', `${b.format} / ${b.runtime}`],
      ['Size', `${bytes(b.size)} (${b.size} B)`], ['SHA-256', h('span', { class: 'mono' }, b.sha256)],
      ['Signer key', h('span', { class: 'mono' }, `${b.signer.key_id} (${b.signer.algorithm || '?'})`)],
      ['Published', ago(b.published_at)], ['Built by', b.created_by || '-'],
    ]), h('button', { type: 'button', onclick: () => download(b.sha256, filename).catch(ctx.handle) }, 'Download')),
    h('section', { class: 'card', 'data-test': 'accuracy' }, h('h2', {}, 'Accuracy gate'), accuracy(b.accuracy)),
    h('section', { class: 'card', 'data-test': 'host-latency' }, h('h2', {}, 'Host latency'), latency(b.host_latency)),
    h('section', { class: 'card' }, h('h2', {}, 'Sizes'), b.sizes
      ? facts(Object.entries(b.sizes).map(([k, v]) => [k.replaceAll('_', ' '), /bytes/.test(k) ? bytes(v) : String(v)]))
      : h('p', { class: 'muted' }, '-')),
    h('section', { class: 'card' }, h('h2', {}, 'Files'), table([
      { title: 'Path', cell: (f) => h('span', { class: 'mono' }, f.path) }, { title: 'Size', cell: (f) => bytes(f.size) },
      { title: 'SHA-256', cell: (f) => h('span', { class: 'mono' }, String(f.sha256).slice(0, 16)) },
    ], b.files || [])),
    h('details', { class: 'card' }, h('summary', {}, 'Whole manifest'), h('pre', { class: 'manifest' }, JSON.stringify(b.manifest, null, 2))));
  return null;
}
