// SmartSocket client for browsers and Node >= 20: protocol v1 (docs/protocol.md).
// Dependency-free ES module. Events, acks both ways, automatic reconnect with backoff and
// jitter, a bounded offline buffer, the $ping/$pong heartbeat, session recovery (resume with
// exactly-once delivery of missed room and direct messages, idempotent calls), and binary
// payloads as MessagePack (its small codec is at the end of this file).

const SUBPROTOCOL = "smartsocket.v1";
// Close codes after which the client does not reconnect by itself (protocol.md section 4).
const NO_RECONNECT = [1000, 4000, 4001];
const RATE_LIMITED = 4008;
// Close codes that end a session for good: no resume after them (protocol.md section 8).
const NO_RESUME = [...NO_RECONNECT, RATE_LIMITED];
const MAX_ACK_ID = Number.MAX_SAFE_INTEGER; // 2^53 - 1: ids survive JSON both ways
// Names local to each side: never sent (the server refuses them with reserved_event).
const LOCAL = ["connect", "disconnect", "error"];

// Connection tokens (protocol.md section 7, "Token refresh"): refresh a quarter of the
// lifetime before exp (at most 5 min), minus a jitter of up to a tenth of it (at most 1 min).
const MAX_AHEAD = 300;
const MAX_JITTER = 60;

/** [exp, iat] of a JWT (Unix seconds; unverified: only to know when to refresh it). */
export function tokenTimes(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part + "===".slice((part.length + 3) % 4)), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    const num = (v) => (typeof v == "number" ? v : null);
    return [num(claims.exp), num(claims.iat)];
  } catch (_) {
    return [null, null];
  }
}

/** When to refresh a token expiring at `exp` (Unix seconds), or null if it never expires. */
export function refreshAt(exp, iat, now, random = Math.random) {
  if (exp == null) return null;
  const lifetime = Math.max(exp - (iat != null ? iat : now), 0);
  const jitter = random() * Math.min(lifetime / 10, MAX_JITTER);
  return Math.max(now, exp - Math.min(lifetime / 4, MAX_AHEAD) - jitter);
}

const DEFAULTS = {
  reconnect: true,
  reconnectDelay: 1000,
  reconnectDelayMax: 30000,
  randomizationFactor: 0.5,
  maxReconnectAttempts: 10,
  ackTimeout: 30000,
  maxBuffered: 1000,
  connectTimeout: 10000,
  auth: null,
  getToken: null,
  tokenClock: null,
  tokenRandom: null,
  tokenCheckInterval: 1000,
  WebSocket: null,
  wsOptions: null,
};

const win = typeof window != "undefined" && window.addEventListener ? window : null;
const now = () => (typeof performance != "undefined" ? performance.now() : Date.now());

/** An Error with a machine-readable `code` (ack error codes of protocol.md, or local ones:
 * timeout, disconnected, closed, offline_buffer_full, message_too_big, connect_failed,
 * auth_required: the server requires credentials and options.auth gave none; unauthorized:
 * the server refused the credentials, close 4001). */
export class SmartSocketError extends Error {
  constructor(code, message, extra) {
    super(message);
    this.name = "SmartSocketError";
    this.code = code;
    if (extra) Object.assign(this, extra);
  }
}

const fail = (code, message, extra) => new SmartSocketError(code, message, extra);

const isBytes = (v) => v instanceof ArrayBuffer || ArrayBuffer.isView(v);

/** Whether `data` holds bytes at the top level or one level down (then it travels as
 * MessagePack in a binary frame, so the bytes arrive as bytes). */
export function needsBinary(data) {
  if (isBytes(data)) return true;
  if (Array.isArray(data)) return data.some(isBytes);
  if (data && typeof data == "object") for (const key in data) if (isBytes(data[key])) return true;
  return false;
}

function checkName(event) {
  if (typeof event != "string" || !event) throw new TypeError("event name must be a non-empty string");
  if (event[0] == "$" || LOCAL.includes(event)) throw fail("reserved_event", `'${event}' is a reserved event name`);
}

function defaultUrl(url) {
  const loc = globalThis.location;
  if (!url || url[0] == "/") {
    if (!loc || !loc.host) throw new TypeError("SmartSocket needs a URL outside a web page");
    return (loc.protocol == "https:" ? "wss://" : "ws://") + loc.host + (url || "/");
  }
  return url.replace(/^http/, "ws");
}

