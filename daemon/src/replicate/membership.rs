//! Which room peers a node keeps sessions with: a bounded active set and a passive list,
//! after HyParView (Leitão et al., 2007), as iroh-gossip does. Pure: no I/O, no clock
//! reads, a seeded generator, so that the simulation replays it exactly.
//!
//! - A node dials room peers it learns of (DHT, mDNS, peer exchange) while the room has
//!   fewer than `target` sessions; others go to the passive list (bounded; a random one
//!   makes room for a newer one).
//! - It accepts sessions that peers open up to `max` (> `target`, so that joiners get in
//!   while everyone is at the target); past it, it refuses, and the refused peer learns
//!   others from the refusal's peer exchange.
//! - When a session ends, a passive peer takes its place.
//! - Every `rotate_every` a node at its target swaps one of the sessions it opened for a
//!   passive peer, so the room's graph keeps mixing and stays connected.
//! - Sessions over a relay are slow links: they do not count toward the target (a node
//!   behind a hard NAT keeps dialing until it has `target` direct sessions, up to `max` in
//!   all), and rotation swaps one of them first, even under the target. So the room's
//!   direct links carry it, and a relayed member is nobody's only path.
//!
//! Small rooms (up to `target` other members) stay a full mesh. Entries spread over the
//! sessions: every member passes on every writer's entries (see `state.rs`, `on_update`).

use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Passive peers remembered per room.
pub const PASSIVE_MAX: usize = 256;
/// How often a node at its target swaps a session for a passive peer.
pub const ROTATE_EVERY: Duration = Duration::from_secs(60);

/// The bounds of one room's sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Dial while fewer sessions than this.
    pub target: usize,
    /// Refuse inbound sessions at this many.
    pub max: usize,
}

impl Bounds {
    /// From the configured limits (a max below the target is raised to it).
    pub fn new(target: usize, max: usize) -> Self {
        let target = target.max(1);
        Self { target, max: max.max(target) }
    }
}

/// A room's sessions (open or being opened), as these rules count them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    /// All of them.
    pub all: usize,
    /// Those not over a relay (sessions still opening count as direct).
    pub direct: usize,
}

impl Count {
    /// `n` sessions, none relayed.
    pub fn direct(n: usize) -> Self {
        Self { all: n, direct: n }
    }
}

/// One room's passive list and the choices made from it.
#[derive(Debug)]
pub struct Membership {
    bounds: Bounds,
    passive: Vec<PeerId>,
    rng: u64,
    next_rotation: Option<Instant>,
}

impl Membership {
    /// An empty membership view with its own random seed.
    pub fn new(bounds: Bounds, seed: u64) -> Self {
        Self { bounds, passive: Vec::new(), rng: seed | 1, next_rotation: None }
    }

    /// A room peer was learned of. With `sessions` now (and `peer` not among them):
    /// whether to dial it now; if not, it is remembered.
    pub fn learned(&mut self, peer: PeerId, sessions: Count) -> bool {
        if self.wants_more(sessions) {
            self.passive.retain(|p| *p != peer);
            return true;
        }
        self.remember(peer);
        false
    }

    /// Whether to take a session a peer opened, with `sessions` sessions now.
    pub fn accepts(&self, sessions: usize) -> bool {
        sessions < self.bounds.max
    }

    /// Under the target of direct sessions, and under the bound of all.
    fn wants_more(&self, sessions: Count) -> bool {
        sessions.direct < self.bounds.target && sessions.all < self.bounds.max
    }

    /// Remembers a peer (a session with it ended, or it was refused by a full room).
    pub fn remember(&mut self, peer: PeerId) {
        if self.passive.contains(&peer) {
            return;
        }
        if self.passive.len() >= PASSIVE_MAX {
            let i = self.pick(self.passive.len());
            self.passive.swap_remove(i);
        }
        self.passive.push(peer);
    }

    /// Forgets a peer (it is not a room peer, or does not speak the protocol).
    pub fn forget(&mut self, peer: &PeerId) {
        self.passive.retain(|p| p != peer);
    }

    /// With `sessions` and `active` peers (sessions or being opened): a passive peer to
    /// dial in place of one that ended, if the room is under its target.
    pub fn replacement(&mut self, sessions: Count, active: &[PeerId]) -> Option<PeerId> {
        if !self.wants_more(sessions) {
            return None;
        }
        self.take_passive(active)
    }

    /// Every [`ROTATE_EVERY`]: one of the sessions this node opened (`outbound`) to close,
    /// and a passive peer to dial instead; the closed one is remembered. One of those over
    /// a relay (`relayed`, a subset of `outbound`) goes first, whatever the count; else a
    /// random one, at the target.
    pub fn rotate(
        &mut self,
        now: Instant,
        sessions: Count,
        outbound: &[PeerId],
        relayed: &[PeerId],
        active: &[PeerId],
    ) -> Option<(PeerId, PeerId)> {
        let due = *self.next_rotation.get_or_insert(now + ROTATE_EVERY);
        if now < due {
            return None;
        }
        self.next_rotation = Some(now + ROTATE_EVERY);
        let from = if !relayed.is_empty() {
            relayed
        } else if sessions.direct >= self.bounds.target {
            outbound
        } else {
            return None;
        };
        if from.is_empty() {
            return None;
        }
        let dial = self.take_passive(active)?;
        let close = from[self.pick(from.len())];
        self.remember(close);
        Some((close, dial))
    }

