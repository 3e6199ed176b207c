//! `--verify`: re-read both ranges through host memory and compare xxh3-128 digests.
//!
//! The reads are O_DIRECT into aligned host buffers, so they come from the devices, not
//! from a page cache the copy never touched, and they do not use device memory, so a
//! faulty P2P path cannot hide its own mistakes. Both ranges are read at once through one
//! io_uring (several chunks of each side in flight, registered buffers), and each chunk
//! is hashed and compared as soon as both of its sides are in, while the next chunks are
//! being read.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use xxhash_rust::xxh3::Xxh3;

use super::backend::{DmaBuffer, IoBackend, Target};
use super::engine::{Endpoint, Op, StuckList, StuckRequest};
use super::host_buffer::{HostBuffer, HostBufferError};
use super::pipeline::{Pipeline, ReapError, DEFAULT_IO_TIMEOUT};
use super::plan::CopyPlan;
use super::uring::UringBackend;

/// Smallest read used while verifying (the copy's chunk size if larger).
const VERIFY_MIN_STEP: u64 = 1 << 20;
/// Largest read used while verifying.
const VERIFY_MAX_STEP: u64 = 8 << 20;
/// Chunks of each side in flight at least (the copy's queue depth if larger)...
const VERIFY_MIN_DEPTH: u64 = 4;
/// ... and at most.
const VERIFY_MAX_DEPTH: u64 = 16;
/// Host memory per side for verification buffers, at most.
const VERIFY_MAX_BUFFERS: u64 = 64 << 20;
/// How many times one read is retried after EINTR/EAGAIN before giving up.
const MAX_RETRIES: u32 = 16;

/// Why verification could not be carried out (a mismatch is not an error: see
/// [`Verification::first_difference`]).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// No host memory for the read buffers.
    #[error("cannot allocate the verification buffers")]
    Buffer(#[source] HostBufferError),
    /// io_uring is unavailable (old kernel, `kernel.io_uring_disabled`, seccomp).
    #[error("cannot set up an io_uring with {entries} entries to re-read both ranges")]
    Ring {
        /// Ring size asked for.
        entries: u32,
        /// The error from io_uring_setup or io_uring_enter.
        #[source]
        source: io::Error,
    },
    /// The I/O backend failed (not one read: the backend itself).
    #[error("the I/O backend failed while re-reading both ranges")]
    Backend {
        /// Its error.
        #[source]
        source: io::Error,
    },
    /// No re-read completed within the I/O timeout: the device, its driver or the kernel
    /// lost them (the buffers were leaked rather than freed under the device's feet).
    #[error("no re-read for verification completed for {:.1} s with {} read(s) in flight: {}; check the kernel log (dmesg) for NVMe timeouts or resets, and if the device is only slow, allow more time with --io-timeout", .waited.as_secs_f64(), .in_flight.len(), StuckList(.in_flight))]
    Stalled {
        /// How long the last wait lasted without any completion.
        waited: Duration,
        /// The reads that never completed.
        in_flight: Vec<StuckRequest>,
    },
    /// A re-read failed.
    #[error("re-reading {len} bytes at offset {offset} of {} for verification failed", path.display())]
    Read {
        /// The file or device.
        path: PathBuf,
        /// Byte offset of the failed read.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// The outcome of re-reading both ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// xxh3-128 of the source range.
    #[serde(serialize_with = "hex128")]
    pub src_digest: u128,
    /// xxh3-128 of the destination range.
    #[serde(serialize_with = "hex128")]
    pub dst_digest: u128,
    /// Offset, relative to the start of the ranges, of the first byte that differs.
    pub first_difference: Option<u64>,
}

impl Verification {
    /// Both ranges hold the same bytes.
    pub fn matched(&self) -> bool {
        self.first_difference.is_none() && self.src_digest == self.dst_digest
    }
}

fn hex128<S: serde::Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:032x}"))
}

/// Where one chunk of the ranges is in its trip.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Chunk number.
    index: u64,
    /// Bytes of the chunk (the last one may be shorter).
    len: u64,
    /// Bytes read so far, per side.
    done: [u64; 2],
    /// Retries of the current read, per side.
    retries: [u32; 2],
}

