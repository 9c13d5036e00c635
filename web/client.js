// DashStream WebSocket client for kafka-ws-bridge (protocol v1, docs/PROTOCOL.md).
//
// Dependency-free. Two ways to load it:
//   ES module:     import { DashStreamClient } from '/client.js';
//   classic script: <script src="/client.classic.js"></script>  → window.DashStreamClient
// (the bridge serves the same source as both; the module also sets globalThis.DashStreamClient).
//
// What it does:
//   * connects to GET /ws with the format and filters, resuming from the cursor persisted in `storage`
//     (`resume=cursor&last_offsets=P:O,...`, P:O = last APPLIED offset), or from `startFrom`
//     ('earliest' | 'latest') when it has none;
//   * checks `hello.resume_namespace`: a stored cursor of another namespace is discarded, the app is told
//     (onNotice {type:'cursor_reset'}) and the client reconnects fresh;
//   * decodes JSON and binary data frames (binary: the 21-byte envelope gives the cursor; the DashStream
//     record value is handed to the app as raw bytes, not decoded);
//   * ignores data frames at or below the cursor (defensive dedupe), except the records an operator
//     released after a halt: the `released` data frames that follow `thread_resumed` are applied
//     without moving the cursor (late), and remembered until the cursor passes them, so a later
//     replay of the same offsets in order is not applied twice;
//   * keeps the notice cursor (`notices` of hello / replay_complete / thread notices; for
//     thread_resumed once its released records arrived), persists it with the offsets and sends it
//     when it resumes, so releases it missed while away come after the replay;
//   * reconnects with exponential backoff and jitter (capped), and at once with resume on `lagged`
//     (frames were dropped for this connection: nothing after the notice is applied, the resume
//     fetches them again);
//   * access tokens: `token` is a string or a provider (a function returning a token, or a promise of
//     one; nothing: connect without a token) called on every (re)connect. The token goes in the `Sec-WebSocket-Protocol` offer
//     (`dashstream.v1, dashstream.bearer.<token>`), never in the URL unless `tokenIn: 'query'`. When
//     the server closes with 4001 (token expired) the client reconnects at once with a fresh token from
//     the provider and resumes from its cursor. A connection that fails before its hello while a token
//     is in use is looked up at GET /auth/token (a browser cannot see why a handshake was refused):
//     a refusal is reported as onNotice {type:'unauthorized', status, message}.
//
// Cursor ordering (the contract with the application):
//   1. a data frame is handed to onMessage(frame);
//   2. only when onMessage RETURNED without throwing is the partition's cursor advanced, in memory;
//   3. the in-memory cursor is written to storage later (write-behind: every `persistEveryMs`, and at
//      replay_complete, on close, stop(), flush(), pagehide and when the page is hidden), in one
//      storage.setItem together with the value of `getAppState()` (if given), so the persisted cursor is
//      never ahead of what the app had applied when it was written, and an app that checkpoints its own
//      state through getAppState gets it back (client.restored.app) consistent with the cursor.
//   A crash loses at most `persistEveryMs` of cursor progress: those frames are delivered again after
//   the restart (at-least-once), or exactly once to an app that restores its state from getAppState.
//   If onMessage throws, the cursor does not move, the error goes to onError (and onNotice
//   {type:'app_error'}), the connection is dropped without applying anything that followed, and the
//   client reconnects with backoff from the cursor, so the frame is delivered again.
//
// Callbacks (all optional): onMessage(frame), onGap(gap), onReplayComplete(info), onStatus(status),
// onNotice(frame) for lagged / thread_halted / thread_resumed / error / overload / replay_incomplete /
// cursor_reset / app_error / token_expired / unauthorized, onError(error, context).

// Late records remembered (applied above the cursor) at most.
const MAX_LATE_KEPT = 10000;

