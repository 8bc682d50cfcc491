//! `peers.*`, `rooms.members` and `profile.set`: who is in a room, names, safety numbers
//! and blocks.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use peerlog_proto::api::peers::{
    BlockResult, BlockedResult, ContactParams, ContactResult, Member, MemberDevice, MemberList, OptRoomParam, PeerList,
    PeerRoomParams, Presence, ProfileParams, ProfileResult, RoomPeer, SafetyResult,
};
use peerlog_proto::api::rooms::RoomParam;
use peerlog_proto::wire::{DiscoveryKey, FeedKey, Key32};

use super::super::ApiError;
use super::{qr_svg, writer_key};
use crate::keys;
use crate::replicate::presence::ALIVE_FOR;
use crate::rooms::Room;
use crate::service::{Service, ServiceError};

pub(super) async fn list(service: &Arc<Service>, p: OptRoomParam) -> Result<PeerList, ApiError> {
    let filter = match &p.room {
        Some(q) => Some(service.room(q)?.discovery_key),
        None => None,
    };
    let info = service.node_info().await?;
    // Per peer: its rooms, and (asking for one room) who it is there.
    type PeerRow = (Vec<String>, Option<FeedKey>, Option<Arc<Room>>);
    let mut peers: BTreeMap<String, PeerRow> = BTreeMap::new();
    for rp in service.replicator.room_peers(filter.as_ref()) {
        if let Some(room) = service.rooms.get(&rp.room) {
            let e = peers.entry(rp.peer.to_string()).or_default();
            e.0.push(room.id.clone());
            e.1 = rp.writer;
            e.2 = Some(room);
        }
    }
    let one_room = filter.is_some();
    let peers = peers
        .into_iter()
        .map(|(peer_id, (rooms, writer, room))| {
            let conn = info.peers.iter().find(|p| p.peer_id == peer_id);
            let mut row = RoomPeer {
                connection: conn.map(|c| c.connection),
                addrs: conn.map(|c| c.addrs.clone()).unwrap_or_default(),
                rtt_ms: conn.and_then(|c| c.rtt_ms),
                peer_id,
                rooms,
                author: None,
                display_name: None,
                nickname: None,
            };
            if let (true, Some(w), Some(room)) = (one_room, writer, room) {
                row.author = Some(hex::encode(w));
                row.display_name = room.display_name(&w);
                row.nickname = service.store.contact(&w).ok().and_then(|c| c.nickname);
            }
            row
        })
        .collect();
    Ok(PeerList { peers })
}

pub(super) async fn members(service: &Arc<Service>, p: RoomParam) -> Result<MemberList, ApiError> {
    let room = service.room(&p.room)?;
    let info = service.node_info().await?;
    let online: HashMap<FeedKey, String> = service
        .replicator
        .room_peers(Some(&room.discovery_key))
        .into_iter()
        .filter_map(|p| Some((p.writer?, p.peer.to_string())))
        .collect();
    // A session says it at once; the others' signed records say it over the room's peers.
    let now_ms = crate::log::store::now_ms();
    let presence = |feed: &FeedKey| -> Presence {
        let last_seen_ms = room.last_seen(feed);
        let Some(peer) = online.get(feed) else {
            let online = last_seen_ms.is_some_and(|at| at + ALIVE_FOR.as_millis() as u64 > now_ms);
            return Presence { online, last_seen_ms, peer_id: None, connection: None, rtt_ms: None };
        };
        let conn = info.peers.iter().find(|p| &p.peer_id == peer);
        Presence {
            online: true,
            last_seen_ms: Some(now_ms),
            peer_id: Some(peer.clone()),
            connection: conn.map(|c| c.connection),
            rtt_ms: conn.and_then(|c| c.rtt_ms),
        }
    };
    // The writers we hold entries of, ourselves, and online writers we hold nothing
    // of yet (by a session or a record): with how many messages each wrote.
    let mut writers: Vec<(FeedKey, u64)> = service
        .store
        .room_feeds(&room.discovery_key)
        .map_err(ServiceError::from)?
        .into_iter()
        .map(|(feed, meta)| (feed, meta.length()))
        .filter(|(feed, n)| *n > 0 || *feed == room.feed_key)
        .collect();
    let recorded: Vec<FeedKey> = room.seen_members().into_iter().filter(|f| presence(f).online).collect();
    for feed in std::iter::once(&room.feed_key).chain(online.keys()).chain(&recorded) {
        if !writers.iter().any(|(f, _)| f == feed) {
            writers.push((*feed, 0));
        }
    }
    // A person's devices are one member: the newest name among them, one safety number
    // (with the person key), presence if any device is online.
    let devices = service.store.devices(&room.discovery_key).map_err(ServiceError::from)?;
    let names = service.store.dated_profiles(&room.discovery_key).map_err(ServiceError::from)?;
    let ours = service.safety_key(&room).map_err(ApiError::from)?;
    // (person, [(writer, messages)])
    type Group = (Option<Key32>, Vec<(FeedKey, u64)>);
    let mut groups: Vec<Group> = Vec::new();
    for (feed, messages) in writers {
        let person = devices.get(&feed).map(|(person, _)| *person);
        match groups.iter_mut().find(|(p, _)| person.is_some() && *p == person) {
            Some((_, group)) => group.push((feed, messages)),
            None => groups.push((person, vec![(feed, messages)])),
        }
    }
    let mut members = Vec::with_capacity(groups.len());
    for (person, mut group) in groups {
        // Ours first, then the device that wrote the most.
        group.sort_by_key(|(feed, n)| (*feed != room.feed_key, std::cmp::Reverse(*n), *feed));
        let feed = group[0].0;
        let key = person.map_or(feed, FeedKey);
        let contact = service.store.contact(&key).map_err(ServiceError::from)?;
        let mine = group.iter().any(|(f, _)| *f == room.feed_key);
        let verified = service.store.verified(&key).map_err(ServiceError::from)?;
        let display_name =
            group.iter().filter_map(|(f, _)| names.get(f)).max_by_key(|(at, _)| *at).map(|n| n.1.clone());
        let blocked = service.store.is_blocked(&room.discovery_key, &feed).map_err(ServiceError::from)?;
        let presences: Vec<Presence> = group
            .iter()
            .map(|(f, _)| {
                if *f == room.feed_key {
                    Presence { online: true, last_seen_ms: Some(now_ms), peer_id: None, connection: None, rtt_ms: None }
                } else {
                    presence(f)
                }
            })
            .collect();
        // (A group is never empty: the fallback is the first device's.)
        let best = presences
            .iter()
            .max_by_key(|p| (p.online, p.connection.is_some(), p.last_seen_ms))
            .cloned()
            .unwrap_or_else(|| presence(&feed));
        members.push(Member {
            author: hex::encode(feed),
            mine,
            display_name,
            nickname: contact.nickname,
            verified,
            verified_before: contact.verified && !verified,
            blocked,
            safety_number: (!mine).then(|| keys::safety_number(&ours, &key)),
            messages: group.iter().map(|(_, n)| n).sum(),
            presence: best,
            person: person.map(hex::encode),
            devices: if person.is_some() {
                group
                    .iter()
                    .zip(&presences)
                    .map(|((f, n), p)| MemberDevice {
                        author: hex::encode(f),
                        device: devices.get(f).map(|(_, d)| hex::encode(d)).unwrap_or_default(),
                        messages: *n,
                        online: p.online,
                    })
                    .collect()
            } else {
                Vec::new()
            },
        });
    }
    Ok(MemberList { members })
}

