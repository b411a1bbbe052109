'use strict';
// Load-generator adapter for roomctl (protocol v1, JSON wire format), for the shared
// bench harness (/work/shared/bench, copied by its setup.sh). Usage: tests/bench/README.md.
//
//   ws://HOST:PORT/v1/rooms/<room>   no subprotocol offered -> JSON text frames
//   -> {"type":"hello","name":"<hint>"}                  must be the first frame
//   <- {"type":"welcome","ref":null,"session_id":"<id>",...}   the server assigns the id
//
// The harness has no hook for a client's first frame: it only sends scenario frames
// (chat/join/relay) after ready(buf) is truthy, and roomctl says nothing until it gets
// hello, so without help every client would wait for a welcome that never comes.
// Workaround, kept to this file: patch the loadgen's own `ws` module (same module
// instance, resolved from the loadgen's folder) so that a socket whose URL carries the
// `lg-hello` query parameter sends hello with that name the moment it opens, before the
// 'open' listeners run. roomctl routes on the path only and ignores the query string.
const common = require(require.main.path + '/lib/common');
const WebSocket = require(require.resolve('ws', { paths: [require.main.path] }));

const { lastMarker, found, prefixTest, fieldGetter } = common;

const HELLO_PARAM = 'lg-hello';
const PATCHED = Symbol.for('roomctl-adapter.hello-on-open');
if (!WebSocket.prototype[PATCHED]) {
  const emit = WebSocket.prototype.emit;
  WebSocket.prototype[PATCHED] = true;
  WebSocket.prototype.emit = function (event, ...rest) {
    if (event === 'open') {
      const q = this.url.indexOf('?');
      const name = q < 0 ? null : new URLSearchParams(this.url.slice(q + 1)).get(HELLO_PARAM);
      if (name) this.send(JSON.stringify({ type: 'hello', name }));
    }
    return emit.call(this, event, ...rest);
  };
}

// Frames are msgspec-encoded tagged structs: the tag is always the first field, and
// fields follow in declaration order (protocol/messages.py, protocol/chat.py).
const isWelcome = prefixTest('{"type":"welcome"'); // then "ref":null,"session_id":"..."
const isMessagePosted = prefixTest('{"type":"message-posted"'); // one message per frame
const isAddPeer = prefixTest('{"type":"add-peer"'); // then "peer_id":"...","should_create_offer":...
const isSessionDescription = prefixTest('{"type":"session-description"'); // then "peer_id":"<sender>"
const sessionId = fieldGetter('session_id'); // first in Welcome; nested structs use "id"
const peerId = fieldGetter('peer_id');

module.exports = {
  name: 'roomctl',
  connect(base, room, hint) {
    return { url: `${base}/v1/rooms/${encodeURIComponent(room)}?${HELLO_PARAM}=${encodeURIComponent(hint)}` };
  },
  // The client's id is the session id the daemon assigned in its welcome.
  ready(buf) {
    return isWelcome(buf) ? sessionId(buf) || false : false;
  },
  // No ref -> no ok frame; the poster gets its own message-posted like everyone else.
  chat(text) {
    return JSON.stringify({ type: 'send-message', text });
  },
  chatIn(buf, emit) {
    if (isMessagePosted(buf) && lastMarker(buf)) emit(found.seq, found.t);
  },
  join() {
    return JSON.stringify({ type: 'join' });
  },
  addPeer(buf) {
    return isAddPeer(buf) ? peerId(buf) : null;
  },
  relay(dst, kind, sdp) {
    return JSON.stringify({ type: 'relay-session-description', peer_id: dst, description: { type: kind, sdp } });
  },
  relayIn(buf) {
    return isSessionDescription(buf) ? peerId(buf) : null;
  },
};
