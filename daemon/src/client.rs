//! A client of the local WebSocket API, used by the CLI (`peerlog send`, `tail`, …) and
//! by the integration tests: everything goes through the same API a browser uses.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use peerlog_proto::api::events::EventParams;
use peerlog_proto::api::{Event, Response};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting or talking WebSocket failed.
    #[error("WebSocket: {0}")]
    Ws(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    /// The daemon answered with an error.
    #[error("{message}")]
    Rpc {
        /// Stable error code.
        code: i32,
        /// Text.
        message: String,
    },
    /// The daemon sent something that is not API JSON.
    #[error("unexpected frame from daemon: {0}")]
    Unexpected(String),
    /// The connection closed.
    #[error("connection closed by the daemon")]
    Closed,
    /// The daemon closed the connection with a WebSocket close code and reason.
    #[error("connection closed by the daemon: {code} {reason}")]
    ClosedWith {
        /// The close code (1009: a message over the size limit).
        code: u16,
        /// Why.
        reason: String,
    },
    /// No answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

/// A connected API client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Events received while waiting for a response.
    events: VecDeque<Event>,
    /// Binary frames received while waiting for a response (a streamed file).
    binary: VecDeque<Vec<u8>>,
}

enum Incoming {
    Response(Response),
    Batch(Vec<Response>),
    Event(Event),
}

