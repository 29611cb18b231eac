//! Writes blocks into the disk tier's files with `O_DIRECT`, around the page cache.
//!
//! On the cold read path the buffered write of each fetched block was the agent's largest
//! CPU cost: the kernel copies the block into fresh page-cache pages and then throttles the
//! writer on dirty pages. Measured on the 2-core test VM (ext4): `dd bs=4M` of 1 GiB took
//! 2.1 s of CPU and 4.5 s of wall time buffered, 0.09 s and 0.6 s with `O_DIRECT`; in a
//! profile of a cold 1 GiB read through the mount, `copy_folio_from_iter_atomic` under
//! `pwrite` was 40% of the agent's samples. A block is written once and later read by the
//! kernel (passthrough) or by a rare agent read, so the page-cache copy buys nothing.
//!
//! `O_DIRECT` needs the buffer, offset and length aligned to the device's logical block:
//! blocks are powers of two of at least 1 MiB, so offsets are aligned; the data is copied
//! into an aligned buffer (a user-space copy, far cheaper than the kernel path above), and
//! the unaligned tail of an object's last block is written buffered. File systems that
//! refuse `O_DIRECT` (EINVAL: tmpfs on older kernels, some overlays) switch the writer to
//! buffered writes for good.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

/// Alignment of `O_DIRECT` buffers, offsets and lengths (the largest logical block size
/// in common use).
pub const DIRECT_ALIGN: usize = 4096;

/// Bytes of idle block buffers [`BlockBuffers`] keeps for reuse (16 buffers at 4 MiB
/// blocks): enough for the blocks freed while the next ones are being fetched, and a
/// fixed amount whatever the block size.
const IDLE_BUFFER_BYTES: usize = 64 << 20;

/// Aligned buffers for fetched blocks, reused once every copy of a block is dropped. A
/// fresh 4 MiB buffer is mapped and faulted in page by page (1,024 faults, each page
/// zeroed) and unmapped when freed; on the cold read path that was 20% of the agent's CPU
/// (`perf record -a` during a 1 GiB preload). A reused one is already in memory.
#[derive(Debug, Default)]
pub struct BlockBuffers {
    idle: Mutex<Vec<Vec<u8>>>,
}

impl BlockBuffers {
    /// An empty buffer for `len` bytes of block data, aligned for `O_DIRECT`: filled with
    /// [`BlockBuffer::extend_from_slice`] and frozen, it is written by
    /// [`BlockWriter::write_at`] without a copy into an aligned buffer first.
    pub fn take(self: &Arc<Self>, len: usize) -> BlockBuffer {
        let need = len + DIRECT_ALIGN;
        let reused = {
            let mut idle = self.idle.lock().expect("block buffers");
            let fit = idle.iter().position(|b| b.capacity() >= need);
            fit.map(|i| idle.swap_remove(i))
        };
        let mut vec = reused.unwrap_or_else(|| Vec::with_capacity(need));
        vec.clear();
        let start = vec.as_ptr().align_offset(DIRECT_ALIGN);
        vec.resize(start, 0);
        BlockBuffer {
            vec,
            start,
            pool: Arc::downgrade(self),
        }
    }

    /// Buffers waiting for reuse.
    pub fn idle(&self) -> usize {
        self.idle.lock().expect("block buffers").len()
    }

    fn give_back(&self, vec: Vec<u8>) {
        let mut idle = self.idle.lock().expect("block buffers");
        let held: usize = idle.iter().map(Vec::capacity).sum();
        if held + vec.capacity() <= IDLE_BUFFER_BYTES {
            idle.push(vec);
        }
    }
}

/// One block's data in an aligned buffer from [`BlockBuffers`], which gets the buffer back
/// when this (or the [`Bytes`] made by [`Self::freeze`], and every slice of it) drops.
#[derive(Debug)]
pub struct BlockBuffer {
    vec: Vec<u8>,
    // Where the aligned data starts in `vec`.
    start: usize,
    pool: Weak<BlockBuffers>,
}

impl BlockBuffer {
    /// Bytes of data so far.
    pub fn len(&self) -> usize {
        self.vec.len() - self.start
    }

    /// Whether no data was added yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends data; never moves the buffer as long as the total stays within the `len`
    /// it was taken for.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.vec.extend_from_slice(data);
    }

    /// The data as shared bytes; the buffer goes back to the pool when the last copy drops.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for BlockBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.vec[self.start..]
    }
}

impl Drop for BlockBuffer {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.give_back(std::mem::take(&mut self.vec));
        }
    }
}

/// Writes block data into cache files, with `O_DIRECT` where the file system allows it.
#[derive(Debug)]
pub struct BlockWriter {
    direct: AtomicBool,
    // Aligned buffers for fetched blocks, and for copying unaligned data before an
    // `O_DIRECT` write.
    buffers: Arc<BlockBuffers>,
}

impl Default for BlockWriter {
    fn default() -> Self {
        Self::new(true)
    }
}

impl BlockWriter {
    /// A writer; `direct: false` always writes through the page cache.
    pub fn new(direct: bool) -> Self {
        BlockWriter {
            direct: AtomicBool::new(direct),
            buffers: Arc::default(),
        }
    }

