//! Namespace-to-namespace copies through a leased BAR range (a CMB, or any memory BAR),
//! with the revocation sequence of the seed thread when the device must go.
//!
//! The copy is the kernel path's pipeline ([`p2pdma::copy::engine::run_pipeline`]: depth
//! per direction, write after read, exact written ranges, error meaning) over
//! `NvmeBackend`, an [`IoBackend`] whose buffers are leases of the pool: a read of the
//! source is an NVMe Read whose data pointer is the lease's IOVA, a write to the
//! destination an NVMe Write from it, on the controllers' I/O queue pairs, completions
//! polled. The data never crosses host memory.
//!
//! Revocation (device request eventfd on unbind or hot removal, the caller's stop flag, a
//! failed or stalled command): stop new leases and submissions; revoke CPU access; wait
//! for every command in flight to complete, until a deadline after which the controllers
//! are disabled so DMA stops; only then unmap from the IOMMU, return the ranges and close
//! the devices. Every step is logged with its time since the first.
// Only to implement the unsafe `IoBackend::push` (no unsafe block of its own): the
// pipeline keeps each lease alive and untouched until its command's completion is reaped.
#![allow(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use p2pdma::copy::backend::{Completion, DmaBuffer, IoBackend, IoRequest, Reap};
use p2pdma::copy::engine::{buffers_wanted, run_pipeline, Direction, EngineError, Op};
use p2pdma::copy::plan::CopyPlan;

