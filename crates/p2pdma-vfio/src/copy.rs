//! Namespace-to-namespace copies through a leased BAR range (a CMB, or any memory BAR),
//! with the revocation sequence of the seed thread when the device must go.
//!
//! Each chunk is read from the source namespace into a lease (a Read whose data pointer is
//! the lease's IOVA), then written from it to the destination (a Write from the same IOVA):
//! the data never crosses host memory. Up to `depth` chunks move at once.
//!
//! Revocation (device request eventfd on unbind or hot removal, or the caller's stop
//! flag): stop new leases and submissions; revoke CPU access; wait for every command in
//! flight to complete, until a deadline after which the controllers are disabled so DMA
//! stops; only then unmap from the IOMMU, return the ranges and close the devices. Every
//! step is logged with its time since the request.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::driver::{Controller, DriverError};
use crate::nvme::cmd::Cqe;
use crate::pool::{BarPool, InFlight, Lease, PoolError};
use crate::vfio::{IommuMapping, Mmio, RequestFd};

/// What to copy.
#[derive(Debug, Clone, Copy)]
pub struct CopySpec {
    /// Index of the source controller in the session.
    pub src: usize,
    /// Source namespace.
    pub src_nsid: u32,
    /// Index of the destination controller.
    pub dst: usize,
    /// Destination namespace.
    pub dst_nsid: u32,
    /// Byte offset (same on both).
    pub offset: u64,
    /// Bytes to copy.
    pub length: u64,
    /// Bytes per command (at most the controllers' MDTS).
    pub chunk: u64,
    /// Chunks in flight at once.
    pub depth: usize,
    /// Logical block size (both namespaces).
    pub block: u64,
}

/// One logged step of a revocation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    /// Milliseconds since the revocation began.
    pub at_ms: f64,
    /// What was done.
    pub what: String,
}

/// Why a copy stopped early.
#[derive(Debug, thiserror::Error)]
pub enum CopyStop {
    /// The kernel asked for a device back (unbind or removal) or the caller stopped.
    #[error("the device memory was revoked: {why}")]
    Revoked {
        /// Which device, how.
        why: String,
    },
    /// A command failed or timed out.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// The pool refused.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// What a copy did.
#[derive(Debug)]
pub struct CopyOutcome {
    /// Destination byte ranges whose Write completed successfully, merged, sorted.
    pub written: Vec<(u64, u64)>,
    /// Destination ranges with a Write submitted whose completion never came (the
    /// controller was disabled): they may hold part of the data.
    pub uncertain: Vec<(u64, u64)>,
    /// Wall time of the data movement.
    pub elapsed: Duration,
    /// Why it stopped early, if it did.
    pub stop: Option<CopyStop>,
    /// The revocation's steps, if one ran.
    pub revocation: Vec<Step>,
}

enum Slot {
    Idle,
    Reading { chunk: u64, len: u64, cmd: InFlight },
    Writing { chunk: u64, len: u64, cmd: InFlight },
}

/// Devices, pool and mappings of one VFIO copy, torn down in the order the thread gives.
pub struct Session {
    /// The controllers (source and destination; one if both are the same).
    pub controllers: Vec<Controller>,
    /// The pool the data moves through.
    pub pool: BarPool,
    /// The pool's BAR mapped into the IOMMU.
    pub pool_mapping: Option<IommuMapping>,
    /// A provider device that is not one of the controllers (its VFIO handle).
    pub provider: Option<crate::vfio::Device>,
    /// Request eventfds, with the name of their device.
    pub requests: Vec<(String, RequestFd)>,
    /// Time a command may take before the copy gives up on it.
    pub command_deadline: Duration,
    /// Time revocation waits for commands in flight before disabling the controllers.
    pub drain_deadline: Duration,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("pool", &self.pool).finish()
    }
}

