// One participant's session in a room, over protocol v1 (JSON subprotocol "roomctl.v1"),
// kept alive across dropped connections.
//
// Theory of operation: the connection opens a WebSocket to /v1/rooms/{room}, says hello
// and waits for the welcome. When the socket drops it reconnects with a growing delay and
// says hello again with the resume token from the last welcome: inside the daemon's grace
// period that restores the same session (same id, no leave/join for the others, WebRTC
// peers untouched). When the token is no longer known (the grace ran out, or the daemon
// restarted) it says hello without it and gets a new session. Either way it emits a
// "welcome" event, and the page catches up on what it missed by message seq.
//
// Events (CustomEvent, detail in brackets):
//   welcome [{welcome, resumed, newSession}]   after every successful hello
//   frame   [frame]                            every event frame that is not a reply
//   state   [{state, detail, code}]            "connecting", "open", "reconnecting", "closed";
//                                              code: the protocol error code of a refused hello

const SUBPROTOCOL = 'roomctl.v1';
const REQUEST_TIMEOUT_MS = 15000;
const RETRY_DELAYS_MS = [250, 500, 1000, 2000, 3000, 5000];

// Close codes after which reconnecting cannot help; the text is shown to the user.
const FINAL_CLOSES = new Map([
  [4001, 'The daemon refused this connection (unauthorized).'],
  [4003, 'You are not allowed in this room.'],
  [4009, 'An administrator removed you from the room.'],
  [4010, 'This room was deleted.'],
  [4012, 'You joined this room again from another tab or window.'],
  [4013, 'The room is full.'],
]);

/** An error reply from the daemon: `code` is the protocol's stable error code. */
export class ProtocolError extends Error {
  constructor(code, message) {
    super(message || code);
    this.code = code;
  }
}

export class RoomConnection extends EventTarget {
  /**
   * @param {string} room the room's name
   * @param {{name: string, token?: string|null, url?: string}} options display name; join
   *   token for rooms that need one; WebSocket URL override
   */
  constructor(room, { name, token = null, url }) {
    super();
    this.room = room;
    this.name = name;
    this.token = token;
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    this.url = url || `${scheme}//${location.host}/v1/rooms/${encodeURIComponent(room)}`;
    this.sessionId = null;
    /** every session id this page has had: its messages stay "mine" across new sessions */
    this.sessionIds = new Set();
    this.resumeToken = null;
    this.state = 'idle';
    this.ws = null;
    this.welcomes = 0;
    this._attempt = 0;
    this._nextRef = 1;
    this._pending = new Map();
    this._retryTimer = null;
    this._stopped = false;
    this._roomMissing = false;
    addEventListener('online', () => this._retryNow());
  }

  /** Open the first connection. */
  start() {
    this._connect();
  }

  /** Send `leave` (the participant leaves at once, no grace) and stop reconnecting. */
  async leave() {
    this._stopped = true;
    clearTimeout(this._retryTimer);
    if (this.isOpen()) {
      try {
        await this.request({ type: 'leave' }, 3000);
      } catch {
        // Leaving anyway: the daemon ends the session when the grace period runs out.
      }
    }
    this.ws?.close(1000, 'left');
    this._setState('closed', 'You left the room.');
  }

  /** Whether a welcomed session is on an open socket right now. */
  isOpen() {
    return this.state === 'open' && this.ws?.readyState === WebSocket.OPEN;
  }

  /**
   * Send a request and return its reply (ok, welcome, messages, participants...).
   * Rejects with ProtocolError for an error reply, or Error when the connection drops
   * or nothing comes back in time.
   */
  request(frame, timeoutMs = REQUEST_TIMEOUT_MS, ws = this.ws) {
    return new Promise((resolve, reject) => {
      if (!ws || ws.readyState !== WebSocket.OPEN) {
        reject(new Error('not connected'));
        return;
      }
      const ref = `p${this._nextRef++}`;
      const timer = setTimeout(() => {
        this._pending.delete(ref);
        reject(new Error(`no reply to ${frame.type} in time`));
      }, timeoutMs);
      this._pending.set(ref, { resolve, reject, timer, ws });
      ws.send(JSON.stringify({ ...frame, ref }));
    });
  }

