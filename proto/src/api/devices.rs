//! `devices.*`: one person on several devices. See `docs/PROTOCOL.md`, "Several devices".

use serde::{Deserialize, Serialize};

use super::rooms::RoomInfo;
use super::{method, NoParams};

/// `devices.link` result: a one-time code for the new device.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LinkCode {
    /// `peerlog-link:<base32>`: enter it on the new device (`devices.accept`) within 10
    /// minutes. Whoever holds it can link a device to you: show it to nobody else.
    pub code: String,
    /// The code as a QR code (SVG).
    pub qr_svg: Option<String>,
    /// When it expires, in ms since the Unix epoch.
    pub expires_ms: u64,
}

method!(
    /// `devices.link`: a one-time code that links another device to this person.
    Link, "devices.link", NoParams => LinkCode;
    "a one-time code (and QR) that links a new device to this person; on the device that holds the person key"
);

/// `devices.accept` params.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AcceptParams {
    /// The code `devices.link` showed on the other device.
    pub code: String,
}

/// `devices.accept` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AcceptResult {
    /// The person key this device belongs to now (hex).
    pub person: String,
    /// The person's rooms, joined here.
    pub rooms: Vec<RoomInfo>,
}

method!(
    /// `devices.accept`: links this device with a code from the person's other device.
    Accept, "devices.accept", AcceptParams => AcceptResult;
    "links this device to the person whose device showed the code, and joins their rooms (waits up to 3 minutes)"
);

/// A device of the person.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeviceInfo {
    /// Its device key (hex).
    pub device: String,
    /// Its PeerId (the device key is its node identity).
    pub peer_id: String,
    /// This device.
    pub this: bool,
    /// It holds the person key (it links and unlinks the others).
    pub holds_person_key: bool,
    /// When it was linked (ms since the Unix epoch; devices linked here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_ms: Option<u64>,
    /// It was unlinked.
    pub unlinked: bool,
}

/// `devices.list` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeviceList {
    /// The person key (hex), once a device was linked.
    pub person: Option<String>,
    /// This device and (on the one holding the person key) those it linked.
    pub devices: Vec<DeviceInfo>,
}

method!(
    /// `devices.list`: this person's devices.
    List, "devices.list", NoParams => DeviceList;
    "this person's devices: this one, and those it linked"
);

/// `devices.unlink` params.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UnlinkParams {
    /// The device key (hex, `device` in `devices.list`).
    pub device: String,
}

/// A room a device was unlinked in.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UnlinkedRoom {
    /// The room (id).
    pub room: String,
    /// We removed the device's writer (the room moves to a new epoch); false: the room's
    /// admin removes it when it reads the unlink.
    pub removed_here: bool,
}

/// `devices.unlink` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UnlinkResult {
    /// The device key.
    pub device: String,
    /// The rooms it wrote in.
    pub rooms: Vec<UnlinkedRoom>,
}

method!(
    /// `devices.unlink`: unlinks a device; it is removed from every room like a member.
    Unlink, "devices.unlink", UnlinkParams => UnlinkResult;
    "unlinks a device: a signed unlink in every room, and its writer is removed like a member"
);
