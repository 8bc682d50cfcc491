//! Who is online in a room with more members than sessions. Every member signs "online at
//! T" for the room ([`Alive`]) every [`ALIVE_EVERY`]; the records spread over the room's
//! sessions as entries do: a node passes a record it did not have on to each of its other
//! sessions once (never back to where it came from, batched per [`Input::Tick`]), and a
//! member counts as online while its newest record is younger than [`ALIVE_FOR`]. A
//! session still shows its peer online at once; records cover everyone else.
//!
//! Pure, like the rest of the rules: the wall clock comes with every tick. Records are
//! signed by the member's writer key over the room's discovery key (a record does not
//! verify in another room), checked once when new; a bad signature ends the session that
//! passed it on (a member checks what it forwards).
//!
//! [`Input::Tick`]: super::state::Input::Tick

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use peerlog_proto::wire::{Alive, DiscoveryKey, FeedKey, Frame};

use crate::ids::SessionId;

/// How often a member signs a new record.
pub const ALIVE_EVERY: Duration = Duration::from_secs(60);
/// How long a record shows its member online: two rounds and some spread.
pub const ALIVE_FOR: Duration = Duration::from_secs(150);
/// How often records go out (the driver's tick).
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// Records from further ahead of our clock than this are refused (a member cannot make
/// itself look online for days).
pub const MAX_SKEW: Duration = Duration::from_secs(300);
/// Most records in one `Alive` frame.
pub const MAX_ALIVE_RECORDS: usize = 512;
/// Members kept (online or last seen); past it, the longest gone makes room.
const MAX_MEMBERS: usize = 10_000;
/// Members kept that wrote nothing we hold (lurkers, newcomers): writer keys cost nothing to
/// mint, so a hostile member could otherwise push out the ones who write. Past this, the
/// records of more such members are dropped (sessions still show those online).
const MAX_UNKNOWN: usize = 1024;

/// Why a frame of records ends the session.
#[derive(Debug, PartialEq, Eq)]
pub enum AliveError {
    /// More than [`MAX_ALIVE_RECORDS`].
    TooMany,
    /// A signature did not verify.
    BadSignature,
}

/// The room's presence records and what each session still has to hear of them.
#[derive(Debug)]
pub struct Presence {
    discovery_key: DiscoveryKey,
    own: FeedKey,
    records: HashMap<FeedKey, Alive>,
    /// Members whose records were taken while we held nothing they wrote.
    unknown: BTreeSet<FeedKey>,
    /// For each session that reads `Alive` frames: the members to tell it of.
    pending: BTreeMap<SessionId, BTreeSet<FeedKey>>,
}

impl Presence {
    /// No records yet.
    pub fn new(discovery_key: DiscoveryKey, own: FeedKey) -> Self {
        Self { discovery_key, own, records: HashMap::new(), unknown: BTreeSet::new(), pending: BTreeMap::new() }
    }

    /// A session came up; `reads` whether its peer speaks a version with `Alive`. It hears
    /// of every member online now at the next flush.
    pub fn session_up(&mut self, id: SessionId, reads: bool, wall_ms: u64) {
        if reads {
            let fresh = self.records.values().filter(|r| fresh(r, wall_ms)).map(|r| r.feed_key).collect();
            self.pending.insert(id, fresh);
        }
    }

    /// A session ended.
    pub fn session_down(&mut self, id: SessionId) {
        self.pending.remove(&id);
    }

    /// Our own new record.
    pub fn own(&mut self, record: Alive) {
        self.store(record, None);
    }