    /// Passive peers known.
    pub fn passive(&self) -> &[PeerId] {
        &self.passive
    }

    fn take_passive(&mut self, active: &[PeerId]) -> Option<PeerId> {
        self.passive.retain(|p| !active.contains(p));
        if self.passive.is_empty() {
            return None;
        }
        let i = self.pick(self.passive.len());
        Some(self.passive.swap_remove(i))
    }

    /// A number below `n` (xorshift64*: replayable from the seed).
    fn pick(&mut self, n: usize) -> usize {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    #[test]
    fn dials_up_to_the_target_and_remembers_the_rest() {
        let mut m = Membership::new(Bounds::new(3, 5), 7);
        let ps = peers(6);
        let dialed: Vec<bool> = ps.iter().enumerate().map(|(i, p)| m.learned(*p, Count::direct(i.min(3)))).collect();
        assert_eq!(dialed, [true, true, true, false, false, false]);
        assert_eq!(m.passive(), &ps[3..]);
        assert!(m.accepts(4) && !m.accepts(5));
        // A session ends: a passive peer takes its place, never one already active.
        let active = vec![ps[0], ps[1], ps[3]];
        let next = m.replacement(Count::direct(2), &active).expect("a replacement");
        assert!(next == ps[4] || next == ps[5]);
        assert!(!m.passive().contains(&next));
        assert_eq!(m.replacement(Count::direct(3), &active), None, "at the target: no replacement");
    }

    #[test]
    fn relayed_sessions_do_not_count_toward_the_target_and_rotate_first() {
        let mut m = Membership::new(Bounds::new(3, 5), 7);
        let ps = peers(8);
        // Three sessions, two of them relayed: one direct of three wanted; dial on.
        assert!(m.learned(ps[0], Count { all: 3, direct: 1 }));
        assert!(m.learned(ps[1], Count { all: 4, direct: 2 }));
        // …but never past the bound of all sessions.
        assert!(!m.learned(ps[2], Count { all: 5, direct: 2 }));
        assert_eq!(m.replacement(Count { all: 5, direct: 2 }, &[]), None);
        assert_eq!(m.replacement(Count { all: 4, direct: 2 }, &[]), Some(ps[2]));
        for p in &ps[3..] {
            m.remember(*p);
        }
        // Rotation closes a relayed session first, even under the target.
        let out = &ps[..3];
        let t0 = Instant::now();
        assert_eq!(m.rotate(t0, Count { all: 3, direct: 1 }, out, &ps[1..3], out), None);
        let (close, dial) = m.rotate(t0 + ROTATE_EVERY, Count { all: 3, direct: 1 }, out, &ps[1..3], out).unwrap();
        assert!(ps[1..3].contains(&close) && !out.contains(&dial));
        // Without relayed ones and under the target: nothing to swap.
        assert_eq!(m.rotate(t0 + ROTATE_EVERY * 2, Count { all: 2, direct: 2 }, out, &[], out), None);
    }

    #[test]
    fn rotates_one_outbound_session_per_period_and_stays_bounded() {
        let mut m = Membership::new(Bounds::new(2, 3), 1);
        for p in peers(PASSIVE_MAX + 10) {
            m.learned(p, Count::direct(2));
        }
        assert_eq!(m.passive().len(), PASSIVE_MAX);
        let out = peers(2);
        let t0 = Instant::now();
        let two = Count::direct(2);
        assert_eq!(m.rotate(t0, two, &out, &[], &out), None, "the first period starts now");
        assert_eq!(m.rotate(t0 + ROTATE_EVERY / 2, two, &out, &[], &out), None);
        let (close, dial) = m.rotate(t0 + ROTATE_EVERY, two, &out, &[], &out).expect("a swap");
        assert!(out.contains(&close) && !out.contains(&dial));
        assert!(m.passive().contains(&close) && !m.passive().contains(&dial));
        assert_eq!(m.rotate(t0 + ROTATE_EVERY, two, &out, &[], &out), None, "once per period");
        let one = Count::direct(1);
        assert_eq!(m.rotate(t0 + ROTATE_EVERY * 3, one, &out, &[], &out), None, "under the target: no swap");
    }

    #[test]
    fn the_same_seed_makes_the_same_choices() {
        let ps = peers(50);
        let run = |seed| {
            let mut m = Membership::new(Bounds::new(4, 6), seed);
            for p in &ps {
                m.learned(*p, Count::direct(4));
            }
            (0..10).filter_map(|_| m.replacement(Count::direct(0), &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(1000));
    }
}