export class SmartSocket {
  /**
   * @param {string} [url] ws(s)://host:port/ (default: the page's host), or a path like "/".
   * @param {object} [options] see DEFAULTS and smartsocket.d.ts.
   */
  constructor(url, options) {
    if (url && typeof url == "object") [url, options] = [undefined, url];
    const o = (this.options = Object.assign({}, DEFAULTS, options));
    if (!(o.reconnectDelay > 0 && o.reconnectDelayMax >= o.reconnectDelay))
      throw new RangeError("need 0 < reconnectDelay <= reconnectDelayMax");
    if (!(o.randomizationFactor >= 0 && o.randomizationFactor < 1))
      throw new RangeError("randomizationFactor must be in [0, 1)");
    this.url = defaultUrl(url);
    /** The socket id (`sid` of the last `$welcome`); a new one for every connection, except
     * after a resume (recovery): then the same. */
    this.id = null;
    /** Whether the last `$welcome` resumed the dropped session (protocol.md section 8). */
    this.recovered = false;
    /** The last `$welcome` data (pingInterval, pingTimeout, maxMessageSize, ...). */
    this.welcome = null;
    /** The last round trip measured by ping(), in milliseconds. */
    this.latency = null;
    this._handlers = new Map();
    this._pending = new Map(); // ack id -> {resolve, reject, timer, sent, id, payload, keyed}
    this._pings = new Map(); // $ping seq -> {resolve, reject, timer, start}
    this._buffer = []; // [{payload, id}] waiting for the next $welcome
    this._nextId = 0;
    this._pingSeq = 0;
    this._ws = null;
    this._ready = false;
    this._closed = false;
    this._opening = null;
    this._attempt = 0;
    this._timer = null; // reconnect timer
    this._watchdog = null;
    this._lastSeen = 0;
    // Recovery: positions of the last messages handled (room -> [epoch, offset]; direct seq),
    // and whether the next connection resumes the session of the last $welcome.
    this._offsets = new Map();
    this._seq = 0;
    this._resume = false;
    this._lost = null; // the "disconnected" error of the last drop, for calls kept over it
    // Connection tokens (options.getToken): when to refresh (Unix seconds), successful refreshes.
    this.tokenDue = null;
    this.tokenRefreshes = 0;
    this._tokenTimer = null;
    // Back online (a laptop waking up, a phone leaving a tunnel): retry now, not after the backoff.
    this._online = () => this._timer && this._retryNow();
  }

  /** Whether the socket is connected (its `$welcome` arrived). */
  get connected() {
    return this._ready;
  }

  // ---- public API

  /** Connect; resolves (with this socket) on the server's `$welcome`, rejects if this attempt
   * fails. Later drops are handled by automatic reconnect. */
  connect() {
    this._closed = false;
    if (win) win.addEventListener("online", this._online); // once, however often connect() runs
    if (this._ready) return Promise.resolve(this);
    if (this._opening) return this._opening.promise.then(() => this);
    const retrying = this._timer;
    clearTimeout(this._timer);
    this._timer = null;
    const opened = this._open();
    // stay in the reconnect loop, unless trying again cannot help (new credentials needed)
    if (retrying) opened.catch((err) => (NO_RECONNECT.includes(err.closeCode) ? this._giveUp() : this._reconnect()));
    return opened.then(() => this);
  }

  /** Handle `event`: `handler(data)`. The first handler's return value (or the value its
   * Promise resolves to) answers a server's `call`; a thrown error becomes an ack error. */
  on(event, handler) {
    if (typeof handler != "function") throw new TypeError("handler must be a function");
    const list = this._handlers.get(event);
    if (list) list.push(handler);
    else this._handlers.set(event, [handler]);
    return this;
  }

  /** Handle `event` once. */
  once(event, handler) {
    const wrapper = (...args) => {
      this.off(event, wrapper);
      return handler.apply(this, args);
    };
    wrapper.listener = handler;
    return this.on(event, wrapper);
  }

  /** Remove `handler` for `event`, or every handler of `event` when none is given. */
  off(event, handler) {
    const list = this._handlers.get(event);
    if (list && handler) {
      const rest = list.filter((h) => h !== handler && h.listener !== handler);
      if (rest.length) this._handlers.set(event, rest);
      else this._handlers.delete(event);
    } else this._handlers.delete(event);
    return this;
  }