fn merge(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

impl Session {
    fn requested(&self) -> Option<String> {
        self.requests
            .iter()
            .find(|(_, fd)| fd.requested())
            .map(|(name, _)| format!("the kernel asked for {name} back (unbind or removal)"))
    }

    fn reap_all(&mut self, out: &mut Vec<(usize, Cqe)>) -> Result<(), DriverError> {
        let mut buf = Vec::new();
        for (i, c) in self.controllers.iter_mut().enumerate() {
            buf.clear();
            c.reap(&mut buf)?;
            out.extend(buf.iter().map(|cqe| (i, *cqe)));
        }
        Ok(())
    }

    /// Copies `spec` through leases of the pool. `stop` is polled between completions:
    /// returning true starts the revocation as a device request would.
    pub fn copy(&mut self, spec: &CopySpec, stop: &mut dyn FnMut() -> bool) -> CopyOutcome {
        let started = Instant::now();
        let mut written = Vec::new();
        let chunks = spec.length.div_ceil(spec.chunk);
        let mut leases: Vec<Lease> = Vec::new();
        let mut stop_reason: Option<CopyStop> = None;
        for _ in 0..spec.depth.max(1) {
            match self.pool.lease(spec.chunk) {
                Ok(l) => leases.push(l),
                Err(e) if leases.is_empty() => {
                    stop_reason = Some(e.into());
                    break;
                }
                Err(_) => break,
            }
        }
        let mut slots: Vec<Slot> = leases.iter().map(|_| Slot::Idle).collect();
        let mut owner: HashMap<(usize, u16), usize> = HashMap::new();
        let mut next = 0u64;
        let mut last_progress = Instant::now();
        let mut cqes = Vec::new();
        let mut revoke_why = None;
        while stop_reason.is_none() {
            // Submit reads into idle slots.
            for (i, slot) in slots.iter_mut().enumerate() {
                if next >= chunks || !matches!(slot, Slot::Idle) {
                    continue;
                }
                let off = spec.offset + next * spec.chunk;
                let len = spec.chunk.min(spec.offset + spec.length - off);
                let cmd = match leases[i].submit() {
                    Ok(c) => c,
                    Err(e) => {
                        stop_reason = Some(e.into());
                        break;
                    }
                };
                match self.controllers[spec.src].submit_rw(
                    false,
                    spec.src_nsid,
                    off / spec.block,
                    (len / spec.block) as u32,
                    leases[i].iova(),
                    len,
                ) {
                    Ok(cid) => {
                        owner.insert((spec.src, cid), i);
                        *slot = Slot::Reading {
                            chunk: next,
                            len,
                            cmd,
                        };
                        next += 1;
                    }
                    Err(e) => {
                        cmd.complete(); // never reached the device
                        stop_reason = Some(e.into());
                        break;
                    }
                }
            }
            if stop_reason.is_some() {
                break;
            }
            if next >= chunks && slots.iter().all(|s| matches!(s, Slot::Idle)) {
                break;
            }
            cqes.clear();
            if let Err(e) = self.reap_all(&mut cqes) {
                stop_reason = Some(e.into());
                break;
            }
            // Map every completion to its slot before submitting anything: a new command
            // may reuse the command id of a completion reaped in this same batch.
            let done: Vec<(usize, usize, Cqe)> = cqes
                .iter()
                .filter_map(|&(ctrl, cqe)| owner.remove(&(ctrl, cqe.cid())).map(|i| (i, ctrl, cqe)))
                .collect();
            for (i, ctrl, cqe) in done {
                match std::mem::replace(&mut slots[i], Slot::Idle) {
                    Slot::Reading { chunk, len, cmd } => {
                        cmd.complete();
                        if !cqe.status().is_success() {
                            stop_reason = Some(
                                DriverError::Command {
                                    bdf: self.controllers[ctrl].bdf(),
                                    what: format!(
                                        "Read of {len} bytes at {} into the pool",
                                        spec.offset + chunk * spec.chunk
                                    ),
                                    status: cqe.status(),
                                }
                                .into(),
                            );
                            continue;
                        }
                        if stop_reason.is_some() || revoke_why.is_some() {
                            continue;
                        }
                        let off = spec.offset + chunk * spec.chunk;
                        let cmd = match leases[i].submit() {
                            Ok(c) => c,
                            Err(e) => {
                                stop_reason = Some(e.into());
                                continue;
                            }
                        };
                        match self.controllers[spec.dst].submit_rw(
                            true,
                            spec.dst_nsid,
                            off / spec.block,
                            (len / spec.block) as u32,
                            leases[i].iova(),
                            len,
                        ) {
                            Ok(cid) => {
                                owner.insert((spec.dst, cid), i);
                                slots[i] = Slot::Writing { chunk, len, cmd };
                            }
                            Err(e) => {
                                cmd.complete();
                                stop_reason = Some(e.into());
                            }
                        }
                    }
                    Slot::Writing { chunk, len, cmd } => {
                        cmd.complete();
                        let off = spec.offset + chunk * spec.chunk;
                        if cqe.status().is_success() {
                            written.push((off, off + len));
                        } else {
                            stop_reason = Some(
                                DriverError::Command {
                                    bdf: self.controllers[ctrl].bdf(),
                                    what: format!("Write of {len} bytes at {off} from the pool"),
                                    status: cqe.status(),
                                }
                                .into(),
                            );
                        }
                    }
                    Slot::Idle => {}
                }
            }
            if revoke_why.is_none() {
                revoke_why = self
                    .requested()
                    .or_else(|| stop().then(|| "stopped by the caller".to_owned()));
                if let Some(why) = &revoke_why {
                    stop_reason = Some(CopyStop::Revoked { why: why.clone() });
                }
            }
            // A stall, not a slow queue: commands queued behind others wait their turn, so
            // the deadline runs from the last completion of any command.
            if !cqes.is_empty() {
                last_progress = Instant::now();
            } else if slots.iter().any(|s| !matches!(s, Slot::Idle))
                && last_progress.elapsed() > self.command_deadline
            {
                let ctrl = if slots.iter().any(|s| matches!(s, Slot::Writing { .. })) {
                    spec.dst
                } else {
                    spec.src
                };
                stop_reason.get_or_insert(CopyStop::Driver(DriverError::CommandTimeout {
                    bdf: self.controllers[ctrl].bdf(),
                    what: "the copy's commands (none completed)".into(),
                    ms: self.command_deadline.as_millis() as u64,
                }));
            }
            if cqes.is_empty() {
                std::hint::spin_loop();
            }
        }
        let elapsed = started.elapsed();
        let mut revocation = Vec::new();
        let mut uncertain = Vec::new();
        if stop_reason.is_some() {
            // Drain: nothing new; wait for the commands in flight, then (deadline) disable.
            let t0 = Instant::now();
            let mut log = |what: String| {
                revocation.push(Step {
                    at_ms: t0.elapsed().as_secs_f64() * 1000.0,
                    what,
                })
            };
            let _ = self.pool.stop();
            log("stopped new leases and submissions".into());
            match self.pool.revoke_cpu() {
                Ok(()) => log("revoked CPU access to the pool (mapping replaced)".into()),
                Err(e) => log(format!("revoking CPU access failed: {e}")),
            }
            let deadline = Instant::now() + self.drain_deadline;
            while slots.iter().any(|s| !matches!(s, Slot::Idle)) && Instant::now() < deadline {
                cqes.clear();
                if self.reap_all(&mut cqes).is_err() {
                    break;
                }
                for &(ctrl, cqe) in &cqes {
                    let Some(i) = owner.remove(&(ctrl, cqe.cid())) else {
                        continue;
                    };
                    match std::mem::replace(&mut slots[i], Slot::Idle) {
                        Slot::Reading { cmd, .. } => cmd.complete(),
                        Slot::Writing { chunk, len, cmd } => {
                            cmd.complete();
                            let off = spec.offset + chunk * spec.chunk;
                            if cqe.status().is_success() {
                                written.push((off, off + len));
                            }
                        }
                        Slot::Idle => {}
                    }
                }
            }
            let left = slots.iter().filter(|s| !matches!(s, Slot::Idle)).count();
            if left == 0 {
                log("every command in flight completed".into());
            } else {
                log(format!(
                    "{left} command(s) still in flight after {} ms: disabling the controllers",
                    self.drain_deadline.as_millis()
                ));
                for c in &self.controllers {
                    match c.disable() {
                        Ok(()) => log(format!(
                            "controller {} disabled (CC.EN = 0, CSTS.RDY = 0)",
                            c.bdf()
                        )),
                        Err(e) => log(format!("controller {}: {e}", c.bdf())),
                    }
                }
                for (i, slot) in slots.iter_mut().enumerate() {
                    if let Slot::Writing { chunk, len, .. } = slot {
                        let off = spec.offset + *chunk * spec.chunk;
                        uncertain.push((off, off + *len));
                    }
                    // Dropping the InFlight abandons it: the range stays until quiesced.
                    let _ = i;
                    *slot = Slot::Idle;
                }
            }
            match self.pool.quiesced() {
                Ok(()) => log("no DMA in flight: pool quiesced".into()),
                Err(e) => log(format!("quiesce: {e}")),
            }
            drop(leases);
            match self.pool.close() {
                Ok(()) => log("ranges returned, pool closed".into()),
                Err(e) => log(format!("close: {e}")),
            }
            if let Some(mut m) = self.pool_mapping.take() {
                match m.unmap() {
                    Ok(()) => log(format!("pool unmapped from the IOMMU at {:#x}", m.iova())),
                    Err(e) => log(format!("IOMMU unmap: {e}")),
                }
            }
            let names: Vec<String> = self
                .controllers
                .iter()
                .map(|c| c.bdf().to_string())
                .collect();
            self.requests.clear();
            self.controllers.clear();
            self.provider = None;
            log(format!("devices closed ({})", names.join(", ")));
        }
        CopyOutcome {
            written: merge(written),
            uncertain: merge(uncertain),
            elapsed,
            stop: stop_reason,
            revocation,
        }
    }

    /// xxh3-128 of `length` bytes at `offset` of namespace `nsid` on controller `ctrl`,
    /// read through `buffer` (host memory mapped into the IOMMU).
    pub fn digest(
        &mut self,
        (ctrl, nsid): (usize, u32),
        (offset, length): (u64, u64),
        block: u64,
        buffer: &IommuMapping,
    ) -> Result<u128, DriverError> {
        let buffer_iova = buffer.iova();
        let buffer: &Mmio = buffer.memory();
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let chunk = (buffer.len() as u64).min(self.controllers[ctrl].max_transfer() as u64);
        let mut data = vec![0u8; chunk as usize];
        let mut off = offset;
        let c = &mut self.controllers[ctrl];
        let mut cqes = Vec::new();
        while off < offset + length {
            let len = chunk.min(offset + length - off);
            let cid = c.submit_rw(
                false,
                nsid,
                off / block,
                (len / block) as u32,
                buffer_iova,
                len,
            )?;
            let t = Instant::now();
            let cqe = loop {
                cqes.clear();
                c.reap(&mut cqes)?;
                if let Some(q) = cqes.iter().find(|q| q.cid() == cid) {
                    break *q;
                }
                if t.elapsed() > self.command_deadline {
                    return Err(DriverError::CommandTimeout {
                        bdf: c.bdf(),
                        what: format!("verification Read at {off}"),
                        ms: self.command_deadline.as_millis() as u64,
                    });
                }
            };
            if !cqe.status().is_success() {
                return Err(DriverError::Command {
                    bdf: c.bdf(),
                    what: format!("verification Read of {len} bytes at {off}"),
                    status: cqe.status(),
                });
            }
            buffer.read_bytes(0, &mut data[..len as usize]);
            hasher.update(&data[..len as usize]);
            off += len;
        }
        Ok(hasher.digest128())
    }
}

#[cfg(test)]
mod tests {
    use super::merge;

    #[test]
    fn written_ranges_merge_when_adjacent_or_overlapping() {
        assert_eq!(
            merge(vec![(8, 12), (0, 4), (4, 8), (20, 24)]),
            vec![(0, 12), (20, 24)]
        );
        assert!(merge(vec![]).is_empty());
    }
}
