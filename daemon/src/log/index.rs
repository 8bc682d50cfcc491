//! What the store keeps beside the log to show it: the follow-ups of a message (edits, a
//! deletion, reactions) folded into one state, and a search index of Bloom filters, one per
//! group of [`SEARCH_GROUP`] entries of a feed. Pure; [`super::store`] keeps both in sled.
//!
//! Follow-ups are entries of their own (`Body::Edit`, `Delete`, `React`), so the log stays
//! append-only and signed: the original text stays in the log, and a member that did not
//! know a kind skips it. They may arrive before the message they are about (a catch-up
//! fetches newest first), so the state is kept by target whether or not it is here yet.
//!
//! Search costs one key per group, not per word or per message: sled's cost is per key
//! (see the store's notes). Filters are made by the searches that need them, not when
//! entries arrive (that cost catch-up 40 %): a filter records how many entries it covers,
//! and a search remakes the filters of groups that hold more (or fewer) entries now. A
//! query tests each group's filter, then decrypts only the groups that may match and checks
//! the words in the text itself, so a false positive costs time, never a wrong result.

use peerlog_proto::wire::FeedKey;
use serde::{Deserialize, Serialize};

use super::{Body, MessageRef};

/// Most members one message names.
pub const MENTIONS_MAX: usize = 64;
/// Longest reaction, in bytes (an emoji, or a short word without spaces).
pub const EMOJI_MAX_BYTES: usize = 32;
/// Most (member, reaction) records kept per message; more are ignored.
pub const REACTIONS_MAX: usize = 512;
/// Most different reactions one member keeps on one message.
pub const REACTIONS_PER_MEMBER_MAX: usize = 16;
/// Entries of a feed per search filter.
pub const SEARCH_GROUP: u64 = 64;
/// Bytes of one filter (2,048 bits: about 1 % false positives at 250 words a group).
pub const BLOOM_BYTES: usize = 256;
const BLOOM_HASHES: u64 = 3;
/// Words longer than this are indexed and searched by their first this many characters.
const WORD_MAX_CHARS: usize = 64;

/// The follow-ups of one message, folded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowUps {
    /// The author's newest edit: the edit's seq in the author's feed, and the new text.
    pub edit: Option<(u64, String)>,
    /// Deleted by its author (final).
    pub deleted: bool,
    /// Reactions, one record per member and reaction, newest state.
    pub reactions: Vec<Reaction>,
}

/// One member's reaction to a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    /// The member (feed key).
    pub member: FeedKey,
    /// The reaction.
    pub emoji: String,
    /// The seq of the member's newest entry about it.
    pub seq: u64,
    /// Whether it stands (false: taken back).
    pub on: bool,
}

/// Whether `emoji` may be a reaction: 1 to [`EMOJI_MAX_BYTES`] bytes, no spaces or controls.
pub fn valid_reaction(emoji: &str) -> bool {
    !emoji.is_empty() && emoji.len() <= EMOJI_MAX_BYTES && !emoji.chars().any(|c| c.is_control() || c.is_whitespace())
}

impl FollowUps {
    /// Folds in `body`, written by `author` at `seq` of its feed, about `target`. Only a
    /// message's author edits or deletes it; of several edits (or reaction changes) the
    /// newest in the writer's feed wins, whatever order they arrive in; a deletion is
    /// final. Returns whether the state changed.
    pub fn apply(&mut self, target: &MessageRef, author: &FeedKey, seq: u64, body: &Body) -> bool {
        match body {
            Body::Edit { text, .. } if *author == target.feed => {
                if self.edit.as_ref().is_some_and(|(newer, _)| *newer >= seq) {
                    return false;
                }
                self.edit = Some((seq, text.clone()));
                true
            }
            Body::Delete { .. } if *author == target.feed => !std::mem::replace(&mut self.deleted, true),
            Body::React { emoji, on, .. } if valid_reaction(emoji) => {
                if let Some(r) = self.reactions.iter_mut().find(|r| r.member == *author && r.emoji == *emoji) {
                    if r.seq >= seq {
                        return false;
                    }
                    r.seq = seq;
                    let changed = r.on != *on;
                    r.on = *on;
                    return changed;
                }
                let theirs = self.reactions.iter().filter(|r| r.member == *author).count();
                if self.reactions.len() >= REACTIONS_MAX || theirs >= REACTIONS_PER_MEMBER_MAX {
                    return false;
                }
                self.reactions.push(Reaction { member: *author, emoji: emoji.clone(), seq, on: *on });
                *on
            }
            _ => false,
        }
    }

