//! `BarPool` and `Lease`: a BAR's memory handed out in ranges, with the lease table
//! ([`crate::table`]) deciding when a range may return.
//!
//! The types do what they can: a [`Lease`] is not `Clone` and gives no pointer or slice,
//! only volatile copies in and out and its IOVA; a submitted command is an [`InFlight`]
//! token that only [`InFlight::complete`] retires (dropping it unretired counts as
//! *abandoned*, so the range stays reachable until the controller is quiesced). What the
//! types cannot express (revocation phases, CPU accesses under way) the table enforces.
#![allow(unsafe_code)]

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use p2pdma::revoke::Registration;

use crate::table::{LeaseTable, Phase, RangeId, TableError};
use crate::vfio::Mmio;

/// Errors of leases and accesses.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The lease table refused (revoked, exhausted, bad size).
    #[error("{what}: {source}")]
    Table {
        /// The pool.
        what: String,
        /// Why.
        #[source]
        source: TableError,
    },
    /// A CPU access found the mapping revoked (the kernel zapped it: SIGBUS caught).
    #[error(
        "{what}: the device memory was revoked during a CPU access (device unbound or removed)"
    )]
    Revoked {
        /// The pool.
        what: String,
    },
    /// An access outside the lease.
    #[error("access of {len} bytes at {offset} outside a lease of {lease} bytes")]
    OutOfRange {
        /// Offset in the lease.
        offset: u64,
        /// Length.
        len: u64,
        /// The lease's size.
        lease: u64,
    },
    /// The SIGBUS protection could not be installed.
    #[error("cannot protect {what} against SIGBUS")]
    Protect {
        /// The pool.
        what: String,
        /// Why.
        #[source]
        source: p2pdma::revoke::RevokeError,
    },
}

struct Inner {
    what: String,
    table: Mutex<LeaseTable>,
    cpu_idle: Condvar,
    memory: Arc<Mmio>,
    /// Where the pool starts in `memory` (a CMB's offset in its BAR).
    base: u64,
    /// IOVA of the pool's first byte.
    iova: u64,
    registration: Mutex<Option<Registration>>,
}

impl Inner {
    fn table(&self) -> MutexGuard<'_, LeaseTable> {
        // A panic while holding the lock leaves the table consistent (every method
        // checks before it changes anything), so a poisoned lock is still usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, source: TableError) -> PoolError {
        PoolError::Table {
            what: self.what.clone(),
            source,
        }
    }
}

/// A BAR (or part of one) handed out in leases.
#[derive(Clone)]
pub struct BarPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BarPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.inner.table();
        f.debug_struct("BarPool")
            .field("what", &self.inner.what)
            .field("iova", &format_args!("{:#x}", self.inner.iova))
            .field("len", &t.len())
            .field("free", &t.free_bytes())
            .field("phase", &t.phase())
            .finish()
    }
}

impl BarPool {
    /// A pool over `len` bytes at `base` in `memory`, which the devices reach at `iova`;
    /// leases are multiples of `granule`. CPU faults in the range (the kernel zapping the
    /// mapping) become [`PoolError::Revoked`] instead of killing the process.
    pub fn new(
        what: &str,
        memory: Arc<Mmio>,
        base: u64,
        len: u64,
        iova: u64,
        granule: u64,
    ) -> Result<BarPool, PoolError> {
        assert!(base + len <= memory.len() as u64, "pool outside its memory");
        // SAFETY: the range lies inside `memory` (asserted above), a mapping this pool keeps
        // alive (Arc) and only ever accesses volatilely through raw pointers. The
        // registration is dropped before the mapping changes or goes: in `revoke_cpu`
        // before the mapping is replaced, and in `Inner`'s Drop before `memory` is released.
        let registration =
            unsafe { p2pdma::revoke::register(memory.as_ptr().add(base as usize), len as usize) }
                .map_err(|source| PoolError::Protect {
                what: what.into(),
                source,
            })?;
        Ok(BarPool {
            inner: Arc::new(Inner {
                what: what.into(),
                table: Mutex::new(LeaseTable::new(len, granule)),
                cpu_idle: Condvar::new(),
                memory,
                base,
                iova,
                registration: Mutex::new(Some(registration)),
            }),
        })
    }

