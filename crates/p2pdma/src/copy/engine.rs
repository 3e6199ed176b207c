//! The pipelined io_uring engine: O_DIRECT reads into a buffer, O_DIRECT writes out of it.
//!
//! Each buffer ("slot") carries one chunk at a time: read it in full, then write it in
//! full, then take the next chunk. Reads and writes are kept in flight independently, up
//! to the queue depth each, so with `2 * depth` slots the source sees `depth` reads and
//! the destination `depth` writes at all times, as two fio jobs would. Requests are queued
//! in user space and handed to the kernel in batches (one `io_uring_enter` for all of
//! them); both files are registered with the ring, and host-memory buffers too
//! (`IORING_OP_READ_FIXED`/`WRITE_FIXED`). Device memory stays on plain
//! `IORING_OP_READ`/`IORING_OP_WRITE` with raw pointers: registering p2pmem as fixed
//! buffers fails with EFAULT, and the kernel pins the pages per request instead (GUP with
//! `FOLL_PCI_P2PDMA`). A destination file that grows is preallocated (fallocate) first.
//!
//! The buffers belong to the engine while it runs and are only released once every
//! submitted request has completed, on success, on error and on unwinding alike. After
//! the first failure nothing more is handed to the kernel, not even what was already
//! queued, so the report of the destination bytes written is exact.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};
use serde::Serialize;

use super::plan::{Chunk, CopyPlan, HumanBytes, RangeSet};

/// Memory the kernel may read and write through a raw pointer while I/O is in flight.
///
/// # Safety
/// `io_ptr()` must point to `io_len()` bytes that stay mapped, writable and at the same
/// address for as long as the value is alive (moving the value must not move the memory),
/// and that no Rust reference aliases while the engine owns the value.
pub unsafe trait IoRegion {
    /// Start of the region.
    fn io_ptr(&self) -> *mut u8;
    /// Length of the region in bytes.
    fn io_len(&self) -> usize;
    /// The region is PCI device memory (p2pmem), not host RAM: decides how errors read.
    fn is_device_memory(&self) -> bool;
    /// The memory is still backed (false once a p2pmem provider was unbound or removed).
    fn is_live(&self) -> bool {
        true
    }
}

/// One side of a copy: an open file (O_DIRECT) and the name to use in messages.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    /// The open file or block device.
    pub file: &'a File,
    /// Its path, for messages.
    pub path: &'a Path,
}

/// Which half of a chunk's trip failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Device (or file) to buffer.
    Read,
    /// Buffer to device (or file).
    Write,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Read => "read",
            Op::Write => "write",
        })
    }
}

/// What a failed request means, decided from its errno and the kind of buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The kernel refused to map device memory for this device: no P2P path between the
    /// provider and this device (EREMOTEIO up to Linux 6.16; EINVAL on newer kernels).
    P2pRefused,
    /// ENOMEM: the p2pmem pool (or host memory) ran out.
    OutOfMemory,
    /// EACCES / EPERM.
    PermissionDenied,
    /// ENODEV, or EFAULT on device memory that is no longer live: the provider was
    /// unbound or removed.
    ProviderGone,
    /// ENOSPC: the filesystem (or thin device) is full.
    NoSpace,
    /// EIO: the device reported a media or transport error.
    DeviceError,
    /// The source ended early (a read returned 0 bytes) or a write made no progress.
    Truncated,
    /// Anything else.
    Other,
}

impl FailureKind {
    /// Interprets `err` from a request that used a buffer of the given kind.
    pub fn classify(err: &io::Error, device_memory: bool, buffer_live: bool) -> FailureKind {
        match err.raw_os_error() {
            Some(libc::EREMOTEIO) if device_memory => FailureKind::P2pRefused,
            // Offsets, lengths and buffer addresses were checked against the O_DIRECT
            // rules before the copy started, so on device memory EINVAL is the newer
            // kernels' spelling of a refused P2P mapping.
            Some(libc::EINVAL) if device_memory && buffer_live => FailureKind::P2pRefused,
            Some(libc::ENOMEM) => FailureKind::OutOfMemory,
            Some(libc::EACCES | libc::EPERM) => FailureKind::PermissionDenied,
            Some(libc::ENODEV | libc::ENXIO) if device_memory => FailureKind::ProviderGone,
            Some(libc::EFAULT | libc::EINVAL) if device_memory && !buffer_live => {
                FailureKind::ProviderGone
            }
            Some(libc::ENOSPC | libc::EFBIG) => FailureKind::NoSpace,
            Some(libc::EIO) => FailureKind::DeviceError,
            _ if err.kind() == io::ErrorKind::UnexpectedEof
                || err.kind() == io::ErrorKind::WriteZero =>
            {
                FailureKind::Truncated
            }
            _ => FailureKind::Other,
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::P2pRefused => {
                "the kernel refused P2P DMA between this device and the buffer's provider"
            }
            FailureKind::OutOfMemory => "out of memory for the transfer",
            FailureKind::PermissionDenied => "permission denied",
            FailureKind::ProviderGone => "the p2pmem provider went away (unbound or removed)",
            FailureKind::NoSpace => "no space left",
            FailureKind::DeviceError => "the device reported an I/O error",
            FailureKind::Truncated => "the transfer came up short",
            FailureKind::Other => "the request failed",
        })
    }
}

/// One failed request.
#[derive(Debug, thiserror::Error)]
#[error("{op} of {len} bytes at offset {offset} of {} failed: {kind}", path.display())]
pub struct IoFailure {
    /// Read or write.
    pub op: Op,
    /// The file or device.
    pub path: PathBuf,
    /// Byte offset of the failed request in that file or device.
    pub offset: u64,
    /// Bytes the request asked for.
    pub len: u64,
    /// What the error means here.
    pub kind: FailureKind,
    /// The error the kernel returned.
    #[source]
    pub source: io::Error,
}

/// Which bytes reached the destination before the copy stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Written {
    /// The destination.
    pub path: PathBuf,
    /// The first destination byte of the copy.
    pub dst_offset: u64,
    /// Every destination byte range whose write completed (merged, sorted).
    pub ranges: RangeSet,
}

impl Written {
    /// End of the run of written bytes that starts at `dst_offset` (== `dst_offset` when
    /// not even the first chunk landed).
    pub fn contiguous_end(&self) -> u64 {
        self.ranges.contiguous_end_from(self.dst_offset)
    }
}

