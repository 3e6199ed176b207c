//! The pipelined io_uring engine: O_DIRECT reads into a buffer, O_DIRECT writes out of it.
//!
//! Each buffer ("slot") carries one chunk at a time: read it in full, then write it in
//! full, then take the next chunk. With N slots, N chunks are in flight, so the read of
//! chunk k+1 overlaps the write of chunk k. Reads and writes are plain (non-fixed)
//! `IORING_OP_READ`/`IORING_OP_WRITE` with raw pointers: registering p2pmem as fixed
//! buffers fails with EFAULT, and the kernel pins the pages per request instead (GUP with
//! `FOLL_PCI_P2PDMA`).
//!
//! The buffers belong to the engine while it runs and are only released once every
//! submitted request has completed, on success, on error and on unwinding alike.
#![allow(unsafe_code)]

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
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

#[derive(Debug, Clone, Copy)]
enum SlotState {
    Idle,
    Busy {
        chunk: Chunk,
        op: Op,
        done: u64,
        retries: u32,
    },
}

/// The ring and the buffers it may be using. Dropping it reaps every outstanding request
/// before the buffers go; if that is impossible the buffers are leaked.
struct Pipeline<R: IoRegion> {
    ring: IoUring,
    buffers: Option<Vec<R>>,
    in_flight: usize,
}

impl<R: IoRegion> Pipeline<R> {
    fn buffer(&self, slot: usize) -> &R {
        // The Option is only emptied in Drop.
        &self.buffers.as_ref().expect("buffers present until drop")[slot]
    }

    /// Submits the next piece of the slot's chunk: the rest of its read or of its write.
    fn push(&mut self, slot: usize, state: &SlotState, src: &File, dst: &File) {
        let SlotState::Busy {
            chunk, op, done, ..
        } = *state
        else {
            return;
        };
        let buffer = self.buffer(slot);
        let ptr = buffer.io_ptr().wrapping_add(done as usize);
        let len = (chunk.len - done) as u32;
        let entry = match op {
            Op::Read => opcode::Read::new(types::Fd(src.as_raw_fd()), ptr, len)
                .offset(chunk.src_offset + done)
                .build(),
            Op::Write => opcode::Write::new(types::Fd(dst.as_raw_fd()), ptr, len)
                .offset(chunk.dst_offset + done)
                .build(),
        }
        .user_data(slot as u64);
        // SAFETY: the entry points at bytes done..chunk.len of this slot's buffer, which
        // holds at least chunk.len bytes (checked in run) and is owned by self until every
        // completion is reaped (Drop drains before releasing the buffers). Each slot has at
        // most one request in flight and the ring has at least one SQ entry per slot, so
        // the push cannot find the queue full; the fds outlive the pipeline (borrowed by
        // run for its whole duration).
        let pushed = unsafe { self.ring.submission().push(&entry) };
        debug_assert!(pushed.is_ok(), "one SQ entry per slot");
        self.in_flight += 1;
    }

    /// Submits what is queued and waits for at least one completion; returns the
    /// completions as (slot, result).
    fn wait(&mut self, out: &mut Vec<(usize, i32)>) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // The completion queue is full: reap below, then submit again next time.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => break,
                Err(e) => return Err(e),
            }
        }
        for cqe in self.ring.completion() {
            out.push((cqe.user_data() as usize, cqe.result()));
        }
        self.in_flight -= out.len();
        Ok(())
    }

    fn drain(&mut self) -> io::Result<()> {
        let mut sink = Vec::new();
        while self.in_flight > 0 {
            sink.clear();
            self.wait(&mut sink)?;
        }
        Ok(())
    }
}

