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
    /// The message it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyRef>,
    /// The members it names (authors, hex).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
    /// It names this daemon's member.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mentions_me: bool,
    /// Its author edited it: `text` is the newest version.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub edited: bool,
    /// Its author deleted it: it has no `text` or `file` any more.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// The reactions that stand, in the order first given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<ReactionInfo>,
}

/// The message a reply answers, as the reply shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReplyRef {
    /// Its id.
    pub id: String,
    /// Its writer (hex).
    pub author: String,
    /// Its writer's display name, if it set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author_name: Option<String>,
    /// Written by this daemon.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mine: bool,
    /// The start of its newest text (or its file's name); absent if it is not here (yet)
    /// or was deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// One reaction to a message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReactionInfo {
    /// The reaction (an emoji).
    pub emoji: String,
    /// How many members gave it.
    pub count: usize,
    /// This daemon's member is one of them.
    pub mine: bool,
    /// Who (authors, hex).
    pub members: Vec<String>,
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
    /// The id of the message it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Members it names (authors, hex).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
}

/// `messages.send` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SendResult {
    /// The message, durable.
    pub message: Option<MessageInfo>,
}

method!(
    /// `messages.send`: one text message (a reply, with mentions); answers once it is durable.
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

/// The target of `messages.edit`, `messages.delete` and `messages.react`, and its new state.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UpdateResult {
    /// The message as it shows now.
    pub message: Option<MessageInfo>,
}

/// `messages.react` params.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReactParams {
    /// Room id or name.
    pub room: String,
    /// The message's id.
    pub message: String,
    /// The reaction: an emoji (1 to 32 bytes, no spaces).
    pub emoji: String,
    /// False takes the reaction back.
    #[serde(default = "yes", skip_serializing_if = "Clone::clone")]
    pub on: bool,
}

fn yes() -> bool {
    true
}

method!(
    /// `messages.react`: reacts to a message (or takes the reaction back).
    React, "messages.react", ReactParams => UpdateResult;
    "reacts to a message, or takes the reaction back"
);

/// `messages.edit` params.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EditParams {
    /// Room id or name.
    pub room: String,
    /// The id of one of our own text messages.
    pub message: String,
    /// Its new text.
    pub text: String,
}

method!(
    /// `messages.edit`: gives one of our messages a new text (a signed follow-up entry).
    Edit, "messages.edit", EditParams => UpdateResult;
    "gives one of our own messages a new text"
);

/// `messages.delete` params.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeleteParams {
    /// Room id or name.
    pub room: String,
    /// The id of one of our own messages.
    pub message: String,
}

method!(
    /// `messages.delete`: takes one of our messages back (its text is no longer shown).
    Delete, "messages.delete", DeleteParams => UpdateResult;
    "takes one of our own messages back"
);

/// `messages.search` params.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SearchParams {
    /// Room id or name; every readable room if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Words, all of which a message must hold (whole words, any case).
    pub query: String,
    /// Most messages (default 50, at most 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// `messages.search` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SearchResult {
    /// The matches, newest first.
    pub messages: Vec<MessageInfo>,
}

method!(
    /// `messages.search`: the messages that hold every word of a query, newest first.
    Search, "messages.search", SearchParams => SearchResult;
    "the messages that hold every word of a query, newest first"
);
