//! Replies, mentions, edits, deletions, reactions and search: the chat on top of the log.
//! Each change is an entry of its own, signed and replicated like a message, that names
//! the message it is about ([`Body::Edit`], [`Body::Delete`], [`Body::React`]); the store
//! folds them ([`crate::log::index`]). The original stays in the log.

use std::sync::Arc;

use peerlog_proto::wire::FeedKey;

use super::{Service, ServiceError};
use crate::log::index::{self, MENTIONS_MAX};
use crate::log::store::StoredMessage;
use crate::log::{Body, MessageRef};
use crate::rooms::Room;

/// Most groups a search decrypts to check their words, per room (the newest first; 4,096
/// groups are 262,144 entries). Making missing filters is not bounded: the first search of
/// a room reads all of it once.
const SEARCH_GROUPS_MAX: usize = 4096;

impl Service {
    /// Sends a text that answers `reply_to` and/or names `mentions` (a plain text if
    /// neither, which every version reads).
    pub async fn send_post(
        &self,
        room: &Room,
        text: String,
        reply_to: Option<MessageRef>,
        mut mentions: Vec<FeedKey>,
    ) -> Result<StoredMessage, ServiceError> {
        if reply_to.is_none() && mentions.is_empty() {
            return self.send_text(room, text).await;
        }
        self.check_text(&text)?;
        if let Some(target) = &reply_to {
            self.stored_message(room, target)?;
        }
        mentions.sort_unstable();
        mentions.dedup();
        if mentions.len() > MENTIONS_MAX {
            return Err(ServiceError::Invalid(format!("a message names at most {MENTIONS_MAX} members")));
        }
        self.append_one(room, Body::Post { text, reply_to, mentions }).await
    }

    /// Gives one of our own text messages a new text.
    pub async fn edit(&self, room: &Room, target: MessageRef, text: String) -> Result<StoredMessage, ServiceError> {
        self.check_text(&text)?;
        let original = self.own_message(room, &target, "edit")?;
        if !matches!(original.message.body, Some(Body::Text { .. } | Body::Post { .. })) {
            return Err(ServiceError::Invalid("only text messages can be edited".into()));
        }
        if room.follow_ups(&target).deleted {
            return Err(ServiceError::Invalid("this message was deleted".into()));
        }
        self.append_one(room, Body::Edit { target, text }).await?;
        self.stored_message(room, &target)
    }

    /// Takes one of our own messages back.
    pub async fn delete(&self, room: &Room, target: MessageRef) -> Result<StoredMessage, ServiceError> {
        self.own_message(room, &target, "delete")?;
        if !room.follow_ups(&target).deleted {
            self.append_one(room, Body::Delete { target }).await?;
        }
        self.stored_message(room, &target)
    }

    /// Reacts to a message with `emoji`, or takes that reaction back.
    pub async fn react(
        &self,
        room: &Room,
        target: MessageRef,
        emoji: String,
        on: bool,
    ) -> Result<StoredMessage, ServiceError> {
        if !index::valid_reaction(&emoji) {
            return Err(ServiceError::Invalid(format!(
                "a reaction is 1 to {} bytes without spaces (an emoji)",
                index::EMOJI_MAX_BYTES
            )));
        }
        let m = self.stored_message(room, &target)?;
        if !matches!(m.message.body, Some(Body::Text { .. } | Body::Post { .. } | Body::File { .. })) {
            return Err(ServiceError::Invalid("only messages and files take reactions".into()));
        }
        self.append_one(room, Body::React { target, emoji, on }).await?;
        self.stored_message(room, &target)
    }