    /// Leases `len` bytes.
    pub fn lease(&self, len: u64) -> Result<Lease, PoolError> {
        let (id, offset) = self
            .inner
            .table()
            .lease(len)
            .map_err(|e| self.inner.err(e))?;
        Ok(Lease {
            pool: self.inner.clone(),
            id,
            offset,
            len,
        })
    }

    /// The phase of the pool.
    pub fn phase(&self) -> Phase {
        self.inner.table().phase()
    }

    /// Bytes free, total bytes, commands in flight, ranges outstanding.
    pub fn stats(&self) -> (u64, u64, u32, usize) {
        let t = self.inner.table();
        (t.free_bytes(), t.len(), t.in_flight(), t.outstanding())
    }

    /// IOVA of the pool's first byte.
    pub fn iova(&self) -> u64 {
        self.inner.iova
    }

    /// Revocation step 1: no new leases, submissions or CPU accesses.
    pub fn stop(&self) -> Result<(), PoolError> {
        let mut t = self.inner.table();
        if t.phase() >= Phase::Draining {
            return Ok(());
        }
        t.advance(Phase::Draining).map_err(|e| self.inner.err(e))
    }

    /// Revocation step 2: waits for CPU accesses under way to end (they are short,
    /// bounded copies), then makes the mapping inaccessible.
    pub fn revoke_cpu(&self) -> Result<(), PoolError> {
        let mut t = self.inner.table();
        while t.cpu_accesses() > 0 {
            t = self
                .inner
                .cpu_idle
                .wait(t)
                .unwrap_or_else(|p| p.into_inner());
        }
        // Unregister before the mapping changes, so a SIGBUS handler never touches it.
        self.inner
            .registration
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        // A failure leaves the old mapping in place; the phase still forbids access.
        let _ = self.inner.memory.revoke();
        t.advance(Phase::CpuRevoked).map_err(|e| self.inner.err(e))
    }

    /// Commands still in flight (step 3 waits for 0, or disables the controller).
    pub fn in_flight(&self) -> u32 {
        self.inner.table().in_flight()
    }

    /// Revocation step 3 done: no DMA can be under way (all completed, or the controller
    /// disabled).
    pub fn quiesced(&self) -> Result<(), PoolError> {
        self.inner
            .table()
            .advance(Phase::Quiesced)
            .map_err(|e| self.inner.err(e))
    }

    /// Revocation step 4: the IOMMU mapping may go; the pool is closed.
    pub fn close(&self) -> Result<(), PoolError> {
        let mut t = self.inner.table();
        t.check_unmappable().map_err(|e| self.inner.err(e))?;
        t.advance(Phase::Closed).map_err(|e| self.inner.err(e))
    }
}

/// A range of the pool, owned. Dropping it releases the range (it returns to the pool
/// once nothing else reaches it).
pub struct Lease {
    pool: Arc<Inner>,
    id: RangeId,
    offset: u64,
    len: u64,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("iova", &format_args!("{:#x}", self.iova()))
            .field("len", &self.len)
            .finish()
    }
}

impl Lease {
    /// The IOVA of its first byte, for commands.
    pub fn iova(&self) -> u64 {
        self.pool.iova + self.offset
    }

    /// Its size.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false (leases are at least one granule).
    pub fn is_empty(&self) -> bool {
        false
    }

