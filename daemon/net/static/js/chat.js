// The chat: history by sequence number, live messages, pins, and catching up after a drop.
//
// Messages are kept by seq, so a message that arrives twice (live and in a catch-up page)
// is shown once, and one that arrives out of order is put in its place. After every
// welcome the page asks for everything after the highest seq it has seen, page by page,
// which is how a reconnect loses nothing.

import { clock, el, icon } from './dom.js';

const PAGE = 100;

export class Chat {
  /**
   * @param {import('./connection.js').RoomConnection} conn
   * @param {{log: HTMLElement, pins: HTMLElement, older: HTMLButtonElement,
   *          scroller: HTMLElement}} nodes
   */
  constructor(conn, nodes) {
    this.conn = conn;
    this.nodes = nodes;
    /** @type {Map<number, object>} */
    this.messages = new Map();
    /** @type {Map<number, HTMLElement>} */
    this.rows = new Map();
    this.lastSeq = 0; // highest seq seen: catch up from here
    this.firstSeq = null; // lowest seq loaded: scroll back from here
    this.pins = [];
    this.caughtUp = 0; // messages that arrived through catch-up pages (for diagnostics)
    this._catchingUp = null;
    nodes.older.addEventListener('click', () => this.loadOlder());
  }

  /** After a welcome: load the newest page the first time, afterwards catch up. */
  async synchronize(welcome) {
    this.setPins(welcome.room?.meta?.pins ?? []);
    if (this.lastSeq === 0 && this.firstSeq === null) {
      const page = await this.conn.request({ type: 'get-messages', limit: 50 });
      this.nodes.older.hidden = !page.has_more;
      this._addAll(page.messages);
    }
    await this.catchUp();
  }

  /** Fetch every message after the highest seq seen; one catch-up runs at a time. */
  catchUp() {
    if (!this._catchingUp) {
      this._catchingUp = (async () => {
        try {
          for (;;) {
            const page = await this.conn.request({ type: 'get-messages', after: this.lastSeq, limit: PAGE });
            this.caughtUp += page.messages.filter((m) => !this.messages.has(m.seq)).length;
            this._addAll(page.messages);
            if (!page.has_more || page.messages.length === 0) break;
          }
        } finally {
          this._catchingUp = null;
        }
      })();
    }
    return this._catchingUp;
  }

  /** Load the page before the oldest message shown. */
  async loadOlder() {
    if (this.firstSeq === null) return;
    const button = this.nodes.older;
    button.disabled = true;
    try {
      const page = await this.conn.request({ type: 'get-messages', before: this.firstSeq, limit: 50 });
      const scroller = this.nodes.scroller;
      const fromBottom = scroller.scrollHeight - scroller.scrollTop;
      this._addAll(page.messages, { stick: false });
      scroller.scrollTop = scroller.scrollHeight - fromBottom;
      button.hidden = !page.has_more;
    } finally {
      button.disabled = false;
    }
  }

  /** A message-posted event. A gap in seq means something was missed: catch up. */
  posted(message) {
    const gap = message.seq > this.lastSeq + 1 && this.lastSeq > 0;
    this._addAll([message]);
    if (gap) this.catchUp().catch(() => {});
  }

  setPins(pins) {
    this.pins = [...pins];
    this._renderPins();
    for (const [seq, row] of this.rows) this._markPinned(row, this.pins.includes(seq));
  }

  _addAll(messages, { stick = true } = {}) {
    const scroller = this.nodes.scroller;
    const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
    let added = false;
    for (const message of messages) {
      if (this.messages.has(message.seq)) continue;
      this.messages.set(message.seq, message);
      this._insert(message);
      this.lastSeq = Math.max(this.lastSeq, message.seq);
      this.firstSeq = this.firstSeq === null ? message.seq : Math.min(this.firstSeq, message.seq);
      added = true;
    }
    if (!added) return;
    this.nodes.log.classList.toggle('empty', this.messages.size === 0);
    if (this.pins.some((seq) => messages.some((m) => m.seq === seq))) this._renderPins();
    if (stick && atBottom) scroller.scrollTop = scroller.scrollHeight;
  }

  _insert(message) {
    const mine = this.conn.sessionIds.has(message.sender_id);
    const pinned = this.pins.includes(message.seq);
    const row = el('li', {
      className: mine ? 'message mine' : 'message',
      id: `m${message.seq}`,
      dataset: { seq: String(message.seq), sender: message.sender_name },
    }, [
      el('div', { className: 'meta' }, [
        el('span', { className: 'sender', text: message.sender_name }),
        el('time', { className: 'time', datetime: new Date(message.at * 1000).toISOString(), text: clock(message.at) }),
        el('button', {
          type: 'button',
          className: 'pin-toggle',
          'aria-label': pinned ? 'Unpin message' : 'Pin message',
          'aria-pressed': pinned ? 'true' : 'false',
          title: pinned ? 'Unpin' : 'Pin',
          onclick: () => this._togglePin(message.seq),
        }, [icon('pin')]),
      ]),
      el('p', { className: 'text', text: message.text }),
    ]);
    if (pinned) row.classList.add('pinned');
    this.rows.set(message.seq, row);
    // Most messages are the newest: append. Older or late ones go before the first
    // row with a higher seq.
    const log = this.nodes.log;
    const last = log.lastElementChild;
    if (!last || Number(last.dataset.seq) < message.seq) {
      log.append(row);
      return;
    }
    for (const other of log.children) {
      if (Number(other.dataset.seq) > message.seq) {
        log.insertBefore(row, other);
        return;
      }
    }
    log.append(row);
  }

  _markPinned(row, pinned) {
    row.classList.toggle('pinned', pinned);
    const button = row.querySelector('.pin-toggle');
    button.setAttribute('aria-label', pinned ? 'Unpin message' : 'Pin message');
    button.setAttribute('aria-pressed', pinned ? 'true' : 'false');
    button.title = pinned ? 'Unpin' : 'Pin';
  }

  async _togglePin(seq) {
    const type = this.pins.includes(seq) ? 'unpin' : 'pin';
    try {
      await this.conn.request({ type, seq });
    } catch (err) {
      console.warn(`roomctl: ${type} failed:`, err.message);
    }
  }

  async _renderPins() {
    const box = this.nodes.pins;
    box.replaceChildren();
    box.hidden = this.pins.length === 0;
    if (box.hidden) return;
    box.append(el('h3', { className: 'pins-title' }, [icon('pin'), `Pinned (${this.pins.length})`]));
    const list = el('ul', { className: 'pin-list' });
    box.append(list);
    const missing = [];
    for (const seq of this.pins) {
      const message = this.messages.get(seq);
      if (!message) missing.push(seq);
      list.append(el('li', { dataset: { seq: String(seq) } }, [
        el('a', { href: `#m${seq}`, className: 'pin-link' }, message
          ? [el('strong', { text: `${message.sender_name}: ` }), message.text]
          : [`Message ${seq}`]),
      ]));
    }
    // Pinned messages older than the loaded history are fetched one by one (at most 50).
    for (const seq of missing) {
      try {
        const page = await this.conn.request({ type: 'get-messages', after: seq - 1, limit: 1 });
        const message = page.messages.find((m) => m.seq === seq);
        const item = list.querySelector(`li[data-seq="${seq}"] a`);
        if (message && item) item.replaceChildren(el('strong', { text: `${message.sender_name}: ` }), message.text);
      } catch {
        break; // the connection dropped; the next welcome renders the pins again
      }
    }
  }
}
