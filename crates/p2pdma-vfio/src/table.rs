//! The lease table: which ranges of a BAR are handed out, and what still reaches them.
//! Pure state machine; [`crate::pool`] wraps it in owned types.
//!
//! A range is *reachable* while any of these holds:
//! - its lease is alive;
//! - a CPU access through the pool's mapping is under way (until CPU access is revoked:
//!   then the mapping is gone and no access can reach the range);
//! - a command that names it was submitted and has not completed, or was abandoned
//!   (its completion will never be reaped) — until the controller is quiesced
//!   (disabled: no more DMA), after which no command can reach it.
//!
//! A range returns to the free list exactly when it stops being reachable, so no range is
//! handed out again while anything can still touch it. The pool moves one way through its
//! phases: `Open` -> `Draining` (no new leases, submissions or CPU accesses) ->
//! `CpuRevoked` -> `Quiesced` (in-flight DMA completed or the controller disabled) ->
//! `Closed` (IOMMU mapping removed). A model test below drives random interleavings
//! against an independent reference model.

use std::collections::{BTreeMap, HashMap};

/// Identifies one leased range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RangeId(u64);

/// Where the pool is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Leases, submissions and CPU access allowed.
    Open,
    /// Revocation began: nothing new.
    Draining,
    /// The CPU mapping is gone.
    CpuRevoked,
    /// No DMA can be in flight (every command completed, or the controller is disabled).
    Quiesced,
    /// The IOMMU mapping is gone; the pool is empty.
    Closed,
}

/// Why a table operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The pool is being revoked or is closed.
    #[error("the device memory pool is revoked ({0:?}): no new leases, submissions or CPU access")]
    Revoked(Phase),
    /// No free run of that size.
    #[error("no free run of {len} bytes in the device memory pool ({free} bytes free in total, largest run {largest})")]
    Exhausted {
        /// Asked for.
        len: u64,
        /// Free bytes.
        free: u64,
        /// Largest free run.
        largest: u64,
    },
    /// Zero or unaligned size.
    #[error(
        "a lease of {len} bytes is not a non-zero multiple of the pool's {granule}-byte granule"
    )]
    BadSize {
        /// Asked for.
        len: u64,
        /// The granule.
        granule: u64,
    },
    /// An id the table does not know, or an operation its state forbids (a bug in the
    /// owned wrappers, never a user error).
    #[error("lease table misuse: {0}")]
    Misuse(&'static str),
    /// Phases move forward one step at a time.
    #[error("cannot go from {from:?} to {to:?}")]
    PhaseOrder {
        /// Current.
        from: Phase,
        /// Asked.
        to: Phase,
    },
    /// Closing while a command may still reach the memory.
    #[error("cannot unmap from the IOMMU: {0} command(s) may still be in flight")]
    StillInFlight(u32),
}

#[derive(Debug, Clone)]
struct Entry {
    offset: u64,
    len: u64,
    leased: bool,
    cpu: u32,
    in_flight: u32,
    abandoned: u32,
}

/// The lease table of one pool.
#[derive(Debug)]
pub struct LeaseTable {
    len: u64,
    granule: u64,
    free: BTreeMap<u64, u64>,
    entries: HashMap<RangeId, Entry>,
    next: u64,
    phase: Phase,
}

impl LeaseTable {
    /// A table over `len` bytes handed out in multiples of `granule` (a power of two).
    pub fn new(len: u64, granule: u64) -> LeaseTable {
        assert!(granule.is_power_of_two() && len.is_multiple_of(granule) && len > 0);
        LeaseTable {
            len,
            granule,
            free: BTreeMap::from([(0, len)]),
            entries: HashMap::new(),
            next: 0,
            phase: Phase::Open,
        }
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free.values().sum()
    }

    /// Total bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false (a table has at least one granule); for clippy's len convention.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Commands submitted or abandoned and not yet accounted for.
    pub fn in_flight(&self) -> u32 {
        self.entries
            .values()
            .map(|e| e.in_flight + e.abandoned)
            .sum()
    }

    /// Ranges not yet returned.
    pub fn outstanding(&self) -> usize {
        self.entries.len()
    }

    fn open(&self) -> Result<(), TableError> {
        if self.phase == Phase::Open {
            Ok(())
        } else {
            Err(TableError::Revoked(self.phase))
        }
    }

    fn entry(&mut self, id: RangeId) -> Result<&mut Entry, TableError> {
        self.entries
            .get_mut(&id)
            .ok_or(TableError::Misuse("unknown range"))
    }

