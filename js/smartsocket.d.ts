// Type declarations of smartsocket-client (SmartSocket protocol v1).

/** Anything JSON can carry, plus bytes (sent as MessagePack; received as Uint8Array). */
export type Payload = any;

/** A WebSocket constructor: the browser's, or e.g. `WebSocket` from the `ws` npm package. */
export interface WebSocketConstructor {
  new (url: string, protocols?: string | string[], options?: any): WebSocketLike;
}

export interface WebSocketLike {
  readonly readyState: number;
  binaryType: string;
  send(data: string | ArrayBufferLike | ArrayBufferView): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: string, listener: (event: any) => void): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
}

export interface SmartSocketOptions {
  /** Reconnect by itself after a drop (not after close codes 1000, 4000, 4001). With a server
   * that has recovery (`welcome.recovery`), the reconnect resumes the session (not after 4008
   * either). Default true. */
  reconnect?: boolean;
  /** First reconnect delay in ms; doubles every attempt. Default 1000. */
  reconnectDelay?: number;
  /** Longest reconnect delay in ms. Default 30000. */
  reconnectDelayMax?: number;
  /** Each delay is spread by +/- this fraction, in [0, 1). Default 0.5. */
  randomizationFactor?: number;
  /** Give up (event `reconnect_failed`) after this many attempts; null: never. Default 10. */
  maxReconnectAttempts?: number | null;
  /** Default timeout of call(), in ms. Default 30000. */
  ackTimeout?: number;
  /** Messages kept while disconnected. Default 1000. */
  maxBuffered?: number;
  /** Time for a connection attempt to get its `$welcome`, in ms. Default 10000. */
  connectTimeout?: number;
  /** Credentials sent as `["$auth", auth]` on every connection (or a function returning them,
   * or a Promise of them), for servers that require authentication. */
  auth?: Record<string, unknown> | (() => Record<string, unknown> | Promise<Record<string, unknown>>) | null;
  /** A JWT connection token (or a Promise of one) for every connection, sent in `$auth`;
   * called again ahead of the token's `exp` (with jitter) for `$refresh`, and after a close
   * 4003 (expired) before reconnecting. Replaces `auth`. */
  getToken?: (() => string | Promise<string>) | null;
  /** Clock of the token refresh, ms since the epoch (default `Date.now`; tests inject one). */
  tokenClock?: (() => number) | null;
  /** Random source of the refresh jitter, in [0, 1) (default `Math.random`). */
  tokenRandom?: (() => number) | null;
  /** How often the refresh time is checked, in ms. Default 1000. */
  tokenCheckInterval?: number;
  /** WebSocket implementation (default: the global `WebSocket`). Node 20: pass `ws`'s. */
  WebSocket?: WebSocketConstructor | null;
  /** Third argument of the WebSocket constructor (e.g. `{headers}` with `ws`). */
  wsOptions?: Record<string, unknown> | null;
}

export interface WelcomeInfo {
  sid: string;
  token: string;
  protocol: number;
  pingInterval: number;
  pingTimeout: number;
  maxMessageSize: number;
  ackTimeout: number;
  /** With recovery on the server: the window (ms) a dropped session stays resumable. */
  recovery?: number;
  /** After a resume attempt: whether the session was resumed. */
  recovered?: boolean;
  [key: string]: unknown;
}

/** Argument of `connect` listeners. */
/** `$gap` data: messages of `room` may have been lost (the cluster's broker failed, say):
 * refetch what the room shows (protocol.md section 8, "Gaps"). */
export interface GapInfo {
  room: string;
}

export interface ConnectInfo {
  /** The dropped session was resumed: same `id`, rooms and server-side data, and the messages
   * missed meanwhile arrive (once, in order). False on a new session: refetch your state. */
  recovered: boolean;
}

export interface DisconnectInfo {
  code: number;
  reason: string;
}

/** `$error` data: something this client sent was refused. */
export interface ServerErrorInfo {
  code: string;
  message: string;
  event?: string;
  id?: number;
  retryAfter?: number;
}

export interface CallOptions {
  /** Milliseconds to wait for the ack (default: `ackTimeout`); 0 or Infinity: no limit. */
  timeout?: number;
  /** Force a MessagePack (true) or JSON (false) frame; default: MessagePack when the data holds
   * bytes at the top level or one level down. */
  binary?: boolean;
}

export interface SendOptions {
  binary?: boolean;
}

/** Errors of this client. `code`: an ack error code from the server (e.g. "not_in_room",
 * "invalid_payload", "rate_limited") or a local one: "timeout", "disconnected", "closed",
 * "offline_buffer_full", "message_too_big", "connect_failed", "reserved_event",
 * "auth_required" (the server requires credentials and `options.auth` gave none: `connect()`
 * rejects at once, no reconnect), "unauthorized" (the server refused them: close 4001). */
