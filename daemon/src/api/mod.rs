//! The local API: `GET /` (web UI), `GET /api/ws` (JSON-RPC-shaped WebSocket),
//! `GET /api/health`. Every request must name a loopback `Host` (DNS-rebinding defence);
//! the WebSocket also needs the token (`Authorization: Bearer` or `?token=`) and, from a
//! browser, an `Origin` equal to the daemon's own. Contract: `docs/API.md`.

use std::sync::Arc;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::{FutureExt, SinkExt, StreamExt};
use peerlog_proto::api::node::{CreateBackup, RotateToken};
use peerlog_proto::api::{
    codes, files, Event, Method, NoParams, Request as RpcRequest, Response as RpcResponse, JSONRPC, MAX_BATCH,
};
use peerlog_proto::wire::DiscoveryKey;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

use crate::config::Network;
use crate::keys::{self};
use crate::rooms::{DaemonEvent, Room};
use crate::service::{FileInfo, FileSource};
use crate::service::{Service, ServiceError};

mod methods;

use methods::{message_info, parse, room_info};

/// Frames queued for one client before it is considered too slow.
const CLIENT_QUEUE: usize = 1024;
/// Bytes of replies, events and file bytes queued for one client: past this, whoever
/// produces them waits (a client that asks and never reads holds at most this much, plus
/// the requests it may have running).
const CLIENT_QUEUE_BYTES: usize = 16 << 20;

struct ApiState {
    service: Arc<Service>,
    port: u16,
    cancel: CancellationToken,
    /// Upgraded WebSocket connections: axum's graceful shutdown does not track them.
    clients: tokio_util::task::TaskTracker,
}

/// Serves the API on `listener` until `cancel` fires; open WebSockets are closed then.
pub async fn serve(listener: tokio::net::TcpListener, service: Arc<Service>, cancel: CancellationToken) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let clients = tokio_util::task::TaskTracker::new();
    let state = Arc::new(ApiState { service, port, cancel: cancel.clone(), clients: clients.clone() });
    let app = Router::new()
        .route("/", get(|| async { static_file("index.html") }))
        .route("/app.js", get(|| async { static_file("app.js") }))
        .route("/style.css", get(|| async { static_file("style.css") }))
        .route("/api/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/openrpc.json", get(|| async { Json(peerlog_proto::api::openrpc::document()) }))
        .route("/api/ws", get(ws_upgrade))
        .route("/api/session", get(check_session).post(open_session))
        .route("/api/files/{room}/{file}", get(download))
        .layer(middleware::from_fn_with_state(state.clone(), check_host))
        .with_state(state);
    let shutdown = cancel.clone();
    // Small request/reply frames: without TCP_NODELAY each waits out a delayed ACK (~40 ms).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await {
        warn!(error = %e, "API server failed");
    }
    // Open WebSockets saw the cancellation: wait until they answered and closed.
    clients.close();
    clients.wait().await;
}

