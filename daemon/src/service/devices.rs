//! One person on several devices (`keys::device`). [`Service::link_device`] runs on the
//! device that holds the person key: it shows a one-time code, the secret of a link room
//! that lives for [`LINK_TTL`]. [`Service::accept_link`] runs on the new device: it joins
//! that room (finding the other device like any room's peer: DHT, LAN, relays) and asks
//! with its device key (`LinkAsk`); the person's device answers the first asker with a
//! certificate of that device key, its display name and invites to its rooms
//! (`LinkGrant`). From then on every room this person's devices join gets a `Device`
//! entry from each, and members show them as one person. [`Service::unlink_device`]
//! writes the person's signed `Unlink` into each room; its writer there is then removed
//! like a member, by the person's device if it may remove members, else by the room's
//! admin (`Service::spawn_membership_watcher`).

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use peerlog_proto::wire::{DiscoveryKey, FeedKey, Key32};
use tokio::sync::broadcast;
use tracing::{info, warn};

use super::{Service, ServiceError};
use crate::keys::{self, device, RoomSecret};
use crate::log::Body;
use crate::rooms::{DaemonEvent, Room};

/// How long a link code admits a device.
pub const LINK_TTL: Duration = Duration::from_secs(600);
/// How long the new device waits for the person's device to answer.
pub const ACCEPT_WAIT: Duration = Duration::from_secs(180);
/// How long the person's device keeps the link room after answering, so that the new
/// device can fetch the answer.
const GRANT_LINGER: Duration = Duration::from_secs(60);
/// What a link code starts with (the rest is a link room's secret, as in an invite).
pub const LINK_PREFIX: &str = "peerlog-link:";
/// The name of a link room (never shown: `rooms.list` leaves link rooms out).
const LINK_ROOM_NAME: &str = "device link";

/// A one-time code for linking a device.
pub struct LinkCode {
    /// `peerlog-link:<base32 secret>`.
    pub code: String,
    /// When it stops admitting anyone (ms since the Unix epoch).
    pub expires_ms: u64,
}

/// What linking a device here gave it.
pub struct Linked {
    /// The person key.
    pub person: Key32,
    /// The rooms joined with the invites the person's device sent.
    pub rooms: Vec<Arc<Room>>,
}

/// A room a device was unlinked in.
pub struct Unlinked {
    /// The room.
    pub room: Arc<Room>,
    /// Whether we removed the device's writer ourselves (else the room's admin will).
    pub removed_here: bool,
}

impl Service {
    fn person_key_path(&self) -> std::path::PathBuf {
        self.data_dir.join("person.key")
    }

    /// The person key, if this device holds it.
    fn person_key(&self) -> Result<Option<SigningKey>, ServiceError> {
        let path = self.person_key_path();
        if !path.exists() {
            return Ok(None);
        }
        let keypair = keys::load_or_create_identity(&path)?;
        Ok(device::device_key(&keypair))
    }

    /// Our side of a safety number in `room`: our person key once our writer there proved
    /// itself our person's device, else the writer key.
    pub fn safety_key(&self, room: &Room) -> Result<FeedKey, ServiceError> {
        self.identity_in(room, &room.feed_key)
    }

    /// Who a writer of `room` is, for safety numbers and verified marks: its person's key
    /// if it proved itself a person's device, else itself.
    pub fn identity_in(&self, room: &Room, writer: &FeedKey) -> Result<FeedKey, ServiceError> {
        let device = self.store.device_of(&room.discovery_key, writer)?;
        Ok(device.map_or(*writer, |(person, _)| FeedKey(person)))
    }

    /// Who `writer` is, as [`Service::identity_in`], in `room` or (without one) in the room
    /// where it proved itself a person's device, if any.
    pub fn identity_of(&self, room: Option<&Room>, writer: &FeedKey) -> Result<FeedKey, ServiceError> {
        if let Some(room) = room {
            return self.identity_in(room, writer);
        }
        for room in self.rooms.list() {
            if let Some((person, _)) = self.store.device_of(&room.discovery_key, writer)? {
                return Ok(FeedKey(person));
            }
        }
        Ok(*writer)
    }

