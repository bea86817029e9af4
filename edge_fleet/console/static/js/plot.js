// A small SVG line plot of latency over time (p50 and p99), drawn with DOM calls only.
const NS = 'http://www.w3.org/2000/svg';

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

export function latencyPlot(samples, { width = 640, height = 200 } = {}) {
  const pad = { l: 48, r: 12, t: 12, b: 24 };
  const pts = samples.filter((s) => s.p50 !== null || s.p99 !== null);
  const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, class: 'plot', role: 'img',
    'aria-label': `latency over time, ${pts.length} samples` });
  if (pts.length < 2) {
    root.append(svg('text', { x: width / 2, y: height / 2, 'text-anchor': 'middle', class: 'muted' },
      'not enough telemetry yet'));
    return root;
  }
  const t0 = pts[0].at;
  const t1 = pts[pts.length - 1].at;
  const ymax = Math.max(...pts.map((s) => Math.max(s.p50 ?? 0, s.p99 ?? 0))) * 1.1 || 1;
  const x = (t) => pad.l + ((t - t0) / Math.max(t1 - t0, 1e-9)) * (width - pad.l - pad.r);
  const y = (v) => height - pad.b - (v / ymax) * (height - pad.t - pad.b);
  for (const frac of [0, 0.5, 1]) {
    const v = ymax * frac;
    root.append(svg('line', { x1: pad.l, x2: width - pad.r, y1: y(v), y2: y(v), class: 'grid' }),
      svg('text', { x: pad.l - 6, y: y(v) + 4, 'text-anchor': 'end', class: 'axis' }, `${v.toFixed(2)}`));
  }
  root.append(svg('text', { x: 4, y: height / 2, class: 'axis' }, 'ms'),
    svg('text', { x: width - pad.r, y: height - 6, 'text-anchor': 'end', class: 'axis' },
      `last ${Math.round(t1 - t0)} s`));
  for (const key of ['p99', 'p50']) {
    const d = pts.filter((s) => s[key] !== null).map((s, i) => `${i ? 'L' : 'M'}${x(s.at).toFixed(1)},${y(s[key]).toFixed(1)}`).join(' ');
    root.append(svg('path', { d, class: `line ${key}` }));
  }
  root.append(svg('text', { x: pad.l + 8, y: pad.t + 12, class: 'legend p50' }, 'p50'),
    svg('text', { x: pad.l + 44, y: pad.t + 12, class: 'legend p99' }, 'p99'));
  return root;
}