const DEFAULTS = {
  url: null, // ws base, e.g. ws://host:3002/ws (default: /ws on the page's host)
  format: 'json', // 'json' | 'binary'
  threads: null, // array or comma-separated string
  tenant: null,
  types: null, // array or comma-separated string
  startFrom: 'earliest', // where to start without a stored cursor: 'earliest' | 'latest'
  storage: undefined, // Storage-like {getItem,setItem,removeItem}; default localStorage; null: keep nothing
  storageKey: null, // default: derived from url + filters (the record inside names the namespace)
  persistEveryMs: 250, // write-behind period; 0 = write after every applied frame
  getAppState: null, // () => JSON-serializable app checkpoint, stored with the cursor
  backoff: { initialMs: 250, maxMs: 10000, factor: 2, jitter: 0.5 },
  connectTimeoutMs: 10000, // no hello by then: reconnect
  pingEveryMs: 15000, // application-level ping while connected
  pongTimeoutMs: 10000, // nothing received that long after a ping: reconnect
  WebSocket: null, // constructor override (tests); default globalThis.WebSocket
  token: null, // string, or () => token | Promise<token>, called on every (re)connect
  tokenIn: 'protocol', // 'protocol': Sec-WebSocket-Protocol offer; 'query': ?token= (ends up in access logs)
  tokenCheckUrl: null, // default: /auth/token on the ws url's host; null with fetch missing: no check
  fetch: null, // fetch override (tests); default globalThis.fetch
  onMessage: null,
  onGap: null,
  onReplayComplete: null,
  onStatus: null,
  onNotice: null,
  onError: null,
};

const ENVELOPE_HEADER_LEN = 21;

/** Decodes a binary data frame (envelope v1). Returns null if it is not one. */
function decodeEnvelope(buf) {
  const bytes = buf instanceof Uint8Array ? buf : new Uint8Array(buf);
  if (bytes.byteLength < ENVELOPE_HEADER_LEN || bytes[0] !== 1) return null;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const ts = Number(dv.getBigInt64(13, false));
  return {
    type: 'message',
    format: 'binary',
    partition: dv.getInt32(1, false),
    offset: Number(dv.getBigInt64(5, false)),
    timestamp_ms: ts >= 0 ? ts : null,
    value: bytes.subarray(ENVELOPE_HEADER_LEN), // DashStream record value, as on the topic
  };
}

/** Backoff delay for reconnect attempt `attempt` (0-based): capped exponential with jitter. */
function backoffDelay(attempt, b, random = Math.random) {
  const base = Math.min(b.maxMs, b.initialMs * Math.pow(b.factor, Math.max(0, attempt)));
  return Math.round(base * (1 - b.jitter * random()));
}

function listParam(v) {
  if (v == null) return null;
  const arr = Array.isArray(v) ? v : String(v).split(',');
  const out = arr.map((s) => String(s).trim()).filter((s) => s.length > 0);
  return out.length ? out : null;
}

function defaultWsUrl() {
  if (typeof location === 'undefined') throw new Error('DashStreamClient: options.url is required');
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}

function defaultStorage() {
  try {
    return typeof localStorage !== 'undefined' ? localStorage : null;
  } catch (_) {
    return null; // storage disabled (e.g. privacy settings)
  }
}