    /// The writers of the person `writer` is a device of, in `room` or (without one) in
    /// every room we are in; `writer` alone if it is nobody's device. What is said of a
    /// person (a block) is said of all of them.
    pub fn person_writers(&self, room: Option<&Room>, writer: &FeedKey) -> Result<Vec<FeedKey>, ServiceError> {
        let rooms = match room {
            Some(room) => vec![room.discovery_key],
            None => self.rooms.list().iter().map(|r| r.discovery_key).collect(),
        };
        let mut out = vec![*writer];
        for room in rooms {
            let devices = self.store.devices(&room)?;
            let Some((person, _)) = devices.get(writer) else { continue };
            for (w, _) in devices.iter().filter(|(_, (p, _))| p == person) {
                if !out.contains(w) {
                    out.push(*w);
                }
            }
        }
        Ok(out)
    }

    /// Whether this device holds the person key (it links and unlinks the others).
    pub fn holds_person_key(&self) -> bool {
        self.person_key_path().exists()
    }

    /// Our device key (the node identity's public key).
    pub fn device_public(&self) -> Key32 {
        device::public(&self.device)
    }

    /// Our `Device` entry for `room`, if we belong to a person.
    pub(super) fn device_entry(&self, room: &Room) -> Result<Option<Body>, ServiceError> {
        let Some((person, cert)) = self.store.person()? else { return Ok(None) };
        let proof = device::DeviceProof {
            person,
            device: self.device_public(),
            cert,
            link: device::sign_writer(&self.device, &room.discovery_key, &room.feed_key),
        };
        Ok(Some(Body::Device { proof }))
    }

    /// The rooms we write in: members' rooms that did not move on, without link rooms.
    fn writable_rooms(&self) -> Vec<Arc<Room>> {
        let links = self.link_rooms();
        self.rooms
            .list()
            .into_iter()
            .filter(|r| !r.is_seeder() && !links.contains(&r.discovery_key) && self.check_not_moved(r).is_ok())
            .collect()
    }

    /// Writes our `Device` entry to every room we write in that has none of ours yet.
    async fn announce_device(&self) -> Result<(), ServiceError> {
        for room in self.writable_rooms() {
            if self.store.device_of(&room.discovery_key, &room.feed_key)?.is_some() {
                continue;
            }
            if let Some(body) = self.device_entry(&room)? {
                self.append_durable(&room, vec![body]).await?;
            }
        }
        Ok(())
    }

    /// The link rooms we are in (left again when a link ends, or at the next start).
    pub fn link_rooms(&self) -> Vec<DiscoveryKey> {
        self.store.link_rooms().unwrap_or_default()
    }

    async fn join_link_room(self: &Arc<Self>, secret: RoomSecret) -> Result<Arc<Room>, ServiceError> {
        let discovery_key = secret.keys().discovery_key;
        if self.rooms.get(&discovery_key).is_some() {
            return Err(ServiceError::Invalid("this link code is in use here already".into()));
        }
        let mut links = self.link_rooms();
        links.push(discovery_key);
        self.store.set_link_rooms(&links)?;
        Ok(self.join_secret(secret, Some(LINK_ROOM_NAME.into())).await?.0)
    }

    async fn leave_link_room(&self, room: &Room) {
        if let Err(e) = self.leave(&room.id).await {
            warn!(error = %e, "cannot leave a link room");
        }
        let links: Vec<DiscoveryKey> = self.link_rooms().into_iter().filter(|r| *r != room.discovery_key).collect();
        if let Err(e) = self.store.set_link_rooms(&links) {
            warn!(error = %e, "cannot forget a link room");
        }
    }