  /** Send `event` (fire and forget). While disconnected it waits in the offline buffer (at most
   * `maxBuffered` messages, else an Error with code "offline_buffer_full") and goes out, in
   * order, after the next `$welcome`. `options.binary` forces a MessagePack frame. */
  send(event, data, options) {
    checkName(event);
    this._send(this._encode([event, data], options), 0);
    return this;
  }

  /** Send `event` and resolve with the server's ack reply. Rejects with a SmartSocketError:
   * the server's error `code` (e.g. "not_in_room"), "timeout", "disconnected" (the connection
   * dropped after the call went out), "offline_buffer_full" or "closed". */
  call(event, data, options) {
    return new Promise((resolve, reject) => {
      checkName(event);
      const timeout = options && options.timeout != null ? options.timeout : this.options.ackTimeout;
      let id = (this._nextId = (this._nextId % MAX_ACK_ID) + 1);
      while (this._pending.has(id)) id = this._nextId = (this._nextId % MAX_ACK_ID) + 1;
      // With recovery the ack id, never reused by this socket, is also the idempotency key:
      // the call may go out again after a resume and the server still runs it once.
      const keyed = !!(this.welcome && this.welcome.recovery);
      const payload = this._encode(keyed ? [event, data, id, id] : [event, data, id], options);
      const entry = { resolve, reject, sent: false, timer: null, id, payload, keyed };
      if (timeout > 0 && timeout < Infinity)
        entry.timer = setTimeout(() => {
          // A call nobody waits for any more need not go out after a reconnect.
          this._buffer = this._buffer.filter((m) => m.id !== id);
          this._settle(id, fail("timeout", `no ack for '${event}' within ${timeout} ms`));
        }, timeout);
      this._pending.set(id, entry);
      try {
        this._send(payload, id);
      } catch (err) {
        clearTimeout(entry.timer);
        this._pending.delete(id);
        throw err;
      }
    });
  }

  /** Measure the round trip to the server with `$ping`/`$pong`; resolves with milliseconds
   * (also kept in `latency`). */
  ping(timeout = 5000) {
    return new Promise((resolve, reject) => {
      if (!this._ready) throw fail("disconnected", "not connected");
      const seq = ++this._pingSeq;
      const timer = setTimeout(() => {
        this._pings.delete(seq);
        reject(fail("timeout", `no $pong within ${timeout} ms`));
      }, timeout);
      this._pings.set(seq, { resolve, reject, timer, start: now() });
      this._raw(this._ws, JSON.stringify(["$ping", seq]));
    });
  }

  /** Refresh the connection token if it is due (a timer calls this every tokenCheckInterval
   * ms; tests call it after moving options.tokenClock). Resolves true if a refresh was
   * accepted. */
  checkToken() {
    const due = this.tokenDue;
    return due != null && this._tokenNow() >= due ? this.refreshToken() : Promise.resolve(false);
  }

  /** Get a token from options.getToken and send it in `$refresh` now. On a failure the
   * connection keeps its token (retried in 5 s; the server closes with 4003 once it expires,
   * and the client reconnects with a fresh one). */
  async refreshToken() {
    const ws = this._ws;
    if (!this.options.getToken || !this._ready) return false;
    try {
      const token = await this._fetchToken();
      const id = (this._nextId = (this._nextId % MAX_ACK_ID) + 1);
      await new Promise((resolve, reject) => {
        const timer = setTimeout(() => this._settle(id, fail("timeout", "no ack for $refresh")), this.options.ackTimeout);
        this._pending.set(id, { resolve, reject, sent: true, timer, id, payload: null, keyed: false });
        this._raw(ws, JSON.stringify(["$refresh", { token }, id]));
      });
    } catch (err) {
      this.tokenDue = this._tokenNow() + 5;
      this._emit("error", { code: err && err.code, message: `token refresh failed: ${err && err.message}`, event: "$refresh" });
      return false;
    }
    this.tokenRefreshes++;
    return true;
  }

  _tokenNow() {
    const clock = this.options.tokenClock;
    return (clock ? clock() : Date.now()) / 1000;
  }

  async _fetchToken() {
    const token = await this.options.getToken();
    if (typeof token != "string" || !token) throw new TypeError("getToken must return a token string");
    const [exp, iat] = tokenTimes(token);
    this.tokenDue = refreshAt(exp, iat, this._tokenNow(), this.options.tokenRandom || Math.random);
    return token;
  }

