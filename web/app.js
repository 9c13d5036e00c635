// The live page served at `/`: charts of the last 5 minutes (records/s, consumer lag per partition in
// records and seconds, e2e latency p50/p99, sequence gaps, DLQ records/s, connected clients), a per-thread
// timeline of recent messages, rates, consumer lag, gaps, DLQ, backpressure and halted threads. No build
// step: plain ES modules, uses ./client.js and ./charts.js.
//
// Access: when /ws needs a token (GET /auth/token says so), the page asks for one and keeps it in
// sessionStorage (never in the URL); it goes to the bridge in the Sec-WebSocket-Protocol offer. A site
// that can mint tokens itself (SSO) defines `window.dashstreamTokenProvider` (a function returning a
// token or a promise of one) before this module runs: the page then never asks, and calls it on every
// (re)connect, including when the bridge closes a connection whose token expired (4001).
//
// Page URL parameters (all optional): format=json|binary, threads=a,b, tenant=t, types=k1,k2,
// start=earliest|latest (where to begin without a stored cursor), recent=N (messages kept per thread),
// backoff_max_ms=N (reconnect backoff cap), persist_ms=N (cursor write-behind period).
//
// Persistence: the client stores its cursor in localStorage together with this page's checkpoint
// (getAppState below) in one write, so after a reload the page rebuilds exactly the state that matches
// the cursor it resumes from (see the ordering note in client.js).
//
// TEST HOOK — window.__dashstream (read by tests/it/browser.rs through tests/browser/driver.mjs; not an API):
//   applied          {thread: [sequence, ...]} every sequence this page applied, in order, across
//                    reloads (rebuilt from the persisted checkpoint; stored as runs, see `runs`)
//   runs             {thread: [[first, last], ...]} the same, run-length encoded (consecutive +1 runs)
//   cursors          {partition: last applied offset}
//   gaps             gap frames received (across reloads)
//   replayCompletes  replay_complete frames received (across reloads)
//   notices          recent control notices (lagged, cursor_reset, overload, app_error, ...)
//   status           client state: connecting | replaying | live | reconnecting | stopped
//   reconnects       reconnects scheduled (across reloads)
//   loads            page loads that shared this persisted state
//   deduped          frames the client dropped as at/below the cursor (this load)
//   appliedCount     frames applied (across reloads)
//   metricsPolls     successful /metrics + /health polls (this load)
//   figures          the numbers shown in the cards, as last computed
//   connectUrls      WebSocket URLs this load connected to (shows the resume point asked for)
//   maxSeq()         {thread: highest applied sequence}
//   charts           {name: {points, segments, series, inked}} what each chart drew last (inked: canvas
//                    pixels that are not transparent)
//   auth             {required, state: none|login|ok, message, expiries, refusals}

import { DashStreamClient } from './client.js';
import { TimeChart, quantileBetween } from './charts.js';

const params = new URLSearchParams(location.search);
const RECENT = clampInt(params.get('recent'), 12, 1, 100);
const MAX_THREADS_SHOWN = 40;
const MAX_RUNS_PER_THREAD = 20000;
const MAX_EVENTS = 200;
const KINDS = ['event', 'token_chunk', 'state_diff', 'tool_execution', 'metrics', 'error', 'checkpoint', 'event_batch', 'execution_trace'];
const SHORT = {
  event: 'EV', token_chunk: 'TOK', state_diff: 'DIFF', tool_execution: 'TOOL', metrics: 'MET', error: 'ERR',
  checkpoint: 'CKPT', event_batch: 'BATCH', execution_trace: 'TRACE',
};

function clampInt(v, dflt, lo, hi) {
  const n = parseInt(v ?? '', 10);
  return Number.isFinite(n) ? Math.min(hi, Math.max(lo, n)) : dflt;
}

// ---- state ------------------------------------------------------------------------------------------

function emptyState() {
  return { threads: {}, gaps: [], replayCompletes: [], notices: [], reconnects: 0, loads: 0, appliedCount: 0 };
}
let S = emptyState();
const live = { perThreadHistory: new Map(), history: [], figures: {}, metricsPolls: 0, lastPollOk: 0, connectUrls: [] };

function thread(id) {
  let t = S.threads[id];
  if (!t) {
    t = S.threads[id] = { count: 0, lastSeq: null, issues: 0, runs: [], recent: [], lastAt: 0 };
  }
  return t;
}

