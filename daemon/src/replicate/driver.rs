//! One task per room drives its [`RoomState`]: it feeds it the frames of the room's sessions,
//! our appends and the downloads' wants, performs what it outputs (storage writes on
//! blocking threads, answered before any other input), and hands each session's writer
//! the next frame whenever that writer has room.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use libp2p::PeerId;
use peerlog_proto::wire::{Frame, Refusal};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::presence::{ALIVE_EVERY, FLUSH_EVERY};
use super::state::{Input, Output, RoomState, SessionUp};
use super::storage::{perform, Local, Performed};
use super::{Replicator, SessionError};
use crate::ids::SessionId;
use crate::rooms::{self, DaemonEvent, Room};

/// Frames of a room's sessions waiting for its task (all sessions share it; each reader
/// waits when it is full, so a peer cannot make us buffer more).
pub(super) const ROOM_FRAMES: usize = 64;

/// From a session's reader to its room's task.
#[derive(Debug)]
pub(super) enum FromPeer {
    /// A frame arrived.
    Frame(Frame),
    /// The stream ended: closed (Ok) or failed.
    End(Result<(), SessionError>),
}

/// Sessions coming and going, to a room's task.
pub(super) enum Control {
    /// A session authenticated: its frames come on the room's frame channel, the task sends
    /// its frames to `out`, and says on `done` when and why it ended.
    Up {
        /// The session.
        session: SessionId,
        /// What the rules need to know of it.
        up: SessionUp,
        /// To its writer.
        out: mpsc::Sender<Frame>,
        /// Its end.
        done: oneshot::Sender<Result<(), SessionError>>,
    },
    /// The session's task ended first (it was cancelled).
    Gone(SessionId),
}

/// How sessions reach a room's task.
#[derive(Clone)]
pub(super) struct RoomLink {
    pub control: mpsc::UnboundedSender<Control>,
    pub frames: mpsc::Sender<(SessionId, FromPeer)>,
}

struct Link {
    peer: PeerId,
    out: mpsc::Sender<Frame>,
    done: Option<oneshot::Sender<Result<(), SessionError>>>,
}

impl Link {
    fn end(mut self, result: Result<(), SessionError>) {
        if let Some(done) = self.done.take() {
            let _ = done.send(result);
        }
    }
}

type Writable = BoxFuture<'static, (SessionId, Result<mpsc::OwnedPermit<Frame>, mpsc::error::SendError<()>>)>;

/// A room's task.
pub(super) struct Driver {
    room: Arc<Room>,
    local: Local,
    state: RoomState,
    replicator: Replicator,
    links: HashMap<SessionId, Link>,
    /// Sessions whose writer is full, waiting for room.
    writable: FuturesUnordered<Writable>,
    waiting: HashSet<SessionId>,
    /// Whether the runtime has several workers (`block_in_place` needs one).
    multi_thread: bool,
}

impl Driver {
    pub(super) fn new(room: Arc<Room>, local: Local, state: RoomState, replicator: Replicator) -> Self {
        Self {
            room,
            local,
            state,
            replicator,
            links: HashMap::new(),
            writable: FuturesUnordered::new(),
            waiting: HashSet::new(),
            multi_thread: tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::MultiThread,
        }
    }

    /// Runs until the room is left or the daemon stops.
    pub(super) async fn run(
        mut self,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut frames: mpsc::Receiver<(SessionId, FromPeer)>,
        mut local: mpsc::UnboundedReceiver<rooms::Local>,
        cancel: CancellationToken,
    ) {
        // Presence: records go out every tick, ours every ALIVE_EVERY (none from a blind
        // seeder, which is nobody in the room; it passes the others' on).
        let mut ticks = tokio::time::interval(FLUSH_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_own = 0;
        loop {
            let input = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = ticks.tick() => {
                    let wall_ms = crate::log::store::now_ms();
                    let due = wall_ms >= next_own && !self.room.is_seeder();
                    if due {
                        next_own = wall_ms + ALIVE_EVERY.as_millis() as u64;
                    }
                    Some(Input::Tick { wall_ms, own: due.then(|| self.room.alive(wall_ms)) })
                }
                Some(c) = control.recv() => match c {
                    Control::Up { session, up, out, done } => {
                        self.links.insert(session, Link { peer: up.peer, out, done: Some(done) });
                        Some(Input::SessionUp(session, up))
                    }
                    Control::Gone(session) => self.links.remove(&session).map(|_| Input::SessionDown(session)),
                },
                Some(l) = local.recv() => Some(match l {
                    rooms::Local::Appended(head) => Input::Appended(head),
                    rooms::Local::WantChunks(ids) => Input::WantChunks(ids),
                    rooms::Local::UnwantChunks(ids) => Input::UnwantChunks(ids),
                    rooms::Local::Refetch(feed) => Input::Refetch(feed),
                }),
                Some((session, from)) = frames.recv() => match from {
                    FromPeer::Frame(frame) => self.links.contains_key(&session).then_some(Input::Frame(session, frame)),
                    FromPeer::End(result) => {
                        self.links.remove(&session).map(|link| {
                            link.end(result);
                            Input::SessionDown(session)
                        })
                    }
                },
                Some((session, permit)) = self.writable.next(), if !self.writable.is_empty() => {
                    self.waiting.remove(&session);
                    if let Ok(permit) = permit {
                        if let Some(frame) = self.state.poll_transmit(session, &self.local) {
                            permit.send(frame);
                        }
                    }
                    None
                }
                else => break,
            };
            if let Some(input) = input {
                self.state.handle(input, Instant::now(), &self.local);
            }
            self.settle().await;
        }
        for (_, link) in self.links.drain() {
            link.end(Ok(()));
        }
    }

