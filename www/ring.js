// The token ring as an SVG circle: every vnode is the arc from the previous token to its own
// (the range it owns), coloured by its node; down nodes are dimmed; a key's token and the
// vnodes where the clockwise walk from it meets each node of its preference list are marked.

const SVG = 'http://www.w3.org/2000/svg';
const R = 120; // radius of the ring
const WIDTH = 22; // thickness of the arcs
/** Where preference-list badges may sit: just outside the ring, then further inside. */
const BADGE_RADII = [R + WIDTH / 2 + 12, R - WIDTH / 2 - 12, R - WIDTH / 2 - 31, R - WIDTH / 2 - 50];

/** A colour per node, stable for a given sorted list of ids. */
const PALETTE = ['#5aa9e6', '#f4a259', '#7fc97f', '#e56b6f', '#b39ddb', '#4dd0c8', '#f6d55c', '#ef8fc2', '#a1887f', '#9ccc65'];

export function nodeColour(ids, id) {
  const i = ids.indexOf(id);
  return i < 0 ? '#888' : PALETTE[i % PALETTE.length];
}

/** A u64 token (decimal string) as a fraction of the ring, 0..1. */
export function tokenFraction(token) {
  return Number(BigInt(token) >> 11n) / 2 ** 53;
}

function point(fraction, radius) {
  const a = fraction * 2 * Math.PI - Math.PI / 2; // token 0 at the top, clockwise
  return [radius * Math.cos(a), radius * Math.sin(a)];
}

function el(name, attrs, parent) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

/** An annular sector from fraction a to fraction b (clockwise). */
function arcPath(a, b, r1, r2) {
  let span = b - a;
  if (span <= 0) span += 1;
  if (span >= 1) span = 0.999999; // a single vnode owns the whole ring
  const end = a + span;
  const large = span > 0.5 ? 1 : 0;
  const [x1, y1] = point(a, r2);
  const [x2, y2] = point(end, r2);
  const [x3, y3] = point(end, r1);
  const [x4, y4] = point(a, r1);
  return `M${x1} ${y1} A${r2} ${r2} 0 ${large} 1 ${x2} ${y2} L${x3} ${y3} A${r1} ${r1} 0 ${large} 0 ${x4} ${y4} Z`;
}

/**
 * For a key at `keyToken`, the vnode index where the clockwise walk first meets each node of
 * the preference list (the walk that placement performs).
 */
export function preferenceVnodes(vnodes, keyToken, preferenceList) {
  if (!vnodes.length) return [];
  const k = BigInt(keyToken);
  let start = vnodes.findIndex((v) => BigInt(v.token) >= k);
  if (start < 0) start = 0;
  const found = new Map();
  for (let step = 0; step < vnodes.length && found.size < preferenceList.length; step++) {
    const i = (start + step) % vnodes.length;
    const node = vnodes[i].node;
    if (preferenceList.includes(node) && !found.has(node)) found.set(node, i);
  }
  return preferenceList.map((node) => found.get(node)).filter((i) => i !== undefined);
}

/**
 * Draws the ring into `svg`.
 * @param {SVGElement} svg
 * @param {{vnodes: {token: string, node: string}[]}} ring the `ring` answer
 * @param {string[]} ids every node id, sorted (fixes the colours)
 * @param {Map<string,string>} states node id -> state
 * @param {{key: string, token: string, preference_list: string[]}|null} pref a key to mark
 */
export function drawRing(svg, ring, ids, states, pref) {
  svg.replaceChildren();
  el('circle', { cx: 0, cy: 0, r: R, class: 'ring-track' }, svg);
  const vnodes = ring.vnodes;
  const marked = pref ? new Set(preferenceVnodes(vnodes, pref.token, pref.preference_list)) : new Set();
  for (let i = 0; i < vnodes.length; i++) {
    const v = vnodes[i];
    const prev = vnodes[(i - 1 + vnodes.length) % vnodes.length];
    const a = tokenFraction(prev.token);
    const b = tokenFraction(v.token);
    const state = states.get(v.node) ?? 'unknown';
    const path = el('path', {
      d: arcPath(a, b, R - WIDTH / 2, R + WIDTH / 2),
      fill: nodeColour(ids, v.node),
      class: `vnode state-${state}${pref && !marked.has(i) ? ' faded' : ''}`,
      'data-node': v.node,
    }, svg);
    el('title', {}, path).textContent = `${v.node} (${state}) · token ${v.token}`;
  }
  if (pref) {
    const f = tokenFraction(pref.token);
    const [x, y] = point(f, R - WIDTH / 2 - 4);
    el('line', { x1: 0, y1: 0, x2: x, y2: y, class: 'key-ray' }, svg);
    el('circle', { cx: x, cy: y, r: 4, class: 'key-dot' }, svg);
    const order = preferenceVnodes(vnodes, pref.token, pref.preference_list);
    const placed = []; // [fraction, radius] of the badges drawn so far
    order.forEach((i, rank) => {
      const f = tokenFraction(vnodes[i].token);
      // Badges of nearby vnodes would overlap: the first goes outside the ring, the next
      // ones close to it step inside.
      const near = (radius) => placed.some(([g, r]) => r === radius && Math.min(Math.abs(f - g), 1 - Math.abs(f - g)) < 0.06);
      const radius = BADGE_RADII.find((r) => !near(r)) ?? BADGE_RADII[0];
      placed.push([f, radius]);
      const [bx, by] = point(f, radius);
      const g = el('g', { class: 'pref-badge' }, svg);
      el('circle', { cx: bx, cy: by, r: 9, fill: nodeColour(ids, vnodes[i].node) }, g);
      const t = el('text', { x: bx, y: by + 3.5, 'text-anchor': 'middle' }, g);
      t.textContent = String(rank + 1);
    });
    const label = el('text', { x: 0, y: -6, 'text-anchor': 'middle', class: 'ring-center' }, svg);
    label.textContent = pref.key.length > 18 ? `${pref.key.slice(0, 17)}…` : pref.key;
    const sub = el('text', { x: 0, y: 12, 'text-anchor': 'middle', class: 'ring-center-sub' }, svg);
    sub.textContent = `→ ${pref.preference_list.join(', ')}`;
  } else {
    const label = el('text', { x: 0, y: -4, 'text-anchor': 'middle', class: 'ring-center' }, svg);
    label.textContent = `${vnodes.length} vnodes`;
    const sub = el('text', { x: 0, y: 14, 'text-anchor': 'middle', class: 'ring-center-sub' }, svg);
    sub.textContent = `N = ${ring.replicas}`;
  }
}