    fn cpu<T>(&self, offset: u64, len: u64, f: impl FnOnce(usize) -> T) -> Result<T, PoolError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(PoolError::OutOfRange {
                offset,
                len,
                lease: self.len,
            });
        }
        self.pool
            .table()
            .begin_cpu(self.id)
            .map_err(|e| self.pool.err(e))?;
        let at = (self.pool.base + self.offset + offset) as usize;
        let out = f(at);
        let revoked = self
            .pool
            .registration
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(Registration::is_revoked);
        let mut t = self.pool.table();
        let _ = t.end_cpu(self.id);
        if t.cpu_accesses() == 0 {
            self.pool.cpu_idle.notify_all();
        }
        if revoked {
            return Err(PoolError::Revoked {
                what: self.pool.what.clone(),
            });
        }
        Ok(out)
    }

    /// Copies `src` into the lease at `offset` (volatile stores).
    pub fn write(&self, offset: u64, src: &[u8]) -> Result<(), PoolError> {
        let memory = self.pool.memory.clone();
        self.cpu(offset, src.len() as u64, |at| memory.write_bytes(at, src))
    }

    /// Copies from the lease at `offset` into `dst` (volatile loads).
    pub fn read(&self, offset: u64, dst: &mut [u8]) -> Result<(), PoolError> {
        let memory = self.pool.memory.clone();
        self.cpu(offset, dst.len() as u64, |at| memory.read_bytes(at, dst))
    }

    /// Records that a command naming this lease is about to be submitted (call before
    /// ringing the doorbell). Refused once revocation began.
    pub fn submit(&self) -> Result<InFlight, PoolError> {
        self.pool
            .table()
            .submit(self.id)
            .map_err(|e| self.pool.err(e))?;
        Ok(InFlight {
            pool: self.pool.clone(),
            id: self.id,
            done: false,
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.pool.table().release(self.id);
    }
}

/// A submitted command that names a lease. Retire it with [`InFlight::complete`] when its
/// completion is reaped; dropped otherwise, it is *abandoned*: its range stays out of the
/// pool until the controller is quiesced.
#[must_use = "an InFlight dropped without complete() keeps its range until the controller is disabled"]
pub struct InFlight {
    pool: Arc<Inner>,
    id: RangeId,
    done: bool,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight").field("id", &self.id).finish()
    }
}

impl InFlight {
    /// The command's completion was reaped: it no longer reaches the range.
    pub fn complete(mut self) {
        self.done = true;
        // After quiescing the table already counts it as gone (unknown id): fine.
        let _ = self.pool.table().complete(self.id);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.pool.table().abandon(self.id);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The registration goes before the memory (which Arc may free right after).
        self.registration
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 4096;

    fn pool(len: u64) -> BarPool {
        let mem = Mmio::anonymous(len as usize + 2 * G as usize, "test memory").unwrap();
        BarPool::new("test pool", mem, G, len, 0x40_0000_0000, G).unwrap()
    }

    #[test]
    fn leases_give_iovas_and_volatile_copies_within_bounds() {
        let p = pool(4 * G);
        let a = p.lease(G).unwrap();
        let b = p.lease(2 * G).unwrap();
        assert_eq!(a.iova(), 0x40_0000_0000);
        assert_eq!(b.iova(), 0x40_0000_1000);
        let pattern: Vec<u8> = (0..G as usize + 13).map(|i| (i * 131 + 7) as u8).collect();
        b.write(5, &pattern).unwrap();
        let mut back = vec![0u8; pattern.len()];
        b.read(5, &mut back).unwrap();
        assert_eq!(back, pattern);
        let mut other = vec![0xffu8; G as usize];
        a.read(0, &mut other).unwrap();
        assert!(other.iter().all(|&x| x == 0), "a's range untouched");
        assert!(matches!(
            a.write(G - 1, &[1, 2]),
            Err(PoolError::OutOfRange { .. })
        ));
        assert_eq!(p.stats().0, G);
    }

    #[test]
    fn an_abandoned_command_keeps_its_range_until_quiesced_and_revocation_stops_access() {
        let p = pool(2 * G);
        let a = p.lease(2 * G).unwrap();
        let cmd = a.submit().unwrap();
        drop(cmd); // never completed
        drop(a);
        assert_eq!(p.stats(), (0, 2 * G, 1, 1));
        assert!(
            p.lease(G).is_err(),
            "the range may still be written by the device"
        );
        p.stop().unwrap();
        p.revoke_cpu().unwrap();
        assert!(p.close().is_err(), "in flight: the IOMMU mapping must stay");
        p.quiesced().unwrap();
        assert_eq!(p.stats().0, 2 * G);
        p.close().unwrap();
        assert_eq!(p.phase(), Phase::Closed);
    }

    #[test]
    fn a_lease_held_across_revocation_cannot_touch_or_submit() {
        let p = pool(G);
        let a = p.lease(G).unwrap();
        a.write(0, &[9; 8]).unwrap();
        let cmd = a.submit().unwrap();
        p.stop().unwrap();
        assert!(a.submit().is_err());
        assert!(matches!(a.write(0, &[1]), Err(PoolError::Table { .. })));
        p.revoke_cpu().unwrap();
        let mut b = [0u8; 1];
        assert!(a.read(0, &mut b).is_err());
        cmd.complete();
        p.quiesced().unwrap();
        p.close().unwrap();
        drop(a);
        assert_eq!(p.stats().3, 0);
    }
}