function applyFrame(f) {
  const id = f.thread_id ?? `p${f.partition}`;
  const t = thread(id);
  const seq = typeof f.sequence === 'number' ? f.sequence : null;
  t.count += 1;
  t.lastAt = Date.now();
  S.appliedCount += 1;
  if (seq !== null) {
    if (t.lastSeq !== null && seq !== t.lastSeq + 1) t.issues += 1;
    const r = t.runs[t.runs.length - 1];
    if (r && seq === r[1] + 1) r[1] = seq;
    else if (t.runs.length < MAX_RUNS_PER_THREAD) t.runs.push([seq, seq]);
    t.lastSeq = seq;
  }
  t.recent.push([seq ?? f.offset, f.message_type ?? 'other']);
  if (t.recent.length > RECENT) t.recent.shift();
}

function pushBounded(arr, v) {
  arr.push(v);
  if (arr.length > MAX_EVENTS) arr.splice(0, arr.length - MAX_EVENTS);
}

function note(kind, text, level = 'warn') {
  pushBounded(S.notices, { at: Date.now(), kind, text, level });
}

// ---- client -----------------------------------------------------------------------------------------

const TOKEN_KEY = 'dashstream.token';
const auth = { required: false, state: 'none', message: '', hook: typeof window.dashstreamTokenProvider === 'function' };

/** The token to connect with: the site's provider, or the one given at the login prompt. */
async function currentToken() {
  if (auth.hook) return await window.dashstreamTokenProvider();
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch (_) {
    return null;
  }
}

/** What GET /auth/token says of a token (or of none). */
async function checkToken(token) {
  const r = await fetch('/auth/token', { headers: token ? { Authorization: `Bearer ${token}` } : {}, cache: 'no-store' });
  let body = {};
  try {
    body = await r.json();
  } catch (_) {}
  return { ok: r.ok, status: r.status, required: r.ok ? !!body.required : true, message: body.message || `HTTP ${r.status}` };
}

const client = new DashStreamClient({
  format: params.get('format') || 'json',
  token: () => (auth.required ? currentToken() : null),
  threads: params.get('threads'),
  tenant: params.get('tenant'),
  types: params.get('types'),
  startFrom: params.get('start') === 'latest' ? 'latest' : 'earliest',
  persistEveryMs: clampInt(params.get('persist_ms'), 250, 0, 60000),
  backoff: { maxMs: clampInt(params.get('backoff_max_ms'), 10000, 100, 600000) },
  getAppState: () => S,
  onMessage: applyFrame,
  onGap: (g) => {
    pushBounded(S.gaps, g);
    note('gap', `partition ${g.partition} offsets ${g.from}–${g.to} cannot be replayed (${g.reason})`, 'bad');
  },
  onReplayComplete: (r) => {
    pushBounded(S.replayCompletes, r);
    if (r.replayed > 0 || !r.recovered) {
      note('replay', `replayed ${r.replayed} in ${r.duration_ms ?? '?'} ms` + (r.recovered ? '' : ` — NOT recovered (${r.reason}, ${r.gaps} gap(s))`), r.recovered ? 'ok' : 'bad');
    }
  },
  onStatus: (s) => {
    if (s.state === 'connecting') pushBounded(live.connectUrls, s.url);
    if (s.state === 'reconnecting') {
      S.reconnects += 1;
      note('reconnect', `${s.reason}: retrying in ${s.delayMs} ms`);
    }
    renderStatus();
  },
  onNotice: (n) => {
    switch (n.type) {
      case 'cursor_reset':
        // The stored cursor (and this page's checkpoint) belonged to another namespace: start over.
        S = { ...emptyState(), loads: S.loads, reconnects: S.reconnects, notices: S.notices };
        note('cursor reset', `namespace changed ${n.previous} → ${n.current}: starting fresh`, 'bad');
        break;
      case 'lagged': note('lagged', `${n.dropped} frame(s) dropped for this page: resuming to recover them`); break;
      case 'thread_halted': note('halted', `${n.thread_id}: ${n.missing} missing at sequence ${n.sequence}`, 'bad'); break;
      case 'thread_resumed': note('resumed', `${n.thread_id}: ${n.released} held record(s) released`, 'ok'); break;
      case 'overload': note('overload', `closed by the server (${n.code} ${n.reason})`, 'bad'); break;
      case 'server_going_away': note('server', `bridge going away (${n.reason || n.code})`); break;
      case 'replay_incomplete': break; // shown with the replay note
      case 'app_error': note('app error', `${n.message} at ${n.partition}:${n.offset}`, 'bad'); break;
      case 'token_expired': note('token', 'token expired: reconnecting with a fresh one'); break;
      case 'unauthorized':
        note('token', `refused: ${n.message || n.status}`, 'bad');
        // A token typed at the prompt cannot renew itself: ask again. A provider is asked again on retry.
        if (!auth.hook) showLogin(n.message || 'the bridge refused the token');
        break;
      default: note(n.type || 'notice', n.message || n.code || JSON.stringify(n));
    }
  },
  onError: (e, ctx) => console.error('dashstream client', ctx, e),
});

