#!/bin/sh
# peerlog from the shell with websocat (https://github.com/vi/websocat). The API is
# JSON-RPC 2.0 over a WebSocket (docs/API.md); this sends one batch: no events on this
# connection (a notification, so it has no reply), join the room and name it here, send a
# message, read the newest messages. The reply is one line: an array of the three
# replies, in order.
#
#     sh chat.sh PASSPHRASE ROOM_NAME TEXT
#
# ROOM_NAME names the room on this daemon the first time it is joined; later the room
# keeps the name it has. The API port and token are files in the daemon's data dir:
# PEERLOG_DATA_DIR, else $XDG_DATA_HOME/peerlog, else ~/.local/share/peerlog.
set -eu
[ $# -eq 3 ] || { echo "usage: sh chat.sh PASSPHRASE ROOM_NAME TEXT" >&2; exit 2; }
dir=${PEERLOG_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/peerlog}
port=$(cat "$dir/api-port")
token=$(cat "$dir/api-token")
# A JSON string of $1 (backslashes and quotes escaped; keep control characters out).
str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
batch="[{\"jsonrpc\":\"2.0\",\"method\":\"subscribe\",\"params\":{\"events\":[]}},\
{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"rooms.join\",\"params\":{\"passphrase\":$(str "$1"),\"name\":$(str "$2")}},\
{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"messages.send\",\"params\":{\"room\":$(str "$2"),\"text\":$(str "$3")}},\
{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"messages.history\",\"params\":{\"room\":$(str "$2"),\"limit\":20}}]"
# -n: do not close when stdin ends; -1: one message out, one in, then exit.
printf '%s\n' "$batch" | websocat -n1 "ws://127.0.0.1:$port/api/ws?token=$token"
