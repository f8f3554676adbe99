// What this device knows: its conversations, the messages it holds, the
// members' watermarks, sends not yet acknowledged, and the stream cursor —
// all kept in localStorage, so a reload (or a server restart) continues
// from the cursor with what was already shown. Events apply idempotently:
// messages are keyed by (conv, seq), watermarks only rise, and the cursor
// moves only forward. No DOM here.

const KEEP_PER_CONV = 200; // messages kept per conversation across reloads

export class Store {
  constructor(session) {
    // session: {server, token, user, device, name}
    this.key = `missive:${session.server}:${session.user}:${session.device}`;
    this.me = session.user;
    this.server = session.server; // signed media URLs are relative to it
    this.cursor = 0;
    this.convs = new Map(); // conv -> summary (the conversation list's fields, plus members/admins when known)
    this.messages = new Map(); // conv -> Map(seq -> Message)
    this.receipts = new Map(); // conv -> Map(user -> {delivered, read})
    this.pending = new Map(); // client_msg_id -> {conv, body, kind, at}
    // media_id -> {url, expires_at (s)}: signed download URLs, asked for
    // once per object and renewed when they run out (not persisted).
    this.mediaUrls = new Map();
    this.older = new Map(); // conv -> next_before ts, or null when the start is reached
    this.names = new Map(); // user -> display name
    this.presence = new Map(); // user -> {online, last_seen}
    this.typing = new Map(); // conv -> Map(user -> expiry ms)
    this.listeners = new Set();
    this.saveTimer = null;
    this.load();
  }

  subscribe(fn) {
    this.listeners.add(fn);
  }

  changed() {
    for (const fn of this.listeners) fn();
    clearTimeout(this.saveTimer);
    this.saveTimer = setTimeout(() => this.save(), 100);
  }

  load() {
    let raw = null;
    try {
      raw = JSON.parse(localStorage.getItem(this.key) || 'null');
    } catch {
      raw = null;
    }
    if (!raw || raw.v !== 1) return;
    this.cursor = raw.cursor || 0;
    for (const c of raw.convs || []) this.convs.set(c.conv, c);
    for (const [conv, list] of raw.messages || []) {
      this.messages.set(conv, new Map(list.map((m) => [m.seq, m])));
    }
    for (const [conv, list] of raw.receipts || []) this.receipts.set(conv, new Map(list));
    for (const p of raw.pending || []) this.pending.set(p.client_msg_id, p);
    for (const [u, n] of raw.names || []) this.names.set(u, n);
  }

  /** Writes everything now (also called before the page unloads). */
  save() {
    clearTimeout(this.saveTimer);
    const messages = [...this.messages].map(([conv, m]) => [
      conv,
      [...m.values()].sort((a, b) => a.seq - b.seq).slice(-KEEP_PER_CONV),
    ]);
    const data = {
      v: 1,
      cursor: this.cursor,
      convs: [...this.convs.values()],
      messages,
      receipts: [...this.receipts].map(([conv, m]) => [conv, [...m]]),
      pending: [...this.pending.values()],
      names: [...this.names],
    };
    try {
      localStorage.setItem(this.key, JSON.stringify(data));
    } catch {
      /* full or disabled: the server still has everything */
    }
  }

  forget() {
    localStorage.removeItem(this.key);
  }

  conv(conv) {
    let c = this.convs.get(conv);
    if (!c) {
      c = { conv, kind: 'group', name: '', member_count: 0, last_seq: 0, last_activity: 0, read: 0, delivered: 0, unread: 0, mentions: 0, last_message: null };
      this.convs.set(conv, c);
    }
    return c;
  }

  msgs(conv) {
    let m = this.messages.get(conv);
    if (!m) {
      m = new Map();
      this.messages.set(conv, m);
    }
    return m;
  }

  /** The conversation list, most recently active first. */
  list() {
    return [...this.convs.values()]
      .filter((c) => !c.left)
      .sort((a, b) => b.last_activity - a.last_activity);
  }

  /** A conversation's messages (and pending sends), oldest first. */
  thread(conv) {
    const held = [...this.msgs(conv).values()].sort((a, b) => a.seq - b.seq);
    const pend = [...this.pending.values()].filter((p) => p.conv === conv);
    return { held, pend };
  }

  /** Merges a page of the server's conversation list (its truth wins,
   *  except that nothing we saw goes backwards). */
  mergeList(convs) {
    for (const s of convs) {
      const c = this.conv(s.conv);
      const last = Math.max(c.last_seq, s.last_seq);
      const keepLocal = c.last_seq > s.last_seq; // the list trails fan-out
      Object.assign(c, s, {
        last_seq: last,
        read: Math.max(c.read, s.read),
        delivered: Math.max(c.delivered, s.delivered),
        last_message: keepLocal ? c.last_message : s.last_message,
        last_activity: Math.max(c.last_activity, s.last_activity),
        left: false,
      });
      c.unread = Math.max(0, c.last_seq - c.read);
    }
    this.changed();
  }

  setInfo(info) {
    const c = this.conv(info.conv);
    c.kind = info.kind;
    c.name = info.name;
    c.members = info.members;
    c.admins = info.admins;
    c.member_count = info.members.length;
    this.changed();
  }

  /** Merges a history page (newest first) and remembers how to go back. */
  mergePage(conv, page, wentBack) {
    for (const msg of page.messages) this.putMessage(msg);
    if (wentBack || !this.older.has(conv)) this.older.set(conv, page.next_before ?? null);
    this.changed();
  }

