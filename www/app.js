// The console's entry point: polls the serving node for the cluster's status, ring, hints and
// metrics, draws them, and wires the key browser. Everything shown is read from the server;
// what cannot be measured is shown as "–".

import { Admin } from './admin.js';
import { drawRing, nodeColour } from './ring.js';
import { setupKeys } from './keys.js';
import { MetricsHistory, OPS, drawChart, formatRate, formatSeconds, parseMetrics } from './metrics.js';

const $ = (id) => document.getElementById(id);
// On a node started with --token-file the console is opened as http://HOST:PORT/?token=T:
// the token goes on with every WebSocket the console opens (the node reads it from the query).
const token = new URLSearchParams(location.search).get('token');
const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`
  + (token ? `/?token=${encodeURIComponent(token)}` : '');
const admin = new Admin(wsUrl);

const STATUS_EVERY_MS = 1000;
const RING_EVERY_MS = 5000;
const METRICS_EVERY_MS = 2000;

const state = {
  /** The `status` answer, or null before the first. */
  status: null,
  ring: null,
  /** The preference list of the key last used in the key browser. */
  pref: null,
  hints: null,
  metrics: new MetricsHistory(),
};

// ---------------------------------------------------------------- errors

/** Shows an error as a readable line ("put: unavailable — ..."), newest first, at most 5. */
function report(what, err) {
  const box = $('errors');
  const code = err && err.code ? err.code : 'error';
  const line = document.createElement('div');
  line.className = 'error';
  line.setAttribute('role', 'alert');
  const text = document.createElement('span');
  text.textContent = `${what}: ${code} — ${err && err.message ? err.message : String(err)}`;
  const close = document.createElement('button');
  close.type = 'button';
  close.textContent = '×';
  close.title = 'dismiss';
  close.addEventListener('click', () => line.remove());
  line.append(text, close);
  box.prepend(line);
  while (box.children.length > 5) box.lastChild.remove();
}

function setConnection(ok, text) {
  const c = $('conn');
  c.dataset.state = ok ? 'up' : 'down';
  c.textContent = text;
}

/** Runs `f` every `ms` after the previous run ended (never two at once). */
function every(ms, f) {
  const loop = async () => {
    try {
      await f();
    } finally {
      setTimeout(loop, ms);
    }
  };
  loop();
}

// ---------------------------------------------------------------- cluster

function sortedIds() {
  const ids = new Set();
  for (const n of state.status?.nodes ?? []) ids.add(n.id);
  for (const n of state.ring?.nodes ?? []) ids.add(n.id);
  return [...ids].sort();
}

function bytes(n) {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function duration(s) {
  if (s === null || s === undefined) return '–';
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d`;
}

const num = (v) => (v === null || v === undefined ? '–' : v.toLocaleString('en'));

