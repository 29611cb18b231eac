//! The holder against real FUSE mounts (needs root; skipped otherwise).
//!
//! The holder runs as the built `strata-holder` binary. Agents are separate processes so
//! they can be killed with SIGKILL: this test binary re-executes itself with
//! `--exact toy_agent_process` and `TOY_AGENT_SOCKET` set, and that "test" then serves a
//! one-file file system with fuser until it is killed.

use std::ffi::OsStr;
use std::io::Write;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyEntry, ReplyOpen, Request, Session,
    SessionACL,
};
use strata_holder::{AttachRequest, Error, HolderClient};

const AGENT_SOCKET: &str = "TOY_AGENT_SOCKET";
const AGENT_MNT: &str = "TOY_AGENT_MNT";
const AGENT_STALL: &str = "TOY_AGENT_STALL";
const AGENT_GATE: &str = "TOY_AGENT_GATE";
const FILE_INO: u64 = 2;
const NO_CACHE: Duration = Duration::ZERO;

fn content() -> Vec<u8> {
    (0..(256u32 << 10)).map(|i| (i % 251) as u8).collect()
}

// ---- the toy agent -------------------------------------------------------------------

/// One read-only file, `/file`, with direct I/O so every read reaches the agent.
struct Toy {
    data: Vec<u8>,
    /// Never answer reads: a read is in flight when the agent is killed.
    stall_reads: bool,
}

