//! The `peerlog` binary: `peerlog daemon` runs the node; every other subcommand is a
//! client of a running daemon's local API.

use std::io::{BufRead, IsTerminal};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use libp2p::Multiaddr;
use peerlog::client::Client;
use peerlog::config::{Config, DhtMode, Network, RelayServerMode};
use peerlog::Daemon;
use peerlog_proto::api::{devices, events, files, messages, node, peers, rooms, NoParams};
use serde_json::json;

/// peerlog: rooms for chat and files between peers, with no server in the middle.
#[derive(Parser)]
#[command(name = "peerlog", version, about, long_about = None, propagate_version = true)]
#[command(after_help = EXIT_CODES)]
struct Cli {
    /// Print JSON (one object, or one per line where several follow) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// The exit codes, by kind of failure (documented in --help and the README).
const EXIT_CODES: &str = "Exit codes: 0 done; 1 failed otherwise (doctor: a check failed); 2 usage; \
3 the daemon is unreachable (not running, wrong --data-dir or --api); 4 not found (room, message, file); \
5 invalid (params, invite, passphrase too weak, too large); 6 refused (needs the CLI credential, \
the room is only seeded here); 7 unavailable for now (no peer sent it, shutting down: try again).";

/// `peerlog devices …`.
#[derive(Subcommand)]
enum DevicesAction {
    /// Show a one-time code (and QR) that links a new device to you, for 10 minutes.
    Link,
    /// On the new device: link it with the code the other device showed, and join your
    /// rooms (waits up to 3 minutes for the other device).
    Accept {
        /// The code (`peerlog-link:…`).
        code: String,
    },
    /// Unlink a device: it is removed from every room like a member.
    Unlink {
        /// Its device key (`peerlog devices`).
        device: String,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (node, storage, local API and web UI).
    Daemon(DaemonArgs),
    /// Print the web UI address with its token, and try to open it in a browser (through a
    /// 0600 redirect file, so the token is not in any command line). With an invite (as the
    /// handler of `peerlog:` links does), the page offers to join its room.
    Open {
        #[command(flatten)]
        client: ClientArgs,
        /// An invite (`peerlog:...`) to offer in the page's Join box.
        invite: Option<String>,
        /// Only print the address; do not start a browser.
        #[arg(long)]
        no_browser: bool,
    },
    /// Join a room by passphrase (asked on standard input if not given) or invite.
    Join {
        #[command(flatten)]
        client: ClientArgs,
        /// The room's passphrase. Prefer standard input: arguments are visible to other users.
        #[arg(long, conflicts_with = "invite")]
        passphrase: Option<String>,
        /// An invite (`peerlog:...`).
        #[arg(long)]
        invite: Option<String>,
        /// A local name for the room.
        #[arg(long)]
        name: Option<String>,
        /// Join even though the passphrase is weak and the room is announced on the public
        /// DHT, where anyone can test guesses against it offline.
        #[arg(long)]
        i_know_it_is_weak: bool,
    },
    /// Create a new room with a random secret and print its invite.
    Create {
        #[command(flatten)]
        client: ClientArgs,
        /// A local name for the room.
        #[arg(long)]
        name: Option<String>,
    },
    /// Print a room's invite; with --seed, its seed capability instead, which lets an
    /// always-on daemon store and serve the room without being able to read it.
    Invite {
        #[command(flatten)]
        client: ClientArgs,
        /// The room.
        room: String,
        /// Print the seed capability (for `peerlog seed`) instead of the member invite.
        #[arg(long)]
        seed: bool,
    },
    /// Seed a room blindly from its seed capability (`peerlog-seed:...`): find its peers,
    /// store and serve its encrypted log, so that members who are rarely online at the same
    /// time still get each other's messages. This daemon cannot read the room.
    Seed {
        #[command(flatten)]
        client: ClientArgs,
        /// The seed capability (from `peerlog invite ROOM --seed`).
        capability: String,
        /// A local name for the room.
        #[arg(long)]
        name: Option<String>,
    },
    /// Send a message to a room (by id, id prefix or name).
    Send {
        #[command(flatten)]
        client: ClientArgs,
        /// The room.
        room: String,
        /// The text; `-` reads it from standard input (all of it, as one message).
        text: String,
        /// Answer this message (its id, as `tail --json` shows it).
        #[arg(long)]
        reply_to: Option<String>,
        /// Name this member (an author key; repeat for several).
        #[arg(long = "mention")]
        mentions: Vec<String>,
    },
    /// React to a message with an emoji (or take the reaction back with --remove).
    React {
        #[command(flatten)]
        client: ClientArgs,
        /// The room.
        room: String,
        /// The message's id.
        message: String,
        /// The reaction, e.g. 👍.
        emoji: String,
        /// Take the reaction back.
        #[arg(long)]
        remove: bool,
    },
    /// Give one of your messages a new text (the original stays in the log).
    Edit {
        #[command(flatten)]
        client: ClientArgs,
        /// The room.
        room: String,
        /// The message's id.
        message: String,
        /// The new text; `-` reads it from standard input.
        text: String,
    },
    /// Take one of your messages back: nobody is shown its text any more (it stays in the
    /// log, signed, as everything does).
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        /// The room.
        room: String,
        /// The message's id.
        message: String,
    },
    /// The messages that hold every word of QUERY (whole words, any case), newest first.
    Search {
        #[command(flatten)]
        client: ClientArgs,
        /// The words.
        query: String,
        /// Only this room (default: every room).
        #[arg(long)]
        room: Option<String>,
        /// Most messages (default 50).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Block a writer (an author, as `peerlog status --json` members and the UI show it):
    /// nothing of theirs is stored, passed on or shown any more, in ROOM or in every room.
    Block {
        #[command(flatten)]
        client: ClientArgs,
        /// The writer key (64 hex digits).
        author: String,
        /// Only in this room (default: every room).
        #[arg(long)]
        room: Option<String>,
        /// Lift the block instead.
        #[arg(long)]
        unblock: bool,
    },
    /// The joined rooms: id, name, peers online, entries stored.
    Rooms {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Leave a room: stop syncing it and delete its data on this machine.
    Leave {
        #[command(flatten)]
        client: ClientArgs,
        /// The room.
        room: String,
    },
    /// Remove a member from a room: everyone else moves to a new epoch of the room (new
    /// keys); the member removed cannot read or find what is written after.
    Remove {
        #[command(flatten)]
        client: ClientArgs,
        /// The room.
        room: String,
        /// The member: its writer key (`author` in `peerlog members --json`).
        member: String,
    },
    /// Name a member an admin of a room you created (admins may remove members), or, with
    /// --revoke, no longer.
    Admin {
        #[command(flatten)]
        client: ClientArgs,
        /// The room.
        room: String,
        /// The member: its writer key (`author` in `peerlog members --json`).
        member: String,
        /// Take the role back.
        #[arg(long)]
        revoke: bool,
    },
    /// Your devices; link a new one (`link` here, then `accept CODE` there) or unlink one.
    Devices {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        action: Option<DevicesAction>,
    },
    /// A room's members: names, whether they are online, safety numbers, blocks.
    Members {
        #[command(flatten)]
        client: ClientArgs,
        /// The room.
        room: String,
    },
    /// How strong a passphrase is (read from standard input), for this daemon's network.
    CheckPassphrase {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Send many messages as one batch: one message per line of standard input.
    SendBatch {
        #[command(flatten)]
        client: ClientArgs,
        /// The room.
        room: String,
    },
    /// Peers with a replication session now, in one room or all.
    Peers {
        #[command(flatten)]
        client: ClientArgs,
        /// Only this room.
        #[arg(long)]
        room: Option<String>,
    },
    /// Set your display name, announced in every room you write in.
    Name {
        #[command(flatten)]
        client: ClientArgs,
        /// The name (1 to 64 bytes).
        name: String,
    },
    /// Give a writer (an author) a nickname that only you see; an empty one clears it.
    Rename {
        #[command(flatten)]
        client: ClientArgs,
        /// The writer key (64 hex digits).
        author: String,
        /// The nickname.
        nickname: String,
    },
    /// Mark a writer's safety number as compared with them (--undo: not compared).
    Verify {
        #[command(flatten)]
        client: ClientArgs,
        /// The writer key (64 hex digits).
        author: String,
        /// Take the mark back.
        #[arg(long)]
        undo: bool,
    },
    /// The safety number you and a writer share in a room, to compare out of band.
    Safety {
        #[command(flatten)]
        client: ClientArgs,
        /// The room.
        room: String,
        /// The writer key (64 hex digits).
        author: String,
        /// Also write its QR code (SVG) to this file.
        #[arg(long, value_name = "FILE")]
        qr: Option<PathBuf>,
    },
    /// The writers blocked in a room, or (without --room) in every room.
    Blocked {
        #[command(flatten)]
        client: ClientArgs,
        /// This room.
        #[arg(long)]
        room: Option<String>,
    },
    /// A download URL for a shared file that works for 5 minutes without a credential.
    FileUrl {
        #[command(flatten)]
        client: ClientArgs,
        /// The room.
        room: String,
        /// The file message's id.
        message: String,
        /// For showing in a page (an image) rather than saving.
        #[arg(long)]
        inline: bool,
    },
    /// Back up what cannot be fetched again from peers: the node's identity, every room's
    /// secret and your writer key in it, contacts, blocks, your display name; sealed with a
    /// passphrase (read from standard input). Never the logs: peers serve them again.
    Backup {
        #[command(flatten)]
        client: ClientArgs,
        /// Where to write it (must not exist; written 0600).
        file: PathBuf,
    },
    /// Restore a backup into a fresh data dir (no daemon running there; the passphrase is
    /// read from standard input). Start the daemon afterwards: it rejoins every room and
    /// catches up from the rooms' peers, your own messages first.
    Restore {
        #[command(flatten)]
        client: ClientArgs,
        /// The backup file.
        file: PathBuf,
    },
    /// Export a room's readable history: one JSON object per message, oldest first.
    Export {
        #[command(flatten)]
        client: ClientArgs,
        /// The room.
        room: String,
    },
    /// Print completions for a shell (bash, zsh, fish, elvish, powershell), e.g.
    /// `peerlog completions bash > /etc/bash_completion.d/peerlog`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `peerlog man | man -l -`.
    Man,
    /// Share a file with a room (the daemon reads it; prints the file message's id).
    SendFile {
        #[command(flatten)]
        client: ClientArgs,
        /// The room.
        room: String,
        /// The file.
        path: PathBuf,
    },
    /// Fetch a shared file (by its message id, as `tail` prints it) and save it to PATH.
    GetFile {
        #[command(flatten)]
        client: ClientArgs,
        /// The room.
        room: String,
        /// The file message's id.
        message: String,
        /// Where to save it (must not exist).
        path: PathBuf,
    },
    /// Print a room's recent messages; with --follow, keep printing new ones.
    Tail {
        #[command(flatten)]
        client: ClientArgs,
        /// The room.
        room: String,
        /// Keep running and print messages as they arrive.
        #[arg(short, long)]
        follow: bool,
        /// How many recent messages to print first.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// Print the whole history (paged from the newest back), oldest first.
        #[arg(long, conflicts_with = "lines")]
        all: bool,
    },
    /// Print every event the daemon pushes (messages, peers joining and leaving, connection
    /// changes), one JSON-RPC notification per line, until interrupted. The first line,
    /// `{"jsonrpc":"2.0","method":"subscribed",…}`, says that events flow from then on.
    Events {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the API's OpenRPC document (JSON): every method's params and result, and every
    /// event's params, as JSON Schema. The daemon serves the same at `/api/openrpc.json`.
    Openrpc,
    /// The API token (`<data>/api-token`): with `--rotate`, replace it. Browsers signed in
    /// with the old one (their session cookie) and scripts using it are signed out;
    /// `peerlog open` gives the new link.
    Token {
        /// Replace the token by a new one (needs the CLI credential, as the CLI has).
        #[arg(long)]
        rotate: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Measure this build on loopback with real daemons (separate processes in temporary
    /// data dirs): appends, live latency, catch-up, memory and disk. Takes a minute or two.
    Bench {
        /// Messages in the catch-up room.
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        /// Messages in the big catch-up room, which also gives the memory and disk figures
        /// (0 skips it).
        #[arg(long, default_value_t = 1_000_000)]
        big: u64,
        /// Runs of the latency and catch-up figures (median and range are printed).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Size in MiB of the file sent from one daemon to the other (0 skips it).
        #[arg(long, default_value_t = 200)]
        file_mib: u64,
        /// Instead: this many daemons in one room, each sending one message (time per send,
        /// time until all hold all, sessions, CPU, frames per message, RSS).
        #[arg(long)]
        room_size: Option<usize>,
    },
    /// Check connectivity (bootstrap nodes, DHT, NAT, relay), say what to do, and exit
    /// non-zero if a check fails.
    Doctor {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the node, its rooms and connected room peers.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
struct DaemonArgs {
    /// Config file (TOML). Default: $XDG_CONFIG_HOME/peerlog/config.toml if it exists.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory. Default: $XDG_DATA_HOME/peerlog.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Local API and web UI address (port 0: any free port, written to <data>/api-port).
    #[arg(long, value_name = "HOST:PORT")]
    api_listen: Option<SocketAddr>,
    /// libp2p listen address; repeat for several. Default: TCP and QUIC on all interfaces.
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// Bootstrap peer with /p2p/PEERID; repeat for several.
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
    /// public: also join the public libp2p DHT (the default); private: never contact it,
    /// use only the bootstrap nodes, mDNS and room peers.
    #[arg(long, value_name = "NETWORK")]
    network: Option<Network>,
    /// Do not discover peers on the LAN with mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// Allow --api-listen beyond loopback: whoever reaches it with the token reads every
    /// room and writes as you, over plain HTTP.
    #[arg(long)]
    insecure_remote_api: bool,
    /// DHT mode: auto (server once publicly reachable), server or client.
    #[arg(long, value_name = "MODE")]
    dht_mode: Option<DhtMode>,
    /// Serve circuit relay v2 reservations: auto (once publicly reachable), on or off.
    #[arg(long, value_name = "MODE")]
    relay_server: Option<RelayServerMode>,
    /// An address this node is reachable at from the internet; repeat for several.
    #[arg(long, value_name = "MULTIADDR")]
    external_address: Vec<Multiaddr>,
    /// Log lines on stderr: text, json (one object per line), or auto: text, without
    /// timestamps under systemd (the journal stamps each line itself). Which lines: RUST_LOG
    /// (e.g. `info`, `peerlog=debug,libp2p=warn`).
    #[arg(long, value_enum, env = "PEERLOG_LOG_FORMAT", default_value = "auto")]
    log_format: LogFormat,
}

/// See `peerlog daemon --log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Auto,
    Text,
    Json,
}

#[derive(Args, Clone)]
struct ClientArgs {
    /// Data directory of the daemon (to find its API port and token).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// API address of the daemon. Default: 127.0.0.1 and the port in <data>/api-port.
    #[arg(long, value_name = "HOST:PORT", global = true)]
    api: Option<SocketAddr>,
    /// API token. Default: $PEERLOG_TOKEN, else <data>/cli-token (the CLI credential, which
    /// may also name files on this machine), else <data>/api-token.
    #[arg(long, env = "PEERLOG_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

impl ClientArgs {
    fn data_dir(&self) -> Result<PathBuf> {
        let mut config = Config::load(None)?;
        if let Some(d) = &self.data_dir {
            config.data_dir = Some(d.clone());
        }
        Ok(config.resolved_data_dir()?)
    }

    /// The API address and the CLI's credential: `--token`/`$PEERLOG_TOKEN`, else the CLI
    /// credential, else the API token.
    fn endpoint(&self) -> Result<(SocketAddr, String)> {
        // Where first: no port file means no daemon there, whatever the tokens say.
        let addr = self.api_addr()?;
        if self.token.is_none() {
            if let Ok(t) = std::fs::read_to_string(self.data_dir()?.join("cli-token")) {
                return Ok((addr, t.trim().to_string()));
            }
        }
        self.ui_endpoint()
    }

    /// The API address and the API token (what a browser gets).
    fn ui_endpoint(&self) -> Result<(SocketAddr, String)> {
        let addr = self.api_addr()?;
        let token = match &self.token {
            Some(t) => t.clone(),
            None => {
                let path = self.data_dir()?.join("api-token");
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "cannot read the API token at {} (is the daemon running? use --data-dir; for the \
                             system service: --data-dir /var/lib/peerlog, as a member of the peerlog group)",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_string()
            }
        };
        Ok((addr, token))
    }

    fn api_addr(&self) -> Result<SocketAddr> {
        Ok(match self.api {
            Some(a) => a,
            None => {
                let path = self.data_dir()?.join("api-port");
                let port: u16 = std::fs::read_to_string(&path)
                    .map_err(|e| -> anyhow::Error {
                        if e.kind() == std::io::ErrorKind::PermissionDenied {
                            return Refused(format!(
                                "cannot read {}: {e} (for the system service: be a member of the peerlog group)",
                                path.display()
                            ))
                            .into();
                        }
                        Unreachable(format!("cannot read {} (is the daemon running? --data-dir?): {e}", path.display()))
                            .into()
                    })?
                    .trim()
                    .parse()
                    .context("api-port does not hold a port number")?;
                SocketAddr::from(([127, 0, 0, 1], port))
            }
        })
    }

    async fn connect(&self) -> Result<Client> {
        let (addr, token) = self.endpoint()?;
        Client::connect(addr, &token).await.map_err(|e| {
            use tokio_tungstenite::tungstenite::Error as WsError;
            match &e {
                peerlog::client::ClientError::Ws(ws) if matches!(**ws, WsError::Http(ref r) if r.status().as_u16() == 401 || r.status().as_u16() == 403) => {
                    Refused(format!("the daemon at {addr} refused the credential (a rotated token? --token, --data-dir)")).into()
                }
                _ => Unreachable(format!("cannot reach the daemon's API at {addr}: {e}")).into(),
            }
        })
    }
}

/// Writes (replacing) a 0600 HTML file that sends the browser to `url`.
fn write_redirect(path: &std::path::Path, url: &str) -> Result<()> {
    let html = format!(
        "<!doctype html>\n<meta charset=\"utf-8\">\n<meta name=\"referrer\" content=\"no-referrer\">\n\
         <meta http-equiv=\"refresh\" content=\"0;url={url}\">\n<title>peerlog</title>\n\
         <p><a href=\"{url}\">Open peerlog</a></p>\n<script>location.replace({url:?});</script>\n"
    );
    let _ = std::fs::remove_file(path);
    peerlog::keys::write_secret_file(path, html.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(exit_code(&e))
        }
    }
}

/// The daemon could not be reached: it does not run, or not where we look.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unreachable(String);

/// The daemon refused what we asked (the credential, say).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

/// What was given is not valid (an invite that is not one, say).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Invalid(String);

/// The exit code of a failure, by its kind (see [`EXIT_CODES`]).
fn exit_code(e: &anyhow::Error) -> u8 {
    use peerlog::client::ClientError;
    use peerlog_proto::api::codes;
    for cause in e.chain() {
        if cause.downcast_ref::<Unreachable>().is_some() {
            return 3;
        }
        if cause.downcast_ref::<Refused>().is_some() {
            return 6;
        }
        if cause.downcast_ref::<Invalid>().is_some() {
            return 5;
        }
        match cause.downcast_ref::<ClientError>() {
            Some(ClientError::Rpc { code, .. }) => {
                return match *code {
                    codes::ROOM_NOT_FOUND | codes::NOT_FOUND => 4,
                    codes::INVALID_PARAMS
                    | codes::INVALID_REQUEST
                    | codes::PARSE_ERROR
                    | codes::METHOD_NOT_FOUND
                    | codes::TOO_LARGE
                    | codes::BAD_INVITE
                    | codes::WEAK_PASSPHRASE => 5,
                    codes::LOCAL_ONLY | codes::SEEDER_ONLY | codes::NOT_ADMIN => 6,
                    codes::UNAVAILABLE | codes::UPLOAD_INCOMPLETE | codes::SHUTTING_DOWN => 7,
                    _ => 1,
                }
            }
            Some(ClientError::Ws(_) | ClientError::Closed | ClientError::ClosedWith { .. }) => return 3,
            _ => {}
        }
    }
    1
}

async fn run(cli: Cli) -> Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Daemon(args) => run_daemon(args).await,
        Command::Bench { messages, big, rounds, file_mib, room_size } => {
            let exe = std::env::current_exe()?;
            let progress = |step: &str| eprintln!("bench: {step}");
            let (figures, text) = if let Some(size) = room_size {
                let figures = peerlog::bench::room(&peerlog::bench::RoomOptions { exe, size }, progress).await?;
                let text = peerlog::bench::render_room(&figures);
                (figures, text)
            } else {
                let opts = peerlog::bench::BenchOptions { exe, messages, big, rounds, file_mib };
                let figures = peerlog::bench::run(&opts, progress).await?;
                let text = peerlog::bench::render(&figures);
                (figures, text)
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&figures)?);
            } else {
                print!("{text}");
            }
            Ok(())
        }
        Command::Open { client, invite, no_browser } => {
            let (addr, token) = client.ui_endpoint()?;
            let mut url = format!("http://{addr}/#token={token}");
            if let Some(invite) = &invite {
                let invite = peerlog::keys::Invite::parse(invite).map_err(|e| Invalid(e.to_string()))?;
                url.push_str("&join=");
                url.push_str(&invite.to_text());
            }
            println!("{url}");
            // The browser gets a 0600 file that redirects to the link (as Jupyter does): a
            // command line is readable by every user in /proc/*/cmdline, a token in it leaks.
            // In the data dir, or (a system service's, which is not ours to write) in our
            // own runtime dir.
            let mut redirect = client.data_dir()?.join("open.html");
            if write_redirect(&redirect, &url).is_err() {
                let own = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
                // SAFETY: getuid has no preconditions and cannot fail.
                redirect = own.join(format!("peerlog-open-{}.html", unsafe { libc::getuid() }));
                write_redirect(&redirect, &url)?;
            }
            // A link clicked elsewhere (the `peerlog:` handler) has no terminal to print to.
            if !no_browser && (std::io::stdout().is_terminal() || invite.is_some()) {
                let _ = std::process::Command::new("xdg-open")
                    .arg(&redirect)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn();
            }
            Ok(())
        }
        Command::Join { client, passphrase, invite, name, i_know_it_is_weak } => {
            let mut params = rooms::JoinParams { name, weak_ok: i_know_it_is_weak, ..Default::default() };
            match (passphrase, invite) {
                (_, Some(invite)) => params.invite = Some(invite),
                (Some(p), None) => params.passphrase = Some(p),
                (None, None) => {
                    if std::io::stdin().is_terminal() {
                        eprint!("passphrase: ");
                    }
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line)?;
                    let p = line.trim_end_matches(['\n', '\r']).to_string();
                    if p.is_empty() {
                        bail!("no passphrase given");
                    }
                    params.passphrase = Some(p);
                }
            }
            let mut c = client.connect().await?;
            let r = c.request::<rooms::Join>(&params).await?;
            if let Some(w) = r.warning {
                eprintln!("warning: {w}");
            }
            println!("{}\t{}", r.room.id, r.room.name);
            c.close().await.ok();
            Ok(())
        }
        Command::Create { client, name } => {
            let mut c = client.connect().await?;
            let r = c.request::<rooms::Create>(&rooms::CreateParams { name }).await?;
            println!("{}\t{}", r.room.id, r.room.name);
            println!("invite: {}", r.invite.unwrap_or_default());
            c.close().await.ok();
            Ok(())
        }
        Command::Invite { client, room, seed } => {
            let mut c = client.connect().await?;
            let kind = if seed { "seed" } else { "member" };
            let r = c.request::<rooms::Invite>(&rooms::InviteParams { room, kind: Some(kind.into()) }).await?;
            println!("{}", r.invite);
            c.close().await.ok();
            Ok(())
        }
        Command::Seed { client, capability, name } => {
            let mut c = client.connect().await?;
            let r = c.request::<rooms::Seed>(&rooms::SeedParams { capability, name }).await?;
            println!("{}\t{}\tseeding", r.room.id, r.room.name);
            c.close().await.ok();
            Ok(())
        }
        Command::Block { client, author, room, unblock } => {
            let mut c = client.connect().await?;
            let params = peers::PeerRoomParams { peer: author.clone(), room: room.clone() };
            if unblock {
                c.request::<peers::Unblock>(&params).await?;
            } else {
                c.request::<peers::Block>(&params).await?;
            }
            let scope = room.map_or("every room".to_string(), |r| format!("room {r}"));
            println!("{} {author} in {scope}", if unblock { "unblocked" } else { "blocked" });
            c.close().await.ok();
            Ok(())
        }
        Command::Send { client, room, text, reply_to, mentions } => {
            let text = text_arg(text)?;
            let mut c = client.connect().await?;
            let r = c.request::<messages::Send>(&messages::SendParams { room, text, reply_to, mentions }).await?;
            c.close().await.ok();
            print_out(json, &r, || println!("{}", r.message.as_ref().map(|m| m.id.as_str()).unwrap_or_default()))
        }
        Command::React { client, room, message, emoji, remove } => {
            let mut c = client.connect().await?;
            let p = messages::ReactParams { room, message, emoji, on: !remove };
            let r = c.request::<messages::React>(&p).await?;
            c.close().await.ok();
            print_update(json, &r)
        }
        Command::Edit { client, room, message, text } => {
            let text = text_arg(text)?;
            let mut c = client.connect().await?;
            let r = c.request::<messages::Edit>(&messages::EditParams { room, message, text }).await?;
            c.close().await.ok();
            print_update(json, &r)
        }
        Command::Delete { client, room, message } => {
            let mut c = client.connect().await?;
            let r = c.request::<messages::Delete>(&messages::DeleteParams { room, message }).await?;
            c.close().await.ok();
            print_update(json, &r)
        }
        Command::Search { client, query, room, limit } => {
            let mut c = client.connect().await?;
            let r = c.request::<messages::Search>(&messages::SearchParams { room, query, limit }).await?;
            c.close().await.ok();
            for m in &r.messages {
                print_message(m, json)?;
            }
            Ok(())
        }
        Command::SendBatch { client, room } => {
            let texts: Vec<String> = read_stdin()?.lines().filter(|l| !l.trim().is_empty()).map(String::from).collect();
            if texts.is_empty() {
                bail!("no lines on standard input: nothing to send");
            }
            let mut c = client.connect().await?;
            let r = c.request::<messages::SendBatch>(&messages::SendBatchParams { room, texts }).await?;
            c.close().await.ok();
            print_out(json, &r, || println!("sent {} messages: {} … {}", r.count, r.first, r.last))
        }
        Command::Rooms { client } => {
            let mut c = client.connect().await?;
            let r = c.request::<rooms::List>(&NoParams {}).await?;
            c.close().await.ok();
            print_out(json, &r, || {
                for room in &r.rooms {
                    let kind = match (&room.removed_by, &room.moved_to) {
                        _ if room.seeder => "  (seeding)".to_string(),
                        (Some(by), _) => format!("  (you were removed by {}; read-only)", &by[..16]),
                        (None, Some(to)) => format!("  (moved on to {to}; read-only)"),
                        (None, None) => String::new(),
                    };
                    println!(
                        "{}\t{}\t{} peer(s)\t{} entries{kind}",
                        room.id,
                        printable(&room.name),
                        room.peers,
                        room.entries_stored
                    );
                }
            })
        }
        Command::Leave { client, room } => {
            let mut c = client.connect().await?;
            let r = c.request::<rooms::Leave>(&rooms::RoomParam { room: room.clone() }).await?;
            c.close().await.ok();
            print_out(json, &r, || println!("left {room}; its data here is deleted"))
        }
        Command::Remove { client, room, member } => {
            let mut c = client.connect().await?;
            let r = c.request::<rooms::Remove>(&rooms::RemoveParams { room, member }).await?;
            c.close().await.ok();
            print_out(json, &r, || {
                println!("removed {}; the room moved on to {} (new keys)", r.removed, r.room.id);
            })
        }
        Command::Admin { client, room, member, revoke } => {
            let mut c = client.connect().await?;
            let params = rooms::AdminParams { room, member: member.clone(), admin: !revoke };
            let r = c.request::<rooms::Admin>(&params).await?;
            c.close().await.ok();
            print_out(json, &r, || {
                let what = if revoke { "is no longer an admin of" } else { "is now an admin of" };
                println!("{member} {what} {} ({} admins)", r.id, 1 + r.admins.len());
            })
        }
        Command::Devices { client, action } => {
            let mut c = client.connect().await?;
            match action {
                None => {
                    let r = c.request::<devices::List>(&NoParams {}).await?;
                    c.close().await.ok();
                    print_out(json, &r, || {
                        if let Some(person) = &r.person {
                            println!("person {person}");
                        }
                        for d in &r.devices {
                            let mut notes = Vec::new();
                            if d.this {
                                notes.push("this device");
                            }
                            if d.holds_person_key {
                                notes.push("holds the person key");
                            }
                            if d.unlinked {
                                notes.push("unlinked");
                            }
                            println!("{}	{}	{}", d.device, d.peer_id, notes.join(", "));
                        }
                    })
                }
                Some(DevicesAction::Link) => {
                    let r = c.request::<devices::Link>(&NoParams {}).await?;
                    c.close().await.ok();
                    print_out(json, &r, || {
                        println!("{}", r.code);
                        eprintln!("on the new device, within 10 minutes: peerlog devices accept {}", r.code);
                    })
                }
                Some(DevicesAction::Accept { code }) => {
                    let r = c.request::<devices::Accept>(&devices::AcceptParams { code }).await?;
                    c.close().await.ok();
                    print_out(json, &r, || {
                        println!("linked to person {}; joined {} rooms", r.person, r.rooms.len());
                        for room in &r.rooms {
                            println!("{}	{}", room.id, printable(&room.name));
                        }
                    })
                }
                Some(DevicesAction::Unlink { device }) => {
                    let r = c.request::<devices::Unlink>(&devices::UnlinkParams { device }).await?;
                    c.close().await.ok();
                    print_out(json, &r, || {
                        for room in &r.rooms {
                            let how = if room.removed_here { "removed" } else { "the room's admin removes it" };
                            println!("{}	{how}", room.room);
                        }
                        println!("unlinked {} from {} rooms", r.device, r.rooms.len());
                    })
                }
            }
        }
        Command::Members { client, room } => {
            let mut c = client.connect().await?;
            let r = c.request::<peers::Members>(&rooms::RoomParam { room }).await?;
            c.close().await.ok();
            print_out(json, &r, || {
                for m in &r.members {
                    let name = m.nickname.as_ref().or(m.display_name.as_ref()).map_or("", String::as_str);
                    let state = match (m.mine, m.presence.online) {
                        (true, _) => "me",
                        (false, true) => "online",
                        (false, false) => "offline",
                    };
                    let mut notes = Vec::new();
                    if m.verified {
                        notes.push("verified".to_string());
                    }
                    if m.blocked {
                        notes.push("blocked".to_string());
                    }
                    if m.devices.len() > 1 {
                        notes.push(format!("{} devices", m.devices.len()));
                    }
                    if let Some(n) = &m.safety_number {
                        notes.push(format!("safety {n}"));
                    }
                    println!(
                        "{}\t{}\t{state}\t{} messages\t{}",
                        m.author,
                        printable(name),
                        m.messages,
                        notes.join(", ")
                    );
                }
            })
        }
        Command::CheckPassphrase { client } => {
            let passphrase = prompt("passphrase: ")?;
            let mut c = client.connect().await?;
            let r = c.request::<rooms::CheckPassphrase>(&rooms::PassphraseParams { passphrase }).await?;
            c.close().await.ok();
            print_out(json, &r, || {
                println!("about {} bits (of at most {})", r.bits, r.max_bits);
                if let Some(w) = &r.warning {
                    println!("warning: {w}");
                }
            })
        }
        Command::Peers { client, room } => {
            let mut c = client.connect().await?;
            let r = c.request::<peers::List>(&peers::OptRoomParam { room }).await?;
            c.close().await.ok();
            print_out(json, &r, || {
                for p in &r.peers {
                    let kind = p.connection.map_or("?".to_string(), |k| format!("{k:?}").to_lowercase());
                    let rtt = p.rtt_ms.map_or(String::new(), |ms| format!("{ms:.0} ms"));
                    println!("{}\t{kind}\t{rtt}\t{}", p.peer_id, p.rooms.join(","));
                }
            })
        }
        Command::Name { client, name } => {
            let mut c = client.connect().await?;
            let r = c.request::<peers::SetProfile>(&peers::ProfileParams { display_name: name }).await?;
            c.close().await.ok();
            print_out(json, &r, || println!("you are {} (announced in {} rooms)", printable(&r.display_name), r.rooms))
        }
        Command::Rename { client, author, nickname } => {
            let mut c = client.connect().await?;
            let params = peers::ContactParams { peer: author, room: None, nickname: Some(nickname), verified: None };
            let r = c.request::<peers::Rename>(&params).await?;
            c.close().await.ok();
            print_out(json, &r, || match &r.nickname {
                Some(n) => println!("{} is {} to you", r.peer, printable(n)),
                None => println!("{} has no nickname", r.peer),
            })
        }
        Command::Verify { client, author, undo } => {
            let mut c = client.connect().await?;
            let params = peers::ContactParams { peer: author, room: None, nickname: None, verified: Some(!undo) };
            let r = c.request::<peers::Verify>(&params).await?;
            c.close().await.ok();
            print_out(json, &r, || println!("{} {}", r.peer, if r.verified { "verified" } else { "not verified" }))
        }
        Command::Safety { client, room, author, qr } => {
            let mut c = client.connect().await?;
            let r = c.request::<peers::Safety>(&peers::PeerRoomParams { peer: author, room: Some(room) }).await?;
            c.close().await.ok();
            if let (Some(path), Some(svg)) = (&qr, &r.qr_svg) {
                std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))?;
            }
            print_out(json, &r, || println!("{}", r.safety_number))
        }
        Command::Blocked { client, room } => {
            let mut c = client.connect().await?;
            let r = c.request::<peers::Blocked>(&peers::OptRoomParam { room }).await?;
            c.close().await.ok();
            print_out(json, &r, || r.blocked.iter().for_each(|b| println!("{b}")))
        }
        Command::FileUrl { client, room, message, inline } => {
            let mut c = client.connect().await?;
            let r = c.request::<files::Url>(&files::FileUrlParams { room, file: message, inline }).await?;
            c.close().await.ok();
            let addr = client.api_addr()?;
            print_out(json, &r, || println!("http://{addr}{}", r.url))
        }
        Command::Backup { client, file } => {
            if file.exists() {
                bail!("{} exists: a backup never replaces a file", file.display());
            }
            let passphrase = prompt("passphrase to seal the backup with: ")?;
            let mut c = client.connect().await?;
            let r = c.request::<node::CreateBackup>(&node::BackupParams { passphrase }).await?;
            c.close().await.ok();
            let bytes =
                data_encoding::BASE64.decode(r.backup.as_bytes()).context("the daemon sent a damaged backup")?;
            peerlog::keys::write_secret_file(&file, &bytes)
                .with_context(|| format!("cannot write {}", file.display()))?;
            print_out(json, &serde_json::json!({"file": file, "rooms": r.rooms}), || {
                println!(
                    "backup of {} room(s) written to {}; keep it and its passphrase apart",
                    r.rooms,
                    file.display()
                )
            })
        }
        Command::Restore { client, file } => {
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let passphrase = prompt("the backup's passphrase: ")?;
            let data_dir = client.data_dir()?;
            let backup = peerlog::backup::Backup::open(&bytes, &passphrase)?;
            backup.restore(&data_dir)?;
            let rooms = backup.rooms.len();
            print_out(json, &serde_json::json!({"data_dir": data_dir, "rooms": rooms}), || {
                println!(
                    "restored {rooms} room(s) into {}: start the daemon (peerlog daemon --data-dir …), it rejoins them and catches up",
                    data_dir.display()
                )
            })
        }
        Command::Export { client, room } => {
            let mut c = client.connect().await?;
            let history = whole_history(&mut c, &room).await?;
            c.close().await.ok();
            for m in history {
                println!("{}", serde_json::to_string(&m)?);
            }
            Ok(())
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "peerlog",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man => {
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
        Command::SendFile { client, room, path } => {
            let path = std::path::absolute(&path)?;
            let mut c = client.connect().await?;
            let params =
                files::SendFileParams { room, path: Some(path.to_string_lossy().into_owned()), ..Default::default() };
            let r = c.request::<files::SendFile>(&params).await?;
            println!("{}", r.file.message);
            c.close().await.ok();
            Ok(())
        }
        Command::GetFile { client, room, message, path } => {
            let path = std::path::absolute(&path)?;
            let mut c = client.connect().await?;
            let params = files::GetFileParams {
                room,
                file: message,
                path: Some(path.to_string_lossy().into_owned()),
                stream: false,
            };
            let r = c.request::<files::GetFile>(&params).await?;
            println!("saved {} ({} bytes) to {}", r.file.name, r.file.size, path.display());
            c.close().await.ok();
            Ok(())
        }
        Command::Tail { client, room, follow, lines, all } => {
            let mut c = client.connect().await?;
            let room_id = c
                .request::<rooms::List>(&NoParams {})
                .await?
                .rooms
                .into_iter()
                .find(|x| x.id == room || x.name == room || (room.len() >= 4 && x.id.starts_with(&room)))
                .map(|x| x.id)
                .with_context(|| format!("no joined room matches {room:?}"))?;
            let history =
                |limit: usize| messages::HistoryParams { room: room_id.clone(), before: None, limit: Some(limit) };
            // The id of the newest message printed: after missed events (`lagged`), the
            // history from there on is printed, nothing twice.
            let mut last: Option<String> = None;
            let page = if all {
                whole_history(&mut c, &room_id).await?
            } else if lines > 0 {
                c.request::<messages::History>(&history(lines.min(1000))).await?.messages
            } else {
                Vec::new()
            };
            for m in &page {
                print_message(m, json)?;
                last = Some(m.id.clone());
            }
            if follow {
                loop {
                    let e = c.next_event().await?;
                    if let Some(m) = e.decode::<events::Message>() {
                        let m = m.context("a message event that is not a message")?;
                        if m.room == room_id {
                            print_message(&m, json)?;
                            last = Some(m.id);
                        }
                    } else if let Some(lagged) = e.decode::<events::Lagged>() {
                        let missed = lagged.map_or(0, |l| l.missed);
                        eprintln!("(fell behind and missed {missed} events; catching up from the history)");
                        let page = c.request::<messages::History>(&history(1000)).await?.messages;
                        let from =
                            last.as_ref().and_then(|id| page.iter().position(|m| &m.id == id)).map_or(0, |i| i + 1);
                        for m in &page[from..] {
                            print_message(m, json)?;
                        }
                        if let Some(m) = page.last() {
                            last = Some(m.id.clone());
                        }
                    }
                }
            }
            c.close().await.ok();
            Ok(())
        }
        Command::Token { rotate: false, client } => {
            println!("{}", client.data_dir()?.join("api-token").display());
            Ok(())
        }
        Command::Token { rotate: true, client } => {
            let mut c = client.connect().await?;
            let r = c.request::<node::RotateToken>(&NoParams {}).await?;
            c.close().await.ok();
            println!("The API token in {} is new: browsers and scripts using the old one are signed out.", r.path);
            println!("Open the web UI again with `peerlog open`.");
            Ok(())
        }
        Command::Openrpc => {
            println!("{}", serde_json::to_string_pretty(&peerlog_proto::api::openrpc::document())?);
            Ok(())
        }
        Command::Events { client } => {
            let mut c = client.connect().await?;
            // Tell scripts that events flow from here on.
            println!("{}", serde_json::to_string(&peerlog_proto::api::Event::new("subscribed", json!({})))?);
            loop {
                let e = c.next_event().await?;
                println!("{}", serde_json::to_string(&e)?);
            }
        }
        Command::Doctor { client } => {
            let mut c = client.connect().await?;
            let r = c.request::<node::Doctor>(&NoParams {}).await?;
            c.close().await.ok();
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for check in &r.checks {
                    println!("{} {:<13} {}", if check.ok { "ok  " } else { "FAIL" }, check.name, check.detail);
                    if !check.advice.is_empty() {
                        println!("     {:<13} → {}", "", check.advice);
                    }
                }
            }
            if !r.ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Status { client } => {
            let mut c = client.connect().await?;
            let node = c.request::<node::Info>(&NoParams {}).await?;
            let rooms = c.request::<rooms::List>(&NoParams {}).await?.rooms;
            let peers = c.request::<peers::List>(&peers::OptRoomParam::default()).await?.peers;
            c.close().await.ok();
            if json {
                println!("{}", serde_json::to_string_pretty(&json!({"node": node, "rooms": rooms, "peers": peers}))?);
                return Ok(());
            }
            println!("peer id:    {}", node.peer_id);
            println!("version:    {}", node.version);
            println!("NAT status: {}", node.nat_status);
            println!("reachable:  {}", node.reachability);
            println!(
                "DHT:        {} mode, {} peer(s); {} of {} bootstrap node(s) connected",
                node.dht_mode, node.dht_peers, node.bootstrap_connected, node.bootstrap_peers
            );
            match node.public_dht_peers {
                Some(n) => println!("network:    public (public libp2p DHT: {n} peer(s), client mode)"),
                None => println!("network:    private (no public DHT)"),
            }
            println!(
                "relays:     {} reservation(s), {} of them on peerlog relays",
                node.relays.len(),
                node.peerlog_relays.len()
            );
            for w in &node.warnings {
                println!("warning:    {w}");
            }
            for a in &node.listen_addrs {
                println!("listening:  {a}");
            }
            for a in &node.external_addrs {
                println!("external:   {a}");
            }
            println!("connected:  {} peer(s)", node.connected_peers);
            println!("rooms:");
            for r in &rooms {
                println!("  {}  {}  ({} peer(s))", r.id, r.name, r.peers);
            }
            println!("room peers:");
            for p in &peers {
                let rtt = p.rtt_ms.map(|r| format!("{r:.1} ms")).unwrap_or_else(|| "-".into());
                let connection = match p.connection {
                    Some(node::ConnectionKind::Direct) => "direct",
                    Some(node::ConnectionKind::Holepunched) => "holepunched",
                    Some(node::ConnectionKind::Relayed) => "relayed",
                    None => "?",
                };
                println!("  {}  {}  rtt {}  rooms {}", p.peer_id, connection, rtt, serde_json::to_string(&p.rooms)?);
            }
            Ok(())
        }
    }
}

/// A room's whole history, oldest first: paged back from the newest until a page is empty.
async fn whole_history(c: &mut Client, room: &str) -> Result<Vec<messages::MessageInfo>> {
    let mut pages: Vec<Vec<messages::MessageInfo>> = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let params = messages::HistoryParams { room: room.to_string(), before: before.clone(), limit: Some(1000) };
        let page = c.request::<messages::History>(&params).await?.messages;
        let Some(first) = page.first() else { break };
        before = Some(first.id.clone());
        pages.push(page);
    }
    Ok(pages.into_iter().rev().flatten().collect())
}

/// Prints `value` as JSON with `--json`, else runs `text`.
fn print_out<T: serde::Serialize>(json: bool, value: &T, text: impl FnOnce()) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        text();
    }
    Ok(())
}

