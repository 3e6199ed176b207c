//! The copy pipeline: chunks through slots, reads then writes, an exact account of what
//! reached the destination, and what a failure means. Backend-generic: the requests go to
//! an [`IoBackend`] ([`run_pipeline`]); [`run`] and [`run_one_way`] are the kernel path
//! over io_uring and two O_DIRECT files ([`super::uring::UringBackend`]).
//!
//! Each buffer ("slot") carries one chunk at a time: read it in full, then write it in
//! full, then take the next chunk. Reads and writes are kept in flight independently, up
//! to the queue depth each, so with `2 * depth` slots the source sees `depth` reads and
//! the destination `depth` writes at all times, as two fio jobs would. A write is queued
//! for the chunks in the order their reads completed. A request that completes short is
//! resubmitted for the rest; EINTR/EAGAIN are retried a bounded number of times. A
//! destination file that grows is preallocated (fallocate) first.
//!
//! The buffers belong to the pipeline while it runs and are only released once every
//! submitted request has completed, on success, on error and on unwinding alike
//! ([`super::pipeline::Pipeline`]). After the first failure nothing more is handed to the
//! backend, not even what was already queued, so the report of the destination bytes
//! written is exact.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use super::backend::IoRegion;
use super::backend::{DmaBuffer, IoBackend, Target};
use super::pipeline::{Pipeline, ReapError, DEFAULT_IO_TIMEOUT};
use super::plan::{Chunk, CopyPlan, HumanBytes, RangeSet};
use super::uring::UringBackend;

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

/// A request that was in flight when the copy stopped waiting for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StuckRequest {
    /// Read or write.
    pub op: Op,
    /// The file or device.
    pub path: PathBuf,
    /// Byte offset in that file or device.
    pub offset: u64,
    /// Bytes asked for.
    pub len: u64,
}

impl StuckRequest {
    /// The requests `requests` of a pipeline over `names` (source, destination).
    pub fn all(requests: &[super::backend::IoRequest], names: [&Path; 2]) -> Vec<StuckRequest> {
        requests
            .iter()
            .map(|r| StuckRequest {
                op: r.op,
                path: names[r.target as usize].to_owned(),
                offset: r.offset,
                len: u64::from(r.len),
            })
            .collect()
    }
}

impl fmt::Display for StuckRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} bytes at offset {} of {}",
            self.op,
            self.len,
            self.offset,
            self.path.display()
        )
    }
}

/// A list of stuck requests, comma-separated.
pub(crate) struct StuckList<'a>(pub(crate) &'a [StuckRequest]);

