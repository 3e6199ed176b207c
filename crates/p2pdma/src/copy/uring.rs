//! The io_uring backend: O_DIRECT reads and writes on two open files.
//!
//! Requests are pushed into the submission queue and handed to the kernel in batches (one
//! `io_uring_enter` for everything pushed since the last one). Both files are registered
//! with the ring, and host-memory buffers too (`IORING_OP_READ_FIXED`/`WRITE_FIXED`).
//! Device memory stays on plain `IORING_OP_READ`/`IORING_OP_WRITE` with raw pointers:
//! registering p2pmem as fixed buffers fails with EFAULT, and the kernel pins the pages
//! per request instead (GUP with `FOLL_PCI_P2PDMA`). This module holds every `unsafe` of
//! the ring; what the buffers must guarantee is [`IoRegion`]'s and
//! [`IoBackend::push`]'s contract.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};

use super::backend::{Completion, IoBackend, IoRegion, IoRequest, Reap};
use super::engine::Op;

/// How many times in a row io_uring_enter may refuse new requests (EAGAIN, EBUSY) while
/// nothing is in flight before the backend gives up.
const MAX_ENTER_REFUSALS: u32 = 1000;

/// `IORING_ENTER_GETEVENTS` from include/uapi/linux/io_uring.h: wait for completions.
const IORING_ENTER_GETEVENTS: u32 = 1;
/// `IORING_ENTER_EXT_ARG`: the argument is a `struct io_uring_getevents_arg` (Linux 5.11).
const IORING_ENTER_EXT_ARG: u32 = 8;

/// `struct io_uring_getevents_arg` from include/uapi/linux/io_uring.h.
#[repr(C)]
struct GetEventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

/// `struct __kernel_timespec`.
#[repr(C)]
struct KernelTimespec {
    tv_sec: i64,
    tv_nsec: i64,
}

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

/// An io_uring over two files ([`super::backend::Target::Source`] and `Destination`),
/// moving data through buffers of type `R`.
pub struct UringBackend<'f, R> {
    ring: IoUring,
    fds: [RawFd; 2],
    _files: PhantomData<&'f File>,
    _buffers: PhantomData<fn(&R)>,
    fixed_files: bool,
    fixed_buffers: bool,
    /// Tags of the requests in the submission queue the kernel has not consumed yet, in
    /// push order.
    unconsumed: VecDeque<u64>,
    /// Requests the kernel consumed whose completions were not reaped yet.
    in_flight: usize,
    /// Requests in flight plus in the submission queue stay under this (the completion
    /// queue's size), so completions never overflow.
    max_outstanding: usize,
    /// Set by discard_unsubmitted: nothing is ever handed to the kernel again.
    stopped: bool,
}

impl<R> std::fmt::Debug for UringBackend<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringBackend")
            .field("fds", &self.fds)
            .field("fixed_files", &self.fixed_files)
            .field("fixed_buffers", &self.fixed_buffers)
            .field("unconsumed", &self.unconsumed.len())
            .field("in_flight", &self.in_flight)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

