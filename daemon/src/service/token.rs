//! The API token (`<data>/api-token`): what the web UI and scripts authenticate with, and
//! what a browser session cookie is derived from. Rotating it (`peerlog token --rotate`)
//! revokes every session made with the old one: cookies, download tickets and open
//! WebSockets.

use std::path::PathBuf;
use std::sync::RwLock;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::watch;

use crate::keys::{write_file_with_mode, KeyError};

/// The API token, rotatable while the daemon runs.
pub struct ApiToken {
    value: RwLock<String>,
    path: PathBuf,
    /// 0600, or 0640 when the data dir's group may read it (`share_api_token`).
    mode: u32,
    /// Bumped at every rotation: open connections made with the old token end.
    generation: watch::Sender<u64>,
}

impl ApiToken {
    /// The token loaded from (or written to) `path`, with that file's `mode`.
    pub fn new(value: String, path: PathBuf, mode: u32) -> Self {
        Self { value: RwLock::new(value), path, mode, generation: watch::channel(0).0 }
    }

    /// The current token.
    pub fn get(&self) -> String {
        self.value.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The value of the browser session cookie for the current token:
    /// `HMAC-SHA256(token, "peerlog/session/v1")`, hex. The cookie is not the token itself
    /// (it cannot be replayed as a bearer token), and a rotation invalidates it.
    pub fn session_cookie(&self) -> String {
        let token = self.get();
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(token.as_bytes()).expect("HMAC takes any key length");
        mac.update(b"peerlog/session/v1");
        hex::encode(mac.finalize().into_bytes())
    }

    /// Replaces the token by a fresh one, written (0600) before it takes effect.
    pub fn rotate(&self) -> Result<(), KeyError> {
        let token = hex::encode(rand::random::<[u8; 32]>());
        write_file_with_mode(&self.path, token.as_bytes(), self.mode)?;
        *self.value.write().unwrap_or_else(|p| p.into_inner()) = token;
        self.generation.send_modify(|g| *g += 1);
        Ok(())
    }

    /// Changes at every rotation.
    pub fn rotations(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}
