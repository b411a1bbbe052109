// The room page (/r/{room}): the join form, then chat, participants, and the call.
//
// Flow: the user picks a name (and whether to use camera and microphone); the page asks
// for the devices, connects, and after the first welcome loads the history and joins the
// call (receive-only without devices). After a later welcome it catches up by seq; when
// the session was resumed the peer connections are untouched, when it is a new session
// (the old one expired, or the daemon restarted) the page closes its old peer connections
// and joins the call again, restoring its name, status and media state.

import { Chat } from './chat.js';
import { RoomConnection } from './connection.js';
import { Mesh } from './mesh.js';
import { People } from './people.js';
import { ROOM_NAME } from './limits.js';
import { Tiles } from './tiles.js';

const NAME_KEY = 'roomctl.name';

const $ = (id) => document.getElementById(id);

const room = decodeURIComponent(location.pathname.replace(/^\/r\//, ''));
// An invitation link carries a join token in the fragment (#token=...), which browsers
// never send to the server; it is moved out of the address bar into this tab's storage.
const TOKEN_KEY = `roomctl.token.${location.pathname}`;
const token = readToken();
// The answer of GET /v1/rooms/ROOM/access, once asked (see init and checkAccess).
let accessCheck = Promise.resolve(null);
const state = {
  conn: null,
  mesh: null,
  chat: null,
  people: null,
  tiles: null,
  local: null, // MediaStream of this page's devices, or null (receive-only)
  devices: new Set(), // kinds this page has: 'audio', 'video'
  audioMuted: true,
  videoMuted: true,
  status: 'online',
  statusText: '',
  outbox: [], // messages typed while disconnected, sent after the next welcome
  pendingCheck: null, // {text, seqAfter, by}: a send the connection dropped during
  flushing: false,
};

function readToken() {
  const fromLink = new URLSearchParams(location.hash.slice(1)).get('token');
  if (fromLink) {
    sessionStorage.setItem(TOKEN_KEY, fromLink);
    history.replaceState(null, '', location.pathname + location.search);
  }
  return fromLink || sessionStorage.getItem(TOKEN_KEY);
}

function setText(id, text) {
  $(id).textContent = text;
}

async function init() {
  if (!ROOM_NAME.test(room)) {
    setText('join-error', 'This is not a valid room name.');
    $('join-form').hidden = true;
    return;
  }
  document.title = `${room} \u00b7 roomctl`;
  setText('room-name', room);
  setText('join-room-name', room);
  const saved = localStorage.getItem(NAME_KEY);
  if (saved) $('join-name').value = saved;
  $('join-form').addEventListener('submit', (event) => {
    event.preventDefault();
    join().catch((err) => {
      console.error(err);
      setText('join-error', err.message || String(err));
      $('join-button').disabled = false;
    });
  });
  $('join-name').focus();
  // Asked while the person types their name (no keystroke is lost to a hidden field): a
  // private room without a usable token then gets a page that says so instead of the
  // form, whose every attempt would be refused. join() waits for the answer too.
  accessCheck = checkAccess();
  const access = await accessCheck;
  if (access && !access.admitted) showInvitationNeeded(access);
}

/**
 * Whether the daemon would let this page in with its token (GET /v1/rooms/ROOM/access).
 * Returns {admitted, private, code, message}, or null when it cannot tell (the hello
 * then decides, and a refusal still ends on the invitation page).
 */
async function checkAccess() {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  try {
    const response = await fetch(`/v1/rooms/${encodeURIComponent(room)}/access`,
      { headers, cache: 'no-store' });
    if (!response.ok) return null;
    return await response.json();
  } catch (err) {
    console.info('roomctl: cannot ask whether this room needs a token:', err.message);
    return null;
  }
}

const ACCESS_CODES = new Set(['unauthorized', 'forbidden']);

/** Replace everything with a page saying why this room cannot be joined from here. */
function showInvitationNeeded({ code, message }) {
  // A token that was refused will be refused again: forget it, so that a fresh
  // invitation link opened later in this tab is the one used.
  if (token) sessionStorage.removeItem(TOKEN_KEY);
  let title = 'This room needs an invitation link';
  let reason = `\u201c${room}\u201d is a private room: only people with an invitation link can join it.`;
  let hint = 'Ask whoever runs the room for an invitation link, and open it in this browser.';
  if (token) {
    const expired = /expired/i.test(message || '');
    title = expired ? 'This invitation link has expired'
      : 'This invitation link does not open this room';
    reason = `The daemon refused it (${code}): ${message}.`;
    hint = 'Ask whoever sent it for a new invitation link.';
  }
  setText('invite-title', title);
  setText('invite-reason', reason);
  setText('invite-hint', hint);
  document.title = `${title} \u00b7 roomctl`;
  document.body.classList.remove('in-room');
  $('conn-state').textContent = '';
  $('join-screen').hidden = true;
  $('room-screen').hidden = true;
  $('invite-screen').hidden = false;
}

/** Ask for camera and microphone; fall back to one of them, then to none. */
async function openDevices(wanted) {
  if (!wanted || !navigator.mediaDevices?.getUserMedia) return null;
  for (const constraints of [{ audio: true, video: true }, { audio: true }, { video: true }]) {
    try {
      return await navigator.mediaDevices.getUserMedia(constraints);
    } catch (err) {
      console.info('roomctl: no devices for', constraints, err.name);
    }
  }
  return null;
}

async function join() {
  const access = await accessCheck;
  if (access && !access.admitted) return; // the invitation page is showing instead
  const name = $('join-name').value.trim();
  if (!name) {
    setText('join-error', 'Choose a name first.');
    return;
  }
  $('join-button').disabled = true;
  setText('join-error', '');
  localStorage.setItem(NAME_KEY, name);
  const local = await openDevices($('join-media').checked);
  state.local = local;
  state.devices = new Set(local ? local.getTracks().map((t) => t.kind) : []);
  state.audioMuted = !state.devices.has('audio');
  state.videoMuted = !state.devices.has('video');

  const conn = new RoomConnection(room, { name, token });
  const mySessionId = () => conn.sessionId;
  state.conn = conn;
  state.mesh = new Mesh(conn);
  state.mesh.setLocal(local, state.devices);
  state.chat = new Chat(conn, {
    log: $('messages'), pins: $('pins'), older: $('older'), scroller: $('chat-scroll'),
  });
  state.people = new People($('people'), $('people-count'), mySessionId);
  state.tiles = new Tiles($('tiles'), mySessionId);
  state.tiles.setLocalStream(local);
  state.tiles.onSoundBlocked = () => { $('sound-banner').hidden = false; };

  state.people.addEventListener('change', (event) => state.tiles.render(event.detail.participants));
  state.mesh.addEventListener('peer', (event) => {
    state.tiles.setStream(event.detail.id, event.detail.stream);
    state.tiles.render(state.people.sorted());
  });
  state.mesh.addEventListener('peer-state', (event) => {
    state.tiles.setPeerState(event.detail.id, event.detail.state);
    state.tiles.render(state.people.sorted());
  });
  state.mesh.addEventListener('peer-removed', (event) => {
    state.tiles.forget(event.detail.id);
    state.tiles.render(state.people.sorted());
  });
  conn.addEventListener('state', (event) => showConnection(event.detail));
  conn.addEventListener('frame', (event) => onFrame(event.detail));
  conn.addEventListener('welcome', (event) => {
    onWelcome(event.detail).catch((err) => console.warn('roomctl: after welcome:', err.message));
  });

  wireControls();
  $('join-screen').hidden = true;
  $('room-screen').hidden = false;
  document.body.classList.add('in-room');
  conn.start();
}

async function onWelcome({ welcome, resumed, newSession }) {
  const { conn, mesh, chat, people } = state;
  people.reset(welcome.participants);
  showTopic(welcome.room?.meta?.topic ?? '');
  if (resumed) mesh.flush();
  else if (conn.welcomes > 1 || newSession) mesh.closeAll(); // edges of a session that is gone
  await reconcile();
  await chat.synchronize(welcome);
  requeueIfLost();
  await flushOutbox();
}

/**
 * Make the daemon's view of this participant match the page: name, status, media state,
 * in the call. A new session starts from the daemon's defaults, and a resumed one may have
 * missed a request that the drop cut off; comparing covers both.
 */
async function reconcile() {
  const { conn, people } = state;
  const me = people.me();
  if (!me) return;
  if (me.meta?.name !== conn.name) await conn.request({ type: 'set-name', name: conn.name });
  if ((me.meta?.status ?? 'online') !== state.status || (me.meta?.status_text ?? '') !== state.statusText) {
    await conn.request({ type: 'set-status', status: state.status, text: state.statusText });
  }
  const media = me.media ?? {};
  if (media.audio_muted !== state.audioMuted || media.video_muted !== state.videoMuted) {
    await conn.request({ type: 'set-media-state', audio_muted: state.audioMuted, video_muted: state.videoMuted });
  }
  if (!me.in_call) await conn.request({ type: 'join' });
}

/**
 * A message whose send was cut off by the drop may or may not have been stored. The
 * catch-up has just fetched everything after it was sent: if it is not there, send it
 * again (first, to keep the order); if it is, sending it again would duplicate it.
 */
function requeueIfLost() {
  const check = state.pendingCheck;
  if (!check) return;
  state.pendingCheck = null;
  const stored = [...state.chat.messages.values()].some(
    (m) => m.seq > check.seqAfter && m.sender_id === check.by && m.text === check.text,
  );
  if (!stored) state.outbox.unshift(check.text);
}

function onFrame(frame) {
  const { mesh, chat, people } = state;
  // An add-peer for a newcomer to the call carries its participant view (it stands in for
  // the participant-updated the others get).
  if (frame.type === 'add-peer' && frame.participant) {
    people.handle({ type: 'participant-updated', participant: frame.participant });
  }
  if (mesh.handle(frame) || people.handle(frame)) return;
  switch (frame.type) {
    case 'message-posted':
      chat.posted(frame.message);
      break;
    case 'topic-changed':
      showTopic(frame.topic);
      break;
    case 'pins-changed':
      chat.setPins(frame.pins);
      break;
    default:
      break; // events this page does not know are ignored, as the protocol asks
  }
}

function showConnection({ state: connState, detail, code }) {
  if (connState === 'closed' && ACCESS_CODES.has(code) && !state.conn?.welcomes) {
    // Refused at the door (the check before the join form could not tell, or the token
    // was revoked since): the invitation page, not an empty room.
    state.mesh?.closeAll();
    state.local?.getTracks().forEach((t) => t.stop());
    showInvitationNeeded({ code, message: detail });
    return;
  }
  const badge = $('conn-state');
  badge.dataset.state = connState;
  const words = {
    connecting: 'Connecting\u2026',
    open: 'Connected',
    reconnecting: 'Reconnecting\u2026',
    closed: detail || 'Disconnected',
  };
  badge.textContent = words[connState] || connState;
  $('compose-send').disabled = connState === 'closed';
  if (connState === 'closed') {
    // Removed, refused or left: the call is over for this page, and so is the camera.
    state.mesh?.closeAll();
    state.local?.getTracks().forEach((t) => t.stop());
    setText('room-closed', detail || 'Disconnected.');
    $('room-closed').hidden = false;
  }
}

function showTopic(topic) {
  const node = $('topic');
  node.textContent = topic || 'No topic';
  node.classList.toggle('placeholder', !topic);
  $('topic-input').value = topic;
}

// --- controls ------------------------------------------------------------------------

function wireControls() {
  const { conn } = state;
  const compose = $('compose-text');
  $('compose').addEventListener('submit', (event) => {
    event.preventDefault();
    send();
  });
  compose.addEventListener('keydown', (event) => {
    // Enter sends; Shift+Enter starts a new line; never while an IME is composing.
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  compose.addEventListener('input', autosize);

  const mic = $('toggle-mic');
  const cam = $('toggle-cam');
  mic.disabled = !state.devices.has('audio');
  cam.disabled = !state.devices.has('video');
  if (mic.disabled) mic.title = 'No microphone';
  if (cam.disabled) cam.title = 'No camera';
  mic.addEventListener('click', () => toggleMic().catch((err) => console.warn(err)));
  cam.addEventListener('click', () => toggleCam().catch((err) => console.warn(err)));
  showMediaButtons();
  $('leave').addEventListener('click', async () => {
    state.mesh.closeAll();
    state.local?.getTracks().forEach((t) => t.stop());
    await conn.leave();
    location.assign('/');
  });

  $('status-select').addEventListener('change', () => updateStatus());
  $('status-form').addEventListener('submit', (event) => {
    event.preventDefault();
    updateStatus();
  });

  $('topic-edit').addEventListener('click', () => {
    $('topic-form').hidden = false;
    $('topic-edit').hidden = true;
    $('topic-input').focus();
  });
  $('topic-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      await conn.request({ type: 'set-topic', topic: $('topic-input').value.trim() });
    } catch (err) {
      console.warn('roomctl: set-topic failed:', err.message);
    }
    closeTopicForm();
  });
  $('topic-input').addEventListener('keydown', (event) => {
    if (event.key === 'Escape') closeTopicForm();
  });
  $('sound-banner').addEventListener('click', () => {
    state.tiles.resumeSound();
    $('sound-banner').hidden = true;
  });
}

function closeTopicForm() {
  $('topic-form').hidden = true;
  $('topic-edit').hidden = false;
}

function autosize() {
  const box = $('compose-text');
  box.style.height = 'auto';
  box.style.height = `${Math.min(box.scrollHeight, 160)}px`;
}

async function send() {
  const box = $('compose-text');
  const text = box.value.trim();
  if (!text) return;
  box.value = '';
  autosize();
  state.outbox.push(text);
  await flushOutbox();
}

/** Send queued messages in order; anything unsent waits for the next welcome. */
async function flushOutbox() {
  // One sender at a time: a second one would send the message still awaiting its ok.
  if (state.flushing) return;
  state.flushing = true;
  let refusal = null;
  try {
    refusal = await sendQueued();
  } finally {
    state.flushing = false;
  }
  const waiting = state.outbox.length ? `${state.outbox.length} waiting to be sent` : '';
  $('compose-hint').textContent = refusal ? `Not sent: ${refusal}` : waiting;
}

/** Send the outbox in order; returns the daemon's reason when it refused a message. */
async function sendQueued() {
  const { conn } = state;
  while (state.outbox.length && conn.isOpen()) {
    const text = state.outbox[0];
    try {
      // The message shows when its message-posted broadcast arrives, right after the ok.
      await conn.request({ type: 'send-message', text });
      state.outbox.shift();
    } catch (err) {
      if (err.code) {
        state.outbox.shift(); // refused (too long, rate limited...): it will not pass later
        return err.message;
      }
      // Dropped before the reply: the catch-up after the next welcome shows whether it
      // was stored, so it is not sent twice.
      const sent = state.outbox.shift();
      state.pendingCheck = { text: sent, seqAfter: state.chat.lastSeq, by: conn.sessionId };
      break;
    }
  }
  return null;
}

async function toggleMic() {
  const track = state.local?.getAudioTracks()[0];
  if (!track) return;
  state.audioMuted = !state.audioMuted;
  track.enabled = !state.audioMuted;
  showMediaButtons();
  await reportMedia();
}

async function toggleCam() {
  const { mesh, tiles } = state;
  if (!state.devices.has('video')) return;
  const button = $('toggle-cam');
  button.disabled = true;
  try {
    if (!state.videoMuted) {
      // Turning the camera off releases it (its light goes out), not just blanks it.
      for (const track of state.local.getVideoTracks()) {
        track.stop();
        state.local.removeTrack(track);
      }
      await mesh.replaceTrack('video', null);
      state.videoMuted = true;
    } else {
      const fresh = await navigator.mediaDevices.getUserMedia({ video: true });
      const track = fresh.getVideoTracks()[0];
      state.local.addTrack(track);
      await mesh.replaceTrack('video', track);
      state.videoMuted = false;
    }
  } finally {
    button.disabled = false;
  }
  showMediaButtons();
  tiles.render(state.people.sorted());
  await reportMedia();
}

async function reportMedia() {
  try {
    await state.conn.request({ type: 'set-media-state', audio_muted: state.audioMuted, video_muted: state.videoMuted });
  } catch (err) {
    console.info('roomctl: media state not sent (sent again after reconnecting):', err.message);
  }
}

function showMediaButtons() {
  const mic = $('toggle-mic');
  const cam = $('toggle-cam');
  mic.setAttribute('aria-pressed', String(state.audioMuted));
  mic.setAttribute('aria-label', state.audioMuted ? 'Unmute microphone' : 'Mute microphone');
  mic.classList.toggle('off', state.audioMuted);
  mic.querySelector('use').setAttribute('href', state.audioMuted ? '#i-mic-off' : '#i-mic');
  cam.setAttribute('aria-pressed', String(state.videoMuted));
  cam.setAttribute('aria-label', state.videoMuted ? 'Turn camera on' : 'Turn camera off');
  cam.classList.toggle('off', state.videoMuted);
  cam.querySelector('use').setAttribute('href', state.videoMuted ? '#i-cam-off' : '#i-cam');
}

async function updateStatus() {
  state.status = $('status-select').value;
  state.statusText = $('status-text').value.trim();
  try {
    await state.conn.request({ type: 'set-status', status: state.status, text: state.statusText });
  } catch (err) {
    console.info('roomctl: status not sent (sent again after reconnecting):', err.message);
  }
}

// For debugging in the console, and for the browser tests: read-only views of the state.
window.roomctl = {
  room,
  screen: () => ['invite-screen', 'join-screen', 'room-screen'].find((id) => !$(id).hidden) ?? null,
  state: () => ({
    connection: state.conn?.state ?? 'idle',
    sessionId: state.conn?.sessionId ?? null,
    welcomes: state.conn?.welcomes ?? 0,
    lastSeq: state.chat?.lastSeq ?? 0,
    seqs: state.chat ? [...state.chat.messages.keys()].sort((a, b) => a - b) : [],
    caughtUp: state.chat?.caughtUp ?? 0,
    audioMuted: state.audioMuted,
    videoMuted: state.videoMuted,
  }),
  stats: () => state.mesh?.stats() ?? Promise.resolve({}),
};

init().catch((err) => console.error(err));
