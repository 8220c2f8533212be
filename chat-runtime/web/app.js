// Chorus web client: plain JavaScript, no build step. It keeps, per room, the
// last seq it has seen and the server's epoch, so a reconnect resumes exactly
// where it left off (docs/protocol.md, "Resume").
'use strict';

const $ = (id) => document.getElementById(id);
// The token lives in sessionStorage: it survives a reload of this tab but
// is not shared with other tabs nor kept after the tab closes, and it never
// goes into a URL: the socket is opened with a one-time ticket.
const TOKEN_KEY = 'chorus.token';
localStorage.removeItem(TOKEN_KEY); // from earlier versions of this client
const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  user: null,
  epoch: null,
  ws: null,
  rooms: new Map(), // id -> {info, messages: Map(seq -> msg), cursor, oldest, more}
  current: null,
  typing: new Map(), // username -> timer
  presence: new Map(), // user id -> status
  members: new Map(), // user id -> username, for the current room
  backoff: 500,
  lastTypingSent: 0,
  reqId: 0,
  // Sends not yet acknowledged, by client_msg_id: shown as pending, resent
  // after a reconnect (the server answers a repeat with the original ack).
  pending: new Map(), // client_msg_id -> {room, body, failed}
};

// Calls fn at most once every ms milliseconds; a call in between runs once
// at the end of the interval (so the latest state is always sent).
function throttled(fn, ms) {
  let last = 0;
  let timer = null;
  return function () {
    const wait = last + ms - Date.now();
    if (wait <= 0) { last = Date.now(); fn(); return; }
    if (!timer) timer = setTimeout(() => { timer = null; last = Date.now(); fn(); }, wait);
  };
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: Object.assign({'content-type': 'application/json'}, state.token ? {authorization: 'Bearer ' + state.token} : {}),
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = new Error((data.error && data.error.message) || res.statusText);
    err.status = res.status;
    throw err;
  }
  return data;
}

// ---- authentication ----

async function authenticate(kind) {
  $('auth-error').textContent = '';
  try {
    const data = await api('POST', '/api/v1/auth/' + kind, {username: $('username').value.trim(), password: $('password').value});
    state.token = data.token;
    sessionStorage.setItem(TOKEN_KEY, data.token);
    await start();
  } catch (e) {
    $('auth-error').textContent = e.message;
  }
}

$('auth-form').addEventListener('submit', (e) => { e.preventDefault(); authenticate('login'); });
$('signup').addEventListener('click', () => authenticate('signup'));
$('logout').addEventListener('click', async () => {
  try { await api('POST', '/api/v1/auth/logout'); } catch (_) { /* already gone */ }
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
});

async function start() {
  try {
    state.user = (await api('GET', '/api/v1/me')).user;
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    $('auth').hidden = false;
    $('chat').hidden = true;
    return;
  }
  $('auth').hidden = true;
  $('chat').hidden = false;
  $('me-name').textContent = state.user.display_name;
  await refreshRooms();
  connect();
}

// ---- rooms ----

function roomState(id) {
  if (!state.rooms.has(id)) state.rooms.set(id, {info: null, messages: new Map(), cursor: null, oldest: null, more: true, loaded: false});
  return state.rooms.get(id);
}

async function refreshRooms() {
  const joined = (await api('GET', '/api/v1/rooms')).rooms;
  const list = $('rooms');
  list.innerHTML = '';
  for (const r of joined) {
    roomState(r.id).info = r;
    const li = document.createElement('li');
    li.dataset.room = r.id;
    li.className = r.id === state.current ? 'active' : '';
    li.textContent = (r.kind === 'dm' ? '@ ' : '# ') + r.name;
    if (r.unread > 0 && r.id !== state.current) {
      const b = document.createElement('span');
      b.className = 'badge';
      b.textContent = r.unread;
      li.appendChild(b);
    }
    li.addEventListener('click', () => openRoom(r.id).catch((e) => console.warn('chorus: opening the room failed:', e.message)));
    list.appendChild(li);
  }
  const pub = (await api('GET', '/api/v1/rooms?scope=public')).rooms.filter((r) => !r.role);
  const plist = $('public-rooms');
  plist.innerHTML = '';
  for (const r of pub) {
    const li = document.createElement('li');
    li.textContent = '# ' + r.name + ' (' + r.members + ')';
    li.dataset.publicRoom = r.id;
    li.addEventListener('click', async () => {
      try {
        await api('POST', '/api/v1/rooms/' + r.id + '/join');
        await refreshRooms();
        subscribe(r.id);
        await openRoom(r.id);
      } catch (err) {
        alert(err.message);
      }
    });
    plist.appendChild(li);
  }
  return joined;
}

