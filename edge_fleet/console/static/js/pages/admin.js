// Tokens (create, revoke; secrets shown once) and the audit log. Admins only.
import { api } from '../api.js';
import { badge, clear, h, pager, table, time } from '../dom.js';

export async function render(view, _params, ctx) {
  if (!ctx.may('admin')) {
    view.append(h('p', {}, 'Tokens and the audit log need an admin token.'));
    return null;
  }
  const tokens = h('div', { 'data-test': 'tokens' });
  const audit = h('div', { 'data-test': 'audit' });
  let offset = 0;
  const name = h('input', { name: 'name', placeholder: 'ci-pipeline', required: true, maxlength: 64 });
  const role = h('select', { name: 'role' }, ['viewer', 'operator', 'admin'].map((r) => h('option', { value: r }, r)));
  const secret = h('p', { class: 'secret', hidden: true });
  const form = h('form', { class: 'inline' }, name, role, h('button', { type: 'submit' }, 'Create token'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const t = await api('/tokens', { method: 'POST', body: { name: name.value.trim(), role: role.value } });
      secret.hidden = false;
      clear(secret).append(`Token ${t.name} (${t.role}) — copy it now, it is not shown again: `, h('code', {}, t.token));
      form.reset();
      refresh();
    } catch (e) { ctx.handle(e); }
  });

  async function refresh() {
    const [t, a] = await Promise.all([api('/tokens', { query: { limit: 500 } }), api('/audit', { query: { limit: 50, offset } })]);
    clear(tokens).append(table([
      { title: 'Name', cell: (x) => x.name }, { title: 'Role', cell: (x) => badge(x.role) },
      { title: 'Created', cell: (x) => `${time(x.created_at)} by ${x.created_by || '-'}` },
      { title: 'Last used', cell: (x) => time(x.last_used_at) },
      { title: '', cell: (x) => (x.revoked_at ? `revoked ${time(x.revoked_at)}` : h('button', { type: 'button', class: 'danger',
        onclick: async () => { try { await api(`/tokens/${encodeURIComponent(x.name)}`, { method: 'DELETE' }); refresh(); } catch (e) { ctx.handle(e); } } }, 'Revoke')) },
    ], t.items));
    clear(audit).append(table([
      { title: 'When', cell: (e) => time(e.at) }, { title: 'Who', cell: (e) => `${e.actor} (${e.role || '-'})` },
      { title: 'Action', cell: (e) => e.action }, { title: 'Target', cell: (e) => h('span', { class: 'mono' }, e.target || '-') },
      { title: 'Outcome', cell: (e) => h('span', { class: e.outcome === 'ok' ? '' : 'error' }, e.outcome) },
    ], a.items, { empty: 'nothing audited yet' }), pager(a, (o) => { offset = o; refresh(); }));
  }
  view.append(h('h1', {}, 'Tokens & audit'), h('section', { class: 'card' }, h('h2', {}, 'API tokens'), form, secret, tokens),
    h('section', { class: 'card' }, h('h2', {}, 'Audit log'), audit));
  await refresh();
  return { refresh };
}
