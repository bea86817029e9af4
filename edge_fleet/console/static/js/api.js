// The console's only way to the fleet: the JSON API with the bearer token, and its live stream.

const KEY = 'edgekit-fleet-token';

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (t) => sessionStorage.setItem(KEY, t),
  clear: () => sessionStorage.removeItem(KEY),
};

// `#token=efk_...` in the address (the demo prints such a link): keep it, then drop it from the URL.
export function takeTokenFromUrl() {
  const m = location.hash.match(/^#token=([A-Za-z0-9_-]+)$/);
  if (m) {
    token.set(m[1]);
    history.replaceState(null, '', location.pathname + '#/');
  }
}

function headers(extra = {}) {
  const t = token.get();
  return t ? { Authorization: `Bearer ${t}`, ...extra } : extra;
}

export async function api(path, { method = 'GET', body, query, raw } = {}) {
  let url = `/api/v1${path}`;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v === null || v === undefined || v === '') continue;
      for (const one of Array.isArray(v) ? v : [v]) q.append(k, one);
    }
    if ([...q].length) url += `?${q}`;
  }
  const init = { method, headers: headers({ Accept: 'application/json' }), cache: 'no-store' };
  if (raw !== undefined) {
    init.body = raw;
    init.headers['Content-Type'] = 'application/octet-stream';
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  const res = await fetch(url, init);
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { message: text }; }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

// Download a bundle with the token (a plain link could not send the header).
export async function download(sha, filename) {
  const res = await fetch(`/api/v1/bundles/${encodeURIComponent(sha)}/download`, { headers: headers() });
  if (!res.ok) throw new ApiError(res.status, null);
  const url = URL.createObjectURL(await res.blob());
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// Server-sent events from /api/v1/events, read with fetch() so the token goes in a header
// (EventSource cannot send one). Reconnects with back-off; stops on 401.
export async function live(onChange, onState) {
  let delay = 1000;
  for (;;) {
    try {
      const res = await fetch('/api/v1/events', { headers: headers({ Accept: 'text/event-stream' }), cache: 'no-store' });
      if (res.status === 401) { onState('unauthorized'); return; }
      if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
      onState('live');
      delay = 1000;
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const event = parseEvent(buf.slice(0, i));
          buf = buf.slice(i + 2);
          if (event.event === 'change' && event.data) onChange(JSON.parse(event.data));
        }
      }
    } catch (e) {
      // network error or server restart: fall through to reconnect
    }
    onState('offline');
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 15000);
  }
}

function parseEvent(block) {
  const out = { event: 'message', data: '' };
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue;
    const at = line.indexOf(':');
    const field = at < 0 ? line : line.slice(0, at);
    const value = at < 0 ? '' : line.slice(at + 1).replace(/^ /, '');
    if (field === 'event') out.event = value;
    else if (field === 'data') out.data += (out.data ? '\n' : '') + value;
  }
  return out;
}