/// How a verification reads: `step` bytes per read, `pairs` buffer pairs (slot 2p holds
/// pair p's source chunk, slot 2p + 1 its destination chunk), `depth` reads in flight per
/// side. A backend-generic caller allocates `2 * pairs` buffers of `step` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyShape {
    /// Bytes per read (the last may be shorter).
    pub step: u64,
    /// Chunks of `step` in the range.
    pub chunks: u64,
    /// Buffer pairs.
    pub pairs: usize,
    /// Reads in flight per side.
    pub depth: usize,
}

impl VerifyShape {
    /// The shape for `plan`; `None` for an empty range.
    pub fn of(plan: &CopyPlan) -> Option<VerifyShape> {
        VerifyShape::within(plan, None)
    }

    /// The shape for `plan` with reads of at most `max_request` bytes (the largest request
    /// both devices take whole, `queue/max_sectors_kb`), when known; `None` for an empty
    /// range.
    ///
    /// A larger O_DIRECT read has to be split by the block layer, which io_uring's first,
    /// non-blocking attempt may not do (EAGAIN), so every such read is handed to an io-wq
    /// worker thread. On Linux 7.2 under load a batch of reads handed over that way was
    /// seen to vanish (no worker thread, nothing reaching the block layer, no completion),
    /// several times in a few hundred verifications, leaving `p2pdma` asleep until the I/O
    /// timeout. Reads the devices take whole complete from the submitting thread.
    pub fn within(plan: &CopyPlan, max_request: Option<u64>) -> Option<VerifyShape> {
        if plan.length == 0 {
            return None;
        }
        let block = plan.block_size.max(1);
        let largest = max_request.map_or(u64::MAX, |m| (m / block * block).max(block));
        let step = plan
            .chunk_size
            .clamp(VERIFY_MIN_STEP, VERIFY_MAX_STEP)
            .next_multiple_of(block)
            .min(largest)
            .min(plan.length.next_multiple_of(block));
        let chunks = plan.length.div_ceil(step);
        // Chunks a side may read ahead of the comparison: twice the depth, so one side
        // being slower for a while does not hold the other back (within
        // VERIFY_MAX_BUFFERS).
        let depth = u64::from(plan.queue_depth).clamp(VERIFY_MIN_DEPTH, VERIFY_MAX_DEPTH);
        let pairs = (2 * depth).min(VERIFY_MAX_BUFFERS / step).clamp(1, chunks) as usize;
        Some(VerifyShape {
            step,
            chunks,
            pairs,
            // Reads in flight per side.
            depth: (depth as usize).min(pairs),
        })
    }
}

/// A buffer the CPU may read once no request names it (host memory, not device memory:
/// verification must not trust the P2P path it checks).
pub trait CpuReadable {
    /// The buffer's bytes.
    fn cpu_bytes(&mut self) -> &[u8];
}

impl CpuReadable for HostBuffer {
    fn cpu_bytes(&mut self) -> &[u8] {
        self.as_slice()
    }
}

/// Re-reads `plan`'s source and destination ranges (files opened with O_DIRECT and read
/// access) and compares them. Calls `progress` with the bytes compared so far.
pub fn verify(
    src: Endpoint<'_>,
    dst: Endpoint<'_>,
    plan: &CopyPlan,
    progress: &mut dyn FnMut(u64),
) -> Result<Verification, VerifyError> {
    verify_within(src, dst, plan, None, DEFAULT_IO_TIMEOUT, progress)
}

/// [`verify`] with reads of at most `max_request` bytes (see [`VerifyShape::within`]),
/// whose waits give up after `io_timeout` without any completion
/// ([`VerifyError::Stalled`]).
pub fn verify_within(
    src: Endpoint<'_>,
    dst: Endpoint<'_>,
    plan: &CopyPlan,
    max_request: Option<u64>,
    io_timeout: Duration,
    progress: &mut dyn FnMut(u64),
) -> Result<Verification, VerifyError> {
    let Some(shape) = VerifyShape::within(plan, max_request) else {
        return Ok(empty());
    };
    let buffers = (0..2 * shape.pairs)
        .map(|_| HostBuffer::new(shape.step as usize))
        .collect::<Result<Vec<_>, _>>()
        .map_err(VerifyError::Buffer)?;
    let entries = (2 * shape.pairs as u32).next_power_of_two();
    let backend = UringBackend::new([src.file, dst.file], entries)
        .map_err(|source| VerifyError::Ring { entries, source })?;
    verify_through(
        backend,
        buffers,
        [src.path, dst.path],
        plan,
        &shape,
        io_timeout,
        progress,
    )
    .map_err(|e| match e {
        VerifyError::Backend { source } => VerifyError::Ring { entries, source },
        e => e,
    })
}