const restored = client.restored && client.restored.app;
if (restored && restored.threads) S = { ...emptyState(), ...restored };
S.loads += 1;

// ---- test hook --------------------------------------------------------------------------------------

window.__dashstream = {
  get applied() {
    const out = {};
    for (const [id, t] of Object.entries(S.threads)) {
      const seqs = [];
      for (const [a, b] of t.runs) for (let s = a; s <= b; s++) seqs.push(s);
      out[id] = seqs;
    }
    return out;
  },
  get runs() { return Object.fromEntries(Object.entries(S.threads).map(([id, t]) => [id, t.runs])); },
  get cursors() { return client.cursorObject(); },
  get gaps() { return S.gaps; },
  get replayCompletes() { return S.replayCompletes; },
  get notices() { return S.notices; },
  get status() { return client.status; },
  get reconnects() { return S.reconnects; },
  get loads() { return S.loads; },
  get deduped() { return client.stats.deduped; },
  get appliedCount() { return S.appliedCount; },
  get metricsPolls() { return live.metricsPolls; },
  get figures() { return live.figures; },
  get connectUrls() { return live.connectUrls; },
  maxSeq() { return Object.fromEntries(Object.entries(S.threads).map(([id, t]) => [id, t.lastSeq])); },
  get charts() { return chartStats(); },
  get auth() { return { required: auth.required, state: auth.state, message: auth.message, expiries: client.stats.tokenExpiries, refusals: client.stats.refusals }; },
};

// ---- metrics & health polling -----------------------------------------------------------------------

/** Parses the Prometheus text format into [{name, labels, value}]. */
function parseProm(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[2]) for (const l of m[2].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}
const sum = (ms, name, pred = () => true) => {
  const xs = ms.filter((m) => m.name === name && pred(m.labels));
  return xs.length ? xs.reduce((a, m) => a + m.value, 0) : null;
};

let prevConsumed = null;
let prevScrape = null; // {at, counters: {name: value}, buckets: {le: count}}

/** The e2e latency histogram's cumulative buckets, summed over its series: {le: count}. */
function latencyBuckets(ms) {
  const out = {};
  for (const m of ms) {
    if (m.name !== 'websocket_e2e_latency_ms_bucket') continue;
    const le = m.labels.le === '+Inf' ? Infinity : Number(m.labels.le);
    out[le] = (out[le] || 0) + m.value;
  }
  return out;
}

function chartSample(ms, health, now) {
  const counters = {
    consumed: sum(ms, 'websocket_kafka_messages_total'),
    gaps: sum(ms, 'dashstream_sequence_gaps_total'),
    dlq: sum(ms, 'websocket_dlq_sends_total'),
  };
  const buckets = latencyBuckets(ms);
  const prev = prevScrape;
  prevScrape = { at: now, counters, buckets };
  const rate = (k) => {
    if (!prev || counters[k] == null || prev.counters[k] == null || counters[k] < prev.counters[k]) return null;
    return ((counters[k] - prev.counters[k]) * 1000) / Math.max(1, now - prev.at);
  };
  charts.rate.push(now, { bridge: rate('consumed'), page: live.figures.rate ?? null });
  const lag = {};
  const lagS = {};
  for (const m of ms) {
    if (m.name === 'websocket_kafka_consumer_lag') lag[`p${m.labels.partition}`] = m.value;
    if (m.name === 'websocket_kafka_consumer_lag_seconds') lagS[`p${m.labels.partition}`] = m.value;
  }
  charts.lag.push(now, lag);
  charts.lagSeconds.push(now, lagS);
  if (prev) {
    charts.latency.push(now, { p50: quantileBetween(prev.buckets, buckets, 0.5), p99: quantileBetween(prev.buckets, buckets, 0.99) });
  }
  charts.gaps.push(now, { bridge: rate('gaps') });
  charts.dlq.push(now, { sent: rate('dlq') });
  charts.clients.push(now, { clients: health.connected_clients ?? sum(ms, 'websocket_connected_clients') });
  for (const c of Object.values(charts)) c.draw(now);
}

