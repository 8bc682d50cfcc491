//! The web UI in a real browser: Debian's Chromium, headless, driven over CDP
//! (`peerlog_tests::browser`). Two daemons, two pages, the way people use it: a display
//! name, a room joined by passphrase, messages both ways, a nickname, a file sent from the
//! picker and downloaded on the other side, and a message that tries to inject a script.
//! Screenshots of the main screens go to `$PEERLOG_SCREENSHOTS` (the README's come from
//! `PEERLOG_SCREENSHOTS=docs/screenshots`), else to a temporary directory.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use peerlog::client::Client;
use peerlog_proto::api::messages;
use peerlog_tests::browser::{chromium, Browser, Page};
use peerlog_tests::*;
use serde_json::json;

const PASSPHRASE: &str = "correct horse battery staple in the browser";
const UI_WAIT: Duration = Duration::from_secs(30);

fn ui_url(d: &TestDaemon) -> Result<String> {
    let daemon = d.daemon.as_ref().context("daemon running")?;
    Ok(format!("http://{}/#token={}", daemon.api_addr(), daemon.token()))
}

/// Whether Chromium is missing (said loudly; in CI an error: it must be installed there).
fn skip_without_chromium() -> Result<bool> {
    if chromium().is_some() {
        return Ok(false);
    }
    ensure!(std::env::var_os("CI").is_none(), "CI must install chromium for the browser tests");
    eprintln!("SKIPPED: Chromium is not installed (apt-get install chromium); the browser tests did not run");
    Ok(true)
}

/// Sets an input's value as typing would, firing `input`.
fn fill(selector: &str, value: &str) -> String {
    format!(
        "(() => {{ const e = document.querySelector({s}); e.value = {v}; e.dispatchEvent(new Event('input', {{bubbles: true}})); return true; }})()",
        s = json!(selector),
        v = json!(value)
    )
}

fn submit(selector: &str) -> String {
    format!("(document.querySelector({}).requestSubmit(), true)", json!(selector))
}

fn click(selector: &str) -> String {
    format!("(document.querySelector({}).click(), true)", json!(selector))
}

/// Hides the toast, so that screenshots show the screen, not the last notice.
const NO_TOAST: &str = "(document.getElementById('toast').hidden = true, true)";

/// Whether some `.bubble` in the page shows exactly `text`.
fn bubble_with(text: &str) -> String {
    format!("[...document.querySelectorAll('.bubble')].some((b) => b.textContent === {})", json!(text))
}

async fn set_name_and_join(b: &mut Browser, page: &Page, name: &str) -> Result<()> {
    set_name(b, page, name).await?;
    b.eval(page, &fill("#join-secret", PASSPHRASE)).await?;
    b.wait_for(
        page,
        "document.getElementById('join-strength').textContent.includes('bits')",
        "a strength estimate",
        UI_WAIT,
    )
    .await?;
    b.eval(page, &submit("#join-form")).await?;
    b.wait_for(page, "!document.getElementById('composer').hidden", "the room to open after joining", UI_WAIT).await
}

async fn set_name(b: &mut Browser, page: &Page, name: &str) -> Result<()> {
    b.wait_for(page, "document.getElementById('conn-dot').classList.contains('ok')", "the UI to connect", UI_WAIT)
        .await?;
    b.wait_for(page, "!document.getElementById('profile-form').hidden", "the welcome's name form", UI_WAIT).await?;
    b.eval(page, &fill("#profile-name", name)).await?;
    b.eval(page, &submit("#profile-form")).await?;
    b.wait_for(
        page,
        &format!("document.getElementById('node-badge').textContent.includes({})", json!(name)),
        "the display name in the node badge",
        UI_WAIT,
    )
    .await
}

