//! `messages.*`.

use std::sync::Arc;

use peerlog_proto::api::messages::{
    FileRef, HistoryParams, HistoryResult, MessageInfo, SendBatchParams, SendBatchResult, SendParams, SendResult,
};

use super::super::ApiError;
use crate::log::store::StoredMessage;
use crate::log::Body;
use crate::rooms::Room;
use crate::service::Service;

/// Default and largest `messages.history` page.
const HISTORY_DEFAULT: usize = 50;
const HISTORY_MAX: usize = 1000;
/// Most messages in one `messages.send_batch`.
const SEND_BATCH_MAX: usize = 10_000;

/// A message as the API shows it; `None` for kinds that are not shown as messages.
pub(in crate::api) fn message_info(room: &Room, m: &StoredMessage) -> Option<MessageInfo> {
    let (kind, text, file) = match m.message.body.as_ref()? {
        Body::Text { text } => ("text", Some(text.clone()), None),
        Body::File { file_id, name, size, mime, chunks } => (
            "file",
            None,
            Some(FileRef {
                id: hex::encode(file_id),
                name: name.clone(),
                size: *size,
                mime: mime.clone(),
                chunks: chunks.len(),
                url: format!("/api/files/{}/{}", room.id, m.id()),
            }),
        ),
        Body::Profile { .. } => return None,
    };
    let mine = m.feed_key == room.feed_key;
    Some(MessageInfo {
        id: m.id(),
        room: room.id.clone(),
        author: hex::encode(m.feed_key),
        author_name: room.display_name(&m.feed_key),
        mine,
        seen: mine && m.seq < room.own_seen(),
        seq: m.seq,
        lamport: m.message.lamport,
        time: m.message.time_ms,
        kind: kind.into(),
        text,
        file,
    })
}

pub(super) async fn send(service: &Arc<Service>, p: SendParams) -> Result<SendResult, ApiError> {
    let room = service.room(&p.room)?;
    let m = service.send_text(&room, p.text).await?;
    Ok(SendResult { message: message_info(&room, &m) })
}

pub(super) async fn send_batch(service: &Arc<Service>, p: SendBatchParams) -> Result<SendBatchResult, ApiError> {
    if p.texts.is_empty() || p.texts.len() > SEND_BATCH_MAX {
        return Err(ApiError::params(format!("texts must hold 1..={SEND_BATCH_MAX} messages")));
    }
    let room = service.room(&p.room)?;
    let count = p.texts.len();
    let (first, last) = service.send_texts(&room, p.texts).await?;
    Ok(SendBatchResult { count, first: first.id(), last: last.id() })
}

pub(super) fn history(service: &Service, p: HistoryParams) -> Result<HistoryResult, ApiError> {
    let room = service.room(&p.room)?;
    let limit = p.limit.unwrap_or(HISTORY_DEFAULT);
    if limit == 0 || limit > HISTORY_MAX {
        return Err(ApiError::params(format!("limit must be 1..={HISTORY_MAX}")));
    }
    let msgs = service.history(&room, p.before.as_deref(), limit)?;
    Ok(HistoryResult { messages: msgs.iter().filter_map(|m| message_info(&room, m)).collect() })
}