  /** Close for good: no reconnect; pending calls fail with code "disconnected" and the offline
   * buffer is dropped. Resolves when the connection is closed (or after 1 s). */
  close() {
    this._closed = true;
    this._resume = false;
    if (win) win.removeEventListener("online", this._online);
    clearTimeout(this._timer);
    this._timer = null;
    this._buffer = [];
    const ws = this._ws;
    const done = new Promise((resolve) => {
      if (!ws || ws.readyState == 3) return resolve();
      const timer = setTimeout(resolve, 1000);
      ws.addEventListener("close", () => resolve(clearTimeout(timer)));
    });
    if (ws) this._drop(ws, 1000, "client closed");
    const error = fail("disconnected", "the socket was closed", { closeCode: 1000 });
    for (const id of [...this._pending.keys()]) this._settle(id, error);
    return done;
  }

  // ---- connection

  _open() {
    const o = this.options;
    let opening;
    const promise = new Promise((resolve, reject) => (opening = { resolve, reject }));
    const WS = o.WebSocket || globalThis.WebSocket;
    if (!WS) return Promise.reject(new TypeError("no WebSocket here: pass options.WebSocket"));
    const resume = this._resume && this.welcome;
    const url = resume ? this.url + (this.url.includes("?") ? "&" : "?") + "resume=1" : this.url;
    let ws;
    try {
      ws = o.wsOptions ? new WS(url, [SUBPROTOCOL], o.wsOptions) : new WS(url, [SUBPROTOCOL]);
    } catch (err) {
      return Promise.reject(err);
    }
    ws.binaryType = "arraybuffer";
    opening.promise = promise;
    opening.timer = setTimeout(() => this._drop(ws, 1006, "no $welcome in time"), o.connectTimeout);
    this._opening = opening;
    this._ws = ws;
    this._ready = false;
    // The server reads $resume once the socket is authenticated: after $auth, if any.
    const hello = () =>
      resume &&
      this._raw(ws, JSON.stringify(["$resume", { sid: resume.sid, token: resume.token, offsets: Object.fromEntries(this._offsets), seq: this._seq }]));
    ws.onopen = () => {
      // getToken: a fresh token for every connection (after a 4003 too), sent in $auth.
      const auth = o.getToken ? () => this._fetchToken().then((token) => ({ token })) : o.auth;
      if (auth && this._ws === ws)
        new Promise((resolve) => resolve(typeof auth == "function" ? auth() : auth)).then(
          (credentials) => (this._raw(ws, JSON.stringify(["$auth", credentials])), hello()),
          (err) => this._ws === ws && this._drop(ws, 1006, `no credentials: ${err && err.message}`),
        );
      else hello();
    };
    ws.onmessage = (event) => this._ws === ws && this._receive(ws, event.data);
    ws.onclose = (event) => this._closedBy(ws, event.code, event.reason);
    ws.onerror = () => {}; // a close event follows
    return promise;
  }

  // Give up on `ws` now (no waiting for a dead peer's closing handshake).
  _drop(ws, code, reason) {
    this._closedBy(ws, code, reason);
    try {
      if (ws.terminate && code != 1000) ws.terminate();
      else ws.close(code == 1000 ? 1000 : undefined, code == 1000 ? reason : undefined);
    } catch (_) {
      // already closed
    }
  }

  _closedBy(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    const wasReady = this._ready;
    this._ready = false;
    clearTimeout(this._watchdog);
    clearTimeout(this._tokenTimer);
    this._tokenTimer = null;
    const info = { closeCode: code, closeReason: reason };
    const error = fail("disconnected", `connection closed (${code}${reason ? ": " + reason : ""})`, info);
    if (wasReady) {
      this._lost = error;
      // A session that may resume keeps its keyed calls: they go out again after $welcome.
      const o = this.options;
      this._resume = !!(this.welcome.recovery && o.reconnect && !this._closed && !NO_RESUME.includes(code));
    }
    for (const [id, entry] of [...this._pending]) if (entry.sent && !(this._resume && entry.keyed)) this._settle(id, error);
    for (const ping of this._pings.values()) clearTimeout(ping.timer), ping.reject(error);
    this._pings.clear();
    const opening = this._opening;
    if (opening) {
      this._opening = null;
      clearTimeout(opening.timer);
      const why = opening.authRequired
        ? fail("auth_required", `${this.url} requires authentication: pass options.auth (e.g. {token}) or ?token= in the URL`, info)
        : code == 4001
          ? fail("unauthorized", `${this.url} refused the credentials (4001${reason ? ": " + reason : ""})`, info)
          : fail("connect_failed", `could not connect to ${this.url} (${code})`, info);
      opening.reject(why);
    }
    if (wasReady) {
      this._emit("disconnect", { code, reason });
      if (this.options.reconnect && !this._closed && !NO_RECONNECT.includes(code))
        this._reconnect(code == RATE_LIMITED);
    }
  }