impl fmt::Display for StuckList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// What writes still in flight mean for the written-range report.
fn pending_writes_note(in_flight: &[StuckRequest]) -> String {
    let writes: Vec<String> = in_flight
        .iter()
        .filter(|r| r.op == Op::Write)
        .map(|r| format!("{}..{}", r.offset, r.offset + r.len))
        .collect();
    if writes.is_empty() {
        String::new()
    } else {
        format!(
            ", except the range(s) of the writes still in flight, which may yet land: {}",
            writes.join(", ")
        )
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
    /// The backend refused the buffers (see [`IoBackend::register`]).
    #[error("the I/O backend cannot use the buffers")]
    Register {
        /// The backend's error.
        #[source]
        source: io::Error,
    },
    /// No request completed within the I/O timeout: the device, its driver or the kernel
    /// lost them. Nothing more was submitted; the requests may still complete later, so the
    /// buffers were leaked rather than freed under the device's feet.
    #[error("no I/O completed for {:.1} s with {} request(s) in flight: {}; the copy was abandoned ({written}{}; buffers leaked to stay safe); check the kernel log (dmesg) for NVMe timeouts or resets, and if the device is only slow, allow more time with --io-timeout", .waited.as_secs_f64(), .in_flight.len(), StuckList(.in_flight), pending_writes_note(.in_flight))]
    Stalled {
        /// How long the last wait lasted without any completion.
        waited: Duration,
        /// The requests that never completed.
        in_flight: Vec<StuckRequest>,
        /// What reached the destination (completed writes only).
        written: Written,
    },
    /// The backend itself (for io_uring, `io_uring_enter`) failed with requests in flight.
    /// The buffers were leaked rather than freed under the device's feet.
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

/// Where a slot's chunk is in its trip.
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
    fn queue<B: IoBackend>(&self, pipeline: &mut Pipeline<B>, slot: usize) {
        if let SlotState::Busy {
            chunk, op, done, ..
        } = *self
        {
            let (file, offset) = match op {
                Op::Read => (Target::Source, chunk.src_offset),
                Op::Write => (Target::Destination, chunk.dst_offset),
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
    run_with_ring(
        direction,
        src,
        dst,
        plan,
        buffers,
        progress,
        None,
        DEFAULT_IO_TIMEOUT,
    )
}

/// [`run_one_way`] whose waits give up after `io_timeout` without any completion
/// ([`EngineError::Stalled`]).
pub fn run_one_way_within(
    direction: Direction,
    src: Endpoint<'_>,
    dst: Endpoint<'_>,
    plan: &CopyPlan,
    buffers: Vec<impl IoRegion>,
    io_timeout: Duration,
    progress: &mut dyn FnMut(u64),
) -> Result<EngineReport, EngineError> {
    run_with_ring(
        direction, src, dst, plan, buffers, progress, None, io_timeout,
    )
}

/// Buffers the engine uses at most for `direction` at `plan`'s depth.
pub fn buffers_wanted(direction: Direction, plan: &CopyPlan) -> usize {
    let depth = plan.queue_depth.max(1) as usize;
    let per_depth = if direction == Direction::Copy { 2 } else { 1 };
    (depth * per_depth).min(usize::try_from(plan.chunk_count()).unwrap_or(usize::MAX))
}

/// [`run_one_way`] with the ring's submission queue size chosen by the caller (tests use a
/// queue smaller than the requests in flight) and the I/O timeout.
#[allow(clippy::too_many_arguments)]
fn run_with_ring<R: IoRegion>(
    direction: Direction,
    src: Endpoint<'_>,
    dst: Endpoint<'_>,
    plan: &CopyPlan,
    buffers: Vec<R>,
    progress: &mut dyn FnMut(u64),
    sq_entries: Option<u32>,
    io_timeout: Duration,
) -> Result<EngineReport, EngineError> {
    let slots = slots_for(direction, plan, &buffers)?;
    let entries = sq_entries.unwrap_or((slots as u32).next_power_of_two());
    let backend = UringBackend::new([src.file, dst.file], entries)
        .map_err(|source| EngineError::Ring { entries, source })?;
    let grown_from = match direction {
        Direction::ReadOnly => None,
        Direction::Copy | Direction::WriteOnly => preallocate(dst.file, plan),
    };
    let result = run_pipeline_within(
        direction,
        backend,
        [src.path, dst.path],
        plan,
        buffers,
        io_timeout,
        progress,
    );
    if let (Err(EngineError::Stopped { written, .. }), Some(old_len)) = (&result, grown_from) {
        // Give back the preallocated tail: the file ends where it would have ended
        // without preallocation (the old end, or the end of the last write).
        let end = written.ranges.ranges().last().map_or(0, |r| r.end);
        let _ = dst.file.set_len(old_len.max(end));
    }
    result
}

/// How many of `buffers` the pipeline uses for `direction` at `plan`'s depth; an error if
/// they cannot carry the plan's chunks.
fn slots_for<T: DmaBuffer>(
    direction: Direction,
    plan: &CopyPlan,
    buffers: &[T],
) -> Result<usize, EngineError> {
    let slots = buffers.len().min(buffers_wanted(direction, plan));
    let smallest = buffers.iter().map(|b| b.dma_len()).min().unwrap_or(0);
    if slots == 0 || (smallest as u64) < plan.chunk_size.min(plan.length) {
        return Err(EngineError::BadBuffers {
            count: buffers.len(),
            smallest,
            chunk_size: plan.chunk_size,
        });
    }
    Ok(slots)
}

/// The copy pipeline over any [`IoBackend`]: moves `plan`'s range (or one half of it, as
/// `direction` says) from the backend's source to its destination through `buffers`, one
/// chunk per buffer, at most `plan.queue_depth` requests of each direction in flight.
/// `names` (source, destination) are used in messages. Calls `progress` as
/// [`run_one_way`] does. Nothing is ever submitted after the first failure, and every
/// submitted request is reaped before the buffers are dropped (or they are leaked, if the
/// backend fails), so [`EngineError::Stopped`] names exactly the destination bytes written.
pub fn run_pipeline<B: IoBackend>(
    direction: Direction,
    backend: B,
    names: [&Path; 2],
    plan: &CopyPlan,
    buffers: Vec<B::Buffer>,
    progress: &mut dyn FnMut(u64),
) -> Result<EngineReport, EngineError> {
    run_pipeline_within(
        direction,
        backend,
        names,
        plan,
        buffers,
        DEFAULT_IO_TIMEOUT,
        progress,
    )
}

/// [`run_pipeline`] whose waits give up after `io_timeout` without any completion
/// ([`EngineError::Stalled`], naming the requests in flight).
pub fn run_pipeline_within<B: IoBackend>(
    direction: Direction,
    backend: B,
    names: [&Path; 2],
    plan: &CopyPlan,
    buffers: Vec<B::Buffer>,
    io_timeout: Duration,
    progress: &mut dyn FnMut(u64),
) -> Result<EngineReport, EngineError> {
    let depth = plan.queue_depth.max(1) as usize;
    let slots = slots_for(direction, plan, &buffers)?;
    let mut buffers = buffers;
    buffers.truncate(slots);
    let mut pipeline = Pipeline::new(backend, buffers)
        .map_err(|source| EngineError::Register { source })?
        .with_io_timeout(io_timeout);

    let mut written = Written {
        path: names[1].to_owned(),
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
        match pipeline.submit_and_wait(&mut completions) {
            Ok(()) => {}
            Err(ReapError::Backend(source)) => {
                let in_flight = pipeline.in_flight();
                // Whatever is still queued never reaches the device.
                pipeline.stop();
                return Err(EngineError::RingFailed {
                    in_flight,
                    written,
                    source,
                });
            }
            Err(ReapError::Stalled(stall)) => {
                // Whatever is still queued never reaches the device; dropping the pipeline
                // leaks the buffers the stuck requests name.
                pipeline.stop();
                return Err(EngineError::Stalled {
                    waited: stall.waited,
                    in_flight: StuckRequest::all(&stall.requests, names),
                    written,
                });
            }
        }
        for completion in completions.drain(..) {
            let slot = completion.tag as usize;
            let SlotState::Busy {
                chunk,
                op,
                done,
                retries,
            } = states[slot]
            else {
                unreachable!("a completion for a slot without a request");
            };
            let path = names[op as usize];
            let offset = match op {
                Op::Read => chunk.src_offset + done,
                Op::Write => chunk.dst_offset + done,
            };
            let fail = |source: io::Error, buffer: &B::Buffer| IoFailure {
                op,
                path: path.to_owned(),
                offset,
                len: chunk.len - done,
                kind: FailureKind::classify(&source, buffer.is_device_memory(), buffer.is_live()),
                source,
            };

            let error = match completion.result {
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN))
                        && retries < MAX_RETRIES
                        && failure.is_none() =>
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
                Err(e) => Err(e),
                Ok(0) => Err(match op {
                    Op::Read => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the read returned 0 bytes: the source ends before the planned range",
                    ),
                    Op::Write => {
                        io::Error::new(io::ErrorKind::WriteZero, "the write returned 0 bytes")
                    }
                }),
                Ok(n) => Ok(n),
            };
            let moved = match error {
                Ok(n) => n as u64,
                Err(source) => {
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
            };
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
    let submitted = pipeline.submitted();
    report.reads = submitted[Op::Read as usize];
    report.writes = submitted[Op::Write as usize];

    match failure {
        Some(failure) => Err(EngineError::Stopped { written, failure }),
        None => Ok(report),
    }
}

#[cfg(test)]
mod tests {
    use super::super::host_buffer::HostBuffer;
    use super::super::plan::{validate, CopyRequest, EndpointFacts, EndpointKind, StorageId};
    use super::super::test_files::{open_direct, SrcDst};
    use super::*;

    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut data = vec![0; len];
        fastrand::Rng::with_seed(seed).fill(&mut data);
        data
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

    /// Real io_uring, real O_DIRECT on the host's filesystem, host buffers.
    #[test]
    fn copies_ranges_between_files_with_offsets_and_a_short_last_chunk() {
        let data = pattern(3 << 20, 7);
        let old = pattern(3 << 20, 99);
        let files = SrcDst::new(&data, &old);
        let (src_path, dst_path) = (&files.src_path, &files.dst_path);

        let req = CopyRequest {
            src_offset: 8192,
            dst_offset: 4096,
            length: Some((1 << 20) + 5 * 4096),
            chunk_size: 256 << 10,
            queue_depth: 3,
            force: false,
        };
        let plan = validate(
            &facts(src_path, data.len() as u64, 1),
            &facts(dst_path, old.len() as u64, 2),
            &req,
        )
        .unwrap();
        let buffers: Vec<HostBuffer> = (0..3)
            .map(|_| HostBuffer::new(256 << 10).unwrap())
            .collect();
        let mut seen = Vec::new();
        let (src, dst) = files.endpoints();
        let report = run(src, dst, &plan, buffers, &mut |n| seen.push(n)).unwrap();
        assert_eq!(report.bytes, plan.length);
        assert_eq!(report.reads, 5);
        assert_eq!(report.writes, 5);
        assert_eq!(seen.last(), Some(&plan.length));
        assert!(seen.windows(2).all(|w| w[0] < w[1]));

        let after = std::fs::read(dst_path).unwrap();
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
        let data = pattern(1 << 20, 11);
        let old = pattern(1 << 20, 12);
        let files = SrcDst::new(&data, &old);
        let dst_path = &files.dst_path;
        let plan = validate(
            &facts(&files.src_path, 1 << 20, 1),
            &facts(dst_path, 1 << 20, 2),
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
        let ends = files.endpoints();
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
        assert_eq!(std::fs::read(dst_path).unwrap(), old, "read-only wrote");

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
        let after = std::fs::read(dst_path).unwrap();
        assert!(
            after[..512 << 10].iter().all(|b| *b == 0),
            "fresh host buffers are zeros"
        );
        assert_eq!(&after[512 << 10..], &old[512 << 10..]);
        assert_eq!(std::fs::read(&files.src_path).unwrap(), data);
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
            let backend = UringBackend::new([&file, &file], 4).unwrap();
            let mut pipeline = Pipeline::new(backend, buffers).unwrap();
            // The first write runs to completion.
            pipeline.queue(Op::Write, Target::Destination, 0, 0, 16 << 10, 0);
            let mut done = Vec::new();
            while done.is_empty() {
                pipeline.submit_and_wait(&mut done).unwrap();
            }
            assert_eq!(done.len(), 1);
            assert_eq!(done[0].tag, 0);
            assert_eq!(done[0].result.as_ref().unwrap(), &(16 << 10));
            // The second is pushed into the submission queue, then the copy "fails".
            pipeline.queue(Op::Write, Target::Destination, 1, 0, 16 << 10, 32 << 10);
            pipeline.fill();
            assert_eq!(pipeline.backend().unconsumed(), 1, "pushed, not submitted");
            assert_eq!(pipeline.stop(), vec![1]);
            // Queuing after the stop is a no-op too.
            pipeline.queue(Op::Write, Target::Destination, 1, 0, 16 << 10, 48 << 10);
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
        let data = pattern(2 << 20, 31);
        let files = SrcDst::new(&data, &pattern(2 << 20, 32));
        let plan = plan_for(
            (&files.src_path, 2 << 20),
            (&files.dst_path, 2 << 20),
            None,
            64 << 10,
            8,
        );
        let buffers: Vec<HostBuffer> = (0..16)
            .map(|_| HostBuffer::new(64 << 10).unwrap())
            .collect();
        let (src, dst) = files.endpoints();
        // One submission entry (two completion entries) for up to 16 requests in flight.
        let report = run_with_ring(
            Direction::Copy,
            src,
            dst,
            &plan,
            buffers,
            &mut |_| {},
            Some(1),
            DEFAULT_IO_TIMEOUT,
        )
        .unwrap();
        assert_eq!(
            (report.bytes, report.reads, report.writes),
            (2 << 20, 32, 32)
        );
        assert_eq!(std::fs::read(&files.dst_path).unwrap(), data);
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

    /// Offset 0 on both sides, `len` bytes in chunks of `chunk`, depth 1 (two slots).
    fn raw_plan(len: u64, chunk: u64) -> CopyPlan {
        CopyPlan {
            src_offset: 0,
            dst_offset: 0,
            length: len,
            chunk_size: chunk,
            queue_depth: 1,
            block_size: 512,
            grows_destination: false,
        }
    }

    fn host_buffers(n: usize, len: usize) -> Vec<HostBuffer> {
        (0..n).map(|_| HostBuffer::new(len).unwrap()).collect()
    }

    /// The hang seen once in a CI rehearsal on Linux 7.2 (a copy asleep in io_uring_enter
    /// for 600 s): with real io_uring, a read that never completes (an empty pipe whose
    /// writer stays open) now fails the copy after the I/O timeout, naming the read,
    /// instead of leaving the process asleep for good.
    #[test]
    fn a_read_that_never_completes_fails_after_the_io_timeout_naming_it() {
        let (reader, _writer) = std::io::pipe().unwrap();
        let src = File::from(std::os::fd::OwnedFd::from(reader));
        let dir = tempfile::tempdir().unwrap();
        let dst_path = dir.path().join("dst");
        std::fs::write(&dst_path, pattern(8192, 5)).unwrap();
        let dst = std::fs::OpenOptions::new()
            .write(true)
            .open(&dst_path)
            .unwrap();
        let src_path = Path::new("/the/source/pipe");
        let timeout = Duration::from_millis(200);
        let err = run_one_way_within(
            Direction::Copy,
            Endpoint {
                file: &src,
                path: src_path,
            },
            Endpoint {
                file: &dst,
                path: &dst_path,
            },
            &raw_plan(8192, 4096),
            host_buffers(2, 4096),
            timeout,
            &mut |_| panic!("nothing was written"),
        )
        .unwrap_err();
        let text = err.to_string();
        let EngineError::Stalled {
            waited,
            in_flight,
            written,
        } = err
        else {
            panic!("expected Stalled, got {err:?}");
        };
        assert!(waited >= timeout, "gave up after {waited:?}");
        assert_eq!(
            in_flight,
            vec![StuckRequest {
                op: Op::Read,
                path: src_path.to_owned(),
                offset: 0,
                len: 4096,
            }]
        );
        assert_eq!(written.ranges.total(), 0);
        assert!(
            text.contains("read of 4096 bytes at offset 0 of /the/source/pipe"),
            "{text}"
        );
        assert!(text.contains("--io-timeout"), "{text}");
        assert!(
            !text.contains("may yet land"),
            "no write was in flight: {text}"
        );
        assert_eq!(std::fs::read(&dst_path).unwrap(), pattern(8192, 5));
    }

    /// With real io_uring, a write that never completes (a one-page pipe nobody reads,
    /// already filled by the first chunk) stops the copy after the I/O timeout; the
    /// written-range report holds exactly the write that completed, the stuck write is
    /// named, and what the destination took is the source's first chunk.
    #[test]
    fn a_write_that_never_completes_stops_the_copy_with_the_exact_written_range() {
        use std::io::Read;
        use std::os::fd::AsRawFd;

        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        let data = pattern(16384, 77);
        std::fs::write(&src_path, &data).unwrap();
        let src = File::open(&src_path).unwrap();
        let (mut reader, writer) = std::io::pipe().unwrap();
        // SAFETY: F_SETPIPE_SZ on a pipe this test owns; no memory is passed.
        let size = unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
        assert_eq!(size, 4096, "a one-page pipe");
        let dst = File::from(std::os::fd::OwnedFd::from(writer));
        let dst_path = Path::new("/the/destination/pipe");
        let err = run_one_way_within(
            Direction::Copy,
            Endpoint {
                file: &src,
                path: &src_path,
            },
            Endpoint {
                file: &dst,
                path: dst_path,
            },
            &raw_plan(16384, 4096),
            host_buffers(2, 4096),
            Duration::from_millis(200),
            &mut |_| {},
        )
        .unwrap_err();
        let text = err.to_string();
        let EngineError::Stalled {
            in_flight, written, ..
        } = err
        else {
            panic!("expected Stalled, got {err:?}");
        };
        let mut first_chunk = RangeSet::default();
        first_chunk.insert(0..4096);
        assert_eq!(written.ranges, first_chunk);
        assert_eq!(
            in_flight,
            vec![StuckRequest {
                op: Op::Write,
                path: dst_path.to_owned(),
                offset: 4096,
                len: 4096,
            }]
        );
        assert!(
            text.contains("4 KiB of /the/destination/pipe written"),
            "{text}"
        );
        assert!(text.contains("may yet land: 4096..8192"), "{text}");
        let mut landed = vec![0u8; 4096];
        reader.read_exact(&mut landed).unwrap();
        assert_eq!(landed, data[..4096]);
    }

    #[test]
    fn errno_meanings() {
        // (errno, through device memory, buffer still live, meaning)
        let cases = [
            (libc::EREMOTEIO, true, true, FailureKind::P2pRefused),
            (libc::EINVAL, true, true, FailureKind::P2pRefused),
            (libc::EINVAL, false, true, FailureKind::Other),
            (libc::EFAULT, true, false, FailureKind::ProviderGone),
            (libc::ENODEV, true, true, FailureKind::ProviderGone),
            (libc::ENOMEM, true, true, FailureKind::OutOfMemory),
            (libc::ENOSPC, false, true, FailureKind::NoSpace),
            (libc::EIO, true, true, FailureKind::DeviceError),
            (libc::EACCES, true, true, FailureKind::PermissionDenied),
        ];
        for (errno, p2p, live, meaning) in cases {
            let e = io::Error::from_raw_os_error(errno);
            assert_eq!(
                FailureKind::classify(&e, p2p, live),
                meaning,
                "errno {errno}, p2p {p2p}, live {live}"
            );
        }
    }

    mod fake_backend {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;

        use super::super::super::fake::{target_of, Event, FakeBackend, FakeBuf, Fault};
        use super::*;

        const SRC_LEN: usize = 1 << 20;

        fn fake_plan(length: u64, chunk: u64, depth: u32) -> CopyPlan {
            CopyPlan {
                src_offset: 8192,
                dst_offset: 4096,
                length,
                chunk_size: chunk,
                queue_depth: depth,
                block_size: 512,
                grows_destination: false,
            }
        }

        struct Run {
            result: Result<EngineReport, EngineError>,
            files: [Vec<u8>; 2],
            events: Vec<Event>,
            max_in_flight: [usize; 2],
            drops: usize,
            src: Vec<u8>,
            dst_before: Vec<u8>,
        }

        fn go(
            plan: &CopyPlan,
            seed: u64,
            buffers: usize,
            device: bool,
            setup: impl FnOnce(FakeBackend) -> FakeBackend,
        ) -> Run {
            go_within(plan, seed, buffers, device, DEFAULT_IO_TIMEOUT, setup)
        }

        fn go_within(
            plan: &CopyPlan,
            seed: u64,
            buffers: usize,
            device: bool,
            io_timeout: Duration,
            setup: impl FnOnce(FakeBackend) -> FakeBackend,
        ) -> Run {
            let src = pattern(SRC_LEN, seed + 100);
            let dst_before = pattern(SRC_LEN, seed + 200);
            let backend = setup(FakeBackend::new(src.clone(), dst_before.clone(), seed, 64));
            let (files, log) = (Arc::clone(&backend.files), Arc::clone(&backend.log));
            let drops = Arc::new(AtomicUsize::new(0));
            let bufs = (0..buffers)
                .map(|_| FakeBuf::new(plan.chunk_size as usize, device, &drops))
                .collect();
            let names = [Path::new("/fake/src"), Path::new("/fake/dst")];
            let mut last = 0;
            let result = run_pipeline_within(
                Direction::Copy,
                backend,
                names,
                plan,
                bufs,
                io_timeout,
                &mut |n| {
                    assert!(n > last, "progress only grows");
                    last = n;
                },
            );
            let log = log.lock().unwrap();
            let files = files.lock().unwrap().clone();
            Run {
                result,
                files,
                events: log.events.clone(),
                max_in_flight: log.max_in_flight,
                drops: drops.load(Ordering::SeqCst),
                src,
                dst_before,
            }
        }

        /// Issue 10: the pipeline is backend-generic; with completions in any order it
        /// copies exactly the range, keeps each direction at (and never above) the depth,
        /// writes a chunk only after its read completed, and frees every buffer.
        #[test]
        fn any_completion_order_copies_the_range_at_the_planned_depth() {
            // 10 chunks of 64 KiB and a short last one.
            let plan = fake_plan(10 * 65536 + 4096, 65536, 3);
            for seed in 1..40 {
                let run = go(&plan, seed, 6, false, |b| b);
                let report = run.result.unwrap();
                assert_eq!(report.bytes, plan.length);
                assert_eq!((report.reads, report.writes), (11, 11), "seed {seed}");
                let (s, d, n) = (8192, 4096, plan.length as usize);
                assert_eq!(&run.files[1][d..d + n], &run.src[s..s + n], "seed {seed}");
                assert_eq!(&run.files[1][..d], &run.dst_before[..d]);
                assert_eq!(&run.files[1][d + n..], &run.dst_before[d + n..]);
                assert!(run.max_in_flight[0] <= 3 && run.max_in_flight[1] <= 3);
                assert_eq!(run.files[0], run.src, "the source is never written");
                // Every write of a chunk comes after the completed read of that chunk.
                for (i, e) in run.events.iter().enumerate() {
                    if let Event::Submitted(w) = e {
                        if w.op == Op::Write {
                            let from = w.offset - 4096 + 8192;
                            assert!(
                                run.events[..i].iter().any(|e| matches!(e,
                                    Event::Completed(r, Ok(_)) if r.op == Op::Read
                                        && r.offset == from && r.tag == w.tag)),
                                "seed {seed}: write at {} before its read",
                                w.offset
                            );
                        }
                    }
                    if let Event::Submitted(r) = e {
                        assert_eq!(r.target, target_of(r.op));
                    }
                }
                assert_eq!(run.drops, 6, "every buffer freed");
            }
            // Over the seeds the depth is reached in both directions, not just bounded.
            let reached =
                (1..40).any(|seed| go(&plan, seed, 6, false, |b| b).max_in_flight == [3, 3]);
            assert!(reached);
        }

        /// Issue 10: a write failing mid-copy stops the copy with the exact destination
        /// bytes written, whatever completed around it, and nothing reaches the device
        /// after the failure was seen.
        #[test]
        fn a_failed_write_mid_copy_reports_exactly_the_bytes_written() {
            let plan = fake_plan(16 * 32768, 32768, 4);
            for seed in 1..40 {
                let fail_at = 4096 + 6 * 32768;
                let run = go(&plan, seed, 8, false, |b| {
                    b.fault(Op::Write, fail_at, Fault::Errno(libc::EIO))
                });
                let Err(EngineError::Stopped { written, failure }) = run.result else {
                    panic!("seed {seed}: expected Stopped");
                };
                assert_eq!(
                    (failure.op, failure.offset, failure.kind),
                    (Op::Write, fail_at, FailureKind::DeviceError)
                );
                assert_eq!(failure.path, Path::new("/fake/dst"));
                // The ranges reported are exactly the writes that completed.
                let mut expected = RangeSet::default();
                let mut failed_seen = None;
                for (i, e) in run.events.iter().enumerate() {
                    match e {
                        Event::Completed(r, Ok(n)) if r.op == Op::Write => {
                            expected.insert(r.offset..r.offset + *n as u64);
                        }
                        Event::Completed(r, Err(_)) if failed_seen.is_none() => {
                            assert_eq!(r.offset, fail_at);
                            failed_seen = Some(i);
                        }
                        _ => {}
                    }
                }
                assert_eq!(written.ranges, expected, "seed {seed}");
                // Bytes reported are the source's, every other byte is untouched.
                let mut covered = vec![false; SRC_LEN];
                for r in written.ranges.ranges() {
                    covered[r.start as usize..r.end as usize].fill(true);
                }
                for (i, b) in run.files[1].iter().enumerate() {
                    let want = if covered[i] {
                        run.src[i - 4096 + 8192]
                    } else {
                        run.dst_before[i]
                    };
                    assert_eq!(*b, want, "seed {seed}: byte {i}");
                }
                // Nothing was handed over once the pipeline saw the failure: the only
                // submissions after it belong to the same reap batch (none).
                let after = failed_seen.unwrap();
                let late = run.events[after..]
                    .iter()
                    .filter(|e| matches!(e, Event::Submitted(_)))
                    .count();
                assert_eq!(late, 0, "seed {seed}: submitted after the failure");
                assert_eq!(run.drops, 8, "buffers freed after the drain");
            }
        }

        #[test]
        fn short_transfers_are_resubmitted_for_the_rest_and_eintr_is_retried() {
            let plan = fake_plan(4 * 65536, 65536, 2);
            let run = go(&plan, 7, 4, false, |b| {
                b.fault(Op::Read, 8192 + 65536, Fault::Short(4096))
                    .fault(Op::Write, 4096 + 2 * 65536, Fault::Short(512))
                    .fault(Op::Read, 8192, Fault::Errno(libc::EINTR))
            });
            let report = run.result.unwrap();
            assert_eq!(report.short_transfers, 2);
            assert_eq!(report.retries, 1);
            assert_eq!((report.reads, report.writes), (6, 5));
            let n = plan.length as usize;
            assert_eq!(&run.files[1][4096..4096 + n], &run.src[8192..8192 + n]);
        }

        /// The meaning of a failure depends on the buffer: device memory whose provider
        /// went away is ProviderGone, EINVAL on live device memory is a refused P2P
        /// mapping, EINVAL on host memory is neither.
        #[test]
        fn revoked_device_memory_reads_as_provider_gone() {
            let plan = fake_plan(8 * 65536, 65536, 2);
            let run = go(&plan, 3, 4, true, |b| {
                b.fault(Op::Read, 8192 + 3 * 65536, Fault::Revoke)
            });
            let Err(EngineError::Stopped { failure, written }) = run.result else {
                panic!("expected Stopped");
            };
            assert_eq!(failure.kind, FailureKind::ProviderGone);
            assert!(written.ranges.total() <= 3 * 65536);
            for (device, kind) in [(true, FailureKind::P2pRefused), (false, FailureKind::Other)] {
                let run = go(&plan, 3, 4, device, |b| {
                    b.fault(Op::Write, 4096, Fault::Errno(libc::EINVAL))
                });
                let Err(EngineError::Stopped { failure, .. }) = run.result else {
                    panic!("expected Stopped");
                };
                assert_eq!(failure.kind, kind, "device memory: {device}");
            }
        }

        /// The buffer-lifetime contract: when the backend itself fails, requests may still
        /// be in flight, so the buffers are leaked, never freed.
        #[test]
        fn a_failing_backend_leaks_the_buffers_instead_of_freeing_them_under_dma() {
            let plan = fake_plan(16 * 65536, 65536, 4);
            let run = go(&plan, 5, 8, false, |b| b.fail_reaps_from(3));
            let Err(EngineError::RingFailed { in_flight, .. }) = run.result else {
                panic!("expected RingFailed");
            };
            assert!(in_flight > 0);
            assert_eq!(run.drops, 0, "no buffer may be freed with I/O in flight");
        }

        /// A request that never completes (a lost completion) no longer means a process
        /// asleep for good: after the I/O timeout the copy stops, names the request, reports
        /// exactly the writes that completed (and the stuck write's range as unknown), and
        /// leaks the buffers, since the request may still complete into one.
        #[test]
        fn a_request_that_never_completes_stalls_the_copy_naming_it_and_leaks_the_buffers() {
            let plan = fake_plan(16 * 32768, 32768, 4);
            let stuck_at = 4096 + 5 * 32768;
            let timeout = Duration::from_millis(30);
            for seed in 1..8 {
                let run = go_within(&plan, seed, 8, false, timeout, |b| {
                    b.fault(Op::Write, stuck_at, Fault::Never)
                });
                let Err(err) = run.result else {
                    panic!("seed {seed}: a copy with a lost write succeeded");
                };
                let text = err.to_string();
                let EngineError::Stalled {
                    waited,
                    in_flight,
                    written,
                } = err
                else {
                    panic!("seed {seed}: expected Stalled, got {err:?}");
                };
                assert!(waited >= timeout, "seed {seed}: gave up after {waited:?}");
                assert_eq!(
                    in_flight,
                    vec![StuckRequest {
                        op: Op::Write,
                        path: "/fake/dst".into(),
                        offset: stuck_at,
                        len: 32768,
                    }],
                    "seed {seed}"
                );
                let mut expected = RangeSet::default();
                for e in &run.events {
                    if let Event::Completed(r, Ok(n)) = e {
                        if r.op == Op::Write {
                            expected.insert(r.offset..r.offset + *n as u64);
                        }
                    }
                }
                assert_eq!(written.ranges, expected, "seed {seed}");
                assert_eq!(
                    written.ranges.total(),
                    plan.length - 32768,
                    "seed {seed}: every other chunk landed"
                );
                assert!(
                    text.contains(&format!(
                        "write of 32768 bytes at offset {stuck_at} of /fake/dst"
                    )),
                    "{text}"
                );
                assert!(
                    text.contains(&format!("may yet land: {stuck_at}..{}", stuck_at + 32768)),
                    "{text}"
                );
                assert_eq!(
                    run.drops, 0,
                    "seed {seed}: a buffer was freed under a lost request"
                );
            }
        }

        /// A backend that never takes a request, even with nothing in flight, is an
        /// error, not a hang; nothing was in flight, so the buffers are freed.
        #[test]
        fn a_backend_that_takes_nothing_fails_instead_of_spinning() {
            let plan = fake_plan(4 * 65536, 65536, 2);
            let drops = Arc::new(AtomicUsize::new(0));
            let backend = FakeBackend::new(vec![1; SRC_LEN], vec![2; SRC_LEN], 1, 0);
            let err = run_pipeline(
                Direction::Copy,
                backend,
                [Path::new("a"), Path::new("b")],
                &plan,
                (0..4).map(|_| FakeBuf::new(65536, false, &drops)).collect(),
                &mut |_| {},
            )
            .unwrap_err();
            assert!(
                matches!(err, EngineError::RingFailed { in_flight: 0, .. }),
                "{err:?}"
            );
            assert_eq!(drops.load(Ordering::SeqCst), 4);
        }

        #[test]
        fn buffers_smaller_than_a_chunk_are_refused_before_the_backend_sees_anything() {
            let plan = fake_plan(4 * 65536, 65536, 2);
            let drops = Arc::new(AtomicUsize::new(0));
            let backend = FakeBackend::new(vec![1; SRC_LEN], vec![2; SRC_LEN], 1, 8);
            let log = Arc::clone(&backend.log);
            let err = run_pipeline(
                Direction::Copy,
                backend,
                [Path::new("a"), Path::new("b")],
                &plan,
                vec![FakeBuf::new(4096, false, &drops)],
                &mut |_| {},
            )
            .unwrap_err();
            assert!(matches!(
                err,
                EngineError::BadBuffers {
                    count: 1,
                    smallest: 4096,
                    ..
                }
            ));
            assert!(log.lock().unwrap().events.is_empty());
        }
    }
}