    /// The messages of `rooms` that hold every word of `query`, newest first, as they
    /// show now (an edited message by its newest text; deleted ones and blocked writers'
    /// never).
    pub fn search(
        &self,
        rooms: &[Arc<Room>],
        query: &str,
        limit: usize,
    ) -> Result<Vec<(Arc<Room>, StoredMessage)>, ServiceError> {
        let words = index::words(query);
        if words.is_empty() {
            return Err(ServiceError::Invalid("the query holds no words (letters or digits)".into()));
        }
        let mut hits: Vec<(crate::log::store::OrderKey, Arc<Room>, StoredMessage)> = Vec::new();
        for room in rooms.iter().filter(|r| !r.is_seeder()) {
            // The groups that may hold the words, newest first, with their messages if
            // they were read to make their filter.
            let mut groups: Vec<(u64, FeedKey, Option<Vec<StoredMessage>>)> = Vec::new();
            for (feed, meta) in self.store.room_feeds(&room.discovery_key)? {
                if room.is_blocked(&feed) {
                    continue;
                }
                let filters: std::collections::HashMap<u64, (u64, Vec<u8>)> =
                    self.store.search_filters(&feed)?.into_iter().map(|(g, c, f)| (g, (c, f))).collect();
                for (start, stored) in index::stored_per_group(&meta.ranges) {
                    let (filter, read) = match filters.get(&start) {
                        Some((covered, filter)) if *covered == stored && filter.len() == index::BLOOM_BYTES => {
                            (filter.clone(), None)
                        }
                        _ => {
                            let messages = room.messages(&feed, start, start + index::SEARCH_GROUP)?;
                            let filter =
                                index::filter_of(messages.iter().filter_map(|m| m.message.body.as_ref()?.searchable()));
                            self.store.put_search_filter(&feed, start, stored, &filter)?;
                            (filter, Some(messages))
                        }
                    };
                    if words.iter().all(|w| index::bloom_has(&filter, w)) {
                        groups.push((start, feed, read));
                    }
                }
            }
            groups.sort_unstable_by_key(|(start, feed, _)| std::cmp::Reverse((*start, *feed)));
            groups.truncate(SEARCH_GROUPS_MAX);
            let mut found: Vec<MessageRef> = Vec::new();
            for (start, feed, read) in groups {
                let messages = match read {
                    Some(messages) => messages,
                    None => room.messages(&feed, start, start + index::SEARCH_GROUP)?,
                };
                for m in messages {
                    let Some(body) = m.message.body.as_ref() else { continue };
                    let Some(text) = body.searchable() else { continue };
                    if !index::text_matches(text, &words) {
                        continue;
                    }
                    let at = match body {
                        // An edit finds its message, if the author made it.
                        Body::Edit { target, .. } if target.feed == m.feed_key => *target,
                        Body::Edit { .. } => continue,
                        _ => MessageRef { feed: m.feed_key, seq: m.seq },
                    };
                    if !found.contains(&at) {
                        found.push(at);
                    }
                }
            }
            for at in found {
                let state = room.follow_ups(&at);
                let Some(m) = room.message(&at.feed, at.seq)? else { continue };
                // By what it says now: the newest edit; never once deleted.
                let now = m.message.body.as_ref().and_then(Body::searchable).and_then(|t| state.text_now(t));
                if now.is_some_and(|now| index::text_matches(now, &words)) {
                    let key = (m.message.lamport, m.message.time_ms, m.feed_key, m.seq);
                    hits.push((key, room.clone(), m));
                }
            }
        }
        hits.sort_unstable_by_key(|h| std::cmp::Reverse(h.0));
        hits.truncate(limit);
        Ok(hits.into_iter().map(|(_, room, m)| (room, m)).collect())
    }

    /// A message of the room, stored here.
    pub fn stored_message(&self, room: &Room, at: &MessageRef) -> Result<StoredMessage, ServiceError> {
        room.message(&at.feed, at.seq)?
            .ok_or_else(|| ServiceError::NotFound(format!("no message {:?} in this room", at.id())))
    }

    fn own_message(&self, room: &Room, at: &MessageRef, what: &str) -> Result<StoredMessage, ServiceError> {
        let m = self.stored_message(room, at)?;
        if at.feed != room.feed_key {
            return Err(ServiceError::Invalid(format!("only its author can {what} a message")));
        }
        Ok(m)
    }

    async fn append_one(&self, room: &Room, body: Body) -> Result<StoredMessage, ServiceError> {
        self.append_durable(room, vec![body])
            .await?
            .pop()
            .ok_or_else(|| ServiceError::Invalid("nothing appended".into()))
    }
}
