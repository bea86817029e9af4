// The console: hash routes -> page modules; a live stream re-renders the page shown when the fleet changes.
import { api, ApiError, live, takeTokenFromUrl, token } from './api.js';
import { clear, h } from './dom.js';
import * as admin from './pages/admin.js';
import * as bundles from './pages/bundles.js';
import * as devices from './pages/devices.js';
import * as overview from './pages/overview.js';
import * as rollouts from './pages/rollouts.js';

// [pattern, page module, nav key]; a module exports render(view, params, ctx) -> {refresh}
const ROUTES = [
  [/^\/?$/, overview.render, 'overview'],
  [/^\/devices$/, devices.renderList, 'devices'],
  [/^\/devices\/(.+)$/, devices.renderDetail, 'devices'],
  [/^\/rollouts$/, rollouts.renderList, 'rollouts'],
  [/^\/rollouts\/(.+)$/, rollouts.renderDetail, 'rollouts'],
  [/^\/bundles$/, bundles.renderList, 'bundles'],
  [/^\/bundles\/(.+)$/, bundles.renderDetail, 'bundles'],
  [/^\/admin$/, admin.render, 'admin'],
];

const ctx = {
  who: null,
  overview: null,
  may: (role) => ['viewer', 'operator', 'admin'].indexOf(ctx.who?.role) >= ['viewer', 'operator', 'admin'].indexOf(role),
  go: (hash) => { location.hash = hash; },
  flash,
};
let current = null;
let shownAt = 0;
let pending = null;

function flash(message, kind = 'error') {
  const el = document.getElementById('flash');
  el.textContent = message;
  el.className = kind;
  el.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { el.hidden = true; }, kind === 'error' ? 10000 : 4000);
}

async function show() {
  const view = document.getElementById('view');
  const path = decodeURIComponent(location.hash.replace(/^#/, '').split('?')[0]) || '/';
  const match = ROUTES.map(([re, page, key]) => [path.match(re), page, key]).find(([m]) => m);
  document.querySelectorAll('#nav a').forEach((a) => a.classList.toggle('active', match && a.dataset.page === match[2]));
  clear(view);
  if (!match) {
    view.append(h('p', {}, 'No such page. ', h('a', { href: '#/' }, 'Back to the overview')));
    return;
  }
  const [m, page] = match;
  try {
    current = (await page(view, m.slice(1), ctx)) || null;
  } catch (e) {
    handle(e);
  }
}

function handle(e) {
  if (e instanceof ApiError && e.status === 401) {
    token.clear();
    login('Your token was refused (unknown or revoked). Sign in again.');
    return;
  }
  flash(e.message || String(e));
}
ctx.handle = handle;

// The live stream: refresh the page on a change, at most once a second.
function changed(payload) {
  ctx.overview = payload.overview;
  if (!current || !current.refresh) return;
  const focused = document.activeElement;
  if (focused && focused.closest('#view') && /^(INPUT|SELECT|TEXTAREA)$/.test(focused.tagName)) return; // someone is typing
  const wait = Math.max(0, 1000 - (Date.now() - shownAt));
  clearTimeout(pending);
  pending = setTimeout(async () => {
    shownAt = Date.now();
    try { await current.refresh(payload); } catch (e) { handle(e); }
  }, wait);
}

function setLive(state) {
  const el = document.getElementById('live');
  el.dataset.state = state;
  el.textContent = state === 'live' ? 'live' : state;
  if (state === 'unauthorized') handle(new ApiError(401, null));
}

function login(message) {
  const view = clear(document.getElementById('view'));
  document.body.classList.add('signed-out');
  const form = document.getElementById('login-template').content.firstElementChild.cloneNode(true);
  if (message) form.prepend(h('p', { class: 'error' }, message));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    token.set(form.querySelector('#token').value.trim());
    start();
  });
  view.append(form);
}

async function start() {
  if (!token.get()) { login(); return; }
  try {
    ctx.who = await api('/whoami');
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) { token.clear(); login('That token was refused.'); return; }
    login(`The fleet API did not answer: ${e.message}`);
    return;
  }
  document.body.classList.remove('signed-out');
  document.body.dataset.role = ctx.who.role;
  document.getElementById('who').textContent = `${ctx.who.name} (${ctx.who.role})`;
  if (!start.once) {
    start.once = true;
    live(changed, setLive);
    window.addEventListener('hashchange', show);
  }
  await show();
}

document.getElementById('logout').addEventListener('click', () => { token.clear(); location.hash = '#/'; location.reload(); });
takeTokenFromUrl();
start();