impl fmt::Display for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self.contiguous_end();
        write!(
            f,
            "{} of {} written, contiguous from offset {} to {} ({})",
            HumanBytes(self.ranges.total()),
            self.path.display(),
            self.dst_offset,
            end,
            HumanBytes(end - self.dst_offset)
        )?;
        let stray: Vec<String> = self
            .ranges
            .ranges()
            .iter()
            .filter(|r| r.start > self.dst_offset)
            .map(|r| format!("{}..{}", r.start, r.end))
            .collect();
        if !stray.is_empty() {
            write!(f, ", plus {}", stray.join(", "))?;
        }
        f.write_str("; every other destination byte is untouched")
    }
}

/// Why the engine stopped.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// io_uring is unavailable (old kernel, `kernel.io_uring_disabled`, seccomp).
    #[error("cannot set up an io_uring with {entries} entries")]
    Ring {
        /// Ring size asked for.
        entries: u32,
        /// The error from io_uring_setup.
        #[source]
        source: io::Error,
    },
    /// The buffers cannot carry the plan's chunks.
    #[error("{count} buffer(s) given, the smallest holding {smallest} bytes, for chunks of {chunk_size} bytes; give at least one buffer of at least one chunk")]
    BadBuffers {
        /// How many buffers.
        count: usize,
        /// The smallest buffer's length.
        smallest: usize,
        /// The plan's chunk size.
        chunk_size: u64,
    },
    /// A request failed; nothing more was submitted and everything in flight was reaped.
    #[error("the copy stopped part-way ({written})")]
    Stopped {
        /// What reached the destination.
        written: Written,
        /// The first failure.
        #[source]
        failure: IoFailure,
    },
    /// `io_uring_enter` itself failed with requests in flight. The buffers were leaked
    /// rather than freed under the kernel's feet.
    #[error("io_uring_enter failed with {in_flight} request(s) in flight ({written}; buffers leaked to stay safe)")]
    RingFailed {
        /// Requests that were never reaped.
        in_flight: usize,
        /// What reached the destination as far as known.
        written: Written,
        /// The error from io_uring_enter.
        #[source]
        source: io::Error,
    },
}

/// Counters of a finished copy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EngineReport {
    /// Bytes written to the destination (the plan's length).
    pub bytes: u64,
    /// Wall time from the first submission to the last completion.
    pub elapsed: Duration,
    /// Read requests submitted (including resubmissions).
    pub reads: u64,
    /// Write requests submitted (including resubmissions).
    pub writes: u64,
    /// Reads and writes that completed short and were resubmitted for the remainder.
    pub short_transfers: u64,
    /// Requests retried after EINTR/EAGAIN.
    pub retries: u64,
    /// User CPU time of the whole process over the run (io_uring worker threads
    /// included; other threads of the process too, if any were busy meanwhile).
    pub cpu_user: Duration,
    /// System CPU time of the whole process over the run, counted like `cpu_user`.
    pub cpu_system: Duration,
}

/// User and system CPU time the process has used so far (getrusage(2), `RUSAGE_SELF`).
pub fn process_cpu_time() -> (Duration, Duration) {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: usage is a valid, writable rusage; RUSAGE_SELF cannot fail with it.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return (Duration::ZERO, Duration::ZERO);
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (time(usage.ru_utime), time(usage.ru_stime))
}

/// How many times one request is retried after EINTR/EAGAIN before giving up.
const MAX_RETRIES: u32 = 16;

/// How many times in a row io_uring_enter may refuse new requests (EAGAIN, EBUSY) while
/// nothing is in flight before the engine gives up.
const MAX_ENTER_REFUSALS: u32 = 1000;

/// `IORING_ENTER_GETEVENTS` from include/uapi/linux/io_uring.h: wait for completions.
const IORING_ENTER_GETEVENTS: u32 = 1;

/// Index of the source in a pipeline's files.
pub(crate) const SRC: usize = 0;
/// Index of the destination in a pipeline's files.
pub(crate) const DST: usize = 1;

/// Builds one read or write entry for a fixed (registered) or plain file descriptor.
macro_rules! rw_entry {
    ($fd:expr, $op:expr, $ptr:expr, $len:expr, $offset:expr, $fixed_buffer:expr) => {
        match ($op, $fixed_buffer) {
            (Op::Read, Some(index)) => opcode::ReadFixed::new($fd, $ptr, $len, index)
                .offset($offset)
                .build(),
            (Op::Read, None) => opcode::Read::new($fd, $ptr, $len).offset($offset).build(),
            (Op::Write, Some(index)) => {
                opcode::WriteFixed::new($fd, $ptr.cast_const(), $len, index)
                    .offset($offset)
                    .build()
            }
            (Op::Write, None) => opcode::Write::new($fd, $ptr.cast_const(), $len)
                .offset($offset)
                .build(),
        }
    };
}

/// A queued request: its entry, its slot and its direction.
#[derive(Debug, Clone)]
struct Queued {
    entry: squeue::Entry,
    slot: usize,
    op: Op,
}

/// The ring, two files and the buffers the ring may be using.
///
/// Requests are queued in user space ([`Pipeline::queue`]) and handed to the kernel in
/// batches (one `io_uring_enter` for everything that fits in the submission queue) by
/// [`Pipeline::submit_and_wait`]. Once [`Pipeline::stop`] was called, nothing queued is
/// ever submitted, not even by the drain on drop: a stopped pipeline only waits for what
/// the kernel already took. Dropping it reaps every request the kernel took before the
/// buffers go; if that is impossible the buffers are leaked.
pub(crate) struct Pipeline<'f, R: IoRegion> {
    // Declared before `buffers`: the ring (and the buffers' registration) goes first.
    ring: IoUring,
    fds: [RawFd; 2],
    _files: PhantomData<&'f File>,
    fixed_files: bool,
    fixed_buffers: bool,
    buffers: Option<Vec<R>>,
    /// Requests queued or in the kernel, per slot.
    busy: Vec<u32>,
    /// Queued requests not yet in the submission queue.
    backlog: VecDeque<Queued>,
    /// Requests in the submission queue the kernel has not consumed yet, in push order.
    unconsumed: VecDeque<(usize, Op)>,
    /// Requests the kernel consumed whose completions were not reaped yet.
    in_flight: usize,
    /// Requests in flight plus in the submission queue stay under this (the completion
    /// queue's size), so completions never overflow.
    max_outstanding: usize,
    stopped: bool,
    /// Requests the kernel consumed, by direction.
    submitted: [u64; 2],
}

