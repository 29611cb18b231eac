//! Packets with at most one descriptor over a SOCK_SEQPACKET unix socket.
//!
//! The one place that needs `unsafe`: nix 0.30 hands accepted sockets and SCM_RIGHTS
//! descriptors back as raw numbers, and only `OwnedFd::from_raw_fd` turns them into owned
//! ones. Everything else in the crate stays safe.
#![allow(unsafe_code)]

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, accept4, recvmsg, sendmsg,
};

/// Takes ownership of a descriptor the kernel just created for this process.
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was returned by accept4 or installed by SCM_RIGHTS a moment ago;
    // nothing else in the process knows its number, so this is its only owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Accepts one connection, close-on-exec.
pub(crate) fn accept(listener: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC).map(owned)
}

/// Sends one packet, with `fd` attached if given.
pub(crate) fn send(
    sock: BorrowedFd<'_>,
    payload: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> nix::Result<()> {
    let iov = [IoSlice::new(payload)];
    let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(_) => return Ok(()),
        }
    }
}

/// Receives one packet into `buf`: its length (0 = the peer closed) and the descriptors
/// that came with it (close-on-exec).
pub(crate) fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> nix::Result<(usize, Vec<OwnedFd>)> {
    let mut space = nix::cmsg_space!([RawFd; 4]);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(msg) => msg,
        };
        let mut fds = Vec::new();
        // Own every descriptor before looking at errors, so none leaks.
        if let Ok(cmsgs) = msg.cmsgs() {
            for cmsg in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = cmsg {
                    fds.extend(raw.into_iter().map(owned));
                }
            }
        }
        if msg.flags.contains(MsgFlags::MSG_TRUNC) {
            return Err(Errno::EMSGSIZE);
        }
        return Ok((msg.bytes, fds));
    }
}
