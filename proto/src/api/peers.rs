//! `peers.*`, `rooms.members` and `profile.set`: who is in a room, names, safety numbers,
//! blocks.

use serde::{Deserialize, Serialize};

use super::method;
use super::node::ConnectionKind;
use super::rooms::RoomParam;

/// Params naming a room, or none for every room.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OptRoomParam {
    /// Room id or name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
}

/// A peer with a session in one of our rooms.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RoomPeer {
    /// Its PeerId.
    pub peer_id: String,
    /// The rooms we share a session with it in (ids).
    pub rooms: Vec<String>,
    /// How we are connected, if we are.
    pub connection: Option<ConnectionKind>,
    /// Its addresses on the connection.
    pub addrs: Vec<String>,
    /// Round-trip time, if measured.
    pub rtt_ms: Option<f64>,
    /// Its writer key (asking for one room, once it proved it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Its display name there (asking for one room).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Our nickname for it (asking for one room).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
}

/// `peers.list` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PeerList {
    /// The peers.
    pub peers: Vec<RoomPeer>,
}

method!(
    /// `peers.list`: peers with a session, in one room or all.
    List, "peers.list", OptRoomParam => PeerList;
    "peers with a session, in one room or all"
);

/// Whether a member is online, and how.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Presence {
    /// Online: a session with it is up, or its newest signed presence record (passed on by
    /// the room's peers) is under 150 s old. Always true for us.
    pub online: bool,
    /// When it was last known online, in ms since the Unix epoch (by its own clock, from
    /// its presence records; now while a session with it is up). Absent when never seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<u64>,
    /// The PeerId it is online from, when we have a session with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    /// How we are connected to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionKind>,
    /// Round-trip time, if measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
}

/// A member of a room: a writer, or a person with several devices.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Member {
    /// Its writer key (hex).
    pub author: String,
    /// Us.
    pub mine: bool,
    /// The name it gave itself in the room.
    pub display_name: Option<String>,
    /// Our nickname for it.
    pub nickname: Option<String>,
    /// We compared its safety number.
    pub verified: bool,
    /// We compared an older (12-digit) number: compare again.
    pub verified_before: bool,
    /// Blocked here.
    pub blocked: bool,
    /// Its 60-digit safety number with us (not for ourselves).
    pub safety_number: Option<String>,
    /// Messages it wrote that we hold.
    pub messages: u64,
    /// Whether it is online (any of its devices).
    pub presence: Presence,
    /// The person key (hex), when its writers proved themselves one person's devices
    /// (`devices.link`); the safety number is then the person's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person: Option<String>,
    /// The person's devices in the room (`author` is one of them); empty for a member
    /// with one device.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<MemberDevice>,
}

/// One device of a member that is a person with several.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MemberDevice {
    /// Its writer key in the room (hex).
    pub author: String,
    /// Its device key (hex).
    pub device: String,
    /// Messages it wrote that we hold.
    pub messages: u64,
    /// Whether it is online.
    pub online: bool,
}

/// `rooms.members` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MemberList {
    /// The members.
    pub members: Vec<Member>,
}

method!(
    /// `rooms.members`: the room's writers, with names, safety numbers and presence.
    Members, "rooms.members", RoomParam => MemberList;
    "the room's writers, with names, safety numbers and presence"
);

/// `profile.set` params.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProfileParams {
    /// Our display name, 1 to 64 bytes, in every room.
    pub display_name: String,
}

/// `profile.set` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProfileResult {
    /// The name as stored (trimmed).
    pub display_name: String,
    /// Rooms it was written to.
    pub rooms: usize,
}

method!(
    /// `profile.set`: our display name, written to every room we can write in.
    SetProfile, "profile.set", ProfileParams => ProfileResult;
    "our display name, written to every room we can write in"
);

/// `peers.rename` / `peers.verify` params.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ContactParams {
    /// The writer key.
    pub peer: String,
    /// The room (for the safety number in the result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// `peers.rename`: the nickname (empty or absent clears it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
    /// `peers.verify`: whether we compared the safety number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
}

/// `peers.rename` / `peers.verify` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ContactResult {
    /// The writer key.
    pub peer: String,
    /// Our nickname for it.
    pub nickname: Option<String>,
    /// We compared its 60-digit safety number.
    pub verified: bool,
    /// Its safety number with us in the room named.
    pub safety_number: Option<String>,
}

method!(
    /// `peers.rename`: a local nickname for a writer.
    Rename, "peers.rename", ContactParams => ContactResult;
    "a local nickname for a writer"
);

method!(
    /// `peers.verify`: marks a writer's safety number as compared (or not).
    Verify, "peers.verify", ContactParams => ContactResult;
    "marks a writer's safety number as compared (or not)"
);

/// Params naming a writer, in a room or everywhere.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PeerRoomParams {
    /// The writer key.
    pub peer: String,
    /// Room id or name (none: every room).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
}

/// `peers.block` / `peers.unblock` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BlockResult {
    /// The writer key.
    pub peer: String,
    /// The room (null: every room).
    pub room: Option<String>,
    /// Blocked now.
    pub blocked: bool,
}

method!(
    /// `peers.block`: stores, serves and shows nothing more of a writer.
    Block, "peers.block", PeerRoomParams => BlockResult;
    "stores, serves and shows nothing more of a writer"
);

method!(
    /// `peers.unblock`: undoes `peers.block`.
    Unblock, "peers.unblock", PeerRoomParams => BlockResult;
    "undoes `peers.block`"
);

/// `peers.safety` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SafetyResult {
    /// The writer key.
    pub peer: String,
    /// The room.
    pub room: String,
    /// The 60-digit safety number of the pair.
    pub safety_number: String,
    /// It as a QR code (SVG).
    pub qr_svg: Option<String>,
}

method!(
    /// `peers.safety`: the safety number with a writer in a room, and its QR code.
    Safety, "peers.safety", PeerRoomParams => SafetyResult;
    "the safety number with a writer in a room, and its QR code"
);

/// `peers.blocked` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BlockedResult {
    /// Writer keys blocked in the room (or everywhere).
    pub blocked: Vec<String>,
}

method!(
    /// `peers.blocked`: the writers blocked in a room (or everywhere).
    Blocked, "peers.blocked", OptRoomParam => BlockedResult;
    "the writers blocked in a room (or everywhere)"
);
