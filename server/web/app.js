// The page: sign-in, then the chat. Wires the DOM to the session
// (client.js) and the store (store.js); view.js draws.

import { ApiError, Session, call, mintToken, retryable, tokenClaims, uploadFile } from './client.js';
import { Store } from './store.js';
import { renderHead, renderList, renderSearch, renderThread } from './view.js';

const $ = (id) => document.getElementById(id);
const SESSION_KEY = 'missive:session';
const TYPING_REPEAT_MS = 3000; // protocol.md: repeat `true` every ~3 s
const PAGE = 50;

let session = null; // Session
let store = null; // Store
let open = null; // the open conversation's id
let typingSent = 0; // when we last sent typing: true (ms), 0 if not typing
let drawQueued = false;
const deliveredAcked = new Map(); // conv -> the delivered watermark we sent
const readAcked = new Map(); // conv -> the read watermark we sent

function showError(where, e) {
  $(where).textContent = e ? (e.code ? `${e.message} (${e.code})` : String(e.message || e)) : '';
}

function draw() {
  if (drawQueued) return;
  drawQueued = true;
  requestAnimationFrame(() => {
    drawQueued = false;
    renderList(store, open);
    renderHead(store, open);
    renderThread(store, open);
    acknowledge();
    signMedia();
  });
}

// ---- media ----------------------------------------------------------------

const signing = new Set(); // media ids whose URL is being asked for

/** Asks for a signed URL for each media element drawn without one, then
 *  redraws (view.js draws from `store.mediaUrls`). */
function signMedia() {
  if (!session || !session.online) return;
  for (const e of document.querySelectorAll('#messages [data-media]')) {
    const { media, conv } = e.dataset;
    if (signing.has(media)) continue;
    signing.add(media);
    session
      .request({ type: 'media_url', media, conv })
      .then((a) => {
        store.mediaUrls.set(media, { url: a.url, expires_at: a.expires_at });
        // Ask again a minute before it runs out.
        const ms = Math.max(a.expires_at * 1000 - Date.now() - 60_000, 60_000);
        setTimeout(() => store.mediaUrls.delete(media), ms);
        draw();
      })
      .catch((err) => showError('pane-error', err))
      .finally(() => signing.delete(media));
  }
}

/** Uploads a picked file and sends it to the open conversation. */
async function attach(file) {
  const conv = open;
  if (!conv || !file) return;
  showError('pane-error', null);
  $('attach').disabled = true;
  try {
    const u = await uploadFile(session.server, session.token, file);
    const body = { media_id: u.media_id, mime: u.mime, size: u.length, name: u.name };
    if (u.image) Object.assign(body, { width: u.image.width, height: u.image.height });
    const id = newMsgId();
    store.addPending(conv, id, JSON.stringify(body), 'media');
    sendPending(store.pending.get(id));
  } catch (e) {
    showError('pane-error', e);
  } finally {
    $('attach').disabled = false;
  }
}

// ---- signing in ----------------------------------------------------------

function defaultServer() {
  const q = new URLSearchParams(location.search).get('server');
  if (q) return q.replace(/\/+$/, '');
  return location.origin;
}

async function signIn(form) {
  const f = new FormData(form);
  const server = String(f.get('server')).trim().replace(/\/+$/, '');
  let token = String(f.get('token')).trim();
  const secret = String(f.get('secret'));
  if (!token) {
    if (!secret) throw new ApiError('invalid', 'give the admin secret (to mint a token) or paste a token');
    const user = String(f.get('user')).trim();
    const device = String(f.get('device')).trim() || '1';
    if (!/^[1-9][0-9]*$/.test(user)) throw new ApiError('invalid', 'the user id is a positive number');
    token = await mintToken(server, secret, user, device);
  }
  const claims = tokenClaims(token);
  const s = { server, token, user: String(claims.sub), device: String(claims.dev) };
  // The token works (or this throws the server's reason).
  const me = await call(server, 'GET', '/v1/users/me', { token });
  const name = String(f.get('name') || '').trim();
  if (name && name !== me.display_name) {
    await call(server, 'PUT', '/v1/users/me', { token, body: { display_name: name } });
  }
  localStorage.setItem(SESSION_KEY, JSON.stringify(s));
  return s;
}

