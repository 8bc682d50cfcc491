//! `rooms.*` and `passphrase.check`.

use std::sync::Arc;

use peerlog_proto::api::codes;
use peerlog_proto::api::rooms::{
    AdminParams, CreateParams, CreateResult, Fork, InviteParams, InviteResult, JoinParams, JoinResult, LeaveResult,
    PassphraseCheck, PassphraseParams, RemoveParams, RemoveResult, RoomInfo, RoomList, RoomParam, SeedParams,
    SeedResult,
};

use super::super::ApiError;
use super::qr_svg;
use crate::config::Network;
use crate::keys::{self, SeedCapability};
use crate::log::store::StoreError;
use crate::rooms::Room;
use crate::service::{Service, ServiceError};

/// A room as the API shows it.
pub(in crate::api) fn room_info(service: &Service, room: &Room) -> RoomInfo {
    // Writers that signed two different entries for one seq (e.g. a data dir copied to a
    // second machine): their conflicting data is refused; people should know.
    let forks = service
        .store
        .forks(&room.discovery_key)
        .unwrap_or_default()
        .into_iter()
        .map(|(feed, seq)| Fork { author: hex::encode(feed), seq })
        .collect();
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    let admins = service.store.admins(&room.discovery_key).unwrap_or_default();
    let rotation = service.store.rotation(&room.discovery_key).unwrap_or_default();
    let moved_to = service
        .store
        .moved_to(&room.discovery_key)
        .unwrap_or_default()
        .and_then(|next| service.rooms.get(&next))
        .map(|r| r.id.clone());
    let removed_by = rotation.filter(|r| r.removed.contains(&room.feed_key)).map(|r| hex::encode(r.at.feed));
    RoomInfo {
        id: room.id.clone(),
        name: room.name.clone(),
        feed_key: hex::encode(room.feed_key),
        peers: service.room_peers(Some(&room.discovery_key)).len(),
        forks,
        seeder: room.is_seeder(),
        seen_below: room.own_seen(),
        entries_stored: service
            .store
            .room_feeds(&room.discovery_key)
            .map_or(0, |f| f.iter().map(|(_, m)| m.stored()).sum::<u64>()),
        entries_received: room.received.load(relaxed),
        entries_served: room.served.load(relaxed),
        moved_to,
        removed_by,
        read_only: service.check_not_moved(room).is_err(),
        admin: admins.first().map(hex::encode),
        moved_from: service
            .store
            .moved_from(&room.discovery_key)
            .ok()
            .flatten()
            .and_then(|from| service.rooms.get(&from))
            .map(|r| r.id.clone()),
        admins: admins.iter().skip(1).map(hex::encode).collect(),
    }
}

pub(super) async fn admin(service: &Arc<Service>, p: AdminParams) -> Result<RoomInfo, ApiError> {
    let room = service.room(&p.room)?;
    service.name_admin(&room, parse_member(&p.member)?, p.admin).await?;
    Ok(room_info(service, &room))
}

/// A member's writer key, from hex.
fn parse_member(member: &str) -> Result<peerlog_proto::wire::FeedKey, ApiError> {
    hex::decode(member)
        .ok()
        .and_then(|b| peerlog_proto::wire::FeedKey::try_from(b.as_slice()).ok())
        .ok_or_else(|| ApiError::params("member: a writer key, 64 hex digits (author in rooms.members)"))
}

pub(super) async fn remove(service: &Arc<Service>, p: RemoveParams) -> Result<RemoveResult, ApiError> {
    let room = service.room(&p.room)?;
    let member = parse_member(&p.member)?;
    let next = service.remove_member(&room, member).await?;
    Ok(RemoveResult { room: room_info(service, &next), removed: hex::encode(member) })
}

/// The rooms joined, without the link rooms of `devices.link` (they last minutes).
pub(super) fn list(service: &Service) -> RoomList {
    let links = service.link_rooms();
    let rooms = service.rooms.list();
    RoomList {
        rooms: rooms.iter().filter(|r| !links.contains(&r.discovery_key)).map(|r| room_info(service, r)).collect(),
    }
}

pub(super) async fn join(service: &Arc<Service>, p: JoinParams) -> Result<JoinResult, ApiError> {
    let public = service.config.network == Network::Public;
    let (room, created, bits) = match (p.passphrase, p.invite) {
        (Some(pass), None) => {
            let bits = keys::passphrase_bits(&pass);
            if public && bits < keys::PUBLIC_CONFIRM_BELOW && !p.weak_ok {
                return Err(ApiError {
                    code: codes::WEAK_PASSPHRASE,
                    message: format!(
                        "this passphrase is weak ({bits} bits) and the room would be announced on the public DHT, where anyone can test guesses against it offline: use 4+ random words or an invite, or join with weak_ok (CLI: --i-know-it-is-weak)"
                    ),
                });
            }
            let (room, created) = service.join_passphrase(pass, p.name).await?;
            (room, created, Some(bits))
        }
        (None, Some(invite)) => {
            let invite = keys::Invite::parse(&invite).map_err(ServiceError::from)?;
            let (room, created) = service.join_invite(invite.key, p.name.or(invite.name)).await?;
            (room, created, None)
        }
        _ => return Err(ApiError::params("give exactly one of passphrase or invite")),
    };
    Ok(JoinResult {
        room: room_info(service, &room),
        created,
        strength_bits: bits,
        warning: bits.and_then(|bits| keys::passphrase_warning(bits, public)),
    })
}

pub(super) fn check_passphrase(service: &Service, p: PassphraseParams) -> PassphraseCheck {
    let public = service.config.network == Network::Public;
    let bits = keys::passphrase_bits(&p.passphrase);
    PassphraseCheck {
        bits,
        max_bits: keys::PASSPHRASE_BITS_MAX,
        public,
        confirm: public && bits < keys::PUBLIC_CONFIRM_BELOW,
        warning: keys::passphrase_warning(bits, public),
    }
}

pub(super) async fn create(service: &Arc<Service>, p: CreateParams) -> Result<CreateResult, ApiError> {
    let room = service.create_room(p.name).await?;
    Ok(CreateResult { room: room_info(service, &room), invite: room.invite().map_err(ServiceError::from)? })
}

pub(super) async fn leave(service: &Arc<Service>, p: RoomParam) -> Result<LeaveResult, ApiError> {
    service.leave(&p.room).await?;
    Ok(LeaveResult { left: true })
}

pub(super) fn invite(service: &Service, p: InviteParams) -> Result<InviteResult, ApiError> {
    let room = service.room(&p.room)?;
    match p.kind.as_deref().unwrap_or("member") {
        "member" => {
            let invite = room.invite().map_err(ServiceError::from)?.ok_or(ServiceError::Store(StoreError::Blind))?;
            let qr_svg = qr_svg(&invite);
            Ok(InviteResult { room: room.id.clone(), kind: "member".into(), invite, qr_svg })
        }
        "seed" => Ok(InviteResult {
            room: room.id.clone(),
            kind: "seed".into(),
            invite: room.seed_capability(),
            qr_svg: None,
        }),
        other => Err(ApiError::params(format!("kind must be \"member\" or \"seed\", not {other:?}"))),
    }
}

pub(super) async fn seed(service: &Arc<Service>, p: SeedParams) -> Result<SeedResult, ApiError> {
    let cap = SeedCapability::parse(&p.capability).map_err(ServiceError::from)?;
    let (room, created) = service.seed(cap, p.name).await?;
    Ok(SeedResult { room: room_info(service, &room), created })
}
