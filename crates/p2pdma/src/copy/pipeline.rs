//! A backend and the buffers it may be using, kept together so the buffer-lifetime
//! contract of [`IoBackend::push`] holds by construction.
//!
//! [`Pipeline`] owns the buffers (slot i is buffer i), queues at most one request per slot,
//! hands requests to the backend as it has room, and lends a slot's bytes out only while no
//! request names it. Once [`Pipeline::stop`] was called nothing queued is ever submitted,
//! not even by the drain on drop: a stopped pipeline only waits for what the device
//! already took. Dropping it reaps every request the device took before the buffers go;
//! if that is impossible (the backend failed) the buffers are leaked.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io;

use super::backend::{Completion, DmaBuffer, IoBackend, IoRequest, Reap, Target};
use super::engine::Op;

/// A backend, its buffers, and the requests between them.
pub struct Pipeline<B: IoBackend> {
    // Declared before `buffers`: the backend (and any registration of the buffers) goes
    // first.
    backend: B,
    buffers: Option<Vec<B::Buffer>>,
    /// The direction of the request queued or in flight on each slot.
    busy: Vec<Option<Op>>,
    /// Queued requests the backend has not taken yet.
    backlog: VecDeque<IoRequest>,
    stopped: bool,
    /// Requests handed to the backend (and not taken back), by direction.
    submitted: [u64; 2],
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
        })
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
        self.busy[slot] = Some(op);
        self.backlog.push_back(IoRequest {
            op,
            target,
            buffer: slot,
            buf_offset,
            len,
            offset,
            tag: slot as u64,
        });
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
    /// slots of the completions are free again.
    pub fn submit_and_wait(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        self.reap(Reap::Wait, out)
    }

    /// [`Pipeline::submit_and_wait`] with the wait chosen by the caller.
    pub fn reap(&mut self, wait: Reap, out: &mut Vec<Completion>) -> io::Result<()> {
        if !self.stopped {
            self.fill();
            let in_backend = self.busy.iter().filter(|b| b.is_some()).count() - self.backlog.len();
            if in_backend == 0 && !self.backlog.is_empty() {
                // Nothing would ever make room: fail instead of spinning.
                return Err(io::Error::other(
                    "the I/O backend took no request while it had none pushed or in flight",
                ));
            }
        }
        let before = out.len();
        self.backend.reap(wait, out)?;
        for c in &out[before..] {
            self.busy[c.tag as usize] = None;
        }
        Ok(())
    }

    /// Never submit anything again. Returns the slots of the requests that were queued
    /// but never handed to the device: they are dropped, the device never sees them.
    pub fn stop(&mut self) -> Vec<usize> {
        self.stopped = true;
        let mut dropped: Vec<usize> = self.backlog.drain(..).map(|r| r.buffer).collect();
        for tag in self.backend.discard_unsubmitted() {
            let slot = tag as usize;
            if let Some(op) = self.busy[slot] {
                self.submitted[op as usize] -= 1;
            }
            dropped.push(slot);
        }
        for &slot in &dropped {
            self.busy[slot] = None;
        }
        dropped
    }

    /// Stops and waits for every request the device took.
    fn drain(&mut self) -> io::Result<()> {
        self.stop();
        let mut sink = Vec::new();
        while self.backend.in_flight() > 0 {
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
            // The device may still be writing into these buffers: never free them.
            std::mem::forget(self.buffers.take());
        }
    }
}