impl<'f, R: IoRegion> UringBackend<'f, R> {
    /// A ring of `entries` submission entries over `files` (source, destination), both
    /// registered with the ring when the kernel allows (falling back to plain descriptors
    /// is not an error).
    pub fn new(files: [&'f File; 2], entries: u32) -> io::Result<Self> {
        let ring = new_ring(entries)?;
        let fds = files.map(|f| f.as_raw_fd());
        let fixed_files = ring.submitter().register_files(&fds).is_ok();
        let max_outstanding = ring.params().cq_entries() as usize;
        Ok(UringBackend {
            ring,
            fds,
            _files: PhantomData,
            _buffers: PhantomData,
            fixed_files,
            fixed_buffers: false,
            unconsumed: VecDeque::new(),
            in_flight: 0,
            max_outstanding,
            stopped: false,
        })
    }

    /// Requests pushed into the submission queue and not yet consumed by the kernel.
    #[cfg(test)]
    pub(crate) fn unconsumed(&self) -> usize {
        self.unconsumed.len()
    }

    /// One io_uring_enter: submit `to_submit`, wait as `wait` says.
    fn enter(&mut self, to_submit: u32, wait: Reap) -> io::Result<usize> {
        let min_complete = match wait {
            Reap::NoWait => 0,
            Reap::Wait | Reap::Until(_) => u32::from(self.in_flight > 0 || to_submit > 0),
        };
        match wait {
            Reap::Until(deadline)
                if min_complete > 0 && self.ring.params().is_feature_ext_arg() =>
            {
                let left = deadline.saturating_duration_since(Instant::now());
                let ts = KernelTimespec {
                    tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                    tv_nsec: i64::from(left.subsec_nanos()),
                };
                let arg = GetEventsArg {
                    sigmask: 0,
                    sigmask_sz: 0,
                    min_wait_usec: 0,
                    ts: std::ptr::from_ref(&ts) as u64,
                };
                // SAFETY: io_uring_enter on our own ring; every entry in the submission
                // queue is valid (see push), and only `to_submit` of them are consumed.
                // `arg` is a struct io_uring_getevents_arg (EXT_ARG) whose timespec
                // pointer refers to `ts`, alive for the whole call.
                let r = unsafe {
                    self.ring.submitter().enter(
                        to_submit,
                        min_complete,
                        IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG,
                        Some(&arg),
                    )
                };
                match r {
                    // The deadline passed with nothing submitted (the kernel returns the
                    // submitted count instead of ETIME when it consumed any).
                    Err(e) if e.raw_os_error() == Some(libc::ETIME) => Ok(0),
                    r => r,
                }
            }
            _ => {
                // SAFETY: a plain io_uring_enter on our own ring with no argument; every
                // entry in the submission queue is valid (see push), and only `to_submit`
                // of them are consumed.
                unsafe {
                    self.ring.submitter().enter::<libc::sigset_t>(
                        to_submit,
                        min_complete,
                        IORING_ENTER_GETEVENTS,
                        None,
                    )
                }
            }
        }
    }
}

impl<R> Drop for UringBackend<'_, R> {
    /// Lets go of the registered files (and buffers) now. Closing the ring alone leaves
    /// them to the kernel's asynchronous ring teardown (a workqueue), so under load a
    /// block device opened O_EXCL stays claimed after the copy returned, and the next
    /// open of it fails with EBUSY. With requests still in flight (a stalled copy) the
    /// registrations stay with the ring, which the kernel tears down once they complete.
    fn drop(&mut self) {
        if self.in_flight == 0 {
            let submitter = self.ring.submitter();
            if self.fixed_files {
                let _ = submitter.unregister_files();
            }
            if self.fixed_buffers {
                let _ = submitter.unregister_buffers();
            }
        }
    }
}