  _reconnect(long) {
    if (this._closed || this._timer) return;
    const o = this.options;
    const attempt = ++this._attempt;
    if (o.maxReconnectAttempts != null && attempt > o.maxReconnectAttempts) {
      this._attempt = 0;
      return this._giveUp();
    }
    // min(max, delay * 2^(n-1)), spread by +/- randomizationFactor
    let delay = long ? o.reconnectDelayMax : o.reconnectDelay * 2 ** Math.min(attempt - 1, 40);
    delay = Math.min(o.reconnectDelayMax, delay) * (1 + (Math.random() * 2 - 1) * o.randomizationFactor);
    this._timer = setTimeout(() => this._retryNow(), Math.min(o.reconnectDelayMax, delay));
    this._emit("reconnecting", attempt);
  }

  _retryNow() {
    clearTimeout(this._timer);
    this._timer = null;
    if (this._closed || this._ws) return;
    this._open().catch((err) => {
      if (NO_RECONNECT.includes(err.closeCode)) this._giveUp();
      else this._reconnect();
    });
  }

  // No more automatic attempts: calls kept for a resume fail as if there were no recovery.
  _giveUp() {
    this._resume = false;
    for (const [id, entry] of [...this._pending]) if (entry.sent) this._settle(id, this._lost);
    this._emit("reconnect_failed");
  }

  _welcomed(ws, info) {
    if (!info || typeof info.sid != "string") return;
    this.welcome = info;
    this.id = info.sid;
    this._ready = true;
    this._resume = false;
    const recovered = (this.recovered = info.recovered === true);
    // A new session: positions of the old one mean nothing (its seq restarts at 1).
    if (!recovered) this._offsets.clear(), (this._seq = 0);
    // Calls sent on an earlier connection and still unanswered (kept for the resume).
    const retry = [...this._pending.values()].filter((entry) => entry.sent);
    this._attempt = 0;
    this._lastSeen = now();
    // The server is silent for pingInterval + pingTimeout: it (or the path to it) is dead.
    const limit = (info.pingInterval || 25000) + (info.pingTimeout || 20000);
    clearTimeout(this._watchdog);
    const check = () => {
      if (this._ws !== ws) return;
      const silent = now() - this._lastSeen;
      if (silent >= limit) this._drop(ws, 1006, "heartbeat timeout");
      else this._watchdog = setTimeout(check, limit - silent);
    };
    this._watchdog = setTimeout(check, limit);
    const tick = () => {
      this._tokenTimer = setTimeout(tick, this.options.tokenCheckInterval);
      if (this._ready) this.checkToken();
    };
    if (this.options.getToken && !this._tokenTimer) this._tokenTimer = setTimeout(tick, this.options.tokenCheckInterval);
    // 'connect' handlers run before the kept calls and the offline buffer go out, so what they
    // send (joining rooms again, say) reaches the server before the messages that waited for it.
    this._emit("connect", { recovered });
    if (this._ws !== ws) return; // a handler closed it: the buffer waits for the next connection
    for (const entry of retry) if (this._pending.get(entry.id) === entry) this._write(ws, entry);
    const queue = this._buffer;
    this._buffer = [];
    for (const message of queue) this._write(ws, message);
    const opening = this._opening;
    this._opening = null;
    if (opening) clearTimeout(opening.timer), opening.resolve();
  }

  // ---- sending

  _encode(packet, options) {
    const binary = options && options.binary != null ? options.binary : needsBinary(packet[1]);
    const payload = binary ? encode(packet) : JSON.stringify(packet);
    const max = this.welcome && this.welcome.maxMessageSize;
    if (max) {
      const size = binary ? payload.length : payload.length * 3 > max ? utf8.encode(payload).length : 0;
      if (size > max) throw fail("message_too_big", `${size} bytes is over the server's maxMessageSize (${max})`);
    }
    return payload;
  }

  _send(payload, id) {
    const ws = this._ws;
    if (this._ready && ws.readyState == 1) return this._write(ws, { payload, id });
    if (this._closed) throw fail("closed", "the socket is closed: connect() again first");
    if (this._buffer.length >= this.options.maxBuffered)
      throw fail("offline_buffer_full", `${this.options.maxBuffered} messages already wait for a connection`);
    this._buffer.push({ payload, id });
  }

