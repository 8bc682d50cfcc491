//! `node.*`: the node's state and connectivity checks.

use std::sync::Arc;

use peerlog_proto::api::node::{Check, DoctorResult, NodeInfo};
use peerlog_proto::api::API_VERSION;

use super::super::ApiError;
use crate::service::Service;

pub(super) async fn doctor(service: &Arc<Service>) -> Result<DoctorResult, ApiError> {
    let checks: Vec<Check> = service
        .doctor()
        .await?
        .into_iter()
        .map(|c| Check { name: c.name.into(), ok: c.ok, detail: c.detail, advice: c.advice })
        .collect();
    Ok(DoctorResult { ok: checks.iter().all(|c| c.ok), checks })
}

pub(super) async fn info(service: &Arc<Service>) -> Result<NodeInfo, ApiError> {
    let info = service.node_info().await?;
    Ok(NodeInfo {
        connected_peers: info.peers.len(),
        peer_id: info.peer_id,
        listen_addrs: info.listen_addrs,
        external_addrs: info.external_addrs,
        nat_status: info.nat_status,
        relays: info.relays,
        reachability: info.reachability,
        dht_mode: info.dht_mode,
        dht_peers: info.dht_peers,
        network: info.network,
        public_dht_peers: info.public_dht_peers,
        peerlog_relays: info.peerlog_relays,
        holepunch_ok: info.holepunch_ok,
        holepunch_failed: info.holepunch_failed,
        bootstrap_peers: info.bootstrap_peers,
        bootstrap_connected: info.bootstrap_connected,
        warnings: info.warnings,
        rooms: service.rooms.list().len(),
        storage_bytes: service.store.size_on_disk() + service.chunks.bytes(),
        display_name: service.store.display_name().ok().flatten(),
        version: env!("CARGO_PKG_VERSION").into(),
        api_version: API_VERSION,
    })
}
