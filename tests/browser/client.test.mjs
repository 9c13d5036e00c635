// Unit tests of web/client.js with a scripted fake WebSocket (node --test; run by tests/browser.rs).
// They pin the cursor contract: advanced only after onMessage returned, persisted write-behind together
// with the app checkpoint, never re-applied, and recovered by resume after lagged / errors / restarts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DashStreamClient, decodeEnvelope, backoffDelay } from '../../web/client.js';

class FakeWS {
  static all = [];
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.sent = [];
    this.closed = null;
    FakeWS.all.push(this);
  }
  send(d) {
    this.sent.push(d);
  }
  close(code, reason) {
    this.closed = { code, reason };
  }
  recv(obj) {
    this.onmessage({ data: typeof obj === 'string' || obj instanceof ArrayBuffer ? obj : JSON.stringify(obj) });
  }
  serverClose(code, reason = '') {
    this.onclose({ code, reason });
  }
  get query() {
    return Object.fromEntries(new URL(this.url).searchParams);
  }
}

class MemStorage {
  constructor() {
    this.m = new Map();
    this.writes = 0;
  }
  getItem(k) {
    return this.m.has(k) ? this.m.get(k) : null;
  }
  setItem(k, v) {
    this.writes += 1;
    this.m.set(k, String(v));
  }
  removeItem(k) {
    this.m.delete(k);
  }
  record(c) {
    return JSON.parse(this.getItem(c.storageKey));
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const hello = (ns = 'topic.cluster') => ({ type: 'hello', protocol: 1, topic: 'topic', resume_namespace: ns, format: 'json', filters: {} });
const msg = (partition, offset, thread = 't1', sequence = offset + 1) => ({
  type: 'message', partition, offset, timestamp_ms: 1, thread_id: thread, tenant_id: '', sequence, message_type: 'event', data: {},
});

function make(opts = {}) {
  FakeWS.all = [];
  const storage = opts.storage || new MemStorage();
  const applied = [];
  const notices = [];
  const errors = [];
  const c = new DashStreamClient({
    url: 'ws://bridge.test/ws',
    WebSocket: FakeWS,
    storage,
    backoff: { initialMs: 1, maxMs: 1, jitter: 0 },
    pingEveryMs: 0,
    persistEveryMs: 20,
    onMessage: (f) => applied.push(`${f.partition}:${f.offset}`),
    onNotice: (n) => notices.push(n),
    onError: (e, ctx) => errors.push([String(e.message || e), ctx]),
    ...opts,
  });
  return { c, storage, applied, notices, errors };
}

test('fresh client starts from startFrom and resumes from the applied cursor', async () => {
  const { c, storage, applied } = make({ startFrom: 'latest', threads: ['b', 'a'], tenant: 'x', types: 'event' });
  c.start();
  const ws = FakeWS.all[0];
  assert.deepEqual(ws.query, { format: 'json', threads: 'b,a', tenant: 'x', types: 'event', resume: 'latest' });
  ws.recv(hello());
  ws.recv(msg(0, 5));
  ws.recv(msg(1, 9));
  ws.recv(msg(0, 6));
  assert.deepEqual(applied, ['0:5', '1:9', '0:6']);
  assert.deepEqual(c.cursorObject(), { 0: 6, 1: 9 });
  ws.serverClose(1006);
  // Closing persists what was applied.
  assert.deepEqual(storage.record(c).offsets, { 0: 6, 1: 9 });
  assert.equal(storage.record(c).namespace, 'topic.cluster');
  await sleep(10);
  const ws2 = FakeWS.all[1];
  assert.equal(ws2.query.resume, 'cursor');
  assert.equal(ws2.query.last_offsets, '0:6,1:9');
  c.stop();
});

test('the cursor is persisted write-behind, never ahead of the app, with the app checkpoint', async () => {
  const storage = new MemStorage();
  let appState = [];
  const { c } = make({ storage, persistEveryMs: 30, getAppState: () => appState, onMessage: (f) => appState.push(f.offset) });
  c.start();
  const ws = FakeWS.all[0];
  ws.recv(hello());
  const writesAfterHello = storage.writes;
  ws.recv(msg(0, 1));
  ws.recv(msg(0, 2));
  assert.equal(storage.writes, writesAfterHello, 'not written on every frame');
  await sleep(60);
  const r = storage.record(c);
  assert.deepEqual(r.offsets, { 0: 2 });
  assert.deepEqual(r.app, [1, 2], 'app checkpoint stored in the same write as the cursor');
  // A second client on the same storage gets both back.
  c.stop();
  const again = make({ storage });
  assert.deepEqual(again.c.restored.app, [1, 2]);
  assert.deepEqual(again.c.cursorObject(), { 0: 2 });
});

test('a throwing onMessage does not advance the cursor, drops the connection and gets the frame again', async () => {
  let failOn = 3;
  const seen = [];
  const { c, storage, notices, errors } = make({
    persistEveryMs: 0,
    onMessage: (f) => {
      if (f.offset === failOn) throw new Error('boom');
      seen.push(f.offset);
    },
  });
  c.start();
  const ws = FakeWS.all[0];
  ws.recv(hello());
  ws.recv(msg(0, 1));
  ws.recv(msg(0, 2));
  ws.recv(msg(0, 3));
  ws.recv(msg(0, 4)); // arrives on the dropped connection: must not be applied
  assert.deepEqual(seen, [1, 2]);
  assert.deepEqual(c.cursorObject(), { 0: 2 });
  assert.deepEqual(storage.record(c).offsets, { 0: 2 });
  assert.ok(ws.closed, 'connection dropped');
  assert.equal(notices.find((n) => n.type === 'app_error').offset, 3);
  assert.equal(errors[0][0], 'boom');
  failOn = -1;
  await sleep(10);
  const ws2 = FakeWS.all[1];
  assert.equal(ws2.query.last_offsets, '0:2');
  ws2.recv(hello());
  ws2.recv(msg(0, 3));
  ws2.recv(msg(0, 4));
  assert.deepEqual(seen, [1, 2, 3, 4]);
  c.stop();
});

test('frames at or below the cursor are ignored, released records after thread_resumed are not', () => {
  const { c, applied } = make();
  c.start();
  const ws = FakeWS.all[0];
  ws.recv(hello());
  ws.recv(msg(0, 10));
  ws.recv(msg(0, 10));
  ws.recv(msg(0, 7));
  assert.deepEqual(applied, ['0:10']);
  assert.equal(c.stats.deduped, 2);
  ws.recv({ type: 'thread_resumed', thread_id: 't9', released: 1 });
  ws.recv(msg(0, 8, 't9'));
  ws.recv(msg(0, 9, 't9')); // only one was released
  assert.deepEqual(applied, ['0:10', '0:8']);
  assert.deepEqual(c.cursorObject(), { 0: 10 }, 'late records do not move the cursor');
  c.stop();
});

test('released records above the cursor are applied late, and not again when the cursor reaches them', () => {
  const { c, applied } = make();
  c.start();
  const ws = FakeWS.all[0];
  ws.recv(hello());
  ws.recv(msg(0, 25));
  ws.recv({ type: 'thread_resumed', thread_id: 't9', released: 1, notices: 'ab:3' });
  ws.recv(msg(0, 30, 't9')); // released, above the cursor: late all the same
  assert.deepEqual(c.cursorObject(), { 0: 25 }, 'a late record does not move the cursor');
  ws.recv(msg(0, 26));
  ws.recv(msg(0, 30, 't9')); // the same record read again in order
  ws.recv(msg(0, 31));
  assert.deepEqual(applied, ['0:25', '0:30', '0:26', '0:31']);
  assert.deepEqual(c.cursorObject(), { 0: 31 });
  c.stop();
});

test('the notice cursor is kept once a release has fully arrived, persisted, and sent on resume', async () => {
  const { c, storage } = make();
  c.start();
  let ws = FakeWS.all[0];
  assert.equal(ws.query.notices, undefined, 'nothing to send yet');
  ws.recv(hello());
  ws.recv({ type: 'replay_complete', replayed: 0, recovered: true, gaps: 0, duration_ms: 1, notices: 'ab:1' });
  ws.recv(msg(0, 5));
  ws.recv({ type: 'thread_halted', thread_id: 't9', missing: 1, sequence: 3, notices: 'ab:2' });
  assert.equal(c.notices, 'ab:2');
  ws.recv({ type: 'thread_resumed', thread_id: 't9', released: 2, notices: 'ab:3' });
  ws.recv(msg(0, 3, 't9'));
  assert.equal(c.notices, 'ab:2', 'not before every released record arrived');
  ws.recv(msg(0, 4, 't9'));
  assert.equal(c.notices, 'ab:3');
  c.flush();
  assert.equal(storage.record(c).notices, 'ab:3');
  ws.serverClose(1006);
  await sleep(10);
  ws = FakeWS.all[1];
  assert.equal(ws.query.notices, 'ab:3');
  assert.equal(ws.query.last_offsets, '0:5');
  c.stop();
});

test('lagged: nothing after the notice is applied, the client resumes from the cursor', async () => {
  const { c, applied, notices } = make();
  c.start();
  const ws = FakeWS.all[0];
  ws.recv(hello());
  ws.recv({ type: 'replay_complete', replayed: 0, recovered: true, gaps: 0 });
  assert.equal(c.status, 'live');
  ws.recv(msg(2, 100));
  ws.recv({ type: 'lagged', dropped: 3 });
  ws.recv(msg(2, 104)); // 101..103 were dropped: applying this would skip them
  assert.deepEqual(applied, ['2:100']);
  assert.equal(notices[0].type, 'lagged');
  await sleep(10);
  assert.equal(FakeWS.all[1].query.last_offsets, '2:100');
  c.stop();
});

test('a cursor of another namespace is discarded, the app told, and the client starts fresh', async () => {
  const storage = new MemStorage();
  const first = make({ storage, persistEveryMs: 0 });
  first.c.start();
  FakeWS.all[0].recv(hello('old.ns'));
  FakeWS.all[0].recv(msg(0, 50));
  first.c.stop();
  const { c, notices, applied } = make({ storage, startFrom: 'earliest' });
  c.start();
  const ws = FakeWS.all[0];
  assert.equal(ws.query.last_offsets, '0:50');
  ws.recv(hello('new.ns'));
  ws.recv(msg(0, 51)); // from the stale-cursor replay: ignored
  assert.deepEqual(applied, []);
  const reset = notices.find((n) => n.type === 'cursor_reset');
  assert.deepEqual([reset.previous, reset.current, reset.discarded], ['old.ns', 'new.ns', { 0: 50 }]);
  await sleep(10);
  const ws2 = FakeWS.all[1];
  assert.equal(ws2.query.resume, 'earliest');
  assert.equal(ws2.query.last_offsets, undefined);
  assert.equal(storage.record(c).namespace, 'new.ns');
  c.stop();
});

test('overload and unrecovered replays are surfaced; gaps reach onGap', async () => {
  const gaps = [];
  const done = [];
  const { c, notices } = make({ onGap: (g) => gaps.push(g), onReplayComplete: (r) => done.push(r) });
  c.start();
  const ws = FakeWS.all[0];
  ws.recv(hello());
  ws.recv({ type: 'gap', partition: 0, from: 11, to: 899, reason: 'not_in_replay_buffer' });
  ws.recv({ type: 'replay_complete', replayed: 100, recovered: false, reason: 'cursor_stale', gaps: 1 });
  ws.recv({ type: 'thread_halted', thread_id: 't', missing: 1, sequence: 5 });
  ws.serverClose(1008, 'client too slow');
  assert.equal(gaps[0].to, 899);
  assert.equal(done[0].recovered, false);
  assert.deepEqual(
    notices.map((n) => n.type),
    ['replay_incomplete', 'thread_halted', 'overload'],
  );
  assert.equal(notices[2].code, 1008);
  await sleep(10);
  assert.equal(FakeWS.all.length, 2, 'reconnected after overload');
  c.stop();
});

test('binary envelopes decode to a cursor and the raw record', () => {
  const buf = new ArrayBuffer(21 + 3);
  const dv = new DataView(buf);
  dv.setUint8(0, 1);
  dv.setInt32(1, 2);
  dv.setBigInt64(5, 1n << 40n);
  dv.setBigInt64(13, -1n);
  new Uint8Array(buf).set([0, 7, 9], 21);
  const f = decodeEnvelope(buf);
  assert.deepEqual([f.partition, f.offset, f.timestamp_ms, [...f.value]], [2, 2 ** 40, null, [0, 7, 9]]);
  assert.equal(decodeEnvelope(new ArrayBuffer(5)), null);
  const { c, applied } = make({ format: 'binary' });
  c.start();
  FakeWS.all[0].recv(hello());
  FakeWS.all[0].recv(buf);
  assert.deepEqual(applied, [`2:${2 ** 40}`]);
  c.stop();
});

test('backoff grows exponentially with jitter and is capped', () => {
  const b = { initialMs: 100, maxMs: 1000, factor: 2, jitter: 0.5 };
  assert.equal(backoffDelay(0, b, () => 0), 100);
  assert.equal(backoffDelay(3, b, () => 0), 800);
  assert.equal(backoffDelay(10, b, () => 0), 1000);
  assert.equal(backoffDelay(10, b, () => 1), 500);
});

test('a token provider is asked on every connect; the token goes in the subprotocol offer, not the URL', async () => {
  let n = 0;
  const { c, notices } = make({ token: async () => `tok-${++n}` });
  c.start();
  await sleep(5);
  const ws1 = FakeWS.all[0];
  assert.deepEqual(ws1.protocols, ['dashstream.v1', 'dashstream.bearer.tok-1']);
  assert.equal(ws1.query.token, undefined, 'never in the URL');
  ws1.recv(hello());
  ws1.recv({ type: 'replay_complete', replayed: 0, recovered: true });
  ws1.recv(msg(0, 5));
  // 4001: the token expired. The client reconnects at once with a fresh token and resumes.
  ws1.serverClose(4001, 'token expired');
  await sleep(5);
  const ws2 = FakeWS.all[1];
  assert.deepEqual(ws2.protocols, ['dashstream.v1', 'dashstream.bearer.tok-2']);
  assert.equal(ws2.query.resume, 'cursor');
  assert.equal(ws2.query.last_offsets, '0:5');
  assert.equal(c.stats.tokenExpiries, 1);
  assert.ok(notices.some((x) => x.type === 'token_expired'));
  c.stop();
});

test('a handshake that fails while a token is in use is looked up and reported as unauthorized', async () => {
  const asked = [];
  const fakeFetch = async (url, init) => {
    asked.push([url, init.headers.Authorization]);
    return { status: 401, json: async () => ({ error: 'unauthorized', message: 'token audience is not accepted' }) };
  };
  const { c, notices } = make({ token: 'bad-token', fetch: fakeFetch });
  c.start();
  FakeWS.all[0].serverClose(1006);
  await sleep(5);
  assert.deepEqual(asked[0], ['http://bridge.test/auth/token', 'Bearer bad-token']);
  const n = notices.find((x) => x.type === 'unauthorized');
  assert.equal(n.status, 401);
  assert.equal(n.message, 'token audience is not accepted');
  c.stop();
});

test('tokenIn query is a documented fallback; a provider that fails is reported and retried', async () => {
  const { c } = make({ token: 'abc', tokenIn: 'query' });
  c.start();
  assert.equal(FakeWS.all[0].query.token, 'abc');
  assert.equal(FakeWS.all[0].protocols, undefined);
  c.stop();
  let calls = 0;
  const r = make({ token: () => { calls += 1; throw new Error('login needed'); } });
  r.c.start();
  await sleep(20);
  assert.equal(FakeWS.all.length, 0, 'no connection without a token');
  assert.ok(calls >= 2, 'retried with backoff');
  assert.ok(r.notices.some((x) => x.type === 'unauthorized' && /login needed/.test(x.message)));
  r.c.stop();
});
