// peerlog web UI: a client of the daemon's WebSocket API (docs/API.md), nothing more.
// All text from peers goes into the page with textContent, never as HTML.

const $ = (id) => document.getElementById(id);
// A new element with a class and text (text always as text, never HTML).
function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text != null) e.textContent = text;
  return e;
}
const PAGE = 50;

const state = {
  ws: null,
  nextId: 1,
  pending: new Map(),         // request id -> {resolve, reject}
  rooms: [],                  // from rooms.list
  current: null,              // room id
  messages: new Map(),        // room id -> array of messages (oldest first)
  complete: new Set(),        // room ids whose history is fully loaded
  unread: new Map(),          // room id -> count
  preview: new Map(),         // room id -> last message
  sending: new Map(),         // room id -> array of pending local sends
  sync: new Map(),            // room id -> last sync.progress
  members: new Map(),         // room id -> Map(author -> member from rooms.members)
  files: new Map(),           // file id -> last file.progress
  seen: new Map(),            // room id -> our messages below this seq were seen by a peer
  node: null,                 // last node.info
  unreadFrom: new Map(),      // room id -> its oldest message that arrived unseen (the divider)
  retry: 500,
  loadingOlder: false,
};

// The invite in a text: a bare `peerlog:` invite or any link carrying one (`#join=…`), with
// the room name its sender suggests.
function parseInvite(text) {
  const m = /peerlog:(?:[a-z2-7]{103}|[a-z2-7]{52})(\?name=[^\s&#]*)?/i.exec(text || "");
  if (!m) return null;
  let name = null;
  try { name = m[1] ? decodeURIComponent(m[1].slice(6)) : null; } catch { name = null; }
  return { invite: m[0], name };
}
// Puts an invite into the Join box, for the person to look at and confirm: never joins by
// itself. Kept (this browser only) until a signed-in page has shown it.
function offerInvite(text) {
  const inv = parseInvite(text);
  if (!inv) return;
  localStorage.setItem("peerlog-join", inv.invite);
  $("join-secret").value = inv.invite;
  $("join-secret").dispatchEvent(new Event("input"));
  $("app").classList.add("show-rooms");
}
function takeHash() {
  const r = location.hash.match(/room=([0-9a-f]+)/);
  const j = location.hash.match(/join=([^&]+)/);
  if (r) localStorage.setItem("peerlog-room", r[1]);
  if (j) {
    let text = j[1];
    // Some apps percent-encode the whole fragment.
    if (!text.includes(":")) { try { text = decodeURIComponent(text); } catch { /* not encoded */ } }
    offerInvite(text);
  }
  if ((r || j) && !/token=/.test(location.hash)) history.replaceState(null, "", location.pathname);
}

// ----- token -----
// The link from `peerlog open` carries the API token in its fragment. The page trades it
// for a session cookie (HttpOnly, SameSite=Strict) and clears the address bar: from then
// on plain http://127.0.0.1:<port>/ opens in this browser. Without cookies the token is
// kept for this tab only, as before.
async function takeToken() {
  const m = location.hash.match(/token=([0-9a-fA-F]+)/);
  takeHash();
  if (m) {
    history.replaceState(null, "", location.pathname); // keep the token out of the address bar
    const session = await fetch("/api/session", { method: "POST", headers: { Authorization: `Bearer ${m[1]}` } });
    if (session.ok && (await fetch("/api/session")).ok) {
      sessionStorage.removeItem("peerlog-token");
      return "cookie";
    }
    sessionStorage.setItem("peerlog-token", m[1]);
  }
  const kept = sessionStorage.getItem("peerlog-token");
  if (kept && (await fetch(`/api/session?token=${encodeURIComponent(kept)}`)).ok) return kept;
  sessionStorage.removeItem("peerlog-token"); // rotated, or none
  return (await fetch("/api/session")).ok ? "cookie" : null;
}

// ----- connection -----
async function connect() {
  let token;
  try { token = await takeToken(); } catch { token = undefined; }
  if (token === undefined) {
    // The daemon itself is unreachable: retry.
    setConn("down", "Daemon unreachable; retrying…");
    state.retryTimer = setTimeout(connect, state.retry);
    state.retry = Math.min(state.retry * 2, 10000);
    return;
  }
  state.token = token;
  if (!token) {
    showWelcome("Open peerlog with its link", "Run `peerlog open` on this machine: it prints the address of this page with the access token. (A rotated token signs this browser out.)");
    setConn("down", "No access token");
    return;
  }
  const query = token === "cookie" ? "" : `?token=${encodeURIComponent(token)}`;
  const ws = new WebSocket(`ws://${location.host}/api/ws${query}`);
  state.ws = ws;
  setConn("", "Connecting to the daemon…");
  ws.onopen = async () => {
    state.retry = 500;
    setConn("ok", "Connected to the daemon");
    try {
      await refreshNode();
      await refreshRooms();
      if (state.current) await openRoom(state.current, true);
      const kept = localStorage.getItem("peerlog-join");
      if (kept && !$("join-secret").value) offerInvite(kept);
    } catch (e) { toast(e.message); }
  };
  ws.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    // Events are JSON-RPC notifications: a method and no id.
    if (msg.method && !("id" in msg)) return onEvent(msg.method, msg.params);
    const p = state.pending.get(msg.id);
    if (!p) return;
    state.pending.delete(msg.id);
    if (msg.error) p.reject(Object.assign(new Error(msg.error.message), { code: msg.error.code })); else p.resolve(msg.result);
  };
  ws.onclose = () => {
    for (const p of state.pending.values()) p.reject(new Error("connection to the daemon lost"));
    state.pending.clear();
    setConn("down", "Daemon unreachable; retrying…");
    state.retryTimer = setTimeout(connect, state.retry);
    state.retry = Math.min(state.retry * 2, 10000);
  };
}

function call(method, params = {}) {
  return new Promise((resolve, reject) => {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return reject(new Error("not connected to the daemon"));
    const id = state.nextId++;
    state.pending.set(id, { resolve, reject });
    state.ws.send(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
  });
}

function setConn(cls, title) {
  const dot = $("conn-dot");
  dot.className = "conn-dot " + cls;
  dot.title = title;
  // Down: say so plainly, send nothing (a draft stays in the box), offer to retry now.
  const down = cls === "down" && state.token !== null;
  $("offline").hidden = !down;
  $("composer-text").disabled = down;
  $("send-button").disabled = down;
  if (down) $("room-meta").textContent = "daemon not answering";
  else if (cls === "ok") renderRoomMeta();
}

// ----- events -----
function onEvent(name, p) {
  if (name === "message") {
    // The newest by the log's order: a catch-up brings the newest pieces first, so the
    // last to arrive is often an old one.
    const shown = state.preview.get(p.room);
    if (!shown || order(shown, p) < 0) state.preview.set(p.room, p);
    // A loaded list is one unbroken stretch of the history, up to the newest message. A
    // catch-up also brings messages older than its first: those are left for `loadOlder`
    // to page in, unless the stretch already reaches back to the room's start. Taking
    // them in would leave a gap that no page ever fills.
    const list = state.messages.get(p.room);
    const inStretch = list && (state.complete.has(p.room) || !list.length || order(list[0], p) < 0);
    const added = inStretch && !list.some((m) => m.id === p.id);
    if (added) {
      insertSorted(list, p);
      const pend = state.sending.get(p.room);
      if (pend && p.mine) { const i = pend.findIndex((s) => s.text === p.text); if (i >= 0) pend.splice(i, 1); }
    }
    // Unread: in another room, in a hidden tab, or while the reader is scrolled up.
    const looking = p.room === state.current && !document.hidden && atBottom();
    if (!p.mine && !looking) {
      state.unread.set(p.room, (state.unread.get(p.room) || 0) + 1);
      const from = state.unreadFrom.get(p.room);
      if (!from || order(p, from) < 0) state.unreadFrom.set(p.room, p);
    }
    renderRooms();
    if (p.room === state.current && added) {
      showArrived(p);
      if (!p.mine) announce(`${nameOf(p.room, p.author, p.author_name)}: ${p.kind === "file" ? "File: " + p.file.name : p.text}`);
    }
    if (p.room === state.current) renderJump();
    if (!p.mine) notifyMention(p);
  } else if (name === "message.updated") {
    applyUpdate(p);
  } else if (name === "peer.joined" || name === "peer.left") {
    refreshRooms().catch(() => {});
    if (p.room === state.current && !$("peers-panel").hidden) refreshPeers().catch(() => {});
  } else if (name === "sync.progress") {
    state.sync.set(p.room, p);
    if (p.room === state.current) renderRoomMeta();
  } else if (name === "peer.connection") {
    if (p.rooms.includes(state.current) && !$("peers-panel").hidden) refreshPeers();
  } else if (name === "message.seen") {
    state.seen.set(p.room, p.seen_below);
    if (p.room === state.current) patchSeen(p.seen_below);
  } else if (name === "file.progress") {
    state.files.set(p.file_id, p);
    if (p.room === state.current) scheduleRender(false);
  } else if (name === "room.moved") {
    // Members were removed: the room moved on (or we were removed from it).
    refreshRooms().then(() => { if (p.id === state.current) openRoom(p.id, true); }).catch(() => {});
  } else if (name === "lagged") {
    if (state.current) openRoom(state.current, true);
  }
}

function order(a, b) {
  return a.lamport - b.lamport || a.time - b.time || (a.author < b.author ? -1 : a.author > b.author ? 1 : a.seq - b.seq);
}
function insertSorted(list, m) {
  let i = list.length;
  while (i > 0 && order(list[i - 1], m) > 0) i--;
  list.splice(i, 0, m);
}

// ----- data -----
async function refreshNode() {
  const n = await call("node.info");
  state.node = n;
  $("profile-form").hidden = !!n.display_name;
  if (!$("node-page").hidden) renderNodePage();
  const badge = $("node-badge");
  badge.textContent = "";
  const line = (t) => { const d = document.createElement("div"); d.textContent = t; badge.append(d); };
  line(`You: ${n.display_name || "(no name yet)"} · ${n.peer_id.slice(0, 8)}…${n.peer_id.slice(-6)}`);
  line(`NAT: ${n.nat_status} · ${n.connected_peers} connection(s) · v${n.version}`);
}

async function refreshRooms() {
  const r = await call("rooms.list");
  state.rooms = r.rooms;
  for (const room of r.rooms) state.seen.set(room.id, Math.max(state.seen.get(room.id) || 0, room.seen_below || 0));
  for (const room of state.rooms) {
    if (!room.seeder && !state.preview.has(room.id)) {
      call("messages.history", { room: room.id, limit: 1 }).then((h) => {
        if (h.messages.length) { state.preview.set(room.id, h.messages[0]); renderRooms(); }
      }).catch(() => {});
    }
  }
  if (state.current && !state.rooms.some((x) => x.id === state.current)) state.current = null;
  renderRooms();
  if (state.current) renderRoomMeta();
  if (!state.current) {
    const last = localStorage.getItem("peerlog-room");
    const pick = state.rooms.find((x) => x.id === last) || state.rooms.filter(listed)[0];
    if (pick) await openRoom(pick.id);
    else showWelcome();
  }
}

async function openRoom(id, reload = false) {
  // The room we leave has been read: its divider goes.
  if (state.current && state.current !== id) state.unreadFrom.delete(state.current);
  saveDraft();
  state.current = id;
  $("node-page").hidden = true;
  localStorage.setItem("peerlog-room", id);
  state.unread.delete(id);
  $("app").classList.remove("show-rooms");
  $("invite-box").hidden = true;
  const room = state.rooms.find((x) => x.id === id);
  if (room && room.seeder) {
    // A blind seeder holds the room's ciphertext only: nothing to show or send.
    state.messages.set(id, []);
    state.complete.add(id);
    $("welcome").hidden = true;
    for (const el of ["messages", "leave-button", "peers-button"]) $(el).hidden = false;
    for (const el of ["composer", "invite-button"]) $(el).hidden = true;
    renderRooms();
    renderRoomMeta();
    const box = $("messages");
    box.replaceChildren(el("p", "empty", "This daemon seeds this room blindly: it stores and serves the room's encrypted log for its members and cannot read it."));
    return;
  }
  if (!state.members.has(id)) await refreshMembers(id).catch(() => {});
  loadUnsent(id);
  if (reload || !state.messages.has(id)) {
    const h = await call("messages.history", { room: id, limit: PAGE });
    state.messages.set(id, h.messages);
    if (h.messages.length < PAGE) state.complete.add(id); else state.complete.delete(id);
  }
  $("welcome").hidden = true;
  for (const el of ["messages", "composer", "invite-button", "peers-button", "leave-button", "search-button", "notify-button"]) $(el).hidden = false;
  renderMoved(room);
  renderNotify();
  if (!reload) { endCompose(); $("search-box").hidden = true; }
  renderRooms();
  renderRoomMeta();
  renderMessages(true);
  // Opened at the first unread message, if it is shown; else at the newest.
  const divider = $("messages").querySelector(".new-divider");
  if (divider && !reload) divider.scrollIntoView({ block: "start" });
  renderJump();
  if (!$("peers-panel").hidden) refreshPeers();
  if (!reload) $("composer-text").value = localStorage.getItem(`peerlog-draft-${id}`) || "";
  $("composer-text").focus();
}

async function loadOlder() {
  const id = state.current;
  const list = state.messages.get(id);
  if (!id || !list || !list.length || state.complete.has(id) || state.loadingOlder) return;
  state.loadingOlder = true;
  try {
    const box = $("messages");
    const before = box.scrollHeight;
    const h = await call("messages.history", { room: id, before: list[0].id, limit: PAGE });
    if (h.messages.length < PAGE) state.complete.add(id);
    state.messages.set(id, h.messages.concat(list));
    renderMessages(false);
    box.scrollTop = box.scrollHeight - before;
  } finally { state.loadingOlder = false; }
}

async function refreshMembers(room) {
  const r = await call("rooms.members", { room });
  state.members.set(room, new Map(r.members.map((m) => [m.author, m])));
  return r.members;
}

// How a writer is shown: your nickname for them, else their display name, else a key prefix.
function nameOf(room, author, fallbackName) {
  const m = (state.members.get(room) || new Map()).get(author);
  if (m && m.mine) return "You";
  return (m && m.nickname) || (m && m.display_name) || fallbackName || short(author);
}

function renderMembers(list) {
  const ul = $("member-list");
  ul.textContent = "";
  for (const m of list) {
    const li = el("li", "member");
    li.dataset.author = m.author;
    const title = m.mine ? `You${m.display_name ? ` (${m.display_name})` : ""}` : (m.nickname || m.display_name || short(m.author));
    li.append(el("div", "m-name", title));
    const room = state.rooms.find((x) => x.id === state.current);
    if (room && (room.admin === m.author || (room.admins || []).includes(m.author))) {
      li.querySelector(".m-name").append(" ", el("span", "pill admin", "admin"));
    }
    if (!m.mine && m.nickname && m.display_name) li.append(el("div", "m-sub", `calls themselves ${m.display_name}`));
    const presence = m.presence || {};
    const here = el("div", "m-sub");
    if (m.devices && m.devices.length > 1) {
      // One person on several devices (devices.link): online if any of them is.
      const on = m.devices.filter((d) => d.online).length;
      here.append(el("span", "pill devices", `${m.devices.length} devices${m.mine ? "" : `, ${on} online`}`));
    }
    if (m.mine) here.append(el("span", "pill direct", "this device"));
    else if (presence.online && presence.connection) {
      here.append(el("span", "pill " + presence.connection, `online · ${presence.connection}`));
      if (presence.rtt_ms != null) here.append(el("span", "pill", `${presence.rtt_ms.toFixed(1)} ms`));
    } else if (presence.online) {
      // No session of ours: its signed presence came through the room's other peers.
      here.append(el("span", "pill", presence.peer_id ? "online · connecting" : "online · through the room"));
    } else here.append(el("span", "pill", presence.last_seen_ms ? `offline · last seen ${ago(presence.last_seen_ms)}` : "offline"));
    li.append(here);
    if (m.safety_number) {
      // Ours and theirs together: they see the same 60 digits on their side.
      const safety = el("div", "m-sub");
      safety.append("Safety number ", el("span", "safety", m.safety_number));
      if (m.verified) safety.append(" ", el("span", "verified", "✓ verified"));
      else if (m.verified_before) safety.append(" ", el("span", "pill", "verified against an old, shorter number: compare again"));
      li.append(safety);
    }
    if (!m.mine) {
      const actions = el("div", "m-actions");
      const rename = el("button", "rename", "Nickname…");
      rename.type = "button";
      const form = el("form", "nick-form");
      form.hidden = true;
      const input = el("input", "nick-input");
      input.maxLength = 64;
      input.value = m.nickname || "";
      input.setAttribute("aria-label", `Your nickname for ${m.display_name || short(m.author)} (only you see it)`);
      const save = el("button", null, "Save");
      form.append(input, save);
      rename.addEventListener("click", () => { form.hidden = !form.hidden; if (!form.hidden) input.focus(); });
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        try { await call("peers.rename", { peer: m.author, nickname: input.value, room: state.current }); await refreshPeers(); renderMessages(false); renderRooms(); } catch (e) { toast(e.message); }
      });
      const verify = el("button", "verify", m.verified ? "Unmark verified" : "Mark verified");
      verify.type = "button";
      verify.addEventListener("click", async () => {
        try { await call("peers.verify", { peer: m.author, verified: !m.verified, room: state.current }); await refreshPeers(); } catch (e) { toast(e.message); }
      });
      const block = el("button", "block", m.blocked ? "Unblock" : "Block");
      block.type = "button";
      block.title = m.blocked ? "Show this writer's messages again and take new ones" : "Stop storing, passing on and showing this writer's messages in this room";
      block.addEventListener("click", async () => {
        if (!m.blocked && block.dataset.confirm !== "1") { block.dataset.confirm = "1"; block.textContent = "Block: sure?"; return; }
        try {
          await call(m.blocked ? "peers.unblock" : "peers.block", { peer: m.author, room: state.current });
          await refreshPeers(); await openRoom(state.current, true);
        } catch (e) { toast(e.message); }
      });
      const qrButton = el("button", "show-qr", "QR");
      qrButton.type = "button";
      qrButton.title = "Show the safety number as a QR code, for the other person to scan and compare";
      const qr = el("img", "qr safety-qr");
      qr.hidden = true;
      qr.alt = `Safety number of you and ${m.display_name || short(m.author)} as a QR code`;
      qrButton.addEventListener("click", async () => {
        if (!qr.hidden) { qr.hidden = true; return; }
        try {
          const r = await call("peers.safety", { peer: m.author, room: state.current });
          // Made by the daemon; shown as an image, never as markup.
          if (r.qr_svg) { qr.src = "data:image/svg+xml;base64," + btoa(r.qr_svg); qr.hidden = false; }
        } catch (e) { toast(e.message); }
      });
      actions.append(rename, verify, qrButton, block);
      // The room's admin (or anyone, in a room without one) may remove a member: everyone
      // else moves to a new room with new keys.
      const room = state.rooms.find((x) => x.id === state.current);
      const me = ([...(state.members.get(state.current) || new Map()).values()].find((x) => x.mine) || {}).author;
      const open = room && !room.read_only && !room.moved_to && !room.removed_by;
      if (open && room.admin && room.admin === me) {
        // The room's creator names admins (signed entries in the log), or takes that back.
        const named = (room.admins || []).includes(m.author);
        const role = el("button", "make-admin", named ? "No longer admin" : "Make admin");
        role.type = "button";
        role.title = "Admins may remove members from the room";
        role.addEventListener("click", async () => {
          try { await call("rooms.admin", { room: state.current, member: m.author, admin: !named }); await refreshRooms(); await refreshPeers(); } catch (e) { toast(e.message); }
        });
        actions.append(role);
      }
      // (Named admins remove members, not admins.)
      const admins = room ? [room.admin, ...(room.admins || [])] : [];
      const mayRemove = room && (!room.admin || room.admin === me || (admins.includes(me) && !admins.includes(m.author)));
      if (open && mayRemove) {
        const remove = el("button", "remove", "Remove from room");
        remove.type = "button";
        remove.title = "Move everyone else to a new room with new keys: this member cannot read, find or join what is written afterwards";
        remove.addEventListener("click", async () => {
          if (remove.dataset.confirm !== "1") { remove.dataset.confirm = "1"; remove.textContent = "Remove: sure?"; return; }
          try {
            const r = await call("rooms.remove", { room: state.current, member: m.author });
            await refreshRooms();
            await openRoom(r.room.id);
            toast(`Removed ${m.display_name || short(m.author)}: this is the room's new epoch`);
          } catch (e) { toast(e.message); }
        });
        actions.append(remove);
      }
      li.append(actions, form, qr);
    }
    ul.append(li);
  }
}