function showSignIn(error) {
  $('chat').hidden = true;
  $('signin').hidden = false;
  const form = $('signin-form');
  if (!form.server.value) form.server.value = defaultServer();
  showError('signin-error', error);
}

function signOut() {
  if (session) session.close();
  if (store) store.forget();
  localStorage.removeItem(SESSION_KEY);
  session = null;
  store = null;
  open = null;
  showSignIn(null);
}

// ---- the chat ------------------------------------------------------------

function startChat(s) {
  $('signin').hidden = true;
  $('chat').hidden = false;
  store = new Store(s);
  store.subscribe(draw);
  $('me').textContent = `${store.name(s.user)} · device ${s.device}`;
  $('me').dataset.user = s.user;
  session = new Session(s.server, s.token, {
    event(f) {
      if (store.apply(f) === 'refresh') refreshInfo(f.conv);
      const e = f.event;
      if (e.kind === 'message' && e.message && !store.names.has(e.message.sender)) learnName(e.message.sender);
    },
    synced() {
      // The stream caught up: the list's counts and previews from the
      // server, and anything sent while we were away.
      refreshList();
      flushPending();
      if (open) watchPresence();
    },
    presence(p) {
      store.presence.set(p.user, { online: p.online, last_seen: p.last_seen });
      store.changed();
    },
    typing(t) {
      store.setTyping(t.conv, t.user, t.typing);
    },
    state(st, err) {
      $('status').dataset.state = st;
      $('status').title = st;
      if (st === 'signed_out') showSignIn(err);
    },
    badCursor() {
      // A cursor this server never gave us (a restored backup): start
      // over; events are numbered per user, so what we hold comes again
      // under the same numbers and applies idempotently.
      store.cursor = 0;
      session.resync(0);
    },
  });
  session.start(store.cursor);
  // For a developer's console (and the browser tests' failure reports).
  window.missive = { store, session };
  learnName(s.user).then(() => ($('me').textContent = `${store.name(s.user)} · device ${s.device}`));
  refreshList();
  draw();
}

async function learnName(user) {
  try {
    const p = await session.http('GET', `/v1/users/${user}`);
    if (p.display_name) {
      store.names.set(user, p.display_name);
      store.changed();
    }
  } catch {
    /* the default name stays */
  }
}

async function refreshList() {
  try {
    const page = await session.http('GET', '/v1/conversations?limit=100');
    store.mergeList(page.conversations);
    for (const c of page.conversations) {
      if (!store.convs.get(c.conv).members) refreshInfo(c.conv);
    }
  } catch (e) {
    showError('side-error', e);
  }
}

async function refreshInfo(conv) {
  try {
    const info = await session.http('GET', `/v1/conversations/${conv}`);
    store.setInfo(info);
    for (const u of info.members) if (!store.names.has(u)) learnName(u);
    if (!store.list().some((c) => c.conv === conv && c.last_activity)) refreshList();
  } catch (e) {
    if (e.code === 'not_a_member') {
      store.conv(conv).left = true;
      store.changed();
    }
  }
}

async function openConv(conv) {
  open = conv;
  $('members').hidden = true;
  showError('pane-error', null);
  draw();
  const c = store.conv(conv);
  if (!c.members) refreshInfo(conv);
  try {
    // The newest page: whatever the local copy lacks at the bottom.
    const page = await session.http('GET', `/v1/conversations/${conv}/messages?limit=${PAGE}`);
    if (open !== conv) return;
    store.mergePage(conv, page, false);
    const r = await session.http('GET', `/v1/conversations/${conv}/receipts`);
    store.setReceipts(conv, r.receipts);
  } catch (e) {
    showError('pane-error', e);
  }
  watchPresence();
  $('messages').scrollTop = $('messages').scrollHeight;
}