class DashStreamClient {
  constructor(options = {}) {
    const o = { ...DEFAULTS, ...options };
    o.backoff = { ...DEFAULTS.backoff, ...(options.backoff || {}) };
    if (o.format !== 'json' && o.format !== 'binary') throw new Error(`format must be json or binary`);
    if (o.startFrom !== 'earliest' && o.startFrom !== 'latest') {
      throw new Error(`startFrom must be earliest or latest`);
    }
    this.opts = o;
    this.url = o.url || defaultWsUrl();
    this.threads = listParam(o.threads);
    this.types = listParam(o.types);
    this.tenant = o.tenant == null || o.tenant === '' ? null : String(o.tenant);
    this.storage = o.storage === undefined ? defaultStorage() : o.storage;
    // The cursor is valid for one stream: the server url plus the filters (not the format).
    const stream = [
      this.url,
      this.threads ? [...this.threads].sort().join(',') : '*',
      this.tenant ?? '*',
      this.types ? [...this.types].sort().join(',') : '*',
    ].join('|');
    this.storageKey = o.storageKey || `dashstream.cursor.v1|${stream}`;
    this.cursors = new Map(); // partition → last applied offset
    this.namespace = null; // namespace the cursors belong to
    this.hello = null;
    this.status = 'idle';
    this.stats = {
      connects: 0,
      reconnects: 0,
      applied: 0,
      deduped: 0,
      gaps: 0,
      lagged: 0,
      appErrors: 0,
      persists: 0,
      tokenExpiries: 0,
      refusals: 0,
    };
    this._attempt = 0;
    this._conn = null;
    this._timer = null;
    this._persistTimer = null;
    this._dirty = false;
    this._stopped = true;
    this.notices = null; // the notice cursor (docs/PROTOCOL.md, Late records)
    this._lateNext = 0; // data frames still to come of the last thread_resumed (late)
    this._lateNotices = null; // its notice cursor, kept once they all arrived
    this._lateApplied = new Set(); // "p:o" applied late above the cursor, until the cursor passes
    this.restored = this._load();
    if (this.restored) {
      this.namespace = this.restored.namespace || null;
      for (const [p, off] of Object.entries(this.restored.offsets || {})) {
        if (Number.isInteger(off)) this.cursors.set(Number(p), off);
      }
      if (typeof this.restored.notices === 'string') this.notices = this.restored.notices;
      for (const k of Array.isArray(this.restored.late) ? this.restored.late : []) {
        if (typeof k === 'string') this._lateApplied.add(k);
      }
    }
    this._onPageHide = () => this.flush();
    this._onVisibility = () => {
      if (typeof document !== 'undefined' && document.visibilityState === 'hidden') this.flush();
    };
  }

  /** Starts (or restarts) connecting. */
  start() {
    if (!this._stopped) return this;
    this._stopped = false;
    if (typeof addEventListener === 'function') {
      addEventListener('pagehide', this._onPageHide);
      addEventListener('visibilitychange', this._onVisibility);
    }
    this._connect();
    return this;
  }

  /** Closes the connection, persists the cursor and stops reconnecting. */
  stop() {
    this._stopped = true;
    clearTimeout(this._timer);
    this._timer = null;
    if (this._conn) this._abandon(this._conn, 'stopped', false);
    this.flush();
    if (typeof removeEventListener === 'function') {
      removeEventListener('pagehide', this._onPageHide);
      removeEventListener('visibilitychange', this._onVisibility);
    }
    this._setStatus('stopped');
  }

  /** Last applied offset per partition, as a plain object. */
  cursorObject() {
    const o = {};
    for (const [p, off] of [...this.cursors.entries()].sort((a, b) => a[0] - b[0])) o[p] = off;
    return o;
  }

  /** The WebSocket URL the next connection uses (format, filters, resume point). */
  connectUrl() {
    const q = new URLSearchParams();
    q.set('format', this.opts.format);
    if (this.threads) q.set('threads', this.threads.join(','));
    if (this.tenant != null) q.set('tenant', this.tenant);
    if (this.types) q.set('types', this.types.join(','));
    if (this.cursors.size > 0) {
      q.set('resume', 'cursor');
      q.set(
        'last_offsets',
        [...this.cursors.entries()]
          .sort((a, b) => a[0] - b[0])
          .map(([p, o]) => `${p}:${o}`)
          .join(','),
      );
    } else {
      q.set('resume', this.opts.startFrom);
    }
    if (this.notices) q.set('notices', this.notices);
    return `${this.url}${this.url.includes('?') ? '&' : '?'}${q.toString()}`;
  }

  /** Writes the cursor (and app checkpoint) to storage now. */
  flush() {
    clearTimeout(this._persistTimer);
    this._persistTimer = null;
    if (!this.storage) return;
    const record = {
      v: 1,
      namespace: this.namespace,
      offsets: this.cursorObject(),
      notices: this.notices,
      late: [...this._lateApplied].slice(-MAX_LATE_KEPT),
      saved_at: Date.now(),
    };
    try {
      if (this.opts.getAppState) record.app = this.opts.getAppState();
      this.storage.setItem(this.storageKey, JSON.stringify(record));
      this._dirty = false;
      this.stats.persists += 1;
    } catch (e) {
      this._error(e, { where: 'persist' });
    }
  }