/// A text argument; `-` reads standard input (all of it, without the final newline).
fn text_arg(text: String) -> Result<String> {
    Ok(if text == "-" { read_stdin()?.trim_end_matches(['\n', '\r']).to_string() } else { text })
}

/// A message after an edit, deletion or reaction.
fn print_update(json: bool, r: &messages::UpdateResult) -> Result<()> {
    if let Some(m) = &r.message {
        print_message(m, json)?;
    }
    Ok(())
}

/// All of standard input.
fn read_stdin() -> Result<String> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)?;
    Ok(text)
}

/// One line of standard input (asking with `label` on a terminal), without its end.
fn prompt(label: &str) -> Result<String> {
    if std::io::stdin().is_terminal() {
        eprint!("{label}");
    }
    read_line()
}

/// One line of standard input, without its end.
fn read_line() -> Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// `ms` since the epoch as a local date and time (`2026-11-29 14:03:07`).
fn local_time(ms: u64) -> String {
    let secs = (ms / 1000) as libc::time_t;
    // SAFETY: localtime_r writes only into `tm`, which lives on this stack frame; a zeroed
    // `tm` is a valid value of the plain C struct.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&secs, &mut tm).is_null() {
            return format!("{} s", ms / 1000);
        }
        tm
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

fn print_message(m: &messages::MessageInfo, as_json: bool) -> Result<()> {
    if as_json {
        println!("{}", serde_json::to_string(m)?);
        return Ok(());
    }
    let time = local_time(m.time);
    // "me", the display name, or the start of the author key.
    let who = |mine: bool, name: &Option<String>, author: &str| match (mine, name) {
        (true, _) => "me".to_string(),
        (_, Some(name)) => name.clone(),
        _ => author.chars().take(8).collect(),
    };
    let body = match (&m.file, &m.text) {
        (Some(file), _) => {
            format!("[file {} · {} bytes · get it with: peerlog get-file ROOM {} PATH]", file.name, file.size, m.id)
        }
        _ if m.deleted => "[deleted]".to_string(),
        (None, text) => text.clone().unwrap_or_default(),
    };
    let mut notes = String::new();
    if let Some(to) = &m.reply_to {
        let name = who(to.mine, &to.author_name, &to.author);
        let quote: String = to.text.as_deref().unwrap_or("…").chars().take(40).collect();
        notes.push_str(&format!("(reply to {name}: \"{quote}\") "));
    }
    let mut after = String::new();
    if m.edited {
        after.push_str("  (edited)");
    }
    if !m.reactions.is_empty() {
        let shown: Vec<String> = m.reactions.iter().map(|r| format!("{} {}", r.emoji, r.count)).collect();
        after.push_str(&format!("  [{}]", shown.join(", ")));
    }
    let author = who(m.mine, &m.author_name, &m.author);
    println!("{time}  {}: {}{}{}", printable(&author), printable(&notes), printable(&body), printable(&after));
    Ok(())
}