let loadingOlder = false;
async function loadOlder() {
  const conv = open;
  const held = [...store.msgs(conv).values()];
  if (!conv || loadingOlder || store.older.get(conv) === null || !held.length) return;
  const before = Math.min(...held.map((m) => m.ts));
  loadingOlder = true;
  try {
    const page = await session.http('GET', `/v1/conversations/${conv}/messages?limit=${PAGE}&before=${before}`);
    if (open === conv) store.mergePage(conv, page, true);
  } catch (e) {
    showError('pane-error', e);
  } finally {
    loadingOlder = false;
  }
}

function watchPresence() {
  const users = new Set();
  for (const c of store.convs.values()) for (const u of c.members || []) if (u !== store.me) users.add(u);
  if (!users.size || !session.online) return;
  session
    .request({ type: 'presence', users: [...users].slice(0, 500) })
    .then((a) => {
      for (const p of a.users) store.presence.set(p.user, { online: p.online, last_seen: p.last_seen });
      store.changed();
    })
    .catch(() => {});
}

/** Receipts: DELIVERED for what this device holds, READ for what it shows. */
function acknowledge() {
  if (!session || !session.online) return;
  for (const c of store.convs.values()) {
    if (c.left) continue;
    const held = store.msgs(c.conv);
    let newest = 0;
    for (const s of held.keys()) newest = Math.max(newest, s);
    newest = Math.min(newest, c.last_seq);
    const isOpen = c.conv === open && document.visibilityState === 'visible';
    const read = isOpen ? newest : 0;
    const body = { type: 'receipt', conv: c.conv };
    if (newest > Math.max(c.delivered, deliveredAcked.get(c.conv) || 0)) body.delivered = newest;
    if (read > Math.max(c.read, readAcked.get(c.conv) || 0)) body.read = read;
    if (body.delivered === undefined && body.read === undefined) continue;
    if (body.delivered) deliveredAcked.set(c.conv, body.delivered);
    if (body.read) readAcked.set(c.conv, body.read);
    session
      .request(body)
      .then((a) => {
        c.delivered = Math.max(c.delivered, a.delivered);
        c.read = Math.max(c.read, a.read);
        c.unread = Math.max(0, c.last_seq - c.read);
        store.changed();
      })
      .catch((e) => {
        deliveredAcked.delete(c.conv);
        readAcked.delete(c.conv);
        // Not taken (the shard is electing, the socket closed): ask again.
        if (retryable(e)) setTimeout(draw, e.retryAfterMs || 1000);
      });
  }
}