async function poll() {
  try {
    const [mr, hr] = await Promise.all([
      fetch('/metrics', { cache: 'no-store' }),
      fetch('/health', { cache: 'no-store' }),
    ]);
    const ms = parseProm(await mr.text());
    const health = await hr.json();
    const now = Date.now();
    const lag = ms.filter((m) => m.name === 'websocket_kafka_consumer_lag');
    const lagS = ms.filter((m) => m.name === 'websocket_kafka_consumer_lag_seconds');
    const consumed = sum(ms, 'websocket_kafka_messages_total');
    let consumedRate = null;
    if (prevConsumed && consumed !== null && consumed >= prevConsumed.v) {
      consumedRate = ((consumed - prevConsumed.v) * 1000) / Math.max(1, now - prevConsumed.at);
    }
    prevConsumed = consumed === null ? null : { v: consumed, at: now };
    live.figures = {
      ...live.figures,
      lagOffsets: lag.length ? lag.reduce((a, m) => a + m.value, 0) : null,
      lagSeconds: lagS.length ? Math.max(...lagS.map((m) => m.value)) : null,
      lagParts: lag
        .map((m) => ({ p: Number(m.labels.partition), o: m.value, s: (lagS.find((x) => x.labels.partition === m.labels.partition) || {}).value }))
        .sort((a, b) => a.p - b.p),
      consumedRate,
      clients: health.connected_clients ?? sum(ms, 'websocket_connected_clients'),
      seqGaps: sum(ms, 'dashstream_sequence_gaps_total') ?? 0,
      dlqSends: sum(ms, 'websocket_dlq_sends_total') ?? 0,
      dlqFailures: sum(ms, 'websocket_dlq_send_failures_total') ?? 0,
      backpressure: sum(ms, 'websocket_backpressure_level'),
      backpressureCategory: sum(ms, 'websocket_backpressure_category'),
      halted: typeof health.halted_threads === 'number' ? health.halted_threads : null,
      held: health.held_messages ?? null,
      health: health.status,
      kafka: health.kafka_status,
      redis: health.replay_redis,
      dlqHealth: health.dlq_health,
    };
    live.metricsPolls += 1;
    live.lastPollOk = now;
    chartSample(ms, health, now);
  } catch (e) {
    live.figures = { ...live.figures, pollError: String(e) };
  }
  renderCards();
}

// ---- rates ------------------------------------------------------------------------------------------

function sampleRates() {
  const now = Date.now();
  live.history.push([now, S.appliedCount]);
  while (live.history.length > 6) live.history.shift();
  for (const [id, t] of Object.entries(S.threads)) {
    let h = live.perThreadHistory.get(id);
    if (!h) live.perThreadHistory.set(id, (h = []));
    h.push([now, t.count]);
    while (h.length > 6) h.shift();
  }
  const [t0, c0] = live.history[0];
  live.figures.rate = now > t0 ? ((S.appliedCount - c0) * 1000) / (now - t0) : 0;
  live.figures.threadRates = Object.fromEntries(Object.keys(S.threads).map((id) => [id, threadRate(id)]));
}
function threadRate(id) {
  const h = live.perThreadHistory.get(id);
  if (!h || h.length < 2) return 0;
  const [t0, c0] = h[0];
  const [t1, c1] = h[h.length - 1];
  return t1 > t0 ? ((c1 - c0) * 1000) / (t1 - t0) : 0;
}

// ---- rendering --------------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
const fmt = (n, d = 0) => (n === null || n === undefined || Number.isNaN(n) ? '—' : Number(n).toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d }));
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
function setText(id, v) {
  const el = $(id);
  if (el && el.textContent !== String(v)) el.textContent = v;
}
function mark(id, level) {
  const el = $(id);
  if (!el) return;
  el.classList.toggle('warn', level === 'warn');
  el.classList.toggle('bad', level === 'bad');
}

