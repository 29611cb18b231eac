//! `strata-agent serve`: the agent as a node daemon, with its HTTP API.

use crate::agent::{Agent, AgentConfig, LocalPaths};
use crate::cli_values::{parse_duration, parse_size};
use crate::datasets_dir::{self, DatasetsDir};
use crate::fuse::MountOptions;
use crate::http::auth::{TcpAuth, TokenReviewer};
use crate::http::{Access, ApiState, api_routes, metrics_routes};
use crate::mounts::MountRegistry;
use crate::{Error, Result};
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Flags of `strata-agent serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Unix socket for the local CSI plugin (no token; guarded by its file mode 0660).
    #[arg(
        long,
        env = "STRATA_AGENT_SOCKET",
        default_value = "/run/strata/agent.sock"
    )]
    pub socket: PathBuf,
    /// TCP address of the API for jobs and peers; requires --peer-token-file or
    /// --job-token-audience. Datasets and volumes are never served there.
    #[arg(long, env = "STRATA_AGENT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// File holding the node secret other agents send over TCP (read again every 5 s, so a
    /// rotated Secret takes effect without a restart). It allows reads of any dataset.
    #[arg(long, env = "STRATA_PEER_TOKEN_FILE")]
    pub peer_token_file: Option<PathBuf>,
    /// Accept preload/pin Job credentials over TCP: ServiceAccount tokens with this
    /// audience, checked with a TokenReview (needs the Kubernetes API). They allow preload,
    /// pin, unpin and usage of their own namespace's datasets under a live CachePolicy.
    #[arg(long, env = "STRATA_JOB_TOKEN_AUDIENCE")]
    pub job_token_audience: Option<String>,
    /// A host directory under which `file://` sources may be served (repeat the flag, or
    /// comma-separate in the variable). Without it and without --allow-any-local-path,
    /// `file://` sources are refused.
    #[arg(
        long = "allow-local-path",
        env = "STRATA_ALLOW_LOCAL_PATHS",
        value_delimiter = ','
    )]
    pub allow_local_paths: Vec<PathBuf>,
    /// Serve `file://` sources from any local path (standalone use; never in a cluster).
    #[arg(long, env = "STRATA_ALLOW_ANY_LOCAL_PATH")]
    pub allow_any_local_path: bool,
    /// Open port for /healthz, /readyz and /metrics.
    #[arg(long, env = "STRATA_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Datasets are mounted at <mount-root>/<namespace>/<name>.
    #[arg(
        long,
        env = "STRATA_MOUNT_ROOT",
        default_value = "/var/lib/strata/mounts"
    )]
    pub mount_root: PathBuf,
    /// Directory of DatasetConfig files (YAML or JSON, one dataset each), rescanned periodically.
    #[arg(long, env = "STRATA_DATASETS_DIR")]
    pub datasets_dir: Option<PathBuf>,
    /// How often --datasets-dir is rescanned (a new Dataset waits at most this long once the
    /// kubelet has refreshed the mounted Secret; a rescan reads only small files).
    #[arg(long, env = "STRATA_DATASETS_RESCAN", default_value = "10s", value_parser = parse_duration)]
    pub datasets_rescan: Duration,
    /// Disk tier directory.
    #[arg(
        long,
        env = "STRATA_CACHE_DIR",
        default_value = "/var/lib/strata/cache"
    )]
    pub cache_dir: PathBuf,
    /// Memory tier size (e.g. 512Mi, 4Gi).
    #[arg(long = "memory", env = "STRATA_MEMORY", default_value = "1Gi", value_parser = parse_size)]
    pub memory_size: u64,
    /// Disk tier size (0 disables it).
    #[arg(long = "disk", env = "STRATA_DISK", default_value = "10Gi", value_parser = parse_size)]
    pub disk_size: u64,
    /// Directory of the ephemeral disk tier, for datasets whose policy's persistence is
    /// Ephemeral (in a cluster, an emptyDir of the agent's pod). Emptied when the agent
    /// starts and when it stops. Unset: such datasets are refused on this node.
    #[arg(long, env = "STRATA_EPHEMERAL_CACHE_DIR", requires = "ephemeral_disk")]
    pub ephemeral_cache_dir: Option<PathBuf>,
    /// Ephemeral disk tier size (e.g. 100Gi); with --ephemeral-cache-dir.
    #[arg(long, env = "STRATA_EPHEMERAL_DISK", value_parser = parse_size, requires = "ephemeral_cache_dir")]
    pub ephemeral_disk: Option<u64>,
    /// Readahead per open file, e.g. 128Mi.
    #[arg(long, env = "STRATA_READAHEAD", default_value = "128Mi", value_parser = parse_size)]
    pub readahead: u64,
    /// Readahead over all open files (bytes held by prefetched blocks), e.g. 256Mi.
    #[arg(long, env = "STRATA_READAHEAD_TOTAL", default_value = "256Mi", value_parser = parse_size)]
    pub readahead_total: u64,
    /// Directory prefetch: after this many small files (at most one block) of a directory
    /// were read whole, fetch the directory's other small files in the background. 0 = off.
    #[arg(long, env = "STRATA_PREFETCH_DIRECTORY_FILES", default_value_t = 4)]
    pub prefetch_directory_files: u32,
    /// Most bytes one directory prefetch fetches (and at most a quarter of the disk tier).
    #[arg(long, env = "STRATA_PREFETCH_DIRECTORY_BYTES", default_value = "1Gi", value_parser = parse_size)]
    pub prefetch_directory_bytes: u64,
    /// Never open files in FUSE passthrough mode.
    #[arg(long, env = "STRATA_NO_PASSTHROUGH")]
    pub no_passthrough: bool,
    /// FUSE worker threads per dataset mount.
    #[arg(long, env = "STRATA_FUSE_THREADS", default_value_t = 4)]
    pub fuse_threads: usize,
    /// This node's Kubernetes name: when set (and built with the node-status feature), the
    /// agent reports what it holds in the StrataNode of that name.
    #[arg(long, env = "STRATA_NODE_NAME")]
    pub node_name: Option<String>,
    /// URL peers and jobs use to reach this agent's API (reported in the StrataNode), e.g. http://10.0.0.5:7070.
    #[arg(long, env = "STRATA_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// How often the StrataNode report is written.
    #[arg(long, env = "STRATA_STATUS_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub status_interval: Duration,
    #[command(flatten)]
    pub holder: crate::held_mounts::HolderFlags,
    #[command(flatten)]
    pub peers: crate::peers::PeerFlags,
}

fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::invalid(
                "socket",
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| Error::io(format!("removing stale socket {}", path.display()), e))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| Error::io(format!("listening on {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| Error::io(format!("setting the mode of {}", path.display()), e))?;
    Ok(listener)
}

async fn bind_tcp(addr: SocketAddr, what: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("listening on {addr} ({what})"), e))
}

/// Addresses actually bound (a port 0 in the flags becomes the real port).
#[derive(Debug, Clone)]
pub struct Bound {
    pub socket: PathBuf,
    pub listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
}

/// Runs the agent until `shutdown` resolves, then stops the listeners and unmounts every
/// dataset (with a holder: leaves them to it for the next agent; the caller must then
/// exit the process without running destructors, see `MountHandle::leave_to_holder`). `on_bound` is told where it listens once every listener is bound.
pub async fn run(
    args: ServeArgs,
    shutdown: impl Future<Output = ()>,
    on_bound: impl FnOnce(Bound),
) -> Result<()> {
    let access = match &args.listen {
        Some(_) if args.peer_token_file.is_none() && args.job_token_audience.is_none() => {
            return Err(Error::invalid(
                "peer-token-file",
                "--listen serves the API over TCP and needs --peer-token-file (the node secret \
                 agents share) or --job-token-audience (job credentials), or both",
            ));
        }
        Some(_) => {
            let reviewer = match &args.job_token_audience {
                Some(audience) => Some(token_reviewer(audience).await?),
                None => None,
            };
            Some(Access::Tcp(Arc::new(TcpAuth::new(
                args.peer_token_file.clone(),
                reviewer,
            )?)))
        }
        None => None,
    };

    let mut config = AgentConfig::new(&args.cache_dir, args.memory_size, args.disk_size);
    config.local_paths = if args.allow_any_local_path {
        LocalPaths::Any
    } else {
        LocalPaths::Under(args.allow_local_paths.clone())
    };
    config.readahead_per_file_bytes = args.readahead;
    config.readahead_total_bytes = args.readahead_total;
    config.directory_prefetch_files = args.prefetch_directory_files;
    config.directory_prefetch_bytes = args.prefetch_directory_bytes;
    config.ephemeral = args.ephemeral_cache_dir.clone().zip(args.ephemeral_disk);
    let agent = Agent::new(config).await?;
    let membership = join_cluster(&args, &agent).await?;
    let holder_flags = args.holder.clone();
    let holder = tokio::task::spawn_blocking(move || holder_flags.for_serve())
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
    let held = holder.is_some();
    if held {
        // Files a write handle of the previous agent holds are kept until it is found.
        agent.expect_takeover();
    }
    let mounts = Arc::new(MountRegistry::new(
        &args.mount_root,
        MountOptions {
            allow_other: true,
            passthrough: !args.no_passthrough,
            threads: args.fuse_threads.max(1),
            fsname: None,
            holder,
        },
    )?);
    mounts.register_metrics(agent.metrics());
    let state = ApiState::new(agent, mounts.clone());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let mut servers = tokio::task::JoinSet::new();
    let unix = bind_socket(&args.socket)?;
    servers.spawn(
        warp::serve(api_routes(state.clone(), Access::Local))
            .incoming(unix)
            .graceful(stopped())
            .run(),
    );
    let mut bound = Bound {
        socket: args.socket.clone(),
        listen: None,
        metrics_listen: None,
    };
    if let (Some(addr), Some(access)) = (args.listen, access) {
        let listener = bind_tcp(addr, "--listen").await?;
        bound.listen = listener.local_addr().ok();
        servers.spawn(
            warp::serve(api_routes(state.clone(), access))
                .incoming(listener)
                .graceful(stopped())
                .run(),
        );
    }
    if let Some(addr) = args.metrics_listen {
        let listener = bind_tcp(addr, "--metrics-listen").await?;
        bound.metrics_listen = listener.local_addr().ok();
        servers.spawn(
            warp::serve(metrics_routes(state.clone()))
                .incoming(listener)
                .graceful(stopped())
                .run(),
        );
    }
    tracing::info!(socket = %bound.socket.display(), listen = ?bound.listen, metrics = ?bound.metrics_listen, mount_root = %mounts.root().display(), "strata-agent serving");

    let watcher = match &args.datasets_dir {
        Some(dir) => Some(tokio::spawn(datasets_dir::watch(
            DatasetsDir::new(dir),
            state.clone(),
            args.datasets_rescan,
        ))),
        None => {
            state.set_ready();
            None
        }
    };
    let reporter = start_node_status(&args, &state).await;
    if held {
        // Mounts a previous agent left to the holder are taken over as soon as the
        // datasets are known, before any volume is asked for again: their readers wait.
        let state = state.clone();
        tokio::spawn(async move {
            while !state.is_ready() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            state
                .mounts
                .take_over(|ns, name| state.agent.dataset(ns, name))
                .await;
            state.agent.takeover_done();
        });
    }
    on_bound(bound);

    shutdown.await;
    tracing::info!("shutting down");
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    if let Some(reporter) = reporter {
        reporter.abort();
    }
    if let Some(membership) = membership {
        membership.abort();
    }
    let _ = stop_tx.send(true);
    // Streams (long preloads) may hold connections: do not wait for them forever.
    if tokio::time::timeout(Duration::from_secs(10), async {
        while servers.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        servers.abort_all();
    }
    if held {
        // An upgrade or a restart: the next agent takes the mounts over.
        mounts.leave_all_to_holder().await;
    } else {
        mounts.unmount_all().await;
    }
    // Cached data of the ephemeral tier goes with the agent (a next one starts empty).
    state.agent.discard_ephemeral_cache();
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}

/// Joins the cluster cache when the flags (or the StrataNodes of a Kubernetes cluster)
/// name other agents: returns the task that keeps the member list current.
async fn join_cluster(
    args: &ServeArgs,
    agent: &Arc<Agent>,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    use crate::cluster::Cluster;
    use crate::peers::{HttpPeers, Membership};
    let in_cluster = cfg!(feature = "node-status") && args.node_name.is_some();
    let Some(membership) = args.peers.membership(in_cluster)? else {
        return Ok(None);
    };
    let explicit = membership != Membership::Kubernetes;
    let (Some(token_file), Some(_)) = (&args.peer_token_file, &args.listen) else {
        if explicit {
            return Err(Error::invalid(
                "peers",
                "sharing blocks with peers needs --listen (where they ask this agent) and \
                 --peer-token-file (the secret every agent of the cluster shares)",
            ));
        }
        tracing::info!("no --listen with --peer-token-file: not sharing blocks with other agents");
        return Ok(None);
    };
    let self_name = match &args.node_name {
        Some(name) => name.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .map_err(|e| Error::io("reading the host name (set --node-name)", e))?,
    };
    let cluster = Cluster::new(
        self_name.clone(),
        Arc::new(HttpPeers::new(token_file, args.peers.peer_timeout)?),
        args.peers.peer_timeout,
        agent.metrics().clone(),
    );
    agent.join_cluster(cluster.clone());
    tracing::info!(member = %self_name, membership = ?membership, "sharing blocks with the cluster's agents");
    Ok(match membership {
        Membership::Static(members) => {
            cluster.set_members(members);
            None
        }
        Membership::File(file, fixed) => Some(tokio::spawn(crate::peers::follow_peers_file(
            cluster, file, fixed,
        ))),
        Membership::Kubernetes => follow_strata_nodes(cluster, args.status_interval).await,
    })
}

/// Members from the StrataNodes; a node is gone once its heartbeat is three report
/// intervals old.
#[cfg(feature = "node-status")]
async fn follow_strata_nodes(
    cluster: Arc<crate::cluster::Cluster>,
    status_interval: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    match kube::Client::try_default().await {
        Ok(client) => Some(tokio::spawn(crate::peers::follow_strata_nodes(
            cluster,
            client,
            status_interval * 3,
        ))),
        Err(e) => {
            tracing::warn!(error = %e, "no Kubernetes API reachable: not sharing blocks with other agents");
            None
        }
    }
}

#[cfg(not(feature = "node-status"))]
async fn follow_strata_nodes(
    _cluster: Arc<crate::cluster::Cluster>,
    _status_interval: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    None
}

/// The TokenReview client for job credentials (the agent's ServiceAccount).
#[cfg(feature = "node-status")]
async fn token_reviewer(audience: &str) -> Result<Arc<dyn TokenReviewer>> {
    let client = kube::Client::try_default().await.map_err(|e| {
        Error::Unavailable(format!(
            "--job-token-audience checks job tokens with the Kubernetes API, which is not reachable: {e}"
        ))
    })?;
    Ok(Arc::new(crate::http::token_review::KubeTokenReviewer::new(
        client, audience,
    )))
}

#[cfg(not(feature = "node-status"))]
async fn token_reviewer(_audience: &str) -> Result<Arc<dyn TokenReviewer>> {
    Err(Error::invalid(
        "job-token-audience",
        "this agent was built without Kubernetes support (the node-status feature)",
    ))
}

/// Starts the StrataNode reporter when `--node-name` is set. Outside a cluster (no
/// kubeconfig, no service account) it logs why and the agent runs without it.
#[cfg(feature = "node-status")]
async fn start_node_status(
    args: &ServeArgs,
    state: &Arc<ApiState>,
) -> Option<tokio::task::JoinHandle<()>> {
    let node_name = args.node_name.clone()?;
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(error = %e, node = %node_name, "no Kubernetes API reachable: not reporting the StrataNode");
            return None;
        }
    };
    let node = crate::node_status::NodeIdentity {
        node_name,
        endpoint: args.advertise_url.clone(),
    };
    Some(tokio::spawn(crate::node_status::run(
        state.agent.clone(),
        state.activity.clone(),
        node,
        client,
        args.status_interval,
    )))
}

#[cfg(not(feature = "node-status"))]
async fn start_node_status(
    args: &ServeArgs,
    _state: &Arc<ApiState>,
) -> Option<tokio::task::JoinHandle<()>> {
    if args.node_name.is_some() {
        tracing::warn!("built without the node-status feature: --node-name is ignored");
    }
    None
}