function newMsgId() {
  const b = new Uint8Array(12);
  crypto.getRandomValues(b);
  return 'w-' + [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
}

/** Sends one pending message; it stays pending (and is resent with the
 *  same client_msg_id, the idempotency key) until the server answers. */
async function sendPending(p) {
  if (p.inflight || !session.online) return;
  p.inflight = true;
  try {
    const frame = { type: 'send', conv: p.conv, client_msg_id: p.client_msg_id, body: p.body };
    if (p.kind && p.kind !== 'text') frame.kind = p.kind;
    const ans = await session.request(frame);
    store.acked(p.client_msg_id, ans);
  } catch (e) {
    if (!retryable(e)) {
      // Refused for good (not a member, blocked, too large): say so, drop it.
      store.pending.delete(p.client_msg_id);
      store.changed();
      showError('pane-error', e);
    } else if (e.code !== 'disconnected') {
      // Retryable: again, with the same client_msg_id. (After a
      // disconnection, `synced` on the next connection sends it.)
      setTimeout(() => sendPending(p), e.retryAfterMs || 1000);
    }
  } finally {
    p.inflight = false;
  }
}

function flushPending() {
  for (const p of store.pending.values()) sendPending(p);
}

function typing(on) {
  if (!open) return;
  const now = Date.now();
  if (on && now - typingSent < TYPING_REPEAT_MS) return;
  if (!on && !typingSent) return;
  typingSent = on ? now : 0;
  session.signal({ type: 'typing', conv: open, typing: on });
}

// ---- wiring --------------------------------------------------------------

function wire() {
  $('signin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    showError('signin-error', null);
    try {
      startChat(await signIn(ev.target));
    } catch (e) {
      showError('signin-error', e);
    }
  });
  $('signout').addEventListener('click', signOut);
  $('convs').addEventListener('click', (ev) => {
    const li = ev.target.closest('[data-conv]');
    if (li) openConv(li.dataset.conv);
  });
  // Search: a page of hits over the list; a hit opens its conversation,
  // emptying the box closes the results.
  $('search').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    showError('side-error', null);
    // The last word matches as a prefix (the server's rule for a query
    // not ending in a space): "quart" finds "quarterly".
    const q = ev.target.q.value.trim();
    try {
      const page = await session.http('GET', `/v1/search?q=${encodeURIComponent(q)}&limit=20`);
      renderSearch(store, q, page.hits);
    } catch (e) {
      showError('side-error', e);
    }
  });
  $('search').q.addEventListener('input', (ev) => {
    if (!ev.target.value) $('search-results').hidden = true;
  });
  $('search-results').addEventListener('click', (ev) => {
    const li = ev.target.closest('[data-conv]');
    if (!li) return;
    $('search-results').hidden = true;
    $('search').reset();
    openConv(li.dataset.conv);
  });
  $('new-direct').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    showError('side-error', null);
    try {
      const peer = ev.target.peer.value.trim();
      const a = await session.http('POST', '/v1/conversations', { kind: 'direct', peer });
      ev.target.reset();
      await refreshInfo(a.conv);
      openConv(a.conv);
    } catch (e) {
      showError('side-error', e);
    }
  });
  $('new-group').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    showError('side-error', null);
    try {
      const members = ev.target.members.value.split(/[\s,]+/).filter(Boolean);
      const a = await session.http('POST', '/v1/conversations', { kind: 'group', name: ev.target.name.value.trim(), members });
      ev.target.reset();
      await refreshInfo(a.conv);
      openConv(a.conv);
    } catch (e) {
      showError('side-error', e);
    }
  });
  $('composer').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const body = ev.target.body.value;
    if (!body.trim() || !open) return;
    ev.target.body.value = '';
    typing(false);
    const id = newMsgId();
    store.addPending(open, id, body);
    sendPending(store.pending.get(id));
  });
  $('attach').addEventListener('click', () => $('attach-file').click());
  $('attach-file').addEventListener('change', (ev) => {
    const file = ev.target.files[0];
    ev.target.value = '';
    attach(file);
  });
  $('composer').body.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey) {
      ev.preventDefault();
      $('composer').requestSubmit();
    }
  });
  $('composer').body.addEventListener('input', (ev) => typing(ev.target.value.length > 0));
  $('composer').body.addEventListener('blur', () => typing(false));
  $('messages').addEventListener('scroll', () => {
    if ($('messages').scrollTop < 40) loadOlder();
  });
  $('members-toggle').addEventListener('click', () => ($('members').hidden = !$('members').hidden));
  $('add-member').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await session.http('POST', `/v1/conversations/${open}/members`, { add: [ev.target.user.value.trim()] });
      ev.target.reset();
      refreshInfo(open);
    } catch (e) {
      showError('pane-error', e);
    }
  });
  $('member-list').addEventListener('click', async (ev) => {
    const b = ev.target.closest('button.remove');
    if (!b) return;
    try {
      await session.http('POST', `/v1/conversations/${open}/members`, { remove: [b.dataset.user] });
      refreshInfo(open);
    } catch (e) {
      showError('pane-error', e);
    }
  });
  $('leave').addEventListener('click', async () => {
    try {
      await session.http('POST', `/v1/conversations/${open}/leave`, {});
      store.conv(open).left = true;
      open = null;
      store.changed();
    } catch (e) {
      showError('pane-error', e);
    }
  });
  document.addEventListener('visibilitychange', draw);
  window.addEventListener('pagehide', () => store && store.save());
  // The typing line expires on its own (a lost `false`).
  setInterval(() => {
    if (store && open && $('typing').textContent) draw();
  }, 1000);
}

wire();
const saved = JSON.parse(localStorage.getItem(SESSION_KEY) || 'null');
if (saved && saved.token) startChat(saved);
else showSignIn(null);