impl Client {
    /// Connects to the daemon's API at `addr` with `token`.
    pub async fn connect(addr: SocketAddr, token: &str) -> Result<Self, ClientError> {
        let mut request = format!("ws://{addr}/api/ws").into_client_request().map_err(Box::new)?;
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Unexpected("token is not header-safe".into()))?;
        request.headers_mut().insert("authorization", value);
        // disable_nagle: request/reply traffic must not wait for delayed ACKs.
        let (ws, _) = tokio_tungstenite::connect_async_with_config(request, None, true).await.map_err(Box::new)?;
        Ok(Self { ws, next_id: 1, events: VecDeque::new(), binary: VecDeque::new() })
    }

    async fn read(&mut self) -> Result<Incoming, ClientError> {
        loop {
            let msg = self.ws.next().await.ok_or(ClientError::Closed)?.map_err(Box::new)?;
            let text = match msg {
                Message::Text(t) => t,
                Message::Binary(b) => {
                    self.binary.push_back(b.to_vec());
                    continue;
                }
                Message::Close(Some(frame)) => {
                    return Err(ClientError::ClosedWith { code: frame.code.into(), reason: frame.reason.to_string() })
                }
                Message::Close(None) => return Err(ClientError::Closed),
                _ => continue,
            };
            let value: Value = serde_json::from_str(&text).map_err(|_| ClientError::Unexpected(text.to_string()))?;
            if is_event(&value) {
                let event = serde_json::from_value(value).map_err(|_| ClientError::Unexpected(text.to_string()))?;
                return Ok(Incoming::Event(event));
            }
            if value.is_array() {
                let batch = serde_json::from_value(value).map_err(|_| ClientError::Unexpected(text.to_string()))?;
                return Ok(Incoming::Batch(batch));
            }
            let response = serde_json::from_value(value).map_err(|_| ClientError::Unexpected(text.to_string()))?;
            return Ok(Incoming::Response(response));
        }
    }

    /// Reads binary frames (queueing events) until `size` bytes arrived: what a
    /// `files.get {stream: true}` sends after its reply.
    pub async fn read_binary(&mut self, size: u64) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::with_capacity(size.min(1 << 30) as usize);
        while (out.len() as u64) < size {
            if let Some(b) = self.binary.pop_front() {
                out.extend_from_slice(&b);
                continue;
            }
            let msg = self.ws.next().await.ok_or(ClientError::Closed)?.map_err(Box::new)?;
            match msg {
                Message::Binary(b) => out.extend_from_slice(&b),
                Message::Text(t) => {
                    let value: Value = serde_json::from_str(&t).map_err(|_| ClientError::Unexpected(t.to_string()))?;
                    if is_event(&value) {
                        if let Ok(event) = serde_json::from_value(value) {
                            self.events.push_back(event);
                        }
                    }
                }
                Message::Close(_) => return Err(ClientError::Closed),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Closes the connection with a WebSocket close handshake.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.ws.close(None).await.map_err(Box::new)?;
        // Read until the daemon's close frame (or the end), so the handshake completes.
        while let Some(Ok(_)) = self.ws.next().await {}
        Ok(())
    }

    /// Sends a raw text frame (for tests of malformed input).
    pub async fn send_raw(&mut self, text: &str) -> Result<(), ClientError> {
        self.ws.send(Message::Text(text.into())).await.map_err(Box::new)?;
        Ok(())
    }

    /// Reads the next response (queueing events).
    pub async fn next_response(&mut self) -> Result<Response, ClientError> {
        loop {
            match self.read().await? {
                Incoming::Response(r) => return Ok(r),
                Incoming::Batch(b) => return Err(ClientError::Unexpected(format!("a batch reply of {}", b.len()))),
                Incoming::Event(e) => self.events.push_back(e),
            }
        }
    }

    /// Reads the next reply to a batch (queueing events); see [`Client::send_raw`].
    pub async fn next_batch(&mut self) -> Result<Vec<Response>, ClientError> {
        loop {
            match self.read().await? {
                Incoming::Batch(b) => return Ok(b),
                Incoming::Response(r) => return Err(ClientError::Unexpected(format!("a single reply: {r:?}"))),
                Incoming::Event(e) => self.events.push_back(e),
            }
        }
    }

    /// Calls a typed method (see [`peerlog_proto::api::Method`]): its params and result as
    /// the structs the daemon itself uses.
    pub async fn request<M: peerlog_proto::api::Method>(
        &mut self,
        params: &M::Params,
    ) -> Result<M::Result, ClientError> {
        self.request_with_upload::<M>(params, &[], 1).await
    }

    /// Calls a typed method whose request is followed by `data` as binary frames of at most
    /// `frame` bytes (`files.send` with streamed bytes).
    pub async fn request_with_upload<M: peerlog_proto::api::Method>(
        &mut self,
        params: &M::Params,
        data: &[u8],
        frame: usize,
    ) -> Result<M::Result, ClientError> {
        let params = serde_json::to_value(params).map_err(|e| ClientError::Unexpected(e.to_string()))?;
        let result = self.call_with_upload(M::NAME, params, data, frame).await?;
        serde_json::from_value(result).map_err(|e| ClientError::Unexpected(format!("{} result: {e}", M::NAME)))
    }

    /// Calls a method and returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        self.call_with_upload(method, params, &[], 1).await
    }

    /// Calls a method whose request is followed by `data` as binary frames of at most
    /// `frame` bytes (`files.send` with streamed bytes), and returns its result.
    pub async fn call_with_upload(
        &mut self,
        method: &str,
        params: Value,
        data: &[u8],
        frame: usize,
    ) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let request = peerlog_proto::api::Request::new(id, method, params);
        let request = serde_json::to_value(&request).map_err(|e| ClientError::Unexpected(e.to_string()))?;
        self.ws.send(Message::Text(request.to_string().into())).await.map_err(Box::new)?;
        for part in data.chunks(frame.max(1)) {
            self.ws.send(Message::Binary(part.to_vec().into())).await.map_err(Box::new)?;
        }
        loop {
            let response = self.next_response().await?;
            if response.id != json!(id) {
                continue;
            }
            if let Some(e) = response.error {
                return Err(ClientError::Rpc { code: e.code, message: e.message });
            }
            return Ok(response.result.unwrap_or(Value::Null));
        }
    }

    /// The next pushed event.
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(e);
        }
        loop {
            if let Incoming::Event(e) = self.read().await? {
                return Ok(e);
            }
        }
    }

    /// Waits up to `timeout` for an event matching `pred`; `what` names it in the error.
    pub async fn wait_event(
        &mut self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Result<Event, ClientError> {
        tokio::time::timeout(timeout, async {
            loop {
                let e = self.next_event().await?;
                if pred(&e) {
                    return Ok(e);
                }
            }
        })
        .await
        .map_err(|_| ClientError::Timeout(what.to_string()))?
    }

    /// Waits up to `timeout` for an event of kind `E` whose typed params match `pred`
    /// (other events are passed over); an `E` that does not decode is an error.
    pub async fn wait_for<E: EventParams + DeserializeOwned>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&E) -> bool,
    ) -> Result<E, ClientError> {
        tokio::time::timeout(timeout, async {
            loop {
                let e = self.next_event().await?;
                let Some(decoded) = e.decode::<E>() else { continue };
                let params = decoded.map_err(|err| ClientError::Unexpected(format!("{} event: {err}", E::NAME)))?;
                if pred(&params) {
                    return Ok(params);
                }
            }
        })
        .await
        .map_err(|_| ClientError::Timeout(what.to_string()))?
    }
}

/// Whether a frame from the daemon is an event: a notification (a method, no id).
fn is_event(value: &Value) -> bool {
    value.get("method").is_some() && value.get("id").is_none()
}
