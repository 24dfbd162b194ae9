// The serving node's /metrics: parsed from Prometheus text, turned into rates and an
// approximate p99 by differencing successive scrapes, kept for the last minutes and drawn as
// small SVG line charts. Only what the scrapes measure is shown.

export const OPS = ['get', 'put', 'delete'];
const HISTORY_MS = 5 * 60_000;

/** Prometheus text -> Map of `name{labels}` -> number (labels as written, e.g. `op="get",le="0.1"`). */
export function parseMetrics(text) {
  const out = new Map();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    out.set(m[1] + (m[2] ?? ''), Number(m[3]));
  }
  return out;
}

/** Every sample of metric `name` with its labels parsed: [{labels: {...}, value}]. */
export function series(metrics, name) {
  const out = [];
  for (const [k, value] of metrics) {
    if (k !== name && !k.startsWith(`${name}{`)) continue;
    const labels = {};
    for (const m of k.slice(name.length).matchAll(/([a-zA-Z_]+)="([^"]*)"/g)) labels[m[1]] = m[2];
    out.push({ labels, value });
  }
  return out;
}

/**
 * The smallest bucket bound holding the 99th percentile of what was observed between two
 * scrapes (histogram buckets are cumulative counters), in seconds; null when nothing was.
 */
export function p99Between(prev, cur) {
  const bounds = new Map(); // le -> delta count, summed over ops
  for (const { labels, value } of series(cur, 'kv_request_duration_seconds_bucket')) {
    const key = `kv_request_duration_seconds_bucket{op="${labels.op}",le="${labels.le}"}`;
    const before = prev.get(key) ?? 0;
    bounds.set(labels.le, (bounds.get(labels.le) ?? 0) + Math.max(0, value - before));
  }
  const total = bounds.get('+Inf') ?? 0;
  if (total === 0) return null;
  const sorted = [...bounds.entries()]
    .map(([le, n]) => [le === '+Inf' ? Infinity : Number(le), n])
    .sort((a, b) => a[0] - b[0]);
  for (const [le, n] of sorted) if (n >= 0.99 * total) return le;
  return Infinity;
}

/** Scrapes kept for the last minutes, with the figures derived between neighbours. */
export class MetricsHistory {
  /** [{t, metrics, rates: {get, put, delete}, p99}] oldest first */
  points = [];

  add(t, metrics) {
    const prev = this.points[this.points.length - 1];
    const point = { t, metrics, rates: null, p99: null };
    if (prev) {
      const dt = (t - prev.t) / 1000;
      point.rates = {};
      for (const op of OPS) {
        const k = `kv_requests_total{op="${op}"}`;
        point.rates[op] = Math.max(0, ((metrics.get(k) ?? 0) - (prev.metrics.get(k) ?? 0)) / dt);
      }
      point.p99 = p99Between(prev.metrics, metrics);
    }
    this.points.push(point);
    while (this.points.length && this.points[0].t < t - HISTORY_MS) this.points.shift();
    return point;
  }

  latest() {
    return this.points[this.points.length - 1] ?? null;
  }

  /** Change of a counter over the kept window, or null with fewer than two scrapes. */
  delta(name) {
    if (this.points.length < 2) return null;
    const first = this.points[0].metrics.get(name);
    const last = this.latest().metrics.get(name);
    if (first === undefined || last === undefined) return null;
    return last - first;
  }

  windowSeconds() {
    if (this.points.length < 2) return 0;
    return (this.latest().t - this.points[0].t) / 1000;
  }
}

const SVG = 'http://www.w3.org/2000/svg';

/**
 * Draws lines into a 300x90 `svg`: `lines` = [{cls, values: [number|null]}] sharing the x axis
 * (time, the last HISTORY_MS); a null is a gap. The y scale starts at 0; `format` labels its top.
 */
export function drawChart(svg, times, lines, format) {
  svg.replaceChildren();
  const W = 300;
  const H = 90;
  const now = times[times.length - 1] ?? 0;
  // The x axis spans the kept history, up to HISTORY_MS (at least a minute).
  const span = Math.max(60_000, Math.min(HISTORY_MS, now - (times[0] ?? now)));
  const x = (t) => W - ((now - t) / span) * W;
  let max = 0;
  for (const l of lines) for (const v of l.values) if (v !== null && Number.isFinite(v)) max = Math.max(max, v);
  const top = max > 0 ? niceCeil(max) : 1;
  const y = (v) => H - 4 - (v / top) * (H - 16);
  for (const frac of [0, 0.5, 1]) {
    const gy = y(top * frac);
    const g = document.createElementNS(SVG, 'line');
    Object.entries({ x1: 0, x2: W, y1: gy, y2: gy, class: 'grid' }).forEach(([k, v]) => g.setAttribute(k, v));
    svg.appendChild(g);
  }
  const label = document.createElementNS(SVG, 'text');
  label.setAttribute('x', 3);
  label.setAttribute('y', 10);
  label.setAttribute('class', 'axis');
  label.textContent = format(top);
  svg.appendChild(label);
  for (const l of lines) {
    let d = '';
    let pen = false;
    l.values.forEach((v, i) => {
      if (v === null || !Number.isFinite(v)) {
        pen = false;
        return;
      }
      d += `${pen ? 'L' : 'M'}${x(times[i]).toFixed(1)} ${y(v).toFixed(1)} `;
      pen = true;
    });
    if (!d) continue;
    const p = document.createElementNS(SVG, 'path');
    p.setAttribute('d', d);
    p.setAttribute('class', `line ${l.cls}`);
    svg.appendChild(p);
    // A scrape whose neighbours have no figure would draw nothing as a line: mark it.
    l.values.forEach((v, i) => {
      const alone = (j) => j < 0 || j >= l.values.length || l.values[j] === null || !Number.isFinite(l.values[j]);
      if (v === null || !Number.isFinite(v) || !(alone(i - 1) && alone(i + 1))) return;
      const c = document.createElementNS(SVG, 'circle');
      c.setAttribute('cx', x(times[i]).toFixed(1));
      c.setAttribute('cy', y(v).toFixed(1));
      c.setAttribute('r', 2);
      c.setAttribute('class', `dot ${l.cls}`);
      svg.appendChild(c);
    });
  }
  const spanLabel = document.createElementNS(SVG, 'text');
  spanLabel.setAttribute('x', W - 3);
  spanLabel.setAttribute('y', H - 6);
  spanLabel.setAttribute('text-anchor', 'end');
  spanLabel.setAttribute('class', 'axis');
  spanLabel.textContent = span >= HISTORY_MS ? 'last 5 min' : `last ${Math.round(span / 60_000)} min`;
  svg.appendChild(spanLabel);
}

function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/** Seconds as a short latency: 250 µs, 2 ms, 1.5 s; Infinity as "> 5 s" style text. */
export function formatSeconds(s) {
  if (s === null || s === undefined) return '–';
  if (!Number.isFinite(s)) return '> largest bucket';
  if (s < 1e-3) return `${Math.round(s * 1e6)} µs`;
  if (s < 1) return `${+(s * 1e3).toPrecision(3)} ms`;
  return `${+s.toPrecision(3)} s`;
}

export function formatRate(r) {
  if (r === null || r === undefined) return '–';
  return r >= 100 ? String(Math.round(r)) : String(+r.toFixed(1));
}