  _write(ws, message) {
    const entry = message.id && this._pending.get(message.id);
    if (entry) entry.sent = true;
    ws.send(message.payload);
  }

  _raw(ws, payload) {
    if (ws && ws === this._ws && ws.readyState == 1) ws.send(payload);
  }

  _settle(id, error, result) {
    const entry = this._pending.get(id);
    if (!entry) return;
    this._pending.delete(id);
    clearTimeout(entry.timer);
    if (error) entry.reject(error);
    else entry.resolve(result);
  }

  // ---- receiving

  _receive(ws, data) {
    this._lastSeen = now();
    const binary = typeof data != "string";
    let packet;
    try {
      packet = binary ? decode(data) : JSON.parse(data);
    } catch (_) {
      return; // not from a SmartSocket server
    }
    if (!Array.isArray(packet)) return;
    const [head, body, extra] = packet;
    if (typeof head == "number") {
      if (packet.length > 2 && extra) {
        const message = typeof extra.message == "string" ? extra.message : String(extra.code);
        const info = extra.retryAfter != null ? { retryAfter: extra.retryAfter } : undefined;
        this._settle(head, fail(String(extra.code), message, info));
      } else this._settle(head, null, body);
    } else if (typeof head == "string" && head) {
      if (head[0] == "$") this._system(ws, head, body);
      else if (!(packet.length > 3 && this._seen(packet[3]))) {
        const id = Number.isSafeInteger(extra) && extra > 0 ? extra : 0;
        this._dispatch(ws, head, body === undefined ? null : body, id, binary);
      }
    }
  }

  // Recovery: whether a message with this position (4th item: [room, epoch, offset] or a
  // direct seq) was handled already; if not, it is now the last one handled.
  _seen(meta) {
    if (Array.isArray(meta)) {
      const [room, epoch, offset] = meta;
      const last = this._offsets.get(room);
      if (last && last[0] === epoch && offset <= last[1]) return true;
      this._offsets.set(room, [epoch, offset]);
    } else if (typeof meta == "number") {
      if (meta <= this._seq) return true;
      this._seq = meta;
    }
    return false;
  }

  _system(ws, name, data) {
    if (name == "$welcome") this._welcomed(ws, data);
    else if (name == "$ping") this._raw(ws, JSON.stringify(["$pong", data === undefined ? null : data]));
    else if (name == "$pong") {
      const ping = this._pings.get(data);
      if (ping) {
        this._pings.delete(data);
        clearTimeout(ping.timer);
        ping.resolve((this.latency = now() - ping.start));
      }
    } else if (name == "$error") {
      // A $resume refused by a server without recovery (restarted, say) is no concern of the app.
      if (!(data && data.event == "$resume")) this._emit("error", data);
    } else if (name == "$auth_required") {
      // The server wants $auth: with options.auth it is sent already (or about to be); without,
      // nothing will come, so fail now instead of at the server's auth_timeout (4001).
      const opening = this._opening;
      if (!this.options.auth && !this.options.getToken && !this._ready && opening) {
        opening.authRequired = true;
        this._drop(ws, 1000, "no credentials");
      }
    } else if (name == "$presence") this._emit("$presence", data); // {room, joined|left|updated: {sid, info}}
    else if (name == "$gap" && data && typeof data.room == "string") {
      // {room}: messages of the room may be lost (protocol.md 8, "Gaps"). What follows may carry
      // any position (a new epoch, or offsets seen before a rewind): start the room afresh.
      this._offsets.delete(data.room);
      this._emit("$gap", data);
    }
  }

  _dispatch(ws, name, data, id, binary) {
    const handlers = this._handlers.get(name);
    const reply = (result, error) => {
      const packet = error ? [id, null, error] : [id, result === undefined ? null : result];
      this._raw(ws, binary || (!error && needsBinary(result)) ? encode(packet) : JSON.stringify(packet));
    };
    const failed = (err, ack) => {
      if (!ack) return console.error(`SmartSocket: handler for '${name}' failed`, err);
      const code = err && typeof err.code == "string" && err.code ? err.code : "client_error";
      reply(null, { code, message: String((err && err.message) || err) });
    };
    if (!handlers) return id && reply(null, { code: "unknown_event", message: `no handler for '${name}'` });
    handlers.slice().forEach((handler, index) => {
      const ack = index == 0 && id;
      let result;
      try {
        result = handler.call(this, data);
      } catch (err) {
        return failed(err, ack);
      }
      if (result && typeof result.then == "function")
        result.then((value) => ack && reply(value), (err) => failed(err, ack));
      else if (ack) reply(result);
    });
  }

