// Drawing the store: the conversation list, the open conversation's
// header, messages and typing line. Text always goes in as textContent,
// never as HTML: message bodies and names are other people's input.

/** `el('li', {class: 'x', dataset: {seq: 3}}, child, 'text', …)` */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k === 'class') e.className = v;
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const $ = (id) => document.getElementById(id);

/** Microseconds since the epoch as a short local time. */
export function when(us) {
  if (!us) return '';
  const d = new Date(us / 1000);
  const today = new Date();
  return d.toDateString() === today.toDateString()
    ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : d.toLocaleDateString([], { month: 'short', day: 'numeric' });
}

/** What a message shows as text. */
export function preview(store, m) {
  if (!m) return '';
  if (m.unsent) return 'message deleted';
  if (m.system) {
    const s = m.system;
    const who = (list) => list.map((u) => store.name(u)).join(', ');
    if (s.renamed) return `${store.name(s.actor)} renamed the group to “${s.renamed}”`;
    if (s.added && s.added.includes(s.actor)) {
      const others = s.added.filter((u) => u !== s.actor);
      return others.length
        ? `${store.name(s.actor)} started the conversation with ${who(others)}`
        : `${store.name(s.actor)} joined`;
    }
    if (s.added && s.added.length) return `${store.name(s.actor)} added ${who(s.added)}`;
    if (s.removed && s.removed.length) {
      return s.removed.length === 1 && s.removed[0] === s.actor
        ? `${store.name(s.actor)} left`
        : `${store.name(s.actor)} removed ${who(s.removed)}`;
    }
    if (s.promoted && s.promoted.length) return `${store.name(s.actor)} made ${who(s.promoted)} admin`;
    return 'conversation updated';
  }
  if (m.kind === 'media') {
    const f = mediaBody(m);
    if (!f) return '(a file)';
    // Words, not emoji: a system without an emoji font draws boxes.
    return `${isImage(f.mime) ? 'Photo' : 'File'}: ${f.name || 'unnamed'}`;
  }
  if (m.body !== undefined) return m.body;
  if (m.body_b64 !== undefined) return '(encrypted or binary message)';
  return '';
}

/** A media message's body (protocol.md, "Media"), or null. */
export function mediaBody(m) {
  try {
    const f = JSON.parse(m.body);
    return f && typeof f.media_id === 'string' ? f : null;
  } catch {
    return null;
  }
}

const THUMBNAILED = ['image/jpeg', 'image/png', 'image/webp', 'image/gif'];
function isImage(mime) {
  return THUMBNAILED.includes(mime);
}

