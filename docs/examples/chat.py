#!/usr/bin/env python3
"""A peerlog client in Python: join a room, send a message, print the room's history, then
print new messages as they arrive.

    python3 chat.py PASSPHRASE [TEXT] [--until TEXT]

With --until it exits once it printed a message with that text (from the history or live).

The API is JSON-RPC 2.0 over a WebSocket (docs/API.md). Its port and token are files in
the daemon's data dir: PEERLOG_DATA_DIR, else $XDG_DATA_HOME/peerlog, else
~/.local/share/peerlog. Needs the `websockets` package (Debian: python3-websockets).
"""

import asyncio
import itertools
import json
import os
import pathlib
import sys

import websockets


def data_dir() -> pathlib.Path:
    if os.environ.get("PEERLOG_DATA_DIR"):
        return pathlib.Path(os.environ["PEERLOG_DATA_DIR"])
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return pathlib.Path(base) / "peerlog"


class Api:
    """Requests with ids; events (notifications: a method, no id) may arrive in between."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)
        self.events = []

    async def call(self, method, params=None):
        id = next(self.ids)
        await self.ws.send(json.dumps({"jsonrpc": "2.0", "id": id, "method": method, "params": params or {}}))
        while True:
            msg = json.loads(await self.ws.recv())
            if "id" not in msg:
                self.events.append(msg)
            elif msg["id"] == id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']['message']} ({msg['error']['code']})")
                return msg["result"]

    async def next_event(self):
        if self.events:
            return self.events.pop(0)
        return json.loads(await self.ws.recv())


shown = set()


def show(m):
    """Prints a message once (an event may repeat one the history already showed)."""
    if m["id"] in shown:
        return False
    shown.add(m["id"])
    who = m.get("author_name") or m["author"][:8]
    print(f"{who}: {m.get('text') or '[file ' + m['file']['name'] + ']'}", flush=True)
    return True


async def main(argv):
    until = None
    if "--until" in argv:
        i = argv.index("--until")
        until = argv[i + 1]
        argv = argv[:i] + argv[i + 2 :]
    if not argv:
        sys.exit(__doc__)
    passphrase, text = argv[0], (argv[1] if len(argv) > 1 else None)
    d = data_dir()
    port = (d / "api-port").read_text().strip()
    token = (d / "api-token").read_text().strip()
    async with websockets.connect(f"ws://127.0.0.1:{port}/api/ws?token={token}", max_size=2**20) as ws:
        api = Api(ws)
        room = (await api.call("rooms.join", {"passphrase": passphrase}))["room"]
        if text:
            await api.call("messages.send", {"room": room["id"], "text": text})
        history = (await api.call("messages.history", {"room": room["id"], "limit": 50}))["messages"]
        for m in history:
            show(m)
        done = any(m.get("text") == until for m in history)
        while not done:
            event = await api.next_event()
            m = event.get("params", {})
            if event.get("method") == "message" and m["room"] == room["id"] and show(m):
                done = until is not None and m.get("text") == until


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