  putMessage(msg) {
    this.msgs(msg.conv).set(msg.seq, msg);
    if (msg.sender === this.me && msg.client_msg_id) this.pending.delete(msg.client_msg_id);
  }

  setReceipts(conv, list) {
    const r = this.rcpts(conv);
    for (const x of list) raise(r, x.user, x.delivered, x.read);
    this.changed();
  }

  rcpts(conv) {
    let r = this.receipts.get(conv);
    if (!r) {
      r = new Map();
      this.receipts.set(conv, r);
    }
    return r;
  }

  /** Where my message `seq` stands: 'sent', 'delivered' or 'read' — the
   *  last two once every other member whose watermarks we know has it. */
  tick(conv, seq) {
    const others = [...this.rcpts(conv)].filter(([u]) => u !== this.me).map(([, w]) => w);
    if (!others.length) return 'sent';
    if (others.every((w) => w.read >= seq)) return 'read';
    if (others.every((w) => w.delivered >= seq)) return 'delivered';
    return 'sent';
  }

  /**
   * Applies one stream event. Returns what the app should do next:
   * 'refresh' when a conversation we do not know (or its members) changed.
   */
  apply(f) {
    const e = f.event;
    const c = this.conv(f.conv);
    let todo = null;
    switch (e.kind) {
      case 'message': {
        if (e.message) {
          this.putMessage(e.message);
          c.last_message = e.message;
          // Sending reads everything before (protocol.md, `receipt`):
          // the sender's watermarks are at least this seq now.
          if (!e.message.system) raise(this.rcpts(f.conv), e.message.sender, e.seq, e.seq);
          if (e.message.sender === this.me) c.read = Math.max(c.read, e.seq);
          this.stopTyping(f.conv, e.message.sender);
        }
        c.last_seq = Math.max(c.last_seq, e.seq);
        c.last_activity = Math.max(c.last_activity, f.at);
        break;
      }
      case 'receipt':
        raise(this.rcpts(f.conv), e.user, e.delivered, e.read);
        if (e.user === this.me) {
          c.read = Math.max(c.read, e.read);
          c.delivered = Math.max(c.delivered, e.delivered);
        }
        break;
      case 'membership':
        if ((e.removed || []).includes(this.me)) c.left = true;
        else c.left = false;
        todo = 'refresh';
        break;
      case 'edited':
        if (e.message) this.putMessage(e.message);
        break;
      case 'unsent': {
        const m = this.msgs(f.conv).get(e.seq);
        if (m) {
          delete m.body;
          delete m.body_b64;
          delete m.reactions;
          m.unsent = { at: f.at, by: e.by };
        }
        break;
      }
      case 'hidden':
        this.msgs(f.conv).delete(e.seq);
        break;
      case 'reaction': {
        const m = this.msgs(f.conv).get(e.seq);
        if (m) {
          const r = (m.reactions = m.reactions || {});
          r[e.emoji] = Math.max(0, (r[e.emoji] || 0) + (e.added ? 1 : -1));
          if (!r[e.emoji]) delete r[e.emoji];
        }
        break;
      }
      case 'mention':
        c.mentions = (c.mentions || 0) + 1;
        break;
      default:
    }
    c.unread = Math.max(0, c.last_seq - c.read);
    this.cursor = f.useq;
    this.changed();
    return todo;
  }

  addPending(conv, client_msg_id, body, kind = 'text') {
    this.pending.set(client_msg_id, { conv, client_msg_id, body, kind, at: Date.now() });
    this.changed();
  }

  /** A send was acknowledged: hold it as the message it became, so it
   *  shows at its seq even before its `message` event arrives. */
  acked(client_msg_id, ans) {
    const p = this.pending.get(client_msg_id);
    if (!p) return;
    if (!this.msgs(p.conv).has(ans.seq)) {
      this.putMessage({ conv: p.conv, seq: ans.seq, ts: ans.ts, sender: this.me, client_msg_id, kind: p.kind || 'text', body: p.body });
    }
    this.pending.delete(client_msg_id);
    raise(this.rcpts(p.conv), this.me, ans.seq, ans.seq);
    const c = this.conv(p.conv);
    c.read = Math.max(c.read, ans.seq);
    c.last_seq = Math.max(c.last_seq, ans.seq);
    this.changed();
  }

  setTyping(conv, user, on) {
    let t = this.typing.get(conv);
    if (!t) this.typing.set(conv, (t = new Map()));
    if (on) t.set(user, Date.now() + 6000);
    else t.delete(user);
    this.changed();
  }

  stopTyping(conv, user) {
    const t = this.typing.get(conv);
    if (t) t.delete(user);
  }

  /** Who types in `conv` now (a lost `false` expires after 6 s). */
  typers(conv) {
    const t = this.typing.get(conv);
    if (!t) return [];
    const now = Date.now();
    return [...t].filter(([, until]) => until > now).map(([u]) => u);
  }

  name(user) {
    return this.names.get(user) || `user ${user}`;
  }

  /** What the list and the header call a conversation. */
  title(c) {
    if (c.kind === 'direct' && c.members) {
      const peer = c.members.find((u) => u !== this.me) || this.me;
      return this.name(peer);
    }
    return c.name || (c.kind === 'direct' ? 'direct conversation' : 'group');
  }
}

function raise(map, user, delivered, read) {
  const w = map.get(user) || { delivered: 0, read: 0 };
  w.delivered = Math.max(w.delivered, delivered, read);
  w.read = Math.max(w.read, read);
  map.set(user, w);
}