$('new-room').addEventListener('submit', async (e) => {
  e.preventDefault();
  try {
    const data = await api('POST', '/api/v1/rooms', {name: $('new-room-name').value, kind: $('new-room-kind').value});
    $('new-room-name').value = '';
    await refreshRooms();
    subscribe(data.room.id);
    await openRoom(data.room.id);
  } catch (err) {
    alert(err.message);
  }
});

$('new-dm').addEventListener('submit', async (e) => {
  e.preventDefault();
  try {
    const data = await api('POST', '/api/v1/dms', {user: $('dm-user').value.trim()});
    $('dm-user').value = '';
    await refreshRooms();
    subscribe(data.room.id);
    openRoom(data.room.id);
  } catch (err) {
    alert(err.message);
  }
});

async function openRoom(id) {
  state.current = id;
  const rs = roomState(id);
  $('room-title').textContent = rs.info ? (rs.info.kind === 'dm' ? '@ ' : '# ') + rs.info.name : 'room ' + id;
  $('message').disabled = false;
  $('send').disabled = false;
  for (const li of $('rooms').children) li.classList.toggle('active', Number(li.dataset.room) === id);
  if (!rs.loaded) await loadOlder(id, true);
  render();
  markRead();
  await loadPresence(id);
}

async function loadOlder(id, first) {
  const rs = roomState(id);
  if (!first && !rs.more) return;
  const q = rs.oldest ? '?limit=50&before=' + rs.oldest : '?limit=50';
  const data = await api('GET', '/api/v1/rooms/' + id + '/messages' + q);
  for (const m of data.messages) rs.messages.set(m.seq, m);
  if (data.messages.length) rs.oldest = data.messages[data.messages.length - 1].seq;
  rs.more = data.next_before !== null;
  rs.loaded = true;
}

$('messages').addEventListener('scroll', async () => {
  const box = $('messages');
  if (box.scrollTop === 0 && state.current !== null) {
    const before = box.scrollHeight;
    try { await loadOlder(state.current, false); } catch (_) { return; /* offline: the next scroll retries */ }
    render(true);
    box.scrollTop = box.scrollHeight - before;
  }
});

// ---- rendering ----

function render(keepScroll) {
  const rs = state.current !== null ? roomState(state.current) : null;
  const box = $('messages');
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  box.innerHTML = '';
  if (!rs) return;
  const seqs = [...rs.messages.keys()].sort((a, b) => a - b);
  for (const seq of seqs) {
    const m = rs.messages.get(seq);
    const div = document.createElement('div');
    div.className = 'message' + (m.deleted ? ' deleted' : '') + (m.system ? ' system' : '');
    div.dataset.seq = seq;
    if (m.system) {
      div.textContent = m.body;
    } else {
      const who = document.createElement('span');
      who.className = 'who';
      who.textContent = m.sender;
      const body = document.createElement('span');
      body.className = 'body';
      body.textContent = m.deleted ? '(deleted)' : m.body;
      div.append(who, body);
      if (m.edited_at && !m.deleted) {
        const e = document.createElement('span');
        e.className = 'edited';
        e.textContent = '(edited)';
        div.appendChild(e);
      }
      if (m.reactions && m.reactions.length) {
        const r = document.createElement('span');
        r.className = 'reactions';
        r.textContent = m.reactions.map((x) => x.emoji + ' ' + x.count).join('  ');
        div.appendChild(r);
      }
    }
    box.appendChild(div);
  }
  for (const [cid, p] of state.pending) {
    if (p.room !== state.current) continue;
    const div = document.createElement('div');
    div.className = 'message pending' + (p.failed ? ' failed' : '');
    div.dataset.clientMsgId = cid;
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = state.user ? state.user.username : '';
    const body = document.createElement('span');
    body.className = 'body';
    body.textContent = p.body;
    const note = document.createElement('span');
    note.className = 'edited';
    note.textContent = p.failed ? '(not sent: ' + p.failed + ')' : '(sending…)';
    div.append(who, body, note);
    box.appendChild(div);
  }
  // Follow new messages when the reader is at the bottom (or just opened the room).
  if (!keepScroll && (atBottom || box.dataset.room !== String(state.current))) box.scrollTop = box.scrollHeight;
  box.dataset.room = String(state.current);
}

