//! Leader election with real `strata-operator` processes on the local control
//! plane (4 s Lease):
//!
//! 1. two replicas: only the Lease holder reconciles and writes (reconcile
//!    metrics, and the reporting instance of every Event);
//! 2. the leader is SIGKILLed (no release): the standby takes the Lease within
//!    the lease duration of the kill, never before the dead leader's
//!    `renewTime + duration`, and then serves;
//! 3. the new leader's API connection is cut (a proxy that stops forwarding,
//!    so its requests hang rather than fail): it must stop on its own within
//!    2/3 of the duration of its last renewal, and the third replica takes
//!    over only after that;
//! 4. a standby whose wall clock runs 2 s ahead (libfaketime) does not take
//!    over early: it sees that renewals look too old and waits a whole
//!    duration from its sighting;
//! 5. a standby whose clock runs 2 s behind still takes over within a
//!    duration of its sighting.
//!
//! The operator binary is built with `cargo build` into this test's target
//! directory (or taken from `STRATA_E2E_BIN_DIR`). Needs libfaketime
//! (`apt-get install faketime`).

mod operator_common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use operator_common::*;
use strata_crds::Dataset;
use strata_e2e::{Cluster, TestNamespace, workspace_binaries};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

const WAIT: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(4);
const LEASE_NAME: &str = "strata-operator";

/// A Dataset whose credentials Secret does not exist: every reconcile gives a
/// `SecretNotFound` Event, which names the replica that wrote it.
fn dataset(name: &str) -> String {
    format!(
        "apiVersion: strata.dev/v1alpha1\nkind: Dataset\nmetadata: {{name: {name}}}\nspec:\n  sources:\n  - name: s3\n    uri: s3://bucket/{name}/\n    endpoint: http://127.0.0.1:1\n    region: us-east-1\n    mountPath: /\n    credentialsSecretRef: {{name: missing}}\n"
    )
}

/// One `strata-operator` process, killed when dropped.
struct Replica {
    identity: String,
    child: Child,
    log: PathBuf,
    metrics: SocketAddr,
}

impl Replica {
    fn spawn(
        bin: &Path,
        kubeconfig: &Path,
        namespace: &str,
        identity: &str,
        logs: &Path,
    ) -> Result<Replica> {
        Self::spawn_with_env(bin, kubeconfig, namespace, identity, logs, &[])
    }

    fn spawn_with_env(
        bin: &Path,
        kubeconfig: &Path,
        namespace: &str,
        identity: &str,
        logs: &Path,
        env: &[(&str, &str)],
    ) -> Result<Replica> {
        let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = logs.join(format!("{identity}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .args(["--namespace", namespace, "--watch-namespace", namespace])
            .args(["--identity", identity, "--lease-duration", "4s"])
            .args(["--metrics-addr", &metrics.to_string()])
            .args([
                "--source-check-timeout",
                "2s",
                "--agent-image",
                "strata:e2e",
            ])
            .env("KUBECONFIG", kubeconfig)
            .env("STRATA_LOG", "info,strata_operator::leader=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Replica {
            identity: identity.to_string(),
            child,
            log,
            metrics,
        })
    }

    /// Waits until the metrics endpoint answers.
    async fn wait_serving(&mut self) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        while http_get(self.metrics, "/healthz").is_err() {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}):\n{}", self.identity, self.log_tail());
            }
            ensure!(
                Instant::now() < deadline,
                "{} never served /healthz",
                self.identity
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// A sample from /metrics (0 when the series does not exist yet).
    fn metric(&self, series: &str) -> Result<f64> {
        let text = http_get(self.metrics, "/metrics")?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0))
    }

    fn dataset_reconciles(&self) -> Result<f64> {
        self.metric("strata_operator_reconciles_total{controller=\"dataset\"}")
    }

    fn sigkill(&mut self) -> Result<()> {
        // Child::kill sends SIGKILL on Unix: no Lease release, nothing more runs.
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy to the API server that can be cut: afterwards it forwards
/// nothing but keeps every connection open, so requests hang (a partition,
/// not a refused connection). Its tasks end when it is dropped.
struct CuttableProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    _tasks: JoinSet<()>,
}

