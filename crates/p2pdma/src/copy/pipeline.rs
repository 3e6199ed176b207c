//! A backend and the buffers it may be using, kept together so the buffer-lifetime
//! contract of [`IoBackend::push`] holds by construction.
//!
//! [`Pipeline`] owns the buffers (slot i is buffer i), queues at most one request per slot,
//! hands requests to the backend as it has room, and lends a slot's bytes out only while no
//! request names it. Once [`Pipeline::stop`] was called nothing queued is ever submitted,
//! not even by the drain on drop: a stopped pipeline only waits for what the device
//! already took. Dropping it reaps every request the device took before the buffers go;
//! if that is impossible (the backend failed, or the requests never complete) the buffers
//! are leaked.
//!
//! Every wait is bounded: [`Pipeline::submit_and_wait`] gives up when no completion arrives
//! for the pipeline's I/O timeout ([`DEFAULT_IO_TIMEOUT`] unless set), returning
//! [`ReapError::Stalled`] with the requests still in flight, so a request that never
//! completes (a lost completion, a device that stopped answering without the driver
//! noticing) becomes an error naming it instead of a process asleep in `io_uring_enter`.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use super::backend::{Completion, DmaBuffer, IoBackend, IoRequest, Reap, Target};
use super::engine::Op;

/// How long a wait may go without any completion before the pipeline gives up: well above
/// the Linux NVMe driver's 30 s I/O timeout (after which the driver aborts, resets and
/// retries the command itself, and logs it), so only a request the kernel lost for good
/// reaches it.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(120);

/// No completion arrived for `waited` while `requests` were in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    /// How long the last wait lasted without any completion.
    pub waited: Duration,
    /// The requests handed to the backend and not completed, in slot order.
    pub requests: Vec<IoRequest>,
}

/// Why [`Pipeline::reap`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReapError {
    /// The backend itself failed (for io_uring, `io_uring_enter`): what was in flight may
    /// still be running.
    #[error("the I/O backend failed")]
    Backend(#[source] io::Error),
    /// Nothing completed within the I/O timeout. The requests stay in flight: the
    /// pipeline never waits for them again and leaks its buffers when dropped.
    #[error("no I/O request completed within {:.1} s ({} in flight)", .0.waited.as_secs_f64(), .0.requests.len())]
    Stalled(Stall),
}

impl From<ReapError> for io::Error {
    fn from(e: ReapError) -> io::Error {
        match e {
            ReapError::Backend(e) => e,
            stalled @ ReapError::Stalled(_) => io::Error::new(io::ErrorKind::TimedOut, stalled),
        }
    }
}

/// A backend, its buffers, and the requests between them.
pub struct Pipeline<B: IoBackend> {
    // Declared before `buffers`: the backend (and any registration of the buffers) goes
    // first.
    backend: B,
    buffers: Option<Vec<B::Buffer>>,
    /// The request queued or in flight on each slot.
    busy: Vec<Option<IoRequest>>,
    /// Queued requests the backend has not taken yet.
    backlog: VecDeque<IoRequest>,
    stopped: bool,
    /// Requests handed to the backend (and not taken back), by direction.
    submitted: [u64; 2],
    /// A blocking wait gives up after this long without a completion.
    io_timeout: Duration,
    /// A wait timed out: requests may never complete, so drop does not wait for them.
    stalled: bool,
}

impl<B: IoBackend> Pipeline<B> {
    /// `backend` over `buffers` (slot i is `buffers[i]`).
    pub fn new(mut backend: B, buffers: Vec<B::Buffer>) -> io::Result<Self> {
        // SAFETY: the pipeline owns the buffers from here on and drops the backend before
        // them (field order), or leaks them; they are the ones every push passes, by the
        // same index.
        unsafe { backend.register(&buffers) }?;
        Ok(Pipeline {
            backend,
            busy: vec![None; buffers.len()],
            buffers: Some(buffers),
            backlog: VecDeque::new(),
            stopped: false,
            submitted: [0; 2],
            io_timeout: DEFAULT_IO_TIMEOUT,
            stalled: false,
        })
    }