async function refreshPeers() {
  if (!state.current) return;
  renderMembers(await refreshMembers(state.current));
  const r = await call("peers.list", { room: state.current });
  const ul = $("peer-list");
  ul.textContent = "";
  $("peers-empty").hidden = r.peers.length > 0;
  for (const p of r.peers) {
    const li = el("li");
    li.append(
      el("div", "peer-id", p.peer_id),
      el("span", "pill " + (p.connection || ""), p.connection || "connecting"),
      el("span", "pill", p.rtt_ms != null ? `${p.rtt_ms.toFixed(1)} ms` : "rtt –"),
    );
    ul.append(li);
  }
}

// ----- rendering -----
function showWelcome(title, text) {
  state.current = null;
  $("room-name").textContent = title || "Welcome";
  $("room-meta").textContent = "";
  $("welcome").hidden = false;
  if (text) { const w = $("welcome"); w.textContent = ""; const p = document.createElement("p"); p.textContent = text; w.append(p); }
  for (const el of ["messages", "composer", "invite-button", "peers-button", "leave-button", "invite-box", "search-button", "notify-button", "search-box", "compose-bar", "room-banner"]) $(el).hidden = true;
}

// A room that moved on when members were removed, or that we were removed from: it stays
// readable, and nothing more is written in it.
function renderMoved(room) {
  const moved = room && (room.moved_to || room.removed_by || room.read_only);
  $("room-banner").hidden = !moved;
  if (!moved) return;
  for (const el of ["composer", "invite-button", "compose-bar"]) $(el).hidden = true;
  const next = room.moved_to && state.rooms.find((x) => x.id === room.moved_to);
  $("room-banner-text").textContent = room.removed_by
    ? `You were removed from this room by ${nameOf(room.id, room.removed_by)}. It went on without you; what you had stays readable here.`
    : room.moved_to
      ? "Members were removed, and this room moved on to a new one with new keys. What was written here stays readable."
      : "Members were removed, and this room moved on to a new one with new keys that this device was not given: ask a member for an invite to it. What was written here stays readable.";
  const open = $("room-banner-open");
  open.hidden = !next;
  if (next) { open.textContent = `Open ${next.name} (new)`; open.onclick = () => openRoom(next.id).catch((e) => toast(e.message)); }
}

