//! The `strata-agent serve` binary killed with volumes mounted, then started again.
//! With a mount holder (`--holder-socket`, as the chart runs it) the mount never stops
//! answering: a read during the gap waits, and the new agent takes the mount over and
//! knows its volumes. Without one, the new agent detaches the dead FUSE mount and mounts
//! again. Needs root.

use strata_testkit::agent as support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use strata_agent::http::client::AgentClient;
use support::{is_mounted, sha256_file, write_tree};

/// Kills a process at the end of the test (or when it fails).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Detaches whatever a failed run left mounted at the dataset's mount point.
struct DetachOnDrop(std::path::PathBuf);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn spawn_agent(work: &Path, holder: bool) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata-agent"));
    if holder {
        cmd.env("STRATA_HOLDER_SOCKET", work.join("run/holder.sock"));
        cmd.env(
            "STRATA_METRICS_LISTEN",
            format!("127.0.0.1:{}", metrics_port(work)),
        );
    }
    cmd.args(["serve", "--socket"])
        .arg(work.join("agent.sock"))
        .arg("--mount-root")
        .arg(work.join("mounts"))
        .arg("--cache-dir")
        .arg(work.join("cache"))
        .args(["--memory", "16Mi", "--disk", "64Mi", "--datasets-dir"])
        .arg(work.join("datasets"))
        .arg("--allow-local-path")
        .arg(work)
        .env("STRATA_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting strata-agent")
}

/// The metrics port of the agents of `work` (one free port, kept across restarts).
fn metrics_port(work: &Path) -> u16 {
    let file = work.join("metrics-port");
    if let Ok(port) = std::fs::read_to_string(&file) {
        return port.parse().unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(&file, port.to_string()).unwrap();
    port
}

/// The agent's /metrics text.
fn metrics(work: &Path) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", metrics_port(work))).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text
}

async fn wait_ready(client: &AgentClient) {
    for _ in 0..200 {
        if client.ready().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("strata-agent did not become ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_holder_a_restarted_agent_replaces_the_dead_mount() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    let files = write_tree(&source);
    std::fs::create_dir_all(work.path().join("datasets")).unwrap();
    std::fs::write(
        work.path().join("datasets/ml.imagenet.yaml"),
        format!(
            "namespace: ml\nname: imagenet\nsources:\n  - name: local\n    uri: file://{}\n",
            source.display()
        ),
    )
    .unwrap();
    let client = AgentClient::unix(work.path().join("agent.sock"));

    let mut first = spawn_agent(work.path(), false);
    wait_ready(&client).await;
    let mount = client
        .acquire_volume("ml", "imagenet", "vol-1", None)
        .await
        .unwrap()
        .mount_path;
    let _detach = DetachOnDrop(mount.clone());
    assert_eq!(
        sha256_file(&mount.join("labels/labels.csv")),
        files["labels/labels.csv"]
    );

    // A crash: the FUSE session dies with the process, the mount stays behind.
    first.kill().unwrap();
    first.wait().unwrap();
    let err = std::fs::read_dir(&mount).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(nix::errno::Errno::ENOTCONN as i32),
        "{err}"
    );

    let mut second = spawn_agent(work.path(), false);
    wait_ready(&client).await;
    let again = client
        .acquire_volume("ml", "imagenet", "vol-1", None)
        .await
        .unwrap();
    assert_eq!(again.mount_path, mount);
    assert!(
        again.new_volume,
        "the new agent starts with no volume records"
    );
    let (dir, expected) = (mount.clone(), files.clone());
    tokio::task::spawn_blocking(move || {
        for (rel, sum) in expected {
            assert_eq!(sha256_file(&dir.join(&rel)), sum, "{rel}");
        }
    })
    .await
    .unwrap();
    // Exactly one mount at the path: the dead one was detached, not stacked under.
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let count = table
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(mount.to_str().unwrap()))
        .count();
    assert_eq!(count, 1, "{table}");

    // A clean shutdown unmounts.
    client.release_volume("vol-1").await.unwrap();
    assert!(!is_mounted(&mount));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = second.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        !work.path().join("agent.sock").exists(),
        "socket left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_holder_the_mount_outlives_a_killed_agent() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    let files = write_tree(&source);
    std::fs::create_dir_all(work.path().join("datasets")).unwrap();
    std::fs::write(
        work.path().join("datasets/ml.imagenet.yaml"),
        format!(
            "namespace: ml\nname: imagenet\nsources:\n  - name: local\n    uri: file://{}\n",
            source.display()
        ),
    )
    .unwrap();
    let client = AgentClient::unix(work.path().join("agent.sock"));
    // `serve` waits for its holder and never starts one (in a cluster it is the
    // strata-holder DaemonSet): started first, as a separate process.
    let mut holder = Command::new(env!("CARGO_BIN_EXE_strata-agent"))
        .args(["holder", "--socket"])
        .arg(work.path().join("run/holder.sock"))
        .args(["--orphan-timeout", "30s"])
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _stop_holder = KillOnDrop(holder.id());

    let mut first = spawn_agent(work.path(), true);
    wait_ready(&client).await;
    let mount = client
        .acquire_volume("ml", "imagenet", "vol-1", Some("csi-vol-1"))
        .await
        .unwrap()
        .mount_path;
    let _detach = DetachOnDrop(mount.clone());
    assert_eq!(
        sha256_file(&mount.join("labels/labels.csv")),
        files["labels/labels.csv"]
    );

    // A crash. The mount stays live: a listing and a read made now wait for the next
    // agent instead of failing with ENOTCONN.
    first.kill().unwrap();
    first.wait().unwrap();
    let (dir, expected) = (mount.clone(), files.clone());
    let during_gap = std::thread::spawn(move || {
        let entries = std::fs::read_dir(&dir).map(|d| d.count());
        let sums: Vec<(String, bool)> = expected
            .iter()
            .map(|(rel, sum)| (rel.clone(), sha256_file(&dir.join(rel)) == *sum))
            .collect();
        (entries.map_err(|e| e.to_string()), sums)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !during_gap.is_finished(),
        "a read answered with no agent running"
    );

    let mut second = spawn_agent(work.path(), true);
    wait_ready(&client).await;
    let (entries, sums) = tokio::task::spawn_blocking(move || during_gap.join().unwrap())
        .await
        .unwrap();
    assert!(entries.unwrap() > 0);
    for (rel, ok) in sums {
        assert!(ok, "{rel} read wrong across the restart");
    }
    // The new agent knows the volume (and its owner), and took the mount over: one
    // mount at the path, nothing detached or stacked.
    let volumes = client.volumes().await.unwrap();
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    assert_eq!(volumes[0].volume_id, "vol-1");
    assert_eq!(volumes[0].owner.as_deref(), Some("csi-vol-1"));
    let again = client
        .acquire_volume("ml", "imagenet", "vol-1", Some("csi-vol-1"))
        .await
        .unwrap();
    assert_eq!(again.mount_path, mount);
    assert!(!again.new_volume, "the new agent forgot the volume");
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let count = table
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(mount.to_str().unwrap()))
        .count();
    assert_eq!(count, 1, "{table}");
    let text = metrics(work.path());
    assert!(text.contains("strata_mounts_taken_over_total 1"), "{text}");

    // Releasing the last volume unmounts through the holder.
    client.release_volume("vol-1").await.unwrap();
    assert!(!is_mounted(&mount));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(second.wait().unwrap().success());
    // The holder holds nothing now; stopping it unmounts nothing.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(holder.wait().unwrap().success());
}
