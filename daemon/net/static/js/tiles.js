// The video grid: one tile per participant in the call, yours first. A tile shows the
// peer's video, or its initials while the camera is off or nothing has arrived yet,
// with the name, a muted-microphone badge and the connection state.
//
// Video elements are always muted and autoplay; sound plays through a separate <audio>
// element per peer, so a browser that blocks sound until the user interacts still shows
// every video.

import { el, hue, icon, initials } from './dom.js';
import { nameOf } from './people.js';

export class Tiles {
  /**
   * @param {HTMLElement} grid
   * @param {() => string|null} mySessionId
   */
  constructor(grid, mySessionId) {
    this.grid = grid;
    this.mySessionId = mySessionId;
    /** @type {Map<string, {tile: HTMLElement, video: HTMLVideoElement, audio: HTMLAudioElement}>} */
    this.tiles = new Map();
    this.streams = new Map();
    this.peerStates = new Map();
    this.localStream = null;
    this.soundBlocked = false;
    this.onSoundBlocked = () => {};
  }

  setLocalStream(stream) {
    this.localStream = stream;
  }

  setStream(id, stream) {
    this.streams.set(id, stream);
  }

  setPeerState(id, state) {
    this.peerStates.set(id, state);
  }

  forget(id) {
    this.streams.delete(id);
    this.peerStates.delete(id);
  }

  /** Bring the grid in line with the participants (those in the call get a tile). */
  render(participants) {
    const me = this.mySessionId();
    const inCall = participants.filter((p) => p.in_call || p.id === me);
    const wanted = new Set(inCall.map((p) => p.id));
    for (const [id, entry] of this.tiles) {
      if (!wanted.has(id)) {
        entry.tile.remove();
        this.tiles.delete(id);
      }
    }
    inCall.forEach((p, index) => {
      const entry = this.tiles.get(p.id) ?? this._create(p.id === me);
      this.tiles.set(p.id, entry);
      this._update(entry, p, p.id === me);
      // Move a tile only when it is out of place: a video element taken out of the
      // document pauses.
      const at = this.grid.children[index];
      if (at !== entry.tile) this.grid.insertBefore(entry.tile, at ?? null);
    });
    this.grid.dataset.count = String(inCall.length);
  }

  /** Try to start sound that the browser blocked; call from a user gesture. */
  resumeSound() {
    for (const { audio } of this.tiles.values()) {
      if (audio.srcObject) audio.play().catch(() => {});
    }
    this.soundBlocked = false;
  }

  _create(mine) {
    const video = el('video', { autoplay: true, playsinline: true, muted: true });
    video.muted = true; // the attribute alone does not mute a srcObject stream
    const audio = el('audio', { autoplay: true });
    const avatar = el('span', { className: 'tile-avatar', 'aria-hidden': 'true' });
    const label = el('span', { className: 'tile-name' });
    const micBadge = el('span', { className: 'tile-mic', role: 'img', 'aria-label': 'Microphone muted', hidden: true }, [icon('mic-off')]);
    const stateBadge = el('span', { className: 'tile-state', hidden: true });
    const tile = el('figure', { className: mine ? 'tile mine' : 'tile' }, [
      video,
      avatar,
      el('figcaption', { className: 'tile-caption' }, [micBadge, label]),
      stateBadge,
      mine ? null : audio,
    ]);
    return { tile, video, audio, avatar, label, micBadge, stateBadge };
  }

  _update(entry, p, mine) {
    const name = nameOf(p);
    const media = p.media || { audio_muted: true, video_muted: true };
    const stream = mine ? this.localStream : this.streams.get(p.id);
    entry.tile.dataset.id = p.id;
    entry.tile.dataset.name = name;
    entry.tile.setAttribute('aria-label', mine ? `${name} (you)` : name);
    entry.avatar.textContent = initials(name);
    entry.avatar.style.setProperty('--hue', String(hue(p.id)));
    entry.label.textContent = mine ? `${name} (you)` : name;
    entry.micBadge.hidden = !media.audio_muted;
    const hasVideo = Boolean(stream && stream.getVideoTracks().some((t) => t.readyState === 'live'));
    entry.tile.classList.toggle('video-off', media.video_muted || !hasVideo);
    if (stream && entry.video.srcObject !== stream) {
      entry.video.srcObject = stream;
      entry.video.play().catch(() => {});
    }
    if (!mine && stream && entry.audio.srcObject !== stream) {
      entry.audio.srcObject = stream;
      entry.audio.play().catch(() => {
        this.soundBlocked = true;
        this.onSoundBlocked();
      });
    }
    const state = mine ? null : this.peerStates.get(p.id);
    let note = '';
    if (!p.live) note = 'Reconnecting\u2026';
    else if (!mine && (state === 'new' || state === 'connecting' || state === undefined)) note = 'Connecting\u2026';
    else if (!mine && (state === 'failed' || state === 'disconnected')) note = 'Connection lost';
    entry.stateBadge.hidden = !note;
    entry.stateBadge.textContent = note;
  }
}
