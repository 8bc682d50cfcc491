//! Which session fetches which piece of a feed. ("Claim" here means a piece claim; the
//! replicator *reserves* session slots; fetching a *file* is about chunks, `files.rs`.)
//!
//! A room's missing entries are handed to its replication sessions in
//! pieces of at most [`PIECE_ENTRIES`], newest first, each piece claimed by one session,
//! so that with several peers holding a feed its ranges come from all of them in parallel
//! and nothing is downloaded twice.
//!
//! A feed verifies backwards from a signed head: a piece below one that is not stored yet
//! cannot be verified when it arrives. Its batches are *held* here, in memory and never on
//! disk, until the entry above them is stored; then they are verified and stored like any
//! other batch. Held bytes are bounded ([`HOLD_BYTES`]): past half of it, a session may
//! only claim pieces it can verify at once (under stored entries or under its peer's head).

use std::collections::{BTreeMap, HashSet};

use peerlog_proto::wire::{Entry, FeedKey};

use crate::ids::SessionId;
use crate::log::store::FeedMeta;

/// Most entries in one piece (one `Want`).
pub const PIECE_ENTRIES: u64 = 8192;
/// Pieces one session waits for at a time. A piece counts until its last batch arrived
/// (not until it is stored), so the next `Want` reaches the peer while it still serves
/// the other piece: the peer never runs dry.
pub const PIECES_PER_SESSION: usize = 2;
/// Most bytes of entries held for verification per room.
pub const HOLD_BYTES: usize = 32 << 20;

/// A range of a feed one session fetches.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Claim {
    feed: FeedKey,
    start: u64,
    end: u64,
    session: SessionId,
    /// Everything from here to `end` arrived (newest first).
    arrived: u64,
}

/// Entries received for a claimed piece that cannot be verified yet.
#[derive(Debug)]
pub struct Held {
    /// The feed.
    pub feed: FeedKey,
    /// Seq of `entries[0]`.
    pub start: u64,
    /// The entries.
    pub entries: Vec<Entry>,
    /// The session they came from.
    pub session: SessionId,
}

impl Held {
    fn end(&self) -> u64 {
        self.start + self.entries.len() as u64
    }

    fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.ciphertext.len() + 44).sum()
    }
}

/// A feed a session could fetch: what its peer has and what the peer lacks.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    /// The feed.
    pub feed: FeedKey,
    /// The peer's length of it (its newest signed head + 1).
    pub target: u64,
    /// The peer said it has nothing below this seq.
    pub lacks_below: u64,
}

/// A room's claims and held batches.
#[derive(Debug, Default)]
pub struct Pieces {
    claims: Vec<Claim>,
    held: BTreeMap<(FeedKey, u64), Held>,
    held_bytes: usize,
    /// (session, feed) pairs whose data failed verification: not asked again.
    refused: HashSet<(SessionId, FeedKey)>,
}

impl Pieces {
    /// How many pieces `session` still waits for (claimed, not all of it arrived).
    pub fn awaited_by(&self, session: SessionId) -> usize {
        self.claims.iter().filter(|c| c.session == session && c.arrived > c.start).count()
    }

    /// Notes that `start..end` of `feed` arrived from `session`.
    pub fn arrived(&mut self, session: SessionId, feed: &FeedKey, start: u64, end: u64) {
        for c in &mut self.claims {
            if c.session == session
                && c.feed == *feed
                && c.start <= start
                && start < c.end
                && end >= c.arrived.min(c.end)
            {
                c.arrived = c.arrived.min(start);
            }
        }
    }

    /// Whether `start..end` of `feed` lies inside a piece `session` claimed.
    pub fn is_claimed_by(&self, session: SessionId, feed: &FeedKey, start: u64, end: u64) -> bool {
        self.claims.iter().any(|c| c.session == session && c.feed == *feed && c.start <= start && end <= c.end)
    }

    /// The topmost piece of `c.feed` nobody fetches, that the candidate's peer has and we
    /// lack: `(start, end)`. `meta` is what we hold of the feed.
    fn free_piece(&self, session: SessionId, c: &Candidate, meta: &FeedMeta) -> Option<(u64, u64)> {
        if self.refused.contains(&(session, c.feed)) {
            return None;
        }
        // Missing ranges (newest first) minus claimed and held ones.
        let mut busy: Vec<(u64, u64)> =
            self.claims.iter().filter(|x| x.feed == c.feed).map(|x| (x.start, x.end)).collect();
        busy.extend(self.held.range((c.feed, 0)..=(c.feed, u64::MAX)).map(|(_, h)| (h.start, h.end())));
        for (gap_start, gap_end) in meta.missing(c.target) {
            let mut top = gap_end;
            let floor = gap_start.max(c.lacks_below);
            while top > floor {
                // Skip down past any busy range that covers `top - 1`.
                if let Some(&(s, _)) = busy.iter().filter(|(s, e)| *s < top && top <= *e).min_by_key(|(s, _)| *s) {
                    top = s;
                    continue;
                }
                // The piece runs down to the next busy range, the floor, or the size limit.
                let below = busy.iter().filter(|(_, e)| *e < top).map(|(_, e)| *e).max().unwrap_or(0);
                let start = floor.max(below).max(top.saturating_sub(PIECE_ENTRIES));
                return Some((start, top));
            }
        }
        None
    }

