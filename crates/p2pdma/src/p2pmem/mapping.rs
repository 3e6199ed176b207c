//! One shared mapping of device memory: mmap, munmap, volatile copies, synchronous I/O.
//!
//! Everything here that touches the mapping goes through raw pointers and volatile
//! accesses: the memory is written by devices behind the CPU's back, so no Rust reference
//! to it is ever created.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::c_void;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{compiler_fence, Ordering};

use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};

use crate::revoke::{self, Registration};

/// Why a mapping could not be made.
#[derive(Debug)]
pub(crate) enum MapError {
    /// `mmap` failed.
    Mmap(rustix::io::Errno),
    /// The range could not be registered for revocation.
    Register(revoke::RevokeError),
}

/// Which way [`Mapping::transfer`] moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// `pread`: from the file into the mapping.
    Read,
    /// `pwrite`: from the mapping to the file.
    Write,
}

impl Direction {
    /// The system call's name, for errors.
    pub(crate) fn syscall(self) -> &'static str {
        match self {
            Direction::Read => "pread",
            Direction::Write => "pwrite",
        }
    }
}

/// A `MAP_SHARED` read-write mapping registered with the revocation handler.
#[derive(Debug)]
pub(crate) struct Mapping {
    start: NonNull<u8>,
    len: usize,
    registration: Registration,
    /// Set once the revocation was noticed and the range made inaccessible. A `Cell`
    /// keeps `Mapping` `!Sync`, which the sealing argument relies on.
    sealed: Cell<bool>,
}

// SAFETY: the mapping belongs to the process, not to a thread: any thread may access or
// unmap it, and the revocation table is process-wide (SIGBUS goes to whichever thread
// faults, and the handler finds the range from any thread). `Mapping` is deliberately not
// `Sync`: a revocation seen by one thread's access must be sealed by that same owner.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps `len` bytes (a multiple of the page size, non-zero) of `fd` at offset 0.
    pub(crate) fn map_shared(fd: impl AsFd, len: usize) -> Result<Mapping, MapError> {
        // SAFETY: a fresh mapping chosen by the kernel (null hint, no MAP_FIXED) cannot
        // alias any existing Rust object; `fd` is a valid open descriptor.
        let raw = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }
        .map_err(MapError::Mmap)?;
        let start = NonNull::new(raw.cast::<u8>()).expect("mmap never returns null on success");
        // SAFETY: the whole fresh mapping is ours, no reference covers it, and `Drop`
        // unregisters it before unmapping.
        match unsafe { revoke::register(start.as_ptr(), len) } {
            Ok(registration) => Ok(Mapping {
                start,
                len,
                registration,
                sealed: Cell::new(false),
            }),
            Err(e) => {
                // SAFETY: the mapping was created above and nothing else refers to it.
                let _ = unsafe { rustix::mm::munmap(raw, len) };
                Err(MapError::Register(e))
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping was revoked (one atomic load).
    pub(crate) fn is_revoked(&self) -> bool {
        self.sealed.get() || self.registration.is_revoked()
    }

    /// After a revocation, makes the replacement memory inaccessible, so that a later
    /// I/O cannot silently use host RAM in place of the vanished device memory.
    fn seal(&self) {
        if !self.sealed.get() {
            // SAFETY: the range is our own mapping (now anonymous memory after the
            // handler replaced it); no reference into it exists.
            let _ = unsafe {
                rustix::mm::mprotect(self.start.as_ptr().cast(), self.len, MprotectFlags::empty())
            };
            self.sealed.set(true);
        }
    }

    /// Fails when the mapping is (or just became) revoked, sealing it.
    fn revoked_check(&self) -> Result<(), Revoked> {
        // The revoked flag is set by the SIGBUS handler on this same thread, in the middle
        // of a copy. A signal fence keeps the compiler from moving the flag's load across
        // the volatile accesses of the copy that may fault.
        compiler_fence(Ordering::SeqCst);
        if self.is_revoked() {
            self.seal();
            return Err(Revoked);
        }
        Ok(())
    }

    /// Copies `dst.len()` bytes at `offset` out of the mapping. Bounds are checked by
    /// the caller.
    pub(crate) fn read_into(&self, offset: usize, dst: &mut [u8]) -> Result<(), Revoked> {
        self.revoked_check()?;
        debug_assert!(offset + dst.len() <= self.len);
        // SAFETY: `offset + dst.len() <= len` (checked by the caller), so the source
        // range lies inside our mapping, which stays mapped (possibly replaced by
        // anonymous memory on revocation, never unmapped) for as long as `self` lives.
        unsafe { volatile_copy_from(self.start.as_ptr().add(offset), dst) };
        self.revoked_check()
    }

    /// Copies `src` into the mapping at `offset`. Bounds are checked by the caller.
    pub(crate) fn write_from(&mut self, offset: usize, src: &[u8]) -> Result<(), Revoked> {
        self.revoked_check()?;
        debug_assert!(offset + src.len() <= self.len);
        // SAFETY: as in `read_into`, the destination lies inside our live mapping.
        unsafe { volatile_copy_to(self.start.as_ptr().add(offset), src) };
        self.revoked_check()
    }

    /// Sets `len` bytes at `offset` to `byte`. Bounds are checked by the caller.
    pub(crate) fn fill(&mut self, offset: usize, len: usize, byte: u8) -> Result<(), Revoked> {
        self.revoked_check()?;
        debug_assert!(offset + len <= self.len);
        let chunk = [byte; 4096];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len());
            // SAFETY: as in `read_into`, `[offset + done, offset + done + n)` is inside
            // our live mapping.
            unsafe { volatile_copy_to(self.start.as_ptr().add(offset + done), &chunk[..n]) };
            compiler_fence(Ordering::SeqCst);
            if self.registration.is_revoked() {
                break;
            }
            done += n;
        }
        self.revoked_check()
    }

    /// The address of byte `offset` for handing to the kernel. Bounds are checked by the
    /// caller. Fails once the mapping is revoked.
    pub(crate) fn io_ptr(&mut self, offset: usize) -> Result<*mut u8, Revoked> {
        self.revoked_check()?;
        // SAFETY: the caller checked `offset <= len`, so this stays inside (or one past)
        // the mapping.
        Ok(unsafe { self.start.as_ptr().add(offset) })
    }

    /// One synchronous transfer between `fd` at `file_offset` and `mapping[offset..offset
    /// + len]`: `pread` (the kernel writes into the mapping; with `O_DIRECT`, by DMA from
    /// the device) or `pwrite` (the kernel reads from it). Bounds checked by the caller.
    pub(crate) fn transfer(
        &mut self,
        direction: Direction,
        fd: impl AsFd,
        file_offset: u64,
        offset: usize,
        len: usize,
    ) -> Result<Result<usize, std::io::Error>, Revoked> {
        let at = self.io_ptr(offset)?.cast::<c_void>();
        let Ok(file_offset) = i64::try_from(file_offset) else {
            return Ok(Err(std::io::Error::from_raw_os_error(libc::EINVAL)));
        };
        let fd = fd.as_fd().as_raw_fd();
        // SAFETY: `[at, at + len)` is inside our mapping (checked by the caller) and
        // `&mut self` keeps the mapping alive and unaliased until the synchronous call
        // returns; the kernel validates the range itself and fails with EFAULT if it is
        // not mapped. `pwrite` only reads the range.
        let n = unsafe {
            match direction {
                Direction::Read => libc::pread64(fd, at, len, file_offset),
                Direction::Write => libc::pwrite64(fd, at, len, file_offset),
            }
        };
        Ok(if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Unregister first: once unmapped, the address may be reused by an unrelated
        // mapping that the handler must never replace.
        self.registration.unregister();
        // SAFETY: we own the mapping, it was created with exactly this address and
        // length, and no pointer handed out may outlive `self` (the `io_ptr` contract).
        let _ = unsafe { rustix::mm::munmap(self.start.as_ptr().cast(), self.len) };
    }
}

