//! The local WebSocket API envelope (`GET /api/ws`): JSON-RPC 2.0.
//!
//! Client → daemon: [`Request`], or an array of them (a batch). Daemon → client:
//! [`Response`] (exactly one per request that carried an `id`; an array for a batch) and
//! [`Event`] (pushed, a notification). Method names and error codes are a contract: see
//! `docs/API.md`.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod devices;
pub mod events;
pub mod files;
pub mod messages;
pub mod node;
pub mod openrpc;
pub mod peers;
pub mod rooms;

/// No params.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NoParams {}

/// One API method: its name and the types of its params and result, which the daemon, the
/// CLI and the tests share (the JSON on the wire is their serde form). Each method is a
/// unit struct implementing this; the modules hold them by group.
pub trait Method {
    /// The method's name on the wire, e.g. `rooms.join`.
    const NAME: &'static str;
    /// What it does, in a line (the OpenRPC document's summary).
    const SUMMARY: &'static str;
    /// Its params.
    type Params: Serialize + DeserializeOwned + Send + JsonSchema;
    /// Its result.
    type Result: Serialize + DeserializeOwned + Send + JsonSchema;
}

/// Declares a method:
/// `method!(Join, "rooms.join", JoinParams => JoinResult; "joins a room")`.
macro_rules! method {
    ($(#[$doc:meta])* $name:ident, $wire:literal, $params:ty => $result:ty; $summary:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub struct $name;

        impl $crate::api::Method for $name {
            const NAME: &'static str = $wire;
            const SUMMARY: &'static str = $summary;
            type Params = $params;
            type Result = $result;
        }
    };
}
pub(crate) use method;

/// Version of this API, reported by `node.info`. 2: JSON-RPC 2.0 exactly (the version
/// member, notifications, batches; events are notifications). See `docs/API.md`.
pub const API_VERSION: u32 = 2;

/// The JSON-RPC version every message carries.
pub const JSONRPC: &str = "2.0";

/// Most requests in one batch.
pub const MAX_BATCH: usize = 100;

fn jsonrpc() -> String {
    JSONRPC.into()
}

/// Deserializes a member that is present, `null` included, as `Some` (absent: `None`, by
/// `#[serde(default)]`): JSON-RPC tells a notification (no `id`) from `"id": null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A request from a client (JSON-RPC 2.0). Without an `id` it is a notification: it is
/// carried out and gets no reply.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Request {
    /// `"2.0"`. API version 1 clients leave it out; that is still accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsonrpc: Option<String>,
    /// Echoed in the response; a string, a number or `null`. Absent: a notification.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// Method name, e.g. `rooms.join`.
    pub method: String,
    /// Method parameters (an object), absent for none.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub params: Value,
}

impl Request {
    /// A request with this id.
    pub fn new(id: impl Into<Value>, method: impl Into<String>, params: Value) -> Self {
        Self { jsonrpc: Some(jsonrpc()), id: Some(id.into()), method: method.into(), params }
    }
}

/// A reply to one request.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Response {
    /// `"2.0"`.
    #[serde(default = "jsonrpc")]
    pub jsonrpc: String,
    /// The request's id (`null` when the request could not be parsed).
    pub id: Value,
    /// Present on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Present on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorObject>,
}

/// An error reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorObject {
    /// Stable numeric code, see [`codes`].
    pub code: i32,
    /// Human-readable text; may change between versions.
    pub message: String,
}

/// A server-pushed event: a JSON-RPC notification whose method is the event's name.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Event {
    /// `"2.0"`.
    #[serde(default = "jsonrpc")]
    pub jsonrpc: String,
    /// Event name, e.g. `message`.
    pub method: String,
    /// Event payload.
    pub params: Value,
    /// The name again, as API version 1 sent it (`{"event": …, "params": …}`). Deprecated:
    /// sent until API version 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

impl Event {
    /// An event (also named in the deprecated `event` member).
    pub fn new(name: impl Into<String>, params: Value) -> Self {
        let name = name.into();
        Self { jsonrpc: jsonrpc(), event: Some(name.clone()), method: name, params }
    }