    /// The pool of aligned block buffers this writer writes from without a copy.
    pub fn buffers(&self) -> &Arc<BlockBuffers> {
        &self.buffers
    }

    /// Whether writes still go around the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }

    /// Writes `data` at `offset` of the file at `path`; `buffered` is the same file opened
    /// normally (used for unaligned parts and as the fallback).
    pub fn write_at(
        &self,
        path: &Path,
        buffered: &File,
        data: &[u8],
        offset: u64,
    ) -> io::Result<()> {
        let aligned_len = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
        if !self.is_direct() || aligned_len == 0 || !offset.is_multiple_of(DIRECT_ALIGN as u64) {
            return buffered.write_all_at(data, offset);
        }
        match self.write_direct(path, &data[..aligned_len], offset) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.direct.store(false, Ordering::Relaxed);
                tracing::info!(dir = %path.parent().unwrap_or(path).display(), error = %e,
                    "the cache file system refuses O_DIRECT; writing blocks through the page cache");
                return buffered.write_all_at(data, offset);
            }
            Err(e) => return Err(e),
        }
        if aligned_len < data.len() {
            buffered.write_all_at(&data[aligned_len..], offset + aligned_len as u64)?;
        }
        Ok(())
    }

    fn write_direct(&self, path: &Path, data: &[u8], offset: u64) -> io::Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)?;
        if data.as_ptr().align_offset(DIRECT_ALIGN) == 0 {
            // Already aligned (a block from `BlockBuffers`): no copy.
            return file.write_all_at(data, offset);
        }
        let mut aligned = self.buffers.take(data.len());
        aligned.extend_from_slice(data);
        file.write_all_at(aligned.as_ref(), offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    /// Every block shape the cache writes (whole aligned blocks, a last block with an
    /// unaligned tail, a last block shorter than the alignment) lands byte for byte, in
    /// any order, on a real file system.
    #[test]
    fn blocks_land_byte_for_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("object.data");
        let block = 64 * 1024;
        let size = 3 * block + 5000;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        file.set_len(size as u64).expect("set_len");
        let want = pattern(size, 7);
        let writer = BlockWriter::default();
        for index in [3usize, 1, 0, 2] {
            let start = index * block;
            let end = (start + block).min(size);
            writer
                .write_at(&path, &file, &want[start..end], start as u64)
                .expect("write");
        }
        assert_eq!(std::fs::read(&path).expect("read back"), want);

        let tiny = dir.path().join("tiny.data");
        let f = File::create(&tiny).expect("create");
        writer.write_at(&tiny, &f, b"abc", 0).expect("write tiny");
        assert_eq!(std::fs::read(&tiny).expect("read tiny"), b"abc");
    }

    /// A block assembled in a pooled buffer is aligned, written from that buffer as it is,
    /// and the buffer is reused (same memory) once the last copy of the block drops.
    #[test]
    fn block_buffers_are_aligned_written_as_they_are_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("object.data");
        let file = File::create(&path).expect("create");
        let want = pattern(3 * DIRECT_ALIGN + 5, 9);
        let buffers = Arc::new(BlockBuffers::default());
        let mut buf = buffers.take(want.len());
        buf.extend_from_slice(&want[..100]);
        buf.extend_from_slice(&want[100..]);
        let block = buf.freeze();
        assert_eq!(block.as_ptr().align_offset(DIRECT_ALIGN), 0);
        let writer = BlockWriter::default();
        writer.write_at(&path, &file, &block, 0).expect("write");
        assert_eq!(std::fs::read(&path).expect("read back"), want);

        let first = block.as_ptr();
        let tail = block.slice(10..);
        drop(block);
        assert_eq!(buffers.idle(), 0, "a slice still holds the buffer");
        drop(tail);
        assert_eq!(buffers.idle(), 1);
        let mut again = buffers.take(want.len());
        assert!(again.is_empty(), "a reused buffer starts empty");
        again.extend_from_slice(b"x");
        assert_eq!(again.freeze().as_ptr(), first);
        assert_eq!(buffers.idle(), 1);
    }

    /// Idle buffers are kept up to a fixed number of bytes, whatever the block size.
    #[test]
    fn idle_buffers_are_bounded_in_bytes() {
        let buffers = Arc::new(BlockBuffers::default());
        let taken: Vec<BlockBuffer> = (0..5).map(|_| buffers.take(20 << 20)).collect();
        drop(taken);
        assert_eq!(
            buffers.idle(),
            3,
            "three 20 MiB buffers fit in 64 MiB, a fourth does not"
        );
    }

    #[test]
    fn buffered_writer_writes_the_same_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("object.data");
        let file = File::create(&path).expect("create");
        let want = pattern(2 * DIRECT_ALIGN + 17, 3);
        let writer = BlockWriter::new(false);
        writer.write_at(&path, &file, &want, 0).expect("write");
        assert!(!writer.is_direct());
        assert_eq!(std::fs::read(&path).expect("read back"), want);
    }
}
