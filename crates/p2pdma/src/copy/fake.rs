//! An in-memory [`IoBackend`] for tests of the pipeline: two byte vectors as source and
//! destination, completions in a seeded random order, and faults injected by request
//! (short transfers, errnos, revocation of the buffer, a backend that fails outright).
//! It records every request it handed to its "device" and when, so tests can check depth,
//! ordering and that nothing was submitted after a failure.
// Implementing IoBackend::push means writing an `unsafe fn`; the fake has no unsafe block:
// it holds shared handles to its buffers, not pointers.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::backend::{Completion, DmaBuffer, IoBackend, IoRequest, Reap, Target};
use super::engine::Op;

/// A buffer of the fake backend. Counts its drops in `drops`.
#[derive(Debug)]
pub(crate) struct FakeBuf {
    data: Arc<Mutex<Vec<u8>>>,
    live: Arc<AtomicBool>,
    device: bool,
    drops: Arc<AtomicUsize>,
}

impl FakeBuf {
    pub(crate) fn new(len: usize, device: bool, drops: &Arc<AtomicUsize>) -> Self {
        FakeBuf {
            data: Arc::new(Mutex::new(vec![0; len])),
            live: Arc::new(AtomicBool::new(true)),
            device,
            drops: Arc::clone(drops),
        }
    }
}

impl Drop for FakeBuf {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

impl super::verify::CpuReadable for FakeBuf {
    fn cpu_bytes(&mut self) -> &[u8] {
        // The backend drops its handle when the request completes, and the pipeline lends
        // the bytes only then, so this is the only handle left.
        Arc::get_mut(&mut self.data)
            .expect("no request holds the buffer")
            .get_mut()
            .unwrap()
    }
}

impl DmaBuffer for FakeBuf {
    fn dma_len(&self) -> usize {
        self.data.lock().unwrap().len()
    }

    fn is_device_memory(&self) -> bool {
        self.device
    }

    fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }
}

/// What to do to one request instead of carrying it out in full.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    /// Move only this many bytes.
    Short(usize),
    /// Fail with this errno, moving nothing.
    Errno(i32),
    /// The buffer's memory goes away (its provider was unbound): EFAULT, and the buffer
    /// reads as not live from now on.
    Revoke,
    /// The request never completes (a completion the device or kernel lost).
    Never,
}

/// One event the fake saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// A request reached the "device".
    Submitted(IoRequest),
    /// A request completed with this many bytes (or an errno).
    Completed(IoRequest, Result<usize, i32>),
}

/// Everything the fake saw, shared with the test.
#[derive(Debug, Default)]
pub(crate) struct Log {
    pub(crate) events: Vec<Event>,
    /// Most requests of each direction the device had at once.
    pub(crate) max_in_flight: [usize; 2],
}

struct Pending {
    request: IoRequest,
    data: Arc<Mutex<Vec<u8>>>,
    live: Arc<AtomicBool>,
}

/// The fake backend.
pub(crate) struct FakeBackend {
    /// Source and destination contents.
    pub(crate) files: Arc<Mutex<[Vec<u8>; 2]>>,
    pub(crate) log: Arc<Mutex<Log>>,
    /// Faults by (op, target offset), each used once.
    faults: HashMap<(usize, u64), Fault>,
    /// Fail every reap from this one on (counted from 0).
    fail_reap_from: Option<usize>,
    reaps: usize,
    rng: fastrand::Rng,
    room: usize,
    pushed: Vec<Pending>,
    device: Vec<Pending>,
    stopped: bool,
}

impl FakeBackend {
    /// Source `src`, destination `dst`, completions ordered by `seed`, at most `room`
    /// requests pushed or in flight at once.
    pub(crate) fn new(src: Vec<u8>, dst: Vec<u8>, seed: u64, room: usize) -> Self {
        FakeBackend {
            files: Arc::new(Mutex::new([src, dst])),
            log: Arc::default(),
            faults: HashMap::new(),
            fail_reap_from: None,
            reaps: 0,
            rng: fastrand::Rng::with_seed(seed),
            room,
            pushed: Vec::new(),
            device: Vec::new(),
            stopped: false,
        }
    }

    /// Injects `fault` into the first `op` at `offset` of its target.
    pub(crate) fn fault(mut self, op: Op, offset: u64, fault: Fault) -> Self {
        self.faults.insert((op as usize, offset), fault);
        self
    }

