//! Checks the kernel side of the mount takeover (docs/design/mount-takeover.md) on this machine,
//! with the patched fuser: a daemon serving a FUSE mount is killed with SIGKILL while a read is
//! in flight; a copy of its `/dev/fuse` descriptor kept by another process is served by a new
//! daemon (`Session::from_fd_initialized`, no second INIT) that asks the kernel to queue the
//! unanswered request again (`Notifier::resend`). The reader must get the right bytes and no
//! error. Needs root.
//!
//!     cargo run -p strata-agent --example takeover_probe
//!
//! With `PROBE_NO_RESEND=1` the new daemon does not ask for the resend: the reader then hangs
//! (the request the dead daemon read is never answered), which shows the resend is what works.

#![allow(unsafe_code)] // fork, kill and waitpid: the probe needs a second process

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::AsFd;
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyEntry, ReplyOpen, Request,
    Session, SessionACL,
};

const FILE_INO: u64 = 2;
const NO_CACHE: Duration = Duration::ZERO;

fn content() -> Vec<u8> {
    (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect()
}

/// One file, `/file`. The first daemon stalls every read, so one is in flight when it dies.
struct Probe {
    stall_reads: bool,
    data: Vec<u8>,
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

impl Filesystem for Probe {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == 1 && name == "file" {
            reply.entry(
                &NO_CACHE,
                &attr(FILE_INO, self.data.len() as u64),
                Generation(0),
            );
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
        // Direct I/O: every read reaches the daemon, none is served from the page cache.
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

fn main() -> std::io::Result<()> {
    let dir = tempfile::tempdir()?;
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt)?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("takeover-probe".into()),
    ];
    config.n_threads = Some(1);
    config.clone_fd = false;

    let first = Probe {
        stall_reads: true,
        data: content(),
    };
    let session = Session::new(first, &mnt, &config)?;
    // The holder's copy of the connection: it keeps the connection alive when the daemon dies.
    let held = session.as_fd().try_clone_to_owned()?;
    // SAFETY: no other thread exists yet; the child only runs the session loop and exits.
    let daemon = unsafe { libc::fork() };
    if daemon == 0 {
        let _ = session.run();
        std::process::exit(0);
    }
    // The mount belongs to the connection now, not to this copy of the session.
    std::mem::forget(session);

    let file = mnt.join("file");
    let reader = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        std::fs::File::open(&file)?.read_to_end(&mut bytes)?;
        Ok(bytes)
    });
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: plain syscalls on the child's pid.
    unsafe {
        libc::kill(daemon, libc::SIGKILL);
        libc::waitpid(daemon, std::ptr::null_mut(), 0);
    }
    println!("first daemon (pid {daemon}) killed with a read in flight");

    let second = Probe {
        stall_reads: false,
        data: content(),
    };
    let session = Session::from_fd_initialized(second, held, SessionACL::Owner, config);
    // The control: without the resend the read in flight is never answered.
    if std::env::var_os("PROBE_NO_RESEND").is_none() {
        session.notifier().resend()?;
        println!("second daemon took the connection over and asked for a resend");
    } else {
        println!("second daemon took the connection over, no resend (PROBE_NO_RESEND)");
    }
    let serving = std::thread::spawn(move || session.run());

    let read = reader.join().expect("reader thread")?;
    let ok = read == content();
    println!(
        "reader got {} bytes, {}",
        read.len(),
        if ok { "all right" } else { "WRONG" }
    );
    let again = std::fs::read(mnt.join("file"))?;
    println!(
        "a new open and read after the takeover: {}",
        if again == content() { "right" } else { "WRONG" }
    );
    let status = std::process::Command::new("umount")
        .arg("-l")
        .arg(&mnt)
        .status()?;
    let _ = serving.join();
    if !(ok && again == content() && status.success()) {
        std::process::exit(1);
    }
    Ok(())
}
