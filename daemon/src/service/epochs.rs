//! Removing members: a room moves to a new epoch. [`Service::remove_member`] makes a fresh
//! room secret, seals it to every other member's writer key (`keys::seal`) and appends a
//! `Rotate` entry; every member that stores the room's first rotation and finds a seal for
//! itself joins the new room under the same name ([`Service::follow_rotation`]), whether
//! it was online then or catches up later from anyone. The removed members find no seal:
//! the new room's discovery, auth and content keys are out of their reach, and the old
//! room says they were removed (`RoomInfo::removed`). The old room stays joined and
//! served, so that members who were away can still fetch the rotation and history.

use std::sync::Arc;

use peerlog_proto::wire::{DiscoveryKey, FeedKey};
use tracing::{info, warn};

use super::{Service, ServiceError};
use crate::keys::{seal, AdminBound, RoomSecret};
use crate::log::{Body, ROTATE_SEALED_MAX};
use crate::rooms::{DaemonEvent, Room};

impl Service {
    /// Removes `member` from `room`: seals a new room secret to every other member we know
    /// of (writers of the room, ourselves, members online by a session or a signed record)
    /// and appends the rotation; then moves on to the new room. Returns the new room.
    pub async fn remove_member(self: &Arc<Self>, room: &Room, member: FeedKey) -> Result<Arc<Room>, ServiceError> {
        // A person goes with all their devices.
        let removed = self.person_writers(Some(room), &member)?;
        if member != room.feed_key && removed.contains(&room.feed_key) {
            return Err(ServiceError::Invalid("that is another of your devices; unlink it (devices.unlink)".into()));
        }
        self.remove_writers(room, member, removed).await
    }