function renderTyping() {
  const names = [...state.typing.keys()];
  $('typing').textContent = names.length ? names.join(', ') + (names.length === 1 ? ' is typing…' : ' are typing…') : '';
}

async function loadPresence(id) {
  try {
    const [p, m] = await Promise.all([api('GET', '/api/v1/rooms/' + id + '/presence'), api('GET', '/api/v1/rooms/' + id + '/members')]);
    state.members = new Map(m.members.map((x) => [x.id, x.username]));
    state.presence = new Map(Object.entries(p.users || {}).map(([k, v]) => [Number(k), v]));
    renderPresence();
  } catch (_) { /* not a member any more */ }
}

function renderPresence() {
  const list = $('presence');
  list.innerHTML = '';
  for (const [id, name] of state.members) {
    const status = state.presence.get(id) || 'offline';
    if (status === 'offline') continue;
    const li = document.createElement('li');
    li.className = status;
    li.dataset.user = name;
    li.textContent = name + (status === 'away' ? ' (away)' : '');
    list.appendChild(li);
  }
}

function setStatus(s, text) {
  const el = $('status');
  el.dataset.state = s;
  el.textContent = text;
}

// ---- the socket ----

function send(frame) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(frame));
}

function subscribe(id) {
  const rs = roomState(id);
  const frame = {type: 'subscribe', id: 'sub-' + id, room: id};
  if (state.epoch && rs.cursor !== null) { frame.epoch = state.epoch; frame.last_seq = rs.cursor; }
  send(frame);
}

function reconnectLater() {
  setStatus('reconnecting', 'reconnecting…');
  // Jittered backoff: a restarting server does not get all clients at once.
  const delay = state.backoff * (0.5 + Math.random());
  state.backoff = Math.min(state.backoff * 2, 10000);
  setTimeout(connect, delay);
}

function loggedOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
}

async function connect() {
  const attempt = {};
  state.ws = attempt;
  setStatus(state.epoch ? 'reconnecting' : 'connecting', state.epoch ? 'reconnecting…' : 'connecting…');
  // A one-time ticket keeps the token out of the URL (and access logs).
  let ticket;
  try {
    ticket = (await api('POST', '/api/v1/ws-ticket')).ticket;
  } catch (e) {
    if (state.ws !== attempt) return;
    if (e.status === 401) { loggedOut(); return; }
    reconnectLater();
    return;
  }
  if (state.ws !== attempt) return;
  const proto = location.protocol === 'https:' ? 'wss://' : 'ws://';
  const ws = new WebSocket(proto + location.host + '/ws?ticket=' + encodeURIComponent(ticket));
  state.ws = ws;
  ws.onmessage = (ev) => onFrame(JSON.parse(ev.data));
  ws.onclose = (ev) => {
    if (state.ws !== ws) return;
    if (ev.code === 4001) { loggedOut(); return; }
    reconnectLater();
  };
}

function onFrame(f) {
  switch (f.type) {
    case 'hello':
      state.backoff = 500;
      if (state.epoch && state.epoch !== f.epoch) {
        for (const rs of state.rooms.values()) { rs.cursor = null; rs.messages.clear(); rs.loaded = false; rs.oldest = null; }
      }
      state.epoch = f.epoch;
      setStatus('online', 'connected');
      for (const id of state.rooms.keys()) if (roomState(id).info && roomState(id).info.role) subscribe(id);
      for (const cid of state.pending.keys()) sendPending(cid);
      break;
    case 'subscribed': {
      const rs = roomState(f.room);
      if (!f.recovered) {
        // Fresh, too far behind, or another epoch: reload the latest page.
        rs.messages.clear(); rs.oldest = null; rs.loaded = false;
        rs.cursor = f.last_seq;
        // A failed load (the server went away meanwhile) waits for the next
        // subscribe, which reloads; it must not become an uncaught error.
        if (f.room === state.current) loadOlder(f.room, true).then(() => render(), () => {});
      }
      break;
    }
    case 'event': onEvent(f); break;
    case 'ack':
      if (f.client_msg_id && state.pending.delete(f.client_msg_id)) render(true);
      break;
    case 'unsubscribed':
      if (f.reason) refreshRoomsSoon();
      break;
    case 'typing': {
      const name = f.user.username;
      clearTimeout(state.typing.get(name));
      if (f.room === state.current) {
        state.typing.set(name, setTimeout(() => { state.typing.delete(name); renderTyping(); }, 5000));
        renderTyping();
      }
      break;
    }
    case 'presence':
      state.presence.set(f.user, f.status);
      renderPresence();
      break;
    case 'ping': send({type: 'pong'}); break;
    case 'error': {
      const p = f.id && state.pending.get(f.id);
      if (p) {
        if (f.code === 'rate_limited' || f.code === 'internal') {
          setTimeout(() => sendPending(f.id), f.retry_after_ms || 1000);
        } else {
          p.failed = f.message;
          render(true);
        }
      }
      console.warn('chorus:', f.code, f.message);
      break;
    }
    default: break;
  }
}