    /// Records that arrived on `from`. `known` says whether we hold entries of a writer.
    /// Returns whether any was new.
    pub fn receive(
        &mut self,
        from: SessionId,
        records: Vec<Alive>,
        wall_ms: u64,
        known: impl Fn(&FeedKey) -> bool,
    ) -> Result<bool, AliveError> {
        if records.len() > MAX_ALIVE_RECORDS {
            return Err(AliveError::TooMany);
        }
        let mut changed = false;
        for record in records {
            let feed = record.feed_key;
            // The peer has this one (or a newer one): it need not hear it from us.
            if let Some(p) = self.pending.get_mut(&from) {
                if self.records.get(&feed).is_some_and(|r| r.at_ms <= record.at_ms) {
                    p.remove(&feed);
                }
            }
            let ahead = record.at_ms > wall_ms.saturating_add(MAX_SKEW.as_millis() as u64);
            let newer = self.records.get(&feed).is_none_or(|r| r.at_ms < record.at_ms);
            if feed == self.own || ahead || !fresh(&record, wall_ms) || !newer {
                continue;
            }
            let unknown = !self.records.contains_key(&feed) && !known(&feed);
            if unknown && self.unknown.len() >= MAX_UNKNOWN {
                continue;
            }
            if !verify(&self.discovery_key, &record) {
                return Err(AliveError::BadSignature);
            }
            if unknown {
                self.unknown.insert(feed);
            }
            self.store(record, Some(from));
            changed = true;
        }
        Ok(changed)
    }

    fn store(&mut self, record: Alive, from: Option<SessionId>) {
        let feed = record.feed_key;
        if !self.records.contains_key(&feed) && self.records.len() >= MAX_MEMBERS {
            if let Some(oldest) = self.records.values().filter(|r| r.feed_key != self.own).min_by_key(|r| r.at_ms) {
                let oldest = oldest.feed_key;
                self.records.remove(&oldest);
                self.unknown.remove(&oldest);
            }
        }
        for (id, p) in &mut self.pending {
            if Some(*id) != from {
                p.insert(feed);
            }
        }
        self.records.insert(feed, record);
    }

    /// The frames to send now: to each session, the records it has not heard yet that are
    /// still fresh. Members gone for long are forgotten if we hold nothing they wrote.
    pub fn flush(&mut self, wall_ms: u64) -> Vec<(SessionId, Frame)> {
        let stale: Vec<FeedKey> = self.unknown.iter().filter(|f| !self.is_online(f, wall_ms)).copied().collect();
        for feed in stale {
            self.unknown.remove(&feed);
            self.records.remove(&feed);
        }
        let mut frames = Vec::new();
        for (id, pending) in &mut self.pending {
            let records: Vec<Alive> = std::mem::take(pending)
                .iter()
                .filter_map(|f| self.records.get(f))
                .filter(|r| fresh(r, wall_ms))
                .cloned()
                .collect();
            for chunk in records.chunks(MAX_ALIVE_RECORDS) {
                frames.push((*id, Frame::Alive { records: chunk.to_vec() }));
            }
        }
        frames
    }

    /// When a member was last known online (ms since the epoch, by its clock).
    pub fn last_seen(&self, feed: &FeedKey) -> Option<u64> {
        self.records.get(feed).map(|r| r.at_ms)
    }

    /// Whether a member's newest record is still fresh.
    pub fn is_online(&self, feed: &FeedKey, wall_ms: u64) -> bool {
        self.records.get(feed).is_some_and(|r| fresh(r, wall_ms))
    }

    /// Every member's newest record time, ours too.
    pub fn seen(&self) -> impl Iterator<Item = (FeedKey, u64)> + '_ {
        self.records.values().map(|r| (r.feed_key, r.at_ms))
    }
}

fn fresh(record: &Alive, wall_ms: u64) -> bool {
    record.at_ms.saturating_add(ALIVE_FOR.as_millis() as u64) > wall_ms
}

