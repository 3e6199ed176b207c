//! One job of a `read` or `write` workload: io_uring O_DIRECT requests of one block size
//! into (or out of) `iodepth` buffers, each request timed from submission to completion
//! (fio's `clat`) into an HDR histogram.
//!
//! The requests go through the copy engine's [`Pipeline`] over its io_uring backend
//! ([`UringBackend`], both targets the same file), so the buffers belong to the job while
//! it runs and are released only once every submitted request was reaped (or leaked if
//! that is impossible), exactly as in the copy engine.

use std::fs::File;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::spec::Pattern;
use super::BenchError;
use crate::copy::backend::Target;
use crate::copy::engine::{FailureKind, IoRegion, Op};
use crate::copy::pipeline::Pipeline;
use crate::copy::uring::UringBackend;

/// How long a job goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// This many bytes (a multiple of the block size).
    Bytes(u64),
    /// Until this much time has passed (the range is gone over again as needed).
    Time(Duration),
}

/// One job's share of a run.
#[derive(Debug, Clone, Copy)]
pub struct JobSpec {
    /// Read (device to buffer) or write (buffer to device).
    pub op: Op,
    /// First byte of the job's range in the file (a multiple of `bs`).
    pub start: u64,
    /// Blocks in the job's range.
    pub blocks: u64,
    /// Bytes per request.
    pub bs: u64,
    /// Order of the blocks.
    pub pattern: Pattern,
    /// How long.
    pub amount: Amount,
    /// Seed of the random order.
    pub seed: u64,
}

/// What a job did.
#[derive(Debug)]
pub struct JobOutcome {
    /// Bytes moved.
    pub bytes: u64,
    /// Requests completed.
    pub ios: u64,
    /// Completion latency of every request, in nanoseconds.
    pub clat: Histogram<u64>,
}

/// A new latency histogram: 1 ns to 1 hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("static bounds are valid")
}

/// The block order of one pass over `blocks` blocks: sequential, or an affine permutation
/// `i -> (a*i + c) mod n` with `a` coprime to `n`, so every block comes once per pass.
#[derive(Debug, Clone, Copy)]
pub struct BlockOrder {
    blocks: u64,
    a: u64,
    c: u64,
}

impl BlockOrder {
    /// The order for `pattern` over `blocks` blocks (at least 1).
    pub fn new(pattern: Pattern, blocks: u64, seed: u64) -> BlockOrder {
        let blocks = blocks.max(1);
        match pattern {
            Pattern::Seq => BlockOrder { blocks, a: 1, c: 0 },
            Pattern::Rand => {
                let mut rng = fastrand::Rng::with_seed(seed);
                let mut a = rng.u64(..blocks) | 1;
                while gcd(a, blocks) != 1 {
                    a = (a + 2) % blocks.max(2);
                    if a == 0 {
                        a = 1;
                    }
                }
                BlockOrder {
                    blocks,
                    a,
                    c: rng.u64(..blocks),
                }
            }
        }
    }

    /// The block of the `k`-th request (passes repeat the same order).
    pub fn block(&self, k: u64) -> u64 {
        let i = (k % self.blocks) as u128;
        ((u128::from(self.a) * i + u128::from(self.c)) % u128::from(self.blocks)) as u64
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    offset: u64,
    done: u64,
    submitted: Instant,
    retries: u32,
}

const MAX_RETRIES: u32 = 16;

/// Runs one job on `file` through `buffers` (one request in flight per buffer).
pub fn run_job<R: IoRegion>(
    file: &File,
    path: &Path,
    spec: &JobSpec,
    buffers: Vec<R>,
) -> Result<JobOutcome, BenchError> {
    let depth = buffers.len();
    if depth == 0 || buffers.iter().any(|b| (b.io_len() as u64) < spec.bs) {
        return Err(BenchError::Internal(format!(
            "a job got {depth} buffer(s), some smaller than the block size {}",
            spec.bs
        )));
    }
    let device_memory = buffers[0].is_device_memory();
    let entries = (depth as u32).next_power_of_two();
    let backend = UringBackend::new([file, file], entries)
        .map_err(|source| BenchError::Ring { entries, source })?;
    let mut ring =
        Pipeline::new(backend, buffers).map_err(|source| BenchError::Ring { entries, source })?;
    let target = match spec.op {
        Op::Read => Target::Source,
        Op::Write => Target::Destination,
    };
    let push = |ring: &mut Pipeline<UringBackend<'_, R>>, slot: usize, req: &InFlight| {
        ring.queue(
            spec.op,
            target,
            slot,
            req.done as usize,
            (spec.bs - req.done) as usize,
            req.offset + req.done,
        );
    };
    let order = BlockOrder::new(spec.pattern, spec.blocks, spec.seed);
    let total_requests = match spec.amount {
        Amount::Bytes(b) => Some(b / spec.bs),
        Amount::Time(_) => None,
    };
    let mut clat = new_histogram();
    let mut slots: Vec<Option<InFlight>> = vec![None; depth];
    let mut issued = 0u64;
    let mut ios = 0u64;
    let mut bytes = 0u64;
    let mut failure: Option<BenchError> = None;
    let mut completions = Vec::with_capacity(depth);
    let start = Instant::now();