    /// Performs every output, and fills the writers that have room, until neither leaves
    /// anything to do.
    async fn settle(&mut self) {
        loop {
            while let Some(output) = self.state.poll_output() {
                self.perform(output).await;
            }
            self.pump();
            if !self.state.has_outputs() {
                break;
            }
        }
        let c = self.state.counters();
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        self.room.received.store(c.entries_received, relaxed);
        self.room.served.store(c.entries_served, relaxed);
        self.room.frames_received.store(c.frames_received, relaxed);
        self.room.frames_sent.store(c.frames_sent, relaxed);
        if let Some(seen) = self.state.take_presence() {
            self.room.set_presence(seen);
        }
    }

    async fn perform(&mut self, output: Output) {
        let performed = if matches!(output, Output::Ingest(_) | Output::StoreChunk { .. }) {
            if self.multi_thread {
                // Off the async threads without a hand-over per batch: this worker becomes
                // a blocking thread for the call, and the others take its tasks.
                tokio::task::block_in_place(|| perform(&self.room, &self.local, output))
            } else {
                let (room, local) = (self.room.clone(), self.local.clone());
                match tokio::task::spawn_blocking(move || perform(&room, &local, output)).await {
                    Ok(performed) => performed,
                    // A panic in storage code fails the room's task, and with it the daemon.
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                }
            }
        } else {
            perform(&self.room, &self.local, output)
        };
        match performed {
            Performed::Answer(input) => self.state.handle(input, Instant::now(), &self.local),
            Performed::Done => {}
            Performed::Other(output) => self.act(output),
        }
    }

    fn act(&mut self, output: Output) {
        let room = self.room.discovery_key;
        match output {
            Output::Close(session, error) => {
                if let Some(link) = self.links.remove(&session) {
                    if matches!(error, SessionError::Protocol(_)) {
                        let _ = link.out.try_send(Frame::Refuse { reason: Refusal::ProtocolViolation });
                    }
                    link.end(Err(error));
                }
            }
            Output::WriterProven(session, feed) => {
                if let Some(link) = self.links.get(&session) {
                    self.replicator.set_writer(link.peer, room, session, feed);
                }
            }
            Output::LearnPeers(peers) => self.replicator.learn_peers(room, peers),
            Output::OwnFeedAhead(length) => self.room.note_own_ahead(length),
            Output::Event(event) => {
                if let DaemonEvent::Seen { length, .. } = &event {
                    self.room.set_own_seen(*length);
                }
                self.room.emit(event);
            }
            Output::Messages(messages) => {
                for message in messages {
                    self.room.emit(DaemonEvent::Message { room, message });
                }
            }
            Output::Chunk(event) => self.room.chunk_event(event),
            // Storage outputs were performed by `perform`.
            Output::Ingest(_)
            | Output::StoreChunk { .. }
            | Output::RecordFork(..)
            | Output::UpgradeHead(_)
            | Output::ForgetDamaged(_) => {}
        }
    }

    /// Hands every session's writer frames while it has room; a full writer is waited on.
    fn pump(&mut self) {
        for (&session, link) in &self.links {
            if self.waiting.contains(&session) {
                continue;
            }
            while self.state.has_outgoing(session) {
                match link.out.try_reserve() {
                    Ok(permit) => match self.state.poll_transmit(session, &self.local) {
                        Some(frame) => permit.send(frame),
                        None => break,
                    },
                    Err(mpsc::error::TrySendError::Full(())) => {
                        self.waiting.insert(session);
                        let out = link.out.clone();
                        self.writable.push(Box::pin(async move { (session, out.reserve_owned().await) }));
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(())) => break,
                }
            }
        }
    }
}