/// Whether a record is signed by its member for this room.
pub fn verify(discovery_key: &DiscoveryKey, record: &Alive) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(&record.feed_key) else { return false };
    let Ok(sig) = <[u8; 64]>::try_from(record.signature.as_slice()) else { return false };
    let sig = ed25519_dalek::Signature::from_bytes(&sig);
    key.verify_strict(&Alive::signed_bytes(discovery_key, record.at_ms), &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    const DK: DiscoveryKey = DiscoveryKey([5; 32]);
    const NOW: u64 = 1_800_000_000_000;

    fn record(key: &SigningKey, at_ms: u64) -> Alive {
        Alive {
            feed_key: FeedKey(key.verifying_key().to_bytes()),
            at_ms,
            signature: key.sign(&Alive::signed_bytes(&DK, at_ms)).to_bytes().to_vec(),
        }
    }

    fn sent_to(frames: &[(SessionId, Frame)], id: SessionId) -> Vec<FeedKey> {
        frames
            .iter()
            .filter(|(to, _)| *to == id)
            .flat_map(|(_, f)| match f {
                Frame::Alive { records } => records.iter().map(|r| r.feed_key).collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn a_record_goes_on_once_to_every_other_session_that_reads_them() {
        let me = SigningKey::from_bytes(&[1; 32]);
        let other = SigningKey::from_bytes(&[2; 32]);
        let mut p = Presence::new(DK, FeedKey(me.verifying_key().to_bytes()));
        let (a, b, old) = (SessionId(1), SessionId(2), SessionId(3));
        p.session_up(a, true, NOW);
        p.session_up(b, true, NOW);
        p.session_up(old, false, NOW);
        assert_eq!(p.receive(a, vec![record(&other, NOW)], NOW, |_| true), Ok(true));
        let frames = p.flush(NOW);
        assert_eq!(sent_to(&frames, b), [FeedKey(other.verifying_key().to_bytes())]);
        assert!(sent_to(&frames, a).is_empty(), "not back to where it came from");
        assert!(sent_to(&frames, old).is_empty(), "a version 3 peer cannot read it");
        // The same record again (from b, which we told) is nothing new, and goes nowhere.
        assert_eq!(p.receive(b, vec![record(&other, NOW)], NOW, |_| true), Ok(false));
        assert!(p.flush(NOW).is_empty());
        assert!(p.is_online(&FeedKey(other.verifying_key().to_bytes()), NOW + 1000));
        assert!(!p.is_online(&FeedKey(other.verifying_key().to_bytes()), NOW + ALIVE_FOR.as_millis() as u64));
        // A session that comes up hears of everyone online.
        let c = SessionId(4);
        p.session_up(c, true, NOW);
        assert_eq!(sent_to(&p.flush(NOW), c).len(), 1);
    }

    #[test]
    fn forged_stale_future_and_flooded_records_are_refused() {
        let me = SigningKey::from_bytes(&[1; 32]);
        let mut p = Presence::new(DK, FeedKey(me.verifying_key().to_bytes()));
        let a = SessionId(1);
        p.session_up(a, true, NOW);
        let other = SigningKey::from_bytes(&[2; 32]);
        let mut forged = record(&other, NOW);
        forged.at_ms += 1;
        assert_eq!(p.receive(a, vec![forged], NOW, |_| true), Err(AliveError::BadSignature));
        // Signed for another room: as forged.
        let mut elsewhere = record(&other, NOW);
        elsewhere.signature = other.sign(&Alive::signed_bytes(&DiscoveryKey([6; 32]), NOW)).to_bytes().to_vec();
        assert_eq!(p.receive(a, vec![elsewhere], NOW, |_| true), Err(AliveError::BadSignature));
        let stale = record(&other, NOW - ALIVE_FOR.as_millis() as u64);
        let ahead = record(&other, NOW + MAX_SKEW.as_millis() as u64 + 1);
        assert_eq!(p.receive(a, vec![stale, ahead], NOW, |_| true), Ok(false));
        let many = (0..=MAX_ALIVE_RECORDS).map(|_| record(&other, NOW)).collect();
        assert_eq!(p.receive(a, many, NOW, |_| true), Err(AliveError::TooMany));
        // Minted writers we hold nothing of: only MAX_UNKNOWN of them are kept.
        let minted: Vec<Alive> = (0..MAX_UNKNOWN as u32 + 100)
            .map(|i| {
                let mut key = [9; 32];
                key[..4].copy_from_slice(&i.to_be_bytes());
                record(&SigningKey::from_bytes(&key), NOW)
            })
            .collect();
        for minted in minted.chunks(MAX_ALIVE_RECORDS) {
            assert_eq!(p.receive(a, minted.to_vec(), NOW, |_| false).map(|_| ()), Ok(()));
        }
        assert_eq!(p.seen().count(), MAX_UNKNOWN);
        // …and a real member still gets in.
        assert_eq!(p.receive(a, vec![record(&other, NOW)], NOW, |_| true), Ok(true));
        // Once they are stale, the minted ones are forgotten; the member is remembered.
        p.flush(NOW + ALIVE_FOR.as_millis() as u64);
        assert_eq!(p.seen().map(|(f, _)| f).collect::<Vec<_>>(), [FeedKey(other.verifying_key().to_bytes())]);
    }
}
