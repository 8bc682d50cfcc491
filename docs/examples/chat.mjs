// A peerlog client in JavaScript (Node): join a room, send a message, print the room's
// history, then print new messages as they arrive.
//
//     node chat.mjs PASSPHRASE [TEXT] [--until TEXT]
//
// With --until it exits once it printed a message with that text (from the history or
// live).
//
// Node 22 and later have a WebSocket client built in; Node 20 needs
// `node --experimental-websocket chat.mjs …`. No packages needed.
//
// The API is JSON-RPC 2.0 over a WebSocket (docs/API.md). Its port and token are files in
// the daemon's data dir: PEERLOG_DATA_DIR, else $XDG_DATA_HOME/peerlog, else
// ~/.local/share/peerlog.

import { readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

const dir = process.env.PEERLOG_DATA_DIR
  || join(process.env.XDG_DATA_HOME || join(homedir(), ".local/share"), "peerlog");
const port = readFileSync(join(dir, "api-port"), "utf8").trim();
const token = readFileSync(join(dir, "api-token"), "utf8").trim();

let args = process.argv.slice(2);
let until;
const u = args.indexOf("--until");
if (u >= 0) { until = args[u + 1]; args.splice(u, 2); }
const [passphrase, text] = args;
if (!passphrase) { console.error("usage: node chat.mjs PASSPHRASE [TEXT] [--until TEXT]"); process.exit(2); }

const ws = new WebSocket(`ws://127.0.0.1:${port}/api/ws?token=${encodeURIComponent(token)}`);
const pending = new Map();
let nextId = 1;
let onEvent = () => {};

// Replies have an id; events (JSON-RPC notifications) have a method and no id.
ws.addEventListener("message", (e) => {
  const msg = JSON.parse(e.data);
  if (!("id" in msg)) return onEvent(msg.method, msg.params);
  const p = pending.get(msg.id);
  pending.delete(msg.id);
  if (msg.error) p.reject(new Error(`${msg.error.message} (${msg.error.code})`)); else p.resolve(msg.result);
});

function call(method, params = {}) {
  return new Promise((resolve, reject) => {
    const id = nextId++;
    pending.set(id, { resolve, reject });
    ws.send(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
  });
}

// Prints a message once (an event may repeat one the history already showed).
const shown = new Set();
function show(m) {
  if (shown.has(m.id)) return false;
  shown.add(m.id);
  console.log(`${m.author_name || m.author.slice(0, 8)}: ${m.text ?? `[file ${m.file.name}]`}`);
  return true;
}

ws.addEventListener("open", async () => {
  try {
    const { room } = await call("rooms.join", { passphrase });
    // Messages that arrive while the history loads are shown too (once).
    onEvent = (method, p) => {
      if (method === "message" && p.room === room.id && show(p) && p.text === until) ws.close();
    };
    if (text) await call("messages.send", { room: room.id, text });
    const { messages } = await call("messages.history", { room: room.id, limit: 50 });
    messages.forEach(show);
    if (messages.some((m) => m.text === until)) ws.close();
  } catch (e) {
    console.error(e.message);
    process.exit(1);
  }
});
ws.addEventListener("error", () => { console.error("cannot reach the daemon"); process.exit(1); });