impl<R: IoRegion> IoBackend for UringBackend<'_, R> {
    type Buffer = R;

    /// Registers host-memory buffers as fixed buffers; device memory cannot be registered
    /// (the kernel refuses to pin p2pmem that way), so then every buffer goes by pointer.
    unsafe fn register(&mut self, buffers: &[R]) -> io::Result<()> {
        self.fixed_buffers = buffers.len() <= usize::from(u16::MAX)
            && buffers.iter().all(|b| !b.is_device_memory())
            && {
                let iovecs: Vec<libc::iovec> = buffers
                    .iter()
                    .map(|b| libc::iovec {
                        iov_base: b.io_ptr().cast(),
                        iov_len: b.io_len(),
                    })
                    .collect();
                // SAFETY: each iovec covers one buffer that the caller keeps alive at
                // that address for as long as the ring lives (register's contract; the
                // registration goes with the ring).
                unsafe { self.ring.submitter().register_buffers(&iovecs) }.is_ok()
            };
        Ok(())
    }

    unsafe fn push(&mut self, request: &IoRequest, buffer: &R) -> bool {
        if self.stopped {
            return false;
        }
        if self.in_flight + self.unconsumed.len() >= self.max_outstanding {
            return false;
        }
        let ptr = buffer.io_ptr().wrapping_add(request.buf_offset);
        let file = request.target as usize;
        let fixed_buffer = self
            .fixed_buffers
            .then(|| u16::try_from(request.buffer).ok())
            .flatten();
        let len = request.len;
        let offset = request.offset;
        let entry: squeue::Entry = if self.fixed_files {
            let fd = types::Fixed(file as u32);
            rw_entry!(fd, request.op, ptr, len, offset, fixed_buffer)
        } else {
            let fd = types::Fd(self.fds[file]);
            rw_entry!(fd, request.op, ptr, len, offset, fixed_buffer)
        }
        .user_data(request.tag);
        let mut sq = self.ring.submission();
        if sq.is_full() {
            return false;
        }
        // SAFETY: the entry names bytes inside `buffer` (push's contract), which the
        // caller keeps alive and untouched until the completion is reaped or the tag is
        // discarded, and one of the two files, borrowed for 'f, which outlives the ring. A
        // registered buffer index or file index is only used when the registration
        // succeeded.
        if unsafe { sq.push(&entry) }.is_err() {
            return false;
        }
        drop(sq);
        self.unconsumed.push_back(request.tag);
        true
    }

    fn reap(&mut self, wait: Reap, out: &mut Vec<Completion>) -> io::Result<()> {
        let mut refusals = 0;
        loop {
            let to_submit = if self.stopped {
                0
            } else {
                self.unconsumed.len()
            };
            if to_submit == 0 && self.in_flight == 0 {
                return Ok(());
            }
            match self.enter(to_submit as u32, wait) {
                Ok(consumed) => {
                    let consumed = consumed.min(to_submit);
                    self.unconsumed.drain(..consumed);
                    self.in_flight += consumed;
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
        out.extend(self.ring.completion().map(|cqe| Completion {
            tag: cqe.user_data(),
            result: match cqe.result() {
                r if r < 0 => Err(io::Error::from_raw_os_error(-r)),
                r => Ok(r as usize),
            },
        }));
        self.in_flight -= out.len() - before;
        // Without EXT_ARG a deadline is a short poll, not a sleep to the deadline.
        if let Reap::Until(deadline) = wait {
            if out.len() == before && !self.ring.params().is_feature_ext_arg() {
                std::thread::sleep(
                    deadline
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(1)),
                );
            }
        }
        Ok(())
    }

    fn discard_unsubmitted(&mut self) -> Vec<u64> {
        // The entries stay in the submission queue, but nothing is ever submitted again
        // (to_submit is 0 from now on), so the kernel never consumes them.
        self.stopped = true;
        self.unconsumed.drain(..).collect()
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::copy::backend::Target;
    use crate::copy::host_buffer::HostBuffer;
    use crate::copy::pipeline::Pipeline;

    /// Dropping the backend lets go of the files it registered before the drop returns,
    /// not later in the kernel's asynchronous ring teardown: an O_EXCL block device
    /// reopened right after a copy (the next `p2pdma copy` to the same destination) must
    /// not find itself still claimed (EBUSY, seen in a 7.2 guest under load). Seen here
    /// through a pipe: once the backend and our own write end are gone, the reader gets
    /// end-of-file at once, not "would block".
    #[test]
    fn dropping_the_backend_releases_its_registered_files_at_once() {
        use std::io::Read;
        use std::os::fd::{AsFd, OwnedFd};

        for round in 0..20 {
            let (mut reader, writer) = std::io::pipe().unwrap();
            rustix::io::ioctl_fionbio(reader.as_fd(), true).unwrap();
            let writer = File::from(OwnedFd::from(writer));
            let backend = UringBackend::<HostBuffer>::new([&writer, &writer], 4).unwrap();
            assert!(backend.fixed_files, "the kernel registers files");
            drop(backend);
            drop(writer);
            let mut byte = [0u8; 1];
            match reader.read(&mut byte) {
                Ok(0) => {}
                other => panic!("round {round}: the ring still holds the write end: {other:?}"),
            }
        }
    }

    /// A read that cannot complete yet (an empty pipe): a reap with a deadline comes back
    /// without it, a non-blocking reap too, and the request is still in flight; once data
    /// arrives, a blocking reap returns it with the pipe's bytes in the buffer.
    #[test]
    fn a_deadline_or_no_wait_returns_without_the_completion_that_is_not_there() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let reader = File::from(std::os::fd::OwnedFd::from(reader));
        let backend = UringBackend::new([&reader, &reader], 4).unwrap();
        let buffers = vec![
            HostBuffer::new(4096).unwrap(),
            HostBuffer::new(4096).unwrap(),
        ];
        let mut pipeline = Pipeline::new(backend, buffers).unwrap();
        pipeline.queue(Op::Read, Target::Source, 0, 0, 16, 0);
        let mut out = Vec::new();
        pipeline
            .reap(
                Reap::Until(Instant::now() + Duration::from_millis(20)),
                &mut out,
            )
            .unwrap();
        assert!(out.is_empty());
        pipeline.reap(Reap::NoWait, &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(pipeline.in_flight(), 1);
        writer.write_all(b"0123456789abcdef").unwrap();
        while out.is_empty() {
            pipeline.reap(Reap::Wait, &mut out).unwrap();
        }
        assert_eq!((out[0].tag, out[0].result.as_ref().unwrap()), (0, &16));
        let (buffer, _) = pipeline.pair_mut(0, 1).expect("no request on either slot");
        assert_eq!(&buffer.as_slice()[..16], b"0123456789abcdef");
    }
}
