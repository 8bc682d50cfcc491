//! `messages.*`: sending and reading messages.

use serde::{Deserialize, Serialize};

use super::method;

/// A message as the API shows it (history, `messages.send`, the `message` event).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MessageInfo {
    /// `<author hex>:<seq>`.
    pub id: String,
    /// The room's id.
    pub room: String,
    /// The writer (hex).
    pub author: String,
    /// The writer's display name in the room, if it set one.
    pub author_name: Option<String>,
    /// Written by this daemon.
    pub mine: bool,
    /// Ours, and a peer holds it.
    pub seen: bool,
    /// Position in the writer's feed.
    pub seq: u64,
    /// Lamport clock (display order).
    pub lamport: u64,
    /// The writer's clock, ms since the epoch.
    pub time: u64,
    /// `text` or `file`.
    pub kind: String,
    /// The text (`kind: text`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The file (`kind: file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileRef>,
}

/// A shared file, as a message carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FileRef {
    /// The file's id (hex).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its MIME type.
    pub mime: String,
    /// How many chunks it has.
    pub chunks: usize,
    /// Where the browser downloads it (with a ticket or the token).
    pub url: String,
}

/// `messages.send` params.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SendParams {
    /// Room id or name.
    pub room: String,
    /// The text.
    pub text: String,
}

/// `messages.send` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SendResult {
    /// The message, durable.
    pub message: Option<MessageInfo>,
}

method!(
    /// `messages.send`: one text message; answers once it is durable.
    Send, "messages.send", SendParams => SendResult;
    "one text message; answers once it is durable"
);

/// `messages.send_batch` params.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SendBatchParams {
    /// Room id or name.
    pub room: String,
    /// The texts, in order.
    pub texts: Vec<String>,
}

/// `messages.send_batch` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SendBatchResult {
    /// How many were sent.
    pub count: usize,
    /// The first one's id.
    pub first: String,
    /// The last one's id.
    pub last: String,
}

method!(
    /// `messages.send_batch`: many texts as one append with one signed head.
    SendBatch, "messages.send_batch", SendBatchParams => SendBatchResult;
    "many texts as one append with one signed head"
);

/// `messages.history` params.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HistoryParams {
    /// Room id or name.
    pub room: String,
    /// Only messages before this id (the previous page's first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// Most messages in the page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// `messages.history` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HistoryResult {
    /// The page, oldest first.
    pub messages: Vec<MessageInfo>,
}

method!(
    /// `messages.history`: a page of the room's history, newest last.
    History, "messages.history", HistoryParams => HistoryResult;
    "a page of the room's history, newest last"
);
