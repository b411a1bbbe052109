// The call: a full mesh, one RTCPeerConnection per other participant in the call.
//
// The daemon decides who offers (add-peer's should_create_offer: the newcomer offers to
// everyone already there), so each edge has exactly one offerer and offers never collide.
// The offerer always puts one audio and one video transceiver in its offer, both
// send-and-receive, so that either side can start or stop sending later by replacing a
// track, with no renegotiation. The answerer fills those transceivers with its own
// tracks, or answers receive-only when it joined without devices.
//
// ICE is trickled: candidates are relayed as they are found, and candidates that arrive
// before the remote description are queued. No STUN or TURN servers are configured: the
// daemon has none to offer, and host candidates reach peers on the same network.
//
// A dropped signaling connection does not touch the peer connections: media flows peer to
// peer, and a resumed session keeps its peers. A connection that fails is restarted
// (ICE restart) by its offerer.

const KINDS = ['audio', 'video'];

class Peer {
  constructor(id, offerer, serial) {
    this.id = id;
    this.offerer = offerer;
    this.serial = serial;
    this.pc = new RTCPeerConnection({ iceServers: [] });
    this.remoteStream = new MediaStream();
    this.queuedCandidates = [];
    // Signaling that could not be sent while the connection was down, sent on resume.
    this.unsent = [];
  }

  /** The transceiver of `kind`, found by its receiver (a sender may have no track). */
  transceiver(kind) {
    return this.pc.getTransceivers().find((t) => t.receiver.track?.kind === kind && !t.stopped);
  }
}

export class Mesh extends EventTarget {
  /**
   * @param {import('./connection.js').RoomConnection} conn
   * Events: "peer" (detail {id, stream}) when a peer's media arrives or changes,
   * "peer-state" (detail {id, state}), "peer-removed" (detail {id}).
   */
  constructor(conn) {
    super();
    this.conn = conn;
    /** @type {Map<string, Peer>} */
    this.peers = new Map();
    /** @type {MediaStream|null} what this page sends; null when it joined receive-only */
    this.localStream = null;
    /** kinds this page may send (it had the device when it joined) */
    this.sending = new Set();
    this._serial = 0;
  }

  /** Set what the page sends; `kinds` are the devices it has, even if a track is off. */
  setLocal(stream, kinds) {
    this.localStream = stream;
    this.sending = new Set(kinds);
  }

  /** Handle one signaling event; returns whether it was one. */
  handle(frame) {
    switch (frame.type) {
      case 'add-peer':
        this._addPeer(frame.peer_id, frame.should_create_offer);
        return true;
      case 'remove-peer':
        this.removePeer(frame.peer_id);
        return true;
      case 'session-description':
        this._description(frame.peer_id, frame.description).catch((err) => {
          console.warn(`roomctl: negotiation with ${frame.peer_id} failed:`, err);
        });
        return true;
      case 'ice-candidate':
        this._candidate(frame.peer_id, frame.candidate).catch((err) => {
          console.warn(`roomctl: candidate from ${frame.peer_id} refused:`, err);
        });
        return true;
      default:
        return false;
    }
  }

  /**
   * Send the signaling that could not go out while the connection was down. Called after
   * the session resumed: the peers are still there and still waiting for it.
   */
  flush() {
    for (const peer of this.peers.values()) {
      const frames = peer.unsent.splice(0);
      for (const frame of frames) this._signal(peer, frame);
    }
  }

  /** Close one peer connection. */
  removePeer(id) {
    const peer = this.peers.get(id);
    if (!peer) return;
    this.peers.delete(id);
    peer.pc.close();
    this.dispatchEvent(new CustomEvent('peer-removed', { detail: { id } }));
  }

  /** Close every peer connection (the session is gone, so are the edges). */
  closeAll() {
    for (const id of [...this.peers.keys()]) this.removePeer(id);
  }

  /** Send `track` as this page's `kind` on every peer connection (null stops sending). */
  async replaceTrack(kind, track) {
    await Promise.all([...this.peers.values()].map(async (peer) => {
      const transceiver = peer.transceiver(kind);
      if (transceiver) await transceiver.sender.replaceTrack(track);
    }));
  }

