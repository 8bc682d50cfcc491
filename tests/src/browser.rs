//! A headless Chromium driven over the Chrome DevTools Protocol (CDP) on a WebSocket:
//! Debian's `/usr/bin/chromium` (or `$PEERLOG_CHROMIUM`), never a browser a tool downloads.
//! Just what the browser tests need: pages, script evaluation, waiting on a condition in
//! the page, file inputs, downloads and screenshots.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The Chromium binary to use, if installed.
pub fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PEERLOG_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromium".into());
    path.is_file().then_some(path)
}

/// A running headless Chromium.
pub struct Browser {
    child: tokio::process::Child,
    ws: Ws,
    next_id: u64,
    _profile: tempfile::TempDir,
}

/// One tab, attached with its own CDP session.
#[derive(Clone, Debug)]
pub struct Page {
    session: String,
}

impl Browser {
    /// Starts Chromium headless with a fresh profile and connects to it.
    pub async fn launch() -> Result<Self> {
        let exe = chromium().context("Chromium is not installed (apt-get install chromium)")?;
        let profile = tempfile::tempdir()?;
        let mut child = tokio::process::Command::new(&exe)
            .args([
                "--headless=new",
                "--no-sandbox", // tests run as root in CI
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-port=0",
                "--window-size=1280,800",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let stderr = child.stderr.take().context("chromium stderr")?;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(i) = line.find("ws://") {
                    return Ok(line[i..].trim().to_string());
                }
            }
            bail!("chromium exited without a DevTools address")
        })
        .await
        .map_err(|_| anyhow!("chromium did not print its DevTools address within 30 s"))??;
        // Keep draining stderr so that Chromium never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.context("connecting to DevTools")?;
        Ok(Self { child, ws, next_id: 1, _profile: profile })
    }

    /// Sends a CDP command (to a page's session, or to the browser) and returns its result.
    pub async fn cmd(&mut self, page: Option<&Page>, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(p) = page {
            msg["sessionId"] = json!(p.session);
        }
        self.ws.send(Message::Text(msg.to_string().into())).await?;
        let reply = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(m) = self.ws.next().await {
                let Message::Text(t) = m? else { continue };
                let v: Value = serde_json::from_str(&t)?;
                if v["id"] == json!(id) {
                    return Ok(v);
                }
            }
            bail!("DevTools connection closed")
        })
        .await
        .map_err(|_| anyhow!("no answer to {method} within 60 s"))??;
        if let Some(e) = reply.get("error") {
            bail!("{method}: {e}");
        }
        Ok(reply["result"].clone())
    }

    /// Opens a tab at `url`.
    pub async fn open(&mut self, url: &str) -> Result<Page> {
        let target = self.cmd(None, "Target.createTarget", json!({"url": "about:blank"})).await?;
        let target_id = target["targetId"].as_str().context("targetId")?.to_string();
        let attached = self.cmd(None, "Target.attachToTarget", json!({"targetId": target_id, "flatten": true})).await?;
        let page = Page { session: attached["sessionId"].as_str().context("sessionId")?.to_string() };
        self.cmd(Some(&page), "Page.enable", json!({})).await?;
        self.cmd(Some(&page), "Runtime.enable", json!({})).await?;
        self.cmd(Some(&page), "Page.navigate", json!({"url": url})).await?;
        Ok(page)
    }

    /// Evaluates `js` in the page (awaiting a promise) and returns its value.
    pub async fn eval(&mut self, page: &Page, js: &str) -> Result<Value> {
        let r = self
            .cmd(Some(page), "Runtime.evaluate", json!({"expression": js, "awaitPromise": true, "returnByValue": true}))
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("script failed: {}", e["exception"]["description"].as_str().unwrap_or(&e.to_string()));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Waits until `js` is truthy in the page, checking every 100 ms; fails after `limit`
    /// naming `what` and the page's last status line.
    pub async fn wait_for(&mut self, page: &Page, js: &str, what: &str, limit: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // A page that is navigating may not answer yet: that is not an error here.
            if let Ok(v) = self.eval(page, js).await {
                if v.as_bool() == Some(true)
                    || (v.is_string() && v != json!(""))
                    || v.as_f64().is_some_and(|n| n != 0.0)
                {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let toast =
                    self.eval(page, "document.getElementById('toast')?.textContent || ''").await.unwrap_or_default();
                bail!("timed out after {limit:?} waiting for {what} (last toast: {toast})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Puts a file into an `<input type=file>` (as if picked) and fires its change event.
    pub async fn set_file(&mut self, page: &Page, selector: &str, path: &Path) -> Result<()> {
        let r = self
            .cmd(
                Some(page),
                "Runtime.evaluate",
                json!({"expression": format!("document.querySelector({})", json!(selector))}),
            )
            .await?;
        let object_id = r["result"]["objectId"].as_str().with_context(|| format!("no element {selector}"))?.to_string();
        self.cmd(Some(page), "DOM.setFileInputFiles", json!({"files": [path], "objectId": object_id})).await?;
        Ok(())
    }

    /// Lets downloads go to `dir`.
    pub async fn allow_downloads(&mut self, dir: &Path) -> Result<()> {
        self.cmd(None, "Browser.setDownloadBehavior", json!({"behavior": "allow", "downloadPath": dir})).await?;
        Ok(())
    }

    /// Sets the page's viewport (e.g. a phone's width).
    pub async fn viewport(&mut self, page: &Page, width: u32, height: u32, mobile: bool) -> Result<()> {
        self.cmd(
            Some(page),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await?;
        Ok(())
    }

    /// Presses a key as a person does (a trusted event): `Escape`, `Tab`, `Enter`.
    pub async fn press(&mut self, page: &Page, key: &str) -> Result<()> {
        let code = match key {
            "Escape" => 27,
            "Tab" => 9,
            "Enter" => 13,
            other => anyhow::bail!("no key code known for {other}"),
        };
        for kind in ["rawKeyDown", "keyUp"] {
            self.cmd(
                Some(page),
                "Input.dispatchKeyEvent",
                json!({"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code}),
            )
            .await?;
        }
        Ok(())
    }

    /// Emulates the light or dark colour scheme (`prefers-color-scheme`).
    pub async fn color_scheme(&mut self, page: &Page, scheme: &str) -> Result<()> {
        self.cmd(
            Some(page),
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]}),
        )
        .await?;
        Ok(())
    }

    /// Saves a PNG screenshot of the page.
    pub async fn screenshot(&mut self, page: &Page, path: &Path) -> Result<()> {
        let r = self.cmd(Some(page), "Page.captureScreenshot", json!({"format": "png"})).await?;
        let data = base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().context("screenshot data")?)?;
        std::fs::write(path, data)?;
        Ok(())
    }

    /// Stops Chromium.
    pub async fn close(mut self) {
        let _ = self.cmd(None, "Browser.close", json!({})).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}