    /// What a message whose own text is `original` says now: its newest edit, or nothing
    /// once deleted.
    pub fn text_now<'a>(&'a self, original: &'a str) -> Option<&'a str> {
        if self.deleted {
            return None;
        }
        Some(self.edit.as_ref().map_or(original, |(_, text)| text.as_str()))
    }

    /// The reactions that stand, each with its members, in the order first seen; members
    /// for whom `hidden` is true (blocked) are left out.
    pub fn shown_reactions(&self, hidden: impl Fn(&FeedKey) -> bool) -> Vec<(String, Vec<FeedKey>)> {
        let mut out: Vec<(String, Vec<FeedKey>)> = Vec::new();
        for r in self.reactions.iter().filter(|r| r.on && !hidden(&r.member)) {
            match out.iter_mut().find(|(e, _)| *e == r.emoji) {
                Some((_, members)) => members.push(r.member),
                None => out.push((r.emoji.clone(), vec![r.member])),
            }
        }
        out
    }
}

/// The words of `text` as search sees them: runs of letters and digits, lower case,
/// each once.
pub fn words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        let word: String = word.chars().take(WORD_MAX_CHARS).flat_map(char::to_lowercase).collect();
        if !out.contains(&word) {
            out.push(word);
        }
    }
    out
}

/// Whether `text` holds every one of `query` (as [`words`] gives them).
pub fn text_matches(text: &str, query: &[String]) -> bool {
    let have = words(text);
    query.iter().all(|q| have.contains(q))
}

/// The filter's bit positions of a word (FNV-1a, double hashing: stable across versions,
/// since filters are kept on disk).
fn bloom_bits(word: &str) -> impl Iterator<Item = usize> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in word.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let (h1, h2) = (h & 0xffff_ffff, (h >> 32) | 1);
    (0..BLOOM_HASHES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % (BLOOM_BYTES as u64 * 8)) as usize)
}

/// The filter of a group's texts.
pub fn filter_of<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut filter = vec![0; BLOOM_BYTES];
    for text in texts {
        for word in words(text) {
            bloom_add(&mut filter, &word);
        }
    }
    filter
}

/// How many entries each group holds (by its first seq), given a feed's stored ranges.
pub fn stored_per_group(ranges: &[(u64, u64)]) -> std::collections::BTreeMap<u64, u64> {
    let mut out = std::collections::BTreeMap::new();
    for &(start, end) in ranges {
        let mut at = start;
        while at < end {
            let group = at - at % SEARCH_GROUP;
            let next = (group + SEARCH_GROUP).min(end);
            *out.entry(group).or_insert(0) += next - at;
            at = next;
        }
    }
    out
}

/// Adds a word to a filter of [`BLOOM_BYTES`] bytes.
pub fn bloom_add(filter: &mut [u8], word: &str) {
    for bit in bloom_bits(word) {
        if let Some(byte) = filter.get_mut(bit / 8) {
            *byte |= 1 << (bit % 8);
        }
    }
}