/// Sets up a ring with `entries` submission entries and twice as many completion
/// entries, with the cheapest completion mode the kernel offers (deferred task work for
/// a single issuer since Linux 6.1, cooperative task work since 5.19, else the default).
fn new_ring(entries: u32) -> io::Result<IoUring> {
    let cq = entries.saturating_mul(2);
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(cq)
        .build(entries)
        .or_else(|_| {
            IoUring::builder()
                .setup_coop_taskrun()
                .setup_cqsize(cq)
                .build(entries)
        })
        .or_else(|_| IoUring::builder().setup_cqsize(cq).build(entries))
}

impl<'f, R: IoRegion> Pipeline<'f, R> {
    /// A ring of `entries` submission entries over `files` ([`SRC`], [`DST`]) and
    /// `buffers` (slot i is `buffers[i]`). The files are registered with the ring, and
    /// host-memory buffers too (for `READ_FIXED`/`WRITE_FIXED`); device memory cannot be
    /// registered (the kernel refuses to pin p2pmem that way), so it is always passed by
    /// pointer. Either registration falling back to the plain form is not an error.
    pub(crate) fn new(files: [&'f File; 2], buffers: Vec<R>, entries: u32) -> io::Result<Self> {
        let ring = new_ring(entries)?;
        let fds = files.map(|f| f.as_raw_fd());
        let fixed_files = ring.submitter().register_files(&fds).is_ok();
        let fixed_buffers = buffers.len() <= usize::from(u16::MAX)
            && buffers.iter().all(|b| !b.is_device_memory())
            && {
                let iovecs: Vec<libc::iovec> = buffers
                    .iter()
                    .map(|b| libc::iovec {
                        iov_base: b.io_ptr().cast(),
                        iov_len: b.io_len(),
                    })
                    .collect();
                // SAFETY: each iovec covers one buffer that the pipeline owns from here on;
                // IoRegion guarantees it stays mapped at that address while the value
                // lives, and the ring (with the registration) is dropped before the buffers
                // (field order; Drop leaks the buffers instead if requests remain).
                unsafe { ring.submitter().register_buffers(&iovecs) }.is_ok()
            };
        let max_outstanding = ring.params().cq_entries() as usize;
        Ok(Pipeline {
            ring,
            fds,
            _files: PhantomData,
            fixed_files,
            fixed_buffers,
            busy: vec![0; buffers.len()],
            buffers: Some(buffers),
            backlog: VecDeque::new(),
            unconsumed: VecDeque::new(),
            in_flight: 0,
            max_outstanding,
            stopped: false,
            submitted: [0; 2],
        })
    }

    fn buffers(&self) -> &[R] {
        // The Option is only emptied in Drop.
        self.buffers.as_deref().expect("buffers present until drop")
    }

    /// Slot `slot`'s buffer.
    pub(crate) fn buffer(&self, slot: usize) -> &R {
        &self.buffers()[slot]
    }

    /// Slots `a` and `b`'s buffers (a != b), to touch their bytes: `None` while a request
    /// on either is queued or in flight.
    pub(crate) fn pair_mut(&mut self, a: usize, b: usize) -> Option<(&mut R, &mut R)> {
        if a == b || self.busy[a] > 0 || self.busy[b] > 0 {
            return None;
        }
        let buffers = self.buffers.as_deref_mut()?;
        let (low, high) = (a.min(b), a.max(b));
        let (head, tail) = buffers.split_at_mut(high);
        let (x, y) = (&mut head[low], &mut tail[0]);
        Some(if a < b { (x, y) } else { (y, x) })
    }

    /// Queues a request on slot `slot`: read `len` bytes at `file_offset` of file `file`
    /// into the slot's buffer at `buf_offset`, or write them from there. Nothing reaches
    /// the kernel before the next [`Pipeline::submit_and_wait`]; a stopped pipeline drops
    /// the request.
    ///
    /// # Panics
    /// If the range does not fit in the slot's buffer, or `file` is not [`SRC`]/[`DST`].
    pub(crate) fn queue(
        &mut self,
        op: Op,
        file: usize,
        slot: usize,
        buf_offset: usize,
        len: usize,
        file_offset: u64,
    ) {
        let buffer = self.buffer(slot);
        assert!(
            buf_offset <= buffer.io_len() && len <= buffer.io_len() - buf_offset,
            "request of {len} bytes at {buf_offset} outside a buffer of {}",
            buffer.io_len()
        );
        let len = u32::try_from(len).expect("requests are at most one chunk (< 4 GiB)");
        let ptr = buffer.io_ptr().wrapping_add(buf_offset);
        if self.stopped {
            return;
        }
        let fixed_buffer = self.fixed_buffers.then_some(slot as u16);
        let entry = if self.fixed_files {
            let fd = types::Fixed(file as u32);
            rw_entry!(fd, op, ptr, len, file_offset, fixed_buffer)
        } else {
            let fd = types::Fd(self.fds[file]);
            rw_entry!(fd, op, ptr, len, file_offset, fixed_buffer)
        }
        .user_data(slot as u64);
        self.busy[slot] += 1;
        self.backlog.push_back(Queued { entry, slot, op });
    }

    /// Moves queued requests into the submission queue while it has room and the
    /// completion queue could take every outstanding completion.
    fn fill(&mut self) {
        let mut sq = self.ring.submission();
        while let Some(queued) = self.backlog.front() {
            if sq.is_full() || self.in_flight + self.unconsumed.len() >= self.max_outstanding {
                break;
            }
            // SAFETY: the entry was built by queue() for bytes inside the buffer of its
            // slot, which the pipeline owns until every request the kernel consumed has
            // completed (Drop drains, or leaks the buffers), and for one of the two files,
            // borrowed for 'f, which outlives the pipeline. A registered buffer index or
            // file index was only used when the registration succeeded.
            if unsafe { sq.push(&queued.entry) }.is_err() {
                break;
            }
            self.unconsumed.push_back((queued.slot, queued.op));
            self.backlog.pop_front();
        }
    }

    /// Nothing queued, nothing in the kernel.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.backlog.is_empty() && self.unconsumed.is_empty()
    }

