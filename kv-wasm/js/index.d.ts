// TypeScript declarations of the kv SDK (the same for the web and Node.js packages).
// kv_wasm.d.ts, written by wasm-bindgen, declares the raw wasm exports underneath.

/** A value: UTF-8 text as a string, any other bytes as a Uint8Array. */
export type Value = string | Uint8Array;

/** One version of a key's value, with the timestamp its replica stamped it with. */
export interface Sibling {
  value: Value;
  /** Milliseconds since the epoch at the replica that took the write; null when unknown. */
  timestampMs: number | null;
  /** For a value written with a time to live: when it expires (milliseconds since the epoch). */
  expiresAtMs?: number;
  /** Set on the value that shows the key's counter (its decimal text). */
  counter?: boolean;
}

/** What `get` answers. */
export interface GetResult {
  key: string;
  /** False for a key never written or deleted. */
  found: boolean;
  /** Every live sibling's value (one when there was no concurrent write). */
  values: Value[];
  /** The same siblings with their timestamps. */
  siblings: Sibling[];
  /** Opaque causal context: hand it back to `put`/`delete` to replace what this read saw. */
  context: string;
  /** The key's counter, when `incr` wrote one (also shown among `values` as its text). */
  counter?: number;
}

export interface GetOptions {
  /** Read quorum for this request. */
  r?: number;
  /** Read only the connected node's replica, without coordination. */
  local?: boolean;
  /** Return every value as a Uint8Array, also those that are valid UTF-8. */
  binary?: boolean;
}

export interface WriteOptions {
  /** The context of an earlier read; without it the write is blind (kept beside what is stored). */
  context?: string;
  /** Write quorum for this request. */
  w?: number;
}

export interface PutOptions extends WriteOptions {
  /** Time to live in whole seconds: the value expires then and reads as deleted. */
  ttlSeconds?: number;
}

export interface PutResult {
  key: string;
  /**
   * Covers what the writer saw plus this write. Where the node cannot express that (a blind
   * put over an existing key, or the key written by others since the given context) it is the
   * context given: "" after a blind put. Writing again with it keeps this value as a sibling;
   * to replace everything, `get` first and write with that read's context.
   */
  context: string;
}

export interface IncrResult {
  key: string;
  /** The counter right after the increment, as the replica that applied it knows it. */
  value: number;
  context: string;
}

export interface DeleteResult {
  key: string;
  [field: string]: unknown;
}

export interface UpdateOptions extends GetOptions {
  w?: number;
  /** Writes retried while siblings remain (default: the client's maxRetries). */
  maxRetries?: number;
}

export interface UpdateResult {
  /** The value left after the update (null when deleted). */
  value: Value | null;
  context: string;
}

export type Strategy = 'lww' | 'union' | 'merge';
export type Resolver = (values: Value[], read: GetResult) => Value | null | Promise<Value | null>;
export type Causality = 'before' | 'after' | 'equal' | 'concurrent';

export interface ConnectOptions {
  /** Sent as ?token= on the WebSocket URL. */
  token?: string;
  /** Per request and per connection attempt (default 10000). */
  timeoutMs?: number;
  /** Reconnect after a drop (default true). */
  reconnect?: boolean;
  /** Backoff between reconnect attempts: min * 2^attempt, capped at max, with jitter (100 / 5000). */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** Default retry count of `update` (5). */
  maxRetries?: number;
  /**
   * A connection quiet this long is pinged; still quiet `timeoutMs` later, it is dropped and
   * replaced (default 15000; 0 turns the heartbeat off).
   */
  heartbeatMs?: number;
  /** A WebSocket class to use instead of the environment's. */
  WebSocket?: unknown;
}

/** Protocol codes, plus `bad_response` (undecodable frame) and `conflict` (update gave up). */
export type ErrorCode =
  | 'bad_request' | 'too_large' | 'unauthorized' | 'unavailable' | 'timeout' | 'overloaded'
  | 'internal' | 'bad_response' | 'conflict' | (string & {});

/** Arguments of the wrong type fail with `bad_request` before anything is sent. */
export class KvError extends Error {
  readonly code: ErrorCode;
  constructor(code: string, message: string, options?: { cause?: unknown });
}

export class KvClient {
  private constructor();
  /**
   * Connects to one node (`ws://host:port`); rejects with a KvError when it cannot:
   * `unavailable` (nothing listens, or the handshake fails), `unauthorized` (the token is
   * refused, Node.js only), `timeout` (no handshake within `timeoutMs`), `bad_request` (not a URL).
   */
  static connect(url: string, options?: ConnectOptions): Promise<KvClient>;
  get(key: string, options?: GetOptions): Promise<GetResult>;
  put(key: string, value: Value, options?: PutOptions): Promise<PutResult>;
  delete(key: string, options?: WriteOptions): Promise<DeleteResult>;
  /** Adds `by` (default 1, negative to subtract) to the key's counter. */
  incr(key: string, by?: number, options?: { w?: number }): Promise<IncrResult>;
  /** Read, reconcile with `resolver`, write back with the read's context; retry while siblings remain. */
  update(key: string, resolver: Strategy | Resolver, options?: UpdateOptions): Promise<UpdateResult>;
  ping(): Promise<Record<string, unknown>>;
  status(): Promise<Record<string, unknown>>;
  /** Closes the connection; waiting requests fail with `unavailable`. */
  close(): void;
  readonly connected: boolean;
}

/** Reconciles siblings: a built-in answers a JSON string (union, merge) or the winning value (lww). */
export function reconcile(values: Value[] | Sibling[] | GetResult, strategy: Strategy): Value | null;
export function reconcile<T>(values: Value[] | Sibling[] | GetResult, strategy: (values: Value[]) => T): T;
/** How context `a` relates to `b`. Throws a KvError (bad_request) for a corrupt context. */
export function compareContexts(a: string, b: string): Causality;
/** The context covering all of `contexts`. */
export function mergeContexts(contexts: string[]): string;
/** Throws a KvError (bad_request) unless `context` is a causal context (or ""). */
export function checkContext(context: string): void;

/** Wire protocol: request frames and decoded answers. */
export function encodeGet(id: number, key: string, r?: number | null, local?: boolean | null): string;
export function encodePut(id: number, key: string, value: Value, context?: string | null, w?: number | null, ttlSeconds?: number | null): string;
export function encodeDelete(id: number, key: string, context?: string | null, w?: number | null): string;
export type Answer =
  | ({ id: number | null; ok: true } & Partial<GetResult> & Record<string, unknown>)
  | { id: number | null; ok: false; error: { code: ErrorCode; message: string } };
export function decodeResponse(text: string): Answer;