    /// Leases `len` bytes (first fit); returns the id and the offset in the BAR.
    pub fn lease(&mut self, len: u64) -> Result<(RangeId, u64), TableError> {
        self.open()?;
        if len == 0 || !len.is_multiple_of(self.granule) {
            return Err(TableError::BadSize {
                len,
                granule: self.granule,
            });
        }
        let Some((&start, &run)) = self.free.iter().find(|(_, &run)| run >= len) else {
            return Err(TableError::Exhausted {
                len,
                free: self.free_bytes(),
                largest: self.free.values().copied().max().unwrap_or(0),
            });
        };
        self.free.remove(&start);
        if run > len {
            self.free.insert(start + len, run - len);
        }
        let id = RangeId(self.next);
        self.next += 1;
        self.entries.insert(
            id,
            Entry {
                offset: start,
                len,
                leased: true,
                cpu: 0,
                in_flight: 0,
                abandoned: 0,
            },
        );
        Ok((id, start))
    }

    /// A CPU access to the range begins (refused once revocation began).
    pub fn begin_cpu(&mut self, id: RangeId) -> Result<(), TableError> {
        self.open()?;
        let e = self.entry(id)?;
        if !e.leased {
            return Err(TableError::Misuse("CPU access without a lease"));
        }
        e.cpu += 1;
        Ok(())
    }

    /// A CPU access ended.
    pub fn end_cpu(&mut self, id: RangeId) -> Result<(), TableError> {
        let e = self.entry(id)?;
        if e.cpu == 0 {
            return Err(TableError::Misuse("end of a CPU access never begun"));
        }
        e.cpu -= 1;
        self.settle(id);
        Ok(())
    }

    /// CPU accesses under way (all ranges); revocation waits for them to reach 0.
    pub fn cpu_accesses(&self) -> u32 {
        self.entries.values().map(|e| e.cpu).sum()
    }

    /// A command naming the range is submitted.
    pub fn submit(&mut self, id: RangeId) -> Result<(), TableError> {
        self.open()?;
        let e = self.entry(id)?;
        if !e.leased {
            return Err(TableError::Misuse("submission without a lease"));
        }
        e.in_flight += 1;
        Ok(())
    }

    /// Its completion was reaped.
    pub fn complete(&mut self, id: RangeId) -> Result<(), TableError> {
        let e = self.entry(id)?;
        if e.in_flight == 0 {
            return Err(TableError::Misuse("completion of nothing in flight"));
        }
        e.in_flight -= 1;
        self.settle(id);
        Ok(())
    }

    /// Its completion will never be reaped (queue given up): the range stays reachable
    /// until the controller is quiesced.
    pub fn abandon(&mut self, id: RangeId) -> Result<(), TableError> {
        let e = self.entry(id)?;
        if e.in_flight == 0 {
            return Err(TableError::Misuse("abandoning nothing in flight"));
        }
        e.in_flight -= 1;
        e.abandoned += 1;
        self.settle(id);
        Ok(())
    }

    /// The lease was dropped.
    pub fn release(&mut self, id: RangeId) -> Result<(), TableError> {
        let e = self.entry(id)?;
        if !e.leased {
            return Err(TableError::Misuse("double release"));
        }
        e.leased = false;
        self.settle(id);
        Ok(())
    }

    /// Moves to the next phase.
    pub fn advance(&mut self, to: Phase) -> Result<(), TableError> {
        let next = match self.phase {
            Phase::Open => Phase::Draining,
            Phase::Draining => Phase::CpuRevoked,
            Phase::CpuRevoked => Phase::Quiesced,
            Phase::Quiesced => Phase::Closed,
            Phase::Closed => Phase::Closed,
        };
        if to != next || self.phase == Phase::Closed {
            return Err(TableError::PhaseOrder {
                from: self.phase,
                to,
            });
        }
        if to == Phase::CpuRevoked && self.cpu_accesses() > 0 {
            return Err(TableError::Misuse("CPU access under way at CPU revocation"));
        }
        self.phase = to;
        let ids: Vec<RangeId> = self.entries.keys().copied().collect();
        for id in ids {
            self.settle(id);
        }
        Ok(())
    }

    /// Whether the IOMMU mapping may go: nothing in flight, or the controller quiesced.
    pub fn check_unmappable(&self) -> Result<(), TableError> {
        if self.phase >= Phase::Quiesced || self.in_flight() == 0 {
            Ok(())
        } else {
            Err(TableError::StillInFlight(self.in_flight()))
        }
    }

    fn reachable(&self, e: &Entry) -> bool {
        let cpu = e.cpu > 0 && self.phase < Phase::CpuRevoked;
        let dma = (e.in_flight + e.abandoned) > 0 && self.phase < Phase::Quiesced;
        e.leased || cpu || dma
    }

