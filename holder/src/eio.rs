//! Answering a mount's FUSE requests when no agent serves it: EIO for everything that
//! needs an answer, so readers fail instead of hanging.

use std::os::fd::BorrowedFd;

use nix::errno::Errno;
use nix::unistd::{read, write};

const IN_HEADER: usize = 40;
const OUT_HEADER: u32 = 16;

const FUSE_FORGET: u32 = 2;
const FUSE_RELEASE: u32 = 18;
const FUSE_FLUSH: u32 = 25;
const FUSE_RELEASEDIR: u32 = 29;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_DESTROY: u32 = 38;
const FUSE_NOTIFY_REPLY: u32 = 41;
const FUSE_BATCH_FORGET: u32 = 42;
const FUSE_NOTIFY_RESEND: i32 = 7;

/// The kernel refuses reads shorter than `max_write` plus headers (EINVAL). Agents
/// negotiate 1 MiB; fuser's ceiling is 16 MiB, used if the short buffer is refused.
const BUF_SMALL: usize = (1 << 20) + 2 * 4096;
const BUF_LARGE: usize = (16 << 20) + 2 * 4096;

/// Requests handled per mount per wake-up, so one busy mount cannot starve the socket.
const BURST: usize = 64;

/// What the EIO loop did with one mount's pending requests.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub eio: u64,
    pub ok: u64,
    pub dropped: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Keep polling.
    Alive,
    /// ENODEV: the connection is gone (unmounted or aborted).
    Gone,
}

/// A reusable read buffer, grown once if the kernel asks for more.
pub(crate) struct Buffer(Vec<u8>);

impl Buffer {
    pub(crate) fn new() -> Self {
        Buffer(Vec::new())
    }
}

fn out_header(error: i32, unique: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&OUT_HEADER.to_le_bytes());
    b[4..8].copy_from_slice(&error.to_le_bytes());
    b[8..16].copy_from_slice(&unique.to_le_bytes());
    b
}

/// Asks the kernel to queue again the requests a dead agent had read but not answered.
/// Old kernels (before 6.9) refuse with EINVAL; those requests then stay unanswered.
pub(crate) fn resend(fd: BorrowedFd<'_>) -> Outcome {
    match write(fd, &out_header(FUSE_NOTIFY_RESEND, 0)) {
        Err(Errno::ENODEV) => Outcome::Gone,
        Err(Errno::EINVAL) => {
            tracing::debug!("kernel has no FUSE_NOTIFY_RESEND (before 6.9)");
            Outcome::Alive
        }
        Err(e) => {
            tracing::warn!("FUSE_NOTIFY_RESEND failed: {e}");
            Outcome::Alive
        }
        Ok(_) => Outcome::Alive,
    }
}

/// Reads and answers the requests pending on `fd` (which must be O_NONBLOCK).
pub(crate) fn serve(fd: BorrowedFd<'_>, buf: &mut Buffer, counts: &mut Counts) -> Outcome {
    if buf.0.is_empty() {
        buf.0 = vec![0u8; BUF_SMALL];
    }
    let mut handled = 0;
    while handled < BURST {
        let n = match read(fd, &mut buf.0) {
            Ok(n) => n,
            Err(Errno::EAGAIN | Errno::EINTR) => return Outcome::Alive,
            Err(Errno::ENODEV) => return Outcome::Gone,
            Err(Errno::EINVAL) if buf.0.len() < BUF_LARGE => {
                buf.0 = vec![0u8; BUF_LARGE];
                continue;
            }
            Err(e) => {
                tracing::warn!("reading /dev/fuse: {e}");
                return Outcome::Alive;
            }
        };
        handled += 1;
        if n < IN_HEADER {
            tracing::warn!("short FUSE request ({n} bytes), ignored");
            continue;
        }
        let h = &buf.0[..IN_HEADER];
        let opcode = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
        let unique = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
        let error = match opcode {
            FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT | FUSE_NOTIFY_REPLY => {
                counts.dropped += 1;
                continue;
            }
            FUSE_RELEASE | FUSE_RELEASEDIR | FUSE_FLUSH | FUSE_DESTROY => {
                counts.ok += 1;
                0
            }
            _ => {
                counts.eio += 1;
                -libc::EIO
            }
        };
        match write(fd, &out_header(error, unique)) {
            // The request was interrupted meanwhile: nobody waits for the answer.
            Ok(_) | Err(Errno::ENOENT) => {}
            Err(Errno::ENODEV) => return Outcome::Gone,
            Err(e) => tracing::warn!("answering FUSE request (opcode {opcode}): {e}"),
        }
    }
    Outcome::Alive
}