// Whether a room shows in the sidebar: not one its members moved on from (unless we were
// removed: then it is all we have).
const listed = (r) => !r.moved_to || r.removed_by;

function renderRooms() {
  const ul = $("room-list");
  ul.textContent = "";
  let total = 0;
  for (const n of state.unread.values()) total += n;
  document.title = total ? `(${total > 999 ? "999+" : total}) peerlog` : "peerlog";
  $("rooms-empty").hidden = state.rooms.length > 0;
  // A room that moved on is reached from the room it moved to (Earlier messages).
  for (const r of state.rooms.filter(listed)) {
    const li = el("li");
    const b = el("button", r.id === state.current ? "active" : "");
    b.type = "button";
    if (r.id === state.current) b.setAttribute("aria-current", "true");
    const last = state.preview.get(r.id);
    b.append(
      el("span", "r-name", r.name),
      el("span", "r-preview", last ? `${nameOf(r.id, last.author, last.author_name)}: ${last.kind === "file" ? "File: " + last.file.name : last.text}` : "No messages yet"),
    );
    const n = state.unread.get(r.id);
    if (n) { const u = el("span", "r-unread", n > 99 ? "99+" : String(n)); u.setAttribute("aria-label", `${n} unread`); b.append(u); }
    b.addEventListener("click", () => openRoom(r.id).catch((e) => toast(e.message)));
    li.append(b);
    ul.append(li);
  }
}