    fn settle(&mut self, id: RangeId) {
        let Some(e) = self.entries.get(&id) else {
            return;
        };
        if self.reachable(e) {
            return;
        }
        let (mut start, mut len) = (e.offset, e.len);
        self.entries.remove(&id);
        // Coalesce with the neighbours.
        if let Some((&prev, &plen)) = self.free.range(..start).next_back() {
            if prev + plen == start {
                self.free.remove(&prev);
                start = prev;
                len += plen;
            }
        }
        if let Some(&nlen) = self.free.get(&(start + len)) {
            self.free.remove(&(start + len));
            len += nlen;
        }
        self.free.insert(start, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const G: u64 = 4096;

    #[test]
    fn a_range_returns_only_when_lease_command_and_access_are_all_gone() {
        let mut t = LeaseTable::new(4 * G, G);
        let (a, off) = t.lease(2 * G).unwrap();
        assert_eq!(off, 0);
        t.submit(a).unwrap();
        t.begin_cpu(a).unwrap();
        t.release(a).unwrap();
        assert_eq!(t.free_bytes(), 2 * G, "in flight and accessed: kept");
        t.complete(a).unwrap();
        assert_eq!(t.free_bytes(), 2 * G, "CPU access under way: kept");
        t.end_cpu(a).unwrap();
        assert_eq!(t.free_bytes(), 4 * G);
        assert_eq!(t.outstanding(), 0);
    }

    #[test]
    fn revocation_stops_new_work_and_quiescing_frees_abandoned_ranges() {
        let mut t = LeaseTable::new(4 * G, G);
        let (a, _) = t.lease(G).unwrap();
        let (b, _) = t.lease(G).unwrap();
        t.submit(a).unwrap();
        t.submit(b).unwrap();
        t.advance(Phase::Draining).unwrap();
        assert_eq!(t.lease(G), Err(TableError::Revoked(Phase::Draining)));
        assert_eq!(t.submit(a), Err(TableError::Revoked(Phase::Draining)));
        assert_eq!(t.begin_cpu(a), Err(TableError::Revoked(Phase::Draining)));
        t.complete(a).unwrap();
        t.abandon(b).unwrap();
        t.release(a).unwrap();
        t.release(b).unwrap();
        assert_eq!(t.free_bytes(), 3 * G, "b's command may still write into it");
        t.advance(Phase::CpuRevoked).unwrap();
        assert_eq!(t.check_unmappable(), Err(TableError::StillInFlight(1)));
        assert!(
            t.advance(Phase::Closed).is_err(),
            "phases go one step at a time"
        );
        t.advance(Phase::Quiesced).unwrap();
        assert_eq!(t.free_bytes(), 4 * G);
        t.check_unmappable().unwrap();
        t.advance(Phase::Closed).unwrap();
    }

    #[test]
    fn first_fit_coalesces_and_reports_exhaustion() {
        let mut t = LeaseTable::new(4 * G, G);
        let (a, _) = t.lease(G).unwrap();
        let (b, _) = t.lease(G).unwrap();
        let (c, _) = t.lease(2 * G).unwrap();
        assert!(matches!(
            t.lease(G),
            Err(TableError::Exhausted { free: 0, .. })
        ));
        t.release(a).unwrap();
        t.release(c).unwrap();
        let err = t.lease(3 * G).unwrap_err();
        assert_eq!(
            err,
            TableError::Exhausted {
                len: 3 * G,
                free: 3 * G,
                largest: 2 * G
            }
        );
        t.release(b).unwrap();
        assert_eq!(t.lease(4 * G).unwrap().1, 0, "all three runs coalesced");
        assert!(matches!(t.lease(0), Err(TableError::BadSize { .. })));
        assert!(matches!(t.lease(100), Err(TableError::BadSize { .. })));
    }

    /// One step of a random interleaving. Indices pick among the model's live objects.
    #[derive(Debug, Clone)]
    enum Op {
        Lease(u8),
        Submit(u8),
        Complete(u8),
        Abandon(u8),
        BeginCpu(u8),
        EndCpu(u8),
        Release(u8),
        Advance,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u8..4).prop_map(Op::Lease),
            3 => any::<u8>().prop_map(Op::Submit),
            3 => any::<u8>().prop_map(Op::Complete),
            1 => any::<u8>().prop_map(Op::Abandon),
            2 => any::<u8>().prop_map(Op::BeginCpu),
            2 => any::<u8>().prop_map(Op::EndCpu),
            3 => any::<u8>().prop_map(Op::Release),
            1 => Just(Op::Advance),
        ]
    }

    /// The reference model: every range ever handed out, with its own counters, and the
    /// reachability rule written out again independently of the table's.
    #[derive(Debug, Default, Clone)]
    struct Model {
        id: Option<RangeId>,
        start: u64,
        len: u64,
        leased: bool,
        cpu: u32,
        in_flight: u32,
        abandoned: u32,
    }

