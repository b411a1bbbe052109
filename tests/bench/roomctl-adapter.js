'use strict';
// Load-generator adapter for roomctl (protocol v1, JSON wire format), for the shared
// bench harness (/work/shared/bench, copied by its setup.sh). Usage: tests/bench/README.md.
//
//   ws://HOST:PORT/v1/rooms/<room>   no subprotocol offered -> JSON text frames
//   -> {"type":"hello","name":"<hint>"}                  the first frame (connect().first)
//   <- {"type":"welcome","ref":null,"session_id":"<id>",...}   the server assigns the id
const common = require(require.main.path + '/lib/common');

const { lastMarker, found, prefixTest, fieldGetter } = common;

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
  // roomctl says nothing until it gets hello, so hello goes out as soon as the socket opens.
  connect(base, room, hint) {
    return {
      url: `${base}/v1/rooms/${encodeURIComponent(room)}`,
      first: JSON.stringify({ type: 'hello', name: hint }),
    };
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