  /** Send a request that needs no reply; returns false when not connected. */
  send(frame) {
    if (!this.isOpen()) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  _setState(state, detail = '', code = null) {
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, detail, code } }));
  }

  _connect() {
    if (this._stopped) return;
    this._setState(this.welcomes ? 'reconnecting' : 'connecting');
    let ws;
    try {
      ws = new WebSocket(this.url, [SUBPROTOCOL]);
    } catch (err) {
      this._setState('closed', `Cannot connect: ${err.message}`);
      return;
    }
    this.ws = ws;
    ws.addEventListener('open', () => this._hello(ws));
    ws.addEventListener('message', (event) => this._receive(ws, event));
    ws.addEventListener('close', (event) => this._closed(ws, event));
  }

  async _hello(ws) {
    const hello = { type: 'hello', name: this.name };
    if (this.token) hello.token = this.token;
    let welcome;
    try {
      if (this.resumeToken) {
        try {
          welcome = await this.request({ ...hello, resume: this.resumeToken }, REQUEST_TIMEOUT_MS, ws);
        } catch (err) {
          if (!(err instanceof ProtocolError) || err.code !== 'not-found') throw err;
          // The session is gone (grace ran out, or the daemon restarted): start a new one.
          this.resumeToken = null;
          this._roomMissing = true;
          welcome = await this.request(hello, REQUEST_TIMEOUT_MS, ws);
        }
      } else {
        welcome = await this.request(hello, REQUEST_TIMEOUT_MS, ws);
      }
    } catch (err) {
      if (err instanceof ProtocolError) {
        // A refused hello (room full, bad name...) will be refused again: stop here.
        this._stopped = true;
        this._setState('closed', err.message, err.code);
        ws.close(1000, 'hello refused');
      }
      return; // a dropped socket reconnects through _closed
    }
    if (ws !== this.ws) return;
    this._attempt = 0;
    this._roomMissing = false;
    const newSession = welcome.session_id !== this.sessionId;
    this.sessionId = welcome.session_id;
    this.sessionIds.add(welcome.session_id);
    this.resumeToken = welcome.resume_token;
    this.welcomes += 1;
    this._setState('open');
    this.dispatchEvent(new CustomEvent('welcome', {
      detail: { welcome, resumed: Boolean(welcome.resumed), newSession },
    }));
  }

  _receive(ws, event) {
    if (typeof event.data !== 'string') return; // JSON subprotocol: text frames only
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      console.warn('roomctl: undecodable frame from the daemon');
      return;
    }
    const waiter = frame.ref != null ? this._pending.get(frame.ref) : undefined;
    if (waiter) {
      this._pending.delete(frame.ref);
      clearTimeout(waiter.timer);
      if (frame.type === 'error') waiter.reject(new ProtocolError(frame.code, frame.message));
      else waiter.resolve(frame);
      return;
    }
    if (ws !== this.ws) return;
    if (frame.type === 'error') {
      // Requests sent without a ref (signaling relays) only hear back when they fail.
      console.info(`roomctl: ${frame.code}: ${frame.message}`);
      return;
    }
    this.dispatchEvent(new CustomEvent('frame', { detail: frame }));
  }

  _closed(ws, event) {
    for (const [ref, waiter] of this._pending) {
      if (waiter.ws !== ws) continue;
      this._pending.delete(ref);
      clearTimeout(waiter.timer);
      waiter.reject(new Error('connection lost'));
    }
    if (ws !== this.ws || this._stopped) return;
    const final = FINAL_CLOSES.get(event.code);
    if (final) {
      this._stopped = true;
      this._setState('closed', final);
      return;
    }
    if (event.code === 4004) {
      if (!this._roomMissing && !this.resumeToken) {
        this._stopped = true;
        this._setState('closed', `There is no room named ${this.room}.`);
        return;
      }
      // Resuming into a room the daemon no longer has (it restarted without its data):
      // a plain hello may create it again.
      this.resumeToken = null;
      this._roomMissing = false;
    }
    this._scheduleRetry();
  }

  _scheduleRetry() {
    const base = RETRY_DELAYS_MS[Math.min(this._attempt, RETRY_DELAYS_MS.length - 1)];
    this._attempt += 1;
    const delay = base * (0.8 + Math.random() * 0.4);
    this._setState('reconnecting', `next try in ${Math.round(delay / 100) / 10} s`);
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => this._connect(), delay);
  }

  _retryNow() {
    if (this.state !== 'reconnecting' || this._stopped) return;
    if (this.ws && this.ws.readyState !== WebSocket.CLOSED) return;
    clearTimeout(this._retryTimer);
    this._connect();
  }
}