    /// The same pipeline, whose blocking waits give up after `io_timeout` without a
    /// completion ([`ReapError::Stalled`]).
    pub fn with_io_timeout(mut self, io_timeout: Duration) -> Self {
        self.io_timeout = io_timeout;
        self
    }

    fn buffers(&self) -> &[B::Buffer] {
        // The Option is only emptied in Drop.
        self.buffers.as_deref().expect("buffers present until drop")
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.busy.len()
    }

    /// Slot `slot`'s buffer, to look at its length and state (not its bytes).
    pub fn buffer(&self, slot: usize) -> &B::Buffer {
        &self.buffers()[slot]
    }

    /// Slots `a` and `b`'s buffers (a != b), to touch their bytes: `None` while a request
    /// on either is queued or in flight.
    pub fn pair_mut(&mut self, a: usize, b: usize) -> Option<(&mut B::Buffer, &mut B::Buffer)> {
        if a == b || self.busy[a].is_some() || self.busy[b].is_some() {
            return None;
        }
        let buffers = self.buffers.as_deref_mut()?;
        let (low, high) = (a.min(b), a.max(b));
        let (head, tail) = buffers.split_at_mut(high);
        let (x, y) = (&mut head[low], &mut tail[0]);
        Some(if a < b { (x, y) } else { (y, x) })
    }

    /// Requests handed to the backend so far, by direction ([`Op`] as index).
    pub fn submitted(&self) -> [u64; 2] {
        self.submitted
    }

    /// Requests the backend has in flight.
    pub fn in_flight(&self) -> usize {
        self.backend.in_flight()
    }

    /// The backend, to look at (tests).
    #[cfg(test)]
    pub(crate) fn backend(&self) -> &B {
        &self.backend
    }

    /// Queues a request on slot `slot`: read `len` bytes at `offset` of `target` into the
    /// slot's buffer at `buf_offset`, or write them from there. Its completion carries the
    /// slot as tag. Nothing reaches the backend before the next [`Pipeline::submit_and_wait`];
    /// a stopped pipeline drops the request.
    ///
    /// # Panics
    /// If the range does not fit in the slot's buffer, or the slot already has a request.
    pub fn queue(
        &mut self,
        op: Op,
        target: Target,
        slot: usize,
        buf_offset: usize,
        len: usize,
        offset: u64,
    ) {
        let size = self.buffer(slot).dma_len();
        assert!(
            buf_offset <= size && len <= size - buf_offset,
            "request of {len} bytes at {buf_offset} outside a buffer of {size}"
        );
        let len = u32::try_from(len).expect("requests are at most one chunk (< 4 GiB)");
        if self.stopped {
            return;
        }
        assert!(
            self.busy[slot].is_none(),
            "slot {slot} already has a request"
        );
        let request = IoRequest {
            op,
            target,
            buffer: slot,
            buf_offset,
            len,
            offset,
            tag: slot as u64,
        };
        self.busy[slot] = Some(request);
        self.backlog.push_back(request);
    }

    /// Moves queued requests to the backend while it has room.
    pub(crate) fn fill(&mut self) {
        let buffers = self.buffers.as_deref().expect("buffers present until drop");
        while let Some(request) = self.backlog.front() {
            // SAFETY: queue() checked that the range lies inside the slot's buffer. The
            // pipeline owns the buffer and lends its bytes (pair_mut) only while the slot
            // has no request; the slot stays busy until the completion is reaped or the
            // tag discarded (stop), and Drop drains the backend or leaks the buffers.
            if !unsafe { self.backend.push(request, &buffers[request.buffer]) } {
                break;
            }
            self.submitted[request.op as usize] += 1;
            self.backlog.pop_front();
        }
    }

    /// Nothing queued, nothing in the backend.
    pub fn is_idle(&self) -> bool {
        self.backend.in_flight() == 0
            && self.backlog.is_empty()
            && self.busy.iter().all(Option::is_none)
    }

    /// Hands everything queued to the backend (unless stopped) and waits for at least one
    /// completion if anything is in flight; appends the reaped completions to `out`. The
    /// slots of the completions are free again. Gives up with [`ReapError::Stalled`] when
    /// nothing completes within the I/O timeout.
    pub fn submit_and_wait(&mut self, out: &mut Vec<Completion>) -> Result<(), ReapError> {
        self.reap(Reap::Wait, out)
    }

