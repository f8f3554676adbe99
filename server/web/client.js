// The protocol, and nothing else: HTTP calls, the WebSocket session with
// its tickets, requests answered by id, the event stream from a cursor,
// and reconnecting. docs/protocol.md is the contract; this file is its
// reference client. No DOM here.

/** An error answer: `code` is the stable code of protocol.md's table. */
export class ApiError extends Error {
  constructor(code, message, status = 0, retryAfterMs = 0) {
    super(message);
    this.code = code;
    this.status = status;
    this.retryAfterMs = retryAfterMs;
  }
}

/** Whether the same request may succeed later: nothing was decided (the
 *  socket closed, no answer in time, a leader election, a rate limit) or
 *  the outcome is unknown (resend with the same client_msg_id). */
export function retryable(e) {
  return ['disconnected', 'timeout', 'network', 'unavailable', 'rate_limited', 'outcome_unknown'].includes(e.code);
}

/** Reads a JWT's claims (no check: the server checks; we only show them). */
export function tokenClaims(token) {
  const part = String(token).split('.')[1];
  if (!part) throw new ApiError('unauthorized', 'that is not a token (expected three dot-separated parts)');
  const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
  try {
    return JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)));
  } catch {
    throw new ApiError('unauthorized', 'that is not a token (its claims are not JSON)');
  }
}

/** `fetch` against a server, JSON in and out, errors as ApiError. */
export async function call(server, method, path, { token, body, headers = {} } = {}) {
  const h = { ...headers };
  if (token) h.Authorization = `Bearer ${token}`;
  if (body !== undefined) h['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(server + path, {
      method,
      headers: h,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    // The server is down, or the browser refused (CORS): no answer to read.
    throw new ApiError('network', `cannot reach ${server}: it is down, or it does not accept this page's origin (auth.allowed_origins)`);
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    /* not JSON: handled below */
  }
  if (!res.ok) {
    const err = json && json.error;
    const retry = err && err.retry_after_ms ? err.retry_after_ms : 0;
    throw new ApiError(err ? err.code : 'http', err ? err.message : `HTTP ${res.status}`, res.status, retry);
  }
  return json;
}

/** Mints a development token with the admin secret (`POST /v1/admin/tokens`). */
export async function mintToken(server, adminSecret, user, device) {
  const ans = await call(server, 'POST', '/v1/admin/tokens', {
    headers: { 'X-Admin-Secret': adminSecret },
    body: { user: String(user), device: String(device), ttl_secs: 24 * 3600 },
  });
  return ans.token;
}

const PING_MS = 30_000; // well under the server's idle timeout (120 s)
const REQUEST_TIMEOUT_MS = 15_000;
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 5_000;

/**
 * One signed-in device's connection to a server.
 *
 * Callbacks (`on`): `event(e)` for each stream event with `e.useq`
 * greater than the cursor it was asked from (the caller stores the new
 * cursor), `synced(cursor)`, `presence(p)`, `typing(t)`, `state(s)` with
 * s one of 'connecting' | 'online' | 'offline' | 'signed_out',
 * `badCursor()`.
 */
export class Session {
  constructor(server, token, on) {
    this.server = server;
    this.token = token;
    this.on = on;
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map(); // request id -> {resolve, reject, timer}
    this.backoff = BACKOFF_MIN_MS;
    this.stopped = false;
    this.cursor = 0;
    this.synced = false;
    this.pinger = null;
  }

  /** An HTTP call with this session's token. */
  http(method, path, body) {
    return call(this.server, method, path, { token: this.token, body });
  }

  /** Opens the socket and keeps it open (reconnecting) until `close()`. */
  start(cursor) {
    this.cursor = cursor;
    this.stopped = false;
    this.connect();
  }

  close() {
    this.stopped = true;
    clearInterval(this.pinger);
    if (this.ws) this.ws.close(1000);
  }