/// The mapping was revoked (the provider went away).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Revoked;

const WORD: usize = std::mem::size_of::<u64>();

/// Copies from device memory with volatile loads: single bytes up to 8-byte alignment,
/// then aligned 8-byte words, then the tail.
///
/// # Safety
/// `[src, src + dst.len())` must be mapped readable memory.
unsafe fn volatile_copy_from(src: *const u8, dst: &mut [u8]) {
    let len = dst.len();
    let head = src.align_offset(WORD).min(len);
    let mut i = 0;
    while i < head {
        // SAFETY: `i < len`, in range per the function contract.
        dst[i] = unsafe { src.add(i).read_volatile() };
        i += 1;
    }
    while i + WORD <= len {
        // SAFETY: in range per the contract, and `src + i` is 8-byte aligned because
        // `head` bytes brought it to alignment and each step adds 8.
        let word = unsafe { src.add(i).cast::<u64>().read_volatile() };
        dst[i..i + WORD].copy_from_slice(&word.to_ne_bytes());
        i += WORD;
    }
    while i < len {
        // SAFETY: `i < len`, in range per the contract.
        dst[i] = unsafe { src.add(i).read_volatile() };
        i += 1;
    }
}

/// Copies into device memory with volatile stores (same shape as [`volatile_copy_from`]).
///
/// # Safety
/// `[dst, dst + src.len())` must be mapped writable memory that no Rust reference covers.
unsafe fn volatile_copy_to(dst: *mut u8, src: &[u8]) {
    let len = src.len();
    let head = dst.align_offset(WORD).min(len);
    let mut i = 0;
    while i < head {
        // SAFETY: `i < len`, in range per the contract.
        unsafe { dst.add(i).write_volatile(src[i]) };
        i += 1;
    }
    while i + WORD <= len {
        let mut word = [0u8; WORD];
        word.copy_from_slice(&src[i..i + WORD]);
        // SAFETY: in range per the contract and 8-byte aligned (see `volatile_copy_from`).
        unsafe {
            dst.add(i)
                .cast::<u64>()
                .write_volatile(u64::from_ne_bytes(word))
        };
        i += WORD;
    }
    while i < len {
        // SAFETY: `i < len`, in range per the contract.
        unsafe { dst.add(i).write_volatile(src[i]) };
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn page() -> usize {
        rustix::param::page_size()
    }

    fn file_mapping(pages: usize) -> (tempfile::NamedTempFile, Mapping) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&vec![0xa5; pages * page()]).unwrap();
        file.flush().unwrap();
        let mapping = Mapping::map_shared(file.as_file(), pages * page()).unwrap();
        (file, mapping)
    }

    #[test]
    fn volatile_copies_round_trip_at_every_alignment() {
        let (_file, mut m) = file_mapping(1);
        let pattern: Vec<u8> = (0..100u8).collect();
        for offset in 0..9 {
            for len in [0, 1, 7, 8, 9, 17, 100] {
                m.fill(0, 256, 0).unwrap();
                m.write_from(offset, &pattern[..len]).unwrap();
                let mut back = vec![0xffu8; len + 2];
                m.read_into(offset, &mut back[..len]).unwrap();
                assert_eq!(&back[..len], &pattern[..len], "offset {offset} len {len}");
                let mut around = [0xffu8; 2];
                m.read_into(offset + len, &mut around).unwrap();
                assert_eq!(
                    around,
                    [0, 0],
                    "wrote past the end: offset {offset} len {len}"
                );
            }
        }
    }

    #[test]
    fn writes_reach_the_underlying_file() {
        let (file, mut m) = file_mapping(2);
        m.write_from(page() - 3, b"p2pdma").unwrap();
        drop(m);
        let contents = std::fs::read(file.path()).unwrap();
        assert_eq!(&contents[page() - 3..page() + 3], b"p2pdma");
        assert_eq!(contents[page() + 3], 0xa5);
    }

    /// Truncating a mapped file makes the next access to the cut pages raise SIGBUS,
    /// the same signal a zapped p2pmem mapping raises: the handler must turn it into
    /// `Revoked`, keep the process alive, and seal the range.
    #[test]
    fn sigbus_on_a_truncated_file_mapping_becomes_revoked() {
        let (file, mut m) = file_mapping(4);
        let mut buf = [0u8; 16];
        m.read_into(0, &mut buf).unwrap();
        assert_eq!(buf, [0xa5; 16]);
        let before = revoke::revocation_count();

        file.as_file().set_len(0).unwrap();
        assert_eq!(m.read_into(page() * 2, &mut buf), Err(Revoked));
        assert!(m.is_revoked());
        assert!(revoke::revocation_count() > before);
        // Sealed: later accesses fail without touching memory, I/O pointers are refused.
        assert_eq!(m.write_from(0, b"x"), Err(Revoked));
        assert_eq!(m.fill(0, 8, 1), Err(Revoked));
        assert_eq!(m.io_ptr(0), Err(Revoked));
    }

    #[test]
    fn a_mapping_moved_to_another_thread_is_revoked_there() {
        let (file, m) = file_mapping(2);
        file.as_file().set_len(0).unwrap();
        let outcome = std::thread::spawn(move || {
            let mut buf = [0u8; 4];
            m.read_into(page(), &mut buf)
        })
        .join()
        .unwrap();
        assert_eq!(outcome, Err(Revoked));
    }

    #[test]
    fn sigbus_during_a_write_becomes_revoked() {
        let (file, mut m) = file_mapping(2);
        file.as_file().set_len(0).unwrap();
        assert_eq!(m.write_from(page() + 5, b"hello"), Err(Revoked));
    }

    #[test]
    fn pread_and_pwrite_move_file_bytes_through_the_mapping() {
        let (_file, mut m) = file_mapping(1);
        let mut other = tempfile::tempfile().unwrap();
        other.write_all(b"0123456789").unwrap();
        let read = m.transfer(Direction::Read, &other, 2, 10, 5);
        assert_eq!(read.unwrap().unwrap(), 5);
        let mut buf = [0u8; 5];
        m.read_into(10, &mut buf).unwrap();
        assert_eq!(&buf, b"23456");
        let written = m.transfer(Direction::Write, &other, 0, 10, 5);
        assert_eq!(written.unwrap().unwrap(), 5);
        let contents = std::fs::read(format!("/proc/self/fd/{}", other.as_raw_fd())).unwrap();
        assert_eq!(&contents, b"2345656789");
    }
}
