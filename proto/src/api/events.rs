//! Events the daemon pushes (JSON-RPC notifications: `{"jsonrpc": "2.0", "method": name,
//! "params": …}`), one params struct each. `subscribe` picks which a connection receives.

use serde::{Deserialize, Serialize};

use super::node::ConnectionKind;

/// The name of every event, as `subscribe` takes them.
pub const NAMES: &[&str] = &[
    Message::NAME,
    MessageUpdated::NAME,
    Seen::NAME,
    PeerJoined::NAME,
    PeerLeft::NAME,
    PeerConnection::NAME,
    SyncProgress::NAME,
    FileProgress::NAME,
    WriterQuota::NAME,
    RoomMoved::NAME,
    Lagged::NAME,
];

/// An event's params type and its name.
pub trait EventParams: Serialize + schemars::JsonSchema {
    /// The event's name on the wire.
    const NAME: &'static str;
}

/// `message`: a message stored here (ours or a peer's).
pub type Message = super::messages::MessageInfo;

impl EventParams for Message {
    const NAME: &'static str = "message";
}

/// `room.moved`: a room moved on (members were removed: see `moved_to`), or we were removed
/// from it (`removed_by`); the room as `rooms.list` shows it now.
pub type RoomMoved = super::rooms::RoomInfo;

impl EventParams for RoomMoved {
    const NAME: &'static str = "room.moved";
}

/// `message.updated`: a message was edited, deleted or reacted to; its new state.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct MessageUpdated(pub super::messages::MessageInfo);

impl EventParams for MessageUpdated {
    const NAME: &'static str = "message.updated";
}

/// `message.seen`: a peer holds our messages below `seen_below`.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Seen {
    /// The room's id.
    pub room: String,
    /// Our messages below this seq are seen.
    pub seen_below: u64,
}

impl EventParams for Seen {
    const NAME: &'static str = "message.seen";
}

/// `peer.joined`: a session with a room peer is up.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PeerJoined {
    /// The room's id.
    pub room: String,
    /// Its PeerId.
    pub peer: String,
    /// How we are connected.
    pub connection: Option<ConnectionKind>,
}

impl EventParams for PeerJoined {
    const NAME: &'static str = "peer.joined";
}

/// `peer.left`: a session with a room peer ended.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PeerLeft {
    /// The room's id.
    pub room: String,
    /// Its PeerId.
    pub peer: String,
}

impl EventParams for PeerLeft {
    const NAME: &'static str = "peer.left";
}

/// `peer.connection`: the connection to a peer changed (e.g. relayed → holepunched).
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PeerConnection {
    /// Its PeerId.
    pub peer: String,
    /// How we are connected now.
    pub connection: ConnectionKind,
    /// The rooms we share with it (ids).
    pub rooms: Vec<String>,
}

impl EventParams for PeerConnection {
    const NAME: &'static str = "peer.connection";
}

/// `sync.progress`: catching up on a room.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SyncProgress {
    /// The room's id.
    pub room: String,
    /// Entries stored so far.
    pub entries_done: u64,
    /// Entries the peers announced.
    pub entries_total: u64,
    /// Bytes stored so far (an estimate).
    pub bytes_done: u64,
    /// Bytes the peers announced (an estimate).
    pub bytes_total: u64,
}

impl EventParams for SyncProgress {
    const NAME: &'static str = "sync.progress";
}

/// `file.progress`: a file being sent or received.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FileProgress {
    /// The room's id.
    pub room: String,
    /// The file's id (hex).
    pub file_id: String,
    /// `send` or `receive`.
    pub direction: String,
    /// Bytes done.
    pub bytes_done: u64,
    /// Bytes in all.
    pub bytes_total: u64,
    /// Finished.
    pub done: bool,
}

impl EventParams for FileProgress {
    const NAME: &'static str = "file.progress";
}

/// `writer.quota`: a writer reached this daemon's quota in a room.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WriterQuota {
    /// The room's id.
    pub room: String,
    /// The writer (hex).
    pub author: String,
    /// `entries`, `bytes` or `writers`.
    pub quota: String,
}

impl EventParams for WriterQuota {
    const NAME: &'static str = "writer.quota";
}

/// `lagged`: this client fell behind and missed events; reload what you show.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Lagged {
    /// How many it missed.
    pub missed: u64,
}

impl EventParams for Lagged {
    const NAME: &'static str = "lagged";
}

/// Calls `f` with the name and params schema of every event (for the OpenRPC document).
pub fn each_schema(generator: &mut schemars::SchemaGenerator, mut f: impl FnMut(&'static str, schemars::Schema)) {
    fn one<E: EventParams>(g: &mut schemars::SchemaGenerator, f: &mut impl FnMut(&'static str, schemars::Schema)) {
        f(E::NAME, g.subschema_for::<E>());
    }
    one::<Message>(generator, &mut f);
    one::<MessageUpdated>(generator, &mut f);
    one::<Seen>(generator, &mut f);
    one::<PeerJoined>(generator, &mut f);
    one::<PeerLeft>(generator, &mut f);
    one::<PeerConnection>(generator, &mut f);
    one::<SyncProgress>(generator, &mut f);
    one::<FileProgress>(generator, &mut f);
    one::<WriterQuota>(generator, &mut f);
    one::<RoomMoved>(generator, &mut f);
    one::<Lagged>(generator, &mut f);
}
