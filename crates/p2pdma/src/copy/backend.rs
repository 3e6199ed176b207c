//! The seam between the copy pipeline and the thing that moves bytes.
//!
//! The pipeline ([`super::pipeline::Pipeline`], driven by [`super::engine`] and
//! [`mod@super::verify`]) decides *what* to read and write: which chunk goes into which buffer,
//! how many requests of each direction are in flight, what reached the destination, what a
//! failure means. An [`IoBackend`] only carries requests out: "read this range of the
//! source (or destination) into this part of buffer N", "write this part of buffer N to
//! this range of the destination", each tagged, and hands back completions with their tags.
//! The kernel path is [`super::uring::UringBackend`] (io_uring over two `O_DIRECT` files);
//! a userspace NVMe driver (VFIO) submits the same requests as NVMe commands on its own
//! queues, naming buffers by IOVA rather than by virtual address.
//!
//! Buffers are the backend's associated type, so each backend says what it can DMA to:
//! the io_uring backend takes anything with a stable virtual address ([`IoRegion`]: host
//! memory, a p2pmem mapping), a VFIO backend takes its own IOVA-mapped leases. All the
//! pipeline needs of a buffer is [`DmaBuffer`]: its length and how to read a failure.
//!
//! # Plugging in a backend
//! Implement [`IoBackend`] (and [`DmaBuffer`] for its buffer type), then call
//! [`super::engine::run_pipeline`] with the backend, the buffers (one chunk each; see
//! [`super::engine::buffers_wanted`]), the two names used in messages and a validated
//! [`super::plan::CopyPlan`]. The result is the same [`super::engine::EngineReport`] or
//! [`super::engine::EngineError`] the kernel path gives, exact written ranges included.
//! Errors of a request should carry the nearest errno, since
//! [`super::engine::FailureKind::classify`] reads them (EIO: device error, ENOMEM,
//! EFAULT/ENODEV on device memory that is no longer live: provider gone, ...). The
//! unit tests in `engine.rs` run the pipeline over an in-memory backend (`copy/fake.rs`)
//! and show what a backend may do: complete out of order, short, with errors.
//!
//! # The buffer-lifetime contract
//! A backend is handed a buffer by reference, but the device keeps using the memory after
//! the call returns, until the request completes. So [`IoBackend::push`] is `unsafe`: the
//! caller promises that the buffer stays alive, at the same place, and untouched by the
//! CPU until the request's completion was returned by [`IoBackend::reap`] or its tag by
//! [`IoBackend::discard_unsubmitted`]. [`super::pipeline::Pipeline`] is the one caller and
//! keeps the promise for everyone: it owns the buffers, hands out a buffer's bytes only
//! while no request names it, reaps every request on drop, and leaks the buffers if it
//! cannot (a leaked buffer is safe; a freed one under DMA is not).
#![allow(unsafe_code)]

use std::io;
use std::time::Instant;

use super::engine::Op;

/// What the pipeline needs to know about a buffer, whatever the backend.
pub trait DmaBuffer {
    /// Length in bytes.
    fn dma_len(&self) -> usize;
    /// The buffer is PCI device memory (p2pmem, a BAR), not host RAM: decides how errors
    /// read (see [`super::engine::FailureKind::classify`]).
    fn is_device_memory(&self) -> bool;
    /// The memory is still backed (false once its provider was unbound or removed).
    fn is_live(&self) -> bool {
        true
    }
}

/// Memory the kernel may read and write through a raw pointer while I/O is in flight:
/// the buffers of [`super::uring::UringBackend`].
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

impl<R: IoRegion> DmaBuffer for R {
    fn dma_len(&self) -> usize {
        self.io_len()
    }

    fn is_device_memory(&self) -> bool {
        IoRegion::is_device_memory(self)
    }

    fn is_live(&self) -> bool {
        IoRegion::is_live(self)
    }
}

/// Which of the two open ends a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The copy's source.
    Source = 0,
    /// The copy's destination.
    Destination = 1,
}

/// One read or write between a target and a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoRequest {
    /// Read (target to buffer) or write (buffer to target).
    pub op: Op,
    /// Which end.
    pub target: Target,
    /// Index of the buffer in the list the backend was given ([`IoBackend::register`]).
    pub buffer: usize,
    /// First byte of the buffer used.
    pub buf_offset: usize,
    /// Bytes to move (at most one chunk, so it fits a `u32`).
    pub len: u32,
    /// Byte offset in the target.
    pub offset: u64,
    /// Returned with the completion.
    pub tag: u64,
}

/// The outcome of one request.
#[derive(Debug)]
pub struct Completion {
    /// The request's [`IoRequest::tag`].
    pub tag: u64,
    /// Bytes moved (possibly fewer than asked: the pipeline resubmits the rest; 0 means
    /// end of file or no progress), or the error, with an errno where there is one
    /// (a VFIO backend maps NVMe status codes to the nearest errno, e.g. EIO).
    pub result: io::Result<usize>,
}

/// How long [`IoBackend::reap`] may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reap {
    /// Return what has completed, without waiting.
    NoWait,
    /// Wait for at least one completion if anything is in flight.
    Wait,
    /// Like `Wait`, but give up at the deadline (returning no completions is then fine).
    Until(Instant),
}

/// Carries out reads and writes for the pipeline. See the module docs for the contract.
///
/// Requests are pushed one by one and handed to the device in batches, by the next
/// [`IoBackend::reap`]; until then they can be taken back with
/// [`IoBackend::discard_unsubmitted`], and after that call the backend must never hand
/// them (or anything else pushed before it) to the device. That is what makes the
/// pipeline's report of the destination bytes written exact after a failure.
pub trait IoBackend {
    /// The buffers this backend moves data through.
    type Buffer: DmaBuffer;

    /// Learns the buffers requests will name by index (io_uring registers them as fixed
    /// buffers; a VFIO backend checks that they are mapped). Called once, before any push.
    /// The default does nothing.
    ///
    /// # Safety
    /// The buffers must stay alive, at the same place, for as long as the backend lives,
    /// and must be the ones later passed to [`IoBackend::push`] with the same indexes.
    unsafe fn register(&mut self, buffers: &[Self::Buffer]) -> io::Result<()> {
        let _ = buffers;
        Ok(())
    }

    /// Queues `request` on `buffer` (the buffer at `request.buffer`). Returns false, and
    /// queues nothing, when the backend has no room now: reap first. A backend with
    /// nothing pushed or in flight must accept a request (else the pipeline fails with
    /// an error rather than wait forever).
    ///
    /// # Safety
    /// `request.buf_offset .. + request.len` lies inside `buffer`, and `buffer` stays alive,
    /// at the same place and untouched by the CPU until the completion carrying
    /// `request.tag` is returned by [`IoBackend::reap`], or the tag by
    /// [`IoBackend::discard_unsubmitted`].
    unsafe fn push(&mut self, request: &IoRequest, buffer: &Self::Buffer) -> bool;

    /// Hands everything pushed to the device, then appends completions to `out`, waiting
    /// as `wait` says. An error means the backend itself failed (not one request): what
    /// was in flight may still be running.
    fn reap(&mut self, wait: Reap, out: &mut Vec<Completion>) -> io::Result<()>;

    /// Takes back every request pushed but not yet handed to the device, returning their
    /// tags; none of them, and nothing pushed later, will ever reach the device.
    fn discard_unsubmitted(&mut self) -> Vec<u64>;

    /// Requests handed to the device whose completions were not returned yet.
    fn in_flight(&self) -> usize;
}