    /// Removes `removed` (writers of `room`, `member` among them) as
    /// [`Service::remove_member`] does.
    pub(super) async fn remove_writers(
        self: &Arc<Self>,
        room: &Room,
        member: FeedKey,
        removed: Vec<FeedKey>,
    ) -> Result<Arc<Room>, ServiceError> {
        if room.is_seeder() {
            return Err(ServiceError::Invalid("a blind seeder cannot remove members".into()));
        }
        if member == room.feed_key {
            return Err(ServiceError::Invalid("you cannot remove yourself; leave the room (rooms.leave)".into()));
        }
        self.check_not_moved(room)?;
        if !self.store.may_remove(&room.discovery_key, &room.feed_key, &removed)? {
            return Err(ServiceError::NotAdmin(
                "only the room's admins may remove members here, and only its first admin (who created it, or whose removal made it) removes admins".into(),
            ));
        }
        let mut members = self.known_members(room)?;
        if !members.contains(&member) {
            return Err(ServiceError::NotFound(format!("{} is not a member of this room", hex::encode(member))));
        }
        members.retain(|m| !removed.contains(m));
        if members.len() > ROTATE_SEALED_MAX {
            return Err(ServiceError::Invalid(format!("rooms of over {ROTATE_SEALED_MAX} members cannot remove yet")));
        }
        // The new room's secret is made from a fresh seed and our writer there, its admin
        // (keys::AdminBound); the seed is what gets sealed.
        let writer = crate::log::new_writer();
        let bound = AdminBound::random(FeedKey(writer.verifying_key().to_bytes()));
        let seed = RoomSecret(bound.seed);
        let sealed = members
            .iter()
            .map(|m| seal::seal(&room.discovery_key, m, &seed))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ServiceError::Invalid(format!("cannot seal the new room secret: {e}")))?;
        drop(seed);
        // The room is joined before the rotation is written, so that following it (here or
        // by the rotation follower) finds it joined with our writer there.
        let admin = bound.admin;
        let _turn = self.epoch_turn.lock().await;
        let (next, _) = self.join_bound(bound, Some(room.name.clone()), Some(&writer)).await?;
        drop(_turn);
        // The entries of the removed member we hold stay; every member refuses later ones.
        let mut kept = Vec::new();
        for writer in &removed {
            kept.extend(self.store.feed_meta(writer)?.and_then(|m| m.head));
        }
        let rotate = Body::Rotate { removed, kept, sealed, admin };
        if let Err(e) = self.append_durable(room, vec![rotate]).await {
            let _ = self.leave(&next.id).await;
            return Err(e);
        }
        info!(room = %room.id, member = %hex::encode(member), "removed a member; the room moves to a new epoch");
        match self.follow_rotation(&room.discovery_key).await? {
            Some(followed) if followed.discovery_key == next.discovery_key => Ok(followed),
            _ => Err(ServiceError::Invalid("another member's rotation of this room came first".into())),
        }
    }

    /// Names `member` an admin of `room` (or, with `named` false, no longer): only the
    /// admin bound into the room's keys may.
    pub async fn name_admin(&self, room: &Room, member: FeedKey, named: bool) -> Result<(), ServiceError> {
        let Some(bound) = self.store.admin_binding(&room.discovery_key)? else {
            return Err(ServiceError::Invalid(
                "this room has no admin (it was made from a passphrase or an older invite): every member may remove"
                    .into(),
            ));
        };
        if bound.admin != room.feed_key {
            return Err(ServiceError::NotAdmin("only the room's first admin (its creator) names admins".into()));
        }
        if member == room.feed_key {
            return Err(ServiceError::Invalid("you are this room's admin already".into()));
        }
        if !self.known_members(room)?.contains(&member) {
            return Err(ServiceError::NotFound(format!("{} is not a member of this room", hex::encode(member))));
        }
        self.append_durable(room, vec![Body::Admin { member, admin: named }]).await?;
        Ok(())
    }

    /// Refuses to write to a room that moved on to a new epoch (or that we were removed
    /// from): what is written there now is for nobody who stays.
    pub(crate) fn check_not_moved(&self, room: &Room) -> Result<(), ServiceError> {
        let rotation = self.store.rotation(&room.discovery_key)?;
        if let Some(by) = rotation.as_ref().filter(|r| r.removed.contains(&room.feed_key)).map(|r| r.at.feed) {
            return Err(ServiceError::Invalid(format!(
                "you were removed from this room by {}; it moved on without you",
                hex::encode(by)
            )));
        }
        let superseded = self.store.superseded_by(&room.discovery_key)?;
        if rotation.is_some() || superseded.is_some() {
            let next = superseded.or(rotation.and_then(|r| r.next)).and_then(|next| self.rooms.get(&next));
            return Err(ServiceError::Invalid(match next {
                Some(next) => format!("this room moved on to room {} when members were removed; write there", next.id),
                None => "this room moved on to a new epoch when members were removed".into(),
            }));
        }
        Ok(())
    }

    /// The members a rotation seals the new secret to: writers of the room, ourselves, and
    /// members known to be online (by a session, or by their signed presence records).
    fn known_members(&self, room: &Room) -> Result<Vec<FeedKey>, ServiceError> {
        let mut members: Vec<FeedKey> = self
            .store
            .room_feeds(&room.discovery_key)?
            .into_iter()
            .filter(|(_, meta)| meta.length() > 0)
            .map(|(feed, _)| feed)
            .collect();
        let online = self.replicator.room_peers(Some(&room.discovery_key)).into_iter().filter_map(|p| p.writer);
        for feed in std::iter::once(room.feed_key).chain(online).chain(room.seen_members()) {
            if !members.contains(&feed) {
                members.push(feed);
            }
        }
        Ok(members)
    }

    /// Follows `room`'s rotation, if it has one we have not followed: joins the new room
    /// (same name) when the new secret was sealed to us. Rooms joined by following rotations
    /// that an earlier one replaced say they moved to this one's room. Returns the new room.
    pub(crate) async fn follow_rotation(
        self: &Arc<Self>,
        room: &DiscoveryKey,
    ) -> Result<Option<Arc<Room>>, ServiceError> {
        let _turn = self.epoch_turn.lock().await;
        let Some(old) = self.rooms.get(room) else { return Ok(None) };
        loop {
            let Some(rotation) = self.store.rotation(room)? else { return Ok(None) };
            if let Some(next) = rotation.next {
                self.supersede(&rotation.superseded, &next).await?;
                return Ok(self.rooms.get(&next));
            }
            let Some(seed) = old.open_sealed(&rotation.sealed) else {
                if rotation.removed.contains(&old.feed_key) {
                    warn!(room = %old.id, by = %hex::encode(rotation.at.feed), "we were removed from this room");
                    let _ = self.rooms.events.send(DaemonEvent::Moved { room: *room });
                }
                return Ok(None);
            };
            let bound = AdminBound { seed: seed.0, admin: rotation.admin };
            let (new, _) = self.join_bound(bound, Some(old.name.clone()), None).await?;
            // An earlier rotation may have come in meanwhile: then this room is superseded
            // and we go round again.
            if self.store.set_rotation_next(room, &rotation.at, &new.discovery_key)? {
                self.commit.durable().await?;
                // Who we were in the old room, so that members carry over what they said of us.
                let continues = old.continuation(&new.discovery_key, &new.feed_key);
                if let Err(e) = self.append_durable(&new, vec![continues]).await {
                    warn!(room = %new.id, error = %e, "cannot say who we were in the room before");
                }
                // The old room's peers (but the removed) follow the same rotation: offer them
                // sessions in the new room now, before its discovery finds them.
                for peer in self.replicator.room_peers(Some(room)) {
                    if peer.writer.is_some_and(|w| !rotation.removed.contains(&w)) {
                        self.replicator.ensure_session(peer.peer, new.discovery_key);
                    }
                }
                self.supersede(&rotation.superseded, &new.discovery_key).await?;
                info!(room = %old.id, next = %new.id, "moved on to the room's new epoch");
                let _ = self.rooms.events.send(DaemonEvent::Moved { room: *room });
                return Ok(Some(new));
            }
        }
    }

    /// Carries over what we said of a member in the room before to its writer in the room a
    /// removal made (a `Continues` entry): its nickname and verified mark (unless we said
    /// something of the new writer already), a block, and, if we are the new room's admin
    /// and it was an admin before, the admin role.
    async fn carry_over(&self, room: &DiscoveryKey, writer: &FeedKey, from: &FeedKey) -> Result<(), ServiceError> {
        let (Some(new), Some(old)) = (self.rooms.get(room), self.store.moved_from(room)?) else {
            return Ok(self.store.carried_over(room, writer)?);
        };
        if *writer == new.feed_key {
            return Ok(self.store.carried_over(room, writer)?);
        }
        let contact = self.store.contact(from)?;
        if self.store.contact(writer)? == Default::default() && contact != Default::default() {
            self.store.put_contact(writer, &contact)?;
        }
        if self.store.verified(from)? && !self.store.verified(writer)? {
            self.store.set_verified(writer, true)?;
        }
        if self.store.is_blocked(&old, from)? && !self.store.is_blocked(room, writer)? {
            self.block_writer(Some(&new), writer, true).await?;
        }
        let bound = self.store.admin_binding(room)?.map(|b| b.admin);
        if bound == Some(new.feed_key)
            && self.store.admins(&old)?.contains(from)
            && !self.store.admins(room)?.contains(writer)
        {
            info!(room = %new.id, admin = %hex::encode(writer), "an admin of the room before is one here too");
            self.name_admin(&new, *writer, true).await?;
        }
        Ok(self.store.carried_over(room, writer)?)
    }

    /// Acts on what members say of membership, as their entries come: `Continues` (carry
    /// over what we said of them into the new room) and `Unlink` (remove the device, if it
    /// is ours to do).
    pub(super) fn spawn_membership_watcher(self: &Arc<Self>) {
        let mut events = self.rooms.events.subscribe();
        let this = self.clone();
        let cancel = self.net_cancel.clone();
        self.tasks.spawn("membership watcher", async move {
            // What was stored but not acted on before the last stop (the acts are idempotent).
            match (this.store.continuations(), this.store.unlinks()) {
                (Ok(continuations), Ok(unlinks)) => {
                    for (room, writer, from) in continuations {
                        if let Err(e) = this.carry_over(&room, &writer, &from).await {
                            warn!(error = %e, "cannot carry a member over into a room's new epoch");
                        }
                    }
                    // (Not our own: we forgot our person when we read it, and may have
                    // been linked again since.)
                    let me = this.device_public();
                    for (room, device, by) in unlinks.into_iter().filter(|(_, d, _)| *d != me) {
                        if let Err(e) = this.act_on_unlink(&room, &device, &by).await {
                            warn!(error = %e, "cannot remove an unlinked device");
                        }
                    }
                }
                (Err(e), _) | (_, Err(e)) => warn!(error = %e, "cannot read the membership changes to act on"),
            }
            loop {
                let event = tokio::select! {
                    _ = cancel.cancelled() => break,
                    e = events.recv() => e,
                };
                match event {
                    Ok(DaemonEvent::Continued { room, writer, from }) => {
                        if let Err(e) = this.carry_over(&room, &writer, &from).await {
                            warn!(error = %e, "cannot carry a member over into a room's new epoch");
                        }
                    }
                    Ok(DaemonEvent::Unlinked { room, device, by }) => {
                        if let Err(e) = this.act_on_unlink(&room, &device, &by).await {
                            warn!(error = %e, "cannot remove an unlinked device");
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    /// Marks rooms made by rotations that lost to an earlier one as moved to `to`.
    async fn supersede(&self, rooms: &[DiscoveryKey], to: &DiscoveryKey) -> Result<(), ServiceError> {
        let mut changed = false;
        for room in rooms {
            if self.store.moved_to(room)?.as_ref() != Some(to) {
                self.store.set_superseded(room, to)?;
                warn!(room = %crate::keys::room_id(room), "an earlier removal won over the one that made this room; moved on");
                let _ = self.rooms.events.send(DaemonEvent::Moved { room: *room });
                changed = true;
            }
        }
        if changed {
            self.commit.durable().await?;
        }
        Ok(())
    }

    /// Follows rotations as rooms take them, and those taken before a restart.
    pub(super) fn spawn_rotation_follower(self: &Arc<Self>) {
        let mut events = self.rooms.events.subscribe();
        let this = self.clone();
        let cancel = self.net_cancel.clone();
        self.tasks.spawn("rotation follower", async move {
            let mut pending: Vec<DiscoveryKey> = this.rooms.list().iter().map(|r| r.discovery_key).collect();
            loop {
                for room in std::mem::take(&mut pending) {
                    if let Err(e) = this.follow_rotation(&room).await {
                        warn!(error = %e, "cannot move on to a room's new epoch");
                    }
                }
                let event = tokio::select! {
                    _ = cancel.cancelled() => break,
                    e = events.recv() => e,
                };
                match event {
                    Ok(DaemonEvent::Rotated { room }) => pending.push(room),
                    Ok(_) => {}
                    // Missed events: look at every room again.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        pending = this.rooms.list().iter().map(|r| r.discovery_key).collect();
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }
}