  // ---- internals ----------------------------------------------------------------------------------

  _load() {
    if (!this.storage) return null;
    try {
      const raw = this.storage.getItem(this.storageKey);
      if (!raw) return null;
      const r = JSON.parse(raw);
      return r && r.v === 1 ? r : null;
    } catch (_) {
      return null;
    }
  }

  _setStatus(state, detail = {}) {
    this.status = state;
    this._call('onStatus', { state, attempt: this._attempt, ...detail });
  }

  _call(name, ...args) {
    const f = this.opts[name];
    if (!f) return;
    try {
      f(...args);
    } catch (e) {
      if (name !== 'onError') this._error(e, { where: name });
    }
  }

  _error(error, context) {
    this._call('onError', error, context);
  }

  _notice(frame) {
    this._call('onNotice', frame);
  }

  _connect() {
    if (this._stopped) return;
    const t = this.opts.token;
    if (typeof t !== 'function') {
      this._open(t || null);
      return;
    }
    this._setStatus('authenticating');
    let pending;
    try {
      pending = Promise.resolve(t());
    } catch (e) {
      pending = Promise.reject(e);
    }
    pending.then(
      (token) => {
        if (this._stopped) return;
        // No token from the provider: connect without one (the bridge may not need one).
        this._open(token ? String(token) : null);
      },
      (e) => {
        if (this._stopped) return;
        this._error(e, { where: 'token' });
        this._notice({ type: 'unauthorized', status: null, message: `the token provider failed: ${e && e.message ? e.message : e}` });
        this._scheduleReconnect('token_failed');
      },
    );
  }

  /** The token check URL: /auth/token on the WebSocket's host. */
  _tokenCheckUrl() {
    if (this.opts.tokenCheckUrl) return this.opts.tokenCheckUrl;
    try {
      const u = new URL(this.url);
      return `${u.protocol === 'wss:' ? 'https:' : 'http:'}//${u.host}/auth/token`;
    } catch (_) {
      return null;
    }
  }

  /** After a connection with `token` failed before its hello: asks the server why. */
  _checkToken(token) {
    const f = this.opts.fetch || globalThis.fetch;
    const url = this._tokenCheckUrl();
    if (!f || !url) return;
    f(url, { headers: { Authorization: `Bearer ${token}` }, cache: 'no-store' })
      .then(async (r) => {
        if (r.status === 401 || r.status === 403) {
          let message = '';
          try {
            message = (await r.json()).message || '';
          } catch (_) {}
          this.stats.refusals += 1;
          this._notice({ type: 'unauthorized', status: r.status, message });
        }
      })
      .catch(() => {});
  }

  _open(token) {
    if (this._stopped) return;
    const WS = this.opts.WebSocket || globalThis.WebSocket;
    let url = this.connectUrl();
    let protocols;
    if (token && this.opts.tokenIn === 'query') {
      url += `&token=${encodeURIComponent(token)}`;
    } else if (token) {
      protocols = ['dashstream.v1', `dashstream.bearer.${token}`];
    }
    const conn = { ws: null, dead: false, live: false, helloSeen: false, lastRx: Date.now(), timers: [], token };
    this._conn = conn;
    this.stats.connects += 1;
    this._setStatus('connecting', { url: token && this.opts.tokenIn === 'query' ? url.replace(/token=[^&]*/, 'token=***') : url });
    let ws;
    try {
      ws = protocols ? new WS(url, protocols) : new WS(url);
    } catch (e) {
      this._error(e, { where: 'connect' });
      this._scheduleReconnect('connect_failed');
      return;
    }
    conn.ws = ws;
    ws.binaryType = 'arraybuffer';
    conn.timers.push(
      setTimeout(() => {
        if (!conn.helloSeen) this._abandon(conn, 'connect_timeout');
      }, this.opts.connectTimeoutMs),
    );
    ws.onmessage = (ev) => this._onRaw(conn, ev.data);
    ws.onclose = (ev) => this._onClose(conn, ev);
    ws.onerror = () => {}; // onclose follows and carries what there is to know
  }