impl CuttableProxy {
    async fn start(upstream: SocketAddr) -> Result<CuttableProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        let flag = cut.clone();
        tasks.spawn(async move {
            // Dropped with the accept loop, which aborts every connection's pipes.
            let mut pipes = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                pipes.spawn(pipe(client_read, server_write, flag.clone()));
                pipes.spawn(pipe(server_read, client_write, flag.clone()));
            }
        });
        Ok(CuttableProxy {
            addr,
            cut,
            _tasks: tasks,
        })
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if cut.load(Ordering::SeqCst) {
            // Hold both ends open and forward nothing, ever.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn lease(leases: &Api<Lease>) -> Result<LeaseSpec> {
    Ok(leases.get(LEASE_NAME).await?.spec.unwrap_or_default())
}

fn holder_of(spec: &LeaseSpec) -> &str {
    spec.holder_identity.as_deref().unwrap_or("")
}

fn time(
    t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime>,
) -> Result<Timestamp> {
    t.map(|t| t.0).context("Lease without the time")
}

fn secs(d: SignedDuration) -> f64 {
    d.as_secs_f64()
}

/// The time of the first log line containing `text` (tracing's default
/// format: an RFC 3339 time first, possibly inside ANSI colour codes).
fn logged_at(log: &str, text: &str) -> Option<Timestamp> {
    let line = log.lines().find(|l| l.contains(text))?;
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip "ESC [ ... m".
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain.split_whitespace().next()?.parse().ok()
}