async fn send_text(b: &mut Browser, page: &Page, text: &str) -> Result<()> {
    b.eval(page, &fill("#composer-text", text)).await?;
    b.eval(page, &submit("#composer")).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_rename_and_share_a_file_in_chromium() -> Result<()> {
    if skip_without_chromium()? {
        return Ok(());
    }
    let shots: PathBuf = std::env::var_os("PEERLOG_SCREENSHOTS")
        .map(|p| {
            let p = PathBuf::from(p);
            // Relative to the workspace root (tests run in tests/).
            if p.is_absolute() {
                p
            } else {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
            }
        })
        .unwrap_or_else(|| std::env::temp_dir().join("peerlog-screenshots"));
    std::fs::create_dir_all(&shots)?;

    // Ada's daemon keeps its API port across a restart, as a system service does: her page
    // must reconnect by itself.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let boot = TestDaemon::start_bootstrap_node().await?;
    let boot_addr = boot.p2p_addr().await?;
    let mut a = TestDaemon::start_with(|c| {
        c.api_listen = ([127, 0, 0, 1], port).into();
        c.bootstrap = vec![boot_addr];
    })
    .await?;
    let bd = TestDaemon::start_bootstrapped(&boot).await?;
    let mut br = Browser::launch().await?;
    let pa = br.open(&ui_url(&a)?).await?;
    let pb = br.open(&ui_url(&bd)?).await?;

    // First run: the welcome explains rooms and asks for a name.
    br.wait_for(&pa, "!document.getElementById('profile-form').hidden", "the welcome", UI_WAIT).await?;
    br.eval(&pa, NO_TOAST).await?;
    br.screenshot(&pa, &shots.join("welcome.png")).await?;
    set_name_and_join(&mut br, &pa, "Ada").await?;
    set_name_and_join(&mut br, &pb, "Bob").await?;
    for (p, who) in [(&pa, "a"), (&pb, "b")] {
        br.wait_for(
            p,
            "document.getElementById('room-meta').textContent.startsWith('1 peer')",
            &format!("{who}'s page to show its peer online"),
            UI_WAIT,
        )
        .await?;
    }

    // Messages both ways, each under its author's display name.
    send_text(&mut br, &pa, "Hello Bob, this is Ada.").await?;
    br.wait_for(&pb, &bubble_with("Hello Bob, this is Ada."), "Ada's message on Bob's page", UI_WAIT).await?;
    br.wait_for(
        &pb,
        "[...document.querySelectorAll('.msg:not(.mine) .author')].some((a) => a.textContent === 'Ada')",
        "Ada's display name on her message",
        UI_WAIT,
    )
    .await?;
    br.wait_for(
        &pa,
        "[...document.querySelectorAll('.msg.mine .meta')].some((m) => m.textContent.endsWith('seen'))",
        "Ada's message marked seen once Bob holds it",
        UI_WAIT,
    )
    .await?;
    let evil = "<script>window.pwned = 1</script><img src=x onerror=\"window.pwned = 2\"><b>bold?</b>";
    send_text(&mut br, &pb, evil).await?;
    br.wait_for(&pa, &bubble_with(evil), "Bob's <script> message, as text, on Ada's page", UI_WAIT).await?;
    let injected = br
        .eval(&pa, "window.pwned !== undefined || document.querySelectorAll('.bubble script, .bubble img, .bubble b').length > 0")
        .await?;
    ensure!(injected == json!(false), "a message injected markup or ran script");

    // Bob gives Ada a nickname; his page shows it instead of her name.
    br.eval(&pb, &click("#peers-button")).await?;
    br.wait_for(
        &pb,
        "document.querySelectorAll('#member-list .member .rename').length > 0",
        "Ada in Bob's people list",
        UI_WAIT,
    )
    .await?;
    let safety = br.eval(&pb, "document.querySelector('#member-list .member .safety').textContent").await?;
    let safety = safety.as_str().context("a safety number")?.to_string();
    ensure!(safety.len() == 71, "a safety number of 60 digits in groups of five: {safety}");
    // Ada's side shows the same number for the pair.
    let mut ca = a.client().await?;
    let room = rooms_list(&mut ca).await?.into_iter().next().context("Ada's room")?.id;
    let members = members(&mut ca, &room).await?;
    let ada_sees = members.iter().find(|m| !m.mine);
    ensure!(
        ada_sees.is_some_and(|m| m.safety_number.as_ref() == Some(&safety)),
        "Ada and Bob see different safety numbers: {safety} and {members:?}"
    );
    drop(ca);
    br.eval(&pb, &click("#member-list .member .show-qr")).await?;
    br.wait_for(
        &pb,
        "(() => { const q = document.querySelector('#member-list .safety-qr'); return !!q && !q.hidden && q.src.startsWith('data:image/svg+xml'); })()",
        "the safety number's QR code",
        UI_WAIT,
    )
    .await?;
    br.wait_for(
        &pb,
        "[...document.querySelectorAll('#member-list .member')].some((m) => m.textContent.includes('online · direct'))",
        "Ada shown online, directly connected",
        UI_WAIT,
    )
    .await?;
    br.eval(&pb, &click("#member-list .member .rename")).await?;
    br.eval(&pb, &fill("#member-list .member .nick-input", "Ada (work)")).await?;
    br.eval(&pb, &submit("#member-list .member .nick-form")).await?;
    br.wait_for(
        &pb,
        "[...document.querySelectorAll('.msg:not(.mine) .author')].some((a) => a.textContent === 'Ada (work)')",
        "the nickname on Ada's messages",
        UI_WAIT,
    )
    .await?;
    br.eval(&pb, &click("#member-list .member .verify")).await?;
    br.wait_for(&pb, "!!document.querySelector('#member-list .verified')", "the verified mark", UI_WAIT).await?;
    br.eval(&pb, NO_TOAST).await?;
    br.screenshot(&pb, &shots.join("people.png")).await?;
    br.eval(&pb, &click("#peers-button")).await?;

    // Ada sends a file from the picker; Bob downloads it; the bytes are the same.
    let data: Vec<u8> = (0..3_500_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let src = a.data_dir().join("holiday-notes.bin");
    std::fs::write(&src, &data)?;
    br.set_file(&pa, "#file-input", &src).await?;
    br.wait_for(
        &pb,
        "[...document.querySelectorAll('.file-card .f-name')].some((n) => n.textContent === 'holiday-notes.bin')",
        "the file on Bob's page",
        UI_WAIT,
    )
    .await?;
    let downloads = tempfile::tempdir()?;
    br.allow_downloads(downloads.path()).await?;
    br.eval(&pb, &click(".file-card a.download")).await?;
    let got = downloads.path().join("holiday-notes.bin");
    within(UI_WAIT, "the download to finish", async {
        while std::fs::metadata(&got).map(|m| m.len()).unwrap_or(0) < data.len() as u64 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await?;
    ensure!(std::fs::read(&got)? == data, "the downloaded file differs from the one sent");

    // An image shows as a thumbnail on the other side.
    let png = a.data_dir().join("gradient.png");
    std::fs::write(&png, include_bytes!("gradient.png"))?;
    br.set_file(&pa, "#file-input", &png).await?;
    br.wait_for(
        &pb,
        "[...document.querySelectorAll('.file-card img')].some((i) => i.complete && i.naturalWidth === 24)",
        "the image's thumbnail on Bob's page",
        UI_WAIT,
    )
    .await?;
    br.eval(&pa, NO_TOAST).await?;
    br.screenshot(&pa, &shots.join("conversation.png")).await?;

    // The invite with its QR code, the node page, and a phone-width window.
    br.eval(&pa, &click("#invite-button")).await?;
    br.wait_for(&pa, "document.getElementById('invite-qr').naturalWidth > 0", "the invite's QR code", UI_WAIT).await?;
    let link = br.eval(&pa, "document.getElementById('invite-link').value").await?;
    ensure!(link.as_str().is_some_and(|l| l.contains("/#join=peerlog:")), "invite link: {link}");
    br.eval(&pa, NO_TOAST).await?;
    br.screenshot(&pa, &shots.join("invite.png")).await?;
    br.eval(&pa, &click("#node-badge")).await?;
    br.wait_for(
        &pa,
        "document.getElementById('node-details').textContent.includes('PeerId')",
        "the node page",
        UI_WAIT,
    )
    .await?;
    br.eval(&pa, NO_TOAST).await?;
    br.screenshot(&pa, &shots.join("node.png")).await?;
    br.eval(&pa, &click("#node-close")).await?;
    br.viewport(&pb, 390, 780, true).await?;
    br.wait_for(&pb, "getComputedStyle(document.getElementById('show-rooms')).display !== 'none' && document.getElementById('sidebar').getBoundingClientRect().right <= 1", "the phone layout with the room list tucked away", UI_WAIT)
        .await?;
    br.eval(&pb, NO_TOAST).await?;
    br.screenshot(&pb, &shots.join("phone.png")).await?;

    // The daemon stops: the page says so plainly, sends nothing (the draft stays), and
    // offers to reconnect; it restarts, and "Reconnect now" brings the room back at once.
    a.stop().await?;
    br.wait_for(
        &pa,
        "document.getElementById('conn-dot').classList.contains('down') \
         && !document.getElementById('offline').hidden \
         && document.getElementById('composer-text').disabled \
         && document.getElementById('send-button').disabled \
         && !document.getElementById('room-meta').textContent.includes('online')",
        "Ada's page to say plainly that the daemon is gone, and stop sending",
        UI_WAIT,
    )
    .await?;
    br.eval(&pa, &fill("#composer-text", "a draft kept while the daemon is away")).await?;
    a.restart().await?;
    br.eval(&pa, &click("#reconnect")).await?;
    br.wait_for(
        &pa,
        "document.getElementById('conn-dot').classList.contains('ok') \
         && document.getElementById('offline').hidden \
         && !document.getElementById('composer-text').disabled",
        "Ada's page to reconnect",
        Duration::from_secs(5),
    )
    .await?;
    ensure!(
        br.eval(&pa, "document.getElementById('composer-text').value").await?
            == json!("a draft kept while the daemon is away"),
        "the draft was lost while the daemon was away"
    );
    br.wait_for(&pa, &bubble_with("Hello Bob, this is Ada."), "the conversation after the reconnect", UI_WAIT).await?;
    br.close().await;
    println!("screenshots in {}", shots.display());
    Ok(())
}

/// Opening the link of `peerlog open` once signs the browser in: the page trades the token
/// for an HttpOnly session cookie and clears it from the address bar, and the plain address
/// works in every new tab; `peerlog token --rotate` signs every tab out, and the new link
/// signs it in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_signs_a_browser_in_until_the_token_rotates() -> Result<()> {
    if skip_without_chromium()? {
        return Ok(());
    }
    const CONNECTED: &str = "document.getElementById('conn-dot').classList.contains('ok')";
    const SIGNED_OUT: &str = "document.getElementById('conn-dot').classList.contains('down') \
        && document.getElementById('room-name').textContent === 'Open peerlog with its link'";
    let d = TestDaemon::start_bootstrap_node().await?;
    let plain = format!("http://{}/", d.running()?.api_addr());
    let mut br = Browser::launch().await?;
    let first = br.open(&ui_url(&d)?).await?;
    br.wait_for(&first, CONNECTED, "the page opened with the link to connect", UI_WAIT).await?;
    br.wait_for(
        &first,
        "location.hash === '' && !location.href.includes('token')",
        "the token out of the address bar",
        UI_WAIT,
    )
    .await?;
    ensure!(br.eval(&first, "document.cookie").await? == json!(""), "the session cookie is readable by the page");
    ensure!(br.eval(&first, "sessionStorage.getItem('peerlog-token')").await?.is_null(), "the page kept the token");
    let second = br.open(&plain).await?;
    br.wait_for(&second, CONNECTED, "the plain address to connect with the cookie", UI_WAIT).await?;

    let mut cli = d.cli_client().await?;
    cli.request::<peerlog_proto::api::node::RotateToken>(&Default::default()).await?;
    br.wait_for(&first, SIGNED_OUT, "the first tab to say it was signed out", UI_WAIT).await?;
    br.wait_for(&second, SIGNED_OUT, "the second tab to say it was signed out", UI_WAIT).await?;
    let third = br.open(&plain).await?;
    br.wait_for(&third, SIGNED_OUT, "the plain address to ask for the new link", UI_WAIT).await?;
    let again = br.open(&ui_url(&d)?).await?;
    br.wait_for(&again, CONNECTED, "the new link to sign in again", UI_WAIT).await?;
    br.close().await;
    Ok(())
}

/// A long room stays smooth: with over 2,000 messages loaded (scrolled back page by page,
/// as a reader does), live messages and a burst of 300 are added without rebuilding the
/// list, so no task blocks the page for long (Chromium's long-task timings). And after the
/// catch-up, the sidebar previews the newest message, not the last to arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_room_stays_smooth_as_messages_arrive() -> Result<()> {
    if skip_without_chromium()? {
        return Ok(());
    }
    const HISTORY: usize = 2_050;
    let a = TestDaemon::start_bootstrap_node().await?;
    let b = TestDaemon::start_bootstrapped(&a).await?;
    let (mut ca, mut cb) = (a.client().await?, b.client().await?);
    let room = join(&mut ca, PASSPHRASE).await?;
    for start in (0..HISTORY).step_by(500) {
        let texts: Vec<String> = (start..(start + 500).min(HISTORY)).map(|i| format!("history {i}")).collect();
        send_batch(&mut ca, &room, &texts).await?;
    }
    // Bob joins in the page, so that the catch-up arrives while it is open: newest pieces
    // first, so the last events it gets are of the oldest messages.
    let mut br = Browser::launch().await?;
    let page = br.open(&ui_url(&b)?).await?;
    set_name_and_join(&mut br, &page, "Bob").await?;
    within(UI_WAIT, "b to catch up the history", async {
        loop {
            let newest = history(&mut cb, &room, 1).await?.pop().and_then(|m| m.text);
            if newest == Some(format!("history {}", HISTORY - 1))
                && full_history(&mut cb, &room).await?.len() >= HISTORY
            {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await??;
    // The sidebar previews the room's newest message by the log's order, not whichever
    // arrived last.
    br.wait_for(
        &page,
        &format!(
            "document.querySelector('#room-list .r-preview').textContent.endsWith({})",
            json!(format!("history {}", HISTORY - 1))
        ),
        "the sidebar to preview the newest message",
        UI_WAIT,
    )
    .await?;
    br.wait_for(&page, "document.querySelectorAll('li.msg').length > 0", "the room's first page", UI_WAIT).await?;
    // Scroll back to the start, a page at a time.
    let count = "document.querySelectorAll('li.msg').length";
    loop {
        let n = br.eval(&page, count).await?.as_u64().unwrap_or(0);
        if n as usize >= HISTORY {
            break;
        }
        br.eval(&page, "(document.getElementById('messages').scrollTop = 0, true)").await?;
        br.wait_for(&page, &format!("{count} > {n}"), "an older page to load", UI_WAIT).await?;
    }
    br.eval(
        &page,
        "(window.__long = [], new PerformanceObserver((l) => window.__long.push(...l.getEntries().map((e) => e.duration))).observe({type: 'longtask'}), true)",
    )
    .await?;
    for i in 0..20 {
        send(&mut ca, &room, &format!("live {i}")).await?;
    }
    br.wait_for(&page, &bubble_with("live 19"), "the live messages", UI_WAIT).await?;
    let burst: Vec<String> = (0..300).map(|i| format!("burst {i}")).collect();
    send_batch(&mut ca, &room, &burst).await?;
    br.wait_for(&page, &bubble_with("burst 299"), "the burst", UI_WAIT).await?;
    let shown = br.eval(&page, count).await?.as_u64().unwrap_or(0) as usize;
    ensure!(shown == HISTORY + 320, "{shown} messages shown, not {}", HISTORY + 320);
    let longest = br.eval(&page, "Math.max(0, ...window.__long)").await?.as_f64().unwrap_or(f64::MAX);
    ensure!(longest < 150.0, "a task blocked the page for {longest:.0} ms while messages arrived");
    br.close().await;
    Ok(())
}

/// Finds the failed bubble showing `text` and clicks its `action` button.
fn click_on_failed(text: &str, action: &str) -> String {
    format!(
        "(() => {{ const li = [...document.querySelectorAll('li.msg.failed')].find((l) => l.querySelector('.bubble').textContent === {t}); li.querySelector({a}).click(); return true; }})()",
        t = json!(text),
        a = json!(format!(".{action}"))
    )
}

/// A reader scrolled up stays in place when a message comes: a "new messages" divider, a
/// jump button that counts them and the tab's title say so, and screen readers hear the
/// message once. A failed send says why, survives a reload, and can be retried, edited or
/// deleted; a text over 64 KiB stays in the box with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_keeps_their_place_and_failed_sends_keep_their_text() -> Result<()> {
    if skip_without_chromium()? {
        return Ok(());
    }
    const SCROLLED: &str = "document.getElementById('messages').scrollTop";
    let a = TestDaemon::start_bootstrap_node().await?;
    let b = TestDaemon::start_bootstrapped(&a).await?;
    let mut ca = a.client().await?;
    peerlog_tests::set_name(&mut ca, "Ada").await?;
    let room = join(&mut ca, PASSPHRASE).await?;
    let texts: Vec<String> = (0..80).map(|i| format!("earlier {i}")).collect();
    send_batch(&mut ca, &room, &texts).await?;
    let mut br = Browser::launch().await?;
    let page = br.open(&ui_url(&b)?).await?;
    set_name_and_join(&mut br, &page, "Bob").await?;
    br.wait_for(&page, &bubble_with("earlier 79"), "Ada's earlier messages", UI_WAIT).await?;
    br.wait_for(&page, "document.querySelectorAll('li.msg').length >= 50", "a page of messages", UI_WAIT).await?;
    ensure!(
        br.eval(&page, "document.getElementById('messages').getAttribute('aria-live')").await?.is_null(),
        "the message list is a live region: screen readers would read it again on every rebuild"
    );

    // Bob scrolls up to read; a message comes.
    br.eval(&page, &format!("({SCROLLED} = 300, true)")).await?;
    // The page takes note of a scroll at its next frame (the scroll event): it shows the
    // jump button. A message that came before that would find the reader at the bottom.
    br.wait_for(&page, "!document.getElementById('jump').hidden", "the page to see Bob scrolled up", UI_WAIT).await?;
    let top = br.eval(&page, SCROLLED).await?.as_f64().context("scrollTop")?;
    send(&mut ca, &room, "while you read").await?;
    br.wait_for(&page, &bubble_with("while you read"), "the new message in the list", UI_WAIT).await?;
    br.wait_for(
        &page,
        "!document.getElementById('jump').hidden && document.getElementById('jump').textContent.includes('1 new message')",
        "the jump button to count the new message",
        UI_WAIT,
    )
    .await?;
    let now = br.eval(&page, SCROLLED).await?.as_f64().context("scrollTop")?;
    ensure!((now - top).abs() < 2.0, "the new message moved the reader from {top} to {now}");
    ensure!(br.eval(&page, "document.title").await? == json!("(1) peerlog"), "the tab's title counts the unread");
    ensure!(
        br.eval(&page, "document.querySelector('li.new-divider + li.msg .bubble').textContent").await?
            == json!("while you read"),
        "the divider stands before the first new message"
    );
    ensure!(
        br.eval(&page, "document.getElementById('announce').textContent").await? == json!("Ada: while you read"),
        "screen readers are told the new message"
    );
    br.eval(&page, &click("#jump")).await?;
    br.wait_for(
        &page,
        "document.getElementById('jump').hidden && document.title === 'peerlog'",
        "the jump to the newest to read the message",
        UI_WAIT,
    )
    .await?;

    // Too long for a message: it stays in the box, with the reason.
    let long = "é".repeat(40_000);
    br.eval(&page, &fill("#composer-text", &long)).await?;
    br.eval(&page, &submit("#composer")).await?;
    br.wait_for(
        &page,
        "document.getElementById('composer-error').textContent.startsWith('Too long to send')",
        "the reason a long text cannot be sent",
        UI_WAIT,
    )
    .await?;
    ensure!(
        br.eval(&page, "document.getElementById('composer-text').value.length").await? == json!(40_000),
        "the long text left the box"
    );
    br.eval(&page, &fill("#composer-text", "")).await?;

    // The connection drops while each of three messages is being sent.
    br.eval(
        &page,
        "(window.__send = WebSocket.prototype.send, WebSocket.prototype.send = function (d) { \
           if (typeof d === 'string' && d.includes('messages.send')) { this.close(); return; } \
           return window.__send.call(this, d); }, true)",
    )
    .await?;
    const CONNECTED: &str = "document.getElementById('conn-dot').classList.contains('ok')";
    for (i, text) in ["first try", "second try", "third try"].into_iter().enumerate() {
        br.wait_for(&page, CONNECTED, "the page to reconnect", UI_WAIT).await?;
        send_text(&mut br, &page, text).await?;
        br.wait_for(
            &page,
            &format!("document.querySelectorAll('li.msg.failed').length === {}", i + 1),
            &format!("{text:?} to show as not sent"),
            UI_WAIT,
        )
        .await?;
    }
    br.eval(&page, "(WebSocket.prototype.send = window.__send, true)").await?;
    ensure!(
        br.eval(&page, "document.querySelector('li.msg.failed .meta').textContent")
            .await?
            .as_str()
            .is_some_and(|m| m.contains("not sent: connection to the daemon lost")),
        "a failed send says why"
    );
    // They outlive a reload.
    br.eval(&page, "(location.reload(), true)").await?;
    br.wait_for(
        &page,
        &format!("{CONNECTED} && document.querySelectorAll('li.msg.failed').length === 3"),
        "the three unsent messages after a reload",
        UI_WAIT,
    )
    .await?;
    br.eval(&page, &click_on_failed("first try", "retry")).await?;
    within(UI_WAIT, "Ada to receive the retried message", async {
        loop {
            let newest = history(&mut ca, &room, 1).await?.pop().and_then(|m| m.text);
            if newest.as_deref() == Some("first try") {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await??;
    br.wait_for(&page, "document.querySelectorAll('li.msg.failed').length === 2", "the retried bubble to go", UI_WAIT)
        .await?;
    br.eval(&page, &click_on_failed("second try", "edit")).await?;
    ensure!(
        br.eval(&page, "document.getElementById('composer-text').value").await? == json!("second try"),
        "Edit puts the text back in the box"
    );
    br.eval(&page, &click_on_failed("third try", "delete")).await?;
    br.wait_for(&page, "document.querySelectorAll('li.msg.failed').length === 0", "the failed bubbles to go", UI_WAIT)
        .await?;
    // The draft (from Edit) is kept, the deleted one stays deleted.
    br.eval(&page, "(location.reload(), true)").await?;
    br.wait_for(
        &page,
        &format!("{CONNECTED} && document.getElementById('composer-text').value === 'second try'"),
        "the draft after a reload",
        UI_WAIT,
    )
    .await?;
    ensure!(
        br.eval(&page, "document.querySelectorAll('li.msg.failed').length").await? == json!(0),
        "a deleted unsent message came back after a reload"
    );
    br.close().await;
    Ok(())
}

/// Every visible text's contrast against its background, where it is under 4.5:1.
const LOW_CONTRAST: &str = r#"(() => {
  const parse = (c) => { const m = c.match(/rgba?\(([^)]+)\)/); if (!m) return null; const p = m[1].split(/[\s,\/]+/).filter(Boolean).map(Number); return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 }; };
  const lum = ({ r, g, b }) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; }; return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const bgOf = (e) => { for (let x = e; x; x = x.parentElement) { const c = parse(getComputedStyle(x).backgroundColor); if (c && c.a > 0.5) return c; } return { r: 255, g: 255, b: 255, a: 1 }; };
  const bad = [];
  for (const e of document.querySelectorAll("body *")) {
    if (![...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim())) continue;
    if (!e.getClientRects().length || e.closest("[hidden], :disabled, .visually-hidden, .skip-link, dialog:not([open])")) continue;
    const fg = parse(getComputedStyle(e).color);
    const [hi, lo] = [lum(fg), lum(bgOf(e))].sort((x, y) => y - x);
    const ratio = (hi + 0.05) / (lo + 0.05);
    if (ratio < 4.5) bad.push(`${e.tagName.toLowerCase()}.${e.className} ${ratio.toFixed(2)}: ${e.textContent.trim().slice(0, 40)}`);
  }
  return bad;
})()"#;

/// Invites work on the receiver's machine: the link pasted into Join, or opened in a tab
/// that is already open, offers the room under the name its sender suggests. An upload shows
/// its progress and can be cancelled; an image opens at full size; a file's link names it.
/// On a phone the People panel leaves its button in reach and closes by button and Esc.
/// There is a skip link, and every text holds 4.5:1 contrast in light and dark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_uploads_images_the_phone_panel_and_contrast() -> Result<()> {
    if skip_without_chromium()? {
        return Ok(());
    }
    let a = TestDaemon::start_bootstrap_node().await?;
    let b = TestDaemon::start_bootstrapped(&a).await?;
    let mut ca = a.client().await?;
    let (room, _) = create(&mut ca, "Family chat").await?;
    let invite = invite(&mut ca, &room).await?;
    ensure!(invite.ends_with("?name=Family%20chat"), "the invite suggests the room's name: {invite}");

    let mut br = Browser::launch().await?;
    let page = br.open(&ui_url(&b)?).await?;
    set_name(&mut br, &page, "Bob").await?;
    // Ada's link names her daemon's usual address; Bob's runs elsewhere and takes it pasted.
    br.eval(&page, &fill("#join-secret", &format!("http://127.0.0.1:7777/#join={invite}"))).await?;
    br.wait_for(
        &page,
        "document.getElementById('join-strength').textContent.startsWith('Invite to “Family chat”')",
        "the pasted link read as an invite to Family chat",
        UI_WAIT,
    )
    .await?;
    br.eval(&page, &submit("#join-form")).await?;
    br.wait_for(
        &page,
        "document.getElementById('room-name').textContent === 'Family chat' && !document.getElementById('composer').hidden",
        "the room, under its suggested name",
        UI_WAIT,
    )
    .await?;
    // A link opened in the tab that is open already.
    let (_, second) = create(&mut ca, "Second").await?;
    br.eval(&page, &format!("(location.hash = {}, true)", json!(format!("join={second}")))).await?;
    br.wait_for(
        &page,
        &format!("document.getElementById('join-secret').value === {}", json!(second)),
        "the invite from the address offered in the Join box",
        UI_WAIT,
    )
    .await?;
    br.eval(&page, &fill("#join-secret", "")).await?;

    // An upload shows its progress, and Cancel stops it: no file message anywhere.
    let big = b.data_dir().join("big.bin");
    std::fs::File::create(&big)?.set_len(256 << 20)?;
    br.set_file(&page, "#file-input", &big).await?;
    br.wait_for(&page, "document.querySelector('li.pending progress')?.value > 0", "the upload's progress", UI_WAIT)
        .await?;
    br.eval(&page, &click("li.pending .cancel")).await?;
    br.wait_for(
        &page,
        "!document.querySelector('li.pending') && document.getElementById('toast').textContent === 'Stopped sending big.bin'",
        "the cancelled upload to go",
        UI_WAIT,
    )
    .await?;
    let mut cb = b.client().await?;
    let left = full_history(&mut cb, &room).await?;
    ensure!(left.is_empty(), "a cancelled upload left {left:?}");

    // An image: a thumbnail that opens at full size; the link says what it downloads.
    let png = b.data_dir().join("gradient.png");
    std::fs::write(&png, include_bytes!("gradient.png"))?;
    br.set_file(&page, "#file-input", &png).await?;
    br.wait_for(
        &page,
        "[...document.querySelectorAll('.file-card .view-image img')].some((i) => i.complete && i.naturalWidth === 24)",
        "the image's thumbnail",
        UI_WAIT,
    )
    .await?;
    ensure!(
        br.eval(&page, "document.querySelector('.file-card a.download').textContent").await?
            == json!("Download gradient.png"),
        "the download link names its file"
    );
    br.eval(&page, &click(".file-card .view-image")).await?;
    br.wait_for(
        &page,
        "document.getElementById('viewer').open && document.getElementById('viewer-img').naturalWidth === 24",
        "the image at full size",
        UI_WAIT,
    )
    .await?;
    br.press(&page, "Escape").await?;
    br.wait_for(&page, "!document.getElementById('viewer').open", "Esc to close the image", UI_WAIT).await?;

    // A skip link comes first; contrast holds in both schemes, with the People panel open.
    ensure!(
        br.eval(&page, "document.querySelector('a[href], button, input, textarea, select').className").await?
            == json!("skip-link"),
        "the first thing to tab to is the skip link"
    );
    br.eval(&page, &click("#peers-button")).await?;
    br.wait_for(&page, "document.querySelectorAll('#member-list .member').length > 0", "the people list", UI_WAIT)
        .await?;
    br.eval(&page, &fill("#join-secret", "apple banana")).await?;
    br.wait_for(&page, "document.getElementById('join-strength').textContent.includes('bits')", "a strength", UI_WAIT)
        .await?;
    for scheme in ["light", "dark"] {
        br.color_scheme(&page, scheme).await?;
        let low = br.eval(&page, LOW_CONTRAST).await?;
        ensure!(low == json!([]), "texts under 4.5:1 contrast in the {scheme} scheme: {low}");
    }
    br.eval(&page, &click("#peers-button")).await?;

    // On a phone, the People panel leaves its button in reach, and closes by button and Esc.
    br.viewport(&page, 390, 844, true).await?;
    br.wait_for(
        &page,
        "document.getElementById('sidebar').getBoundingClientRect().right <= 1",
        "the phone layout with the room list tucked away",
        UI_WAIT,
    )
    .await?;
    br.eval(&page, &click("#peers-button")).await?;
    br.wait_for(&page, "!document.getElementById('peers-panel').hidden", "the People panel to open", UI_WAIT).await?;
    let reachable = "(() => { const b = document.getElementById('peers-button').getBoundingClientRect(); \
        return document.elementFromPoint(b.left + b.width / 2, b.top + b.height / 2) === document.getElementById('peers-button'); })()";
    ensure!(
        br.eval(&page, reachable).await? == json!(true),
        "the People panel covers the button that opened it: {}",
        br.eval(&page, "(() => { const b = document.getElementById('peers-button').getBoundingClientRect(); const e = document.elementFromPoint(b.left + b.width / 2, b.top + b.height / 2); return `${JSON.stringify(b)} ${e && (e.id || e.className || e.tagName)} app: ${document.getElementById('app').className}`; })()").await?
    );
    br.eval(&page, &click("#peers-close")).await?;
    br.wait_for(&page, "document.getElementById('peers-panel').hidden", "the close button to close the panel", UI_WAIT)
        .await?;
    br.eval(&page, &click("#peers-button")).await?;
    br.wait_for(&page, "!document.getElementById('peers-panel').hidden", "the People panel to open again", UI_WAIT)
        .await?;
    br.press(&page, "Escape").await?;
    br.wait_for(
        &page,
        "document.getElementById('peers-panel').hidden && document.activeElement.id === 'peers-button'",
        "Esc to close the panel and give the focus back to its button",
        UI_WAIT,
    )
    .await?;
    br.close().await;
    Ok(())
}

/// `li.msg` whose bubble text starts with `text`, focused (which brings its tools).
/// Sends `text` naming `member`; returns the message's id.
async fn mention(c: &mut Client, room: &str, text: &str, member: &str) -> Result<String> {
    let params =
        messages::SendParams { room: room.into(), text: text.into(), reply_to: None, mentions: vec![member.into()] };
    Ok(c.request::<messages::Send>(&params).await?.message.context("the sent message")?.id)
}

fn focus_message(text: &str) -> String {
    format!(
        "(() => {{ const li = [...document.querySelectorAll('li.msg')].find((l) => l.querySelector('.bubble').textContent.includes({t})); li.focus(); return true; }})()",
        t = json!(text)
    )
}

/// The chat people expect, in the browser: a reply that quotes, reactions both ways, an
/// edit and a deletion (with the quote following them), a mention that notifies only when
/// asked and the tab is hidden, and search that leads to the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_reactions_edits_mentions_and_search_in_chromium() -> Result<()> {
    if skip_without_chromium()? {
        return Ok(());
    }
    let a = TestDaemon::start_bootstrap_node().await?;
    let b = TestDaemon::start_bootstrapped(&a).await?;
    let mut ca = a.client().await?;
    peerlog_tests::set_name(&mut ca, "Ada").await?;
    let room = join(&mut ca, PASSPHRASE).await?;
    let mut br = Browser::launch().await?;
    let page = br.open(&ui_url(&b)?).await?;
    set_name_and_join(&mut br, &page, "Bob").await?;
    let origin = format!("http://{}", b.running()?.api_addr());
    br.cmd(None, "Browser.grantPermissions", json!({"origin": origin, "permissions": ["notifications"]})).await?;
    // Notifications are recorded; the tab can be made to look hidden.
    br.eval(
        &page,
        "(window.__notes = [], window.__N = window.Notification, \
          window.Notification = function (title, o) { window.__notes.push(title + ' | ' + (o && o.body)); return new window.__N(title, o); }, \
          window.Notification.permission = window.__N.permission, \
          window.Notification.requestPermission = () => window.__N.requestPermission(), \
          window.__hide = (h) => { Object.defineProperty(document, 'hidden', {configurable: true, get: () => h}); document.dispatchEvent(new Event('visibilitychange')); }, true)",
    )
    .await?;
    let bob = within(UI_WAIT, "Bob among the members", async {
        loop {
            let members = members(&mut ca, &room).await?;
            if let Some(bob) = members.into_iter().find(|m| m.display_name.as_deref() == Some("Bob")) {
                return anyhow::Ok(bob.author);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await??;

    // A mention while the tab is hidden: no notification until Bob asks for them.
    br.eval(&page, "(window.__hide(true), true)").await?;
    mention(&mut ca, &room, "@Bob first ping", &bob).await?;
    br.wait_for(&page, "!!document.querySelector('li.msg.mentions-me')", "the mention marked", UI_WAIT).await?;
    ensure!(br.eval(&page, "window.__notes.length").await? == json!(0), "notified without being asked");
    br.eval(&page, "(window.__hide(false), true)").await?;
    br.eval(&page, &click("#notify-button")).await?;
    br.wait_for(
        &page,
        "document.getElementById('notify-button').getAttribute('aria-pressed') === 'true'",
        "mention notifications on",
        UI_WAIT,
    )
    .await?;
    // Visible: no notification; hidden: one.
    mention(&mut ca, &room, "@Bob while you look", &bob).await?;
    br.wait_for(&page, &bubble_with("@Bob while you look"), "the visible mention", UI_WAIT).await?;
    br.eval(&page, "(window.__hide(true), true)").await?;
    let cake = mention(&mut ca, &room, "@Bob who brings the cake?", &bob).await?;
    br.wait_for(&page, "window.__notes.length === 1", "one notification for the hidden mention", UI_WAIT).await?;
    let note = br.eval(&page, "window.__notes[0]").await?;
    ensure!(
        note.as_str().is_some_and(|n| n.starts_with("Ada mentioned you in room ") && n.ends_with(" | @Bob who brings the cake?")),
        "the notification: {note}"
    );
    br.eval(&page, "(window.__hide(false), true)").await?;

    // Reply: the tools of Ada's message, a bar above the box, and the quote on both sides.
    br.eval(&page, &focus_message("who brings the cake?")).await?;
    br.eval(&page, &click("#msg-tools .tool-reply")).await?;
    br.wait_for(
        &page,
        "!document.getElementById('compose-bar').hidden && document.getElementById('compose-text').textContent.startsWith('Replying to Ada')",
        "the reply bar",
        UI_WAIT,
    )
    .await?;
    send_text(&mut br, &page, "I do").await?;
    let reply = wait_for_text(&mut ca, &room, "I do", UI_WAIT).await?;
    ensure!(reply.reply_to.as_ref().is_some_and(|q| q.id == cake), "the reply does not answer the cake: {reply:?}");
    br.wait_for(
        &page,
        "[...document.querySelectorAll('li.msg.mine .quote .q-text')].some((q) => q.textContent === '@Bob who brings the cake?')",
        "the quote in Bob's reply",
        UI_WAIT,
    )
    .await?;

    // Reactions both ways.
    br.eval(&page, &focus_message("who brings the cake?")).await?;
    br.eval(
        &page,
        "([...document.querySelectorAll('#msg-tools .tool-react')].find((b) => b.textContent === '👍').click(), true)",
    )
    .await?;
    let chip = format!(
        "[...document.querySelectorAll('li.msg[data-id=\"{cake}\"] .reaction')].map((r) => r.textContent + ':' + r.getAttribute('aria-pressed')).join(',')"
    );
    br.wait_for(&page, &format!("{chip} === '👍 1:true'"), "Bob's reaction", UI_WAIT).await?;
    let react = messages::ReactParams { room: room.clone(), message: cake.clone(), emoji: "🎉".into(), on: true };
    ca.request::<messages::React>(&react).await?;
    br.wait_for(&page, &format!("{chip} === '👍 1:true,🎉 1:false'"), "Ada's reaction on Bob's page", UI_WAIT).await?;
    br.eval(&page, &format!("(document.querySelector('li.msg[data-id=\"{cake}\"] .reaction.mine').click(), true)"))
        .await?;
    br.wait_for(&page, &format!("{chip} === '🎉 1:false'"), "Bob's reaction taken back", UI_WAIT).await?;

    // Bob edits his reply; Ada edits her question, and Bob's quote follows.
    br.eval(&page, &focus_message("I do")).await?;
    br.eval(&page, &click("#msg-tools .tool-edit")).await?;
    br.wait_for(&page, "document.getElementById('composer-text').value === 'I do'", "the text to edit", UI_WAIT)
        .await?;
    send_text(&mut br, &page, "I do, chocolate").await?;
    br.wait_for(
        &page,
        "[...document.querySelectorAll('li.msg.mine')].some((l) => l.querySelector('.bubble').textContent.endsWith('I do, chocolate') && l.querySelector('.meta').textContent.includes('edited'))",
        "the edited reply",
        UI_WAIT,
    )
    .await?;
    let reply_id = reply.id;
    // Bob's page shows the edit once his daemon holds it; Ada's daemon gets it a moment later.
    within(UI_WAIT, "Ada's daemon to hold Bob's edit", async {
        loop {
            let h = history(&mut ca, &room, 10).await?;
            let edited = |m: &messages::MessageInfo| m.text.as_deref() == Some("I do, chocolate") && m.edited;
            if h.iter().find(|m| m.id == reply_id).is_some_and(edited) {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await??;
    let edit =
        messages::EditParams { room: room.clone(), message: cake.clone(), text: "@Bob who brings the pie?".into() };
    ca.request::<messages::Edit>(&edit).await?;
    br.wait_for(
        &page,
        "[...document.querySelectorAll('li.msg.mine .quote .q-text')].some((q) => q.textContent === '@Bob who brings the pie?') && [...document.querySelectorAll('.bubble')].some((b) => b.textContent === '@Bob who brings the pie?')",
        "Ada's edit, and the quote following it",
        UI_WAIT,
    )
    .await?;

    // Search leads to the message.
    br.eval(&page, &click("#search-button")).await?;
    br.eval(&page, &fill("#search-input", "PIE")).await?;
    br.eval(&page, &submit("#search-form")).await?;
    br.wait_for(
        &page,
        "[...document.querySelectorAll('#search-results .s-text')].map((t) => t.textContent).join('|') === '@Bob who brings the pie?'",
        "the search result",
        UI_WAIT,
    )
    .await?;
    br.eval(&page, &click("#search-results .result")).await?;
    br.wait_for(
        &page,
        &format!(
            "document.activeElement.dataset.id === '{cake}' && document.activeElement.classList.contains('flash')"
        ),
        "the found message shown",
        UI_WAIT,
    )
    .await?;

    // Bob deletes his reply (a second click confirms); it is gone on Ada's side too.
    br.eval(&page, &focus_message("I do, chocolate")).await?;
    br.eval(&page, &click("#msg-tools .tool-delete")).await?;
    br.eval(&page, &click("#msg-tools .tool-delete")).await?;
    br.wait_for(
        &page,
        &format!(
            "document.querySelector('li.msg[data-id=\"{reply_id}\"] .bubble').textContent.endsWith('Message deleted')"
        ),
        "the deleted reply",
        UI_WAIT,
    )
    .await?;
    let h = history(&mut ca, &room, 10).await?;
    ensure!(
        h.iter().find(|m| m.id == reply_id).is_some_and(|m| m.deleted && m.text.is_none()),
        "Ada still has the text: {h:?}"
    );
    br.close().await;
    Ok(())
}

/// Removing a member from the People panel: the admin (the room's creator) sees a Remove
/// button that asks once more, and lands in the room's new epoch; the member removed is told
/// so, and its page stops offering to write there; others see no Remove button.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_removes_a_member_in_chromium() -> Result<()> {
    if skip_without_chromium()? {
        return Ok(());
    }
    let a = TestDaemon::start_bootstrap_node().await?;
    let b = TestDaemon::start_bootstrapped(&a).await?;
    let c = TestDaemon::start_bootstrapped(&a).await?;
    let (mut ca, mut cb, mut cc) = (a.client().await?, b.client().await?, c.client().await?);
    for (client, name) in [(&mut ca, "Ada"), (&mut cb, "Bob"), (&mut cc, "Carol")] {
        peerlog_tests::set_name(client, name).await?;
    }
    let (old, invite) = create(&mut ca, "family").await?;
    let bob = join_invite(&mut cb, &invite).await?.feed_key;
    let carol = join_invite(&mut cc, &invite).await?.feed_key;
    send(&mut cc, &old, "hello from carol").await?;
    within(UI_WAIT, "Ada to hold Carol's message", async {
        while !texts(&mut ca, &old).await?.contains(&"hello from carol".to_string()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(())
    })
    .await??;

    let mut br = Browser::launch().await?;
    let (pa, pc) = (br.open(&ui_url(&a)?).await?, br.open(&ui_url(&c)?).await?);
    for (page, who) in [(&pa, "Ada"), (&pc, "Carol")] {
        br.wait_for(page, &bubble_with("hello from carol"), &format!("the room open on {who}'s page"), UI_WAIT).await?;
        br.eval(page, &click("#peers-button")).await?;
        br.wait_for(
            page,
            "document.querySelectorAll('#member-list .member .rename').length >= 2",
            "the members listed",
            UI_WAIT,
        )
        .await?;
    }
    ensure!(
        br.eval(&pc, "document.querySelectorAll('#member-list .remove').length").await? == json!(0),
        "Carol, not the admin, is offered Remove"
    );
    // Ada names Bob an admin: her page marks him, and his daemon knows.
    let make = format!("#member-list .member[data-author=\"{bob}\"] .make-admin");
    br.wait_for(&pa, &format!("!!document.querySelector({})", json!(make)), "a Make admin button by Bob", UI_WAIT)
        .await?;
    br.eval(&pa, &click(&make)).await?;
    let marked = format!("!!document.querySelector('#member-list .member[data-author=\"{bob}\"] .pill.admin')");
    br.wait_for(&pa, &marked, "Bob marked admin on Ada's page", UI_WAIT).await?;
    within(UI_WAIT, "Bob's daemon to know he is an admin", async {
        while !rooms_list(&mut cb).await?.iter().any(|r| r.id == old && r.admins.contains(&bob)) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(())
    })
    .await??;
    let remove = format!("#member-list .member[data-author=\"{carol}\"] .remove");
    br.wait_for(&pa, &format!("!!document.querySelector({})", json!(remove)), "a Remove button by Carol", UI_WAIT)
        .await?;
    br.eval(&pa, &click(&remove)).await?;
    br.wait_for(
        &pa,
        &format!("document.querySelector({}).textContent.includes('sure')", json!(remove)),
        "the second ask",
        UI_WAIT,
    )
    .await?;
    br.eval(&pa, &click(&remove)).await?;

    // Ada is in the new room, and may write there; the old one says where everyone went.
    let new = within(UI_WAIT, "Ada's old room to move on", async {
        loop {
            if let Some(to) = rooms_list(&mut ca).await?.into_iter().find(|r| r.id == old).and_then(|r| r.moved_to) {
                return anyhow::Ok(to);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await??;
    br.wait_for(
        &pa,
        "document.getElementById('room-banner').hidden && !document.getElementById('composer').hidden && document.querySelectorAll('#room-list li').length === 1",
        "Ada's page in the new room, listed alone",
        UI_WAIT,
    )
    .await?;
    send_text(&mut br, &pa, "just us now").await?;
    // Written by Ada's daemon (her page sent it), then at Bob's (he follows to the new room).
    for (who, client) in [("Ada", &mut ca), ("Bob", &mut cb)] {
        within(UI_WAIT, &format!("\"just us now\" in the new room at {who}'s daemon"), async {
            while !texts(client, &new).await.unwrap_or_default().contains(&"just us now".to_string()) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(())
        })
        .await??;
    }
    // The old room's history is a click away, and leads back.
    br.wait_for(&pa, "!!document.querySelector('.earlier-open')", "a way to the earlier messages", UI_WAIT).await?;
    br.eval(&pa, &click(".earlier-open")).await?;
    br.wait_for(
        &pa,
        &format!(
            "{} && !document.getElementById('room-banner').hidden && document.getElementById('composer').hidden",
            bubble_with("hello from carol")
        ),
        "the old room, read-only, with its history",
        UI_WAIT,
    )
    .await?;
    br.eval(&pa, &click("#room-banner-open")).await?;
    br.wait_for(&pa, &bubble_with("just us now"), "back in the new room", UI_WAIT).await?;

    // Carol's page says she was removed, by whom, and offers no composer.
    br.wait_for(
        &pc,
        "!document.getElementById('room-banner').hidden && document.getElementById('room-banner-text').textContent.includes('removed from this room by Ada') && document.getElementById('composer').hidden",
        "Carol's page to say she was removed",
        UI_WAIT,
    )
    .await?;
    ensure!(br.eval(&pc, &bubble_with("hello from carol")).await? == json!(true), "Carol's page lost what she had");
    Ok(())
}

/// Ada links her laptop from her browser (This node → Link a new device, the code typed
/// into the laptop's page): Carol's page shows one Ada with two devices. Ada unlinks it
/// there, and the laptop's page says it was removed from the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_is_linked_and_unlinked_in_chromium() -> Result<()> {
    if skip_without_chromium()? {
        return Ok(());
    }
    let a = TestDaemon::start_bootstrap_node().await?;
    let c = TestDaemon::start_bootstrapped(&a).await?;
    let laptop = TestDaemon::start_bootstrapped(&a).await?;
    let (mut ca, mut cc, mut cl) = (a.client().await?, c.client().await?, laptop.client().await?);
    for (client, name) in [(&mut ca, "Ada"), (&mut cc, "Carol")] {
        peerlog_tests::set_name(client, name).await?;
    }
    let (room, invite) = create(&mut ca, "family").await?;
    join_invite(&mut cc, &invite).await?;
    send(&mut cc, &room, "hello from carol").await?;
    wait_for_text(&mut ca, &room, "hello from carol", UI_WAIT).await?;

    let mut br = Browser::launch().await?;
    let (pa, pc, pl) = (br.open(&ui_url(&a)?).await?, br.open(&ui_url(&c)?).await?, br.open(&ui_url(&laptop)?).await?);
    br.wait_for(&pa, &bubble_with("hello from carol"), "the room open on Ada's page", UI_WAIT).await?;
    br.eval(&pa, &click("#node-badge")).await?;
    br.wait_for(&pa, "!document.getElementById('link-device').hidden", "a Link a new device button", UI_WAIT).await?;
    br.eval(&pa, &click("#link-device")).await?;
    let has_code = "document.getElementById('link-code').value.startsWith('peerlog-link:') && !document.getElementById('link-box').hidden";
    br.wait_for(&pa, has_code, "a link code on Ada's page", UI_WAIT).await?;
    let code = br.eval(&pa, "document.getElementById('link-code').value").await?;
    let code = code.as_str().context("the code")?.to_string();
    br.wait_for(&pl, "!!document.getElementById('node-badge')", "the laptop's page", UI_WAIT).await?;
    br.eval(&pl, &click("#node-badge")).await?;
    br.wait_for(&pl, "!document.getElementById('accept-link').hidden", "the laptop's Link this device form", UI_WAIT)
        .await?;
    br.eval(&pl, &fill("#accept-code", &code)).await?;
    br.eval(&pl, &submit("#accept-link")).await?;
    br.wait_for(
        &pl,
        "document.querySelectorAll('#room-list li').length === 1",
        "the laptop's page to list Ada's room",
        UI_WAIT,
    )
    .await?;
    send(&mut cl, &room, "ada from the laptop").await?;
    wait_for_text(&mut cc, &room, "ada from the laptop", UI_WAIT).await?;
    within(UI_WAIT, "Carol's daemon to see Ada's two devices", async {
        while !members(&mut cc, &room).await?.iter().any(|m| m.devices.len() == 2) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(())
    })
    .await??;
    // The People panel lists one Ada, with two devices.
    br.wait_for(&pc, &bubble_with("ada from the laptop"), "the laptop's message on Carol's page", UI_WAIT).await?;
    br.eval(&pc, &click("#peers-button")).await?;
    br.wait_for(
        &pc,
        "[...document.querySelectorAll('#member-list .member .pill.devices')].some((p) => p.textContent.startsWith('2 devices'))",
        "Carol's page to show Ada with two devices",
        UI_WAIT,
    )
    .await?;
    ensure!(
        br.eval(&pc, "document.querySelectorAll('#member-list .member').length").await? == json!(2),
        "Carol's page lists other than herself and one Ada"
    );

    // Ada unlinks the laptop: asked twice.
    br.eval(&pa, &click("#node-badge")).await?;
    br.wait_for(&pa, "!!document.querySelector('#device-list .unlink')", "an Unlink button by the laptop", UI_WAIT)
        .await?;
    br.eval(&pa, &click("#device-list .unlink")).await?;
    br.wait_for(
        &pa,
        "document.querySelector('#device-list .unlink').textContent.includes('sure')",
        "the second ask",
        UI_WAIT,
    )
    .await?;
    br.eval(&pa, &click("#device-list .unlink")).await?;
    within(UI_WAIT, "Ada's room to move on without the laptop", async {
        while !rooms_list(&mut ca).await?.iter().any(|r| r.id == room && r.moved_to.is_some()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(())
    })
    .await??;
    within(UI_WAIT, "the laptop's daemon to hear it was removed", async {
        while !rooms_list(&mut cl).await?.iter().any(|r| r.id == room && r.removed_by.is_some()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(())
    })
    .await??;
    br.eval(&pl, &click("#node-close")).await?;
    br.eval(&pl, &click("#room-list li button")).await?;
    br.wait_for(
        &pl,
        "!document.getElementById('room-banner').hidden && document.getElementById('room-banner-text').textContent.includes('You were removed from this room by') && document.getElementById('composer').hidden",
        "the laptop's page to say it was removed",
        UI_WAIT,
    )
    .await?;
    Ok(())
}
