// The JavaScript client of the kv SDK: one WebSocket to one node, many requests in flight
// matched by id, reconnection with backoff, and `update` (read, reconcile, write back).
//
// Every protocol decision (frames, answers, contexts, reconciliation) is made by the
// WebAssembly module compiled from kv-core; this file only moves frames and keeps promises.
// It is shared by the web and Node.js packages, which inject the wasm module and the
// WebSocket constructor (see index.js / index.mjs).

/** The states of WebSocket.readyState, the same in browsers, Node.js and `ws`. */
const OPEN = 1;

/**
 * Builds the client API around an initialized wasm module.
 * @param {object} wasm the wasm-bindgen exports (encodeGet, decodeResponse, reconcile, ...)
 * @param {(options: object) => Promise<Function>} resolveWebSocket finds a WebSocket class
 */
export function createSdk(wasm, resolveWebSocket) {
  /** An error with the protocol's code (`unavailable`, `timeout`, `bad_request`, ...). */
  class KvError extends Error {
    constructor(code, message, options) {
      super(message, options);
      this.name = 'KvError';
      this.code = code;
    }
  }

  /** Errors thrown by the wasm module carry a code; anything else becomes `internal`. */
  function toKvError(e) {
    if (e instanceof KvError) return e;
    if (e && typeof e.code === 'string') return new KvError(e.code, e.message);
    return new KvError('internal', String(e && e.message ? e.message : e), { cause: e });
  }

  /** Calls into the wasm module, turning its thrown errors into KvErrors. */
  function call(f) {
    try {
      return f();
    } catch (e) {
      throw toKvError(e);
    }
  }

  const badRequest = (message) => new KvError('bad_request', message);

  /** A value as an error message names it: its type, and short scalars themselves. */
  function describe(v) {
    if (v === null) return 'null';
    if (typeof v === 'string') return v.length > 40 ? 'a string' : `the string ${JSON.stringify(v)}`;
    if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return `${typeof v} ${v}`;
    if (Array.isArray(v)) return 'an array';
    if (typeof v === 'object') return `an object (${v.constructor?.name ?? 'no prototype'})`;
    return typeof v;
  }

  // The wasm exports take their strings and numbers as they come: another type there traps
  // inside the module ("memory access out of bounds") or is silently coerced. Arguments are
  // checked here first, and fail with `bad_request`.

  function checkString(what, v) {
    if (typeof v !== 'string') throw badRequest(`${what} must be a string, not ${describe(v)}`);
  }

  function checkKey(key) {
    checkString('the key', key);
  }

  function checkValue(value) {
    if (typeof value !== 'string' && !(value instanceof Uint8Array)) {
      throw badRequest(`the value must be a string or a Uint8Array, not ${describe(value)}`);
    }
  }

  /** An optional context: a string an earlier read returned. */
  function checkContextArg(context) {
    if (context != null && typeof context !== 'string') {
      throw badRequest(`the context must be the string an earlier read returned, not ${describe(context)}`);
    }
  }

  /** An optional quorum (`r`, `w`): a whole number, at least 1. */
  function checkQuorum(name, n) {
    if (n != null && !(Number.isInteger(n) && n >= 1 && n <= 0xffff_ffff)) {
      throw badRequest(`${name} must be a whole number, at least 1, not ${describe(n)}`);
    }
  }

  /** A number the module checks further (a request id, ttlSeconds, incr's by). */
  function checkNumber(what, n, optional) {
    if (optional && n == null) return;
    if (typeof n !== 'number') throw badRequest(`${what} must be a number, not ${describe(n)}`);
  }

  /** `url` as messages show it: the token's value replaced by `***`. */
  const redact = (url) => String(url).replace(/([?&]token=)[^&#\s]*/g, '$1***');

  /** The URL to open: `url` with `?token=` when there is one. */
  function withToken(url, token) {
    if (token != null && typeof token !== 'string') {
      throw badRequest(`the token must be a string, not ${describe(token)}`);
    }
    if (typeof url !== 'string' && !(url instanceof URL)) {
      throw badRequest(`the URL must be a string (ws://host:port), not ${describe(url)}`);
    }
    let u;
    try {
      u = new URL(url);
    } catch {
      throw badRequest(`${JSON.stringify(redact(url))} is not a URL (ws://host:port or wss://host:port)`);
    }
    if (token) u.searchParams.set('token', token);
    return u.toString();
  }

  function encodeGet(id, key, r, local) {
    checkNumber('the request id', id);
    checkKey(key);
    checkQuorum('r', r);
    return call(() => wasm.encodeGet(id, key, r, local));
  }

  function encodePut(id, key, value, context, w, ttlSeconds) {
    checkNumber('the request id', id);
    checkKey(key);
    checkValue(value);
    checkContextArg(context);
    checkQuorum('w', w);
    checkNumber('ttlSeconds', ttlSeconds, true);
    return call(() => wasm.encodePut(id, key, value, context, w, ttlSeconds));
  }

  function encodeDelete(id, key, context, w) {
    checkNumber('the request id', id);
    checkKey(key);
    checkContextArg(context);
    checkQuorum('w', w);
    return call(() => wasm.encodeDelete(id, key, context, w));
  }

  function encodeIncr(id, key, by, w) {
    checkNumber('the request id', id);
    checkKey(key);
    checkNumber('by', by);
    checkQuorum('w', w);
    return call(() => wasm.encodeIncr(id, key, by, w));
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  class KvClient {
    #url;
    /** `#url` with its token hidden, for messages. */
    #shownUrl;
    #WebSocket;
    #timeoutMs;
    #reconnect;
    #minBackoffMs;
    #maxBackoffMs;
    #maxRetries;
    #heartbeatMs;
    /** The current socket, null while disconnected. */
    #ws = null;
    /** When the current socket last brought a frame, and when we last pinged on it. */
    #lastHeard = 0;
    #lastPing = 0;
    #heartbeat = null;
    /** Ids are never reused on one client, across reconnects too. */
    #nextId = 1;
    /** id -> {frame, resolve, reject, timer}: every request not yet answered. */
    #pending = new Map();
    /** Ids of pending requests not yet sent (waiting for a connection). */
    #unsent = [];
    #closed = false;
    #attempt = 0;
    #reconnectTimer = null;

    /** Use `KvClient.connect`. */
    constructor(url, options, WebSocketImpl) {
      this.#url = withToken(url, options.token);
      this.#shownUrl = redact(this.#url);
      this.#WebSocket = WebSocketImpl;
      this.#timeoutMs = options.timeoutMs ?? 10_000;
      this.#reconnect = options.reconnect ?? true;
      this.#minBackoffMs = options.minBackoffMs ?? 100;
      this.#maxBackoffMs = options.maxBackoffMs ?? 5_000;
      this.#maxRetries = options.maxRetries ?? 5;
      this.#heartbeatMs = options.heartbeatMs ?? 15_000;
    }

    /**
     * Opens a connection to one node (`ws://host:port`). Rejects with a KvError
     * (`unavailable`, or `unauthorized` when the node refuses the token) when the first
     * connection fails; later drops are retried with backoff.
     */
    static async connect(url, options = {}) {
      withToken(url, options.token); // bad arguments fail first
      const WebSocketImpl = await resolveWebSocket(options);
      const client = new KvClient(url, options, WebSocketImpl);
      await client.#open();
      return client;
    }

    /** Opens one socket; resolves once it is open, rejects when it fails first. */
    #open() {
      return new Promise((resolve, reject) => {
        let settled = false;
        let ws;
        try {
          ws = new this.#WebSocket(this.#url);
        } catch (e) {
          reject(new KvError('bad_request', `cannot open ${this.#shownUrl}: ${redact(e.message)}`));
          return;
        }
        const timer = setTimeout(() => {
          if (settled) return;
          settled = true;
          ws.onopen = ws.onclose = ws.onmessage = null;
          // Closing a socket that is still connecting reports an error; the `ws` package
          // emits it as an 'error' event, which crashes the process when nothing listens.
          ws.onerror = () => {};
          try { ws.close(); } catch { /* already failing */ }
          reject(new KvError('timeout', `no connection to ${this.#shownUrl} within ${this.#timeoutMs} ms`));
        }, this.#timeoutMs);
        let failure = '';
        ws.onerror = (ev) => {
          failure = ev && (ev.message || (ev.error && ev.error.message)) || failure;
        };
        ws.onopen = () => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          this.#attach(ws);
          resolve();
        };
        ws.onclose = (ev) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          const code = /\b401\b/.test(failure) ? 'unauthorized' : 'unavailable';
          const why = redact(failure) || `closed with code ${ev && ev.code}`;
          reject(new KvError(code, `cannot connect to ${this.#shownUrl}: ${why}`));
        };
      });
    }

    /** Makes `ws` the live socket and sends what waited for it. */
    #attach(ws) {
      if (this.#closed) {
        ws.close();
        return;
      }
      this.#ws = ws;
      this.#attempt = 0;
      this.#lastHeard = Date.now();
      ws.onmessage = (ev) => {
        this.#lastHeard = Date.now();
        this.#onMessage(ev.data);
      };
      ws.onerror = () => {};
      ws.onclose = () => this.#onDrop(ws);
      if (this.#heartbeatMs > 0) {
        this.#heartbeat = setInterval(() => this.#beat(ws), Math.max(10, this.#heartbeatMs / 4));
        // A heartbeat alone does not keep a Node.js process running.
        if (typeof this.#heartbeat.unref === 'function') this.#heartbeat.unref();
      }
      this.#flush();
    }

    /**
     * A socket quiet for `heartbeatMs` is pinged; one still quiet `timeoutMs` after that is
     * dead (a stopped node, a partition, a peer that went away without a word, where TCP
     * would take many minutes to tell): it is dropped as if it had closed, and the client
     * reconnects.
     */
    #beat(ws) {
      if (this.#ws !== ws) return;
      const now = Date.now();
      const quiet = now - this.#lastHeard;
      if (quiet >= this.#heartbeatMs + this.#timeoutMs && this.#lastPing > this.#lastHeard) {
        ws.onopen = ws.onclose = ws.onmessage = null;
        ws.onerror = () => {};
        // The ws package's close() waits for the peer's closing frame; terminate() does not.
        try { if (typeof ws.terminate === 'function') ws.terminate(); else ws.close(); } catch { /* gone */ }
        this.#onDrop(ws, `went silent (nothing heard for ${quiet} ms, a ping included)`);
        return;
      }
      if (quiet >= this.#heartbeatMs && now - this.#lastPing >= this.#heartbeatMs && ws.readyState === OPEN) {
        // Its answer only counts as a frame heard: the id is never a pending request's.
        ws.send(wasm.encodeOp(this.#nextId++, 'ping'));
        this.#lastPing = now;
      }
    }

    #flush() {
      const ws = this.#ws;
      if (!ws || ws.readyState !== OPEN) return;
      const ids = this.#unsent;
      this.#unsent = [];
      for (const id of ids) {
        const entry = this.#pending.get(id);
        if (!entry) continue; // timed out while waiting
        ws.send(entry.frame);
        entry.sent = true;
      }
    }

    #onMessage(data) {
      if (typeof data !== 'string') return; // the protocol speaks text frames only
      let answer;
      try {
        answer = wasm.decodeResponse(data);
      } catch (e) {
        // A frame that names its request but does not decode fails that request now; one
        // without a readable id answers nothing we could match.
        const id = e && typeof e.id === 'number' ? e.id : null;
        const entry = id == null ? undefined : this.#pending.get(id);
        if (entry) {
          this.#pending.delete(id);
          clearTimeout(entry.timer);
          entry.reject(new KvError('bad_response',
            `the answer to request ${id} from ${this.#shownUrl} does not decode: ${e.message}`));
        }
        return;
      }
      const entry = answer.id == null ? undefined : this.#pending.get(answer.id);
      if (!entry) return;
      this.#pending.delete(answer.id);
      clearTimeout(entry.timer);
      if (answer.ok) {
        delete answer.id;
        delete answer.ok;
        entry.resolve(answer);
      } else {
        entry.reject(new KvError(answer.error.code, answer.error.message));
      }
    }

    /** The socket dropped: fail what was sent (its fate is unknown), keep the rest queued. */
    #onDrop(ws, why = 'closed') {
      if (this.#ws !== ws) return;
      this.#ws = null;
      clearInterval(this.#heartbeat);
      this.#heartbeat = null;
      for (const [id, entry] of this.#pending) {
        if (!entry.sent) continue;
        this.#pending.delete(id);
        clearTimeout(entry.timer);
        entry.reject(new KvError('unavailable',
          `the connection to ${this.#shownUrl} ${why} before the answer to request ${id} ` +
          '(a write may or may not have been applied)'));
      }
      if (this.#closed) return;
      if (!this.#reconnect) {
        this.#failUnsent(`the connection to ${this.#shownUrl} ${why}`);
        return;
      }
      this.#scheduleReconnect();
    }

    #failUnsent(why) {
      for (const id of this.#unsent) {
        const entry = this.#pending.get(id);
        if (!entry) continue;
        this.#pending.delete(id);
        clearTimeout(entry.timer);
        entry.reject(new KvError('unavailable', why));
      }
      this.#unsent = [];
    }

    /** Exponential backoff with jitter: min * 2^attempt, capped, times 0.5..1. */
    #scheduleReconnect() {
      const base = Math.min(this.#maxBackoffMs, this.#minBackoffMs * 2 ** this.#attempt);
      const delay = base * (0.5 + Math.random() / 2);
      this.#attempt += 1;
      this.#reconnectTimer = setTimeout(() => {
        this.#reconnectTimer = null;
        if (this.#closed) return;
        this.#open().catch(() => {
          if (!this.#closed) this.#scheduleReconnect();
        });
      }, delay);
    }

    /** Sends a request built by `build(id)`; resolves with the answer's fields. */
    #request(build) {
      if (this.#closed) return Promise.reject(new KvError('unavailable', 'the client is closed'));
      const id = this.#nextId++;
      let frame;
      try {
        frame = build(id);
      } catch (e) {
        return Promise.reject(toKvError(e));
      }
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          this.#pending.delete(id);
          reject(new KvError('timeout', `no answer to request ${id} from ${this.#shownUrl} within ${this.#timeoutMs} ms`));
        }, this.#timeoutMs);
        this.#pending.set(id, { frame, resolve, reject, timer, sent: false });
        this.#unsent.push(id);
        this.#flush();
      });
    }

    /** Reads a key: `{found, values, siblings, context}`. */
    async get(key, options = {}) {
      const answer = await this.#request((id) => encodeGet(id, key, options.r, options.local));
      if (options.binary) {
        const enc = new TextEncoder();
        const bytes = (v) => (typeof v === 'string' ? enc.encode(v) : v);
        answer.values = answer.values.map(bytes);
        for (const s of answer.siblings) s.value = bytes(s.value);
      }
      return answer;
    }

    /**
     * Writes a value (string or Uint8Array); with the context of a get it replaces what that get
     * saw; with `ttlSeconds` it expires that long after the write.
     */
    put(key, value, options = {}) {
      return this.#request((id) => encodePut(id, key, value, options.context, options.w, options.ttlSeconds));
    }

    /**
     * Writes a versioned tombstone over what `options.context` saw; without a context the node
     * reads the key first and deletes every sibling that read finds.
     */
    delete(key, options = {}) {
      return this.#request((id) => encodeDelete(id, key, options.context, options.w));
    }

    /**
     * Adds `by` (default 1, negative to subtract) to the key's counter: `{key, value, context}`,
     * `value` being the counter as the replica that applied the increment knows it.
     */
    incr(key, by = 1, options = {}) {
      return this.#request((id) => encodeIncr(id, key, by, options.w));
    }

    /** A liveness probe through the node. */
    ping() {
      return this.#request((id) => wasm.encodeOp(id, 'ping'));
    }

    /** The members of the cluster as the connected node sees them. */
    status() {
      return this.#request((id) => wasm.encodeOp(id, 'status'));
    }

    /**
     * Read, reconcile, write back with the read's context, and retry while someone else's
     * write left siblings beside ours. `resolver` is "lww" | "union" | "merge" or
     * `(values, read) => value` (may be async; return null to delete). It may run more than
     * once, so it should merge rather than count. Resolves with `{value, context}`.
     */
    async update(key, resolver, options = {}) {
      const maxRetries = options.maxRetries ?? this.#maxRetries;
      let read = await this.get(key, options);
      for (let attempt = 0; ; attempt++) {
        const value = typeof resolver === 'function'
          ? await resolver(read.values, read)
          : call(() => wasm.reconcile(read, resolver));
        if (value === undefined) {
          throw new KvError('bad_request', 'the update resolver returned undefined (return null to delete)');
        }
        const options2 = { context: read.context, w: options.w };
        if (value === null) await this.delete(key, options2);
        else await this.put(key, value, options2);
        const check = await this.get(key, options);
        if (check.siblings.length <= 1) {
          return { value: check.values.length ? check.values[0] : null, context: check.context };
        }
        if (attempt >= maxRetries) {
          throw new KvError('conflict',
            `update of ${JSON.stringify(key)} still sees ${check.siblings.length} siblings after ${attempt + 1} writes`);
        }
        read = check;
        await sleep(Math.min(this.#maxBackoffMs, this.#minBackoffMs * 2 ** attempt) * Math.random());
      }
    }

    /** Closes the connection; requests still waiting fail with `unavailable`. */
    close() {
      if (this.#closed) return;
      this.#closed = true;
      if (this.#reconnectTimer) clearTimeout(this.#reconnectTimer);
      clearInterval(this.#heartbeat);
      this.#heartbeat = null;
      this.#failUnsent('the client was closed');
      const ws = this.#ws;
      this.#ws = null;
      for (const [id, entry] of this.#pending) {
        this.#pending.delete(id);
        clearTimeout(entry.timer);
        entry.reject(new KvError('unavailable', 'the client was closed before the answer'));
      }
      if (ws) ws.close();
    }

    /** Whether a socket is open right now. */
    get connected() {
      return this.#ws !== null && this.#ws.readyState === OPEN;
    }
  }

  /** reconcile with KvError-wrapped failures (a resolver function's own errors pass through). */
  function reconcile(values, strategy) {
    if (typeof strategy === 'function') return wasm.reconcile(values, strategy);
    return call(() => wasm.reconcile(values, strategy));
  }

  return {
    KvClient,
    KvError,
    reconcile,
    compareContexts(a, b) {
      checkString('a causal context', a);
      checkString('a causal context', b);
      return call(() => wasm.compareContexts(a, b));
    },
    mergeContexts(contexts) {
      if (!Array.isArray(contexts)) {
        throw badRequest(`mergeContexts takes an array of contexts, not ${describe(contexts)}`);
      }
      return call(() => wasm.mergeContexts(contexts));
    },
    checkContext(context) {
      checkString('a causal context', context);
      return call(() => wasm.checkContext(context));
    },
    encodeGet,
    encodePut,
    encodeDelete,
    decodeResponse(text) {
      checkString('an answer frame', text);
      return call(() => wasm.decodeResponse(text));
    },
  };
}