  _onRaw(conn, data) {
    if (conn.dead) return;
    conn.lastRx = Date.now();
    if (typeof data === 'string') {
      let f;
      try {
        f = JSON.parse(data);
      } catch (e) {
        this._notice({ type: 'error', code: 'bad_frame', message: 'server sent a text frame that is not JSON' });
        return;
      }
      if (f && f.type === 'message') this._onData(conn, f);
      else this._onControl(conn, f || {});
    } else {
      const f = decodeEnvelope(data);
      if (!f) {
        this._notice({ type: 'error', code: 'bad_frame', message: 'binary frame is not an envelope v1' });
        return;
      }
      this._onData(conn, f);
    }
  }

  _onData(conn, f) {
    if (!conn.helloSeen) return; // hello is always first; anything else is not from this protocol
    const p = f.partition;
    const last = this.cursors.get(p);
    const key = `${p}:${f.offset}`;
    // The data frames right after thread_resumed are its released records: late.
    const late = this._lateNext > 0;
    if (!late && ((last !== undefined && f.offset <= last) || this._lateApplied.has(key))) {
      this.stats.deduped += 1;
      return;
    }
    try {
      if (this.opts.onMessage) this.opts.onMessage(f);
    } catch (e) {
      // Not applied: the cursor stays, nothing after it on this connection is applied, and the frame
      // comes again after the reconnect.
      this.stats.appErrors += 1;
      this._error(e, { where: 'onMessage', partition: p, offset: f.offset });
      this._notice({
        type: 'app_error',
        partition: p,
        offset: f.offset,
        message: String((e && e.message) || e),
      });
      this._abandon(conn, 'app_error');
      return;
    }
    if (late) {
      if (last === undefined || f.offset > last) this._lateApplied.add(key);
      this._lateNext -= 1;
      if (this._lateNext === 0) this._keepNotices(this._lateNotices);
    } else {
      this.cursors.set(p, f.offset);
      if (this._lateApplied.size > 0) {
        for (const k of this._lateApplied) {
          const [kp, ko] = k.split(':').map(Number);
          if (kp === p && ko <= f.offset) this._lateApplied.delete(k);
        }
      }
      this._dirty = true;
      this._schedulePersist();
    }
    this.stats.applied += 1;
  }

  _keepNotices(cursor) {
    if (typeof cursor !== 'string' || cursor === this.notices) return;
    this.notices = cursor;
    this._dirty = true;
    this._schedulePersist();
  }

  _onControl(conn, f) {
    switch (f.type) {
      case 'hello': {
        conn.helloSeen = true;
        this.hello = f;
        // A release cut off by the last connection comes again (its notice was not kept).
        this._lateNext = 0;
        this._lateNotices = null;
        const ns = f.resume_namespace || '';
        if (this.cursors.size > 0 && this.namespace !== null && this.namespace !== ns) {
          // The stored cursor is of another topic/cluster: it means nothing here. Start fresh.
          const discarded = this.cursorObject();
          this.cursors.clear();
          const previous = this.namespace;
          this.namespace = ns;
          this._notice({ type: 'cursor_reset', reason: 'namespace_changed', previous, current: ns, discarded });
          this.flush();
          this._abandon(conn, 'namespace_changed', true, 0);
          return;
        }
        if (this.namespace !== ns) {
          this.namespace = ns;
          this._dirty = true;
          this._schedulePersist();
        }
        this._setStatus('replaying', { namespace: ns });
        this._startPing(conn);
        break;
      }
      case 'gap':
        this.stats.gaps += 1;
        this._call('onGap', f);
        break;
      case 'replay_complete':
        conn.live = true;
        this._keepNotices(f.notices);
        this._attempt = 0;
        this.flush();
        this._call('onReplayComplete', f);
        if (f.recovered === false) {
          this._notice({ type: 'replay_incomplete', reason: f.reason || 'gaps', gaps: f.gaps, replayed: f.replayed });
        }
        this._setStatus('live');
        break;
      case 'lagged':
        // Frames were dropped for this connection: applying the next one would move the cursor past
        // them. Drop the connection and resume from the cursor instead.
        this.stats.lagged += 1;
        this._notice(f);
        this._abandon(conn, 'lagged');
        break;
      case 'thread_resumed':
        if (Number.isInteger(f.released) && f.released > 0) {
          this._lateNext = f.released;
          this._lateNotices = f.notices;
        } else {
          this._keepNotices(f.notices);
        }
        this._notice(f);
        break;
      case 'thread_halted':
        this._keepNotices(f.notices);
        this._notice(f);
        break;
      case 'offsets_reset':
        // The partition's offsets restarted: the stored cursor belongs to another history.
        if (Number.isInteger(f.partition)) {
          this.cursors.delete(f.partition);
          this._dirty = true;
          this._schedulePersist();
        }
        this._notice(f);
        break;
      case 'pong':
        break;
      default: // error, and anything newer
        this._notice(f);
    }
  }