function sizeText(n) {
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${Math.round(n / (1 << 10))} KiB`;
  return `${n} B`;
}

/**
 * A media message's content: an image (its 320-pixel thumbnail where the
 * image is larger) or a download link, through a signed URL from
 * `store.mediaUrls`. Without one yet, the element carries
 * `data-media`/`data-conv` and the page asks for it (app.js), then redraws.
 */
function mediaContent(store, conv, m) {
  const f = mediaBody(m);
  if (!f) return el('span', { class: 'body' }, preview(store, m));
  const signed = m.seq ? store.mediaUrls.get(f.media_id) : null;
  const want = m.seq && !signed ? { media: f.media_id, conv } : {};
  if (isImage(f.mime)) {
    let src;
    if (signed) {
      const big = Math.max(f.width || 0, f.height || 0) > 320;
      const [path, query] = signed.url.split('?');
      src = store.server + (big ? `${path}/thumbnail/320?${query}` : signed.url);
    }
    return el(
      'span',
      { class: 'body media' },
      el('img', { class: 'media-image', alt: f.name || 'photo', src, dataset: want, width: f.width && Math.min(f.width, 320), loading: 'lazy' }),
    );
  }
  const href = signed ? `${store.server}${signed.url}&name=${encodeURIComponent(f.name || 'file')}` : undefined;
  return el(
    'span',
    { class: 'body media' },
    el('a', { class: 'media-file', href, download: f.name || 'file', dataset: want }, f.name || 'file'),
    el('span', { class: 'media-size' }, ` ${sizeText(f.size || 0)}`),
  );
}

export function renderList(store, open) {
  const ul = $('convs');
  ul.replaceChildren(
    ...store.list().map((c) =>
      el(
        'li',
        { class: c.conv === open ? 'conv open' : 'conv', dataset: { conv: c.conv }, tabindex: 0 },
        el('div', { class: 'conv-top' }, el('span', { class: 'conv-title' }, store.title(c)), el('time', {}, when(c.last_activity))),
        el(
          'div',
          { class: 'conv-bottom' },
          el('span', { class: 'conv-preview' }, preview(store, c.last_message)),
          c.mentions > 0 && c.unread > 0 ? el('span', { class: 'mention' }, '@') : null,
          c.unread > 0 ? el('span', { class: 'unread', dataset: { count: c.unread } }, String(c.unread)) : null,
        ),
      ),
    ),
  );
}

export function renderHead(store, conv) {
  const c = store.convs.get(conv);
  $('empty').hidden = Boolean(c);
  $('conv-head').hidden = !c;
  $('composer').hidden = !c || c.left;
  $('messages').hidden = !c;
  $('typing').hidden = !c;
  if (!c) return;
  $('conv-title').textContent = store.title(c);
  const sub = $('conv-sub');
  if (c.kind === 'direct' && c.members) {
    const peer = c.members.find((u) => u !== store.me);
    const p = peer ? store.presence.get(peer) : null;
    sub.textContent = !p ? '' : p.online ? 'online' : p.last_seen ? `last seen ${when(p.last_seen)}` : 'offline';
    sub.dataset.online = p && p.online ? 'true' : 'false';
  } else {
    const members = c.members || [];
    const online = members.filter((u) => u !== store.me && (store.presence.get(u) || {}).online).length;
    sub.textContent = `${members.length || c.member_count} members` + (online ? `, ${online} online` : '');
    sub.dataset.online = online ? 'true' : 'false';
  }
  const typers = store.typers(conv).filter((u) => u !== store.me);
  $('typing').textContent = typers.length
    ? `${typers.map((u) => store.name(u)).join(', ')} ${typers.length === 1 ? 'is' : 'are'} typing…`
    : '';
  renderMembers(store, c);
}

function renderMembers(store, c) {
  const admin = (c.admins || []).includes(store.me);
  $('members-toggle').hidden = c.kind !== 'group';
  $('add-member').hidden = !admin;
  $('leave').hidden = c.kind !== 'group' || c.left;
  $('member-list').replaceChildren(
    ...(c.members || []).map((u) =>
      el(
        'li',
        { dataset: { user: u } },
        el('span', { class: u === store.me || (store.presence.get(u) || {}).online ? 'dot on' : 'dot' }),
        store.name(u) + (u === store.me ? ' (you)' : ''),
        (c.admins || []).includes(u) ? el('em', {}, ' admin') : null,
        admin && u !== store.me ? el('button', { type: 'button', class: 'remove', dataset: { user: u } }, 'Remove') : null,
      ),
    ),
  );
}

const TICKS = { pending: '🕓', sent: '✓', delivered: '✓✓', read: '✓✓' };

function bubble(store, conv, m, state) {
  const mine = m.sender === store.me;
  const cls = ['msg', mine ? 'mine' : 'theirs', m.system ? 'system' : '', m.unsent ? 'unsent' : ''].join(' ').trim();
  return el(
    'li',
    { class: cls, dataset: { seq: m.seq ?? '', cmid: m.client_msg_id || '' } },
    !mine && !m.system ? el('span', { class: 'sender' }, store.name(m.sender)) : null,
    m.kind === 'media' && !m.unsent ? mediaContent(store, conv, m) : el('span', { class: 'body' }, preview(store, m)),
    el(
      'span',
      { class: 'meta' },
      m.edited_at ? 'edited · ' : '',
      el('time', {}, when(m.ts)),
      mine && !m.system ? el('span', { class: 'ticks', dataset: { state }, title: state }, TICKS[state]) : null,
    ),
  );
}

/** Redraws the messages, keeping the reader where they were: at the
 *  bottom if they were there, else on the same message. */
export function renderThread(store, conv) {
  const ol = $('messages');
  const atBottom = ol.scrollHeight - ol.scrollTop - ol.clientHeight < 40;
  const before = ol.scrollHeight;
  const top = ol.scrollTop;
  if (!conv) {
    ol.replaceChildren();
    return;
  }
  const { held, pend } = store.thread(conv);
  const items = held.map((m) => bubble(store, conv, m, m.sender === store.me ? store.tick(conv, m.seq) : ''));
  for (const p of pend) {
    items.push(bubble(store, conv, { conv, sender: store.me, client_msg_id: p.client_msg_id, kind: p.kind, body: p.body, ts: p.at * 1000 }, 'pending'));
  }
  if (store.older.get(conv) === null && held.length) items.unshift(el('li', { class: 'start' }, 'the beginning of the conversation'));
  ol.replaceChildren(...items);
  if (atBottom) ol.scrollTop = ol.scrollHeight;
  // Older messages came in above the reader (they scrolled to the top):
  // keep the same message under their eyes.
  else if (top < 40) ol.scrollTop = top + (ol.scrollHeight - before);
  else ol.scrollTop = top;
}

/**
 * A page of search hits (`GET /v1/search`): each names its conversation
 * and shows the snippet with its highlights (offsets in Unicode scalar
 * values, so the snippet is indexed by code point, not UTF-16 unit).
 */
export function renderSearch(store, q, hits) {
  const ul = $('search-results');
  ul.hidden = false;
  const head = el('li', { class: 'hits-head' }, `Messages matching “${q}”`);
  if (!hits.length) {
    ul.replaceChildren(head, el('li', { class: 'hit none' }, 'No messages found.'));
    return;
  }
  ul.replaceChildren(
    head,
    ...hits.map((h) => {
      const chars = Array.from(h.snippet);
      const parts = [];
      let at = 0;
      for (const [start, end] of h.highlights) {
        parts.push(chars.slice(at, start).join(''), el('mark', {}, chars.slice(start, end).join('')));
        at = end;
      }
      parts.push(chars.slice(at).join(''));
      const conv = h.message.conv;
      // Read, never create: drawing hits must not add to the store.
      const known = store.convs.get(conv);
      const title = known ? store.title(known) : 'conversation';
      return el(
        'li',
        { class: 'hit', dataset: { conv, seq: h.message.seq }, tabindex: 0 },
        el('div', { class: 'conv-top' }, el('span', { class: 'conv-title' }, title), el('time', {}, when(h.message.ts))),
        el('div', { class: 'snippet' }, ...parts),
      );
    }),
  );
}
