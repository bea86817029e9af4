// DOM helpers. Text always goes in as text nodes (never innerHTML), so device ids, model names
// and error messages are shown literally whatever they contain.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function link(href, ...children) {
  return h('a', { href }, ...children);
}

export function route(...parts) {
  return '#/' + parts.map((p) => encodeURIComponent(String(p))).join('/');
}

export function time(sec) {
  if (!sec) return '-';
  const d = new Date(sec * 1000);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function ago(sec) {
  if (!sec) return '-';
  const s = Math.max(0, Date.now() / 1000 - sec);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return time(sec);
}

// A device's figure as a finite number, or null: its report is untrusted JSON, where a figure may come as
// text, null, an object or a list (`.toFixed` on those threw and blanked the whole page).
export function num(v) {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

// A figure with `digits` decimals, or '-' when it is missing or not a number.
export function fixed(v, digits) {
  const n = num(v);
  return n === null ? '-' : n.toFixed(digits);
}

export function ms(v) {
  const n = num(v);
  return n === null ? '-' : `${n.toFixed(2)} ms`;
}

export function bytes(n) {
  if (n === null || n === undefined) return '-';
  const units = ['B', 'kB', 'MB', 'GB'];
  let i = 0;
  let v = Number(n);
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function pct(v) {
  return `${Number(v || 0).toFixed(v % 1 ? 1 : 0)} %`;
}

// A progress bar: green for succeeded, red for failed, of `total`.
export function bar(succeeded, failed, total, label) {
  const w = (n) => (total ? `${(100 * n) / total}%` : '0%');
  const outer = h('div', { class: 'bar', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': total,
    'aria-valuenow': succeeded, title: label || '' });
  const ok = h('span', { class: 'ok' });
  ok.style.width = w(succeeded);
  const bad = h('span', { class: 'bad' });
  bad.style.width = w(failed);
  return append(outer, [ok, bad]);
}

export function badge(text, kind) {
  return h('span', { class: `badge ${kind || String(text || 'unknown').replace(/[^a-z_]/gi, '')}` }, text ?? '-');
}

// A table from column specs {title, cell(row) -> Node|string, sort?: key}.
export function table(columns, rows, opts = {}) {
  const head = h('tr', {}, columns.map((c) => {
    const th = h('th', {}, c.title);
    if (c.sort && opts.onSort) {
      th.classList.add('sortable');
      th.dataset.sort = c.sort;
      if (opts.sort === c.sort) th.dataset.dir = 'asc';
      if (opts.sort === `-${c.sort}`) th.dataset.dir = 'desc';
      th.addEventListener('click', () => opts.onSort(opts.sort === c.sort ? `-${c.sort}` : c.sort));
    }
    return th;
  }));
  const body = rows.length
    ? rows.map((r) => h('tr', opts.rowAttrs ? opts.rowAttrs(r) : {}, columns.map((c) => h('td', {}, c.cell(r)))))
    : [h('tr', {}, h('td', { colspan: columns.length, class: 'muted' }, opts.empty || 'nothing here'))];
  return h('table', { class: opts.class || '' }, h('thead', {}, head), h('tbody', {}, body));
}

// Prev / next for a page {items, total, limit, offset}.
export function pager(page, onOffset) {
  const from = page.total ? page.offset + 1 : 0;
  const to = page.offset + page.items.length;
  return h('div', { class: 'pager' },
    h('button', { type: 'button', disabled: page.offset <= 0, onclick: () => onOffset(Math.max(0, page.offset - page.limit)) }, '‹ prev'),
    h('span', { class: 'muted' }, `${from}–${to} of ${page.total}`),
    h('button', { type: 'button', disabled: to >= page.total, onclick: () => onOffset(page.offset + page.limit) }, 'next ›'));
}
