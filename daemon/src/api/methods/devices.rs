//! `devices.*`: linking, listing and unlinking a person's devices.

use std::sync::Arc;

use peerlog_proto::api::devices::{
    AcceptParams, AcceptResult, DeviceInfo, DeviceList, LinkCode, UnlinkParams, UnlinkResult, UnlinkedRoom,
};
use peerlog_proto::wire::Key32;

use super::super::ApiError;
use super::{qr_svg, room_info};
use crate::keys::device;
use crate::service::{Service, ServiceError};

pub(super) async fn link(service: &Arc<Service>) -> Result<LinkCode, ApiError> {
    let code = service.link_device().await?;
    Ok(LinkCode { qr_svg: qr_svg(&code.code), code: code.code, expires_ms: code.expires_ms })
}

pub(super) async fn accept(service: &Arc<Service>, p: AcceptParams) -> Result<AcceptResult, ApiError> {
    let linked = service.accept_link(&p.code).await?;
    Ok(AcceptResult {
        person: hex::encode(linked.person),
        rooms: linked.rooms.iter().map(|r| room_info(service, r)).collect(),
    })
}

pub(super) fn list(service: &Service) -> Result<DeviceList, ApiError> {
    let person = service.store.person().map_err(ServiceError::from)?;
    let holds = service.holds_person_key();
    let info = |device: Key32, this: bool, linked_ms: Option<u64>, unlinked: bool| DeviceInfo {
        device: hex::encode(device),
        peer_id: device::peer_id(&device).map(|p| p.to_string()).unwrap_or_default(),
        this,
        holds_person_key: this && holds,
        linked_ms,
        unlinked,
    };
    let mut devices = vec![info(service.device_public(), true, None, false)];
    for (device, linked_ms, unlinked) in service.store.linked_devices().map_err(ServiceError::from)? {
        devices.push(info(device, false, Some(linked_ms), unlinked));
    }
    Ok(DeviceList { person: person.map(|(p, _)| hex::encode(p)), devices })
}

pub(super) async fn unlink(service: &Arc<Service>, p: UnlinkParams) -> Result<UnlinkResult, ApiError> {
    let device = hex::decode(&p.device)
        .ok()
        .and_then(|b| Key32::try_from(b.as_slice()).ok())
        .ok_or_else(|| ApiError::params("device must be a device key: 64 hex digits (device in devices.list)"))?;
    let rooms = service
        .unlink_device(device)
        .await?
        .into_iter()
        .map(|u| UnlinkedRoom { room: u.room.id.clone(), removed_here: u.removed_here })
        .collect();
    Ok(UnlinkResult { device: p.device, rooms })
}
