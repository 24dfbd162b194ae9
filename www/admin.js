// A small JSON request channel to the serving node for the admin ops the SDK does not wrap
// (`ring`, `hints`, `repair`): `{"id","op",...}` frames, answers matched by id, reconnection
// with backoff. Data ops (get, put, delete) go through the kv-wasm client instead.

/** An answer with `ok: false`, or a failure to reach the node, as `{code, message}`. */
export class AdminError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'AdminError';
    this.code = code;
  }
}

export class Admin {
  #url;
  #ws = null;
  #nextId = 1;
  /** id -> {resolve, reject, timer} */
  #pending = new Map();
  #opening = null;
  #backoff = 200;

  /** @param {string} url ws://host:port of the serving node */
  constructor(url) {
    this.#url = url;
  }

  /** Opens the socket if it is not open; resolves once it is. */
  #open() {
    if (this.#ws && this.#ws.readyState === WebSocket.OPEN) return Promise.resolve();
    if (this.#opening) return this.#opening;
    this.#opening = new Promise((resolve, reject) => {
      const ws = new WebSocket(this.#url);
      ws.onopen = () => {
        this.#ws = ws;
        this.#opening = null;
        this.#backoff = 200;
        resolve();
      };
      ws.onmessage = (ev) => this.#onMessage(ev.data);
      ws.onclose = () => {
        if (this.#ws === ws) this.#ws = null;
        if (this.#opening) {
          // Never opened: fail this attempt, let the next request try again after a pause.
          const wait = this.#backoff;
          this.#backoff = Math.min(5000, this.#backoff * 2);
          setTimeout(() => { this.#opening = null; }, wait);
          reject(new AdminError('unavailable', `cannot connect to ${this.#url}`));
          return;
        }
        for (const [id, p] of this.#pending) {
          clearTimeout(p.timer);
          p.reject(new AdminError('unavailable', `the connection to ${this.#url} closed before the answer`));
          this.#pending.delete(id);
        }
      };
    });
    return this.#opening;
  }

  #onMessage(data) {
    let answer;
    try {
      answer = JSON.parse(data);
    } catch {
      return;
    }
    const p = this.#pending.get(answer.id);
    if (!p) return;
    this.#pending.delete(answer.id);
    clearTimeout(p.timer);
    if (answer.ok) p.resolve(answer);
    else p.reject(new AdminError(answer.error?.code ?? 'internal', answer.error?.message ?? 'no message'));
  }

  /**
   * Sends `{op, ...fields}` and resolves with the answer (`ok: true`), or rejects with an
   * AdminError carrying the server's code.
   */
  async request(op, fields = {}, timeoutMs = 10_000) {
    await this.#open();
    const ws = this.#ws;
    if (!ws) throw new AdminError('unavailable', `the connection to ${this.#url} closed`);
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new AdminError('timeout', `no answer to ${op} within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify({ id, op, ...fields }));
    });
  }
}