  get online() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  async connect() {
    if (this.stopped) return;
    this.on.state('connecting');
    let ticket;
    try {
      // A ticket per attempt: they are single-use (protocol.md).
      ticket = (await this.http('POST', '/v1/ws-ticket')).ticket;
    } catch (e) {
      if (e.code === 'unauthorized' || e.code === 'token_expired' || e.code === 'token_revoked') {
        this.stopped = true;
        this.on.state('signed_out', e);
        return;
      }
      this.retry();
      return;
    }
    const url = this.server.replace(/^http/, 'ws') + '/v1/ws?ticket=' + encodeURIComponent(ticket);
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => {
      this.backoff = BACKOFF_MIN_MS;
      this.synced = false;
      // Everything after our cursor, then `synced`, then live: no gap,
      // no duplicate (protocol.md, `sync`).
      ws.send(JSON.stringify({ type: 'sync', after: this.cursor }));
      this.on.state('online');
      clearInterval(this.pinger);
      this.pinger = setInterval(() => this.request({ type: 'ping' }).catch(() => {}), PING_MS);
    };
    ws.onmessage = (m) => this.frame(m.data);
    ws.onclose = (c) => {
      if (this.ws !== ws) return;
      this.ws = null;
      clearInterval(this.pinger);
      for (const [, p] of this.pending) {
        clearTimeout(p.timer);
        p.reject(new ApiError('disconnected', 'the connection closed before the answer'));
      }
      this.pending.clear();
      if (c.code === 4003) {
        this.stopped = true;
        this.on.state('signed_out', new ApiError('token_revoked', 'this device was logged out'));
        return;
      }
      this.retry();
    };
  }

  retry() {
    if (this.stopped) return;
    this.on.state('offline');
    const wait = this.backoff;
    this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
    setTimeout(() => this.connect(), wait);
  }

  frame(data) {
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      return;
    }
    if (f.id !== undefined && this.pending.has(f.id)) {
      const p = this.pending.get(f.id);
      this.pending.delete(f.id);
      clearTimeout(p.timer);
      if (f.type === 'error') p.reject(new ApiError(f.code, f.message, 0, f.retry_after_ms || 0));
      else p.resolve(f);
      return;
    }
    switch (f.type) {
      case 'event':
        // A reconnect's catch-up may repeat what we hold: the cursor
        // decides, and it only moves forward.
        if (f.useq > this.cursor) {
          this.on.event(f);
          this.cursor = f.useq;
        }
        break;
      case 'synced':
        this.synced = true;
        this.on.synced(f.cursor);
        break;
      case 'presence':
        this.on.presence(f);
        break;
      case 'typing':
        this.on.typing(f);
        break;
      case 'error':
        if (f.code === 'bad_cursor') this.on.badCursor();
        break;
      default:
    }
  }

  /** Sends a request frame; resolves with its answer, rejects with ApiError. */
  request(frame) {
    if (!this.online) return Promise.reject(new ApiError('disconnected', 'not connected'));
    const id = 'r' + this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ApiError('timeout', 'no answer in time'));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ ...frame, id }));
    });
  }

  /** A frame with no answer (typing). Dropped when offline: ephemeral. */
  signal(frame) {
    if (this.online) this.ws.send(JSON.stringify(frame));
  }

  /** Restarts the stream from `cursor` (after a `bad_cursor`). */
  resync(cursor) {
    this.cursor = cursor;
    if (this.online) this.ws.send(JSON.stringify({ type: 'sync', after: cursor }));
  }
}

/**
 * Uploads a file (tus 1.0, protocol.md "Media"): creates the upload, sends
 * the bytes in one PATCH, and answers the upload's JSON (`media_id`, and
 * `image` with its dimensions for a picture). Errors are ApiErrors.
 */
export async function uploadFile(server, token, file) {
  const b64 = (t) => btoa(String.fromCharCode(...new TextEncoder().encode(t)));
  const auth = { Authorization: `Bearer ${token}`, 'Tus-Resumable': '1.0.0' };
  const meta = [`filename ${b64(file.name || 'file')}`, `filetype ${b64(file.type || 'application/octet-stream')}`];
  const failed = async (res) => {
    let e = {};
    try {
      e = await res.json();
    } catch {
      /* no body */
    }
    return new ApiError(e.code || 'upload_failed', e.message || `the upload failed (${res.status})`);
  };
  let res = await fetch(server + '/v1/media/uploads', {
    method: 'POST',
    headers: { ...auth, 'Upload-Length': String(file.size), 'Upload-Metadata': meta.join(',') },
  });
  if (res.status !== 201) throw await failed(res);
  const at = res.headers.get('Location');
  res = await fetch(server + at, {
    method: 'PATCH',
    headers: { ...auth, 'Upload-Offset': '0', 'Content-Type': 'application/offset+octet-stream' },
    body: file,
  });
  if (res.status !== 204) throw await failed(res);
  res = await fetch(server + at, { headers: auth });
  if (!res.ok) throw await failed(res);
  return res.json();
}