    /// [`Pipeline::submit_and_wait`] with the wait chosen by the caller. `Reap::Wait` is
    /// bounded by the I/O timeout; `Reap::Until` by its own deadline (returning no
    /// completions when it passes is not an error).
    pub fn reap(&mut self, wait: Reap, out: &mut Vec<Completion>) -> Result<(), ReapError> {
        if !self.stopped {
            self.fill();
            let in_backend = self.busy.iter().filter(|b| b.is_some()).count() - self.backlog.len();
            if in_backend == 0 && !self.backlog.is_empty() {
                // Nothing would ever make room: fail instead of spinning.
                return Err(ReapError::Backend(io::Error::other(
                    "the I/O backend took no request while it had none pushed or in flight",
                )));
            }
        }
        let before = out.len();
        if wait == Reap::Wait {
            // The backend never waits unbounded: a lost completion must not put the
            // process to sleep for good.
            let started = Instant::now();
            let deadline = started + self.io_timeout;
            loop {
                self.backend
                    .reap(Reap::Until(deadline), out)
                    .map_err(ReapError::Backend)?;
                if out.len() > before || self.backend.in_flight() == 0 {
                    break;
                }
                if Instant::now() >= deadline {
                    self.stalled = true;
                    return Err(ReapError::Stalled(Stall {
                        waited: started.elapsed(),
                        requests: self.in_flight_requests(),
                    }));
                }
            }
        } else {
            self.backend.reap(wait, out).map_err(ReapError::Backend)?;
        }
        for c in &out[before..] {
            self.busy[c.tag as usize] = None;
        }
        Ok(())
    }

    /// The requests handed to the backend whose completions were not reaped, in slot
    /// order.
    pub fn in_flight_requests(&self) -> Vec<IoRequest> {
        self.busy
            .iter()
            .enumerate()
            .filter(|(slot, _)| !self.backlog.iter().any(|r| r.buffer == *slot))
            .filter_map(|(_, r)| *r)
            .collect()
    }

    /// Never submit anything again. Returns the slots of the requests that were queued
    /// but never handed to the device: they are dropped, the device never sees them.
    pub fn stop(&mut self) -> Vec<usize> {
        self.stopped = true;
        let mut dropped: Vec<usize> = self.backlog.drain(..).map(|r| r.buffer).collect();
        for tag in self.backend.discard_unsubmitted() {
            let slot = tag as usize;
            if let Some(request) = self.busy[slot] {
                self.submitted[request.op as usize] -= 1;
            }
            dropped.push(slot);
        }
        for &slot in &dropped {
            self.busy[slot] = None;
        }
        dropped
    }

    /// Stops and waits for every request the device took, each wait bounded by the I/O
    /// timeout. After a stall it only takes what already completed: the rest may never
    /// complete.
    fn drain(&mut self) -> Result<(), ReapError> {
        self.stop();
        let mut sink = Vec::new();
        if self.stalled {
            self.reap(Reap::NoWait, &mut sink)?;
        }
        while self.backend.in_flight() > 0 {
            if self.stalled {
                return Err(ReapError::Stalled(Stall {
                    waited: Duration::ZERO,
                    requests: self.in_flight_requests(),
                }));
            }
            sink.clear();
            self.reap(Reap::Wait, &mut sink)?;
        }
        Ok(())
    }
}

impl<B: IoBackend> std::fmt::Debug for Pipeline<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("slots", &self.busy)
            .field("backlog", &self.backlog.len())
            .field("in_flight", &self.backend.in_flight())
            .field("stopped", &self.stopped)
            .field("submitted", &self.submitted)
            .finish_non_exhaustive()
    }
}

impl<B: IoBackend> Drop for Pipeline<B> {
    fn drop(&mut self) {
        if self.drain().is_err() {
            // The device may still be writing into these buffers (or a request was lost
            // and may yet complete): never free them.
            std::mem::forget(self.buffers.take());
        }
    }
}