/// Text from peers as a terminal may show it: C0 and C1 controls (escape sequences can
/// rewrite the screen, set the window title, or worse) and bidirectional overrides
/// (which make text read differently than it is) are dropped; newlines and tabs stay.
fn printable(s: &str) -> String {
    s.chars()
        .filter(|&c| {
            let control = (c.is_control() && c != '\n' && c != '\t') || ('\u{80}'..='\u{9f}').contains(&c);
            let bidi =
                matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            !control && !bidi
        })
        .collect()
}

async fn run_daemon(args: DaemonArgs) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,libp2p_mdns=warn,libp2p_kad=error"));
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => logs.json().init(),
        // The journal stamps every line: no second timestamp.
        LogFormat::Auto if journal => logs.with_ansi(false).without_time().init(),
        // Colour only on a terminal: log files get plain text.
        _ => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    // Files we create (database, keys) are ours alone.
    // SAFETY: umask only changes this process's file-creation mask; it cannot fail.
    unsafe { libc::umask(0o077) };

    let mut config = Config::load(args.config.as_deref())?;
    if let Some(d) = args.data_dir {
        config.data_dir = Some(d);
    }
    if let Some(a) = args.api_listen {
        config.api_listen = a;
    }
    if !args.listen.is_empty() {
        config.listen = args.listen;
    }
    if !args.bootstrap.is_empty() {
        config.bootstrap = args.bootstrap;
    }
    if let Some(n) = args.network {
        config.network = n;
    }
    if args.no_mdns {
        config.mdns = false;
    }
    if args.insecure_remote_api {
        config.insecure_remote_api = true;
    }
    if let Some(m) = args.dht_mode {
        config.dht_mode = m;
    }
    if let Some(m) = args.relay_server {
        config.relay_server = m;
    }
    if !args.external_address.is_empty() {
        config.external_addresses = args.external_address;
    }
    if !config.api_listen.ip().is_loopback() {
        if !config.insecure_remote_api {
            bail!(
                "api_listen {} is beyond loopback: whoever reaches it with the API token reads every room and writes as you, over plain HTTP. \
                 Keep it on 127.0.0.1 (use an SSH tunnel or a local reverse proxy), or pass --insecure-remote-api if you mean it",
                config.api_listen
            );
        }
        tracing::warn!(addr = %config.api_listen, "the API listens beyond loopback (--insecure-remote-api); only loopback Host names are accepted");
    }
    let lan_only = config.bootstrap.is_empty() && config.network == Network::Private;
    let public_bootstrap = (config.network == Network::Public).then_some(config.public_bootstrap.len());
    let daemon = Daemon::start(config).await?;
    let info = daemon.service().node_info().await?;
    println!("peer id: {}", info.peer_id);
    for a in &info.listen_addrs {
        println!("listening: {a}");
    }
    if lan_only {
        println!("warning: no bootstrap node is configured and network = private: this daemon finds room peers on its LAN only (mDNS); add one with --bootstrap (`peerlog doctor` checks connectivity)");
    }
    if let Some(n) = public_bootstrap {
        println!("network: public (joining the public libp2p DHT through {n} bootstrap node(s); --network private to stay off it)");
    }
    // Under systemd stdout goes to the journal: keep the token out of it.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        println!("web UI: http://{}/ (run `peerlog open` for the link with its token)", daemon.api_addr());
    } else {
        println!("web UI: {}", daemon.ui_url());
    }

    // The service manager (Type=notify): ready now; alive while the store and the node
    // answer (WatchdogSec=), so that a daemon that hangs is restarted.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status("running")]);
    let watchdog = sd_notify::watchdog_enabled().map(|every| {
        let service = daemon.service().clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every / 2);
            loop {
                tick.tick().await;
                let health = service.health().await;
                if health.ready() {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                } else {
                    tracing::error!(
                        ?health,
                        "not healthy: no watchdog ping (the service manager restarts a daemon that stays so)"
                    );
                }
            }
        })
    });
    // Once the network had time to settle, say plainly what keeps peers away, if anything.
    let service = daemon.service().clone();
    let settle = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        if let Ok(info) = service.node_info().await {
            for w in &info.warnings {
                tracing::warn!(reachability = %info.reachability, "{w}");
            }
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut failure = None;
    let mut bug = None;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
        e = daemon.storage_failed() => failure = Some(e),
        why = daemon.failed() => bug = Some(why),
    }
    settle.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("shutting down");
    let stopped = tokio::time::timeout(Duration::from_secs(20), daemon.shutdown()).await;
    if let Some(e) = failure {
        eprintln!("peerlog: storage failed, stopping: {e}");
        eprintln!("peerlog: free space or fix the disk, then start it again (a service manager restarts it)");
        // EX_TEMPFAIL: systemd's Restart=on-failure starts it again.
        std::process::exit(75);
    }
    if let Some(why) = bug {
        eprintln!("peerlog: {why} (a bug: the log above says where); stopping so that it restarts");
        // EX_SOFTWARE: systemd's Restart=on-failure starts it again.
        std::process::exit(70);
    }
    stopped.context("shutdown took longer than 20 s")??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn peers_text_reaches_the_terminal_without_controls() {
        assert_eq!(printable("\u{1b}]0;pwned\u{7}red \u{1b}[31mtext\u{9b}2J"), "]0;pwnedred [31mtext2J");
        assert_eq!(printable("abc\u{202e}fdp.exe"), "abcfdp.exe");
        assert_eq!(printable("two\nlines\tand tab, café"), "two\nlines\tand tab, café");
    }
}