  _emit(event, arg) {
    for (const handler of (this._handlers.get(event) || []).slice()) {
      try {
        handler.call(this, arg);
      } catch (err) {
        console.error(`SmartSocket: '${event}' handler failed`, err);
      }
    }
  }
}

// Python's client has emit() as another name for send().
SmartSocket.prototype.emit = SmartSocket.prototype.send;

// ---- MessagePack (https://github.com/msgpack/msgpack/blob/master/spec.md): nil, bool, ints
// (64-bit as Number within the safe range, else BigInt), float64 (float32 decoded), str,
// bin (Uint8Array), array, map (string keys); ext -1 (timestamp) decodes to a Date, other ext
// types to {type, data}. Encoding follows JSON.stringify where they differ (toJSON, undefined).

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

/** Encode `value` as MessagePack. */
export function encode(value) {
  let buf = new Uint8Array(256);
  let view = new DataView(buf.buffer);
  let pos = 0;
  const room = (n) => {
    if (pos + n <= buf.length) return;
    let size = buf.length * 2;
    while (size < pos + n) size *= 2;
    const bigger = new Uint8Array(size);
    bigger.set(buf);
    buf = bigger;
    view = new DataView(buf.buffer);
  };
  // a type byte, then `n` in `size` bytes (big endian) written by DataView's `set`
  const head = (type, size, set, n) => {
    room(size + 1);
    buf[pos++] = type;
    if (size) view[set](pos, n);
    pos += size;
  };
  // a length: the fix form (fix | n) below `limit`, else 8 (if `t8`), 16 or 32 bits
  const length = (n, fix, limit, t8, t16) => {
    if (n < limit) head(fix | n, 0);
    else if (n < 256 && t8) head(t8, 1, "setUint8", n);
    else if (n < 65536) head(t16, 2, "setUint16", n);
    else head(t16 + 1, 4, "setUint32", n);
  };
  const bytes = (b) => {
    room(b.length);
    buf.set(b, pos);
    pos += b.length;
  };
  const item = (v) => {
    const type = typeof v;
    if (v == null || type == "function" || type == "symbol") head(0xc0, 0);
    else if (type == "boolean") head(v ? 0xc3 : 0xc2, 0);
    else if (type == "number") {
      if (!Number.isSafeInteger(v)) head(0xcb, 8, "setFloat64", v);
      else if (v >= 0) {
        if (v < 128) head(v, 0);
        else if (v < 256) head(0xcc, 1, "setUint8", v);
        else if (v < 65536) head(0xcd, 2, "setUint16", v);
        else if (v < 4294967296) head(0xce, 4, "setUint32", v);
        else head(0xcf, 8, "setBigUint64", BigInt(v));
      } else if (v >= -32) head(v & 0xff, 0);
      else if (v >= -128) head(0xd0, 1, "setInt8", v);
      else if (v >= -32768) head(0xd1, 2, "setInt16", v);
      else if (v >= -2147483648) head(0xd2, 4, "setInt32", v);
      else head(0xd3, 8, "setBigInt64", BigInt(v));
    } else if (type == "bigint") {
      if (v >= 0n) head(0xcf, 8, "setBigUint64", v);
      else head(0xd3, 8, "setBigInt64", v);
    } else if (type == "string") {
      const b = utf8.encode(v);
      length(b.length, 0xa0, 32, 0xd9, 0xda);
      bytes(b);
    } else if (isBytes(v)) {
      const b = v instanceof Uint8Array ? v : v instanceof ArrayBuffer ? new Uint8Array(v) : new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
      length(b.length, 0, 0, 0xc4, 0xc5);
      bytes(b);
    } else if (Array.isArray(v)) {
      length(v.length, 0x90, 16, 0, 0xdc);
      v.forEach(item);
    } else if (typeof v.toJSON == "function") item(v.toJSON());
    else {
      const keys = Object.keys(v).filter((k) => {
        const t = typeof v[k];
        return t != "undefined" && t != "function" && t != "symbol";
      });
      length(keys.length, 0x80, 16, 0, 0xde);
      for (const k of keys) item(k), item(v[k]);
    }
  };
  item(value);
  return buf.slice(0, pos);
}