fn empty() -> Verification {
    Verification {
        src_digest: Xxh3::new().digest128(),
        dst_digest: Xxh3::new().digest128(),
        first_difference: None,
    }
}

/// [`verify`] over any backend: `buffers` are `2 * shape.pairs` buffers of at least
/// `shape.step` bytes; `names` (source, destination) are used in messages; a wait gives
/// up after `io_timeout` without any completion.
pub fn verify_through<B: IoBackend>(
    backend: B,
    buffers: Vec<B::Buffer>,
    names: [&Path; 2],
    plan: &CopyPlan,
    shape: &VerifyShape,
    io_timeout: Duration,
    progress: &mut dyn FnMut(u64),
) -> Result<Verification, VerifyError>
where
    B::Buffer: CpuReadable,
{
    let mut src_hash = Xxh3::new();
    let mut dst_hash = Xxh3::new();
    let mut first_difference = None;
    let VerifyShape {
        step,
        chunks,
        pairs,
        depth,
    } = *shape;
    if plan.length == 0 {
        return Ok(empty());
    }
    if buffers.len() < 2 * pairs || buffers.iter().any(|b| (b.dma_len() as u64) < step) {
        return Err(VerifyError::Backend {
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "verification needs {} buffers of {step} bytes, {} given",
                    2 * pairs,
                    buffers.len()
                ),
            ),
        });
    }
    let mut pipeline = Pipeline::new(backend, buffers)
        .map_err(|source| VerifyError::Backend { source })?
        .with_io_timeout(io_timeout);
    let starts = [plan.src_offset, plan.dst_offset];
    let read = |pipeline: &mut Pipeline<B>, pair: usize, side: usize, p: &Pending| {
        let done = p.done[side];
        pipeline.queue(
            Op::Read,
            [Target::Source, Target::Destination][side],
            2 * pair + side,
            done as usize,
            (p.len - done) as usize,
            starts[side] + p.index * step + done,
        );
    };

    // Chunk i always uses pair i % pairs; a pair is free once its chunk was compared.
    let mut pending: Vec<Option<Pending>> = vec![None; pairs];
    let mut next_read = [0u64; 2];
    let mut in_flight = [0usize; 2];
    let mut next_hash = 0u64;
    let mut completions = Vec::with_capacity(2 * pairs);
    while next_hash < chunks {
        // Each side reads ahead on its own, up to `depth` reads and `pairs` chunks.
        for side in [Target::Source as usize, Target::Destination as usize] {
            while in_flight[side] < depth
                && next_read[side] < chunks
                && next_read[side] < next_hash + pairs as u64
            {
                let index = next_read[side];
                let pair = (index % pairs as u64) as usize;
                let p = pending[pair].get_or_insert(Pending {
                    index,
                    len: step.min(plan.length - index * step),
                    done: [0; 2],
                    retries: [0; 2],
                });
                let p = *p;
                read(&mut pipeline, pair, side, &p);
                in_flight[side] += 1;
                next_read[side] += 1;
            }
        }
        // Hash and compare, in order, every chunk whose two sides are in.
        let pair = (next_hash % pairs as u64) as usize;
        if let Some(p) = pending[pair].filter(|p| p.done == [p.len; 2]) {
            let (a, b) = pipeline
                .pair_mut(2 * pair, 2 * pair + 1)
                .expect("both reads of a complete chunk have completed");
            let len = p.len as usize;
            let (a, b) = (&a.cpu_bytes()[..len], &b.cpu_bytes()[..len]);
            src_hash.update(a);
            dst_hash.update(b);
            // Slice equality is a memcmp; the byte search only runs on a mismatch.
            if first_difference.is_none() && a != b {
                first_difference = a
                    .iter()
                    .zip(b)
                    .position(|(x, y)| x != y)
                    .map(|i| p.index * step + i as u64);
            }
            pending[pair] = None;
            next_hash += 1;
            progress((next_hash * step).min(plan.length));
            continue;
        }

        completions.clear();
        match pipeline.submit_and_wait(&mut completions) {
            Ok(()) => {}
            Err(ReapError::Backend(source)) => return Err(VerifyError::Backend { source }),
            Err(ReapError::Stalled(stall)) => {
                // Dropping the pipeline leaks the buffers the stuck reads name.
                return Err(VerifyError::Stalled {
                    waited: stall.waited,
                    in_flight: StuckRequest::all(&stall.requests, names),
                });
            }
        }
        for completion in completions.drain(..) {
            let slot = completion.tag as usize;
            let (pair, side) = (slot / 2, slot % 2);
            let p = pending[pair]
                .as_mut()
                .expect("a completion for a pair without a chunk");
            let error = match completion.result {
                Ok(r) if r > 0 => {
                    p.done[side] += r as u64;
                    p.retries[side] = 0;
                    if p.done[side] < p.len {
                        let p = *p;
                        read(&mut pipeline, pair, side, &p);
                    } else {
                        in_flight[side] -= 1;
                    }
                    continue;
                }
                Ok(_) => io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the read returned 0 bytes: the range ends past the end",
                ),
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN))
                        && p.retries[side] < MAX_RETRIES =>
                {
                    p.retries[side] += 1;
                    let p = *p;
                    read(&mut pipeline, pair, side, &p);
                    continue;
                }
                Err(e) => e,
            };
            // Dropping the pipeline stops it and reaps what is in flight.
            return Err(VerifyError::Read {
                path: names[side].to_owned(),
                offset: starts[side] + p.index * step,
                len: p.len,
                source: error,
            });
        }
    }
    Ok(Verification {
        src_digest: src_hash.digest128(),
        dst_digest: dst_hash.digest128(),
        first_difference,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::copy::test_files::{open_direct, SrcDst};

    fn plan(src_offset: u64, dst_offset: u64, length: u64) -> CopyPlan {
        CopyPlan {
            src_offset,
            dst_offset,
            length,
            chunk_size: 1 << 20,
            queue_depth: 1,
            block_size: 4096,
            grows_destination: false,
        }
    }

    fn open(path: &Path) -> std::fs::File {
        open_direct(path, false)
    }

    #[test]
    fn names_the_first_differing_offset_and_matches_equal_ranges() {
        let data: Vec<u8> = (0..(10u32 << 20)).map(|i| (i % 251) as u8).collect();
        let mut shifted = vec![0u8; 4096];
        shifted.extend_from_slice(&data);
        let flip = 4096 + (9 << 20) + 12345;
        shifted[flip] ^= 0x40;
        let files = SrcDst::new(&data, &shifted);
        let (ea, eb) = files.endpoints();

        let same = verify(ea, eb, &plan(0, 4096, 9 << 20), &mut |_| {}).unwrap();
        assert!(same.matched());
        assert_eq!(
            same.src_digest,
            xxhash_rust::xxh3::xxh3_128(&data[..9 << 20])
        );

        let mut last = 0;
        let diff = verify(ea, eb, &plan(0, 4096, 10 << 20), &mut |n| last = n).unwrap();
        assert!(!diff.matched());
        assert_eq!(diff.first_difference, Some((9 << 20) + 12345));
        assert_eq!(last, 10 << 20);
        assert_ne!(diff.src_digest, diff.dst_digest);
    }

    /// Both sides are read in parallel, several chunks at once, and compared as they come
    /// in: the report must still name the earliest difference and digest the ranges in
    /// order, whatever order the reads complete in.
    #[test]
    fn reads_in_parallel_still_name_the_earliest_of_several_differences() {
        let mut data = vec![0u8; (12 << 20) + 8192];
        fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15).fill(&mut data);
        let mut other = data.clone();
        for at in [(11 << 20) + 5, (7 << 20) + 4095, (3 << 20) + 17] {
            other[at] ^= 0x01;
        }
        let files = SrcDst::new(&data, &other);
        let (ea, eb) = files.endpoints();
        let len = data.len() as u64;
        let mut p = plan(0, 0, len);
        p.queue_depth = 16;
        let v = verify(ea, eb, &p, &mut |_| {}).unwrap();
        assert_eq!(v.first_difference, Some((3 << 20) + 17));
        assert_eq!(v.src_digest, xxhash_rust::xxh3::xxh3_128(&data));
        assert_eq!(v.dst_digest, xxhash_rust::xxh3::xxh3_128(&other));
        let same = verify(ea, ea, &p, &mut |_| {}).unwrap();
        assert!(same.matched());
    }

    /// The comparison is backend-generic: over the in-memory backend, with reads
    /// completing out of order and short, it still names the earliest difference and
    /// digests both ranges in order.
    #[test]
    fn any_backend_order_still_names_the_earliest_difference() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::Arc;

        use crate::copy::engine::Op;
        use crate::copy::fake::{FakeBackend, FakeBuf, Fault};

        let mut data = vec![0u8; 6 << 20];
        fastrand::Rng::with_seed(0x2545_f491_4f6c_dd1d).fill(&mut data);
        let mut other = data.clone();
        other[(5 << 20) + 77] ^= 0x10;
        other[(2 << 20) + 4097] ^= 0x01;
        let mut p = plan(0, 0, 6 << 20);
        p.queue_depth = 4;
        let shape = VerifyShape::of(&p).unwrap();
        for seed in 1..6 {
            let backend = FakeBackend::new(data.clone(), other.clone(), seed, 64).fault(
                Op::Read,
                1 << 20,
                Fault::Short(4096),
            );
            let drops = Arc::new(AtomicUsize::new(0));
            let buffers = (0..2 * shape.pairs)
                .map(|_| FakeBuf::new(shape.step as usize, false, &drops))
                .collect();
            let v = verify_through(
                backend,
                buffers,
                [Path::new("a"), Path::new("b")],
                &p,
                &shape,
                DEFAULT_IO_TIMEOUT,
                &mut |_| {},
            )
            .unwrap();
            assert_eq!(v.first_difference, Some((2 << 20) + 4097), "seed {seed}");
            assert_eq!(v.src_digest, xxhash_rust::xxh3::xxh3_128(&data));
            assert_eq!(v.dst_digest, xxhash_rust::xxh3::xxh3_128(&other));
        }
    }

    /// Reads are no larger than the largest request both devices take whole (rounded
    /// down to the block size, at least one block), so none needs the block layer's split;
    /// without a limit the shape is what it was.
    #[test]
    fn reads_stay_within_the_largest_request_the_devices_take() {
        let mut p = plan(0, 0, 4 << 20);
        p.queue_depth = 4;
        let whole = VerifyShape::of(&p).unwrap();
        assert_eq!((whole.step, whole.chunks), (1 << 20, 4));
        assert_eq!(VerifyShape::within(&p, None), Some(whole));
        let half = VerifyShape::within(&p, Some(512 << 10)).unwrap();
        assert_eq!((half.step, half.chunks), (512 << 10, 8));
        assert!(half.pairs >= half.depth && half.depth == 4);
        let odd = VerifyShape::within(&p, Some(300_000)).unwrap();
        assert_eq!(odd.step, 73 * 4096, "rounded down to the block size");
        assert_eq!(VerifyShape::within(&p, Some(100)).unwrap().step, 4096);
    }

    /// Smaller reads compare the same bytes: the same digests and the same first
    /// difference as reads of a whole chunk.
    #[test]
    fn small_reads_find_the_same_first_difference() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..(3u32 << 20))
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let mut other = data.clone();
        other[(2 << 20) + 8195] ^= 0x40;
        std::fs::write(&a, &data).unwrap();
        std::fs::write(&b, &other).unwrap();
        let (fa, fb) = (open(&a), open(&b));
        let (ea, eb) = (
            Endpoint {
                file: &fa,
                path: &a,
            },
            Endpoint {
                file: &fb,
                path: &b,
            },
        );
        let p = plan(0, 0, 3 << 20);
        let whole = verify(ea, eb, &p, &mut |_| {}).unwrap();
        let small = verify_within(ea, eb, &p, Some(8192), DEFAULT_IO_TIMEOUT, &mut |_| {}).unwrap();
        assert_eq!(small, whole);
        assert_eq!(small.first_difference, Some((2 << 20) + 8195));
        assert_eq!(small.src_digest, xxhash_rust::xxh3::xxh3_128(&data));
    }

    #[test]
    fn a_range_past_the_end_is_a_read_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        let f = open(&p);
        let e = Endpoint { file: &f, path: &p };
        let err = verify(e, e, &plan(0, 4096, 8192), &mut |_| {}).unwrap_err();
        assert!(
            matches!(err, VerifyError::Read { offset: 4096, .. }),
            "{err:?}"
        );
    }
}