    /// Its params as the typed event `E`, if it is one (`None` for another event; an
    /// error if it is one but does not decode).
    pub fn decode<E: events::EventParams + DeserializeOwned>(&self) -> Option<Result<E, serde_json::Error>> {
        (self.method == E::NAME).then(|| E::deserialize(&self.params))
    }
}

/// Stable error codes. JSON-RPC's own range for protocol errors, ours from 1000.
pub mod codes {
    /// The frame is not valid JSON.
    pub const PARSE_ERROR: i32 = -32700;
    /// Valid JSON but not a request object.
    pub const INVALID_REQUEST: i32 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i32 = -32601;
    /// Params missing, of the wrong type or out of range.
    pub const INVALID_PARAMS: i32 = -32602;
    /// Something failed inside the daemon.
    pub const INTERNAL: i32 = -32603;
    /// The named room is not joined here.
    pub const ROOM_NOT_FOUND: i32 = 1001;
    /// The message or request is larger than the configured limit.
    pub const TOO_LARGE: i32 = 1002;
    /// The daemon is shutting down.
    pub const SHUTTING_DOWN: i32 = 1003;
    /// The invite string is not a valid invite.
    pub const BAD_INVITE: i32 = 1004;
    /// Storage failed.
    pub const STORAGE: i32 = 1005;
    /// The room is seeded blindly here: no content key, so nothing to read or write.
    pub const SEEDER_ONLY: i32 = 1006;
    /// Paths on the daemon's machine need the CLI credential, not the API token.
    pub const LOCAL_ONLY: i32 = 1007;
    /// A weak passphrase for a room announced on the public DHT, without `weak_ok`.
    pub const WEAK_PASSPHRASE: i32 = 1008;
    /// The named message (or file) is not in this room here.
    pub const NOT_FOUND: i32 = 1009;
    /// No room peer sent what was asked for in time; what arrived is kept, ask again.
    pub const UNAVAILABLE: i32 = 1010;
    /// A file on the daemon's machine cannot be read or written (missing, unreadable, or
    /// already there: files are never overwritten).
    pub const LOCAL_FILE: i32 = 1011;
    /// A streamed upload ended early or stalled; nothing was sent to the room.
    pub const UPLOAD_INCOMPLETE: i32 = 1012;
    /// Only the room's admins may do this (remove members of a room made by a rotation).
    pub const NOT_ADMIN: i32 = 1013;

    /// Every code with its name (for the OpenRPC document).
    pub const ALL: &[(i32, &str)] = &[
        (PARSE_ERROR, "parse error"),
        (INVALID_REQUEST, "invalid request"),
        (METHOD_NOT_FOUND, "method not found"),
        (INVALID_PARAMS, "invalid params"),
        (INTERNAL, "internal error"),
        (ROOM_NOT_FOUND, "room not found"),
        (TOO_LARGE, "too large"),
        (SHUTTING_DOWN, "shutting down"),
        (BAD_INVITE, "bad invite"),
        (STORAGE, "storage failed"),
        (SEEDER_ONLY, "seeder only"),
        (LOCAL_ONLY, "local only"),
        (WEAK_PASSPHRASE, "weak passphrase"),
        (NOT_FOUND, "not found"),
        (UNAVAILABLE, "unavailable"),
        (LOCAL_FILE, "local file"),
        (UPLOAD_INCOMPLETE, "upload incomplete"),
        (NOT_ADMIN, "not an admin"),
    ];
}

impl Response {
    /// A success reply.
    pub fn ok(id: Value, result: Value) -> Self {
        Self { jsonrpc: jsonrpc(), id, result: Some(result), error: None }
    }

    /// An error reply.
    pub fn err(id: Value, code: i32, message: impl Into<String>) -> Self {
        Self { jsonrpc: jsonrpc(), id, result: None, error: Some(ErrorObject { code, message: message.into() }) }
    }
}