function onEvent(e) {
  const rs = roomState(e.room);
  if (rs.cursor !== null && e.seq <= rs.cursor) return; // already have it
  rs.cursor = e.seq;
  if (e.kind === 'message') {
    if (state.user && e.sender.id === state.user.id) state.pending.delete(e.client_msg_id);
    rs.messages.set(e.seq, {seq: e.seq, sender: e.sender.username, body: e.body, created_at: e.created_at, reactions: [], thread_root: e.thread_root});
    if (state.typing.has(e.sender.username)) { clearTimeout(state.typing.get(e.sender.username)); state.typing.delete(e.sender.username); renderTyping(); }
  } else if (e.kind === 'edit') {
    const m = rs.messages.get(e.message_seq);
    if (m) { m.body = e.body; m.edited_at = e.edited_at; }
  } else if (e.kind === 'delete') {
    const m = rs.messages.get(e.message_seq);
    if (m) m.deleted = true;
  } else if (e.kind === 'reaction') {
    const m = rs.messages.get(e.message_seq);
    if (m) {
      m.reactions = m.reactions || [];
      let r = m.reactions.find((x) => x.emoji === e.emoji);
      if (!r) { r = {emoji: e.emoji, count: 0}; m.reactions.push(r); }
      r.count += e.on ? 1 : -1;
      m.reactions = m.reactions.filter((x) => x.count > 0);
    }
  } else if (e.kind === 'member') {
    rs.messages.set(e.seq, {seq: e.seq, system: true, body: e.user.username + ' ' + e.action});
    if (e.room === state.current) loadPresence(e.room);
  }
  if (e.room === state.current) { render(); markRead(); } else refreshRoomsSoon();
}

// Room lists (two REST calls) and read positions follow events, which can
// come many per second: both are throttled.
const refreshRoomsSoon = throttled(() => { refreshRooms().catch(() => {}); }, 2000);

const markRead = throttled(() => {
  const rs = state.current !== null ? roomState(state.current) : null;
  if (rs && rs.cursor !== null && rs.cursor !== rs.readSent && state.ws && state.ws.readyState === WebSocket.OPEN) {
    rs.readSent = rs.cursor;
    send({type: 'read', room: state.current, seq: rs.cursor});
  }
}, 1000);

function sendPending(cid) {
  const p = state.pending.get(cid);
  if (p && !p.failed) send({type: 'send', id: cid, room: p.room, client_msg_id: cid, body: p.body});
}

$('composer').addEventListener('submit', (e) => {
  e.preventDefault();
  const text = $('message').value;
  if (!text.trim() || state.current === null) return;
  const id = 'web-' + Date.now().toString(36) + '-' + Math.random().toString(36).slice(2, 8);
  // Kept until acknowledged: a send while disconnected goes out after the
  // reconnect instead of being lost.
  state.pending.set(id, {room: state.current, body: text, failed: null});
  sendPending(id);
  $('message').value = '';
  render();
});

$('message').addEventListener('input', () => {
  const now = Date.now();
  if (state.current !== null && now - state.lastTypingSent > 3000) {
    state.lastTypingSent = now;
    send({type: 'typing', room: state.current});
  }
});

document.addEventListener('visibilitychange', () => send({type: 'presence', status: document.hidden ? 'away' : 'online'}));

if (state.token) start();