/** Decode one MessagePack value from an ArrayBuffer or a Uint8Array (or another view). */
export function decode(input) {
  const bytes = input instanceof ArrayBuffer ? new Uint8Array(input) : new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 0;
  const need = (n) => {
    if (pos + n > bytes.length) throw new RangeError("truncated MessagePack");
  };
  const get = (size, method) => {
    need(size);
    const v = view[method](pos);
    pos += size;
    return v;
  };
  const int64 = (method) => {
    const v = get(8, method);
    return v <= Number.MAX_SAFE_INTEGER && v >= -Number.MAX_SAFE_INTEGER ? Number(v) : v;
  };
  const take = (n) => {
    need(n);
    return bytes.subarray(pos, (pos += n));
  };
  const array = (n) => {
    need(n); // each item takes at least one byte: refuse absurd lengths early
    const a = new Array(n);
    for (let i = 0; i < n; i++) a[i] = item();
    return a;
  };
  const map = (n) => {
    need(n * 2);
    const o = {};
    for (let i = 0; i < n; i++) {
      const key = item();
      const k = typeof key == "string" ? key : String(key);
      const v = item();
      if (k == "__proto__") Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
      else o[k] = v;
    }
    return o;
  };
  const ext = (n) => {
    const type = get(1, "getInt8");
    const data = take(n);
    if (type != -1) return { type, data: data.slice() };
    const d = new DataView(data.buffer, data.byteOffset, n);
    // timestamp 32: seconds; 64: nanoseconds (30 bits) + seconds (34 bits); 96: ns + int64 s
    let sec, ns = 0;
    if (n == 4) sec = d.getUint32(0);
    else if (n == 8) ns = d.getUint32(0) >>> 2, sec = (d.getUint32(0) & 3) * 4294967296 + d.getUint32(4);
    else if (n == 12) ns = d.getUint32(0), sec = Number(d.getBigInt64(4));
    else throw new RangeError("invalid MessagePack timestamp");
    return new Date(sec * 1000 + ns / 1e6);
  };
  const item = () => {
    need(1);
    const b = bytes[pos++];
    if (b < 0x80) return b;
    if (b < 0x90) return map(b & 15);
    if (b < 0xa0) return array(b & 15);
    if (b < 0xc0) return fromUtf8.decode(take(b & 31));
    if (b >= 0xe0) return b - 256;
    switch (b) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return take(get(1, "getUint8")).slice();
      case 0xc5: return take(get(2, "getUint16")).slice();
      case 0xc6: return take(get(4, "getUint32")).slice();
      case 0xc7: return ext(get(1, "getUint8"));
      case 0xc8: return ext(get(2, "getUint16"));
      case 0xc9: return ext(get(4, "getUint32"));
      case 0xca: return get(4, "getFloat32");
      case 0xcb: return get(8, "getFloat64");
      case 0xcc: return get(1, "getUint8");
      case 0xcd: return get(2, "getUint16");
      case 0xce: return get(4, "getUint32");
      case 0xcf: return int64("getBigUint64");
      case 0xd0: return get(1, "getInt8");
      case 0xd1: return get(2, "getInt16");
      case 0xd2: return get(4, "getInt32");
      case 0xd3: return int64("getBigInt64");
      case 0xd4: return ext(1);
      case 0xd5: return ext(2);
      case 0xd6: return ext(4);
      case 0xd7: return ext(8);
      case 0xd8: return ext(16);
      case 0xd9: return fromUtf8.decode(take(get(1, "getUint8")));
      case 0xda: return fromUtf8.decode(take(get(2, "getUint16")));
      case 0xdb: return fromUtf8.decode(take(get(4, "getUint32")));
      case 0xdc: return array(get(2, "getUint16"));
      case 0xdd: return array(get(4, "getUint32"));
      case 0xde: return map(get(2, "getUint16"));
      case 0xdf: return map(get(4, "getUint32"));
    }
    throw new RangeError(`invalid MessagePack byte 0x${b.toString(16)}`);
  };
  const value = item();
  if (pos != bytes.length) throw new RangeError("bytes left after the MessagePack value");
  return value;
}

export const msgpack = { encode, decode };
// For classic-script users, who only get the global `SmartSocket`.
SmartSocket.SmartSocketError = SmartSocketError;
SmartSocket.msgpack = msgpack;
export default SmartSocket;
