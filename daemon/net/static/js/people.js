// The participant list: who is here, their status, whether their connection is live, and
// what they send into the call. It is rebuilt from every welcome and then kept current
// with participant-joined, -updated and -left deltas, by id.

import { el, hue, icon, initials } from './dom.js';

const STATUS_WORDS = { online: 'Online', away: 'Away', busy: 'Busy' };

/** The display name of a participant view (chat rooms put it in meta.name). */
export function nameOf(participant) {
  return participant?.meta?.name || 'guest';
}

export class People extends EventTarget {
  /**
   * @param {HTMLElement} list the <ul> to render into
   * @param {HTMLElement} count where the number of participants goes
   * @param {() => string|null} mySessionId
   * Event "change" (detail {participants}) after every change.
   */
  constructor(list, count, mySessionId) {
    super();
    this.list = list;
    this.count = count;
    this.mySessionId = mySessionId;
    /** @type {Map<string, object>} */
    this.byId = new Map();
  }

  /** Replace everything with the welcome's list. */
  reset(participants) {
    this.byId = new Map(participants.map((p) => [p.id, p]));
    this._changed();
  }

  /** Apply a participant-joined/-updated/-left event; returns whether it was one. */
  handle(frame) {
    switch (frame.type) {
      case 'participant-joined':
      case 'participant-updated':
        this.byId.set(frame.participant.id, frame.participant);
        break;
      case 'participant-left':
        this.byId.delete(frame.participant_id);
        break;
      case 'participants':
        this.reset(frame.participants);
        return true;
      default:
        return false;
    }
    this._changed();
    return true;
  }

  me() {
    return this.byId.get(this.mySessionId()) ?? null;
  }

  /** Participants in display order: you first, then by name. */
  sorted() {
    const me = this.mySessionId();
    return [...this.byId.values()].sort((a, b) => {
      if (a.id === me) return -1;
      if (b.id === me) return 1;
      return nameOf(a).localeCompare(nameOf(b)) || a.id.localeCompare(b.id);
    });
  }

  _changed() {
    const participants = this.sorted();
    this.list.replaceChildren(...participants.map((p) => this._row(p)));
    this.count.textContent = String(participants.length);
    this.dispatchEvent(new CustomEvent('change', { detail: { participants } }));
  }

  _row(p) {
    const me = p.id === this.mySessionId();
    const name = nameOf(p);
    const status = p.meta?.status || 'online';
    const statusText = p.meta?.status_text || '';
    const media = p.media || { audio_muted: true, video_muted: true };
    const avatar = el('span', { className: 'avatar', 'aria-hidden': 'true', text: initials(name) });
    avatar.style.setProperty('--hue', String(hue(p.id)));
    const describe = p.live
      ? [STATUS_WORDS[status] || status, statusText].filter(Boolean).join(' \u2014 ')
      : 'Reconnecting\u2026';
    const mediaIcons = p.in_call
      ? el('span', { className: 'media' }, [
        el('span', {
          className: media.audio_muted ? 'mic off' : 'mic on',
          role: 'img',
          'aria-label': media.audio_muted ? 'Microphone muted' : 'Microphone on',
          title: media.audio_muted ? 'Microphone muted' : 'Microphone on',
        }, [icon(media.audio_muted ? 'mic-off' : 'mic')]),
        el('span', {
          className: media.video_muted ? 'cam off' : 'cam on',
          role: 'img',
          'aria-label': media.video_muted ? 'Camera off' : 'Camera on',
          title: media.video_muted ? 'Camera off' : 'Camera on',
        }, [icon(media.video_muted ? 'cam-off' : 'cam')]),
      ])
      : el('span', { className: 'media chat-only', text: 'chat' });
    return el('li', {
      className: `person status-${status}${p.live ? '' : ' away-conn'}${me ? ' me' : ''}`,
      dataset: {
        id: p.id,
        name,
        live: String(Boolean(p.live)),
        status,
        audioMuted: String(Boolean(media.audio_muted)),
        videoMuted: String(Boolean(media.video_muted)),
      },
    }, [
      el('span', { className: 'avatar-wrap' }, [
        avatar,
        el('span', { className: 'status-dot', role: 'img', 'aria-label': STATUS_WORDS[status] || status }),
      ]),
      el('span', { className: 'who' }, [
        el('span', { className: 'name' }, [name, me ? el('span', { className: 'you', text: ' (you)' }) : null]),
        el('span', { className: p.live ? 'detail' : 'detail reconnecting', text: describe }),
      ]),
      mediaIcons,
    ]);
  }
}