export declare class SmartSocketError extends Error {
  constructor(code: string, message: string, extra?: Record<string, unknown>);
  code: string;
  /** Seconds, with "rate_limited". */
  retryAfter?: number;
  /** With "disconnected", "connect_failed", "auth_required" and "unauthorized": the
   * WebSocket close code. */
  closeCode?: number;
  closeReason?: string;
}

export type Handler = (this: SmartSocket, data: any) => unknown;

export interface LocalEvents {
  connect: (info: ConnectInfo) => void;
  disconnect: (info: DisconnectInfo) => void;
  reconnecting: (attempt: number) => void;
  reconnect_failed: () => void;
  error: (info: ServerErrorInfo) => void;
  $gap: (info: GapInfo) => void;
}

type NotLocal<E extends string> = E & (E extends keyof LocalEvents ? never : unknown);

export declare class SmartSocket {
  /** @param url ws(s)://host:port/ ; default: the page's host (ws:// or wss:// like the page). */
  constructor(url?: string, options?: SmartSocketOptions);
  constructor(options: SmartSocketOptions);

  readonly url: string;
  readonly options: Required<SmartSocketOptions>;
  /** Socket id (`sid`) of the current connection; new for every connection, except after a
   * resume (then the same). */
  readonly id: string | null;
  /** Whether the last `$welcome` resumed the dropped session (server with recovery). */
  readonly recovered: boolean;
  /** Whether the `$welcome` of the current connection arrived. */
  readonly connected: boolean;
  /** The last `$welcome` data. */
  readonly welcome: WelcomeInfo | null;
  /** Last round trip measured by ping(), in ms. */
  readonly latency: number | null;
  /** With getToken: when the token is refreshed next (Unix seconds), or null. */
  tokenDue: number | null;
  /** With getToken: `$refresh` round trips the server accepted. */
  readonly tokenRefreshes: number;

  /** Connect; resolves on `$welcome`, rejects if this attempt fails (code "connect_failed",
   * or "auth_required" / "unauthorized" when the server wants other credentials). */
  connect(): Promise<this>;
  /** Local events: connect ({recovered}), disconnect ({code, reason}), reconnecting (attempt),
   * reconnect_failed, error ($error data), $gap ({room}: messages of the room may be lost). */
  on<E extends keyof LocalEvents>(event: E, handler: LocalEvents[E]): this;
  /** Server events: the first handler's return value (or resolved Promise) answers a server
   * `call`; a thrown error (its `code`, else "client_error") becomes an ack error. */
  on<E extends string>(event: NotLocal<E>, handler: Handler): this;
  once<E extends keyof LocalEvents>(event: E, handler: LocalEvents[E]): this;
  once<E extends string>(event: NotLocal<E>, handler: Handler): this;
  off(event: string, handler?: (...args: any[]) => unknown): this;
  /** Fire and forget; buffered while disconnected (throws "offline_buffer_full" when full). */
  send(event: string, data?: Payload, options?: SendOptions): this;
  /** Same as send(). */
  emit(event: string, data?: Payload, options?: SendOptions): this;
  /** Request/response: resolves with the server's ack reply, rejects with SmartSocketError.
   * With recovery the call carries an idempotency key: unanswered when the connection drops, it
   * is sent again after the resume (the server runs it once) instead of failing. */
  call<T = any>(event: string, data?: Payload, options?: CallOptions): Promise<T>;
  /** Round trip to the server in ms. */
  ping(timeout?: number): Promise<number>;
  /** Refresh the token (getToken) if it is due; true if the server accepted a new one. */
  checkToken(): Promise<boolean>;
  /** Get a token from getToken and send it in `$refresh` now. */
  refreshToken(): Promise<boolean>;
  /** Close for good (no reconnect). */
  close(): Promise<void>;

  static SmartSocketError: typeof SmartSocketError;
  static msgpack: { encode: typeof encode; decode: typeof decode };
}

/** Whether `data` would be sent as MessagePack (bytes at the top level or one level down). */
export declare function needsBinary(data: unknown): boolean;
/** [exp, iat] of a JWT in Unix seconds (unverified), nulls when absent or unreadable. */
export declare function tokenTimes(token: string): [number | null, number | null];
/** When to refresh a token (Unix seconds): a quarter of its lifetime before exp (at most
 * 300 s), minus a random jitter of up to a tenth of it (at most 60 s); null without exp. */
export declare function refreshAt(exp: number | null, iat: number | null, now: number, random?: () => number): number | null;
/** MessagePack encoding of `value`. */
export declare function encode(value: unknown): Uint8Array;
/** Decodes one MessagePack value (bin -> Uint8Array, 64-bit ints beyond 2^53 -> bigint). */
export declare function decode(input: ArrayBuffer | ArrayBufferView): any;
export declare const msgpack: { encode: typeof encode; decode: typeof decode };
export default SmartSocket;