  _startPing(conn) {
    const every = this.opts.pingEveryMs;
    if (!every) return;
    const tick = () => {
      if (conn.dead) return;
      const sentAt = Date.now();
      try {
        conn.ws.send('{"type":"ping"}');
      } catch (_) {
        return;
      }
      conn.timers.push(
        setTimeout(() => {
          if (!conn.dead && conn.lastRx < sentAt) this._abandon(conn, 'ping_timeout');
        }, this.opts.pongTimeoutMs),
      );
      conn.timers.push(setTimeout(tick, every));
    };
    conn.timers.push(setTimeout(tick, every));
  }

  _onClose(conn, ev) {
    if (conn.dead) return; // we closed it ourselves and already decided what next
    conn.dead = true;
    conn.timers.forEach(clearTimeout);
    if (this._dirty) this.flush();
    const code = ev && ev.code;
    const reason = (ev && ev.reason) || '';
    if (code === 1008 || code === 1013) {
      this._notice({ type: 'overload', code, reason: reason || (code === 1008 ? 'client too slow' : 'try again later') });
    } else if (code === 1001) {
      this._notice({ type: 'server_going_away', code, reason });
    } else if (code === 1009) {
      this._notice({ type: 'error', code: 'message_too_big', message: reason });
    } else if (code === 4001) {
      // The token expired: a fresh one from the provider, and resume at once.
      this.stats.tokenExpiries += 1;
      this._notice({ type: 'token_expired', code, reason });
      if (this._conn === conn) this._scheduleReconnect('token_expired', 0);
      return;
    } else if (!conn.helloSeen && conn.token) {
      this._checkToken(conn.token);
    }
    if (this._conn === conn) this._scheduleReconnect(`closed_${code}`);
  }

  /** Stops using `conn` (nothing more from it is applied) and, unless stopped, reconnects. */
  _abandon(conn, why, reconnect = true, delayMs = null) {
    if (conn.dead) return;
    conn.dead = true;
    conn.timers.forEach(clearTimeout);
    try {
      conn.ws && conn.ws.close(1000, why.slice(0, 100));
    } catch (_) {}
    if (this._dirty) this.flush();
    if (reconnect && this._conn === conn) this._scheduleReconnect(why, delayMs);
  }

  _scheduleReconnect(why, delayMs = null) {
    if (this._stopped) return;
    clearTimeout(this._timer);
    const delay = delayMs ?? backoffDelay(this._attempt, this.opts.backoff);
    this._attempt += 1;
    this.stats.reconnects += 1;
    this._setStatus('reconnecting', { reason: why, delayMs: delay });
    this._timer = setTimeout(() => {
      this._timer = null;
      this._connect();
    }, delay);
  }

  _schedulePersist() {
    if (!this.storage) return;
    if (this.opts.persistEveryMs <= 0) {
      this.flush();
      return;
    }
    if (this._persistTimer === null) {
      this._persistTimer = setTimeout(() => {
        this._persistTimer = null;
        if (this._dirty) this.flush();
      }, this.opts.persistEveryMs);
    }
  }
}

if (typeof globalThis !== 'undefined') globalThis.DashStreamClient = DashStreamClient;

export { DashStreamClient, decodeEnvelope, backoffDelay };
export default DashStreamClient;