    /// Shows a one-time code that links another device to this person (making this device
    /// the person's first, with a person key, if it is not yet): the device that enters it
    /// within [`LINK_TTL`] gets a certificate and invites to our rooms.
    pub async fn link_device(self: &Arc<Self>) -> Result<LinkCode, ServiceError> {
        let person = match self.person_key()? {
            Some(person) => person,
            None if self.store.person()?.is_some() => {
                return Err(ServiceError::Invalid(
                    "this device was linked to another; link new devices from the one that holds the person key (the first)"
                        .into(),
                ))
            }
            None => {
                let person = device::device_key(&keys::load_or_create_identity(&self.person_key_path())?)
                    .ok_or_else(|| ServiceError::Invalid("cannot make a person key".into()))?;
                self.store.set_person(&device::public(&person), &device::certify(&person, &self.device_public()))?;
                self.commit.durable().await?;
                info!("made a person key: this device can link others");
                person
            }
        };
        self.announce_device().await?;
        let secret = RoomSecret::random();
        let code = format!("{LINK_PREFIX}{}", secret.to_invite().trim_start_matches(keys::INVITE_PREFIX));
        let events = self.rooms.events.subscribe();
        let room = self.join_link_room(secret).await?;
        let this = self.clone();
        let cancel = self.net_cancel.clone();
        self.tasks.spawn("device link", async move {
            let link = async {
                match tokio::time::timeout(LINK_TTL, this.answer_link(&room, &person, events)).await {
                    Ok(Ok(device)) => {
                        info!(device = %hex::encode(device), "linked a device");
                        tokio::time::sleep(GRANT_LINGER).await;
                    }
                    Ok(Err(e)) => warn!(error = %e, "linking a device failed"),
                    Err(_) => info!("a link code expired unused"),
                }
            };
            // On shutdown the link room stays in the store, and is left at the next start.
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = link => {}
            }
            this.leave_link_room(&room).await;
        });
        Ok(LinkCode { code, expires_ms: crate::log::store::now_ms() + LINK_TTL.as_millis() as u64 })
    }

    /// Waits in a link room for a device's `LinkAsk` and answers the first that proves its
    /// device key; returns that key.
    async fn answer_link(
        &self,
        room: &Room,
        person: &SigningKey,
        mut events: broadcast::Receiver<DaemonEvent>,
    ) -> Result<Key32, ServiceError> {
        loop {
            let message = match events.recv().await {
                Ok(DaemonEvent::Message { room: r, message }) if r == room.discovery_key => message,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return Err(ServiceError::Shutdown),
            };
            let Some(Body::LinkAsk { device: asker, link }) = message.message.body else { continue };
            if message.feed_key == room.feed_key
                || !device::verify_writer(&asker, &room.discovery_key, &message.feed_key, &link)
            {
                continue;
            }
            let invites: Vec<String> = self
                .writable_rooms()
                .iter()
                .filter_map(|r| r.invite().ok().flatten())
                .take(crate::log::LINK_INVITES_MAX)
                .collect();
            let grant = Body::LinkGrant {
                to: message.feed_key,
                person: device::public(person),
                cert: device::certify(person, &asker),
                display_name: self.store.display_name()?,
                invites,
            };
            self.append_durable(room, vec![grant]).await?;
            let mut devices = self.store.linked_devices()?;
            devices.retain(|(d, _, _)| *d != asker);
            devices.push((asker, crate::log::store::now_ms(), false));
            self.store.set_linked_devices(&devices)?;
            self.commit.durable().await?;
            return Ok(asker);
        }
    }

    /// Links this device to the person whose device showed `code`: asks in the link room,
    /// waits up to [`ACCEPT_WAIT`] for the answer, takes the person's certificate and
    /// display name, writes `Device` entries to the rooms we are in and joins the person's.
    pub async fn accept_link(self: &Arc<Self>, code: &str) -> Result<Linked, ServiceError> {
        let Some(rest) = code.trim().strip_prefix(LINK_PREFIX) else {
            return Err(ServiceError::Invalid(format!("a link code starts with {LINK_PREFIX}")));
        };
        if self.person_key()?.is_some() {
            return Err(ServiceError::Invalid(
                "this device holds a person key (it links devices); enter the code on the new device".into(),
            ));
        }
        let secret = RoomSecret::from_invite(&format!("{}{rest}", keys::INVITE_PREFIX))?;
        let mut events = self.rooms.events.subscribe();
        let room = self.join_link_room(secret).await?;
        let ask = Body::LinkAsk {
            device: self.device_public(),
            link: device::sign_writer(&self.device, &room.discovery_key, &room.feed_key),
        };
        let answer = async {
            self.append_durable(&room, vec![ask]).await?;
            loop {
                match events.recv().await {
                    Ok(DaemonEvent::Message { room: r, message }) if r == room.discovery_key => {
                        if let Some(Body::LinkGrant { to, person, cert, display_name, invites }) = message.message.body
                        {
                            if to == room.feed_key && device::verify_cert(&person, &self.device_public(), &cert) {
                                return Ok((person, cert, display_name, invites));
                            }
                            if to != room.feed_key {
                                return Err(ServiceError::Invalid(
                                    "this link code linked another device already; show a new one".into(),
                                ));
                            }
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return Err(ServiceError::Shutdown),
                }
            }
        };
        let answered = tokio::time::timeout(ACCEPT_WAIT, answer).await;
        self.leave_link_room(&room).await;
        let (person, cert, display_name, invites) = answered.map_err(|_| {
            ServiceError::Unavailable(format!(
                "no device answered the link code within {} s: is the other device online, and the code under 10 minutes old?",
                ACCEPT_WAIT.as_secs()
            ))
        })??;
        self.store.set_person(&person, &cert)?;
        self.commit.durable().await?;
        info!(person = %hex::encode(person), "linked to a person");
        if let Some(name) = display_name {
            self.set_display_name(&name).await?;
        }
        self.announce_device().await?;
        let mut rooms = Vec::new();
        for invite in invites {
            let invite = keys::Invite::parse(&invite)?;
            rooms.push(self.join_invite(invite.key, invite.name).await?.0);
        }
        Ok(Linked { person, rooms })
    }

    /// Unlinks one of the person's devices (on the device that holds the person key): a
    /// signed `Unlink` in every room we write in; its writers there are removed like
    /// members, by us where we may remove members, else by the room's admin.
    pub async fn unlink_device(&self, target: Key32) -> Result<Vec<Unlinked>, ServiceError> {
        let Some(person) = self.person_key()? else {
            return Err(ServiceError::Invalid(
                "only the device that holds the person key (the one that linked the others) unlinks devices".into(),
            ));
        };
        if target == self.device_public() {
            return Err(ServiceError::Invalid("this device holds the person key; it cannot unlink itself".into()));
        }
        let mut devices = self.store.linked_devices()?;
        let Some(entry) = devices.iter_mut().find(|(d, _, _)| *d == target) else {
            return Err(ServiceError::NotFound(format!("{} is not a device linked here", hex::encode(target))));
        };
        entry.2 = true;
        self.store.set_linked_devices(&devices)?;
        let signature = device::unlink(&person, &target);
        let mut out = Vec::new();
        for room in self.writable_rooms() {
            let writers = self.store.device_writers(&room.discovery_key, &target)?;
            let Some(writer) = writers.first() else { continue };
            let removed_here = self.store.may_remove(&room.discovery_key, &room.feed_key, &[*writer])?;
            let unlink = Body::Unlink { person: device::public(&person), device: target, signature: signature.clone() };
            self.append_durable(&room, vec![unlink]).await?;
            out.push(Unlinked { room, removed_here });
        }
        self.commit.durable().await?;
        Ok(out)
    }

    /// Acts on an `Unlink` entry: removes the unlinked device's writer from the room when
    /// the one who wrote the entry is us and may remove members, or may not and we are the
    /// room's admin; forgets our person when the device unlinked is ours.
    pub(super) async fn act_on_unlink(
        self: &Arc<Self>,
        room: &DiscoveryKey,
        target: &Key32,
        by: &FeedKey,
    ) -> Result<(), ServiceError> {
        if *target == self.device_public() {
            warn!("this device was unlinked from its person");
            self.store.clear_person()?;
            return Ok(());
        }
        let Some(room) = self.rooms.get(room) else { return Ok(()) };
        if room.is_seeder() || self.check_not_moved(&room).is_err() {
            return Ok(());
        }
        let Some(writer) = self.store.device_writers(&room.discovery_key, target)?.first().copied() else {
            return Ok(());
        };
        let author_may = self.store.may_remove(&room.discovery_key, by, &[writer])?;
        let bound_admin = self.store.admin_binding(&room.discovery_key)?.map(|b| b.admin);
        let ours = if author_may { *by == room.feed_key } else { bound_admin == Some(room.feed_key) };
        if ours {
            info!(room = %room.id, device = %hex::encode(target), "removing an unlinked device's writer");
            self.remove_writers(&room, writer, vec![writer]).await?;
        }
        Ok(())
    }
}