function renderStatus() {
  const el = $('status');
  if (!el) return;
  el.textContent = client.status;
  el.className = `pill pill-${client.status}`;
  if (client.hello) {
    setText('topic', client.hello.topic);
    setText('namespace', client.hello.resume_namespace);
    setText('version', `${client.hello.version} · ${client.hello.format}`);
  }
  setText('reconnects', S.reconnects);
}

function renderCards() {
  const f = live.figures;
  setText('rate', fmt(f.rate, 1));
  setText('applied', fmt(S.appliedCount));
  setText('consumed-rate', fmt(f.consumedRate, 1));
  setText('lag-offsets', fmt(f.lagOffsets));
  setText('lag-seconds', fmt(f.lagSeconds, 2));
  setText('lag-parts', (f.lagParts || []).map((x) => `p${x.p}: ${fmt(x.o)} (${fmt(x.s, 1)} s)`).join('   '));
  mark('card-lag', f.lagSeconds > 30 ? 'bad' : f.lagSeconds > 5 ? 'warn' : null);
  setText('clients', fmt(f.clients));
  setText('health', f.health ?? '—');
  setText('kafka', f.kafka ?? '—');
  setText('redis', f.redis ?? '—');
  setText('page-gaps', fmt(S.gaps.length));
  setText('seq-gaps', fmt(f.seqGaps));
  const unrecovered = S.replayCompletes.filter((r) => r.recovered === false).length;
  setText('replays', fmt(S.replayCompletes.length));
  setText('unrecovered', fmt(unrecovered));
  mark('card-gaps', S.gaps.length > 0 || unrecovered > 0 ? 'bad' : f.seqGaps > 0 ? 'warn' : null);
  setText('dlq-sends', fmt(f.dlqSends));
  setText('dlq-failures', fmt(f.dlqFailures));
  setText('dlq-health', f.dlqHealth ?? '—');
  mark('card-dlq', f.dlqFailures > 0 || f.dlqHealth === 'degraded' ? 'bad' : f.dlqSends > 0 ? 'warn' : null);
  const bp = f.backpressure === null || f.backpressure === undefined ? null : f.backpressure;
  const bpCat = f.backpressureCategory == null ? null : ['NORMAL', 'ELEVATED', 'HIGH', 'CRITICAL'][f.backpressureCategory] ?? null;
  setText('backpressure', bp === null ? 'n/a' : `${fmt(bp, 2)}${bpCat ? ` ${bpCat}` : ''}`);
  mark('card-bp', bpCat === 'CRITICAL' || bpCat === 'HIGH' ? 'bad' : bpCat === 'ELEVATED' ? 'warn' : null);
  setText('lagged', fmt(client.stats.lagged));
  const halted = f.halted ?? 0;
  setText('halted-count', f.halted === null ? '—' : fmt(halted));
  // Thread ids are for operators: GET /admin/threads/halted lists them.
  setText('halted-list', halted ? `${fmt(f.held ?? 0)} records held; GET /admin/threads/halted lists the threads` : 'none');
  mark('card-halted', halted ? 'bad' : null);
  const age = live.lastPollOk ? (Date.now() - live.lastPollOk) / 1000 : null;
  setText('metrics-age', age === null ? 'waiting…' : age < 5 ? 'fresh' : `stale ${fmt(age)} s`);
  for (const c of document.querySelectorAll('.card[data-metrics]')) c.classList.toggle('stale', age !== null && age > 5);
  setText('deduped', fmt(client.stats.deduped));
}

function renderThreads() {
  const ids = Object.keys(S.threads).sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  const shown = ids.length > MAX_THREADS_SHOWN
    ? ids.sort((a, b) => S.threads[b].lastAt - S.threads[a].lastAt).slice(0, MAX_THREADS_SHOWN).sort((a, b) => a.localeCompare(b, 'en', { numeric: true }))
    : ids;
  setText('thread-count', `(${ids.length})`);
  setText('threads-more', ids.length > shown.length ? `${ids.length - shown.length} less recently active thread(s) not shown` : '');
  const rows = shown.map((id) => {
    const t = S.threads[id];
    const chips = t.recent.map(([s, k]) => `<span class="chip t-${KINDS.includes(k) ? k : 'other'}" title="${esc(k)}">${SHORT[k] || esc(k)} ${s}</span>`).join('');
    return `<tr class="${t.issues ? 'bad' : ''}"><td class="thread">${esc(id)}</td><td class="num">${fmt(t.count)}</td><td class="num">${fmt(threadRate(id), 1)}</td><td class="num">${t.lastSeq ?? '—'}</td><td class="num issues">${t.issues}</td><td class="recent">${chips}</td></tr>`;
  });
  const body = document.querySelector('#threads tbody');
  const html = rows.join('') || '<tr><td colspan="6" class="dim">waiting for messages…</td></tr>';
  if (body.innerHTML !== html) body.innerHTML = html;
}

