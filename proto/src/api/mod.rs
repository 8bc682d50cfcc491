//! The local WebSocket API envelope (`GET /api/ws`), JSON-RPC-2.0-shaped.
//!
//! Client → daemon: [`Request`]. Daemon → client: [`Response`] (exactly one per request
//! that carried an `id`) and [`Event`] (pushed). Method names and error codes are a
//! contract: see `docs/API.md`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod events;
pub mod files;
pub mod messages;
pub mod node;
pub mod peers;
pub mod rooms;

/// No params.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NoParams {}

/// One API method: its name and the types of its params and result, which the daemon, the
/// CLI and the tests share (the JSON on the wire is their serde form). Each method is a
/// unit struct implementing this; the modules hold them by group.
pub trait Method {
    /// The method's name on the wire, e.g. `rooms.join`.
    const NAME: &'static str;
    /// Its params.
    type Params: Serialize + DeserializeOwned + Send;
    /// Its result.
    type Result: Serialize + DeserializeOwned + Send;
}

/// Declares a method: `method!(Join, "rooms.join", JoinParams => JoinResult)`.
macro_rules! method {
    ($(#[$doc:meta])* $name:ident, $wire:literal, $params:ty => $result:ty) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub struct $name;

        impl $crate::api::Method for $name {
            const NAME: &'static str = $wire;
            type Params = $params;
            type Result = $result;
        }
    };
}
pub(crate) use method;

/// Version of this API, reported by `node.info`. Grows only.
pub const API_VERSION: u32 = 1;

/// A request from a client.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    /// Echoed in the response; any JSON value the client chooses.
    #[serde(default)]
    pub id: Value,
    /// Method name, e.g. `rooms.join`.
    pub method: String,
    /// Method parameters (an object), absent for none.
    #[serde(default)]
    pub params: Value,
}

/// A reply to one request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorObject {
    /// Stable numeric code, see [`codes`].
    pub code: i32,
    /// Human-readable text; may change between versions.
    pub message: String,
}

/// A server-pushed event.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    /// Event name, e.g. `message`.
    pub event: String,
    /// Event payload.
    pub params: Value,
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
}

impl Response {
    /// A success reply.
    pub fn ok(id: Value, result: Value) -> Self {
        Self { id, result: Some(result), error: None }
    }

    /// An error reply.
    pub fn err(id: Value, code: i32, message: impl Into<String>) -> Self {
        Self { id, result: None, error: Some(ErrorObject { code, message: message.into() }) }
    }
}