  /**
   * Return per-peer statistics: {id: {serial, state, framesDecoded, framesSent,
   * audioBytesReceived, localAddress, remoteAddress}}. Used by the page's own display
   * and by tests (window.roomctl.stats()).
   */
  async stats() {
    const result = {};
    for (const peer of this.peers.values()) {
      const entry = {
        serial: peer.serial,
        offerer: peer.offerer,
        state: peer.pc.connectionState,
        framesDecoded: 0,
        framesSent: 0,
        audioBytesReceived: 0,
        localAddress: null,
        remoteAddress: null,
      };
      const report = await peer.pc.getStats();
      report.forEach((stat) => {
        if (stat.type === 'inbound-rtp' && stat.kind === 'video') entry.framesDecoded += stat.framesDecoded || 0;
        if (stat.type === 'outbound-rtp' && stat.kind === 'video') entry.framesSent += stat.framesSent || 0;
        if (stat.type === 'inbound-rtp' && stat.kind === 'audio') entry.audioBytesReceived += stat.bytesReceived || 0;
        if (stat.type === 'transport' && stat.selectedCandidatePairId) {
          const pair = report.get(stat.selectedCandidatePairId);
          entry.localAddress = report.get(pair?.localCandidateId)?.address ?? null;
          entry.remoteAddress = report.get(pair?.remoteCandidateId)?.address ?? null;
        }
      });
      result[peer.id] = entry;
    }
    return result;
  }

  _addPeer(id, offerer) {
    this.removePeer(id); // a fresh edge replaces any stale one
    const peer = new Peer(id, offerer, ++this._serial);
    this.peers.set(id, peer);
    const { pc } = peer;
    pc.addEventListener('icecandidate', (event) => {
      // A null candidate ends gathering; the wire spells that as an empty candidate line.
      const candidate = event.candidate ? event.candidate.toJSON() : { candidate: '' };
      this._signal(peer, { type: 'relay-ice-candidate', peer_id: id, candidate });
    });
    pc.addEventListener('track', (event) => {
      if (!peer.remoteStream.getTracks().includes(event.track)) peer.remoteStream.addTrack(event.track);
      this.dispatchEvent(new CustomEvent('peer', { detail: { id, stream: peer.remoteStream } }));
    });
    pc.addEventListener('connectionstatechange', () => {
      const state = pc.connectionState;
      this.dispatchEvent(new CustomEvent('peer-state', { detail: { id, state } }));
      if (state === 'failed' && peer.offerer && this.peers.get(id) === peer) pc.restartIce();
    });
    if (offerer) {
      pc.addEventListener('negotiationneeded', () => this._offer(peer));
      for (const kind of KINDS) {
        const track = this.localStream?.getTracks().find((t) => t.kind === kind) ?? null;
        const streams = this.localStream ? [this.localStream] : [];
        // sendrecv even without a track: the answerer may send on it, and we may later.
        pc.addTransceiver(track ?? kind, { direction: 'sendrecv', streams });
      }
    }
    this.dispatchEvent(new CustomEvent('peer-state', { detail: { id, state: pc.connectionState } }));
  }

  async _offer(peer) {
    if (this.peers.get(peer.id) !== peer || peer.pc.signalingState !== 'stable') return;
    await peer.pc.setLocalDescription();
    this._relayDescription(peer);
  }

  _relayDescription(peer) {
    const { type, sdp } = peer.pc.localDescription;
    this._signal(peer, { type: 'relay-session-description', peer_id: peer.id, description: { type, sdp } });
  }

  _signal(peer, frame) {
    if (this.peers.get(peer.id) !== peer) return;
    if (!this.conn.send(frame)) peer.unsent.push(frame);
  }

  async _description(id, description) {
    let peer = this.peers.get(id);
    if (!peer) {
      if (description.type !== 'offer') return;
      // An offer from a peer we were not told about (the add-peer was lost in a drop).
      this._addPeer(id, false);
      peer = this.peers.get(id);
    }
    const { pc } = peer;
    if (description.type === 'offer') {
      await pc.setRemoteDescription(description); // rolls back our own offer, if any
      for (const kind of KINDS) {
        const transceiver = peer.transceiver(kind);
        if (!transceiver) continue;
        if (this.sending.has(kind)) {
          const track = this.localStream?.getTracks().find((t) => t.kind === kind) ?? null;
          if (track && transceiver.sender.track !== track) await transceiver.sender.replaceTrack(track);
          if (this.localStream && transceiver.sender.setStreams) transceiver.sender.setStreams(this.localStream);
          transceiver.direction = 'sendrecv';
        } else {
          transceiver.direction = 'recvonly';
        }
      }
      await pc.setLocalDescription();
      this._relayDescription(peer);
    } else {
      if (pc.signalingState !== 'have-local-offer') return; // a late answer to a replaced offer
      await pc.setRemoteDescription(description);
    }
    const queued = peer.queuedCandidates.splice(0);
    for (const candidate of queued) await this._addCandidate(pc, candidate);
  }

  async _candidate(id, candidate) {
    const peer = this.peers.get(id);
    if (!peer) return;
    if (!peer.pc.remoteDescription) {
      peer.queuedCandidates.push(candidate);
      return;
    }
    await this._addCandidate(peer.pc, candidate);
  }

  async _addCandidate(pc, candidate) {
    if (!candidate.candidate) {
      await pc.addIceCandidate(); // end of candidates
      return;
    }
    await pc.addIceCandidate(candidate);
  }
}