/// Polls the Lease every 20 ms until `identity` holds it; returns its spec
/// and how long that took.
async fn wait_holder(leases: &Api<Lease>, identity: &str) -> Result<(LeaseSpec, Duration)> {
    let start = Instant::now();
    loop {
        if let Ok(spec) = lease(leases).await
            && holder_of(&spec) == identity
        {
            return Ok((spec, start.elapsed()));
        }
        ensure!(start.elapsed() < WAIT, "{identity} never took the Lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Operator Events in the namespace as (reporting instance, time, regarding object).
async fn operator_events(events: &Api<Event>) -> Result<Vec<(String, Timestamp, String)>> {
    Ok(events
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("strata-operator"))
        .filter_map(|e| {
            let at = e
                .series
                .as_ref()
                .map(|s| s.last_observed_time.0)
                .or(e.event_time.as_ref().map(|t| t.0))?;
            let regarding = e.regarding.and_then(|r| r.name).unwrap_or_default();
            Some((e.reporting_instance.unwrap_or_default(), at, regarding))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_acts_and_a_standby_takes_over() -> Result<()> {
    let cluster = Cluster::shared().await?;
    let bin = tokio::task::spawn_blocking(|| workspace_binaries(&["strata-operator"]))
        .await??
        .join("strata-operator");
    install_crds(cluster).await?;
    let ns = TestNamespace::create(cluster, "op-leader").await?;
    let logs = tempfile::Builder::new()
        .prefix("strata-leader-")
        .tempdir()?;
    let result = scenario(cluster, &ns, &bin, logs.path()).await;
    if result.is_err() {
        // Only the logs: the proxied kubeconfig next to them holds the admin key.
        let is_log = |p: &Path| p.extension().is_some_and(|e| e == "log");
        for entry in std::fs::read_dir(logs.path())?.flatten() {
            if !is_log(&entry.path()) {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            eprintln!("==> {} <==\n{text}", entry.path().display());
        }
    }
    let leader = result?;
    // The namespace (and the Lease in it) goes first; the leader releases the finalizers.
    ns.cleanup().await?;
    drop(leader);
    Ok(())
}

/// Runs the three phases; returns the last leader, still running.
async fn scenario(
    cluster: &Cluster,
    ns: &TestNamespace,
    bin: &Path,
    logs: &Path,
) -> Result<Replica> {
    let client = ns.client().clone();
    let namespace = ns.name().to_string();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), &namespace);
    let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
    let apply = |manifest: String| {
        let namespace = namespace.clone();
        async move { cluster.apply_in(&namespace, &manifest).await }
    };
    let reconciled = |name: &'static str| {
        let datasets = datasets.clone();
        async move {
            eventually(&format!("{name} reconciled"), WAIT, || async {
                let st = datasets.get(name).await?.status.unwrap_or_default();
                Ok(st.phase.is_some().then_some(()))
            })
            .await
        }
    };
    let lease_d = SignedDuration::try_from(LEASE)?;

    // Replica b reaches the API server through a proxy that phase 3 cuts.
    let upstream: SocketAddr = cluster
        .api_server()
        .trim_start_matches("https://")
        .parse()
        .context("API server address")?;
    let proxy = CuttableProxy::start(upstream).await?;
    let admin = std::fs::read_to_string(cluster.kubeconfig())?;
    let proxied = logs.join("proxied.kubeconfig");
    std::fs::write(
        &proxied,
        admin.replace(cluster.api_server(), &format!("https://{}", proxy.addr)),
    )?;

    // 1. Two replicas; only the leader acts.
    let mut a = Replica::spawn(bin, cluster.kubeconfig(), &namespace, "replica-a", logs)?;
    a.wait_serving().await?;
    wait_holder(&leases, "replica-a").await?;
    let mut b = Replica::spawn(bin, &proxied, &namespace, "replica-b", logs)?;
    b.wait_serving().await?;
    apply(dataset("first")).await?;
    reconciled("first").await?;
    // Several lease periods pass; the standby never reconciles, the Lease never moves.
    tokio::time::sleep(LEASE * 2).await;
    let spec = lease(&leases).await?;
    ensure!(holder_of(&spec) == "replica-a", "{spec:?}");
    ensure!(spec.lease_transitions == Some(0), "{spec:?}");
    ensure!(
        a.dataset_reconciles()? > 0.0,
        "the leader did not reconcile"
    );
    ensure!(b.dataset_reconciles()? == 0.0, "the standby reconciled");
    ensure!(b.metric("strata_operator_leader")? == 0.0);
    ensure!(a.metric("strata_operator_leader")? == 1.0);
    ensure!(
        http_get(b.metrics, "/healthz")? == "ok",
        "a standby is healthy"
    );

    // 2. SIGKILL the leader (no release) at an arbitrary point of its renew
    // cycle (D/4): a pseudo-random delay after a renewal.
    let seen = lease(&leases).await?.renew_time;
    while lease(&leases).await?.renew_time == seen {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(LEASE / 4 * pseudo_random_permille() / 1000).await;
    let killed_at = Timestamp::now();
    a.sigkill()?;
    let last_renewal = lease(&leases).await?;
    ensure!(holder_of(&last_renewal) == "replica-a", "{last_renewal:?}");
    let renewed_a = time(last_renewal.renew_time.as_ref())?;
    let (taken, seen_after) = wait_holder(&leases, "replica-b").await?;
    let acquired_b = time(taken.acquire_time.as_ref())?;
    let takeover = acquired_b.duration_since(killed_at);
    let after_renewal = acquired_b.duration_since(renewed_a);
    eprintln!(
        "SIGKILL {:.3}s after a renewal: replica-b took the Lease {:.3}s after the kill, {:.3}s \
         after replica-a's last renewal (lease duration {LEASE:?}); the test saw it {seen_after:.3?} \
         after the kill",
        secs(killed_at.duration_since(renewed_a)),
        secs(takeover),
        secs(after_renewal),
    );
    ensure!(
        takeover <= lease_d,
        "takeover {takeover:#} after the kill, longer than the lease duration"
    );
    // Never before the dead leader's lease ran out, and promptly once it had
    // (the standby sleeps until exactly then): so within D of a kill in any phase,
    // up to this timer and request slack when the kill follows a renewal at once.
    ensure!(
        after_renewal >= lease_d && after_renewal <= lease_d + SignedDuration::from_millis(100),
        "replica-b took over {after_renewal:#} after replica-a's last renewal at {renewed_a}"
    );
    ensure!(taken.lease_transitions == Some(1), "{taken:?}");

    apply(dataset("second")).await?;
    reconciled("second").await?;
    ensure!(
        b.dataset_reconciles()? > 0.0,
        "the new leader did not reconcile"
    );
    let written = eventually("Events from both replicas", WAIT, || async {
        let all = operator_events(&events).await?;
        let has = |who: &str| all.iter().any(|(by, _, _)| by == who);
        Ok((has("replica-a") && has("replica-b")).then_some(all))
    })
    .await?;
    for (by, at, regarding) in &written {
        match by.as_str() {
            "replica-a" => ensure!(
                *at <= killed_at,
                "replica-a wrote {regarding} at {at} after its kill"
            ),
            "replica-b" => ensure!(
                *at >= acquired_b,
                "replica-b wrote {regarding} at {at} before it took the Lease at {acquired_b}"
            ),
            other => bail!("an Event from unknown replica {other:?}"),
        }
    }

    // 3. Partition the leader from the API server; a third replica waits.
    let mut c = Replica::spawn(bin, cluster.kubeconfig(), &namespace, "replica-c", logs)?;
    c.wait_serving().await?;
    // Let replica-c see a few renewals.
    tokio::time::sleep(LEASE / 2).await;
    let cut_at = Timestamp::now();
    proxy.cut();
    // A renewal already forwarded still lands; then the Lease stops moving.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let last_renewal = lease(&leases).await?;
    ensure!(holder_of(&last_renewal) == "replica-b", "{last_renewal:?}");
    let renewed_b = time(last_renewal.renew_time.as_ref())?;
    let stop_by = renewed_b.checked_add(lease_d * 2 / 3)?;
    let (stopped_at, status) = loop {
        if let Some(status) = b.exited()? {
            break (Timestamp::now(), status);
        }
        ensure!(
            Timestamp::now() < stop_by.checked_add(SignedDuration::from_secs(5))?,
            "the partitioned leader kept running:\n{}",
            b.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (taken, _) = wait_holder(&leases, "replica-c").await?;
    let acquired_c = time(taken.acquire_time.as_ref())?;
    let gave_up = logged_at(&b.log_text(), "leader lease not renewed in time")
        .with_context(|| format!("replica-b never logged giving up:\n{}", b.log_tail()))?;
    eprintln!(
        "partition: replica-b stopped acting {:.3}s and exited ({status}) {:.3}s after its last \
         renewal (deadline {:.3}s); replica-c took the Lease {:.3}s after it, {:.3}s after the cut",
        secs(gave_up.duration_since(renewed_b)),
        secs(stopped_at.duration_since(renewed_b)),
        secs(lease_d * 2 / 3),
        secs(acquired_c.duration_since(renewed_b)),
        secs(acquired_c.duration_since(cut_at)),
    );
    ensure!(!status.success(), "replica-b exited with {status}");
    ensure!(
        b.log_text().contains("lost leadership"),
        "replica-b's log does not say why it stopped:\n{}",
        b.log_tail()
    );
    // Timers fire a little late, never early.
    ensure!(
        gave_up >= stop_by && gave_up <= stop_by.checked_add(SignedDuration::from_millis(100))?,
        "replica-b gave up at {gave_up}, its deadline was {stop_by}"
    );
    // Acting stopped at `gave_up` (checked above to 100 ms). The exit comes after the error
    // is printed, with a symbolized backtrace when RUST_BACKTRACE is set (as in CI): that
    // took 0.7 s once on a loaded 2-core machine, so the bound is loose.
    ensure!(
        stopped_at <= stop_by.checked_add(SignedDuration::from_millis(2000))?,
        "replica-b stopped at {stopped_at}, its deadline was {stop_by}"
    );
    ensure!(
        acquired_c >= stopped_at && acquired_c >= renewed_b.checked_add(lease_d)?,
        "replica-c took over at {acquired_c}: replica-b stopped at {stopped_at}, renewed at {renewed_b}"
    );
    ensure!(
        acquired_c.duration_since(cut_at) <= lease_d,
        "replica-c took over {:#} after the cut",
        acquired_c.duration_since(cut_at)
    );
    apply(dataset("third")).await?;
    reconciled("third").await?;
    ensure!(c.dataset_reconciles()? > 0.0, "replica-c did not reconcile");

    // 4. A standby whose clock runs 2 s ahead (more than D/6): renewTime + D
    // comes 2 s early on its clock, while a live leader may act until 2D/3 =
    // 2.67 s. It must notice (renewals look too old when first seen) and wait
    // D from its sighting instead.
    let faketime = libfaketime()?;
    let mut d = Replica::spawn_with_env(
        bin,
        cluster.kubeconfig(),
        &namespace,
        "replica-d",
        logs,
        &[
            ("LD_PRELOAD", &faketime),
            ("FAKETIME", "+2s"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )?;
    d.wait_serving().await?;
    tokio::time::sleep(LEASE / 2).await;
    let (renewed_c, acquired_d) = kill_and_take_over(&leases, &mut c, "replica-d").await?;
    let acquired_d = acquired_d.checked_sub(SignedDuration::from_secs(2))?;
    let after = acquired_d.duration_since(renewed_c);
    eprintln!(
        "clock 2s ahead: replica-d took the Lease {:.3}s after replica-c's last renewal (true time)",
        secs(after)
    );
    // At most D after it first saw the renewal, which a running standby does within D/16.
    ensure!(
        after >= lease_d && after <= lease_d + lease_d / 16 + SignedDuration::from_millis(300),
        "replica-d, clock 2s ahead, took over {after:#} after the last renewal"
    );
    ensure!(
        d.log_text().contains("looked old when first seen"),
        "replica-d did not warn about its clock:\n{}",
        d.log_tail()
    );

    // 5. A standby whose clock runs 2 s behind: renewTime lies in its future,
    // and renewTime + D would come 4 s late (replica-d's clock is 2 s ahead);
    // the sighting rule caps the wait at D from its first look.
    let mut e = Replica::spawn_with_env(
        bin,
        cluster.kubeconfig(),
        &namespace,
        "replica-e",
        logs,
        &[
            ("LD_PRELOAD", &faketime),
            ("FAKETIME", "-2s"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )?;
    e.wait_serving().await?;
    tokio::time::sleep(LEASE / 2).await;
    let (renewed_d, acquired_e) = kill_and_take_over(&leases, &mut d, "replica-e").await?;
    let renewed_d = renewed_d.checked_sub(SignedDuration::from_secs(2))?;
    let acquired_e = acquired_e.checked_add(SignedDuration::from_secs(2))?;
    let after = acquired_e.duration_since(renewed_d);
    eprintln!(
        "clock 2s behind the standby, 4s behind the dead leader: replica-e took the Lease {:.3}s \
         after replica-d's last renewal (true time)",
        secs(after)
    );
    ensure!(
        after >= lease_d && after <= lease_d + lease_d / 16 + SignedDuration::from_millis(300),
        "replica-e, clock 2s behind, took over {after:#} after the last renewal"
    );
    apply(dataset("fourth")).await?;
    reconciled("fourth").await?;
    ensure!(e.dataset_reconciles()? > 0.0, "replica-e did not reconcile");
    Ok(e)
}

/// SIGKILLs `leader` at a pseudo-random point of its renew cycle and waits
/// until `standby` holds the Lease; returns the dead leader's last renewTime
/// and the standby's acquireTime, each as written (on its writer's clock).
async fn kill_and_take_over(
    leases: &Api<Lease>,
    leader: &mut Replica,
    standby: &str,
) -> Result<(Timestamp, Timestamp)> {
    let seen = lease(leases).await?.renew_time;
    while lease(leases).await?.renew_time == seen {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(LEASE / 4 * pseudo_random_permille() / 1000).await;
    leader.sigkill()?;
    let last = lease(leases).await?;
    ensure!(holder_of(&last) == leader.identity, "{last:?}");
    let (taken, _) = wait_holder(leases, standby).await?;
    Ok((
        time(last.renew_time.as_ref())?,
        time(taken.acquire_time.as_ref())?,
    ))
}

fn pseudo_random_permille() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 1000)
}

/// libfaketime, which shifts a process's wall clock (`apt-get install
/// faketime`); `STRATA_E2E_LIBFAKETIME` names another path.
fn libfaketime() -> Result<String> {
    if let Ok(path) = std::env::var("STRATA_E2E_LIBFAKETIME") {
        return Ok(path);
    }
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
        "/usr/local/lib/faketime/libfaketimeMT.so.1",
    ];
    candidates
        .iter()
        .find(|p| Path::new(p).exists())
        .map(|p| p.to_string())
        .context(
            "libfaketime not found: install it with `apt-get install faketime` \
             (or set STRATA_E2E_LIBFAKETIME)",
        )
}