function renderRoomMeta() {
  const r = state.rooms.find((x) => x.id === state.current);
  if (!r) return;
  $("room-name").textContent = r.name;
  const forks = (r.forks || []).length;
  const forkNote = forks ? ` · ⚠ ${forks} writer${forks === 1 ? "" : "s"} signed conflicting histories (a copied data dir?)` : "";
  const s = state.sync.get(r.id);
  const syncNote = s && s.entries_done < s.entries_total
    ? ` · catching up ${s.entries_done}/${s.entries_total}${s.bytes_total ? ` (${sizeText(s.bytes_done)} of ${sizeText(s.bytes_total)})` : ""}`
    : "";
  const seedNote = r.seeder ? " · seeding (cannot read)" : "";
  $("room-meta").textContent = `${r.peers} peer${r.peers === 1 ? "" : "s"} online · room ${r.id}${seedNote}${syncNote}${forkNote}`;
}

const short = (key) => key.slice(0, 8);
const dayOf = (t) => new Date(t).toLocaleDateString(undefined, { weekday: "short", year: "numeric", month: "short", day: "numeric" });
const timeOf = (t) => new Date(t).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
// "3 min ago", "yesterday"…: how long since a time (ms since the epoch).
function ago(t) {
  const s = Math.max(0, (Date.now() - t) / 1000);
  const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  if (s < 3600) return rtf.format(-Math.max(1, Math.round(s / 60)), "minute");
  if (s < 86400) return rtf.format(-Math.round(s / 3600), "hour");
  return rtf.format(-Math.round(s / 86400), "day");
}

// Text with http(s) links turned into anchors; everything else stays text.
function richText(el, text) {
  const re = /\bhttps?:\/\/[^\s<>"']+/g;
  let last = 0, m;
  while ((m = re.exec(text))) {
    el.append(document.createTextNode(text.slice(last, m.index)));
    let url = m[0].replace(/[),.;:!?]+$/, "");
    const a = document.createElement("a");
    try {
      const u = new URL(url);
      if (u.protocol !== "http:" && u.protocol !== "https:") throw new Error();
      a.href = u.href;
    } catch { el.append(document.createTextNode(url)); last = m.index + url.length; continue; }
    a.textContent = url;
    a.rel = "noopener noreferrer nofollow";
    a.target = "_blank";
    el.append(a);
    last = m.index + url.length;
    re.lastIndex = last;
  }
  el.append(document.createTextNode(text.slice(last)));
}

// The message list is built whole when a room opens (or after missed events), and
// otherwise updated in place: a live message is appended, a "seen" mark patched, and
// anything else (an out-of-order arrival, a file's progress) coalesced into one rebuild
// per 16 ms. Rebuilding 2,000 bubbles per event blocked the page for a third of a
// second.
function statusOf(m, seenBelow) {
  return m.mine ? (m.seen || m.seq < seenBelow ? "seen" : "stored") : "";
}

/// The list item of message `m` (and, before it, a day separator when its day starts),
/// grouped with the message before it (`prev`).
function messageNodes(m, prev, status) {
  const nodes = [];
  const day = dayOf(m.time);
  const newDay = !prev || dayOf(prev.time) !== day;
  if (newDay) nodes.push(el("li", "day", day));
  const from = state.unreadFrom.get(state.current);
  if (from && from.id === m.id) {
    const d = el("li", "new-divider", "New messages");
    d.setAttribute("role", "separator");
    nodes.push(d);
  }
  const li = el("li", "msg" + (m.mine ? " mine" : "") + (m.mentions_me ? " mentions-me" : ""));
  li.dataset.id = m.id;
  li.tabIndex = -1;
  if (newDay || m.author !== prev.author || m.time - prev.time > 5 * 60 * 1000) {
    const a = el("div", "author", m.mine ? "You" : nameOf(state.current, m.author, m.author_name));
    a.title = m.author;
    li.append(a);
  }
  const b = el("div", "bubble" + (m.deleted ? " deleted" : ""));
  if (m.reply_to) b.append(quoteOf(m.reply_to));
  if (m.deleted) b.append(el("span", "gone", "Message deleted"));
  else if (m.kind === "file") fileCard(b, m); else richText(b, m.text);
  const time = timeOf(m.time) + (m.edited ? " · edited" : "");
  const meta = el("div", "meta", time + (status ? ` · ${status}` : ""));
  meta.dataset.time = time;
  li.append(b, meta);
  if (m.reactions && m.reactions.length) li.append(reactionRow(m));
  nodes.push(li);
  return nodes;
}

// ----- chat: replies, reactions, edits, deletions, mentions, search -----

const QUICK_REACTIONS = ["👍", "❤️", "😂", "😮", "😢", "🎉"];

/// The quoted start of the message a reply answers; a click shows it, if it is loaded.
function quoteOf(to) {
  const q = el("button", "quote");
  q.type = "button";
  const who = to.mine ? "You" : nameOf(state.current, to.author, to.author_name);
  q.append(el("span", "q-author", who), el("span", "q-text", to.text != null ? to.text : "a message that is not here, or was deleted"));
  q.setAttribute("aria-label", `Reply to ${who}: ${to.text || "a message not shown"}. Show it`);
  q.addEventListener("click", () => showMessage(to.id).catch((e) => toast(e.message)));
  return q;
}

function reactionRow(m) {
  const row = el("div", "reactions");
  for (const r of m.reactions) {
    const chip = el("button", "reaction" + (r.mine ? " mine" : ""), `${r.emoji} ${r.count}`);
    chip.type = "button";
    chip.setAttribute("aria-pressed", String(r.mine));
    chip.title = r.members.map((a) => nameOf(m.room, a)).join(", ");
    chip.addEventListener("click", () => react(m, r.emoji, !r.mine));
    row.append(chip);
  }
  return row;
}

async function react(m, emoji, on) {
  try { applyUpdate((await call("messages.react", { room: m.room, message: m.id, emoji, on })).message); } catch (e) { toast(e.message); }
}

/// A message's new state (an edit, a deletion, reactions): in the list, in its bubble, and
/// in the quotes of the replies to it.
function applyUpdate(m) {
  if (!m) return;
  const list = state.messages.get(m.room);
  if (!list) return;
  const i = list.findIndex((x) => x.id === m.id);
  if (i >= 0) list[i] = m;
  const quoted = m.deleted ? null : (m.kind === "file" ? m.file.name : m.text).slice(0, 200);
  const touched = i >= 0 ? [i] : [];
  list.forEach((x, j) => {
    if (x.reply_to && x.reply_to.id === m.id) { x.reply_to = { ...x.reply_to, text: quoted === null ? undefined : quoted }; touched.push(j); }
  });
  if (m.room !== state.current) return;
  const seenBelow = state.seen.get(state.current) || 0;
  for (const j of touched) {
    const old = $("messages").querySelector(`li.msg[data-id="${CSS.escape(list[j].id)}"]`);
    if (!old) continue;
    // Rebuilt with the same neighbour, so it keeps its author line; its tools are made
    // anew when it is pointed at again.
    const fresh = messageNodes(list[j], list[j - 1] || null, statusOf(list[j], seenBelow)).pop();
    fresh.tabIndex = old.tabIndex;
    old.replaceWith(fresh);
  }
}

/// The tools of the message under the pointer or the focus: reply, quick reactions, and
/// for our own messages edit and delete. One bar, moved to where it is needed (a bar per
/// message would cost thousands of buttons in a long room).
function toolsFor(li) {
  const m = (state.messages.get(state.current) || []).find((x) => x.id === li.dataset.id);
  let bar = $("msg-tools");
  if (!m || m.deleted) { if (bar) bar.remove(); return; }
  if (bar && bar.parentElement === li && bar.dataset.id === m.id) return;
  if (!bar) { bar = el("div", "msg-tools"); bar.id = "msg-tools"; bar.setAttribute("role", "toolbar"); }
  bar.dataset.id = m.id;
  bar.setAttribute("aria-label", "Message actions");
  bar.textContent = "";
  const tool = (cls, text, label, fn) => {
    const b = el("button", cls, text);
    b.type = "button";
    b.setAttribute("aria-label", label);
    b.addEventListener("click", (ev) => { ev.stopPropagation(); fn(b); });
    bar.append(b);
  };
  tool("tool-reply", "Reply", "Reply to this message", () => startCompose("reply", m));
  for (const emoji of QUICK_REACTIONS) {
    const mine = (m.reactions || []).some((r) => r.emoji === emoji && r.mine);
    tool("tool-react", emoji, `${mine ? "Take back" : "React with"} ${emoji}`, () => react(m, emoji, !mine));
  }
  if (m.mine && m.kind === "text") tool("tool-edit", "Edit", "Edit this message", () => startCompose("edit", m));
  if (m.mine) {
    tool("tool-delete", "Delete", "Delete this message", async (b) => {
      if (b.dataset.confirm !== "1") { b.dataset.confirm = "1"; b.textContent = "Delete: sure?"; return; }
      try { applyUpdate((await call("messages.delete", { room: m.room, message: m.id })).message); } catch (e) { toast(e.message); }
    });
  }
  li.append(bar);
}

