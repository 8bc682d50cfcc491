//! `files.*` and `subscribe`: methods that need the connection (bytes follow the request
//! or the reply as binary frames; events start flowing).

use serde::{Deserialize, Serialize};

use super::messages::MessageInfo;
use super::method;

/// A shared file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SharedFile {
    /// The file's id (hex).
    pub id: String,
    /// The id of the message that shared it.
    pub message: String,
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its MIME type.
    pub mime: String,
    /// How many chunks it has.
    pub chunks: usize,
    /// Where the browser downloads it (with a ticket, see `files.url`).
    pub url: String,
}

/// `files.send` params: a `path` on the daemon's machine (CLI credential only), or a
/// `name` and `size` with the bytes following as binary frames.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SendFileParams {
    /// Room id or name.
    pub room: String,
    /// A file on the daemon's machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The file's name (default: the path's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its MIME type (default: from the name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
    /// Bytes that follow as binary frames (streamed upload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// `files.send` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SendFileResult {
    /// The file.
    pub file: SharedFile,
    /// The message that shares it, durable.
    pub message: Option<MessageInfo>,
}

method!(
    /// `files.send`: shares a file in a room.
    SendFile, "files.send", SendFileParams => SendFileResult;
    "shares a file in a room"
);

/// `files.get` params.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct GetFileParams {
    /// Room id or name.
    pub room: String,
    /// The id of the message that shared the file.
    pub file: String,
    /// Save it here, on the daemon's machine (CLI credential only; never overwrites).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Send its bytes after the reply, as binary frames.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

/// `files.get` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct GetFileResult {
    /// The file, all of its chunks here and verified.
    pub file: SharedFile,
    /// Where it was saved, if it was.
    pub saved_to: Option<String>,
    /// Whether its bytes follow.
    pub streamed: bool,
}

method!(
    /// `files.get`: fetches a file's chunks from the room, then saves or streams it.
    GetFile, "files.get", GetFileParams => GetFileResult;
    "fetches a file's chunks from the room, then saves or streams it"
);

/// `files.url` params.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FileUrlParams {
    /// Room id or name.
    pub room: String,
    /// The id of the message that shared the file.
    pub file: String,
    /// For showing in the page (images), not as a download.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inline: bool,
}

/// `files.url` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FileUrl {
    /// A download URL with a short-lived ticket for this one file.
    pub url: String,
    /// When the ticket expires, ms since the epoch.
    pub expires_ms: u64,
}

method!(
    /// `files.url`: a short-lived download URL for one file.
    Url, "files.url", FileUrlParams => FileUrl;
    "a short-lived download URL for one file"
);

/// `subscribe` params.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SubscribeParams {
    /// Event names to receive (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
}

/// `subscribe` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Subscribed {
    /// Always true.
    pub subscribed: bool,
    /// The events this connection receives from now on.
    pub events: Vec<String>,
}

method!(
    /// `subscribe`: which events this connection receives.
    Subscribe, "subscribe", SubscribeParams => Subscribed;
    "which events this connection receives"
);