    loop {
        let more = |issued: u64| match (total_requests, spec.amount) {
            (Some(n), _) => issued < n,
            (None, Amount::Time(t)) => start.elapsed() < t,
            _ => false,
        };
        if failure.is_none() {
            for (slot, state) in slots.iter_mut().enumerate() {
                if state.is_some() || !more(issued) {
                    continue;
                }
                let req = InFlight {
                    offset: spec.start + order.block(issued) * spec.bs,
                    done: 0,
                    submitted: Instant::now(),
                    retries: 0,
                };
                issued += 1;
                push(&mut ring, slot, &req);
                *state = Some(req);
            }
        }
        if ring.is_idle() {
            break;
        }
        completions.clear();
        if let Err(e) = ring.submit_and_wait(&mut completions) {
            return Err(BenchError::RingFailed {
                path: path.to_owned(),
                source: e.into(),
            });
        }
        let now = Instant::now();
        for completion in completions.drain(..) {
            let slot = completion.tag as usize;
            let Some(mut req) = slots[slot].take() else {
                continue;
            };
            let fail = |source: io::Error| BenchError::Io {
                op: spec.op,
                path: path.to_owned(),
                offset: req.offset + req.done,
                len: spec.bs - req.done,
                kind: FailureKind::classify(&source, device_memory, true),
                source,
            };
            let moved = match completion.result {
                Ok(n) => n as u64,
                Err(e) => {
                    if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN))
                        && req.retries < MAX_RETRIES
                        && failure.is_none()
                    {
                        req.retries += 1;
                        push(&mut ring, slot, &req);
                        slots[slot] = Some(req);
                    } else if failure.is_none() {
                        failure = Some(fail(e));
                    }
                    continue;
                }
            };
            if moved == 0 {
                if failure.is_none() {
                    failure = Some(fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the request moved 0 bytes: the target ends before the range",
                    )));
                }
                continue;
            }
            bytes += moved;
            req.done += moved;
            if req.done < spec.bs {
                if failure.is_none() {
                    push(&mut ring, slot, &req);
                    slots[slot] = Some(req);
                }
                continue;
            }
            ios += 1;
            let ns = now.duration_since(req.submitted).as_nanos();
            clat.saturating_record(u64::try_from(ns).unwrap_or(u64::MAX).max(1));
        }
    }
    drop(ring);
    match failure {
        Some(e) => Err(e),
        None => Ok(JobOutcome { bytes, ios, clat }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::copy::test_files::open_direct;
    use crate::copy::HostBuffer;

    #[test]
    fn random_order_visits_every_block_once_per_pass() {
        for blocks in [1u64, 2, 7, 64, 1000, 4096] {
            let order = BlockOrder::new(Pattern::Rand, blocks, 42);
            let seen: HashSet<u64> = (0..blocks).map(|k| order.block(k)).collect();
            assert_eq!(seen.len() as u64, blocks, "{blocks}");
            assert!(seen.iter().all(|b| *b < blocks));
            assert_eq!(order.block(blocks + 3), order.block(3));
        }
        let seq = BlockOrder::new(Pattern::Seq, 10, 1);
        assert_eq!((0..12).map(|k| seq.block(k)).collect::<Vec<_>>(), {
            let mut v: Vec<u64> = (0..10).collect();
            v.extend([0, 1]);
            v
        });
        let rand = BlockOrder::new(Pattern::Rand, 1000, 7);
        assert_ne!(
            (0..1000).map(|k| rand.block(k)).collect::<Vec<_>>(),
            (0..1000).collect::<Vec<_>>()
        );
    }

    /// Real io_uring and O_DIRECT on the host's filesystem: the bytes read land in the
    /// buffers, every request is timed once.
    #[test]
    fn a_read_job_moves_exactly_its_bytes_and_times_every_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(1u32 << 20))
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let file = open_direct(&path, false);
        let spec = JobSpec {
            op: Op::Read,
            start: 256 << 10,
            blocks: 8,
            bs: 64 << 10,
            pattern: Pattern::Rand,
            amount: Amount::Bytes(12 * (64 << 10)),
            seed: 3,
        };
        let buffers: Vec<HostBuffer> = (0..3).map(|_| HostBuffer::new(64 << 10).unwrap()).collect();
        let out = run_job(&file, &path, &spec, buffers).unwrap();
        assert_eq!(out.bytes, 12 * (64 << 10));
        assert_eq!(out.ios, 12);
        assert_eq!(out.clat.len(), 12);

        // A write job of the buffer's (non-zero) pattern lands where the order says.
        let mut buf = HostBuffer::new(4096).unwrap();
        buf.as_mut_slice().fill(0xa5);
        let wfile = open_direct(&path, true);
        let wspec = JobSpec {
            op: Op::Write,
            start: 0,
            blocks: 2,
            bs: 4096,
            pattern: Pattern::Seq,
            amount: Amount::Bytes(4096),
            seed: 0,
        };
        let out = run_job(&wfile, &path, &wspec, vec![buf]).unwrap();
        assert_eq!((out.bytes, out.ios), (4096, 1));
        let after = std::fs::read(&path).unwrap();
        assert!(after[..4096].iter().all(|b| *b == 0xa5));
        assert_eq!(&after[4096..], &data[4096..]);
    }

    #[test]
    fn reading_past_the_end_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let file = open_direct(&path, false);
        let spec = JobSpec {
            op: Op::Read,
            start: 0,
            blocks: 4,
            bs: 4096,
            pattern: Pattern::Seq,
            amount: Amount::Bytes(4 * 4096),
            seed: 0,
        };
        let e = run_job(&file, &path, &spec, vec![HostBuffer::new(4096).unwrap()]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("short") && msg.contains("offset 8192"),
            "{msg}"
        );
    }
}