/// Replying to, or editing, a message: a bar above the composer says which; Esc or ✕ ends it.
function startCompose(mode, m) {
  state.compose = { mode, message: m };
  const bar = $("compose-bar");
  const who = m.mine ? "yourself" : nameOf(m.room, m.author, m.author_name);
  $("compose-text").textContent = mode === "edit" ? "Editing your message" : `Replying to ${who}: ${(m.kind === "file" ? m.file.name : m.text).slice(0, 120)}`;
  bar.hidden = false;
  const box = $("composer-text");
  if (mode === "edit") box.value = m.text;
  box.focus();
}
function endCompose() {
  if (state.compose && state.compose.mode === "edit") $("composer-text").value = "";
  state.compose = null;
  $("compose-bar").hidden = true;
}

/// The members a text names as `@Name` (their display name or your nickname for them).
function mentionsIn(room, text) {
  const out = [];
  for (const [author, m] of state.members.get(room) || new Map()) {
    if (m.mine) continue;
    const names = [m.nickname, m.display_name].filter(Boolean);
    if (names.some((n) => text.includes(`@${n}`))) out.push(author);
  }
  return out;
}

/// A desktop notification for a message that names us, if this room asked for them and
/// the tab is hidden.
function notifyMention(p) {
  if (!p.mentions_me || !document.hidden || localStorage.getItem(`peerlog-notify-${p.room}`) !== "1") return;
  if (typeof Notification === "undefined" || Notification.permission !== "granted") return;
  const room = state.rooms.find((r) => r.id === p.room);
  const n = new Notification(`${nameOf(p.room, p.author, p.author_name)} mentioned you in ${room ? room.name : "a room"}`, { body: (p.text || "").slice(0, 200), tag: p.id });
  n.onclick = () => { window.focus(); openRoom(p.room).then(() => showMessage(p.id)).catch(() => {}); };
}
function renderNotify() {
  const on = !!state.current && localStorage.getItem(`peerlog-notify-${state.current}`) === "1";
  $("notify-button").setAttribute("aria-pressed", String(on));
  $("notify-button").textContent = on ? "🔔 Mentions" : "🔕 Mentions";
}

/// Scrolls to a message, paging older history in until it is there.
async function showMessage(id) {
  const find = () => $("messages").querySelector(`li.msg[data-id="${CSS.escape(id)}"]`);
  while (!find() && state.current && !state.complete.has(state.current)) {
    const before = (state.messages.get(state.current) || []).length;
    await loadOlder();
    if ((state.messages.get(state.current) || []).length === before) break;
  }
  const li = find();
  if (!li) { toast("That message is not here"); return; }
  li.scrollIntoView({ block: "center" });
  li.classList.add("flash");
  li.focus();
  setTimeout(() => li.classList.remove("flash"), 2000);
}

async function runSearch(query) {
  const ul = $("search-results");
  ul.textContent = "";
  const r = await call("messages.search", { room: state.current, query });
  $("search-empty").hidden = r.messages.length > 0;
  for (const m of r.messages) {
    const li = el("li");
    const b = el("button", "result");
    b.type = "button";
    b.append(
      el("span", "s-meta", `${m.mine ? "You" : nameOf(m.room, m.author, m.author_name)} · ${dayOf(m.time)} ${timeOf(m.time)}`),
      el("span", "s-text", m.kind === "file" ? `File: ${m.file.name}` : m.text),
    );
    b.addEventListener("click", () => showMessage(m.id).catch((e) => toast(e.message)));
    li.append(b);
    ul.append(li);
  }
}

function renderMessages(stickToBottom) {
  state.renderQueued = false;
  const box = $("messages");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  const list = state.messages.get(state.current) || [];
  const pending = state.sending.get(state.current) || [];
  const seenBelow = state.seen.get(state.current) || 0;
  const nodes = [];
  // A room made by a removal continues another: its history is there.
  const room = state.rooms.find((x) => x.id === state.current);
  const before = room && room.moved_from && state.rooms.find((x) => x.id === room.moved_from);
  if (before && state.complete.has(state.current)) {
    const li = el("li", "earlier");
    const go = el("button", "earlier-open", "Earlier messages: before members were removed");
    go.type = "button";
    go.addEventListener("click", () => openRoom(before.id).catch((e) => toast(e.message)));
    li.append(go);
    nodes.push(li);
  }
  if (!list.length && !pending.length) {
    nodes.push(el("li", "empty-room", "No messages yet. Say hello: peers who are offline get it when they come back."));
  }
  let prev = null;
  for (const m of list) { nodes.push(...messageNodes(m, prev, statusOf(m, seenBelow))); prev = m; }
  for (const p of pending) {
    const m = { ...p, mine: true, author: "me" };
    const own = messageNodes(m, prev, p.failed ? `not sent: ${p.failed}` : "sending…");
    const li = own[own.length - 1];
    li.classList.add(p.failed ? "failed" : "pending");
    pendingControls(li, p);
    nodes.push(...own);
    prev = m;
  }
  box.replaceChildren(...nodes);
  state.nearBottom = undefined;
  const last = nodes.findLast((n) => n.classList.contains("msg"));
  if (last) last.tabIndex = 0;
  if (stickToBottom || atBottom) box.scrollTop = box.scrollHeight;
}

/// Rebuilds the list once, about a frame later, however many events asked for it. (A timer,
/// not requestAnimationFrame: a tab in the background keeps its list current too.)
function scheduleRender(stickToBottom) {
  state.stickToBottom = state.stickToBottom || stickToBottom;
  if (state.renderQueued) return;
  state.renderQueued = true;
  setTimeout(() => { const stick = state.stickToBottom; state.stickToBottom = false; renderMessages(stick); }, 16);
}

/// A message that arrived live in the open room: appended if it is the newest and the list
/// shows everything before it; else a rebuild is scheduled.
function showArrived(m) {
  const box = $("messages");
  const list = state.messages.get(state.current) || [];
  const pending = state.sending.get(state.current) || [];
  const last = box.lastElementChild;
  const prev = list[list.length - 2];
  const fits = !state.renderQueued && !pending.length && list[list.length - 1] === m
    && (prev ? last && last.dataset.id === prev.id : !last || last.classList.contains("empty-room"));
  // A reader scrolled up stays where they are (the jump button counts what came).
  if (!fits) return scheduleRender(m.mine);
  const bottom = atBottom();
  if (last && last.classList.contains("empty-room")) last.remove();
  box.append(...messageNodes(m, prev, statusOf(m, state.seen.get(state.current) || 0)));
  if (bottom || m.mine) { box.scrollTop = box.scrollHeight; state.nearBottom = true; }
}

/// Whether the reader is at the newest message. Measured when the list scrolls or is
/// rebuilt, and kept: reading it after each appended message would lay the whole list out
/// again for every message of a burst.
function atBottom() {
  if (state.nearBottom === undefined) {
    const box = $("messages");
    state.nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  }
  return state.nearBottom;
}

/// The "jump to the newest" button: shown while the reader is scrolled up, with the count
/// of what arrived meanwhile. Reaching the bottom reads them.
function renderJump() {
  const jump = $("jump");
  const n = state.unread.get(state.current) || 0;
  if (atBottom() || $("messages").hidden) {
    jump.hidden = true;
    if (n && !document.hidden) { state.unread.delete(state.current); renderRooms(); }
    return;
  }
  jump.hidden = false;
  jump.textContent = n ? `↓ ${n} new message${n === 1 ? "" : "s"}` : "↓ Newest";
}