use crate::driver::{Controller, DriverError};
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
    /// The copy pipeline stopped for a reason no NVMe command or device gave (its
    /// buffers, a request it could not carry out).
    #[error("the copy pipeline stopped")]
    Engine(#[source] EngineError),
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
    /// Copies `spec` through leases of the pool, over [`run_pipeline`]. `stop` is polled
    /// between completions: returning true starts the revocation as a device request would.
    pub fn copy(&mut self, spec: &CopySpec, stop: &mut dyn FnMut() -> bool) -> CopyOutcome {
        let started = Instant::now();
        let plan = CopyPlan {
            src_offset: spec.offset,
            dst_offset: spec.offset,
            length: spec.length,
            chunk_size: spec.chunk,
            queue_depth: u32::try_from(spec.depth.max(1)).unwrap_or(u32::MAX),
            block_size: spec.block,
            grows_destination: false,
        };
        let mut watch = Watch::default();
        let mut leases = Vec::new();
        for _ in 0..buffers_wanted(Direction::Copy, &plan) {
            match self.pool.lease(spec.chunk) {
                Ok(l) => leases.push(l),
                Err(e) if leases.is_empty() => {
                    watch.reason = Some(e.into());
                    break;
                }
                // Fewer buffers than the depth asks for: the pipeline runs on what it has.
                Err(_) => break,
            }
        }
        let mut written = Vec::new();
        if !leases.is_empty() {
            let names = [
                format!("{}/{}", self.controllers[spec.src].bdf(), spec.src_nsid),
                format!("{}/{}", self.controllers[spec.dst].bdf(), spec.dst_nsid),
            ];
            let backend = NvmeBackend {
                controllers: &mut self.controllers,
                pool: &self.pool,
                requests: &self.requests,
                stop,
                ends: [(spec.src, spec.src_nsid), (spec.dst, spec.dst_nsid)],
                block: spec.block,
                command_deadline: self.command_deadline,
                drain_deadline: self.drain_deadline,
                pending: VecDeque::new(),
                in_flight: HashMap::new(),
                last_progress: Instant::now(),
                watch: &mut watch,
            };
            let result = run_pipeline(
                Direction::Copy,
                backend,
                [Path::new(&names[0]), Path::new(&names[1])],
                &plan,
                leases,
                &mut |_| {},
            );
            match result {
                Ok(_) => written.push((spec.offset, spec.offset + spec.length)),
                Err(
                    EngineError::Stopped { written: w, .. }
                    | EngineError::RingFailed { written: w, .. }
                    | EngineError::Stalled { written: w, .. },
                ) if watch.reason.is_some() => {
                    written.extend(w.ranges.ranges().iter().map(|r| (r.start, r.end)));
                }
                Err(e) => {
                    if let EngineError::Stopped { written: w, .. }
                    | EngineError::RingFailed { written: w, .. }
                    | EngineError::Stalled { written: w, .. } = &e
                    {
                        written.extend(w.ranges.ranges().iter().map(|r| (r.start, r.end)));
                    }
                    watch.reason.get_or_insert(CopyStop::Engine(e));
                }
            }
        }
        let elapsed = started.elapsed();
        if watch.reason.is_some() {
            self.tear_down(&mut watch);
        }
        CopyOutcome {
            written: merge(written),
            uncertain: merge(watch.uncertain),
            elapsed,
            stop: watch.reason,
            revocation: watch.steps,
        }
    }

    /// The rest of the revocation once the pipeline is gone (every command completed, or
    /// the controllers disabled): quiesce, return the ranges, unmap from the IOMMU, close.
    fn tear_down(&mut self, watch: &mut Watch) {
        // Usually begun by the backend; not when the pipeline could not start.
        watch.begin(&self.pool);
        if !watch.disabled && !watch.drained {
            watch.log("every command in flight completed".into());
        }
        match self.pool.quiesced() {
            Ok(()) => watch.log("no DMA in flight: pool quiesced".into()),
            Err(e) => watch.log(format!("quiesce: {e}")),
        }
        match self.pool.close() {
            Ok(()) => watch.log("ranges returned, pool closed".into()),
            Err(e) => watch.log(format!("close: {e}")),
        }
        if let Some(mut m) = self.pool_mapping.take() {
            match m.unmap() {
                Ok(()) => watch.log(format!("pool unmapped from the IOMMU at {:#x}", m.iova())),
                Err(e) => watch.log(format!("IOMMU unmap: {e}")),
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
        watch.log(format!("devices closed ({})", names.join(", ")));
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

/// Why the copy stopped and what the revocation did, filled in by the backend while the
/// pipeline runs and by [`Session`] after it.
#[derive(Default)]
struct Watch {
    /// The first reason (a device request replaces a driver error: it says more).
    reason: Option<CopyStop>,
    /// When the revocation began.
    began: Option<Instant>,
    steps: Vec<Step>,
    /// Destination ranges of Writes cut off by disabling the controllers.
    uncertain: Vec<(u64, u64)>,
    /// The controllers were disabled with commands in flight.
    disabled: bool,
    /// Every command in flight completed after the revocation began (logged).
    drained: bool,
}

impl Watch {
    fn log(&mut self, what: String) {
        let t0 = *self.began.get_or_insert_with(Instant::now);
        self.steps.push(Step {
            at_ms: t0.elapsed().as_secs_f64() * 1000.0,
            what,
        });
    }

    /// Revocation steps 1 and 2, once: no new leases or submissions, no CPU access.
    fn begin(&mut self, pool: &BarPool) {
        if self.began.is_some() {
            return;
        }
        self.began = Some(Instant::now());
        match pool.stop() {
            Ok(()) => self.log("stopped new leases and submissions".into()),
            Err(e) => self.log(format!("stopping new leases and submissions failed: {e}")),
        }
        match pool.revoke_cpu() {
            Ok(()) => self.log("revoked CPU access to the pool (mapping replaced)".into()),
            Err(e) => self.log(format!("revoking CPU access failed: {e}")),
        }
    }
}

/// A lease as a pipeline buffer: device memory, live until its CPU mapping is revoked.
impl DmaBuffer for Lease {
    fn dma_len(&self) -> usize {
        usize::try_from(self.len()).unwrap_or(usize::MAX)
    }

    fn is_device_memory(&self) -> bool {
        true
    }

    fn is_live(&self) -> bool {
        Lease::is_live(self)
    }
}

/// A request pushed but not yet on an I/O queue.
struct Pending {
    request: IoRequest,
    /// IOVA of the request's first buffer byte.
    iova: u64,
    /// The lease's in-flight mark, taken at push; `None` when the pool refused it
    /// (revocation began), and then the request never reaches the device.
    cmd: Option<InFlight>,
}

/// A command on an I/O queue, and the mark that keeps its range out of the pool.
struct Submitted {
    request: IoRequest,
    cmd: InFlight,
}

/// The pipeline's requests as NVMe commands on the controllers' I/O queues: buffers are
/// leases named by IOVA, reads and writes are NVMe Read and Write commands whose PRPs name
/// the lease, completions are polled. A command names its lease's range from just before
/// the doorbell until its completion is reaped ([`InFlight`]), so the lease table never
/// returns that range to the pool meanwhile. Device requests, a failed status, a stall or a
/// vanished controller begin the revocation; commands still in flight at the drain
/// deadline are cut off by disabling the controllers and complete with `ETIMEDOUT`
/// (their Writes are reported as uncertain).
struct NvmeBackend<'a> {
    controllers: &'a mut [Controller],
    pool: &'a BarPool,
    requests: &'a [(String, RequestFd)],
    stop: &'a mut dyn FnMut() -> bool,
    /// (controller index, namespace) of the source and of the destination.
    ends: [(usize, u32); 2],
    block: u64,
    command_deadline: Duration,
    drain_deadline: Duration,
    pending: VecDeque<Pending>,
    in_flight: HashMap<(usize, u16), Submitted>,
    last_progress: Instant,
    watch: &'a mut Watch,
}

/// The error of a request the device never saw because the pool was being revoked.
fn refused(tag: u64) -> Completion {
    Completion {
        tag,
        result: Err(io::Error::from_raw_os_error(libc::ENODEV)),
    }
}

impl NvmeBackend<'_> {
    fn begin_stop(&mut self, reason: CopyStop) {
        if self.watch.reason.is_none() {
            self.watch.reason = Some(reason);
        }
        self.watch.begin(self.pool);
    }

    /// Device requests (unbind, removal) and the caller's stop flag.
    fn check_requests(&mut self) {
        if matches!(self.watch.reason, Some(CopyStop::Revoked { .. })) {
            return;
        }
        let why = self
            .requests
            .iter()
            .find(|(_, fd)| fd.requested())
            .map(|(name, _)| format!("the kernel asked for {name} back (unbind or removal)"))
            .or_else(|| (self.stop)().then(|| "stopped by the caller".to_owned()));
        if let Some(why) = why {
            self.watch.reason = Some(CopyStop::Revoked { why });
            self.watch.begin(self.pool);
        }
    }

    /// Puts pending requests on the I/O queues (or, once revocation began, fails them
    /// without the device seeing them).
    fn submit_pending(&mut self, out: &mut Vec<Completion>) {
        while let Some(Pending { request, iova, cmd }) = self.pending.pop_front() {
            let cmd = match cmd {
                Some(cmd) if self.watch.began.is_none() => cmd,
                Some(cmd) => {
                    cmd.complete(); // never reached the device
                    out.push(refused(request.tag));
                    continue;
                }
                None => {
                    out.push(refused(request.tag));
                    continue;
                }
            };
            let (ctrl, nsid) = self.ends[request.target as usize];
            let len = u64::from(request.len);
            match self.controllers[ctrl].submit_rw(
                request.op == Op::Write,
                nsid,
                request.offset / self.block,
                // A request is at most one chunk, itself at most the controllers' MDTS.
                u32::try_from(len / self.block).unwrap_or(u32::MAX),
                iova,
                len,
            ) {
                Ok(cid) => {
                    self.in_flight
                        .insert((ctrl, cid), Submitted { request, cmd });
                }
                Err(DriverError::QueueFull { .. }) => {
                    // Room comes back with the next completion.
                    self.pending.push_front(Pending {
                        request,
                        iova,
                        cmd: Some(cmd),
                    });
                    break;
                }
                Err(e) => {
                    cmd.complete(); // never reached the device
                    out.push(Completion {
                        tag: request.tag,
                        result: Err(io::Error::from_raw_os_error(libc::EIO)),
                    });
                    self.begin_stop(e.into());
                }
            }
        }
    }

    /// Reaps what every controller completed.
    fn poll(&mut self, out: &mut Vec<Completion>) {
        let mut failures: Vec<CopyStop> = Vec::new();
        let mut cqes = Vec::new();
        for ctrl in 0..self.controllers.len() {
            cqes.clear();
            if let Err(e) = self.controllers[ctrl].reap(&mut cqes) {
                failures.push(e.into());
            }
            for cqe in &cqes {
                let Some(Submitted { request, cmd }) = self.in_flight.remove(&(ctrl, cqe.cid()))
                else {
                    continue;
                };
                cmd.complete();
                let result = if cqe.status().is_success() {
                    Ok(request.len as usize)
                } else {
                    let what = match request.op {
                        Op::Read => format!(
                            "Read of {} bytes at {} into the pool",
                            request.len, request.offset
                        ),
                        Op::Write => format!(
                            "Write of {} bytes at {} from the pool",
                            request.len, request.offset
                        ),
                    };
                    failures.push(
                        DriverError::Command {
                            bdf: self.controllers[ctrl].bdf(),
                            what,
                            status: cqe.status(),
                        }
                        .into(),
                    );
                    Err(io::Error::from_raw_os_error(libc::EIO))
                };
                out.push(Completion {
                    tag: request.tag,
                    result,
                });
            }
        }
        for f in failures {
            self.begin_stop(f);
        }
    }

    /// The drain deadline passed: disable the controllers so DMA stops, then complete
    /// what was in flight as cut off.
    fn cut_off(&mut self, out: &mut Vec<Completion>) {
        self.watch.log(format!(
            "{} command(s) still in flight after {} ms: disabling the controllers",
            self.in_flight.len(),
            self.drain_deadline.as_millis()
        ));
        for c in self.controllers.iter() {
            match c.disable() {
                Ok(()) => self.watch.log(format!(
                    "controller {} disabled (CC.EN = 0, CSTS.RDY = 0)",
                    c.bdf()
                )),
                Err(e) => self.watch.log(format!("controller {}: {e}", c.bdf())),
            }
        }
        self.watch.disabled = true;
        for (_, Submitted { request, cmd }) in self.in_flight.drain() {
            if request.op == Op::Write {
                let end = request.offset + u64::from(request.len);
                self.watch.uncertain.push((request.offset, end));
            }
            // Abandoned, not completed: its range stays out of the pool until quiesced.
            drop(cmd);
            out.push(Completion {
                tag: request.tag,
                result: Err(io::Error::from_raw_os_error(libc::ETIMEDOUT)),
            });
        }
    }
}

impl IoBackend for NvmeBackend<'_> {
    type Buffer = Lease;

    /// # Safety
    /// As [`IoBackend::push`]: the lease outlives the command. The lease table's mark
    /// ([`InFlight`]) also keeps its range out of the pool until the completion is reaped.
    unsafe fn push(&mut self, request: &IoRequest, buffer: &Lease) -> bool {
        // Two directions of `depth` at most; the I/O queues push back with QueueFull.
        self.pending.push_back(Pending {
            request: *request,
            iova: buffer.iova() + request.buf_offset as u64,
            cmd: buffer.submit().ok(),
        });
        true
    }

    fn reap(&mut self, wait: Reap, out: &mut Vec<Completion>) -> io::Result<()> {
        let before = out.len();
        loop {
            self.check_requests();
            self.submit_pending(out);
            self.poll(out);
            let now = Instant::now();
            if out.len() > before {
                self.last_progress = now;
            }
            if !self.in_flight.is_empty() {
                match self.watch.began {
                    Some(began) if now >= began + self.drain_deadline => self.cut_off(out),
                    Some(_) => {}
                    // A stall, not a slow queue: commands queued behind others wait their
                    // turn, so the deadline runs from the last completion of any command.
                    None if now - self.last_progress > self.command_deadline => {
                        let ctrl = if self.in_flight.values().any(|s| s.request.op == Op::Write) {
                            self.ends[1].0
                        } else {
                            self.ends[0].0
                        };
                        let bdf = self.controllers[ctrl].bdf();
                        let ms = self.command_deadline.as_millis() as u64;
                        self.begin_stop(CopyStop::Driver(DriverError::CommandTimeout {
                            bdf,
                            what: "the copy's commands (none completed)".into(),
                            ms,
                        }));
                    }
                    None => {}
                }
            }
            if self.watch.began.is_some()
                && self.in_flight.is_empty()
                && !self.watch.disabled
                && !self.watch.drained
            {
                self.watch.drained = true;
                self.watch.log("every command in flight completed".into());
            }
            let done = out.len() > before
                || self.in_flight.is_empty()
                || match wait {
                    Reap::NoWait => true,
                    Reap::Wait => false,
                    Reap::Until(t) => now >= t,
                };
            if done {
                return Ok(());
            }
            std::hint::spin_loop();
        }
    }

    fn discard_unsubmitted(&mut self) -> Vec<u64> {
        self.pending
            .drain(..)
            .map(|p| {
                if let Some(cmd) = p.cmd {
                    cmd.complete(); // never reached the device
                }
                p.request.tag
            })
            .collect()
    }

    fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

impl Drop for NvmeBackend<'_> {
    fn drop(&mut self) {
        // Requests the device never saw release their marks; commands still on a queue
        // (only if the pipeline could not drain) stay abandoned until quiesced.
        self.discard_unsubmitted();
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