    /// Hands everything queued to the kernel in one `io_uring_enter` (unless stopped) and
    /// waits for at least one completion if anything is in flight; appends the reaped
    /// completions to `out` as (slot, result).
    pub(crate) fn submit_and_wait(&mut self, out: &mut Vec<(usize, i32)>) -> io::Result<()> {
        let mut refusals = 0;
        loop {
            if !self.stopped {
                self.fill();
            }
            let to_submit = if self.stopped {
                0
            } else {
                self.unconsumed.len()
            };
            if to_submit == 0 && self.in_flight == 0 {
                return Ok(());
            }
            // SAFETY: a plain io_uring_enter on our own ring with no argument; every entry
            // in the submission queue is valid (see fill). A stopped pipeline passes
            // to_submit 0, so entries left in the queue are never consumed.
            let entered = unsafe {
                self.ring.submitter().enter::<libc::sigset_t>(
                    to_submit as u32,
                    1,
                    IORING_ENTER_GETEVENTS,
                    None,
                )
            };
            match entered {
                Ok(consumed) => {
                    for (_, op) in self.unconsumed.drain(..consumed.min(to_submit)) {
                        self.submitted[op as usize] += 1;
                        self.in_flight += 1;
                    }
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // No room for more requests in the kernel right now: reap what completed,
                // or, with nothing in flight, try again a bounded number of times.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY)) => {
                    if self.in_flight > 0 {
                        break;
                    }
                    refusals += 1;
                    if refusals > MAX_ENTER_REFUSALS {
                        return Err(e);
                    }
                    std::thread::yield_now();
                }
                Err(e) => return Err(e),
            }
        }
        let before = out.len();
        out.extend(
            self.ring
                .completion()
                .map(|cqe| (cqe.user_data() as usize, cqe.result())),
        );
        for &(slot, _) in &out[before..] {
            self.busy[slot] -= 1;
        }
        self.in_flight -= out.len() - before;
        Ok(())
    }

    /// Never submit anything again. Returns the slots of the requests that were queued
    /// but never handed to the kernel: they are dropped, the kernel never sees them.
    pub(crate) fn stop(&mut self) -> Vec<usize> {
        self.stopped = true;
        let mut dropped: Vec<usize> = self.backlog.drain(..).map(|q| q.slot).collect();
        dropped.extend(self.unconsumed.drain(..).map(|(slot, _)| slot));
        for &slot in &dropped {
            self.busy[slot] -= 1;
        }
        dropped
    }

    /// Stops and waits for every request the kernel took.
    fn drain(&mut self) -> io::Result<()> {
        self.stop();
        let mut sink = Vec::new();
        while self.in_flight > 0 {
            sink.clear();
            self.submit_and_wait(&mut sink)?;
        }
        Ok(())
    }
}