/// Says `text` once to screen readers (the message list itself is not a live region: it is
/// rebuilt when a room opens, and would be read out again).
function announce(text) {
  $("announce").textContent = text.length > 300 ? text.slice(0, 300) + "…" : text;
}

/// A send that is under way or failed: its progress and cancel, or why it failed with
/// retry, edit and delete.
function pendingControls(li, p) {
  const actions = el("div", "pending-actions");
  const button = (cls, text, fn) => { const b = el("button", cls, text); b.type = "button"; b.addEventListener("click", fn); actions.append(b); };
  const drop = () => { const pend = state.sending.get(p.room) || []; const i = pend.indexOf(p); if (i >= 0) pend.splice(i, 1); saveUnsent(p.room); renderMessages(false); };
  if (p.file && !p.failed) {
    const bar = el("progress");
    bar.max = p.file.size || 1; bar.value = p.sent || 0;
    bar.setAttribute("aria-label", `Sending ${p.file.name}`);
    li.querySelector(".bubble").append(bar);
    button("cancel", "Cancel", () => { p.cancelled = true; });
  } else if (p.failed) {
    button("retry", "Retry", () => { drop(); if (p.file) sendFile(p.file); else sendText(p.room, p.text, p.replyTo); });
    if (!p.file) button("edit", "Edit", () => { drop(); $("composer-text").value = p.text; saveDraft(); $("composer-text").focus(); });
    button("delete", "Delete", drop);
  }
  if (actions.childElementCount) li.append(actions);
}

/// Our messages below `seenBelow` are held by a peer: their marks say so, in place.
function patchSeen(seenBelow) {
  const byId = new Map((state.messages.get(state.current) || []).map((m) => [m.id, m]));
  for (const li of $("messages").querySelectorAll("li.msg.mine")) {
    const m = byId.get(li.dataset.id);
    const meta = li.querySelector(".meta");
    if (m && meta && meta.dataset.time) meta.textContent = `${meta.dataset.time} · ${statusOf(m, seenBelow)}`;
  }
}

