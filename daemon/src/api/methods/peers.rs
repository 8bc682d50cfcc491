//! `peers.*` and `profile.set`: who is in a room, names, safety numbers and blocks.
//! (Results still `json!`: typed next.)

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::super::ApiError;
use super::{qr_svg, writer_key};
use crate::keys;
use crate::rooms::Room;
use crate::service::{Service, ServiceError};

#[derive(Deserialize)]
pub(super) struct OptRoomParam {
    room: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct ProfileParams {
    display_name: String,
}

#[derive(Deserialize)]
pub(super) struct PeerRoomParams {
    peer: String,
    room: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct OptionalRoomParam {
    room: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct ContactParams {
    peer: String,
    room: Option<String>,
    nickname: Option<String>,
    verified: Option<bool>,
}

pub(super) async fn list(service: &Arc<Service>, p: OptRoomParam) -> Result<Value, ApiError> {
    let filter = match &p.room {
        Some(q) => Some(service.room(q)?.discovery_key),
        None => None,
    };
    let info = service.node_info().await?;
    // Per peer: its rooms, and (asking for one room) who it is there.
    // (rooms, writer, room) per peer.
    type PeerRow = (Vec<String>, Option<[u8; 32]>, Option<Arc<Room>>);
    let mut peers: std::collections::BTreeMap<String, PeerRow> = Default::default();
    for rp in service.replicator.room_peers(filter.as_ref()) {
        if let Some(room) = service.rooms.get(&rp.room) {
            let e = peers.entry(rp.peer.to_string()).or_default();
            e.0.push(room.id.clone());
            e.1 = rp.writer;
            e.2 = Some(room);
        }
    }
    let one_room = filter.is_some();
    let list: Vec<Value> = peers
        .into_iter()
        .map(|(peer, (rooms, writer, room))| {
            let conn = info.peers.iter().find(|p| p.peer_id == peer);
            let mut v = json!({
                "peer_id": peer,
                "rooms": rooms,
                "connection": conn.map(|c| c.connection),
                "addrs": conn.map(|c| c.addrs.clone()).unwrap_or_default(),
                "rtt_ms": conn.and_then(|c| c.rtt_ms),
            });
            if let (true, Some(w), Some(room)) = (one_room, writer, room) {
                v["author"] = json!(hex::encode(w));
                v["display_name"] = json!(room.display_name(&w));
                v["nickname"] = json!(service.store.contact(&w).ok().and_then(|c| c.nickname));
            }
            v
        })
        .collect();
    Ok(json!({"peers": list}))
}

pub(super) async fn set_profile(service: &Arc<Service>, p: ProfileParams) -> Result<Value, ApiError> {
    let (name, rooms) = service.set_display_name(&p.display_name).await?;
    Ok(json!({"display_name": name, "rooms": rooms}))
}

/// `peers.rename`, or with `verify` `peers.verify`.
pub(super) fn contact(service: &Service, p: ContactParams, verify: bool) -> Result<Value, ApiError> {
    let feed = writer_key(&p.peer)?;
    let room = p.room.as_deref().map(|r| service.room(r)).transpose()?;
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
    let verified = service.store.verified(&feed).map_err(ServiceError::from)?;
    Ok(json!({
        "peer": p.peer,
        "nickname": contact.nickname,
        "verified": verified,
        "safety_number": room.map(|r| keys::safety_number(&r.feed_key, &feed)),
    }))
}

/// `peers.block`, or unless `blocked` `peers.unblock`.
pub(super) async fn block(service: &Arc<Service>, p: PeerRoomParams, blocked: bool) -> Result<Value, ApiError> {
    let feed = writer_key(&p.peer)?;
    let room = p.room.as_deref().map(|r| service.room(r)).transpose()?;
    service.block_writer(room.as_deref(), &feed, blocked).await?;
    Ok(json!({"peer": p.peer, "room": room.map(|r| r.id.clone()), "blocked": blocked}))
}

pub(super) fn safety(service: &Service, p: PeerRoomParams) -> Result<Value, ApiError> {
    let feed = writer_key(&p.peer)?;
    let room = service.room(p.room.as_deref().ok_or_else(|| ApiError::params("give the room"))?)?;
    let number = keys::safety_number(&room.feed_key, &feed);
    Ok(json!({"peer": p.peer, "room": room.id, "safety_number": number, "qr_svg": qr_svg(&number)}))
}

pub(super) fn blocked(service: &Service, p: OptionalRoomParam) -> Result<Value, ApiError> {
    let room = p.room.as_deref().map(|r| service.room(r)).transpose()?;
    let writers =
        service.store.blocked_writers(&room.map_or([0; 32], |r| r.discovery_key)).map_err(ServiceError::from)?;
    Ok(json!({"blocked": writers.iter().map(hex::encode).collect::<Vec<_>>()}))
}
