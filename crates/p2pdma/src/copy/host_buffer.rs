//! An aligned buffer in host memory: the bounce buffer of `--bounce`, and what `--verify`
//! reads into.
#![allow(unsafe_code)]

use std::alloc::{self, Layout};
use std::fmt;
use std::ptr::NonNull;

use super::engine::IoRegion;

/// Alignment of every host buffer: a page, which satisfies any O_DIRECT memory alignment
/// (`STATX_DIOALIGN`'s `dio_mem_align` is at most the logical block size, at most 4 KiB
/// for the devices this tool drives).
pub const HOST_BUFFER_ALIGN: usize = 4096;

/// Why a host buffer could not be made.
#[derive(Debug, thiserror::Error)]
pub enum HostBufferError {
    /// The length is 0 or too large for a page-aligned allocation.
    #[error("a host buffer of {len} bytes cannot be laid out (it must be 1..=isize::MAX bytes)")]
    BadLength {
        /// The length asked for.
        len: usize,
    },
    /// The allocator refused.
    #[error("out of host memory allocating a {len}-byte buffer; use a smaller --chunk-size or --queue-depth")]
    OutOfMemory {
        /// The length asked for.
        len: usize,
    },
}

/// A zero-filled, page-aligned heap allocation that never moves, usable for O_DIRECT.
///
/// It is handed to the kernel by raw pointer ([`IoRegion`]); safe Rust reaches its bytes
/// only through `&mut self`, so no slice exists while the engine (which owns it) has I/O
/// in flight.
pub struct HostBuffer {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: HostBuffer owns its allocation exclusively (like Box<[u8]>); nothing about it is
// tied to the thread that made it.
unsafe impl Send for HostBuffer {}

impl HostBuffer {
    /// Allocates `len` zeroed bytes aligned to [`HOST_BUFFER_ALIGN`].
    pub fn new(len: usize) -> Result<Self, HostBufferError> {
        let layout = Layout::from_size_align(len, HOST_BUFFER_ALIGN)
            .ok()
            .filter(|l| l.size() > 0)
            .ok_or(HostBufferError::BadLength { len })?;
        // SAFETY: the layout has a non-zero size (checked just above).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or(HostBufferError::OutOfMemory { len })?;
        Ok(HostBuffer { ptr, layout })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Always false: a host buffer has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The bytes, read-only.
    pub fn as_slice(&mut self) -> &[u8] {
        // SAFETY: ptr is a live allocation of layout.size() initialised (zeroed) bytes owned
        // by self; `&mut self` guarantees no other Rust reference exists, and the kernel
        // only writes here while an engine owns the buffer, which it cannot while we are
        // borrowed.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice; the borrow is unique because it comes from `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        // SAFETY: ptr was returned by alloc_zeroed with exactly this layout and is freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl fmt::Debug for HostBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostBuffer")
            .field("ptr", &self.ptr)
            .field("len", &self.layout.size())
            .finish()
    }
}

// SAFETY: the allocation lives, at a fixed address and with layout.size() writable bytes,
// until HostBuffer is dropped; moving a HostBuffer does not move the allocation.
unsafe impl IoRegion for HostBuffer {
    fn io_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn io_len(&self) -> usize {
        self.layout.size()
    }

    fn is_device_memory(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_page_aligned_zeroed_and_writable() {
        let mut buf = HostBuffer::new(3 * 4096 + 512).unwrap();
        assert_eq!(buf.io_ptr() as usize % HOST_BUFFER_ALIGN, 0);
        assert_eq!(buf.len(), 3 * 4096 + 512);
        assert!(buf.as_slice().iter().all(|b| *b == 0));
        buf.as_mut_slice()[4096] = 7;
        assert_eq!(buf.as_slice()[4096], 7);
    }

    #[test]
    fn zero_and_absurd_lengths_are_errors_not_panics() {
        assert!(matches!(
            HostBuffer::new(0),
            Err(HostBufferError::BadLength { len: 0 })
        ));
        assert!(matches!(
            HostBuffer::new(usize::MAX),
            Err(HostBufferError::BadLength { .. })
        ));
    }
}