const INLINE = ["image/png", "image/jpeg", "image/gif", "image/webp"];
function sizeText(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB"];
  let i = -1;
  do { n /= 1024; i++; } while (n >= 1024 && i < units.length - 1);
  return `${n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
}
// Download URLs carry a short-lived ticket for one file (files.url), never the token:
// URLs end up in the browser's history. Cached until a minute before they expire.
const fileUrls = new Map();
async function fileUrl(m, inline) {
  const key = `${m.room}/${m.id}/${inline ? 1 : 0}`;
  const hit = fileUrls.get(key);
  if (hit && hit.expires_ms - Date.now() > 60000) return hit.url;
  const r = await call("files.url", { room: m.room, file: m.id, inline });
  fileUrls.set(key, r);
  return r.url;
}
// A shared file: name, size, progress while it moves, a download link, a preview for images.
function fileCard(b, m) {
  const f = m.file;
  const card = el("div", "file-card");
  card.append(el("span", "f-name", f.name), el("span", "f-size", `${sizeText(f.size)} · ${f.mime}`));
  const p = state.files.get(f.id);
  if (p && !p.done) {
    const bar = el("progress");
    bar.max = p.bytes_total; bar.value = p.bytes_done;
    bar.setAttribute("aria-label", p.direction === "send" ? "Sending" : "Downloading");
    card.append(bar, el("span", "f-size", `${p.direction === "send" ? "sending" : "fetching"} ${sizeText(p.bytes_done)} of ${sizeText(p.bytes_total)}`));
  }
  if (INLINE.includes(f.mime) && f.size <= 10 * 1024 * 1024) {
    const img = el("img");
    img.alt = f.name;
    img.loading = "lazy";
    fileUrl(m, true).then((u) => { img.src = u; }, () => {});
    // The thumbnail opens the image at full size.
    const view = el("button", "view-image");
    view.type = "button";
    view.setAttribute("aria-label", `View ${f.name} at full size`);
    view.append(img);
    view.addEventListener("click", async () => {
      try { showImage(await fileUrl(m, true), f.name); } catch (e) { toast(e.message); }
    });
    card.append(view);
  }
  const a = el("a", "download", `Download ${f.name}`);
  a.title = `${f.name}, ${sizeText(f.size)}, ${f.mime}`;
  a.href = "#";
  a.download = f.name;
  fileUrl(m, false).then((u) => { a.href = u; }, () => {});
  // A click always gets a fresh link (the one shown may have expired).
  a.addEventListener("click", async (ev) => {
    ev.preventDefault();
    try {
      const go = el("a");
      go.href = await fileUrl(m, false);
      go.download = f.name;
      go.click();
    } catch (e) { toast(`Download failed: ${e.message}`); }
  });
  card.append(a);
  b.append(card);
}

// Sends a file from the browser: files.send, then its bytes as binary frames.
// Its bar follows the bytes the socket has taken; Cancel ends the upload with an empty
// binary frame (docs/API.md).
async function sendFile(file) {
  const room = state.current;
  if (!room || !file) return;
  const item = { room, file, text: `File: ${file.name} (${sizeText(file.size)})`, time: Date.now(), lamport: Infinity, seq: 0, sent: 0 };
  if (!state.sending.has(room)) state.sending.set(room, []);
  state.sending.get(room).push(item);
  renderMessages(true);
  const progress = () => {
    const bar = [...$("messages").querySelectorAll("li.pending progress")].find((b) => b.getAttribute("aria-label") === `Sending ${file.name}`);
    if (bar) bar.value = item.sent;
  };
  const pend = () => state.sending.get(room) || [];
  try {
    const done = call("files.send", { room, name: file.name, size: file.size, mime: file.type || undefined });
    done.catch(() => {});
    const ws = state.ws;
    const SLICE = 256 * 1024;
    for (let off = 0; off < file.size && !item.cancelled; off += SLICE) {
      while (ws.bufferedAmount > 4 * SLICE && !item.cancelled) await new Promise((r) => setTimeout(r, 10));
      if (item.cancelled) break;
      ws.send(await file.slice(off, off + SLICE).arrayBuffer());
      item.sent = Math.max(0, off + SLICE - ws.bufferedAmount);
      progress();
    }
    if (item.cancelled) ws.send(new ArrayBuffer(0));
    const r = await done;
    const list = state.messages.get(room);
    if (list && r.message && !list.some((x) => x.id === r.message.id)) insertSorted(list, r.message);
    const i = pend().indexOf(item); if (i >= 0) pend().splice(i, 1);
  } catch (e) {
    if (item.cancelled) { const i = pend().indexOf(item); if (i >= 0) pend().splice(i, 1); toast(`Stopped sending ${file.name}`); }
    else { item.failed = e.message; toast(`File not sent: ${e.message}`); }
  }
  if (room === state.current) renderMessages(true);
}

function showImage(url, name) {
  const v = $("viewer");
  $("viewer-img").src = url;
  $("viewer-img").alt = name;
  $("viewer-name").textContent = name;
  v.showModal();
}

// Drafts stay per room in this browser until they are sent.
function saveDraft() {
  if (!state.current) return;
  const v = $("composer-text").value;
  if (v) localStorage.setItem(`peerlog-draft-${state.current}`, v); else localStorage.removeItem(`peerlog-draft-${state.current}`);
}

const TEXT_MAX = 64 * 1024;
/// Sends a text; on failure it stays as a bubble that says why, with retry, edit and delete.
async function sendText(room, text, replyTo) {
  const item = { room, text, replyTo, time: Date.now(), lamport: Infinity, seq: 0 };
  if (!state.sending.has(room)) state.sending.set(room, []);
  state.sending.get(room).push(item);
  renderMessages(true);
  try {
    const mentions = mentionsIn(room, text);
    const r = await call("messages.send", { room, text, reply_to: replyTo, mentions: mentions.length ? mentions : undefined });
    const list = state.messages.get(room);
    if (list && r.message && !list.some((m) => m.id === r.message.id)) insertSorted(list, r.message);
    const pend = state.sending.get(room); const i = pend.indexOf(item); if (i >= 0) pend.splice(i, 1);
  } catch (e) { item.failed = e.message; saveUnsent(room); }
  if (room === state.current) renderMessages(true);
}

// Failed texts outlive a reload (this browser only), until sent or deleted.
function saveUnsent(room) {
  const failed = (state.sending.get(room) || []).filter((p) => p.failed && !p.file).map(({ text, time, failed }) => ({ text, time, failed }));
  if (failed.length) localStorage.setItem(`peerlog-unsent-${room}`, JSON.stringify(failed)); else localStorage.removeItem(`peerlog-unsent-${room}`);
}
function loadUnsent(room) {
  if (state.sending.has(room)) return;
  let kept = [];
  try { kept = JSON.parse(localStorage.getItem(`peerlog-unsent-${room}`) || "[]"); } catch { kept = []; }
  state.sending.set(room, kept.filter((k) => typeof k.text === "string").map((k) => ({ room, text: k.text, time: Number(k.time) || Date.now(), failed: String(k.failed || "not sent"), lamport: Infinity, seq: 0 })));
}

function renderNodePage() {
  const n = state.node;
  if (!n) return;
  const dl = $("node-details");
  dl.textContent = "";
  const row = (k, v) => dl.append(el("dt", null, k), el("dd", null, v));
  row("Display name", n.display_name || "not set");
  row("PeerId", n.peer_id);
  row("NAT status", n.nat_status);
  row("Reachable", { public: "from the internet", relayed: "through a relay", behind_nat: "behind NAT, no relay yet", lan_only: "on the LAN only", no_peers: "no peers at all" }[n.reachability] || n.reachability || "–");
  row("Network", n.network === "public" ? `public: on the public libp2p DHT (client mode, ${n.public_dht_peers} peer(s))` : "private: no public DHT");
  row("peerlog DHT", `${n.dht_mode} mode, ${n.dht_peers} peer(s); ${n.bootstrap_connected} of ${n.bootstrap_peers} bootstrap node(s) connected`);
  for (const w of n.warnings || []) row("Warning", w);
  row("Listening on", (n.listen_addrs || []).join("\n") || "–");
  row("External addresses", (n.external_addrs || []).join("\n") || "none known");
  const ours = new Set(n.peerlog_relays || []);
  row("Relays", (n.relays || []).map((r) => ours.has(r) ? `${r} (peerlog relay)` : `${r} (limited public relay)`).join("\n") || "none");
  row("Connected peers", String(n.connected_peers));
  row("Rooms", String(n.rooms));
  row("Storage used", sizeText(n.storage_bytes));
  row("Version", `peerlog ${n.version} (API ${n.api_version})`);
  $("self-name").value = n.display_name || "";
}

async function renderDevices() {
  const r = await call("devices.list", {});
  const ul = $("device-list");
  ul.textContent = "";
  const holder = r.devices.some((d) => d.this && d.holds_person_key);
  for (const d of r.devices) {
    const li = el("li", "device");
    li.append(el("span", "peer-id", d.peer_id));
    if (d.this) li.append(" ", el("span", "pill direct", "this device"));
    if (d.holds_person_key) li.append(" ", el("span", "pill", "holds your person key"));
    if (d.unlinked) li.append(" ", el("span", "pill", "unlinked"));
    if (holder && !d.this && !d.unlinked) {
      const unlink = el("button", "unlink", "Unlink");
      unlink.type = "button";
      unlink.title = "It is removed from each of your rooms like a member: it cannot read what is written afterwards";
      unlink.addEventListener("click", async () => {
        if (unlink.dataset.confirm !== "1") { unlink.dataset.confirm = "1"; unlink.textContent = "Unlink: sure?"; return; }
        try {
          const u = await call("devices.unlink", { device: d.device });
          toast(`Unlinked from ${u.rooms.length} room(s)`);
          await refreshRooms(); await renderDevices();
        } catch (e) { toast(e.message); }
      });
      li.append(" ", unlink);
    }
    ul.append(li);
  }
  // Only the device with the person key links others; a linked one can be linked no further.
  $("link-device").hidden = !holder && r.person != null;
  $("accept-link").hidden = holder;
}

function toast(text) {
  const t = $("toast");
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
}

// ----- wiring -----
function wire() {
  $("reconnect").addEventListener("click", () => {
    state.retry = 500;
    clearTimeout(state.retryTimer);
    if (!state.ws || state.ws.readyState === WebSocket.CLOSED) connect();
  });
  const secret = $("join-secret");
  secret.addEventListener("input", () => {
    const v = secret.value.trim();
    const el = $("join-strength");
    if ($("join-form").dataset.weakOk !== undefined && $("join-form").dataset.weakOk !== v) {
      delete $("join-form").dataset.weakOk;
      $("join-button").textContent = "Join";
    }
    if (!v) { el.textContent = ""; el.className = "strength"; return; }
    const inv = parseInvite(v);
    $("join-name").placeholder = (inv && inv.name) || "optional";
    if (inv) { el.textContent = `Invite${inv.name ? ` to “${inv.name}”` : ""}: joins the room it was made for`; el.className = "strength good"; return; }
    // The daemon estimates (zxcvbn), so the UI and the API never disagree.
    clearTimeout(secret.checkTimer);
    secret.checkTimer = setTimeout(async () => {
      let r;
      try { r = await call("passphrase.check", { passphrase: v }); } catch { return; }
      if (secret.value.trim() !== v) return;
      const [cls, word] = r.confirm || r.bits < 45 ? ["weak", "weak: easy to guess offline"]
        : r.bits < r.max_bits ? ["fair", r.public ? "fair, but this room is announced publicly: add a word" : "fair: add another word"]
        : ["good", "strong"];
      el.className = "strength " + cls;
      // The whole warning, before joining (not a toast after it).
      el.textContent = `Strength ~${r.bits} bits · ${word}${r.warning ? `. ${r.warning}` : ""}`;
    }, 150);
  });
  $("join-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const inv = parseInvite(secret.value);
    const v = inv ? inv.invite : secret.value.trim();
    const name = $("join-name").value.trim() || undefined;
    // A second click on "Join anyway" after the weak-passphrase refusal confirms it.
    const weakOk = $("join-form").dataset.weakOk === v;
    $("join-error").textContent = "";
    $("join-button").disabled = true;
    $("join-button").textContent = inv ? "Joining…" : "Deriving key…";
    try {
      const params = inv ? { invite: v, name } : { passphrase: v, name, weak_ok: weakOk || undefined };
      const r = await call("rooms.join", params);
      delete $("join-form").dataset.weakOk;
      if (inv) localStorage.removeItem("peerlog-join");
      secret.value = ""; $("join-name").value = ""; $("join-name").placeholder = "optional"; $("join-strength").textContent = "";
      await refreshRooms();
      await openRoom(r.room.id);
    } catch (e) {
      $("join-error").textContent = e.message;
      if (e.code === 1008) {
        $("join-form").dataset.weakOk = v;
        $("join-error").textContent = `${e.message}. Press "Join anyway" to join with it all the same.`;
        $("join-button").disabled = false;
        $("join-button").textContent = "Join anyway";
        return;
      }
    }
    finally { if ($("join-button").textContent !== "Join anyway") { $("join-button").disabled = false; $("join-button").textContent = "Join"; } }
  });
  $("create-button").addEventListener("click", async () => {
    try {
      const r = await call("rooms.create", { name: $("join-name").value.trim() || undefined });
      $("join-name").value = "";
      await refreshRooms();
      await openRoom(r.room.id);
      const inv = await call("rooms.invite", { room: r.room.id });
      showInvite(inv.invite, inv.qr_svg);
    } catch (e) { $("join-error").textContent = e.message; }
  });
  $("composer").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const box = $("composer-text");
    const text = box.value;
    const room = state.current;
    if (!text.trim() || !room) return;
    // Too long stays in the box, with the reason.
    const bytes = new TextEncoder().encode(text).length;
    if (bytes > TEXT_MAX) {
      $("composer-error").textContent = `Too long to send: ${sizeText(bytes)}, and a message holds at most 64 KiB. Shorten it, or send it as a file.`;
      return;
    }
    $("composer-error").textContent = "";
    const compose = state.compose;
    if (compose && compose.mode === "edit") {
      try {
        applyUpdate((await call("messages.edit", { room, message: compose.message.id, text })).message);
        endCompose();
      } catch (e) { $("composer-error").textContent = `Not saved: ${e.message}`; }
      return;
    }
    box.value = "";
    localStorage.removeItem(`peerlog-draft-${room}`);
    endCompose();
    await sendText(room, text, compose ? compose.message.id : undefined);
  });
  $("compose-cancel").addEventListener("click", endCompose);
  const msgs = $("messages");
  const toolsAt = (ev) => { const li = ev.target.closest && ev.target.closest("li.msg"); if (li && !li.classList.contains("pending") && !li.classList.contains("failed")) toolsFor(li); };
  msgs.addEventListener("mouseover", toolsAt);
  msgs.addEventListener("focusin", toolsAt);
  // Up and down move between messages (one of them is in the tab order).
  msgs.addEventListener("keydown", (ev) => {
    if (ev.key !== "ArrowUp" && ev.key !== "ArrowDown") return;
    const li = ev.target.closest("li.msg");
    if (!li) return;
    let next = ev.key === "ArrowUp" ? li.previousElementSibling : li.nextElementSibling;
    while (next && !next.matches("li.msg")) next = ev.key === "ArrowUp" ? next.previousElementSibling : next.nextElementSibling;
    if (next) { ev.preventDefault(); li.tabIndex = -1; next.tabIndex = 0; next.focus(); }
  });
  $("notify-button").addEventListener("click", async () => {
    const key = `peerlog-notify-${state.current}`;
    if (localStorage.getItem(key) === "1") localStorage.removeItem(key);
    else {
      if (typeof Notification === "undefined") { toast("This browser has no notifications"); return; }
      if (Notification.permission !== "granted" && (await Notification.requestPermission()) !== "granted") { toast("Notifications are blocked for this page in the browser's settings"); return; }
      localStorage.setItem(key, "1");
    }
    renderNotify();
  });
  $("search-button").addEventListener("click", () => {
    const box = $("search-box");
    box.hidden = !box.hidden;
    $("search-button").setAttribute("aria-expanded", String(!box.hidden));
    if (!box.hidden) $("search-input").focus();
  });
  $("search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = $("search-input").value.trim();
    if (q) runSearch(q).catch((e) => toast(e.message));
  });
  $("composer-text").addEventListener("input", () => { clearTimeout(state.draftTimer); state.draftTimer = setTimeout(saveDraft, 300); $("composer-error").textContent = ""; });
  $("jump").addEventListener("click", () => { const box = $("messages"); box.scrollTop = box.scrollHeight; state.nearBottom = true; renderJump(); });
  $("viewer-close").addEventListener("click", () => $("viewer").close());
  $("peers-close").addEventListener("click", () => togglePeers(false));
  window.addEventListener("hashchange", takeHash);
  $("composer-text").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); $("composer").requestSubmit(); }
  });
  $("messages").addEventListener("scroll", () => {
    state.nearBottom = undefined;
    if ($("messages").scrollTop < 40) loadOlder().catch((e) => toast(e.message));
    renderJump();
  });
  $("invite-button").addEventListener("click", async () => {
    if (!$("invite-box").hidden) { $("invite-box").hidden = true; return; }
    try { const r = await call("rooms.invite", { room: state.current }); showInvite(r.invite, r.qr_svg); } catch (e) { toast(e.message); }
  });
  $("copy-invite").addEventListener("click", async () => {
    const v = $("invite-text").value;
    try { await navigator.clipboard.writeText(v); toast("Invite copied"); } catch { $("invite-text").select(); }
  });
  $("peers-button").addEventListener("click", () => togglePeers($("peers-panel").hidden));
  $("leave-button").addEventListener("click", async () => {
    const r = state.rooms.find((x) => x.id === state.current);
    if (!r || !confirm(`Leave "${r.name}"? Its messages are deleted from this machine.`)) return;
    try {
      await call("rooms.leave", { room: r.id });
      state.messages.delete(r.id); state.preview.delete(r.id); state.current = null;
      await refreshRooms();
    } catch (e) { toast(e.message); }
  });
  $("file-input").addEventListener("change", (ev) => {
    const f = ev.target.files[0];
    ev.target.value = "";
    sendFile(f);
  });
  const conv = $("conversation");
  conv.addEventListener("dragover", (ev) => { if (state.current && ev.dataTransfer.types.includes("Files")) { ev.preventDefault(); conv.classList.add("dropping"); } });
  conv.addEventListener("dragleave", () => conv.classList.remove("dropping"));
  conv.addEventListener("drop", (ev) => {
    conv.classList.remove("dropping");
    if (!state.current || !ev.dataTransfer.files.length) return;
    ev.preventDefault();
    for (const f of ev.dataTransfer.files) sendFile(f);
  });
  const saveName = async (name) => {
    try { await call("profile.set", { display_name: name }); await refreshNode(); if (state.current) { await refreshMembers(state.current); renderMessages(false); } toast("Name saved"); } catch (e) { toast(e.message); }
  };
  $("profile-form").addEventListener("submit", (ev) => { ev.preventDefault(); saveName($("profile-name").value); });
  $("rename-self").addEventListener("submit", (ev) => { ev.preventDefault(); saveName($("self-name").value); });
  $("node-badge").addEventListener("click", () => {
    $("node-page").hidden = false;
    for (const x of ["welcome", "messages", "composer", "invite-box"]) $(x).hidden = true;
    renderNodePage();
    refreshNode().catch(() => {});
    renderDevices().catch((e) => toast(e.message));
  });
  $("link-device").addEventListener("click", async () => {
    try {
      const r = await call("devices.link", {});
      $("link-code").value = r.code;
      // Made by the daemon; shown as an image, never as markup.
      if (r.qr_svg) $("link-qr").src = "data:image/svg+xml;base64," + btoa(r.qr_svg);
      $("link-box").hidden = false;
      await renderDevices();
    } catch (e) { toast(e.message); }
  });
  $("copy-link-code").addEventListener("click", async () => {
    try { await navigator.clipboard.writeText($("link-code").value); toast("Copied"); } catch { $("link-code").select(); }
  });
  $("accept-link").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const code = $("accept-code").value.trim();
    if (!code) return;
    toast("Waiting for your other device…");
    try {
      const r = await call("devices.accept", { code });
      $("accept-code").value = "";
      toast(`Linked: joined ${r.rooms.length} room(s)`);
      await refreshRooms(); await refreshNode(); await renderDevices();
    } catch (e) { toast(e.message); }
  });
  $("node-close").addEventListener("click", () => {
    $("node-page").hidden = true;
    if (state.current) openRoom(state.current).catch((e) => toast(e.message)); else showWelcome();
  });
  $("copy-link").addEventListener("click", async () => {
    const v = $("invite-link").value;
    try { await navigator.clipboard.writeText(v); toast("Link copied"); } catch { $("invite-link").select(); }
  });
  $("show-rooms").addEventListener("click", () => $("app").classList.toggle("show-rooms"));
  document.addEventListener("keydown", (ev) => {
    if (ev.key !== "Escape") return;
    if (state.compose) endCompose();
    $("search-box").hidden = true;
    $("app").classList.remove("show-rooms");
    $("invite-box").hidden = true;
    if (!$("peers-panel").hidden) togglePeers(false);
  });
  document.addEventListener("visibilitychange", () => { if (!document.hidden && state.current) renderJump(); });
  setInterval(() => { if (state.ws && state.ws.readyState === WebSocket.OPEN) { refreshNode().catch(() => {}); if (!$("peers-panel").hidden) refreshPeers().catch(() => {}); } }, 10000);
}

function togglePeers(open) {
  const panel = $("peers-panel");
  panel.hidden = !open;
  $("peers-button").setAttribute("aria-expanded", String(open));
  if (open) {
    const head = $("conversation").querySelector(".room-header").getBoundingClientRect().bottom;
    document.documentElement.style.setProperty("--head-bottom", `${Math.round(head)}px`);
    refreshPeers().catch((e) => toast(e.message));
    $("peers-close").focus();
  } else $("peers-button").focus();
}

function showInvite(invite, qrSvg) {
  $("invite-text").value = invite;
  // A link for the receiver's own peerlog, at its usual address (not this page's: the
  // receiver's daemon is on their machine).
  $("invite-link").value = `http://127.0.0.1:7777/#join=${invite}`;
  const qr = $("invite-qr");
  // Made by the daemon from the invite; shown as an image, never as markup.
  qr.hidden = !qrSvg;
  if (qrSvg) qr.src = "data:image/svg+xml;base64," + btoa(qrSvg);
  $("invite-box").hidden = false;
}

wire();
connect();