function renderNotices() {
  const list = S.notices.slice(-12).reverse();
  const html = list.length
    ? list.map((n) => `<li><span class="when">${new Date(n.at).toLocaleTimeString('en-GB')}</span><span class="kind ${n.level}">${esc(n.kind)}</span>${esc(n.text)}</li>`).join('')
    : '<li class="dim">none yet</li>';
  const el = $('notices');
  if (el.innerHTML !== html) el.innerHTML = html;
}

function renderAll() {
  renderStatus();
  renderCards();
  renderThreads();
  renderNotices();
  const c = client.cursorObject();
  setText('cursor', Object.keys(c).length ? Object.entries(c).map(([p, o]) => `${p}:${o}`).join(' ') : '—');
}

function renderLegend() {
  $('legend').innerHTML = KINDS.slice(0, 6).map((k) => `<span class="chip t-${k}">${SHORT[k]} = ${k}</span>`).join('');
}

// ---- charts -----------------------------------------------------------------------------------------

const chart = (id, opts) => new TimeChart($(id), { windowMs: 5 * 60 * 1000, ...opts });
const charts = {
  rate: chart('chart-rate', { decimals: 0 }),
  lag: chart('chart-lag', { decimals: 0 }),
  lagSeconds: chart('chart-lag-seconds', { decimals: 1, unit: ' s' }),
  latency: chart('chart-latency', { decimals: 1, unit: ' ms' }),
  gaps: chart('chart-gaps', { decimals: 2 }),
  dlq: chart('chart-dlq', { decimals: 2 }),
  clients: chart('chart-clients', { decimals: 0 }),
};

/** What each chart drew, and how many of its canvas pixels are not transparent. */
function chartStats() {
  const out = {};
  for (const [name, c] of Object.entries(charts)) {
    const cv = c.canvas;
    let inked = 0;
    try {
      const data = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
      for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) inked += 1;
    } catch (_) {}
    out[name] = { ...c.stats(), inked };
  }
  return out;
}

// ---- access -----------------------------------------------------------------------------------------

function showLogin(message) {
  if (client.status !== 'stopped' && client.status !== 'idle') client.stop();
  try {
    sessionStorage.removeItem(TOKEN_KEY);
  } catch (_) {}
  auth.state = 'login';
  auth.message = message || '';
  setText('login-error', auth.message);
  $('login').hidden = false;
  $('login-token').focus();
}

$('login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const token = $('login-token').value.trim();
  if (!token) return;
  setText('login-error', 'checking…');
  const r = await checkToken(token).catch((e) => ({ ok: false, message: String(e) }));
  if (!r.ok) {
    auth.message = r.message;
    setText('login-error', r.message);
    return;
  }
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch (_) {}
  $('login-token').value = '';
  $('login').hidden = true;
  auth.state = 'ok';
  auth.message = '';
  client.start();
});

/** Starts the stream once the page knows whether /ws needs a token and has one that works. */
async function boot() {
  let probe;
  try {
    probe = await checkToken(null);
  } catch (e) {
    probe = { ok: true, required: false };
  }
  auth.required = probe.required;
  if (!auth.required) {
    auth.state = 'ok';
    client.start();
    return;
  }
  const token = await Promise.resolve(currentToken()).catch(() => null);
  if (!token) {
    if (auth.hook) {
      client.start(); // the provider is asked again on every retry
      return;
    }
    showLogin('');
    return;
  }
  const r = await checkToken(token).catch((e) => ({ ok: false, message: String(e) }));
  if (r.ok || auth.hook) {
    auth.state = 'ok';
    client.start();
  } else {
    showLogin(r.message);
  }
}

renderLegend();
boot();
poll();
setInterval(poll, 2000);
setInterval(sampleRates, 1000);
setInterval(renderAll, 500);
renderAll();