function renderNodes() {
  const box = $('nodes');
  const ids = sortedIds();
  const ringNodes = new Map((state.ring?.nodes ?? []).map((n) => [n.id, n]));
  const serving = state.status?.node;
  const latest = state.metrics.latest();
  const cards = (state.status?.nodes ?? []).slice().sort((a, b) => a.id.localeCompare(b.id)).map((n) => {
    const card = document.createElement('article');
    card.className = `node-card state-${n.state}`;
    card.dataset.node = n.id;
    card.dataset.state = n.state;
    // Up but refusing writes for lack of disk space (reads go on).
    if (n.disk_full) {
      card.classList.add('disk-full');
      card.dataset.diskFull = 'true';
    }
    // Up but refusing every write until it is restarted (an I/O error on its disk).
    if (n.storage_failed) {
      card.classList.add('storage-failed');
      card.dataset.storageFailed = 'true';
    }
    card.style.setProperty('--node-colour', nodeColour(ids, n.id));
    const rn = ringNodes.get(n.id);
    const rank = state.pref ? state.pref.preference_list.indexOf(n.id) : -1;
    // ops/s is measured only for the node serving this page (other nodes' /metrics are on
    // other origins, which the browser may not read).
    const ops = n.id === serving && latest?.rates ? formatRate(OPS.reduce((s, op) => s + latest.rates[op], 0)) : '–';
    const transfer = n.transfer
      ? `<div class="transfer">${n.transfer.kind}: ${n.transfer.ranges_done}/${n.transfer.ranges_total} ranges, ${num(n.transfer.keys)} keys</div>`
      : '';
    card.innerHTML = `
      <header>
        <span class="swatch"></span>
        <h3></h3>
        ${rank >= 0 ? `<span class="pref-rank" title="position in the preference list">#${rank + 1}</span>` : ''}
        <span class="state">${n.state}</span>
      </header>
      <div class="addr muted small"></div>
      <dl>
        <dt>dc / rack</dt><dd class="dcrack"></dd>
        <dt>keys</dt><dd class="keys-held">${num(n.keys)}</dd>
        <dt>disk · free</dt><dd class="disk">${bytes(n.disk_bytes)} · ${bytes(n.disk_free_bytes)}</dd>
        <dt>ops/s</dt><dd class="ops">${ops}</dd>
        <dt>hints pending</dt><dd>${num(n.hints_pending)}</dd>
        <dt title="share of the ring this node holds a replica of">ring share</dt><dd>${rn ? `${(rn.ownership * 100).toFixed(1)} %` : '–'}</dd>
        <dt>tokens · weight</dt><dd>${rn ? rn.tokens : '–'} · ${n.weight ?? '–'}</dd>
        <dt>uptime</dt><dd>${duration(n.uptime_s)}</dd>
      </dl>${transfer}${n.disk_full ? '<div class="disk-full-note">disk full: writes refused until space is freed</div>' : ''}${n.storage_failed ? '<div class="storage-failed-note">storage failed: writes refused until the node is restarted</div>' : ''}`;
    // Names and labels come from operators' flags: set as text, never as markup.
    card.querySelector('h3').textContent = n.id + (n.id === serving ? ' (this node)' : '');
    card.querySelector('.addr').textContent = n.addr;
    card.querySelector('.dcrack').textContent = `${n.dc} / ${n.rack}`;
    // The node's own words for why it refuses writes, on hover.
    const full = card.querySelector('.disk-full-note');
    if (full && n.disk_full_reason) full.title = n.disk_full_reason;
    const failed = card.querySelector('.storage-failed-note');
    if (failed && n.storage_error) failed.title = n.storage_error;
    return card;
  });
  box.replaceChildren(...cards);
  const up = (state.status?.nodes ?? []).filter((n) => n.state === 'up').length;
  $('nodes').dataset.up = String(up);
}

function renderRing() {
  if (!state.ring) return;
  const ids = sortedIds();
  const states = new Map((state.status?.nodes ?? []).map((n) => [n.id, n.state]));
  drawRing($('ring'), state.ring, ids, states, state.pref);
  $('ring-caption').textContent = `${state.ring.vnodes.length} vnodes on ${state.ring.nodes.length} nodes, N = ${state.ring.replicas}`
    + (state.pref ? ` · ${state.pref.key}: token ${state.pref.token}` : '');
  const legend = $('legend');
  legend.replaceChildren(...ids.map((id) => {
    const li = document.createElement('li');
    const sw = document.createElement('span');
    sw.className = 'swatch';
    sw.style.background = nodeColour(ids, id);
    li.append(sw, `${id} · ${states.get(id) ?? 'not a member'}`);
    if (states.get(id) && states.get(id) !== 'up') li.className = 'dim';
    return li;
  }));
  const extra = document.createElement('li');
  extra.className = 'muted';
  extra.textContent = state.pref ? 'numbers: preference list order' : 'dimmed: not up';
  legend.append(extra);
}

async function pollStatus() {
  try {
    state.status = await admin.request('status');
    setConnection(true, `connected to ${state.status.node}`);
    document.title = `kv console · ${state.status.node}`;
  } catch (e) {
    setConnection(false, `no answer from ${location.host}: ${e.code ?? 'error'}`);
    return;
  }
  renderNodes();
  renderRing();
}

async function pollRing() {
  try {
    state.ring = await admin.request('ring');
    renderRing();
    renderNodes();
  } catch (e) {
    if (e.code !== 'unavailable') report('ring', e);
  }
}

/** Looks up a key's preference list and highlights it. */
async function showKey(key) {
  state.pref = await admin.request('ring', { key });
  renderRing();
  renderNodes();
}

// ---------------------------------------------------------------- activity

function dl(box, rows) {
  box.replaceChildren();
  for (const [k, v, title] of rows) {
    const dt = document.createElement('dt');
    dt.textContent = k;
    const dd = document.createElement('dd');
    dd.textContent = v;
    if (title) dd.title = title;
    box.append(dt, dd);
  }
}

function renderActivity() {
  const hist = state.metrics;
  const pts = hist.points;
  const times = pts.map((p) => p.t);
  const latest = hist.latest();
  drawChart($('chart-ops'), times, OPS.map((op) => ({ cls: `op-${op}`, values: pts.map((p) => (p.rates ? p.rates[op] : null)) })), (v) => `${formatRate(v)}/s`);
  drawChart($('chart-p99'), times, [{ cls: 'p99', values: pts.map((p) => (p.p99 === null || !Number.isFinite(p.p99) ? null : p.p99 * 1000)) }], (v) => `${+v.toPrecision(3)} ms`);
  $('ops-now').textContent = latest?.rates ? `${formatRate(OPS.reduce((s, op) => s + latest.rates[op], 0))}/s` : '–';
  $('p99-now').textContent = latest?.rates ? (latest.p99 === null ? 'no requests' : formatSeconds(latest.p99)) : '–';
  const m = latest?.metrics;
  const win = hist.windowSeconds();
  const inWindow = (name) => {
    const d = hist.delta(name);
    return d === null ? '–' : `${num(d)} in ${duration(Math.round(win))}`;
  };
  const pendingHere = m ? [...m.entries()].filter(([k]) => k.startsWith('kv_hints_pending{')).reduce((s, [, v]) => s + v, 0) : null;
  const clusterHints = state.hints ? state.hints.hints : null;
  dl($('hints'), [
    ['pending in the cluster', clusterHints === null ? '–' : num(clusterHints.reduce((s, x) => s + x.count, 0))],
    ['by target', clusterHints === null ? '–' : (clusterHints.filter((x) => x.count > 0).map((x) => `${x.target}: ${num(x.count)}`).join(', ') || 'none')],
    ['held by this node', pendingHere === null ? '–' : num(pendingHere)],
    ['delivered by this node', m ? `${num(m.get('kv_hints_delivered_total'))} total` : '–'],
    ['delivered lately', inWindow('kv_hints_delivered_total')],
  ]);
  dl($('ae'), [
    ['sessions (this node)', m ? `${num(m.get('kv_anti_entropy_sessions_total'))} total` : '–'],
    ['sessions lately', inWindow('kv_anti_entropy_sessions_total')],
    ['keys repaired', m ? `${num(m.get('kv_anti_entropy_keys_repaired_total'))} total` : '–'],
    ['read repairs', m ? `${num(m.get('kv_read_repairs_total'))} total` : '–'],
  ]);
  $('activity-node').textContent = state.status ? `measured on ${state.status.node}` : '';
}

async function pollMetrics() {
  try {
    const res = await fetch('/metrics', { cache: 'no-store' });
    if (!res.ok) throw Object.assign(new Error(`/metrics answered ${res.status}`), { code: 'http' });
    state.metrics.add(Date.now(), parseMetrics(await res.text()));
  } catch (e) {
    // A node that went away shows in the connection badge; keep the history as it is.
  }
  try {
    state.hints = await admin.request('hints');
  } catch {
    state.hints = null;
  }
  renderActivity();
  renderNodes();
}

$('btn-repair').addEventListener('click', async () => {
  const btn = $('btn-repair');
  btn.disabled = true;
  $('repair-result').textContent = 'repairing…';
  try {
    const r = await admin.request('repair', {}, 120_000);
    $('repair-result').textContent = `${num(r.ranges_compared)} ranges compared, ${num(r.ranges_in_sync)} in sync, `
      + `${num(r.keys_repaired)} keys repaired, ${bytes(r.bytes_exchanged)} exchanged`
      + (r.pairs_skipped ? `, ${num(r.pairs_skipped)} replica pairs skipped (down)` : '');
  } catch (e) {
    $('repair-result').textContent = '';
    report('repair', e);
  } finally {
    btn.disabled = false;
  }
});

// ---------------------------------------------------------------- start

setupKeys({
  sdk: import('/sdk/index.js').catch((e) => {
    const err = Object.assign(new Error(`the kv-wasm SDK did not load from /sdk/index.js (${e.message}); build it with kv-wasm/build.sh`), { code: 'unavailable' });
    report('sdk', err);
    throw err;
  }),
  url: wsUrl,
  onKey: showKey,
  report,
});

every(STATUS_EVERY_MS, pollStatus);
every(RING_EVERY_MS, pollRing);
every(METRICS_EVERY_MS, pollMetrics);