    /// Claims the best piece for `session` among `candidates`: the one nearest the top of
    /// its feed, so the newest page of every feed comes first. `meta` looks a feed up.
    pub fn claim(
        &mut self,
        session: SessionId,
        candidates: &[Candidate],
        mut meta: impl FnMut(&FeedKey) -> FeedMeta,
    ) -> Option<(FeedKey, u64, u64)> {
        let loose = self.held_bytes < HOLD_BYTES / 2;
        let mut best: Option<(u64, FeedKey, u64, u64)> = None;
        for c in candidates {
            let m = meta(&c.feed);
            let Some((start, end)) = self.free_piece(session, c, &m) else { continue };
            // Verifiable on arrival: under our stored entries or under the peer's head.
            let attached = end == c.target || m.has(end);
            if !attached && !loose {
                continue;
            }
            let depth = c.target - end;
            if best.as_ref().is_none_or(|b| depth < b.0) {
                best = Some((depth, c.feed, start, end));
            }
        }
        let (_, feed, start, end) = best?;
        self.claims.push(Claim { feed, start, end, session, arrived: end });
        Some((feed, start, end))
    }

    /// Drops the claims on `feed` that are now stored; whether any was.
    pub fn settle(&mut self, feed: &FeedKey, meta: &FeedMeta) -> bool {
        let before = self.claims.len();
        self.claims.retain(|c| c.feed != *feed || meta.missing(c.end).iter().any(|&(_, e)| e > c.start));
        self.claims.len() != before
    }

    /// Holds a batch for a piece `session` claimed. Returns false (and drops the batch)
    /// when the hold is full.
    pub fn hold(&mut self, held: Held) -> bool {
        let bytes = held.bytes();
        if self.held_bytes + bytes > HOLD_BYTES {
            return false;
        }
        self.held_bytes += bytes;
        self.held.insert((held.feed, held.start), held);
        true
    }

    /// A held batch of `feed` that can be verified now: the entry above it is stored.
    pub fn take_ready(&mut self, feed: &FeedKey, meta: &FeedMeta) -> Option<Held> {
        let key = self
            .held
            .range((*feed, 0)..=(*feed, u64::MAX))
            .find(|(_, h)| meta.has(h.end()) || meta.head.as_ref().is_some_and(|head| head.seq + 1 == h.end()))
            .map(|(k, _)| *k)?;
        let held = self.held.remove(&key)?;
        self.held_bytes -= held.bytes();
        Some(held)
    }

    /// Ends `session`'s claims on `feed` and drops what it sent of it that is still held;
    /// with `refuse`, the session will not be given the feed again.
    pub fn release_feed(&mut self, session: SessionId, feed: &FeedKey, refuse: bool) {
        self.claims.retain(|c| c.session != session || c.feed != *feed);
        self.drop_held(|h| h.session == session && h.feed == *feed);
        if refuse {
            self.refused.insert((session, *feed));
        }
    }

    /// Ends everything of a session that ended; returns the feeds it had claimed.
    pub fn release_session(&mut self, session: SessionId) -> Vec<FeedKey> {
        let mut feeds: Vec<FeedKey> = self.claims.iter().filter(|c| c.session == session).map(|c| c.feed).collect();
        feeds.dedup();
        self.claims.retain(|c| c.session != session);
        self.drop_held(|h| h.session == session);
        self.refused.retain(|(s, _)| *s != session);
        feeds
    }

    fn drop_held(&mut self, mut which: impl FnMut(&Held) -> bool) {
        let keys: Vec<(FeedKey, u64)> = self.held.iter().filter(|(_, h)| which(h)).map(|(k, _)| *k).collect();
        for k in keys {
            if let Some(h) = self.held.remove(&k) {
                self.held_bytes -= h.bytes();
            }
        }
    }

    /// Bytes held for verification.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: FeedKey = FeedKey([1; 32]);

    fn cand(target: u64) -> Candidate {
        Candidate { feed: F, target, lacks_below: 0 }
    }

    fn stored(ranges: &[(u64, u64)]) -> FeedMeta {
        FeedMeta { ranges: ranges.to_vec(), ..FeedMeta::default() }
    }

    fn held(start: u64, n: usize, session: SessionId) -> Held {
        let e = Entry { prev: [0; 32], nonce: [0; 12], ciphertext: vec![0; 100] };
        Held { feed: F, start, entries: vec![e; n], session }
    }