fn attr(ino: u64, size: u64) -> FileAttr {
    let now = SystemTime::now();
    let (kind, perm, nlink) = if ino == 1 {
        (FileType::Directory, 0o555, 2)
    } else {
        (FileType::RegularFile, 0o444, 1)
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind,
        perm,
        nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl Filesystem for Toy {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == 1 && name == "file" {
            let a = attr(FILE_INO, self.data.len() as u64);
            reply.entry(&NO_CACHE, &a, Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino.0 {
            1 => reply.attr(&NO_CACHE, &attr(1, 0)),
            FILE_INO => reply.attr(&NO_CACHE, &attr(FILE_INO, self.data.len() as u64)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(7), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if self.stall_reads {
            std::thread::sleep(Duration::from_secs(600));
        }
        let start = (offset as usize).min(self.data.len());
        let end = (start + size as usize).min(self.data.len());
        reply.data(&self.data[start..end]);
    }
}

/// The agent process's body; a no-op in a normal test run.
#[test]
fn toy_agent_process() {
    let Some(socket) = std::env::var_os(AGENT_SOCKET) else {
        return;
    };
    let mnt = PathBuf::from(std::env::var_os(AGENT_MNT).expect("TOY_AGENT_MNT"));
    if std::env::var_os(AGENT_GATE).is_some() {
        let mut go = String::new();
        std::io::stdin().read_line(&mut go).expect("wait for go");
    }
    let client = HolderClient::connect(Path::new(&socket)).expect("connect to the holder");
    let attached = client
        .attach(&AttachRequest {
            mountpoint: mnt,
            fsname: "toy".into(),
            allow_other: false,
            writable: false,
        })
        .expect("attach");
    let fs = Toy {
        data: content(),
        stall_reads: std::env::var_os(AGENT_STALL).is_some(),
    };
    let session = if attached.taken_over {
        let s =
            Session::from_fd_initialized(fs, attached.fuse_fd, SessionACL::All, Config::default());
        // Before any thread reads: requests the dead agent had read come back.
        s.notifier().resend().expect("FUSE_NOTIFY_RESEND");
        s
    } else {
        Session::from_fd(fs, attached.fuse_fd, SessionACL::All, Config::default())
            .expect("FUSE_INIT handshake")
    };
    let _bg = session.spawn().expect("spawn the session");
    println!("TOY_AGENT_READY taken_over={}", attached.taken_over);
    // Serve until killed; the connection to the holder stays open meanwhile.
    loop {
        std::thread::sleep(Duration::from_secs(60));
        let _ = &client;
    }
}

// ---- helpers -------------------------------------------------------------------------

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: needs root (FUSE mounts)");
    false
}

/// The holder binary; killed on drop.
struct HolderProc {
    child: Child,
    socket: PathBuf,
}

impl HolderProc {
    fn start(dir: &Path, orphan_timeout: &str) -> Self {
        let socket = dir.join("holder.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_strata-holder"))
            .arg("--socket")
            .arg(&socket)
            .arg("--orphan-timeout")
            .arg(orphan_timeout)
            .env("STRATA_LOG", "debug")
            .spawn()
            .expect("start strata-holder");
        let deadline = Instant::now() + Duration::from_secs(5);
        while HolderClient::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "holder did not listen within 5 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        HolderProc { child, socket }
    }

    fn client(&self) -> HolderClient {
        HolderClient::connect(&self.socket).expect("connect to the holder")
    }
}

impl Drop for HolderProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A toy agent process; SIGKILLed on drop.
struct Agent {
    child: Child,
    ready: mpsc::Receiver<bool>,
    taken_over: bool,
}

/// Held while a test process is spawned, and by tests while they hold files open on an
/// orphaned mount (see [`Agent::spawn`]).
static SPAWN: Mutex<()> = Mutex::new(());

impl Agent {
    /// Starts an agent and waits until it serves the mount.
    fn start(holder: &HolderProc, mnt: &Path, stall_reads: bool) -> Self {
        let mut agent = Self::spawn(holder, mnt, stall_reads, false);
        agent.wait_ready();
        agent
    }

    /// Starts an agent process that attaches only after [`Agent::go`]. Processes must be
    /// started while this process has no file open on an orphaned mount: exec closes
    /// inherited descriptors, and closing a FUSE file waits for FLUSH, which only an
    /// agent answers.
    fn spawn(holder: &HolderProc, mnt: &Path, stall_reads: bool, gated: bool) -> Self {
        let _serial = SPAWN.lock().unwrap_or_else(|p| p.into_inner());
        let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
        cmd.args([
            "--exact",
            "toy_agent_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(AGENT_SOCKET, &holder.socket)
        .env(AGENT_MNT, mnt)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
        if stall_reads {
            cmd.env(AGENT_STALL, "1");
        }
        if gated {
            cmd.env(AGENT_GATE, "1");
        }
        let mut child = cmd.spawn().expect("start the toy agent");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The harness prints "test toy_agent_process ... " first, no newline.
                if let Some((_, rest)) = line.split_once("TOY_AGENT_READY taken_over=") {
                    let _ = tx.send(rest.trim() == "true");
                }
            }
        });
        Agent {
            child,
            ready: rx,
            taken_over: false,
        }
    }

    /// Lets a gated agent attach, and waits until it serves.
    fn go(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        stdin.write_all(b"go\n").expect("tell the agent to go");
        stdin.flush().expect("flush");
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        match self.ready.recv_timeout(Duration::from_secs(10)) {
            Ok(t) => self.taken_over = t,
            Err(_) => {
                let _ = self.child.kill();
                panic!(
                    "toy agent did not get ready within 10 s: {:?}",
                    self.child.wait()
                );
            }
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lazily unmounts on drop, so a failed test leaves nothing mounted.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        while is_mounted(&self.0) {
            if nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
    }
}

fn is_mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let path = path.to_str().expect("utf-8 path");
    info.lines().any(|l| l.split(' ').nth(4) == Some(path))
}

/// A temp dir with an empty `mnt` in it, the mount point canonical.
fn setup() -> (tempfile::TempDir, PathBuf, MountGuard) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir mnt");
    let mnt = mnt.canonicalize().expect("canonical");
    let guard = MountGuard(mnt.clone());
    (dir, mnt, guard)
}

/// Runs `f` in a thread; its result arrives on the receiver.
fn in_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

// ---- tests ---------------------------------------------------------------------------

#[test]
fn attach_mounts_fresh_serves_lists_and_unmounts() {
    if !is_root() {
        return;
    }
    let (dir, mnt, _guard) = setup();
    let holder = HolderProc::start(dir.path(), "30s");
    let agent = Agent::start(&holder, &mnt, false);
    assert!(!agent.taken_over, "a fresh mount is not a takeover");
    assert!(is_mounted(&mnt));

    let read = std::fs::read(mnt.join("file")).expect("read through the toy agent");
    assert!(read == content(), "wrong bytes");

    let client = holder.client();
    let held = client.list().expect("list");
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].mountpoint, mnt);
    assert_eq!(held[0].fsname, "toy");
    assert!(held[0].attached && !held[0].answering_eio, "{held:?}");

    client.unmount(&mnt).expect("unmount");
    assert!(!is_mounted(&mnt), "still in /proc/self/mountinfo");
    assert!(client.list().expect("list").is_empty());
    client.unmount(&mnt).expect("unmount again is fine");
    agent.kill();
}

