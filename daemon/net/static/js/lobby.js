// The lobby (/): the public rooms, and a form to go to any room by name.

import { el } from './dom.js';
import { ROOM_NAME, ROOM_NAME_RULE, ROOMS_PATH } from './limits.js';

const REFRESH_MS = 15000;

const list = document.getElementById('rooms');
const note = document.getElementById('rooms-note');

async function refresh() {
  try {
    const response = await fetch(ROOMS_PATH, { headers: { Accept: 'application/json' } });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const { rooms } = await response.json();
    list.replaceChildren(...rooms.map((room) => el('li', { className: 'room-entry' }, [
      el('a', { href: `/r/${encodeURIComponent(room.name)}` }, [
        el('span', { className: 'room-entry-name', text: room.name }),
        el('span', { className: 'room-entry-topic', text: room.topic || 'No topic' }),
        el('span', {
          className: 'room-entry-count',
          text: room.participants === 1 ? '1 person' : `${room.participants} people`,
        }),
      ]),
    ])));
    note.textContent = rooms.length ? '' : 'No public rooms right now.';
  } catch (err) {
    note.textContent = `Could not load the rooms (${err.message}).`;
  }
}

document.getElementById('room-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const name = document.getElementById('room-input').value.trim();
  const error = document.getElementById('room-error');
  if (!ROOM_NAME.test(name)) {
    error.textContent = `Use ${ROOM_NAME_RULE}.`;
    return;
  }
  error.textContent = '';
  location.assign(`/r/${encodeURIComponent(name)}`);
});

refresh();
setInterval(refresh, REFRESH_MS);