    #[test]
    fn pieces_go_newest_first_to_different_sessions_without_overlap() {
        let mut f = Pieces::default();
        let n = 3 * PIECE_ENTRIES + 100;
        let meta = stored(&[]);
        let a = f.claim(SessionId(1), &[cand(n)], |_| meta.clone()).unwrap();
        let b = f.claim(SessionId(2), &[cand(n)], |_| meta.clone()).unwrap();
        let c = f.claim(SessionId(1), &[cand(n)], |_| meta.clone()).unwrap();
        let d = f.claim(SessionId(2), &[cand(n)], |_| meta.clone()).unwrap();
        assert_eq!((a.1, a.2), (n - PIECE_ENTRIES, n));
        assert_eq!((b.1, b.2), (n - 2 * PIECE_ENTRIES, n - PIECE_ENTRIES));
        assert_eq!((c.1, c.2), (n - 3 * PIECE_ENTRIES, n - 2 * PIECE_ENTRIES));
        assert_eq!((d.1, d.2), (0, 100));
        assert!(f.claim(SessionId(3), &[cand(n)], |_| meta.clone()).is_none(), "everything is claimed");
        assert_eq!(f.awaited_by(SessionId(1)), 2);
        // The top half of a piece arriving is not enough; all of it is.
        f.arrived(SessionId(1), &F, a.1 + 100, a.2);
        assert_eq!(f.awaited_by(SessionId(1)), 2);
        f.arrived(SessionId(1), &F, a.1, a.1 + 100);
        assert_eq!(f.awaited_by(SessionId(1)), 1, "a piece that arrived is no longer awaited");
        assert!(f.is_claimed_by(SessionId(2), &F, 0, 100) && !f.is_claimed_by(SessionId(1), &F, 0, 100));
    }

    #[test]
    fn stored_held_and_lacking_ranges_are_not_claimed() {
        let mut f = Pieces::default();
        // Stored 500..1000; session 9 holds 300..400 unverified.
        let meta = stored(&[(500, 1000)]);
        assert!(f.hold(held(300, 100, SessionId(9))));
        let p = f.claim(SessionId(1), &[cand(1000)], |_| meta.clone()).unwrap();
        assert_eq!((p.1, p.2), (400, 500));
        let p = f.claim(SessionId(1), &[cand(1000)], |_| meta.clone()).unwrap();
        assert_eq!((p.1, p.2), (0, 300));
        // A peer that lacks everything below 450 gets nothing here.
        let mut g = Pieces::default();
        let c = Candidate { feed: F, target: 1000, lacks_below: 450 };
        assert_eq!(g.claim(SessionId(1), &[c], |_| meta.clone()).map(|p| (p.1, p.2)), Some((450, 500)));
    }

    #[test]
    fn held_batches_come_out_once_the_entry_above_is_stored_and_claims_settle() {
        let mut f = Pieces::default();
        let meta = stored(&[]);
        let top = f.claim(SessionId(1), &[cand(2000)], |_| meta.clone()).unwrap();
        assert_eq!((top.1, top.2), (0, 2000));
        assert!(f.hold(held(1000, 500, SessionId(1))));
        assert!(f.take_ready(&F, &stored(&[])).is_none());
        let meta = stored(&[(1500, 2000)]);
        let h = f.take_ready(&F, &meta).expect("ready once 1500 is stored");
        assert_eq!(h.start, 1000);
        assert_eq!(f.held_bytes(), 0);
        assert!(!f.settle(&F, &meta), "0..1000 still missing");
        assert!(f.settle(&F, &stored(&[(0, 2000)])));
        assert_eq!(f.awaited_by(SessionId(1)), 0);
    }

    #[test]
    fn refused_sessions_get_nothing_and_a_full_hold_only_allows_verifiable_pieces() {
        let mut f = Pieces::default();
        let meta = stored(&[]);
        f.claim(SessionId(1), &[cand(100)], |_| meta.clone()).unwrap();
        f.release_feed(SessionId(1), &F, true);
        assert!(f.claim(SessionId(1), &[cand(100)], |_| meta.clone()).is_none());
        assert!(f.claim(SessionId(2), &[cand(100)], |_| meta.clone()).is_some());

        let mut g = Pieces::default();
        let big = Entry { prev: [0; 32], nonce: [0; 12], ciphertext: vec![0; HOLD_BYTES / 2] };
        assert!(g.hold(Held { feed: FeedKey([2; 32]), start: 0, entries: vec![big], session: SessionId(5) }));
        let n = 3 * PIECE_ENTRIES;
        let first = g.claim(SessionId(1), &[cand(n)], |_| meta.clone()).unwrap();
        assert_eq!(first.2, n, "the top piece verifies against the head");
        assert!(g.claim(SessionId(2), &[cand(n)], |_| meta.clone()).is_none(), "a detached piece would be held");
        assert_eq!(g.release_session(SessionId(5)), Vec::<FeedKey>::new());
        assert!(g.claim(SessionId(2), &[cand(n)], |_| meta.clone()).is_some());
    }
}
