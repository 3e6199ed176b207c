//! Lending buffers to the copy engine for one pass, so a time-based run reuses the same
//! buffers pass after pass instead of allocating p2pmem inside the timed loop.
#![allow(unsafe_code)]

use crate::copy::engine::IoRegion;

/// A buffer lent by reference. The owner must not touch the bytes while the engine runs
/// (it cannot: the engine holds the loan), and must leak the owned buffers if the engine
/// returns `RingFailed` or `Stalled` (requests may still be in flight; see
/// `runner::copy_pass`).
#[derive(Debug)]
pub struct Lent<'a, R: IoRegion>(pub &'a R);

// SAFETY: the pointer and length are the lender's, which satisfy IoRegion's contract for
// as long as the lender lives; the borrow keeps the lender alive (and unmoved) for the
// whole life of the Lent value. No Rust reference reaches the bytes meanwhile: IoRegion
// exposes only the raw pointer, and the runner does not read or write the buffers while a
// pass runs. The cases where the engine gives buffers up with requests still in flight
// (RingFailed and Stalled, where it leaks them) are handled by the runner leaking the
// owners too.
unsafe impl<R: IoRegion> IoRegion for Lent<'_, R> {
    fn io_ptr(&self) -> *mut u8 {
        self.0.io_ptr()
    }

    fn io_len(&self) -> usize {
        self.0.io_len()
    }

    fn is_device_memory(&self) -> bool {
        self.0.is_device_memory()
    }

    fn is_live(&self) -> bool {
        self.0.is_live()
    }
}
