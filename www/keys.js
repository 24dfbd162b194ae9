// The key browser: get (every sibling), put, delete, counters (incr), and sibling resolution — by picking one,
// by editing a merge, or with a built-in strategy — all through the kv-wasm SDK, so the page
// reconciles with the same code as every other client.

const $ = (id) => document.getElementById(id);

function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

/** A value for display: strings as they are (JSON pretty-printed), bytes as hex. */
function show(value) {
  if (value instanceof Uint8Array) {
    return `bytes (${value.length}): ${Array.from(value.slice(0, 64), (b) => b.toString(16).padStart(2, '0')).join(' ')}${value.length > 64 ? ' …' : ''}`;
  }
  try {
    const parsed = JSON.parse(value);
    if (parsed !== null && typeof parsed === 'object') return JSON.stringify(parsed, null, 2);
  } catch { /* plain text */ }
  return value;
}

/**
 * Wires the key browser.
 * @param {object} opts
 * @param {Promise<object>} opts.sdk the kv-wasm module (`/sdk/index.js`), loading
 * @param {string} opts.url ws:// URL of the serving node
 * @param {(key: string) => Promise<void>} opts.onKey called with each key read or written
 * @param {(what: string, err: Error) => void} opts.report shows an error in the page
 */
export function setupKeys({ sdk, url, onKey, report }) {
  let client = null;
  /** The last get: {key, found, values, siblings, context}, or null. */
  let read = null;
  let busy = false;

  async function kv() {
    if (client) return client;
    const { KvClient } = await sdk;
    client = await KvClient.connect(url, { timeoutMs: 10_000 });
    return client;
  }

  /** Runs one user action with the buttons locked and errors reported. */
  async function act(what, f) {
    if (busy) return;
    busy = true;
    document.querySelectorAll('.keys button').forEach((b) => { b.disabled = true; });
    try {
      await f();
    } catch (e) {
      report(what, e);
    } finally {
      busy = false;
      document.querySelectorAll('.keys button').forEach((b) => { b.disabled = false; });
    }
  }

  function keyValue() {
    const key = $('key').value;
    if (!key) throw Object.assign(new Error('type a key first'), { code: 'bad_request' });
    return key;
  }

  /** The context to write with: the last get's, when it read this key and the box is ticked. */
  function contextFor(key) {
    return $('use-context').checked && read && read.key === key ? read.context : undefined;
  }

  async function get(key) {
    const c = await kv();
    const answer = await c.get(key);
    read = { key, ...answer };
    render();
    onKey(key).catch((e) => report('ring lookup', e));
  }

  async function write(key, value, context, verb, ttlSeconds) {
    const c = await kv();
    await c.put(key, value, ttlSeconds ? { context, ttlSeconds } : { context });
    note(`${verb} ${JSON.stringify(key)}${context ? ' with the context of the last get' : ' (blind write)'}`);
    await get(key);
  }

  function note(text) {
    $('key-result').dataset.note = text;
  }

  function render() {
    const box = $('key-result');
    box.replaceChildren();
    if (!read) return;
    const n = read.siblings.length;
    const head = h('div', { class: 'key-head' },
      h('strong', { class: 'key-name' }, read.key),
      h('span', { class: `badge ${read.found ? 'ok' : 'muted'}`, id: 'found' }, read.found ? 'found' : 'not found'),
      h('span', { class: `badge ${n > 1 ? 'warn' : 'muted'}` },
        h('span', { id: 'sibling-count' }, String(n)), n === 1 ? ' sibling' : ' siblings'),
    );
    box.append(head);
    if (box.dataset.note) box.append(h('p', { class: 'muted small' }, box.dataset.note));
    box.append(h('p', { class: 'context small' }, 'context ', h('code', { title: read.context ?? '' }, read.context ?? '–')));
    const list = h('ol', { class: 'siblings', id: 'siblings' });
    read.siblings.forEach((s, i) => {
      const when = s.timestampMs ? new Date(s.timestampMs).toLocaleString() : '–';
      const expires = s.expiresAtMs ? ` · expires ${new Date(s.expiresAtMs).toLocaleString()}` : '';
      const kind = s.counter ? 'counter · last incremented' : 'written';
      list.append(h('li', { class: 'sibling' },
        h('pre', { class: 'value' }, show(s.value)),
        h('div', { class: 'sibling-foot' },
          h('span', { class: 'muted small written' }, `${kind} ${when}${expires}`),
          n > 1
            ? h('button', { type: 'button', class: 'keep', 'data-index': String(i), onclick: () => act('keep sibling', () => write(read.key, s.value, read.context, `kept sibling ${i + 1} of`)) }, 'Keep this one')
            : h('button', { type: 'button', class: 'edit', onclick: () => { $('value').value = typeof s.value === 'string' ? s.value : ''; $('value').focus(); } }, 'Edit'),
        )));
    });
    if (n) box.append(list);
    if (n > 1) box.append(resolver());
  }

  /** The merge editor: a strategy fills it, the operator may edit, "Write merge" writes it. */
  function resolver() {
    const select = h('select', { id: 'strategy' },
      h('option', { value: 'merge' }, 'merge — deep merge of JSON objects'),
      h('option', { value: 'union' }, 'union — JSON arrays as sets'),
      h('option', { value: 'lww' }, 'lww — newest timestamp wins'));
    const text = h('textarea', { id: 'merge-value', rows: '4', spellcheck: 'false' });
    text.value = typeof read.values[0] === 'string' ? read.values[0] : '';
    const apply = () => act('reconcile', async () => {
      const { reconcile } = await sdk;
      const merged = reconcile(read, select.value);
      text.value = typeof merged === 'string' ? merged : '';
    });
    return h('div', { class: 'resolve' },
      h('h3', {}, 'Resolve siblings'),
      h('div', { class: 'row' },
        h('label', {}, 'strategy ', select),
        h('button', { type: 'button', id: 'btn-reconcile', onclick: apply }, 'Apply strategy'),
        h('button', { type: 'button', id: 'btn-resolve-strategy', onclick: () => act('resolve', async () => {
          const { reconcile } = await sdk;
          await write(read.key, reconcile(read, select.value), read.context, `resolved with ${select.value}`);
        }) }, 'Resolve with it')),
      h('label', { class: 'block' }, 'merged value (edit freely)', text),
      h('button', { type: 'button', id: 'btn-write-merge', onclick: () => act('write merge', () => write(read.key, text.value, read.context, 'wrote a merge of')) }, 'Write merge'));
  }

  $('key-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    act('get', async () => {
      note('');
      await get(keyValue());
    });
  });
  $('put-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    act('put', async () => {
      const key = keyValue();
      const ttl = $('ttl').value.trim();
      await write(key, $('value').value, contextFor(key), 'wrote', ttl ? Number(ttl) : undefined);
    });
  });
  $('btn-incr').addEventListener('click', () => act('incr', async () => {
    const key = keyValue();
    const by = Number($('by').value.trim() || '1');
    const c = await kv();
    const answer = await c.incr(key, by);
    note(`added ${by} to the counter ${JSON.stringify(key)}: ${answer.value}`);
    await get(key);
  }));
  $('btn-delete').addEventListener('click', () => act('delete', async () => {
    const key = keyValue();
    const c = await kv();
    const context = contextFor(key);
    await c.delete(key, { context });
    note(`deleted ${JSON.stringify(key)}${context !== undefined ? ' with the context of the last get' : ' (no context: every sibling a read found)'}`);
    await get(key);
  }));
}
