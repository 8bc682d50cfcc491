//! The real `peerlog` binary, driven the way a person uses it: `--help`, `daemon`, the CLI
//! client commands, SIGTERM and a restart.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

const PASS: &str = "correct horse battery staple tangerine";

/// The real binary, the way a person uses it: start, join, send, tail, status, SIGTERM,
/// restart, and the message is still there.
#[test]
fn the_binary_runs_a_daemon_and_its_cli_drives_it() -> Result<()> {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_peerlog"));
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_str().context("utf-8 path")?.to_string();
    let help = Command::new(&exe).arg("--help").output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    for sub in ["daemon", "open", "join", "send", "tail", "status"] {
        ensure!(help.contains(sub), "--help does not mention {sub}");
    }
    let dhelp = String::from_utf8_lossy(&Command::new(&exe).args(["daemon", "--help"]).output()?.stdout).to_string();
    for flag in ["--data-dir", "--api-listen", "--listen", "--bootstrap", "--config", "--no-mdns"] {
        ensure!(dhelp.contains(flag), "daemon --help does not mention {flag}");
    }

    let start = || -> Result<std::process::Child> {
        let mut child = Command::new(&exe)
            .args([
                "daemon",
                "--data-dir",
                &data,
                "--api-listen",
                "127.0.0.1:0",
                "--no-mdns",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let (mut peer, mut ui) = (false, false);
        while !(peer && ui) {
            let line = lines.next().context("daemon exited before printing its UI URL")??;
            peer |= line.starts_with("peer id: 12D3");
            ui |= line.starts_with("web UI: http://127.0.0.1:") && line.contains("#token=");
        }
        Ok(child)
    };
    let cli = |args: &[&str], stdin: Option<&str>| -> Result<String> {
        let mut child = Command::new(&exe)
            .args(args)
            .args(["--data-dir", &data])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(input) = stdin {
            use std::io::Write;
            child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        ensure!(out.status.success(), "peerlog {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?)
    };
    let stop = |child: &mut std::process::Child| -> Result<()> {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                ensure!(status.success(), "daemon exited with {status} on SIGTERM");
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "daemon did not exit within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    let mut child = start()?;
    let joined = cli(&["join", "--name", "cli room"], Some(&format!("{PASS}\n")))?;
    ensure!(joined.contains("cli room"), "join printed {joined:?}");
    cli(&["send", "cli room", "written by the cli"], None)?;
    let tail = cli(&["tail", "cli room"], None)?;
    ensure!(tail.contains("me: written by the cli"), "tail printed {tail:?}");
    let status = cli(&["status"], None)?;
    ensure!(status.contains("peer id:") && status.contains("cli room"), "status printed {status:?}");
    let open = cli(&["open"], None)?;
    ensure!(open.starts_with("http://127.0.0.1:") && open.contains("#token="), "open printed {open:?}");
    stop(&mut child)?;

    let mut child = start()?;
    let tail = cli(&["tail", "--json", "cli room"], None)?;
    ensure!(tail.contains("\"written by the cli\""), "message lost across SIGTERM + restart: {tail:?}");
    stop(&mut child)?;
    Ok(())
}
