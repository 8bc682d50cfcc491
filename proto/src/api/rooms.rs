//! `rooms.*` and `passphrase.check`: joining, creating, leaving and inviting to rooms.

use serde::{Deserialize, Serialize};

use super::{method, NoParams};

/// A joined room, as every `rooms.*` result shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RoomInfo {
    /// The room's short id (hex of the first 8 bytes of its discovery key).
    pub id: String,
    /// Its local name.
    pub name: String,
    /// Our writer key in it (hex).
    pub feed_key: String,
    /// Room peers with a session now.
    pub peers: usize,
    /// Writers that signed two histories (their conflicting entries are refused).
    pub forks: Vec<Fork>,
    /// Seeded blindly: no content key, nothing to read or write.
    pub seeder: bool,
    /// Our messages below this seq were seen by a peer.
    pub seen_below: u64,
    /// Entries stored, of every writer.
    pub entries_stored: u64,
    /// Entries received from peers since the daemon started.
    pub entries_received: u64,
    /// Entries served to peers since the daemon started.
    pub entries_served: u64,
    /// Members were removed and the room moved on to a new epoch: the new room's id,
    /// once this daemon joined it (the old room stays, read-only history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<String>,
    /// We were removed from this room: who removed us (writer key, hex). The room moved
    /// on without us; what is written after cannot be read here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_by: Option<String>,
    /// The writer key (hex) of the room's admin, who alone may remove members: its creator,
    /// or the member whose removal made it. Absent for rooms without one (made from a
    /// passphrase or an older invite), where any member may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// The room moved on when members were removed (whether or not this daemon went with
    /// it: a member who joined with an old invite or passphrase did not): nothing more is
    /// written here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// The room this one continues: it moved here when members were removed (its id; its
    /// history stays there, readable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_from: Option<String>,
    /// The members the admin named admins too (writer keys, hex), who may also remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admins: Vec<String>,
}

/// A writer that signed two different entries for one seq.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Fork {
    /// The writer (hex).
    pub author: String,
    /// Where its histories part.
    pub seq: u64,
}

/// Params naming one room (by id or name).
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RoomParam {
    /// Room id or name.
    pub room: String,
}

/// The joined rooms.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RoomList {
    /// Every joined (or seeded) room.
    pub rooms: Vec<RoomInfo>,
}

method!(
    /// `rooms.list`: the joined rooms.
    List, "rooms.list", NoParams => RoomList;
    "the joined rooms"
);

/// `rooms.join` params: exactly one of `passphrase` and `invite`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JoinParams {
    /// The room's passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<String>,
    /// A member invite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite: Option<String>,
    /// A local name for the room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Join even though the passphrase is weak for a room announced on the public DHT.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub weak_ok: bool,
}

/// `rooms.join` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JoinResult {
    /// The room.
    pub room: RoomInfo,
    /// Whether it was joined just now (false: it was joined already).
    pub created: bool,
    /// The passphrase's estimated strength (passphrase joins only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength_bits: Option<u32>,
    /// Why the passphrase is risky, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

method!(
    /// `rooms.join`: joins a room by passphrase or invite.
    Join, "rooms.join", JoinParams => JoinResult;
    "joins a room by passphrase or invite"
);

/// `passphrase.check` params.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PassphraseParams {
    /// The passphrase to estimate (never stored).
    pub passphrase: String,
}

/// `passphrase.check` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PassphraseCheck {
    /// Estimated strength in bits (zxcvbn).
    pub bits: u32,
    /// The most the estimator gives.
    pub max_bits: u32,
    /// Whether this daemon announces rooms on the public DHT.
    pub public: bool,
    /// Whether joining needs `weak_ok`.
    pub confirm: bool,
    /// Why it is risky, if it is (`null` otherwise).
    pub warning: Option<String>,
}

method!(
    /// `passphrase.check`: how strong a passphrase is, for this daemon's network.
    CheckPassphrase, "passphrase.check", PassphraseParams => PassphraseCheck;
    "how strong a passphrase is, for this daemon's network"
);

/// `rooms.create` params.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CreateParams {
    /// A local name for the room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `rooms.create` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CreateResult {
    /// The new room.
    pub room: RoomInfo,
    /// Its member invite.
    pub invite: Option<String>,
}

method!(
    /// `rooms.create`: a new room with a random secret.
    Create, "rooms.create", CreateParams => CreateResult;
    "a new room with a random secret"
);

/// `rooms.leave` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LeaveResult {
    /// Always true.
    pub left: bool,
}

method!(
    /// `rooms.leave`: leaves a room and deletes its data here.
    Leave, "rooms.leave", RoomParam => LeaveResult;
    "leaves a room and deletes its data here"
);

/// `rooms.invite` params.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InviteParams {
    /// Room id or name.
    pub room: String,
    /// `member` (default) or `seed` (a blind seeder's capability).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// `rooms.invite` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InviteResult {
    /// The room's id.
    pub room: String,
    /// `member` or `seed`.
    pub kind: String,
    /// The invite (or seed capability).
    pub invite: String,
    /// A QR code of a member invite, as SVG.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qr_svg: Option<String>,
}

/// `rooms.remove` params.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RemoveParams {
    /// Room id or name.
    pub room: String,
    /// The member to remove: its writer key (hex, `author` in `rooms.members`).
    pub member: String,
}

/// `rooms.remove` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RemoveResult {
    /// The room's new epoch, where the others went (the old room stays, read-only).
    pub room: RoomInfo,
    /// The member removed (writer key, hex).
    pub removed: String,
}

/// `rooms.admin` params.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AdminParams {
    /// Room id or name.
    pub room: String,
    /// The member: its writer key (hex, `author` in `rooms.members`).
    pub member: String,
    /// Name the member an admin (true, the default) or no longer (false).
    #[serde(default = "yes")]
    pub admin: bool,
}

fn yes() -> bool {
    true
}

method!(
    /// `rooms.admin`: the room's creator names an admin, or takes that back.
    Admin, "rooms.admin", AdminParams => RoomInfo;
    "names a member an admin of the room (who may remove members), or takes that back; only the room's creator may"
);

method!(
    /// `rooms.remove`: removes a member; the others move to a new epoch of the room.
    Remove, "rooms.remove", RemoveParams => RemoveResult;
    "removes a member: the others move to a new epoch of the room, with new keys"
);

method!(
    /// `rooms.invite`: a member invite or a seed capability.
    Invite, "rooms.invite", InviteParams => InviteResult;
    "a member invite or a seed capability"
);

/// `rooms.seed` params.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SeedParams {
    /// A seed capability (`rooms.invite` with `kind: seed`).
    pub capability: String,
    /// A local name for the room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `rooms.seed` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SeedResult {
    /// The seeded room.
    pub room: RoomInfo,
    /// Whether it was added just now.
    pub created: bool,
}

method!(
    /// `rooms.seed`: seeds a room blindly (stores and serves ciphertext).
    Seed, "rooms.seed", SeedParams => SeedResult;
    "seeds a room blindly (stores and serves ciphertext)"
);
