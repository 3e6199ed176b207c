//! p2pmem buffers as engine buffers.
#![allow(unsafe_code)]

use super::engine::IoRegion;
use crate::p2pmem::{P2pBuffer, P2pmemError};
use crate::Bdf;

/// A [`P2pBuffer`] lent to the engine, with its I/O address taken once up front.
#[derive(Debug)]
pub struct P2pSlot {
    buffer: P2pBuffer,
    ptr: *mut u8,
}

// SAFETY: P2pBuffer is Send; the raw pointer is an address inside the mapping that
// P2pSlot owns, meaningful in any thread of the process.
unsafe impl Send for P2pSlot {}

impl P2pSlot {
    /// Wraps `buffer`; fails if it was already found revoked.
    pub fn new(mut buffer: P2pBuffer) -> Result<Self, P2pmemError> {
        let len = buffer.len();
        let ptr = buffer.io_ptr(0, len)?;
        Ok(P2pSlot { buffer, ptr })
    }

    /// The provider the memory belongs to.
    pub fn provider(&self) -> Bdf {
        self.buffer.provider()
    }

    /// The buffer back.
    pub fn into_inner(self) -> P2pBuffer {
        self.buffer
    }
}

// SAFETY: the pointer is the start of the P2pBuffer's mapping of buffer.len() bytes, which
// lives at that address until the P2pBuffer is dropped (moving it does not move the
// mapping; a revocation replaces the pages in place, keeping the range mapped), and the
// P2pBuffer is owned here, so nothing else reaches those bytes while the engine holds it.
unsafe impl IoRegion for P2pSlot {
    fn io_ptr(&self) -> *mut u8 {
        self.ptr
    }

    fn io_len(&self) -> usize {
        self.buffer.len()
    }

    fn is_device_memory(&self) -> bool {
        true
    }

    fn is_live(&self) -> bool {
        self.buffer.is_live()
    }
}
