//! Mounts that outlive the agent: the flags that name the mount holder, and connecting
//! to it (starting one, detached, when none listens). The holder keeps each mount's
//! `/dev/fuse` connection while agents restart, crash or upgrade; see
//! docs/architecture.md, "Mounts that outlive the agent".

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use strata_holder::HolderClient;

use crate::cli_values::parse_duration;
use crate::fuse::Holder;
use crate::{Error, Result};

/// The holder's socket when `strata-agent mount` is not told another.
pub const DEFAULT_HOLDER_SOCKET: &str = "/run/strata/holder.sock";

/// Flags naming the mount holder.
#[derive(clap::Args, Debug, Clone)]
pub struct HolderFlags {
    /// Socket of the mount holder, the process that keeps each mount's FUSE connection
    /// while agents restart, crash or upgrade. Takeover logs are kept in takeover/ beside
    /// it: keep it on tmpfs (/run). `mount` uses /run/strata/holder.sock unless
    /// --no-holder, and starts a holder there if none listens (detached, logging to
    /// holder.log beside the socket; it exits once it holds no mount). `serve` uses a
    /// holder only with this flag, and waits for it (in Kubernetes, the strata-holder
    /// DaemonSet; elsewhere run `strata-agent holder --socket PATH` first).
    #[arg(long, env = "STRATA_HOLDER_SOCKET")]
    pub holder_socket: Option<PathBuf>,
    /// `mount` only: mount without a holder; the mount then dies with this agent.
    #[arg(long, env = "STRATA_NO_HOLDER", conflicts_with = "holder_socket")]
    pub no_holder: bool,
    /// For a holder `mount` starts: how long readers wait for an agent to come back
    /// after one went away, before the holder answers their requests with EIO.
    #[arg(long, env = "STRATA_ORPHAN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub orphan_timeout: Duration,
}

impl HolderFlags {
    /// The holder `mount` uses (the default socket unless --no-holder).
    pub fn for_mount(&self) -> Result<Option<Holder>> {
        if self.no_holder {
            return Ok(None);
        }
        let socket = self
            .holder_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_HOLDER_SOCKET));
        connect(&socket, self.orphan_timeout).map(Some)
    }

    /// The holder `serve` uses (only with --holder-socket): waited for, never started,
    /// since one started here would die with the agent's container.
    pub fn for_serve(&self) -> Result<Option<Holder>> {
        let Some(socket) = &self.holder_socket else {
            return Ok(None);
        };
        let started = std::time::Instant::now();
        let mut said = None;
        loop {
            match HolderClient::connect(socket) {
                Ok(client) => return Ok(Some(holder(socket, client))),
                Err(strata_holder::Error::NotRunning(_)) => {
                    if said.is_none_or(|t: std::time::Instant| t.elapsed() >= HOLDER_WAIT_LOG) {
                        tracing::warn!(socket = %socket.display(), waited = ?started.elapsed(),
                            "waiting for the mount holder (in Kubernetes: is the strata-holder DaemonSet's pod running on this node?)");
                        said = Some(std::time::Instant::now());
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(Error::Unavailable(format!("mount holder: {e}"))),
            }
        }
    }
}

/// How often `serve` says it still waits for the holder.
const HOLDER_WAIT_LOG: Duration = Duration::from_secs(10);

fn holder(socket: &Path, client: HolderClient) -> Holder {
    let dir = socket.parent().unwrap_or(Path::new("/"));
    let client = Arc::new(client);
    watch(socket, client.clone());
    Holder {
        client,
        state_dir: dir.join("takeover"),
    }
}

/// Exits the agent when the holder goes away: the mounts it held ended with it, and an
/// agent that kept running would hand out dead mounts. Started again (by the kubelet, or
/// by the user), the agent connects to the new holder and mounts afresh; pods using the
/// old mounts need a restart.
fn watch(socket: &Path, client: Arc<HolderClient>) {
    let socket = socket.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("holder-watch".into())
        .spawn(move || {
            client.wait_closed();
            tracing::error!(socket = %socket.display(),
                "the mount holder went away and its mounts with it; exiting, to start again with a new holder");
            std::process::exit(1);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot watch the mount holder's connection");
    }
}

/// Connects to the holder at `socket`, starting one if none listens.
pub fn connect(socket: &Path, orphan_timeout: Duration) -> Result<Holder> {
    let dir = socket.parent().unwrap_or(Path::new("/")).to_path_buf();
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let client = strata_holder::connect_or_spawn(socket, || spawn(socket, orphan_timeout))
        .map_err(|e| Error::Unavailable(format!("mount holder: {e}")))?;
    Ok(holder(socket, client))
}

/// Starts `strata-agent holder` detached: through a shell that puts it in the background
/// and exits, so it is nobody's child and outlives this agent; in its own process group,
/// so a Ctrl-C meant for the agent does not reach it.
fn spawn(socket: &Path, orphan_timeout: Duration) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let log_path = socket.with_file_name("holder.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    tracing::info!(socket = %socket.display(), log = %log_path.display(), "starting the mount holder");
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#""$0" "$@" &"#)
        .arg(exe)
        .arg("holder")
        .arg("--socket")
        .arg(socket)
        .arg("--orphan-timeout")
        .arg(humantime::format_duration(orphan_timeout).to_string())
        .arg("--exit-when-idle")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "starting the mount holder failed: {status}"
        )));
    }
    Ok(())
}