#[test]
fn sigkilled_agent_blocks_readers_until_a_new_agent_takes_over() {
    if !is_root() {
        return;
    }
    let (dir, mnt, _guard) = setup();
    let holder = HolderProc::start(dir.path(), "30s");
    let first = Agent::start(&holder, &mnt, true);
    // Started now: no process may be spawned while the reader's file is open.
    let mut second = Agent::spawn(&holder, &mnt, false, true);

    // A read in flight in the first agent (it never answers reads).
    let file = mnt.join("file");
    let no_spawns = SPAWN.lock().unwrap_or_else(|p| p.into_inner());
    let reading = in_thread({
        let file = file.clone();
        move || std::fs::read(file)
    });
    std::thread::sleep(Duration::from_millis(500));
    first.kill();

    // A request the dead agent never saw: it waits in the kernel.
    let stat = in_thread({
        let file = file.clone();
        move || std::fs::metadata(file).map(|m| m.len())
    });
    match reading.recv_timeout(Duration::from_secs(1)) {
        Err(mpsc::RecvTimeoutError::Timeout) => {}
        other => panic!("the read should block while no agent serves, got {other:?}"),
    }
    match stat.recv_timeout(Duration::from_millis(100)) {
        Err(mpsc::RecvTimeoutError::Timeout) => {}
        other => panic!("stat should block while no agent serves, got {other:?}"),
    }
    let held = holder.client().list().expect("list");
    assert!(!held[0].attached && !held[0].answering_eio, "{held:?}");

    second.go();
    assert!(second.taken_over, "the holder kept the mount");
    let read = reading
        .recv_timeout(Duration::from_secs(10))
        .expect("the read finishes after the takeover")
        .expect("no error for the reader");
    drop(no_spawns);
    assert!(read == content(), "wrong bytes after the takeover");
    let len = stat
        .recv_timeout(Duration::from_secs(10))
        .expect("stat finishes")
        .expect("stat ok");
    assert_eq!(len, content().len() as u64);
    assert!(std::fs::read(&file).expect("a new read") == content());

    holder.client().unmount(&mnt).expect("unmount");
    assert!(!is_mounted(&mnt));
}

#[test]
fn orphan_timeout_answers_eio_then_a_new_agent_serves_again() {
    if !is_root() {
        return;
    }
    let (dir, mnt, _guard) = setup();
    let holder = HolderProc::start(dir.path(), "1s");
    let first = Agent::start(&holder, &mnt, false);
    let file = mnt.join("file");
    assert!(std::fs::read(&file).expect("read") == content());
    first.kill();

    let started = Instant::now();
    let reading = in_thread({
        let file = file.clone();
        move || std::fs::read(file)
    });
    let err = reading
        .recv_timeout(Duration::from_secs(5))
        .expect("the read must not hang")
        .expect_err("no agent: the read fails");
    let waited = started.elapsed();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EIO),
        "EIO, not ENOTCONN: {err}"
    );
    assert!(
        waited >= Duration::from_millis(500) && waited <= Duration::from_secs(3),
        "EIO after {waited:?}, expected about 1 s"
    );
    let held = holder.client().list().expect("list");
    assert!(!held[0].attached && held[0].answering_eio, "{held:?}");
    assert!(is_mounted(&mnt));

    let second = Agent::start(&holder, &mnt, false);
    assert!(second.taken_over, "taken over, not mounted again");
    assert!(std::fs::read(&file).expect("read after the takeover") == content());
    let held = holder.client().list().expect("list");
    assert!(held[0].attached && !held[0].answering_eio, "{held:?}");

    holder.client().unmount(&mnt).expect("unmount");
    assert!(!is_mounted(&mnt));
}

#[test]
fn attach_of_a_mount_served_by_another_agent_is_refused() {
    if !is_root() {
        return;
    }
    let (dir, mnt, _guard) = setup();
    let holder = HolderProc::start(dir.path(), "30s");
    let _agent = Agent::start(&holder, &mnt, false);
    let other = holder.client();
    let err = other
        .attach(&AttachRequest {
            mountpoint: mnt.clone(),
            fsname: "toy".into(),
            allow_other: false,
            writable: false,
        })
        .expect_err("the mount has a live agent");
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Refused(_))
            && msg.contains(mnt.to_str().unwrap())
            && msg.contains("another agent"),
        "{msg}"
    );
    // The mount still works for its agent.
    assert!(std::fs::read(mnt.join("file")).expect("read") == content());
    other.unmount(&mnt).expect("unmount");
}

#[test]
fn sigterm_stops_the_holder_and_detaches_its_mounts() {
    if !is_root() {
        return;
    }
    let (dir, mnt, _guard) = setup();
    let mut holder = HolderProc::start(dir.path(), "30s");
    let agent = Agent::start(&holder, &mnt, false);
    let pid = nix::unistd::Pid::from_raw(holder.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = holder.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the holder did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    // Detached, not left dead ("Transport endpoint is not connected"): the path is a
    // plain directory again.
    assert!(!is_mounted(&mnt));
    std::fs::read_dir(&mnt).expect("the mount point answers");
    agent.kill();
}

#[test]
fn connect_or_spawn_starts_a_holder_that_exits_when_idle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("holder.sock");
    assert!(matches!(
        HolderClient::connect(&socket),
        Err(Error::NotRunning(_))
    ));
    let mut child = None;
    let client = strata_holder::connect_or_spawn(&socket, || {
        child = Some(
            Command::new(env!("CARGO_BIN_EXE_strata-holder"))
                .arg("--socket")
                .arg(&socket)
                .arg("--exit-when-idle")
                .spawn()?,
        );
        Ok(())
    })
    .expect("connect_or_spawn");
    let mut child = child.expect("spawned");
    assert!(client.list().expect("list").is_empty());
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "{status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the holder did not exit when idle");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!socket.exists(), "the socket file is removed on exit");
}