    /// Makes every reap from the `n`th on fail, as a broken io_uring_enter would.
    pub(crate) fn fail_reaps_from(mut self, n: usize) -> Self {
        self.fail_reap_from = Some(n);
        self
    }

    /// The request was faulted with [`Fault::Never`].
    fn never_completes(&self, p: &Pending) -> bool {
        let r = &p.request;
        matches!(
            self.faults.get(&(r.op as usize, r.offset)),
            Some(Fault::Never)
        )
    }

    fn complete(&mut self, p: Pending) -> Completion {
        let r = p.request;
        let fault = self.faults.remove(&(r.op as usize, r.offset));
        let mut files = self.files.lock().unwrap();
        let file = &mut files[r.target as usize];
        let result: Result<usize, i32> = match fault {
            Some(Fault::Errno(e)) => Err(e),
            Some(Fault::Revoke) => {
                p.live.store(false, Ordering::SeqCst);
                Err(libc::EFAULT)
            }
            short => {
                let mut len = r.len as usize;
                if let Some(Fault::Short(n)) = short {
                    len = len.min(n);
                }
                let start = (r.offset as usize).min(file.len());
                let len = len.min(file.len() - start);
                let mut buf = p.data.lock().unwrap();
                let part = &mut buf[r.buf_offset..r.buf_offset + len];
                match r.op {
                    Op::Read => part.copy_from_slice(&file[start..start + len]),
                    Op::Write => file[start..start + len].copy_from_slice(part),
                }
                Ok(len)
            }
        };
        drop(files);
        self.log
            .lock()
            .unwrap()
            .events
            .push(Event::Completed(r, result));
        Completion {
            tag: r.tag,
            result: result.map_err(io::Error::from_raw_os_error),
        }
    }
}

impl IoBackend for FakeBackend {
    type Buffer = FakeBuf;

    unsafe fn push(&mut self, request: &IoRequest, buffer: &FakeBuf) -> bool {
        if self.stopped || self.pushed.len() + self.device.len() >= self.room {
            return false;
        }
        assert!(request.buf_offset + request.len as usize <= buffer.dma_len());
        self.pushed.push(Pending {
            request: *request,
            data: Arc::clone(&buffer.data),
            live: Arc::clone(&buffer.live),
        });
        true
    }

    fn reap(&mut self, wait: Reap, out: &mut Vec<Completion>) -> io::Result<()> {
        let n = self.reaps;
        self.reaps += 1;
        if !self.stopped {
            let mut log = self.log.lock().unwrap();
            for p in self.pushed.drain(..) {
                log.events.push(Event::Submitted(p.request));
                self.device.push(p);
            }
            for op in [Op::Read, Op::Write] {
                let now = self.device.iter().filter(|p| p.request.op == op).count();
                let max = &mut log.max_in_flight[op as usize];
                *max = (*max).max(now);
            }
        }
        // A failing backend took the requests, then broke while waiting for them.
        if self.fail_reap_from.is_some_and(|from| n >= from) {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        if self.device.is_empty() || wait == Reap::NoWait {
            return Ok(());
        }
        if self.device.iter().all(|p| self.never_completes(p)) {
            if let Reap::Until(deadline) = wait {
                // Nothing will ever complete: sleep to the deadline, as a ring would.
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            }
            return Ok(());
        }
        // Complete a random number of the requests in flight, in random order (a request
        // faulted with `Never` stays where it is when picked).
        let count = self.rng.usize(1..=self.device.len());
        for _ in 0..count {
            let at = self.rng.usize(..self.device.len());
            if self.never_completes(&self.device[at]) {
                continue;
            }
            let p = self.device.swap_remove(at);
            out.push(self.complete(p));
        }
        Ok(())
    }

    fn discard_unsubmitted(&mut self) -> Vec<u64> {
        self.stopped = true;
        self.pushed.drain(..).map(|p| p.request.tag).collect()
    }

    fn in_flight(&self) -> usize {
        self.device.len()
    }
}

/// The target a request of `op` goes to in a copy.
pub(crate) fn target_of(op: Op) -> Target {
    match op {
        Op::Read => Target::Source,
        Op::Write => Target::Destination,
    }
}
