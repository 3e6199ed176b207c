//! One job of a `read` or `write` workload: io_uring O_DIRECT requests of one block size
//! into (or out of) `iodepth` buffers, each request timed from submission to completion
//! (fio's `clat`) into an HDR histogram.
//!
//! The buffers belong to the job while it runs and are released only once every
//! submitted request was reaped (or leaked if that is impossible), as in the copy engine.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use io_uring::{opcode, types, IoUring};

use super::spec::Pattern;
use super::BenchError;
use crate::copy::engine::{FailureKind, IoRegion, Op};

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
                let mut a = (splitmix(seed) % blocks) | 1;
                while gcd(a, blocks) != 1 {
                    a = (a + 2) % blocks.max(2);
                    if a == 0 {
                        a = 1;
                    }
                }
                BlockOrder {
                    blocks,
                    a,
                    c: splitmix(seed ^ 0x9e37_79b9) % blocks,
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

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
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

/// The ring and the buffers it may be using; dropping it reaps every outstanding request
/// before the buffers go, or leaks them if it cannot.
struct Ring<R: IoRegion> {
    ring: IoUring,
    buffers: Option<Vec<R>>,
    in_flight: usize,
}

impl<R: IoRegion> Ring<R> {
    fn push(&mut self, slot: usize, op: Op, fd: i32, req: &InFlight, bs: u64) {
        let buffer = &self.buffers.as_ref().expect("buffers present until drop")[slot];
        let ptr = buffer.io_ptr().wrapping_add(req.done as usize);
        let len = (bs - req.done) as u32;
        let offset = req.offset + req.done;
        let entry = match op {
            Op::Read => opcode::Read::new(types::Fd(fd), ptr, len)
                .offset(offset)
                .build(),
            Op::Write => opcode::Write::new(types::Fd(fd), ptr, len)
                .offset(offset)
                .build(),
        }
        .user_data(slot as u64);
        // SAFETY: the entry covers bytes done..bs of this slot's buffer, which holds at least
        // bs bytes (checked in run_job) and is owned by self until every completion is
        // reaped (Drop drains first). One request per slot at a time and at least one SQ
        // entry per slot, so the queue cannot be full; the fd outlives the ring (borrowed by
        // run_job for its whole duration).
        let pushed = unsafe { self.ring.submission().push(&entry) };
        debug_assert!(pushed.is_ok(), "one SQ entry per slot");
        self.in_flight += 1;
    }

    fn wait(&mut self, out: &mut Vec<(usize, i32)>) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
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
}

impl<R: IoRegion> Drop for Ring<R> {
    fn drop(&mut self) {
        let mut sink = Vec::new();
        while self.in_flight > 0 {
            sink.clear();
            if self.wait(&mut sink).is_err() {
                // The kernel may still use these buffers: never free them.
                std::mem::forget(self.buffers.take());
                return;
            }
        }
    }
}

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
    let ring = IoUring::new(entries).map_err(|source| BenchError::Ring { entries, source })?;
    let mut ring = Ring {
        ring,
        buffers: Some(buffers),
        in_flight: 0,
    };
    let order = BlockOrder::new(spec.pattern, spec.blocks, spec.seed);
    let total_requests = match spec.amount {
        Amount::Bytes(b) => Some(b / spec.bs),
        Amount::Time(_) => None,
    };
    let fd = file.as_raw_fd();
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
                ring.push(slot, spec.op, fd, &req, spec.bs);
                *state = Some(req);
            }
        }
        if ring.in_flight == 0 {
            break;
        }
        completions.clear();
        if let Err(source) = ring.wait(&mut completions) {
            return Err(BenchError::RingFailed {
                path: path.to_owned(),
                source,
            });
        }
        let now = Instant::now();
        for &(slot, result) in &completions {
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
            if result < 0 {
                let errno = -result;
                if (errno == libc::EINTR || errno == libc::EAGAIN)
                    && req.retries < MAX_RETRIES
                    && failure.is_none()
                {
                    req.retries += 1;
                    ring.push(slot, spec.op, fd, &req, spec.bs);
                    slots[slot] = Some(req);
                } else if failure.is_none() {
                    failure = Some(fail(io::Error::from_raw_os_error(errno)));
                }
                continue;
            }
            let moved = result as u64;
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
                    ring.push(slot, spec.op, fd, &req, spec.bs);
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
    use std::fs::OpenOptions;
    use std::os::unix::fs::OpenOptionsExt;

    use super::*;
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
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap();
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
        let wfile = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap();
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
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap();
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