    fn reachable(m: &Model, phase: Phase) -> bool {
        m.leased
            || (m.cpu > 0 && phase < Phase::CpuRevoked)
            || (m.in_flight + m.abandoned > 0 && phase < Phase::Quiesced)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn no_range_is_handed_out_twice_while_reachable(ops in proptest::collection::vec(op(), 1..120)) {
            let total = 8 * G;
            let mut t = LeaseTable::new(total, G);
            let mut models: Vec<Model> = Vec::new();
            for op in ops {
                let phase = t.phase();
                let live: Vec<usize> = (0..models.len()).filter(|&i| reachable(&models[i], phase)).collect();
                let pick = |k: u8, pred: &dyn Fn(&Model) -> bool| -> Option<usize> {
                    let c: Vec<usize> = live.iter().copied().filter(|&i| pred(&models[i])).collect();
                    (!c.is_empty()).then(|| c[k as usize % c.len()])
                };
                match op {
                    Op::Lease(n) => {
                        let len = u64::from(n) * G;
                        match t.lease(len) {
                            Ok((id, start)) => {
                                prop_assert_eq!(phase, Phase::Open);
                                prop_assert!(start + len <= total);
                                for m in models.iter().filter(|m| reachable(m, phase)) {
                                    prop_assert!(start + len <= m.start || m.start + m.len <= start,
                                        "range {}+{} handed out while {:?} still reaches it", start, len, m);
                                }
                                models.push(Model { id: Some(id), start, len, leased: true, ..Model::default() });
                            }
                            Err(TableError::Revoked(p)) => prop_assert_ne!(p, Phase::Open),
                            Err(TableError::Exhausted { free, .. }) => {
                                let used: u64 = models.iter().filter(|m| reachable(m, phase)).map(|m| m.len).sum();
                                prop_assert_eq!(free, total - used);
                            }
                            Err(e) => prop_assert!(false, "unexpected {}", e),
                        }
                    }
                    Op::Submit(k) => if let Some(i) = pick(k, &|m| m.leased) {
                        let r = t.submit(models[i].id.unwrap());
                        if phase == Phase::Open { prop_assert!(r.is_ok()); models[i].in_flight += 1; }
                        else { prop_assert_eq!(r, Err(TableError::Revoked(phase))); }
                    },
                    Op::Complete(k) => if let Some(i) = pick(k, &|m| m.in_flight > 0) {
                        t.complete(models[i].id.unwrap()).unwrap();
                        models[i].in_flight -= 1;
                    },
                    Op::Abandon(k) => if let Some(i) = pick(k, &|m| m.in_flight > 0) {
                        t.abandon(models[i].id.unwrap()).unwrap();
                        models[i].in_flight -= 1;
                        models[i].abandoned += 1;
                    },
                    Op::BeginCpu(k) => if let Some(i) = pick(k, &|m| m.leased) {
                        let r = t.begin_cpu(models[i].id.unwrap());
                        if phase == Phase::Open { prop_assert!(r.is_ok()); models[i].cpu += 1; }
                        else { prop_assert!(r.is_err()); }
                    },
                    Op::EndCpu(k) => if let Some(i) = pick(k, &|m| m.cpu > 0) {
                        t.end_cpu(models[i].id.unwrap()).unwrap();
                        models[i].cpu -= 1;
                    },
                    Op::Release(k) => if let Some(i) = pick(k, &|m| m.leased) {
                        t.release(models[i].id.unwrap()).unwrap();
                        models[i].leased = false;
                    },
                    Op::Advance => {
                        let next = match phase {
                            Phase::Open => Phase::Draining,
                            Phase::Draining => Phase::CpuRevoked,
                            Phase::CpuRevoked => Phase::Quiesced,
                            Phase::Quiesced | Phase::Closed => Phase::Closed,
                        };
                        let cpu_busy = models.iter().any(|m| m.cpu > 0);
                        let r = t.advance(next);
                        if phase == Phase::Closed || (next == Phase::CpuRevoked && cpu_busy) {
                            prop_assert!(r.is_err());
                        } else {
                            prop_assert!(r.is_ok(), "{:?}", r);
                        }
                    }
                }
                // After every step: exactly the unreachable ranges are free.
                let phase = t.phase();
                let used: u64 = models.iter().filter(|m| reachable(m, phase)).map(|m| m.len).sum();
                prop_assert_eq!(t.free_bytes(), total - used);
                prop_assert_eq!(t.outstanding(), models.iter().filter(|m| reachable(m, phase)).count());
                let in_flight: u32 = models.iter().filter(|m| reachable(m, phase)).map(|m| m.in_flight + m.abandoned).sum();
                if phase < Phase::Quiesced {
                    prop_assert_eq!(t.check_unmappable().is_ok(), in_flight == 0);
                }
            }
        }
    }
}
