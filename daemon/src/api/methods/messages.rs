//! `messages.*`.

use std::sync::Arc;

use peerlog_proto::api::messages::{
    DeleteParams, EditParams, FileRef, HistoryParams, HistoryResult, MessageInfo, ReactParams, ReactionInfo, ReplyRef,
    SearchParams, SearchResult, SendBatchParams, SendBatchResult, SendParams, SendResult, UpdateResult,
};

use super::super::ApiError;
use super::writer_key;
use crate::log::store::{StoredMessage, HISTORY_PAGE_BYTES};
use crate::log::{Body, MessageRef};
use crate::rooms::Room;
use crate::service::{Service, ServiceError};

/// Default and largest `messages.history` page.
const HISTORY_DEFAULT: usize = 50;
const HISTORY_MAX: usize = 1000;
/// Most messages in one `messages.send_batch`.
const SEND_BATCH_MAX: usize = 10_000;
/// Default and largest `messages.search` result.
const SEARCH_DEFAULT: usize = 50;
const SEARCH_MAX: usize = 500;
/// Characters of a replied-to message that a reply shows.
const QUOTE_CHARS: usize = 200;
/// Store pages a history page reads at most to fill itself with shown messages (entries
/// such as reactions and profiles take places in a store page but are not shown).
const HISTORY_READS_MAX: usize = 64;

/// A message as the API shows it, with its edits, deletion and reactions folded in;
/// `None` for kinds that are not shown as messages.
pub(in crate::api) fn message_info(room: &Room, m: &StoredMessage) -> Option<MessageInfo> {
    let (kind, text, file, reply_to, mentions) = match m.message.body.as_ref()? {
        Body::Text { text } => ("text", Some(text.clone()), None, None, &[][..]),
        Body::Post { text, reply_to, mentions } => ("text", Some(text.clone()), None, reply_to.as_ref(), &mentions[..]),
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
            None,
            &[][..],
        ),
        Body::Profile { .. }
        | Body::Edit { .. }
        | Body::Delete { .. }
        | Body::React { .. }
        | Body::Rotate { .. }
        | Body::Admin { .. }
        | Body::Device { .. }
        | Body::LinkAsk { .. }
        | Body::LinkGrant { .. }
        | Body::Unlink { .. }
        | Body::Continues { .. } => return None,
    };
    let state = room.follow_ups(&m.at());
    let mine = m.feed_key == room.feed_key;
    let reactions = state
        .shown_reactions(|member| room.is_blocked(member))
        .into_iter()
        .map(|(emoji, members)| ReactionInfo {
            emoji,
            count: members.len(),
            mine: members.contains(&room.feed_key),
            members: members.iter().map(hex::encode).collect(),
        })
        .collect();
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
        text: text.as_deref().and_then(|t| state.text_now(t)).map(String::from),
        file: file.filter(|_| !state.deleted),
        reply_to: reply_to.map(|at| reply_ref(room, at)),
        mentions: mentions.iter().map(hex::encode).collect(),
        mentions_me: mentions.contains(&room.feed_key),
        edited: state.edit.is_some() && !state.deleted,
        deleted: state.deleted,
        reactions,
    })
}

/// The message a reply answers, as the reply shows it: the start of what it says now.
fn reply_ref(room: &Room, at: &MessageRef) -> ReplyRef {
    let target = room.message(&at.feed, at.seq).ok().flatten();
    let state = room.follow_ups(at);
    let text = target.and_then(|t| {
        let now = state.text_now(t.message.body.as_ref()?.searchable()?)?;
        Some(now.chars().take(QUOTE_CHARS).collect())
    });
    ReplyRef {
        id: at.id(),
        author: hex::encode(at.feed),
        author_name: room.display_name(&at.feed),
        mine: at.feed == room.feed_key,
        text,
    }
}

fn message_ref(id: &str) -> Result<MessageRef, ApiError> {
    MessageRef::parse(id)
        .ok_or_else(|| ApiError::params(format!("bad message id {id:?} (expected <author hex>:<seq>)")))
}