impl<R: IoRegion> Drop for Pipeline<'_, R> {
    fn drop(&mut self) {
        if self.drain().is_err() {
            // The kernel may still be writing into these buffers: never free them.
            std::mem::forget(self.buffers.take());
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum SlotState {
    /// Free for the next chunk.
    Idle,
    /// A request for the chunk is queued or in flight.
    Busy {
        chunk: Chunk,
        op: Op,
        done: u64,
        retries: u32,
    },
    /// Read in full, waiting for a write to be allowed (`queue_depth` writes in flight).
    Filled { chunk: Chunk },
}

impl SlotState {
    /// Queues the rest of the slot's read or write.
    fn queue<R: IoRegion>(&self, pipeline: &mut Pipeline<'_, R>, slot: usize) {
        if let SlotState::Busy {
            chunk, op, done, ..
        } = *self
        {
            let (file, offset) = match op {
                Op::Read => (SRC, chunk.src_offset),
                Op::Write => (DST, chunk.dst_offset),
            };
            pipeline.queue(
                op,
                file,
                slot,
                done as usize,
                (chunk.len - done) as usize,
                offset + done,
            );
        }
    }
}

/// If the copy writes past the end of a regular file, allocates the destination range
/// first (fallocate(2)), so the O_DIRECT writes are not size-extending writes (which
/// filesystems such as ext4 run one at a time) and the blocks are laid out in one go.
/// Returns the size before, to restore it if the copy stops. Best effort: a filesystem
/// without fallocate just gets the writes as they are.
fn preallocate(dst: &File, plan: &CopyPlan) -> Option<u64> {
    let meta = dst.metadata().ok()?;
    let end = plan.dst_range().end;
    if !meta.file_type().is_file() || meta.len() >= end || plan.length == 0 {
        return None;
    }
    match rustix::fs::fallocate(
        dst,
        rustix::fs::FallocateFlags::empty(),
        plan.dst_offset,
        plan.length,
    ) {
        Ok(()) => Some(meta.len()),
        Err(_) => {
            // It may have allocated (and grown the file) part-way before failing.
            let _ = dst.set_len(meta.len());
            None
        }
    }
}

/// What the engine does with each chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Read it from the source, then write it to the destination.
    Copy,
    /// Only read it from the source (a benchmark of the source and the buffers).
    ReadOnly,
    /// Only write the buffer's current contents to the destination (a benchmark of the
    /// destination and the buffers; the destination range is overwritten).
    WriteOnly,
}

/// Copies `plan`'s range from `src` to `dst` through `buffers`, one chunk per buffer.
/// Up to `plan.queue_depth` reads and `plan.queue_depth` writes are in flight at once,
/// each in its own buffer: give `2 * queue_depth` buffers for both directions to run at
/// full depth (more are not used); with fewer, reads and writes share them. Calls
/// `progress` with the total bytes written after each completed write.
pub fn run<R: IoRegion>(
    src: Endpoint<'_>,
    dst: Endpoint<'_>,
    plan: &CopyPlan,
    buffers: Vec<R>,
    progress: &mut dyn FnMut(u64),
) -> Result<EngineReport, EngineError> {
    run_one_way(Direction::Copy, src, dst, plan, buffers, progress)
}

/// [`run`], or one half of it: the same pipeline, buffers, chunking and queue depth, so the
/// halves measured alone are comparable with the copy (a half uses at most `queue_depth`
/// buffers). `progress` and the report count bytes read for [`Direction::ReadOnly`], bytes
/// written otherwise.
pub fn run_one_way<R: IoRegion>(
    direction: Direction,
    src: Endpoint<'_>,
    dst: Endpoint<'_>,
    plan: &CopyPlan,
    buffers: Vec<R>,
    progress: &mut dyn FnMut(u64),
) -> Result<EngineReport, EngineError> {
    run_with_ring(direction, src, dst, plan, buffers, progress, None)
}

/// Buffers the engine uses at most for `direction` at `plan`'s depth.
pub fn buffers_wanted(direction: Direction, plan: &CopyPlan) -> usize {
    let depth = plan.queue_depth.max(1) as usize;
    let per_depth = if direction == Direction::Copy { 2 } else { 1 };
    (depth * per_depth).min(usize::try_from(plan.chunk_count()).unwrap_or(usize::MAX))
}

/// [`run_one_way`] with the ring's submission queue size chosen by the caller (tests use a
/// queue smaller than the requests in flight).
fn run_with_ring<R: IoRegion>(
    direction: Direction,
    src: Endpoint<'_>,
    dst: Endpoint<'_>,
    plan: &CopyPlan,
    buffers: Vec<R>,
    progress: &mut dyn FnMut(u64),
    sq_entries: Option<u32>,
) -> Result<EngineReport, EngineError> {
    let depth = plan.queue_depth.max(1) as usize;
    let slots = buffers.len().min(buffers_wanted(direction, plan));
    let smallest = buffers.iter().map(|b| b.io_len()).min().unwrap_or(0);
    if slots == 0 || (smallest as u64) < plan.chunk_size.min(plan.length) {
        return Err(EngineError::BadBuffers {
            count: buffers.len(),
            smallest,
            chunk_size: plan.chunk_size,
        });
    }
    let mut buffers = buffers;
    buffers.truncate(slots);

    let entries = sq_entries.unwrap_or((slots as u32).next_power_of_two());
    let mut pipeline = Pipeline::new([src.file, dst.file], buffers, entries)
        .map_err(|source| EngineError::Ring { entries, source })?;
    let grown_from = match direction {
        Direction::ReadOnly => None,
        Direction::Copy | Direction::WriteOnly => preallocate(dst.file, plan),
    };

    let mut written = Written {
        path: dst.path.to_owned(),
        dst_offset: plan.dst_offset,
        ranges: RangeSet::default(),
    };
    let mut report = EngineReport {
        bytes: 0,
        elapsed: Duration::ZERO,
        reads: 0,
        writes: 0,
        short_transfers: 0,
        retries: 0,
        cpu_user: Duration::ZERO,
        cpu_system: Duration::ZERO,
    };
    let mut states = vec![SlotState::Idle; slots];
    let mut free: Vec<usize> = (0..slots).rev().collect();
    let mut filled: VecDeque<usize> = VecDeque::with_capacity(slots);
    // Requests queued or in flight per direction, at most `depth` each.
    let mut outstanding = [0usize; 2];
    let mut next_chunk = 0u64;
    let mut failure: Option<IoFailure> = None;
    let mut completions = Vec::with_capacity(slots);
    let cpu_start = process_cpu_time();
    let start = Instant::now();

    let first_op = if direction == Direction::WriteOnly {
        Op::Write
    } else {
        Op::Read
    };
    loop {
        if failure.is_none() {
            // Writes first: they give buffers back.
            while outstanding[Op::Write as usize] < depth {
                let Some(slot) = filled.pop_front() else {
                    break;
                };
                let SlotState::Filled { chunk } = states[slot] else {
                    unreachable!("only filled slots wait for a write");
                };
                states[slot] = SlotState::Busy {
                    chunk,
                    op: Op::Write,
                    done: 0,
                    retries: 0,
                };
                states[slot].queue(&mut pipeline, slot);
                outstanding[Op::Write as usize] += 1;
            }
            while outstanding[first_op as usize] < depth && !free.is_empty() {
                let Some(chunk) = plan.chunk(next_chunk) else {
                    break;
                };
                next_chunk += 1;
                let slot = free.pop().expect("checked not empty");
                states[slot] = SlotState::Busy {
                    chunk,
                    op: first_op,
                    done: 0,
                    retries: 0,
                };
                states[slot].queue(&mut pipeline, slot);
                outstanding[first_op as usize] += 1;
            }
        }
        if pipeline.is_idle() {
            break;
        }
        completions.clear();
        if let Err(source) = pipeline.submit_and_wait(&mut completions) {
            let in_flight = pipeline.in_flight;
            // Whatever is still queued never reaches the kernel.
            pipeline.stop();
            return Err(EngineError::RingFailed {
                in_flight,
                written,
                source,
            });
        }
        for &(slot, result) in &completions {
            let SlotState::Busy {
                chunk,
                op,
                done,
                retries,
            } = states[slot]
            else {
                unreachable!("a completion for a slot without a request");
            };
            let endpoint = match op {
                Op::Read => src,
                Op::Write => dst,
            };
            let offset = match op {
                Op::Read => chunk.src_offset + done,
                Op::Write => chunk.dst_offset + done,
            };
            let fail = |source: io::Error, buffer: &R| IoFailure {
                op,
                path: endpoint.path.to_owned(),
                offset,
                len: chunk.len - done,
                kind: FailureKind::classify(&source, buffer.is_device_memory(), buffer.is_live()),
                source,
            };

            let error = if result < 0 {
                let errno = -result;
                if (errno == libc::EINTR || errno == libc::EAGAIN)
                    && retries < MAX_RETRIES
                    && failure.is_none()
                {
                    states[slot] = SlotState::Busy {
                        chunk,
                        op,
                        done,
                        retries: retries + 1,
                    };
                    states[slot].queue(&mut pipeline, slot);
                    report.retries += 1;
                    continue;
                }
                Some(io::Error::from_raw_os_error(errno))
            } else if result == 0 {
                Some(match op {
                    Op::Read => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the read returned 0 bytes: the source ends before the planned range",
                    ),
                    Op::Write => {
                        io::Error::new(io::ErrorKind::WriteZero, "the write returned 0 bytes")
                    }
                })
            } else {
                None
            };
            if let Some(source) = error {
                states[slot] = SlotState::Idle;
                outstanding[op as usize] -= 1;
                if failure.is_none() {
                    failure = Some(fail(source, pipeline.buffer(slot)));
                    // Requests queued but not handed to the kernel are dropped here: from
                    // now on nothing is submitted, and `written` only grows by the writes
                    // the kernel already has.
                    for dropped in pipeline.stop() {
                        if let SlotState::Busy { op, .. } = states[dropped] {
                            outstanding[op as usize] -= 1;
                        }
                        states[dropped] = SlotState::Idle;
                    }
                }
                continue;
            }

            let moved = result as u64;
            if op == Op::Write {
                let at = chunk.dst_offset + done;
                written.ranges.insert(at..at + moved);
                report.bytes += moved;
                progress(report.bytes);
            } else if direction == Direction::ReadOnly {
                report.bytes += moved;
                progress(report.bytes);
            }
            let done = done + moved;
            if done < chunk.len {
                report.short_transfers += 1;
                if failure.is_none() {
                    states[slot] = SlotState::Busy {
                        chunk,
                        op,
                        done,
                        retries: 0,
                    };
                    states[slot].queue(&mut pipeline, slot);
                } else {
                    states[slot] = SlotState::Idle;
                    outstanding[op as usize] -= 1;
                }
                continue;
            }
            outstanding[op as usize] -= 1;
            if op == Op::Read && direction == Direction::Copy && failure.is_none() {
                states[slot] = SlotState::Filled { chunk };
                filled.push_back(slot);
            } else {
                states[slot] = SlotState::Idle;
                free.push(slot);
            }
        }
    }
    report.elapsed = start.elapsed();
    let cpu_end = process_cpu_time();
    report.cpu_user = cpu_end.0.saturating_sub(cpu_start.0);
    report.cpu_system = cpu_end.1.saturating_sub(cpu_start.1);
    report.reads = pipeline.submitted[Op::Read as usize];
    report.writes = pipeline.submitted[Op::Write as usize];

    match failure {
        Some(failure) => {
            if let Some(old_len) = grown_from {
                // Give back the preallocated tail: the file ends where it would have ended
                // without preallocation (the old end, or the end of the last write).
                let end = written.ranges.ranges().last().map_or(0, |r| r.end);
                let _ = dst.file.set_len(old_len.max(end));
            }
            Err(EngineError::Stopped { written, failure })
        }
        None => Ok(report),
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    use super::super::host_buffer::HostBuffer;
    use super::super::plan::{validate, CopyRequest, EndpointFacts, EndpointKind, StorageId};
    use super::*;

    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    fn facts(path: &Path, size: u64, ino: u64) -> EndpointFacts {
        EndpointFacts {
            path: path.to_owned(),
            kind: EndpointKind::RegularFile,
            storage: StorageId::File { dev: 1, ino },
            base: 0,
            size,
            block_size: 4096,
            read_only: false,
            mounted: None,
            holders: vec![],
        }
    }

    fn open_direct(path: &Path, write: bool) -> File {
        OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .unwrap()
    }

    /// Real io_uring, real O_DIRECT on the host's filesystem, host buffers.
    #[test]
    fn copies_ranges_between_files_with_offsets_and_a_short_last_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        let dst_path = dir.path().join("dst");
        let data = pattern(3 << 20, 7);
        std::fs::File::create(&src_path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        let old = pattern(3 << 20, 99);
        std::fs::File::create(&dst_path)
            .unwrap()
            .write_all(&old)
            .unwrap();

        let req = CopyRequest {
            src_offset: 8192,
            dst_offset: 4096,
            length: Some((1 << 20) + 5 * 4096),
            chunk_size: 256 << 10,
            queue_depth: 3,
            force: false,
        };
        let plan = validate(
            &facts(&src_path, data.len() as u64, 1),
            &facts(&dst_path, old.len() as u64, 2),
            &req,
        )
        .unwrap();
        let src = open_direct(&src_path, false);
        let dst = open_direct(&dst_path, true);
        let buffers: Vec<HostBuffer> = (0..3)
            .map(|_| HostBuffer::new(256 << 10).unwrap())
            .collect();
        let mut seen = Vec::new();
        let report = run(
            Endpoint {
                file: &src,
                path: &src_path,
            },
            Endpoint {
                file: &dst,
                path: &dst_path,
            },
            &plan,
            buffers,
            &mut |n| seen.push(n),
        )
        .unwrap();
        assert_eq!(report.bytes, plan.length);
        assert_eq!(report.reads, 5);
        assert_eq!(report.writes, 5);
        assert_eq!(seen.last(), Some(&plan.length));
        assert!(seen.windows(2).all(|w| w[0] < w[1]));

        let after = std::fs::read(&dst_path).unwrap();
        let len = plan.length as usize;
        assert_eq!(
            &after[..4096],
            &old[..4096],
            "bytes before the range untouched"
        );
        assert_eq!(&after[4096..4096 + len], &data[8192..8192 + len]);
        assert_eq!(
            &after[4096 + len..],
            &old[4096 + len..],
            "bytes after untouched"
        );
    }

    #[test]
    fn a_source_that_ends_early_stops_with_an_exact_report_and_no_stray_writes() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        let dst_path = dir.path().join("dst");
        let data = pattern(1 << 20, 3);
        std::fs::write(&src_path, &data).unwrap();
        std::fs::write(&dst_path, vec![0u8; 2 << 20]).unwrap();
        // The plan believes the source is 2 MiB; the file shrinks to 1 MiB + 64 KiB.
        let plan = validate(
            &facts(&src_path, 2 << 20, 1),
            &facts(&dst_path, 2 << 20, 2),
            &CopyRequest {
                src_offset: 0,
                dst_offset: 0,
                length: None,
                chunk_size: 128 << 10,
                queue_depth: 4,
                force: false,
            },
        )
        .unwrap();
        let src = open_direct(&src_path, true);
        src.set_len((1 << 20) + (64 << 10)).unwrap();
        let dst = open_direct(&dst_path, true);
        let buffers: Vec<HostBuffer> = (0..4)
            .map(|_| HostBuffer::new(128 << 10).unwrap())
            .collect();
        let err = run(
            Endpoint {
                file: &src,
                path: &src_path,
            },
            Endpoint {
                file: &dst,
                path: &dst_path,
            },
            &plan,
            buffers,
            &mut |_| {},
        )
        .unwrap_err();
        let EngineError::Stopped { written, failure } = err else {
            panic!("expected Stopped, got {err:?}");
        };
        assert_eq!(failure.op, Op::Read);
        assert_eq!(failure.kind, FailureKind::Truncated);
        // The chunk straddling the new end reads 64 KiB short, resubmits and hits EOF.
        assert!(failure.offset >= 1 << 20, "{failure}");

        let after = std::fs::read(&dst_path).unwrap();
        // Everything reported written is the source's bytes; everything else is zero.
        let mut covered = vec![false; after.len()];
        for r in written.ranges.ranges() {
            covered[r.start as usize..r.end as usize].fill(true);
        }
        for (i, b) in after.iter().enumerate() {
            if covered[i] {
                assert_eq!(*b, data[i], "byte {i} reported written");
            } else {
                assert_eq!(*b, 0, "byte {i} not reported but changed");
            }
        }
        assert!(written.contiguous_end() <= 1 << 20);
        let msg = EngineError::Stopped { written, failure }.to_string();
        assert!(
            msg.contains("every other destination byte is untouched"),
            "{msg}"
        );
    }

    #[test]
    fn buffers_smaller_than_a_chunk_are_refused_before_any_io() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![1u8; 1 << 20]).unwrap();
        let plan = validate(
            &facts(&p, 1 << 20, 1),
            &facts(&p, 2 << 20, 2),
            &CopyRequest {
                src_offset: 0,
                dst_offset: 0,
                length: None,
                chunk_size: 256 << 10,
                queue_depth: 2,
                force: false,
            },
        )
        .unwrap();
        let f = open_direct(&p, true);
        let e = run(
            Endpoint { file: &f, path: &p },
            Endpoint { file: &f, path: &p },
            &plan,
            vec![HostBuffer::new(4096).unwrap()],
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                EngineError::BadBuffers {
                    count: 1,
                    smallest: 4096,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(std::fs::read(&p).unwrap(), vec![1u8; 1 << 20]);
    }

    #[test]
    fn one_way_runs_only_read_or_only_write() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        let dst_path = dir.path().join("dst");
        let data = pattern(1 << 20, 11);
        let old = pattern(1 << 20, 12);
        std::fs::write(&src_path, &data).unwrap();
        std::fs::write(&dst_path, &old).unwrap();
        let plan = validate(
            &facts(&src_path, 1 << 20, 1),
            &facts(&dst_path, 1 << 20, 2),
            &CopyRequest {
                src_offset: 0,
                dst_offset: 0,
                length: Some(512 << 10),
                chunk_size: 128 << 10,
                queue_depth: 2,
                force: false,
            },
        )
        .unwrap();
        let src = open_direct(&src_path, false);
        let dst = open_direct(&dst_path, true);
        let ends = (
            Endpoint {
                file: &src,
                path: &src_path,
            },
            Endpoint {
                file: &dst,
                path: &dst_path,
            },
        );
        let buffers = || -> Vec<HostBuffer> {
            (0..2)
                .map(|_| HostBuffer::new(128 << 10).unwrap())
                .collect()
        };

        let read = run_one_way(
            Direction::ReadOnly,
            ends.0,
            ends.1,
            &plan,
            buffers(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!((read.bytes, read.reads, read.writes), (512 << 10, 4, 0));
        assert_eq!(std::fs::read(&dst_path).unwrap(), old, "read-only wrote");

        let write = run_one_way(
            Direction::WriteOnly,
            ends.0,
            ends.1,
            &plan,
            buffers(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!((write.bytes, write.reads, write.writes), (512 << 10, 0, 4));
        let after = std::fs::read(&dst_path).unwrap();
        assert!(
            after[..512 << 10].iter().all(|b| *b == 0),
            "fresh host buffers are zeros"
        );
        assert_eq!(&after[512 << 10..], &old[512 << 10..]);
        assert_eq!(std::fs::read(&src_path).unwrap(), data);
    }

    fn plan_for(
        src: (&Path, u64),
        dst: (&Path, u64),
        length: Option<u64>,
        chunk: u64,
        depth: u32,
    ) -> CopyPlan {
        validate(
            &facts(src.0, src.1, 1),
            &facts(dst.0, dst.1, 2),
            &CopyRequest {
                src_offset: 0,
                dst_offset: 0,
                length,
                chunk_size: chunk,
                queue_depth: depth,
                force: true,
            },
        )
        .unwrap()
    }

    /// Issue 9: a request queued (even pushed into the submission queue) but not handed to
    /// the kernel when the pipeline stops must never run, not even through the drain that
    /// dropping the pipeline does after `written` was reported.
    #[test]
    fn requests_queued_but_not_submitted_are_never_submitted_by_the_drop_time_drain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dst");
        let old = pattern(64 << 10, 21);
        std::fs::write(&path, &old).unwrap();
        let file = open_direct(&path, true);
        let mut buffers = vec![
            HostBuffer::new(16 << 10).unwrap(),
            HostBuffer::new(16 << 10).unwrap(),
        ];
        buffers[0]
            .as_mut_slice()
            .copy_from_slice(&pattern(16 << 10, 22));
        buffers[1]
            .as_mut_slice()
            .copy_from_slice(&pattern(16 << 10, 23));
        let first = buffers[0].as_mut_slice().to_vec();
        {
            let mut pipeline = Pipeline::new([&file, &file], buffers, 4).unwrap();
            // The first write runs to completion.
            pipeline.queue(Op::Write, DST, 0, 0, 16 << 10, 0);
            let mut done = Vec::new();
            while done.is_empty() {
                pipeline.submit_and_wait(&mut done).unwrap();
            }
            assert_eq!(done, vec![(0, 16 << 10)]);
            // The second is pushed into the submission queue, then the copy "fails".
            pipeline.queue(Op::Write, DST, 1, 0, 16 << 10, 32 << 10);
            pipeline.fill();
            assert_eq!(pipeline.ring.submission().len(), 1, "pushed, not submitted");
            assert_eq!(pipeline.stop(), vec![1]);
            // Queuing after the stop is a no-op too.
            pipeline.queue(Op::Write, DST, 1, 0, 16 << 10, 48 << 10);
            assert!(pipeline.is_idle());
        } // dropped: the drain runs here
        let after = std::fs::read(&path).unwrap();
        assert_eq!(&after[..16 << 10], &first[..], "the submitted write landed");
        assert_eq!(
            &after[16 << 10..],
            &old[16 << 10..],
            "nothing queued after the stop ran"
        );
    }

    /// Issue 9: more requests ready than the submission queue (and completion queue) can
    /// hold wait in user space for room instead of tripping an assertion.
    #[test]
    fn a_full_submission_queue_holds_requests_back_until_there_is_room() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        let dst_path = dir.path().join("dst");
        let data = pattern(2 << 20, 31);
        std::fs::write(&src_path, &data).unwrap();
        std::fs::write(&dst_path, pattern(2 << 20, 32)).unwrap();
        let plan = plan_for(
            (&src_path, 2 << 20),
            (&dst_path, 2 << 20),
            None,
            64 << 10,
            8,
        );
        let src = open_direct(&src_path, false);
        let dst = open_direct(&dst_path, true);
        let buffers: Vec<HostBuffer> = (0..16)
            .map(|_| HostBuffer::new(64 << 10).unwrap())
            .collect();
        // One submission entry (two completion entries) for up to 16 requests in flight.
        let report = run_with_ring(
            Direction::Copy,
            Endpoint {
                file: &src,
                path: &src_path,
            },
            Endpoint {
                file: &dst,
                path: &dst_path,
            },
            &plan,
            buffers,
            &mut |_| {},
            Some(1),
        )
        .unwrap();
        assert_eq!(
            (report.bytes, report.reads, report.writes),
            (2 << 20, 32, 32)
        );
        assert_eq!(std::fs::read(&dst_path).unwrap(), data);
    }

    #[test]
    fn one_buffer_is_shared_by_reads_and_writes_and_more_than_two_per_depth_are_unused() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        let dst_path = dir.path().join("dst");
        let data = pattern(1 << 20, 41);
        std::fs::write(&src_path, &data).unwrap();
        for buffers in [1, 12] {
            std::fs::write(&dst_path, pattern(1 << 20, 42)).unwrap();
            let plan = plan_for(
                (&src_path, 1 << 20),
                (&dst_path, 1 << 20),
                None,
                128 << 10,
                3,
            );
            assert_eq!(buffers_wanted(Direction::Copy, &plan), 6);
            assert_eq!(buffers_wanted(Direction::ReadOnly, &plan), 3);
            let src = open_direct(&src_path, false);
            let dst = open_direct(&dst_path, true);
            let report = run(
                Endpoint {
                    file: &src,
                    path: &src_path,
                },
                Endpoint {
                    file: &dst,
                    path: &dst_path,
                },
                &plan,
                (0..buffers)
                    .map(|_| HostBuffer::new(128 << 10).unwrap())
                    .collect(),
                &mut |_| {},
            )
            .unwrap();
            assert_eq!((report.reads, report.writes), (8, 8));
            assert_eq!(
                std::fs::read(&dst_path).unwrap(),
                data,
                "{buffers} buffer(s)"
            );
        }
    }

    /// The preallocation of a growing destination must not change what a stopped copy
    /// leaves behind: the file ends where the written bytes end, as without it.
    #[test]
    fn a_growing_destination_is_preallocated_and_given_back_when_the_copy_stops() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        let dst_path = dir.path().join("dst");
        let data = pattern(2 << 20, 51);
        std::fs::write(&src_path, &data).unwrap();
        let old = pattern(64 << 10, 52);
        std::fs::write(&dst_path, &old).unwrap();
        let plan = plan_for(
            (&src_path, 2 << 20),
            (&dst_path, 64 << 10),
            None,
            256 << 10,
            2,
        );
        assert!(plan.grows_destination);

        // A complete copy grows the file to the end of the range.
        let src = open_direct(&src_path, true);
        let dst = open_direct(&dst_path, true);
        let ends = (
            Endpoint {
                file: &src,
                path: &src_path,
            },
            Endpoint {
                file: &dst,
                path: &dst_path,
            },
        );
        let buffers = || {
            (0..4)
                .map(|_| HostBuffer::new(256 << 10).unwrap())
                .collect::<Vec<_>>()
        };
        run(ends.0, ends.1, &plan, buffers(), &mut |_| {}).unwrap();
        assert_eq!(std::fs::read(&dst_path).unwrap(), data);

        // A copy that stops: the source shrinks under a plan that expects 2 MiB.
        dst.set_len(64 << 10).unwrap();
        std::fs::write(&dst_path, &old).unwrap();
        src.set_len((1 << 20) + (128 << 10)).unwrap();
        let err = run(ends.0, ends.1, &plan, buffers(), &mut |_| {}).unwrap_err();
        let EngineError::Stopped { written, .. } = err else {
            panic!("expected Stopped, got {err:?}");
        };
        let end = written.ranges.ranges().last().unwrap().end;
        let after = std::fs::read(&dst_path).unwrap();
        assert_eq!(after.len() as u64, end.max(64 << 10), "{written}");
        for r in written.ranges.ranges() {
            assert_eq!(
                &after[r.start as usize..r.end as usize],
                &data[r.start as usize..r.end as usize]
            );
        }
    }

    #[test]
    fn errno_meanings() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(
            FailureKind::classify(&e(libc::EREMOTEIO), true, true),
            FailureKind::P2pRefused
        );
        assert_eq!(
            FailureKind::classify(&e(libc::EINVAL), true, true),
            FailureKind::P2pRefused
        );
        assert_eq!(
            FailureKind::classify(&e(libc::EINVAL), false, true),
            FailureKind::Other
        );
        assert_eq!(
            FailureKind::classify(&e(libc::EFAULT), true, false),
            FailureKind::ProviderGone
        );
        assert_eq!(
            FailureKind::classify(&e(libc::ENODEV), true, true),
            FailureKind::ProviderGone
        );
        assert_eq!(
            FailureKind::classify(&e(libc::ENOMEM), true, true),
            FailureKind::OutOfMemory
        );
        assert_eq!(
            FailureKind::classify(&e(libc::ENOSPC), false, true),
            FailureKind::NoSpace
        );
        assert_eq!(
            FailureKind::classify(&e(libc::EIO), true, true),
            FailureKind::DeviceError
        );
        assert_eq!(
            FailureKind::classify(&e(libc::EACCES), true, true),
            FailureKind::PermissionDenied
        );
    }
}