pub(super) async fn set_profile(service: &Arc<Service>, p: ProfileParams) -> Result<ProfileResult, ApiError> {
    let (display_name, rooms) = service.set_display_name(&p.display_name).await?;
    Ok(ProfileResult { display_name, rooms })
}

/// `peers.rename`, or with `verify` `peers.verify`.
pub(super) fn contact(service: &Service, p: ContactParams, verify: bool) -> Result<ContactResult, ApiError> {
    let room = p.room.as_deref().map(|r| service.room(r)).transpose()?;
    // A person's devices share one nickname and one verified mark, kept by the person key.
    let feed = service.identity_of(room.as_deref(), &writer_key(&p.peer)?)?;
    let mut contact = service.store.contact(&feed).map_err(ServiceError::from)?;
    if !verify {
        let nick = p.nickname.map(|n| n.trim().chars().filter(|c| !c.is_control()).collect::<String>());
        if nick.as_ref().is_some_and(|n| n.len() > 64) {
            return Err(ApiError::params("a nickname is at most 64 bytes"));
        }
        contact.nickname = nick.filter(|n| !n.is_empty());
    } else {
        let verified = p.verified.ok_or_else(|| ApiError::params("give verified: true or false"))?;
        service.store.set_verified(&feed, verified).map_err(ServiceError::from)?;
        // A mark against an old 12-digit number is replaced by this one.
        contact.verified = false;
    }
    service.store.put_contact(&feed, &contact).map_err(ServiceError::from)?;
    Ok(ContactResult {
        peer: p.peer,
        nickname: contact.nickname,
        verified: service.store.verified(&feed).map_err(ServiceError::from)?,
        safety_number: room
            .map(|r| service.safety_key(&r).map(|ours| keys::safety_number(&ours, &feed)))
            .transpose()?,
    })
}

/// `peers.block`, or unless `blocked` `peers.unblock`.
pub(super) async fn block(service: &Arc<Service>, p: PeerRoomParams, blocked: bool) -> Result<BlockResult, ApiError> {
    let feed = writer_key(&p.peer)?;
    let room = p.room.as_deref().map(|r| service.room(r)).transpose()?;
    // A person is blocked (or unblocked) with all their devices.
    for writer in service.person_writers(room.as_deref(), &feed)? {
        service.block_writer(room.as_deref(), &writer, blocked).await?;
    }
    Ok(BlockResult { peer: p.peer, room: room.map(|r| r.id.clone()), blocked })
}

pub(super) fn safety(service: &Service, p: PeerRoomParams) -> Result<SafetyResult, ApiError> {
    let room = service.room(p.room.as_deref().ok_or_else(|| ApiError::params("give the room"))?)?;
    let theirs = service.identity_in(&room, &writer_key(&p.peer)?)?;
    let safety_number = keys::safety_number(&*service.safety_key(&room)?, &theirs);
    Ok(SafetyResult { peer: p.peer, room: room.id.clone(), qr_svg: qr_svg(&safety_number), safety_number })
}

pub(super) fn blocked(service: &Service, p: OptRoomParam) -> Result<BlockedResult, ApiError> {
    let room = p.room.as_deref().map(|r| service.room(r)).transpose()?;
    let writers = service
        .store
        .blocked_writers(&room.map_or(DiscoveryKey::default(), |r| r.discovery_key))
        .map_err(ServiceError::from)?;
    Ok(BlockedResult { blocked: writers.iter().map(hex::encode).collect() })
}