/// Whether a filter may hold a word (false: certainly not).
pub fn bloom_has(filter: &[u8], word: &str) -> bool {
    bloom_bits(word).all(|bit| filter.get(bit / 8).is_some_and(|byte| byte & (1 << (bit % 8)) != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(feed: u8) -> MessageRef {
        MessageRef { feed: FeedKey([feed; 32]), seq: 7 }
    }

    #[test]
    fn only_the_author_edits_or_deletes_and_the_newest_edit_wins_in_any_order() {
        let t = target(1);
        let (author, other) = (FeedKey([1; 32]), FeedKey([2; 32]));
        let edit = |text: &str| Body::Edit { target: t, text: text.into() };
        let mut f = FollowUps::default();
        assert!(!f.apply(&t, &other, 9, &edit("forged")), "an edit by someone else counts");
        assert!(!f.apply(&t, &other, 10, &Body::Delete { target: t }), "a deletion by someone else counts");
        // Newest first, as a catch-up brings them: the older edit does not win.
        assert!(f.apply(&t, &author, 12, &edit("second")));
        assert!(!f.apply(&t, &author, 11, &edit("first")));
        assert_eq!(f.edit, Some((12, "second".into())));
        assert!(f.apply(&t, &author, 13, &Body::Delete { target: t }));
        assert!(!f.apply(&t, &author, 14, &Body::Delete { target: t }));
        assert!(f.deleted);
    }

    #[test]
    fn reactions_fold_by_member_and_are_bounded() {
        let t = target(1);
        let (a, b) = (FeedKey([1; 32]), FeedKey([2; 32]));
        let react = |emoji: &str, on| Body::React { target: t, emoji: emoji.into(), on };
        let mut f = FollowUps::default();
        assert!(f.apply(&t, &a, 1, &react("👍", true)));
        assert!(f.apply(&t, &b, 1, &react("👍", true)));
        assert!(f.apply(&t, &b, 2, &react("🎉", true)));
        // Taken back later; an older "on" arriving after changes nothing.
        assert!(f.apply(&t, &a, 5, &react("👍", false)));
        assert!(!f.apply(&t, &a, 3, &react("👍", true)));
        assert_eq!(f.shown_reactions(|_| false), vec![("👍".into(), vec![b]), ("🎉".into(), vec![b])]);
        assert_eq!(f.shown_reactions(|m| *m == b), vec![]);
        for bad in ["", "two words", "x".repeat(EMOJI_MAX_BYTES + 1).as_str(), "a\u{7}"] {
            assert!(!f.apply(&t, &a, 9, &react(bad, true)), "{bad:?} was taken as a reaction");
        }
        for i in 0..REACTIONS_PER_MEMBER_MAX + 5 {
            f.apply(&t, &a, 100 + i as u64, &react(&format!("r{i}"), true));
        }
        assert_eq!(f.reactions.iter().filter(|r| r.member == a).count(), REACTIONS_PER_MEMBER_MAX);
    }

    #[test]
    fn words_are_found_in_their_filter_and_checked_in_the_text() {
        assert_eq!(words("Dinner at 7? dinner, AT eight! Ünïcode"), ["dinner", "at", "7", "eight", "ünïcode"]);
        let filter = filter_of(["the quick", "brown fox"]);
        assert!(words("Quick FOX").iter().all(|w| bloom_has(&filter, w)));
        // 250 random absent words: about 1 % may pass the filter; the text check stops them.
        let passed = (0..250).filter(|i| bloom_has(&filter, &format!("absent{i}"))).count();
        assert!(passed < 10, "{passed} of 250 absent words passed a filter of 4 words");
        assert!(text_matches("The quick brown fox", &words("fox QUICK")));
        assert!(!text_matches("The quick brown fox", &words("fox slow")));
        assert!(!text_matches("foxes", &words("fox")), "search is by whole words");
    }

    #[test]
    fn groups_count_the_entries_stored_in_them() {
        let got: Vec<(u64, u64)> = stored_per_group(&[(0, 10), (60, 130), (200, 201)]).into_iter().collect();
        assert_eq!(got, [(0, 14), (64, 64), (128, 2), (192, 1)]);
    }
}