pub(super) async fn send(service: &Arc<Service>, p: SendParams) -> Result<SendResult, ApiError> {
    let room = service.room(&p.room)?;
    let reply_to = p.reply_to.as_deref().map(message_ref).transpose()?;
    let mentions = p.mentions.iter().map(|m| writer_key(m)).collect::<Result<Vec<_>, _>>()?;
    let m = service.send_post(&room, p.text, reply_to, mentions).await?;
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

/// A page of `limit` shown messages: store pages are read until it is full, the history
/// begins, or the store cut a page at its byte budget (so that a page stays about
/// [`HISTORY_PAGE_BYTES`], as documented, however many hidden entries sit in it).
pub(super) fn history(service: &Service, p: HistoryParams) -> Result<HistoryResult, ApiError> {
    let room = service.room(&p.room)?;
    let limit = p.limit.unwrap_or(HISTORY_DEFAULT);
    if limit == 0 || limit > HISTORY_MAX {
        return Err(ApiError::params(format!("limit must be 1..={HISTORY_MAX}")));
    }
    let mut shown: Vec<MessageInfo> = Vec::new();
    let mut bytes = 0;
    let mut before = p.before;
    for _ in 0..HISTORY_READS_MAX {
        let want = limit - shown.len();
        let page = service.history(&room, before.as_deref(), want)?;
        let Some(oldest) = page.first() else { break };
        before = Some(oldest.id());
        let mut older: Vec<MessageInfo> = page.iter().filter_map(|m| message_info(&room, m)).collect();
        bytes += older.iter().map(|m| m.text.as_ref().map_or(0, String::len)).sum::<usize>();
        older.append(&mut shown);
        shown = older;
        // Short of `want`: the history began, or the store cut the page at its budget.
        if shown.len() >= limit || page.len() < want || bytes >= HISTORY_PAGE_BYTES {
            break;
        }
    }
    Ok(HistoryResult { messages: shown })
}

/// Runs a follow-up on a message and answers with the message as it shows now.
async fn update<F, Fut>(service: &Arc<Service>, room: &str, message: &str, act: F) -> Result<UpdateResult, ApiError>
where
    F: FnOnce(Arc<Room>, MessageRef) -> Fut,
    Fut: std::future::Future<Output = Result<StoredMessage, ServiceError>>,
{
    let room = service.room(room)?;
    let m = act(room.clone(), message_ref(message)?).await?;
    Ok(UpdateResult { message: message_info(&room, &m) })
}

pub(super) async fn react(service: &Arc<Service>, p: ReactParams) -> Result<UpdateResult, ApiError> {
    update(service, &p.room, &p.message, |room, at| async move { service.react(&room, at, p.emoji, p.on).await }).await
}

pub(super) async fn edit(service: &Arc<Service>, p: EditParams) -> Result<UpdateResult, ApiError> {
    update(service, &p.room, &p.message, |room, at| async move { service.edit(&room, at, p.text).await }).await
}

pub(super) async fn delete(service: &Arc<Service>, p: DeleteParams) -> Result<UpdateResult, ApiError> {
    update(service, &p.room, &p.message, |room, at| async move { service.delete(&room, at).await }).await
}

/// Reads and decrypts (to make missing filters, and to check candidates): off the async
/// threads.
pub(super) async fn search(service: &Arc<Service>, p: SearchParams) -> Result<SearchResult, ApiError> {
    let service = service.clone();
    tokio::task::spawn_blocking(move || search_now(&service, p))
        .await
        .map_err(|e| ApiError::from(ServiceError::Invalid(format!("search failed: {e}"))))?
}

fn search_now(service: &Service, p: SearchParams) -> Result<SearchResult, ApiError> {
    let limit = p.limit.unwrap_or(SEARCH_DEFAULT);
    if limit == 0 || limit > SEARCH_MAX {
        return Err(ApiError::params(format!("limit must be 1..={SEARCH_MAX}")));
    }
    let rooms = match &p.room {
        Some(room) => vec![service.room(room)?],
        None => service.rooms.list(),
    };
    let hits = service.search(&rooms, &p.query, limit)?;
    Ok(SearchResult { messages: hits.iter().filter_map(|(room, m)| message_info(room, m)).collect() })
}