fn static_file(name: &str) -> Response {
    let (body, mime): (&'static str, &str) = match name {
        "index.html" => (include_str!("../../../web-ui/index.html"), "text/html; charset=utf-8"),
        "app.js" => (include_str!("../../../web-ui/app.js"), "text/javascript; charset=utf-8"),
        "style.css" => (include_str!("../../../web-ui/style.css"), "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::HeaderName::from_static("x-frame-options"), "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'",
            ),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

fn loopback_hosts(port: u16) -> [String; 3] {
    [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")]
}

/// Refuses any request whose `Host` is not a loopback name of our port (403).
async fn check_host(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !loopback_hosts(state.port).iter().any(|h| h.eq_ignore_ascii_case(host)) {
        debug!(host, "refused request with a foreign Host header");
        return (StatusCode::FORBIDDEN, "forbidden: Host must be a loopback address of this daemon\n").into_response();
    }
    next.run(req).await
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a client's credential lets it do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Grant {
    /// The API token (`api-token`: the web UI and scripts): everything but paths on this
    /// machine. It travels through browsers, so it may leak (history, a stolen page).
    Api,
    /// The CLI credential (`cli-token`, never shown to a browser, refused with an
    /// `Origin`): also reads and writes files on this machine by path.
    Local,
}

/// Checks Origin (403) and token (401) of a request that needs authorization.
fn authorize(state: &ApiState, headers: &HeaderMap, token: Option<&str>) -> Result<Grant, (StatusCode, &'static str)> {
    let origin = headers.get(header::ORIGIN);
    if let Some(origin) = origin {
        let origin = origin.to_str().unwrap_or("");
        let ok = loopback_hosts(state.port).iter().any(|h| origin.eq_ignore_ascii_case(&format!("http://{h}")));
        if !ok {
            warn!(origin, "refused a request from a foreign origin");
            return Err((StatusCode::FORBIDDEN, "forbidden: Origin is not this daemon\n"));
        }
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let given = bearer.or(token).unwrap_or("");
    if constant_time_eq(given.as_bytes(), state.service.token.get().as_bytes()) {
        return Ok(Grant::Api);
    }
    // A browser session (see `open_session`): the cookie stands for the API token.
    if given.is_empty() {
        if let Some(cookie) = session_cookie(headers, state.port) {
            if constant_time_eq(cookie.as_bytes(), state.service.token.session_cookie().as_bytes()) {
                return Ok(Grant::Api);
            }
        }
    }
    if constant_time_eq(given.as_bytes(), state.service.cli_token.as_bytes()) {
        if origin.is_some() {
            warn!("refused the CLI credential from a browser");
            return Err((StatusCode::FORBIDDEN, "forbidden: the CLI credential is not for browsers\n"));
        }
        return Ok(Grant::Local);
    }
    Err((
        StatusCode::UNAUTHORIZED,
        "unauthorized: token required (Authorization: Bearer, ?token= or a session cookie)\n",
    ))
}

/// `GET /api/health` (no credential): readiness. 200 with `"status": "ok"` when the store
/// and the node work (`"degraded"` when the DHT has no peers yet: up, but finding nobody),
/// 503 with `"failing"` when either does not.
async fn health(State(state): State<Arc<ApiState>>) -> Response {
    let h = state.service.health().await;
    let status = match (h.ready(), h.dht_peers > 0) {
        (false, _) => "failing",
        (true, false) => "degraded",
        (true, true) => "ok",
    };
    let code = if h.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({"status": status, "ready": h.ready(), "version": env!("CARGO_PKG_VERSION"), "checks": h});
    (code, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus metrics (the API token, or the session cookie).
async fn metrics(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<TokenQuery>,
) -> Response {
    if let Err(refused) = authorize(&state, &headers, query.token.as_deref()) {
        return refused.into_response();
    }
    let text = state.service.metrics_text().await;
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

/// The session cookie's name: one per API port (browsers share cookies between the ports
/// of a host, and two daemons may run on one machine).
fn cookie_name(port: u16) -> String {
    format!("peerlog-{port}")
}

/// The value of this daemon's session cookie in a request, if any.
fn session_cookie(headers: &HeaderMap, port: u16) -> Option<String> {
    let name = cookie_name(port);
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

/// How long a browser session lasts (a rotation of the token ends it sooner).
const SESSION_SECS: u64 = 400 * 24 * 3600;

/// `POST /api/session` with the API token: sets the session cookie (`HttpOnly`,
/// `SameSite=Strict`, `Path=/`), so that this browser opens `http://127.0.0.1:<port>/`
/// without the token from then on. The CLI credential opens no browser session.
async fn open_session(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<TokenQuery>,
) -> Response {
    let given = headers.get(header::AUTHORIZATION).is_some() || query.token.is_some();
    match authorize(&state, &headers, query.token.as_deref()) {
        Ok(Grant::Api) if given => {
            let cookie = format!(
                "{}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={SESSION_SECS}",
                cookie_name(state.port),
                state.service.token.session_cookie()
            );
            (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
        }
        Ok(Grant::Api) => {
            (StatusCode::UNAUTHORIZED, "unauthorized: a session is opened with the API token\n").into_response()
        }
        Ok(Grant::Local) => {
            (StatusCode::FORBIDDEN, "forbidden: the CLI credential opens no browser session\n").into_response()
        }
        Err(refused) => refused.into_response(),
    }
}

/// `GET /api/session`: 204 if the request is authorized (by its cookie, say), else 401.
async fn check_session(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<TokenQuery>,
) -> Response {
    match authorize(&state, &headers, query.token.as_deref()) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(refused) => refused.into_response(),
    }
}

/// Checks Origin (403) and token (401) before upgrading.
async fn ws_upgrade(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<TokenQuery>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let grant = match authorize(&state, &headers, query.token.as_deref()) {
        Ok(grant) => grant,
        Err(refused) => return refused.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let limit = state.service.config.limits.ws_message_bytes;
    // Frames may be up to twice the message limit, so that a message over it (one frame,
    // as browsers send) is read whole and answered with close code 1009 rather than cut
    // mid-frame; a frame over that ends the connection at once.
    ws.max_message_size(limit).max_frame_size(limit.saturating_mul(2)).on_upgrade(move |socket| {
        let client_id: u32 = rand::random();
        let clients = state.clients.clone();
        let watched = state.service.tasks.watch("api client", client(socket, state.clone(), grant)).map(|_| ());
        clients.track_future(watched.instrument(tracing::debug_span!("api_client", client = client_id)))
    })
}

/// A frame for a client: JSON text, the bytes of a streamed file, or a close with a code.
enum Out {
    Text(String),
    Binary(bytes::Bytes),
    Close(u16, String),
}

/// Where a client's frames go: a bounded queue, bounded in bytes too (each frame holds
/// its share of [`CLIENT_QUEUE_BYTES`] until the writer has sent it).
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<(Out, tokio::sync::OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
}

impl Outbox {
    /// Queues a frame, waiting for room; `Err` once the client is gone.
    async fn send(&self, out: Out) -> Result<(), ()> {
        let len = match &out {
            Out::Text(t) => t.len(),
            Out::Binary(b) => b.len(),
            Out::Close(_, reason) => reason.len(),
        };
        let permits = len.clamp(1, CLIENT_QUEUE_BYTES) as u32;
        let permit = self.budget.clone().acquire_many_owned(permits).await.map_err(|_| ())?;
        self.tx.send((out, permit)).await.map_err(|_| ())
    }

    /// [`Outbox::send`] from a blocking thread.
    fn blocking_send(&self, out: Out) -> Result<(), ()> {
        tokio::runtime::Handle::current().block_on(self.send(out))
    }
}

/// One WebSocket client: requests run concurrently (bounded), replies and events share
/// one outgoing queue.
async fn client(socket: WebSocket, state: Arc<ApiState>, grant: Grant) {
    let limit = state.service.config.limits.ws_message_bytes;
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (tx, mut out_rx) = mpsc::channel(CLIENT_QUEUE);
    let out_tx = Outbox { tx, budget: Arc::new(Semaphore::new(CLIENT_QUEUE_BYTES)) };
    let writer = tokio::spawn(async move {
        // Each frame's permit is released once it is written.
        while let Some((out, _permit)) = out_rx.recv().await {
            let msg = match out {
                Out::Text(text) => WsMessage::Text(text.into()),
                Out::Binary(bytes) => WsMessage::Binary(bytes),
                Out::Close(code, reason) => {
                    let frame = axum::extract::ws::CloseFrame { code, reason: reason.into() };
                    let _ = ws_tx.send(WsMessage::Close(Some(frame))).await;
                    return;
                }
            };
            if ws_tx.send(msg).await.is_err() {
                return;
            }
        }
        let _ = ws_tx.send(WsMessage::Close(None)).await;
    });
    let filter = EventFilter::default();
    let streaming = Arc::new(tokio::sync::Mutex::new(()));
    // The upload in progress on this connection (`files.send` with streamed bytes).
    let upload: Arc<std::sync::Mutex<Option<mpsc::Sender<bytes::Bytes>>>> = Default::default();
    let events_task = tokio::spawn(forward_events(
        state.service.clone(),
        state.service.rooms.events.subscribe(),
        out_tx.clone(),
        filter.clone(),
    ));
    let slots = Arc::new(Semaphore::new(state.service.config.limits.requests_per_client.max(1)));
    let requests = tokio_util::task::TaskTracker::new();
    // A rotated token ends the connections made with the old one (the CLI's stay).
    let mut rotations = state.service.token.rotations();
    loop {
        let msg = tokio::select! {
            _ = state.cancel.cancelled() => break,
            Ok(()) = rotations.changed(), if grant == Grant::Api => {
                let reason = "the API token was rotated: open peerlog again (peerlog open)".to_string();
                let _ = out_tx.send(Out::Close(1008, reason)).await;
                break;
            }
            msg = ws_rx.next() => msg,
        };
        let text = match msg {
            None | Some(Ok(WsMessage::Close(_))) => break,
            Some(Err(e)) => {
                debug!(error = %e, "WebSocket error");
                if is_too_long(&e) {
                    // Say why (1009, as RFC 6455 asks), then read on until the client
                    // answers the close: closing with its bytes unread would reset the TCP
                    // connection, and the client would never see the reason.
                    let reason = format!("message over the {} byte limit (limits.ws_message_bytes)", limit);
                    let _ = out_tx.send(Out::Close(1009, reason)).await;
                    let drain = async {
                        while let Some(Ok(m)) = ws_rx.next().await {
                            if matches!(m, WsMessage::Close(_)) {
                                break;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(CLOSE_DRAIN, drain).await;
                }
                break;
            }
            Some(Ok(WsMessage::Text(t))) => t,
            Some(Ok(WsMessage::Binary(bytes))) => {
                let tx = upload.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let sent = match tx {
                    // Waits while the file is written: the client is slowed, not buffered.
                    Some(tx) => tx.send(bytes).await.is_ok(),
                    None => false,
                };
                if !sent {
                    let reply = RpcResponse::err(
                        Value::Null,
                        codes::INVALID_REQUEST,
                        "binary frame without a files.send upload in progress",
                    );
                    let _ = out_tx.send(Out::Text(to_json(&reply))).await;
                }
                continue;
            }
            Some(Ok(_)) => continue,
        };
        // A streamed upload takes the binary frames that follow it: set up before any arrives.
        let stream = upload_request(text.as_str()).map(|size| {
            let (tx, rx) = mpsc::channel(4);
            let mut slot = upload.lock().unwrap_or_else(|p| p.into_inner());
            let busy = slot.is_some();
            if !busy {
                *slot = Some(tx);
            }
            Upload { rx: (!busy).then_some(rx), size, slot: upload.clone(), holds_slot: !busy }
        });
        let Ok(permit) = slots.clone().acquire_owned().await else { break };
        let service = state.service.clone();
        let out = out_tx.clone();
        let filter = filter.clone();
        let streaming = streaming.clone();
        let watch = service.tasks.clone();
        requests.spawn(watch.watch("api request", async move {
            let (reply, stream_back) = handle_text(&service, &filter, stream, text.as_str(), grant).await;
            if let (Some(reply), Some((room, file))) = (&reply, stream_back) {
                // One file at a time per connection: its binary frames must not interleave
                // with another's. The reply goes first, then the bytes.
                let _turn = streaming.lock().await;
                if out.send(Out::Text(reply.clone())).await.is_ok() {
                    stream_file(&service, &room, &file, &out).await;
                }
                drop(permit);
                return;
            }
            if let Some(reply) = reply {
                let _ = out.send(Out::Text(reply)).await;
            }
            drop(permit);
        }));
    }
    // An upload in progress gets no more bytes: end it (its request would wait for them,
    // holding a blocking thread, while this function waits for the request).
    *upload.lock().unwrap_or_else(|p| p.into_inner()) = None;
    // Requests in flight (appends included) finish and are answered before the close.
    requests.close();
    requests.wait().await;
    events_task.abort();
    let _ = events_task.await;
    drop(out_tx);
    let _ = writer.await;
}

/// How long a client that sent a message over the limit has to answer our close.
const CLOSE_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether a WebSocket error is a message or frame over the size limit.
fn is_too_long(e: &axum::Error) -> bool {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(tokio_tungstenite::tungstenite::Error::Capacity(_)) = s.downcast_ref() {
            return true;
        }
        source = s.source();
    }
    false
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

/// The events one client asked for (`subscribe {events}`); all of them by default.
#[derive(Clone, Default)]
struct EventFilter(Arc<std::sync::RwLock<Option<Vec<String>>>>);

impl EventFilter {
    fn wants(&self, name: &str) -> bool {
        let names = self.0.read().unwrap_or_else(|p| p.into_inner());
        names.as_ref().is_none_or(|n| n.iter().any(|w| w == name))
    }

    fn set(&self, names: Option<Vec<String>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = names;
    }
}

// Event names, as clients see them.
use peerlog_proto::api::events::NAMES as EVENT_NAMES;

fn event_name(event: &DaemonEvent) -> &'static str {
    use peerlog_proto::api::events::{self, EventParams};
    match event {
        DaemonEvent::Message { message, .. } if message.message.body.as_ref().is_some_and(|b| b.target().is_some()) => {
            events::MessageUpdated::NAME
        }
        DaemonEvent::Message { .. } => events::Message::NAME,
        DaemonEvent::PeerJoined { .. } => events::PeerJoined::NAME,
        DaemonEvent::PeerLeft { .. } => events::PeerLeft::NAME,
        DaemonEvent::SyncProgress { .. } => events::SyncProgress::NAME,
        DaemonEvent::PeerConnection { .. } => events::PeerConnection::NAME,
        DaemonEvent::FileProgress { .. } => events::FileProgress::NAME,
        DaemonEvent::Seen { .. } => events::Seen::NAME,
        DaemonEvent::WriterQuota { .. } => events::WriterQuota::NAME,
        DaemonEvent::Moved { .. } => events::RoomMoved::NAME,
        // For the service (it moves on to the new room); clients hear `room.moved` then.
        DaemonEvent::Rotated { .. } | DaemonEvent::Unlinked { .. } | DaemonEvent::Continued { .. } => "",
    }
}

async fn forward_events(
    service: Arc<Service>,
    mut events: broadcast::Receiver<DaemonEvent>,
    out: Outbox,
    filter: EventFilter,
) {
    loop {
        let event = match events.recv().await {
            Ok(e) if !filter.wants(event_name(&e)) => continue,
            Ok(e) => render_event(&service, e),
            // The client missed events: it should reload what it shows.
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                use peerlog_proto::api::events::{EventParams, Lagged};
                serde_json::to_value(Lagged { missed }).ok().map(|params| Event::new(Lagged::NAME, params))
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(event) = event else { continue };
        if out.send(Out::Text(to_json(&event))).await.is_err() {
            return;
        }
    }
}

fn render_event(service: &Service, event: DaemonEvent) -> Option<Event> {
    use peerlog_proto::api::events::{self, EventParams};
    fn emit<P: EventParams>(params: P) -> Option<Event> {
        Some(Event::new(P::NAME, serde_json::to_value(params).ok()?))
    }
    let room_id = |room: &DiscoveryKey| service.rooms.get(room).map(|r| r.id.clone());
    match event {
        DaemonEvent::Message { room, message } => {
            let room = service.rooms.get(&room)?;
            match message.message.body.as_ref().and_then(crate::log::Body::target) {
                // An edit, deletion or reaction: the message it is about, as it shows now.
                Some(at) => {
                    let target = room.message(&at.feed, at.seq).ok()??;
                    emit(events::MessageUpdated(message_info(&room, &target)?))
                }
                None => emit(message_info(&room, &message)?),
            }
        }
        DaemonEvent::PeerJoined { room, peer, kind } => {
            emit(events::PeerJoined { room: room_id(&room)?, peer: peer.to_string(), connection: kind })
        }
        DaemonEvent::SyncProgress { room, entries_done, entries_total, bytes_done, bytes_total } => {
            emit(events::SyncProgress { room: room_id(&room)?, entries_done, entries_total, bytes_done, bytes_total })
        }
        DaemonEvent::PeerConnection { peer, kind, rooms } => emit(events::PeerConnection {
            peer: peer.to_string(),
            connection: kind,
            rooms: rooms.iter().filter_map(room_id).collect(),
        }),
        DaemonEvent::FileProgress { room, file_id, receiving, bytes_done, bytes_total, done } => {
            emit(events::FileProgress {
                room: room_id(&room)?,
                file_id: hex::encode(file_id),
                direction: if receiving { "receive" } else { "send" }.into(),
                bytes_done,
                bytes_total,
                done,
            })
        }
        DaemonEvent::Seen { room, length } => emit(events::Seen { room: room_id(&room)?, seen_below: length }),
        DaemonEvent::PeerLeft { room, peer } => {
            emit(events::PeerLeft { room: room_id(&room)?, peer: peer.to_string() })
        }
        DaemonEvent::WriterQuota { room, writer, quota } => {
            emit(events::WriterQuota { room: room_id(&room)?, author: hex::encode(writer), quota: quota.to_string() })
        }
        DaemonEvent::Moved { room } => emit(room_info(service, &*service.rooms.get(&room)?)),
        DaemonEvent::Rotated { .. } | DaemonEvent::Unlinked { .. } | DaemonEvent::Continued { .. } => None,
    }
}

/// An API error with a stable code.
struct ApiError {
    code: i32,
    message: String,
}

impl ApiError {
    fn params(message: impl Into<String>) -> Self {
        Self { code: codes::INVALID_PARAMS, message: message.into() }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let code = match &e {
            ServiceError::RoomNotFound(_) => codes::ROOM_NOT_FOUND,
            ServiceError::TooLarge { .. } => codes::TOO_LARGE,
            ServiceError::Invalid(_) => codes::INVALID_PARAMS,
            ServiceError::NotFound(_) => codes::NOT_FOUND,
            ServiceError::LocalFile { .. } => codes::LOCAL_FILE,
            ServiceError::UploadIncomplete(_) => codes::UPLOAD_INCOMPLETE,
            ServiceError::NotAdmin(_) => codes::NOT_ADMIN,
            ServiceError::Unavailable(_) => codes::UNAVAILABLE,
            ServiceError::Key(keys::KeyError::BadInvite | keys::KeyError::BadSeed | keys::KeyError::SeedNotInvite) => {
                codes::BAD_INVITE
            }
            ServiceError::Key(keys::KeyError::EmptyPassphrase) => codes::INVALID_PARAMS,
            ServiceError::Key(_) => codes::INTERNAL,
            ServiceError::Store(crate::log::store::StoreError::Blind) => codes::SEEDER_ONLY,
            ServiceError::Append(e) if matches!(**e, crate::log::store::StoreError::Blind) => codes::SEEDER_ONLY,
            ServiceError::Store(_) | ServiceError::Append(_) => codes::STORAGE,
            ServiceError::Commit(crate::log::commit::CommitError::Shutdown) => codes::SHUTTING_DOWN,
            ServiceError::Commit(_) => codes::STORAGE,
            ServiceError::Shutdown => codes::SHUTTING_DOWN,
        };
        Self { code, message: e.to_string() }
    }
}

/// A streamed `files.send` of this connection: its bytes, and the slot to free when done.
struct Upload {
    /// None when another upload was in progress.
    rx: Option<mpsc::Receiver<bytes::Bytes>>,
    size: u64,
    /// The connection's slot, freed when this upload ends (if it holds it).
    slot: Arc<std::sync::Mutex<Option<mpsc::Sender<bytes::Bytes>>>>,
    holds_slot: bool,
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.holds_slot {
            *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }
}

/// The announced size if `text` is a `files.send` whose bytes follow as binary frames.
fn upload_request(text: &str) -> Option<u64> {
    let v: Value = serde_json::from_str(text).ok()?;
    if v.get("method")?.as_str()? != "files.send" || v["params"].get("path").is_some_and(|p| !p.is_null()) {
        return None;
    }
    v["params"].get("size")?.as_u64()
}

/// A file whose bytes follow a reply as binary frames (`files.get {stream: true}`).
type StreamBack = Option<(Arc<Room>, FileInfo)>;

/// Handles one text frame: a request, a notification or a batch. Returns the reply to send
/// (none for notifications, nor for a batch of them only).
async fn handle_text(
    service: &Arc<Service>,
    filter: &EventFilter,
    upload: Option<Upload>,
    text: &str,
    grant: Grant,
) -> (Option<String>, StreamBack) {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let reply = RpcResponse::err(Value::Null, codes::PARSE_ERROR, format!("invalid JSON: {e}"));
            return (Some(to_json(&reply)), None);
        }
    };
    let Value::Array(batch) = value else {
        let (reply, stream_back) = handle_one(service, filter, upload, value, grant, true).await;
        return (reply.map(|r| to_json(&r)), stream_back);
    };
    if batch.is_empty() || batch.len() > MAX_BATCH {
        let why = format!("a batch holds 1 to {MAX_BATCH} requests, not {}", batch.len());
        return (Some(to_json(&RpcResponse::err(Value::Null, codes::INVALID_REQUEST, why))), None);
    }
    // One after another, in order (a batch is one of the connection's request slots).
    let mut replies = Vec::with_capacity(batch.len());
    for value in batch {
        let (reply, _) = handle_one(service, filter, None, value, grant, false).await;
        replies.extend(reply);
    }
    ((!replies.is_empty()).then(|| to_json(&replies)), None)
}

/// Handles one request (`alone`: not in a batch, so it may stream file bytes either way).
/// Returns its reply, unless it is a notification.
async fn handle_one(
    service: &Arc<Service>,
    filter: &EventFilter,
    upload: Option<Upload>,
    value: Value,
    grant: Grant,
    alone: bool,
) -> (Option<RpcResponse>, StreamBack) {
    let id = value.get("id").cloned().unwrap_or(Value::Null);
    let request: RpcRequest = match serde_json::from_value(value) {
        Ok(r) => r,
        Err(e) => {
            return (Some(RpcResponse::err(id, codes::INVALID_REQUEST, format!("not a request object: {e}"))), None)
        }
    };
    let reply = |result: Result<Value, ApiError>| {
        let id = request.id.clone()?;
        Some(match result {
            Ok(result) => RpcResponse::ok(id, result),
            Err(e) => RpcResponse::err(id, e.code, e.message),
        })
    };
    // Not a valid request: answered even without an id (JSON-RPC 2.0, section 5).
    if request.jsonrpc.as_deref().is_some_and(|v| v != JSONRPC) {
        let e = format!("jsonrpc must be \"{JSONRPC}\"");
        return (Some(RpcResponse::err(id, codes::INVALID_REQUEST, e)), None);
    }
    if !request.id.as_ref().is_none_or(|id| id.is_string() || id.is_number() || id.is_null()) {
        let e = "id must be a string, a number or null";
        return (Some(RpcResponse::err(Value::Null, codes::INVALID_REQUEST, e)), None);
    }
    let streams = request.method == files::SendFile::NAME && upload.is_some()
        || request.method == files::GetFile::NAME
            && request.params.get("stream").and_then(Value::as_bool) == Some(true);
    if streams && !alone {
        let e = ApiError::params(format!("{} with streamed bytes cannot be part of a batch", request.method));
        return (reply(Err(e)), None);
    }
    let mut stream_back = None;
    let result = match request.method.as_str() {
        files::Subscribe::NAME => subscribe(filter, request.params.clone()),
        files::SendFile::NAME => send_file(service, upload, request.params.clone(), grant).await,
        files::GetFile::NAME => get_file(service, request.params.clone(), &mut stream_back, grant).await,
        files::Url::NAME => file_url(service, request.params.clone()),
        RotateToken::NAME => rotate_token(service, request.params.clone(), grant),
        CreateBackup::NAME => create_backup(service, request.params.clone(), grant).await,
        method => methods::call(service, method, request.params.clone()).await,
    };
    let ok = result.is_ok();
    service.metrics.api_request(&request.method, result.as_ref().err().map_or(0, |e| e.code));
    let reply = reply(result);
    // A notification has no reply for the bytes to follow.
    (reply, if ok && request.id.is_some() { stream_back } else { None })
}

/// `backup.create` (the CLI credential only): what cannot be fetched from peers, sealed.
async fn create_backup(service: &Arc<Service>, params: Value, grant: Grant) -> Result<Value, ApiError> {
    let p: peerlog_proto::api::node::BackupParams = parse(params)?;
    if grant != Grant::Local {
        let message = "a backup holds every room secret: it needs the CLI credential (peerlog backup FILE)".into();
        return Err(ApiError { code: codes::LOCAL_ONLY, message });
    }
    let (data_dir, store) = (service.data_dir.clone(), service.store.clone());
    let sealed = tokio::task::spawn_blocking(move || {
        let backup = crate::backup::Backup::collect(&data_dir, &store)?;
        Ok::<_, crate::backup::BackupError>((backup.seal(&p.passphrase)?, backup.rooms.len()))
    })
    .await
    .map_err(|_| ApiError { code: codes::SHUTTING_DOWN, message: "shutting down".into() })?;
    let (bytes, rooms) = sealed.map_err(|e| match e {
        crate::backup::BackupError::WeakPassphrase => ApiError::params(e.to_string()),
        e => ApiError { code: codes::INTERNAL, message: e.to_string() },
    })?;
    to_result(peerlog_proto::api::node::BackupResult { backup: data_encoding::BASE64.encode(&bytes), rooms })
}

/// `token.rotate` (the CLI credential only): a new API token.
fn rotate_token(service: &Service, params: Value, grant: Grant) -> Result<Value, ApiError> {
    parse::<NoParams>(params)?;
    if grant != Grant::Local {
        let message =
            "rotating the API token needs the CLI credential (<data>/cli-token): peerlog token --rotate".into();
        return Err(ApiError { code: codes::LOCAL_ONLY, message });
    }
    service
        .token
        .rotate()
        .map_err(|e| ApiError { code: codes::INTERNAL, message: format!("cannot rotate the API token: {e}") })?;
    tracing::info!("API token rotated: browser sessions and clients using the old one end");
    let path = service.data_dir.join("api-token").display().to_string();
    to_result(peerlog_proto::api::node::TokenRotated { rotated: true, path })
}

/// `files.get`: fetches the file, then saves it to `path`, or (with `stream`) has its bytes
/// follow the reply as binary frames.
async fn get_file(
    service: &Arc<Service>,
    params: Value,
    stream_back: &mut StreamBack,
    grant: Grant,
) -> Result<Value, ApiError> {
    let p: files::GetFileParams = parse(params)?;
    if p.path.is_some() {
        local_only(grant)?;
    }
    let room = service.room(&p.room)?;
    let file = service.file_info(&room, &p.file)?;
    if p.stream && p.path.is_some() {
        return Err(ApiError::params("give path or stream, not both"));
    }
    match &p.path {
        Some(path) => service.save_file(&room, &file, std::path::Path::new(path)).await?,
        None => service.fetch_file(&room, &file).await?,
    }
    let result = files::GetFileResult { file: shared_file(&room, &file), saved_to: p.path.clone(), streamed: p.stream };
    if p.stream {
        if room.content_key().is_none() {
            return Err(ServiceError::Store(crate::log::store::StoreError::Blind).into());
        }
        *stream_back = Some((room, file));
    }
    to_result(result)
}

/// Sends a fetched file's bytes as binary frames (one per chunk, each verified and
/// decrypted first). A chunk that went bad since the fetch ends the stream early (logged).
async fn stream_file(service: &Arc<Service>, room: &Room, file: &FileInfo, out: &Outbox) {
    let Some(content_key) = room.content_key().copied() else { return };
    let (chunks, ids, file_id, out) = (service.chunks.clone(), file.chunks.clone(), file.file_id, out.clone());
    let streamed = tokio::task::spawn_blocking(move || {
        let key = crate::files::FileKey::new(&content_key, &file_id);
        crate::files::read_plain(&chunks, &key, &ids, |plain| out.blocking_send(Out::Binary(plain.into())).is_ok())
    })
    .await;
    if let Ok(Err(e)) = streamed {
        warn!(error = %e, "streaming a file to a client stopped");
    }
}

fn subscribe(filter: &EventFilter, params: Value) -> Result<Value, ApiError> {
    let p: files::SubscribeParams = parse(params)?;
    if let Some(unknown) = p.events.iter().flatten().find(|n| !EVENT_NAMES.contains(&n.as_str())) {
        return Err(ApiError::params(format!("unknown event {unknown:?}; known: {}", EVENT_NAMES.join(", "))));
    }
    filter.set(p.events.clone());
    let events = p.events.unwrap_or_else(|| EVENT_NAMES.iter().map(|n| n.to_string()).collect());
    to_result(files::Subscribed { subscribed: true, events })
}

fn shared_file(room: &Room, file: &FileInfo) -> files::SharedFile {
    files::SharedFile {
        id: hex::encode(file.file_id),
        message: file.message.id(),
        name: file.name.clone(),
        size: file.size,
        mime: file.mime.clone(),
        chunks: file.chunks.len(),
        url: format!("/api/files/{}/{}", room.id, file.message.id()),
    }
}

/// A typed result as the JSON of the reply.
fn to_result(result: impl serde::Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(result).map_err(|e| ApiError { code: codes::INTERNAL, message: e.to_string() })
}

/// `files.send`: from a path on this machine, or from binary frames that follow.
async fn send_file(
    service: &Arc<Service>,
    upload: Option<Upload>,
    params: Value,
    grant: Grant,
) -> Result<Value, ApiError> {
    let p: files::SendFileParams = parse(params)?;
    if p.path.is_some() {
        local_only(grant)?;
    }
    let room = service.room(&p.room)?;
    let (name, source, _upload) = match (p.path, upload) {
        (Some(path), _) => {
            let path = std::path::PathBuf::from(path);
            let name = p
                .name
                .clone()
                .unwrap_or_else(|| path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
            (name, FileSource::Path(path), None)
        }
        (None, Some(mut upload)) => {
            let rx =
                upload.rx.take().ok_or_else(|| ApiError::params("another upload is in progress on this connection"))?;
            let name = p.name.clone().ok_or_else(|| ApiError::params("a streamed file needs a name"))?;
            // `upload` lives until this call ends, whatever happens: then the slot is free.
            (name, FileSource::Stream { size: upload.size, rx }, Some(upload))
        }
        (None, None) => {
            return Err(ApiError::params("give path, or name and size and send the bytes as binary frames"))
        }
    };
    let file = service.send_file(&room, &name, p.mime, source).await?;
    to_result(files::SendFileResult { file: shared_file(&room, &file), message: message_info(&room, &file.message) })
}

/// Paths on the daemon's machine: only with the CLI credential. With the API token (which
/// browsers carry) a leaked token would read and write the user's files.
fn local_only(grant: Grant) -> Result<(), ApiError> {
    match grant {
        Grant::Local => Ok(()),
        Grant::Api => Err(ApiError {
            code: codes::LOCAL_ONLY,
            message: "paths on this machine need the CLI credential (<data>/cli-token); with the API token, stream the bytes instead".into(),
        }),
    }
}

/// `files.url`: a download URL for one file that works without the token, for
/// [`TICKET_LIFETIME`] (the web UI's downloads and previews: URLs end up in browser
/// history, tokens must not).
fn file_url(service: &Arc<Service>, params: Value) -> Result<Value, ApiError> {
    let p: files::FileUrlParams = parse(params)?;
    let room = service.room(&p.room)?;
    let file = service.file_info(&room, &p.file)?;
    let expires = crate::log::store::now_ms() + TICKET_LIFETIME.as_millis() as u64;
    let message = file.message.id();
    let ticket = file_ticket(&service.token.get(), &room.id, &message, p.inline, expires);
    let inline = if p.inline { "&inline=1" } else { "" };
    to_result(files::FileUrl {
        url: format!("/api/files/{}/{message}?ticket={ticket}&expires={expires}{inline}", room.id),
        expires_ms: expires,
    })
}

/// How long a `files.url` URL works.
const TICKET_LIFETIME: std::time::Duration = std::time::Duration::from_secs(300);

/// `HMAC-SHA256(api token, "peerlog/file-ticket/v1" | room | message | inline | expires)`:
/// stateless, bound to one file and one disposition, void when the token changes.
fn file_ticket(token: &str, room: &str, message: &str, inline: bool, expires_ms: u64) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes any key length");
    for part in [b"peerlog/file-ticket/v1".as_slice(), room.as_bytes(), message.as_bytes()] {
        mac.update(&(part.len() as u32).to_be_bytes());
        mac.update(part);
    }
    mac.update(&[u8::from(inline)]);
    mac.update(&expires_ms.to_be_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[derive(Deserialize)]
struct DownloadQuery {
    ticket: Option<String>,
    expires: Option<u64>,
    inline: Option<u8>,
}

/// Media types a browser may show inline (never HTML, SVG or scripts).
const INLINE_TYPES: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp"];

/// `GET /api/files/{room}/{message id}`: fetches the file if needed and streams it,
/// decrypted chunk by chunk (verified before it is sent).
async fn download(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path((room, file)): axum::extract::Path<(String, String)>,
    axum::extract::Query(query): axum::extract::Query<DownloadQuery>,
) -> Response {
    // A ticket from `files.url`, or the token in a header; never the token in the URL.
    let ticketed = match (&query.ticket, query.expires) {
        (Some(ticket), Some(expires)) => {
            let expected = file_ticket(&state.service.token.get(), &room, &file, query.inline == Some(1), expires);
            if expires < crate::log::store::now_ms() || !constant_time_eq(ticket.as_bytes(), expected.as_bytes()) {
                return (
                    StatusCode::UNAUTHORIZED,
                    "unauthorized: this download link expired or is not valid; ask for a new one (files.url)\n",
                )
                    .into_response();
            }
            true
        }
        _ => false,
    };
    if !ticketed {
        if let Err(refused) = authorize(&state, &headers, None) {
            return refused.into_response();
        }
    }
    let service = state.service.clone();
    let found = service.room(&room).and_then(|room| {
        let file = service.file_info(&room, &file)?;
        Ok((room, file))
    });
    let (room, file) = match found {
        Ok(x) => x,
        Err(e) => return (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
    };
    if let Err(e) = service.fetch_file(&room, &file).await {
        return (StatusCode::BAD_GATEWAY, format!("{e}\n")).into_response();
    }
    let Some(content_key) = room.content_key().copied() else {
        return (StatusCode::FORBIDDEN, "a blind seeder cannot read files\n").into_response();
    };
    let (tx, rx) = mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(2);
    let chunks = service.chunks.clone();
    let (ids, file_id) = (file.chunks.clone(), file.file_id);
    tokio::task::spawn_blocking(move || {
        let key = crate::files::FileKey::new(&content_key, &file_id);
        let sent = crate::files::read_plain(&chunks, &key, &ids, |plain| tx.blocking_send(Ok(plain.into())).is_ok());
        if let Err(e) = sent {
            // The body ends with an error: the client sees a broken download, not a short file.
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let inline = query.inline == Some(1) && INLINE_TYPES.contains(&file.mime.as_str());
    let mime = if inline { file.mime.clone() } else { "application/octet-stream".to_string() };
    let encoded: String = file
        .name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let disposition = format!("{}; filename*=UTF-8''{encoded}", if inline { "inline" } else { "attachment" });
    let mut response = axum::body::Body::from_stream(stream).into_response();
    let h = response.headers_mut();
    let values = [
        (header::CONTENT_TYPE, mime),
        (header::CONTENT_LENGTH, file.size.to_string()),
        (header::CONTENT_DISPOSITION, disposition),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
        (header::CONTENT_SECURITY_POLICY, "sandbox; default-src 'none'".into()),
        (header::CACHE_CONTROL, "private, no-store".into()),
    ];
    for (name, value) in values {
        if let Ok(v) = header::HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::file_ticket;

    #[test]
    fn a_file_ticket_is_bound_to_its_file_disposition_expiry_and_token() {
        let t = file_ticket("token", "room", "msg-1", false, 1000);
        assert_eq!(t, file_ticket("token", "room", "msg-1", false, 1000));
        for other in [
            file_ticket("other", "room", "msg-1", false, 1000),
            file_ticket("token", "room2", "msg-1", false, 1000),
            file_ticket("token", "room", "msg-2", false, 1000),
            file_ticket("token", "room", "msg-1", true, 1000),
            file_ticket("token", "room", "msg-1", false, 1001),
            // Length-prefixed parts: moving a byte between fields changes the ticket.
            file_ticket("token", "roomm", "sg-1", false, 1000),
        ] {
            assert_ne!(t, other);
        }
    }
}

/// Entry points for the fuzz targets in `fuzz/` (not part of the API).
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Methods left out of fuzzing because they take seconds by design: Argon2 joins,
    /// connectivity checks, file transfers that wait for peers or bytes.
    const SLOW: &[&str] = &["rooms.join", "node.doctor", "files.get", "files.send", "files.url"];

    /// A real daemon (private network, loopback, a fresh temporary data dir) whose API
    /// dispatch answers requests as a browser's credential would.
    pub struct Harness {
        rt: tokio::runtime::Runtime,
        daemon: crate::Daemon,
        filter: EventFilter,
    }

    impl Harness {
        /// Starts the daemon.
        pub fn start() -> anyhow::Result<Self> {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            let dir = std::env::temp_dir().join(format!("peerlog-fuzz-api-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let config = crate::config::Config {
                data_dir: Some(dir),
                api_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
                mdns: false,
                network: Network::Private,
                ..crate::config::Config::default()
            };
            let daemon = rt.block_on(crate::Daemon::start(config))?;
            Ok(Self { rt, daemon, filter: EventFilter::default() })
        }

        /// The reply to one WebSocket text frame (none for a notification, or a batch of
        /// notifications only).
        pub fn request(&self, text: &str) -> Option<String> {
            // A slow method anywhere (a batch included) is not run.
            let slow = serde_json::from_str::<Value>(text).ok().is_some_and(|v| {
                let one = |r: &Value| r["method"].as_str().is_some_and(|m| SLOW.contains(&m));
                one(&v) || v.as_array().is_some_and(|batch| batch.iter().any(one))
            });
            if slow {
                return Some(to_json(&RpcResponse::err(Value::Null, codes::INTERNAL, "not fuzzed")));
            }
            let service = self.daemon.service().clone();
            self.rt.block_on(handle_text(&service, &self.filter, None, text, Grant::Api)).0
        }
    }
}