impl<R: IoRegion> Drop for Pipeline<R> {
    fn drop(&mut self) {
        if self.in_flight > 0 && self.drain().is_err() {
            // The kernel may still be writing into these buffers: never free them.
            std::mem::forget(self.buffers.take());
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

/// Copies `plan`'s range from `src` to `dst` through `buffers` (one chunk per buffer in
/// flight; at most `plan.queue_depth` are used). Calls `progress` with the total bytes
/// written after each completed write.
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
/// halves measured alone are comparable with the copy. `progress` and the report count
/// bytes read for [`Direction::ReadOnly`], bytes written otherwise.
pub fn run_one_way<R: IoRegion>(
    direction: Direction,
    src: Endpoint<'_>,
    dst: Endpoint<'_>,
    plan: &CopyPlan,
    buffers: Vec<R>,
    progress: &mut dyn FnMut(u64),
) -> Result<EngineReport, EngineError> {
    let slots = buffers
        .len()
        .min(plan.queue_depth.max(1) as usize)
        .min(plan.chunk_count() as usize);
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

    let entries = (slots as u32).next_power_of_two();
    let ring = IoUring::new(entries).map_err(|source| EngineError::Ring { entries, source })?;
    let mut pipeline = Pipeline {
        ring,
        buffers: Some(buffers),
        in_flight: 0,
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
    let cpu_start = process_cpu_time();
    let mut states = vec![SlotState::Idle; slots];
    let mut next_chunk = 0u64;
    let mut failure: Option<IoFailure> = None;
    let mut completions = Vec::with_capacity(slots);
    let start = Instant::now();

    loop {
        if failure.is_none() {
            for (slot, state) in states.iter_mut().enumerate() {
                if matches!(state, SlotState::Idle) {
                    let Some(chunk) = plan.chunk(next_chunk) else {
                        break;
                    };
                    next_chunk += 1;
                    let op = if direction == Direction::WriteOnly {
                        Op::Write
                    } else {
                        Op::Read
                    };
                    *state = SlotState::Busy {
                        chunk,
                        op,
                        done: 0,
                        retries: 0,
                    };
                    pipeline.push(slot, state, src.file, dst.file);
                    match op {
                        Op::Read => report.reads += 1,
                        Op::Write => report.writes += 1,
                    }
                }
            }
        }
        if pipeline.in_flight == 0 {
            break;
        }
        completions.clear();
        if let Err(source) = pipeline.wait(&mut completions) {
            return Err(EngineError::RingFailed {
                in_flight: pipeline.in_flight,
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
                unreachable!("a completion for an idle slot");
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

            if result < 0 {
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
                    pipeline.push(slot, &states[slot], src.file, dst.file);
                    report.retries += 1;
                } else {
                    states[slot] = SlotState::Idle;
                    if failure.is_none() {
                        failure = Some(fail(
                            io::Error::from_raw_os_error(errno),
                            pipeline.buffer(slot),
                        ));
                    }
                }
                continue;
            }

            let moved = result as u64;
            if op == Op::Write && moved > 0 {
                let at = chunk.dst_offset + done;
                written.ranges.insert(at..at + moved);
                report.bytes += moved;
                progress(report.bytes);
            } else if direction == Direction::ReadOnly && moved > 0 {
                report.bytes += moved;
                progress(report.bytes);
            }
            if moved == 0 {
                states[slot] = SlotState::Idle;
                if failure.is_none() {
                    let source = match op {
                        Op::Read => io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the read returned 0 bytes: the source ends before the planned range",
                        ),
                        Op::Write => {
                            io::Error::new(io::ErrorKind::WriteZero, "the write returned 0 bytes")
                        }
                    };
                    failure = Some(fail(source, pipeline.buffer(slot)));
                }
                continue;
            }

            let done = done + moved;
            let next = if done < chunk.len {
                report.short_transfers += 1;
                Some((op, done))
            } else if op == Op::Read && direction == Direction::Copy {
                Some((Op::Write, 0))
            } else {
                None
            };
            match next {
                Some((op, done)) if failure.is_none() => {
                    states[slot] = SlotState::Busy {
                        chunk,
                        op,
                        done,
                        retries: 0,
                    };
                    pipeline.push(slot, &states[slot], src.file, dst.file);
                    match op {
                        Op::Read => report.reads += 1,
                        Op::Write => report.writes += 1,
                    }
                }
                _ => states[slot] = SlotState::Idle,
            }
        }
    }
    report.elapsed = start.elapsed();
    let cpu_end = process_cpu_time();
    report.cpu_user = cpu_end.0.saturating_sub(cpu_start.0);
    report.cpu_system = cpu_end.1.saturating_sub(cpu_start.1);

    match failure {
        Some(failure) => Err(EngineError::Stopped { written, failure }),
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
