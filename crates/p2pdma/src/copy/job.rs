//! A whole copy in one call: what `p2pdma copy` does, for any library user.
//!
//! [`prepare`] inspects both endpoints, validates the plan (sizes, alignment, bounds,
//! overlap, a destination that is not mounted, held or read-only) and decides the route
//! (provider, topology verdicts, bounce or not), touching nothing: that is a dry run.
//! [`run`] does the same, then allocates the buffers (before opening or creating
//! anything), opens the files, runs the engine, flushes the destination and, if asked,
//! verifies; a [`CopyObserver`] hears about the route and the progress. Errors are typed
//! ([`CopyError`]); an engine failure keeps the route and the plan, and offers the advice
//! the CLI prints ([`EngineFailure::advice`]).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::endpoint::{self, EndpointError, Inspected, Role};
use super::engine::{self, Direction, Endpoint, EngineError, EngineReport, FailureKind};
use super::host_buffer::{HostBuffer, HostBufferError};
use super::p2p_buffer::P2pSlot;
use super::plan::{self, CopyPlan, CopyRequest, EndpointKind, HumanBytes, PlanError};
use super::route::{self, Bounce, Mode, Route, RouteError, Side};
use super::verify::{self, Verification, VerifyError};
use crate::host::HostFacts;
use crate::kernel_rules::RuleChoice;
use crate::p2pmem::{P2pmemError, Provider};
use crate::pci::PciTree;
use crate::sysfs::{SysfsError, SysfsRoot};
use crate::Bdf;

/// A copy to carry out, as the user asked for it (checked by [`prepare`]).
#[derive(Debug, Clone)]
pub struct CopyJob {
    /// Source: a block device or a regular file.
    pub src: PathBuf,
    /// Destination: a block device or a regular file.
    pub dst: PathBuf,
    /// Offsets, length, chunking, depth, `force`.
    pub request: CopyRequest,
    /// When to go through host memory.
    pub bounce: Bounce,
    /// The p2pmem provider asked for, if any.
    pub provider: Option<Bdf>,
    /// The whole copy, or one half of it (a benchmark).
    pub direction: Direction,
    /// Re-read both ranges afterwards and compare.
    pub verify: bool,
    /// The sysfs root (`/sys`, or a snapshot).
    pub sysfs: SysfsRoot,
    /// Judge the pair by this kernel release's rules instead of the running kernel's.
    pub kernel_release: Option<String>,
    /// Give up when no request completes for this long (the copy and the verification
    /// each fail with a `Stalled` error naming the requests in flight).
    pub io_timeout: Duration,
}

/// A checked copy: everything [`run`] needs, decided before anything is touched.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The source as inspected.
    pub src: Inspected,
    /// The destination as inspected.
    pub dst: Inspected,
    /// The validated plan.
    pub plan: CopyPlan,
    /// The route.
    pub route: Route,
    /// Both endpoints as the route saw them (PCI controller, or why not P2P).
    pub sides: [Side; 2],
    /// The kernel release the pair was judged by.
    pub kernel_release: Option<String>,
}

impl Prepared {
    /// Buffers a full copy would use (P2P: one per chunk in flight, shared by reads and
    /// writes, since p2pmem pools are small; bounce: two per chunk in flight).
    pub fn buffers(&self) -> u64 {
        match self.route.mode {
            Mode::P2p => u64::from(self.plan.queue_depth),
            Mode::Bounce => engine::buffers_wanted(Direction::Copy, &self.plan) as u64,
        }
    }
}

/// A finished copy.
#[derive(Debug)]
pub struct CopyOutcome {
    /// What was checked and decided.
    pub prepared: Prepared,
    /// The engine's counters.
    pub report: EngineReport,
    /// With `verify`: the comparison (which may be a mismatch: check
    /// [`Verification::matched`]) and how long it took.
    pub verification: Option<(Verification, Duration)>,
}

/// Which phase [`CopyObserver::progress`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The copy (bytes written; bytes read for [`Direction::ReadOnly`]).
    Copy,
    /// The verification (bytes compared).
    Verify,
}

/// Hears what [`run`] is doing. Every method has a default that does nothing.
pub trait CopyObserver {
    /// The route was decided; nothing was allocated, opened or written yet.
    fn route_decided(&mut self, prepared: &Prepared) {
        let _ = prepared;
    }
    /// A phase of `total` bytes starts.
    fn phase_started(&mut self, phase: Phase, total: u64) {
        let _ = (phase, total);
    }
    /// `done` bytes of the current phase are done.
    fn progress(&mut self, done: u64) {
        let _ = done;
    }
    /// The current phase ended (successfully or not).
    fn phase_ended(&mut self, phase: Phase) {
        let _ = phase;
    }
}

/// An observer that ignores everything.
impl CopyObserver for () {}

/// Why a copy did not happen or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// An endpoint cannot be inspected or opened.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The plan is refused (nothing was touched).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The PCI tree could not be read, and the route needs it.
    #[error("reading the PCI tree under {} to choose a p2pmem provider (--bounce always needs none)", sysfs.display())]
    Tree {
        /// The sysfs root.
        sysfs: PathBuf,
        /// Why.
        #[source]
        source: SysfsError,
    },
    /// No route (a provider that is not one, no provider at all...).
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The provider cannot be opened, or a buffer was found revoked.
    #[error(transparent)]
    P2pmem(#[from] P2pmemError),
    /// The provider's pool cannot supply the buffers (nothing was opened or created).
    #[error("allocating p2pmem buffer {index} of {count} ({} each) from {provider}{hint}", HumanBytes(*size))]
    Allocate {
        /// 1-based index of the buffer that failed.
        index: u32,
        /// Buffers wanted.
        count: u32,
        /// Bytes each.
        size: u64,
        /// The provider.
        provider: Bdf,
        /// A smaller shape that fits, when the pool ran out.
        hint: String,
        /// Why.
        #[source]
        source: P2pmemError,
    },
    /// No host memory for the bounce buffers.
    #[error("allocating the host bounce buffers")]
    HostBuffers(#[source] HostBufferError),
    /// A P2P route came without a provider (a bug).
    #[error("internal error: a P2P route without a provider")]
    NoProvider,
    /// The engine stopped (see [`EngineFailure`] for what was written and the advice).
    #[error(transparent)]
    Engine(Box<EngineFailure>),
    /// Every write completed, but flushing the destination failed.
    #[error("flushing {} after the copy (every write completed, but the data may not be durable)", path.display())]
    Flush {
        /// The destination.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The verification could not be carried out.
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

/// An engine failure in the terms of the copy it happened in. Displays as the engine's
/// error (and has its causes); [`EngineFailure::advice`] says what it means here.
#[derive(Debug)]
pub struct EngineFailure {
    /// The engine's error: what reached the destination and the first failed request.
    pub error: EngineError,
    /// The route the copy took.
    pub route: Route,
    /// Its plan.
    pub plan: CopyPlan,
    /// What the destination is.
    pub dst_kind: EndpointKind,
    /// When EINVAL on device memory was not taken for a refusal: why (see
    /// [`reinterpret_einval`]).
    pub einval: Option<String>,
}

impl std::fmt::Display for EngineFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for EngineFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.error)
    }
}

impl EngineFailure {
    /// What the first failed request means for this copy, and what to do ("" when the
    /// error says it all).
    pub fn advice(&self) -> String {
        advice(&self.error, &self.route, &self.plan, self.dst_kind)
    }
}

/// Inspects, validates and routes `job`, touching nothing.
pub fn prepare(job: &CopyJob) -> Result<Prepared, CopyError> {
    let src = endpoint::inspect(&job.sysfs, &job.src, Role::Source)?;
    let dst = endpoint::inspect(&job.sysfs, &job.dst, Role::Destination)?;
    let plan = plan::validate(&src.facts, &dst.facts, &job.request)?;
    let (route, sides, kernel_release) = decide_route(
        &job.sysfs,
        job.kernel_release.as_deref(),
        &src,
        &dst,
        job.bounce,
        job.provider,
    )?;
    Ok(Prepared {
        src,
        dst,
        plan,
        route,
        sides,
        kernel_release,
    })
}

/// The PCI tree under `sysfs`, judged as `kernel_release` if given.
pub fn read_tree(sysfs: &SysfsRoot, kernel_release: Option<&str>) -> Result<PciTree, SysfsError> {
    let mut tree = PciTree::read(sysfs)?;
    if let Some(release) = kernel_release {
        tree.host.kernel_release = Some(release.to_owned());
    }
    Ok(tree)
}

/// Decides the route between two inspected endpoints: the PCI side of each, then
/// [`route::decide`] on the tree. Also returns the sides and the kernel release the tree
/// was judged by. A bounce copy, or a pair of which one side cannot do P2P at all, does
/// not need a readable PCI tree.
pub fn decide_route(
    sysfs: &SysfsRoot,
    kernel_release: Option<&str>,
    src: &Inspected,
    dst: &Inspected,
    bounce: Bounce,
    provider: Option<Bdf>,
) -> Result<(Route, [Side; 2], Option<String>), CopyError> {
    let tree = read_tree(sysfs, kernel_release);
    // Queues are judged by the rules the verdict uses: the tree's (or the asked) release.
    let release = match &tree {
        Ok(tree) => tree.host.kernel_release.clone(),
        Err(_) => kernel_release.map(str::to_owned),
    };
    let rules = RuleChoice::for_release(release.as_deref());
    let sides = pci_sides(sysfs, &rules, src, dst);
    let tree = match tree {
        Ok(tree) => tree,
        Err(_) if bounce == Bounce::Always || sides.iter().any(|s| s.not_p2p_because.is_some()) => {
            PciTree::from_parts([], HostFacts::unknown("no PCI tree"))
        }
        Err(source) => {
            return Err(CopyError::Tree {
                sysfs: sysfs.path().to_owned(),
                source,
            })
        }
    };
    let route = route::decide(&tree, &sides[0], &sides[1], bounce, provider)?;
    let release = tree.host.kernel_release.clone();
    Ok((route, sides, release))
}

/// Both endpoints as the route sees them: the NVMe controller each lives on, or why it
/// cannot take part in P2P DMA, their queues judged by `rules`.
pub fn pci_sides(
    sysfs: &SysfsRoot,
    rules: &RuleChoice,
    src: &Inspected,
    dst: &Inspected,
) -> [Side; 2] {
    [
        endpoint::pci_side(sysfs, rules, "source", src),
        endpoint::pci_side(sysfs, rules, "destination", dst),
    ]
}

/// The engine's buffers: device memory for P2P, host memory for a bounce copy.
enum Buffers {
    Device(Vec<P2pSlot>),
    Host(Vec<HostBuffer>),
}

/// Carries out `job`: [`prepare`], then allocate, open, copy, flush and verify, telling
/// `observer` along the way. Nothing is written unless every check passed; a copy that
/// stops part-way returns [`CopyError::Engine`] naming exactly the destination bytes
/// written. A verification mismatch is not an error here: see
/// [`CopyOutcome::verification`].
pub fn run(job: &CopyJob, observer: &mut dyn CopyObserver) -> Result<CopyOutcome, CopyError> {
    let prepared = prepare(job)?;
    observer.route_decided(&prepared);
    execute(job, prepared, observer)
}

/// [`run`] after [`prepare`].
pub fn execute(
    job: &CopyJob,
    prepared: Prepared,
    observer: &mut dyn CopyObserver,
) -> Result<CopyOutcome, CopyError> {
    let plan = prepared.plan;
    let direction = job.direction;
    // Buffers first: if the pool cannot supply them, nothing has been opened or created.
    let buffers = match prepared.route.mode {
        Mode::P2p => Buffers::Device(allocate_p2p(&job.sysfs, &prepared.route, &plan)?),
        Mode::Bounce => Buffers::Host(
            (0..engine::buffers_wanted(direction, &plan))
                .map(|_| HostBuffer::new(plan.chunk_size as usize))
                .collect::<Result<Vec<_>, _>>()
                .map_err(CopyError::HostBuffers)?,
        ),
    };
    let src_file = endpoint::open(&prepared.src.facts, Role::Source)?;
    let dst_file = endpoint::open(&prepared.dst.facts, Role::Destination)?;
    let src_end = Endpoint {
        file: &src_file,
        path: &job.src,
    };
    let dst_end = Endpoint {
        file: &dst_file,
        path: &job.dst,
    };

    observer.phase_started(Phase::Copy, plan.length);
    let mut progress = |n| observer.progress(n);
    let result = match buffers {
        Buffers::Device(b) => engine::run_one_way_within(
            direction,
            src_end,
            dst_end,
            &plan,
            b,
            job.io_timeout,
            &mut progress,
        ),
        Buffers::Host(b) => engine::run_one_way_within(
            direction,
            src_end,
            dst_end,
            &plan,
            b,
            job.io_timeout,
            &mut progress,
        ),
    };
    observer.phase_ended(Phase::Copy);
    let report = match result {
        Ok(report) => report,
        Err(mut error) => {
            let einval = reinterpret_einval(
                &mut error,
                &prepared.route,
                prepared.kernel_release.as_deref(),
            );
            return Err(CopyError::Engine(Box::new(EngineFailure {
                error,
                route: prepared.route,
                plan,
                dst_kind: prepared.dst.facts.kind,
                einval,
            })));
        }
    };
    if direction != Direction::ReadOnly {
        // O_DIRECT writes to a file may leave metadata (a grown size, allocated extents)
        // only in memory, and a device may hold written data in a volatile cache:
        // fdatasync covers both.
        dst_file.sync_data().map_err(|source| CopyError::Flush {
            path: prepared.dst.facts.path.clone(),
            source,
        })?;
    }

    let verification = if job.verify {
        observer.phase_started(Phase::Verify, plan.length);
        let started = Instant::now();
        // Reads both devices take whole stay on the submitting thread (see
        // VerifyShape::within).
        let max_request = [&prepared.src, &prepared.dst]
            .iter()
            .filter_map(|side| side.block_device.as_ref())
            .map(|d| d.max_request_bytes(&job.sysfs))
            .filter(|&bytes| bytes > 0)
            .min();
        let v = verify::verify_within(
            src_end,
            dst_end,
            &plan,
            max_request,
            job.io_timeout,
            &mut |n| observer.progress(n),
        );
        observer.phase_ended(Phase::Verify);
        Some((v?, started.elapsed()))
    } else {
        None
    };
    Ok(CopyOutcome {
        prepared,
        report,
        verification,
    })
}

/// One p2pmem buffer per chunk in flight.
fn allocate_p2p(
    sysfs: &SysfsRoot,
    route: &Route,
    plan: &CopyPlan,
) -> Result<Vec<P2pSlot>, CopyError> {
    let bdf = route.provider.ok_or(CopyError::NoProvider)?;
    let provider = Provider::open(sysfs, bdf)?;
    let mut slots = Vec::with_capacity(plan.queue_depth as usize);
    for i in 0..plan.queue_depth {
        let buffer = provider
            .allocate(plan.chunk_size as usize)
            .map_err(|source| {
                let hint = match &source {
                    P2pmemError::PoolExhausted { available, .. } => {
                        // What the pool could give this copy: what is free now plus the
                        // buffers this copy already holds.
                        let usable = available.unwrap_or(0) + u64::from(i) * plan.chunk_size;
                        let (depth, chunk) = smaller_shape(usable, plan);
                        format!(
                            "; the pool has {} for this copy: try --queue-depth {depth} or --chunk-size {}",
                            HumanBytes(usable),
                            HumanBytes(chunk)
                        )
                    }
                    _ => String::new(),
                };
                CopyError::Allocate {
                    index: i + 1,
                    count: plan.queue_depth,
                    size: plan.chunk_size,
                    provider: bdf,
                    hint,
                    source,
                }
            })?;
        slots.push(P2pSlot::new(buffer)?);
    }
    Ok(slots)
}

/// A queue depth that fits `usable` bytes at the current chunk size, and a chunk size
/// (a power of two, at least one block) that fits it at the current depth.
pub fn smaller_shape(usable: u64, plan: &CopyPlan) -> (u64, u64) {
    let depth = (usable / plan.chunk_size).clamp(1, u64::from(plan.queue_depth));
    let per_buffer = usable / u64::from(plan.queue_depth.max(1));
    let chunk = if per_buffer == 0 {
        plan.block_size
    } else {
        (1u64 << (63 - per_buffer.leading_zeros())).max(plan.block_size)
    };
    (depth, chunk)
}

/// The meaning of the first failed request, in terms of this copy, and what to do.
fn advice(err: &EngineError, route: &Route, plan: &CopyPlan, dst_kind: EndpointKind) -> String {
    match err {
        EngineError::Stopped { failure, .. } => match failure.kind {
            FailureKind::P2pRefused => refusal_advice(route),
            FailureKind::OutOfMemory => format!(
                "the transfer ran out of memory{}; try --chunk-size {} or --queue-depth {}",
                pool_note(route),
                HumanBytes((plan.chunk_size / 2).max(plan.block_size)),
                (plan.queue_depth / 2).max(1)
            ),
            FailureKind::PermissionDenied => {
                "permission denied by the kernel; run as root (opening block devices and p2pmem needs it)".into()
            }
            FailureKind::ProviderGone => format!(
                "the p2pmem provider {} was unbound or removed during the copy; pick another with --provider or use --bounce always",
                route.provider.map_or_else(|| "?".to_owned(), |b| b.to_string())
            ),
            FailureKind::NoSpace => no_space_advice(&failure.path, dst_kind),
            FailureKind::DeviceError => device_error_advice(&failure.path),
            FailureKind::Truncated => format!(
                "{} is shorter than planned (did it shrink during the copy?)",
                failure.path.display()
            ),
            FailureKind::Other => "see the kernel's error below".into(),
        },
        EngineError::Ring { .. } => {
            "io_uring is unavailable (Linux >= 5.6 with io_uring enabled; check /proc/sys/kernel/io_uring_disabled)".into()
        }
        // The stall's own text says what to check and how to allow more time.
        EngineError::BadBuffers { .. }
        | EngineError::Register { .. }
        | EngineError::RingFailed { .. }
        | EngineError::Stalled { .. } => String::new(),
    }
}

/// EIO from a transfer. A block device that is being hot-removed fails its requests with
/// EIO before its node goes away (and with ENOSPC once its capacity is zeroed), so EIO on a
/// block device names removal as well as a failing device, and a node already gone is
/// named as removed.
pub fn device_error_advice(path: &Path) -> String {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => format!(
            "{} reported an I/O error and is gone: it was removed during the copy (check dmesg)",
            path.display()
        ),
        Ok(m) if m.file_type().is_block_device() => format!(
            "{} reported an I/O error: the device is failing or being removed; check dmesg for its error log",
            path.display()
        ),
        _ => format!(
            "{} reported an I/O error; check dmesg for the device's error log",
            path.display()
        ),
    }
}

/// ENOSPC from a write. The plan kept every write inside the destination, so on a block
/// device it means the device shrank under the copy: the kernel zeroes the capacity of a
/// namespace that is being removed, and writes past the end fail with ENOSPC.
pub fn no_space_advice(path: &Path, dst_kind: EndpointKind) -> String {
    if dst_kind == EndpointKind::BlockDevice {
        format!(
            "{} refused a write inside the planned range: the device shrank or was removed during the copy (check dmesg)",
            path.display()
        )
    } else {
        format!(
            "{} is full; free space or copy less (--length)",
            path.display()
        )
    }
}

fn refusal_advice(route: &Route) -> String {
    let why = route
        .why_not
        .clone()
        .or_else(|| {
            let reasons: Vec<String> = route
                .verdicts
                .iter()
                .flat_map(|v| v.reasons.iter().map(ToString::to_string))
                .collect();
            (!reasons.is_empty()).then(|| {
                format!(
                    "the topology verdict expected P2P to work ({}); the kernel's log (dmesg) says why it did not",
                    reasons.join("; ")
                )
            })
        })
        .unwrap_or_else(|| {
            "the topology verdict expected P2P to work; the kernel's log (dmesg) says why it did not".to_owned()
        });
    format!(
        "the kernel refused P2P DMA through {}: {why}; apply the fix, or copy through host memory with --bounce auto (or always), or pick another provider with --provider",
        provider_name(route)
    )
}

fn pool_note(route: &Route) -> String {
    match (route.provider, route.pool) {
        (Some(bdf), Some(pool)) => format!(
            " (the pool of {bdf} had {} of {} free when the copy was planned)",
            HumanBytes(pool.available),
            HumanBytes(pool.size)
        ),
        _ => String::new(),
    }
}

/// "`<BDF>`'s p2pmem", or "host memory" for a route without a provider.
pub fn provider_name(route: &Route) -> String {
    match route.provider {
        Some(bdf) => format!("{bdf}'s p2pmem"),
        None => "host memory".to_owned(),
    }
}

/// The engine reads EINVAL on device memory as a P2P refusal; that holds only on Linux
/// 6.17 and later, for a pair the topology refuses ([`crate::refusal::interpret`]).
/// Otherwise the failure becomes an I/O error, and the reason is returned for the message.
pub fn reinterpret_einval(
    err: &mut EngineError,
    route: &Route,
    kernel_release: Option<&str>,
) -> Option<String> {
    let EngineError::Stopped { failure, .. } = err else {
        return None;
    };
    if failure.kind != FailureKind::P2pRefused
        || failure.source.raw_os_error() != Some(libc::EINVAL)
    {
        return None;
    }
    match crate::refusal::interpret(libc::EINVAL, route.p2p_expected, kernel_release) {
        crate::refusal::Meaning::P2pRefused => None,
        crate::refusal::Meaning::IoError { why } => {
            failure.kind = FailureKind::Other;
            Some(why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hot removal of a destination fails its writes with EIO while its node still
    /// exists: the advice must not read as a plain device fault or a full disk.
    #[test]
    fn eio_on_a_block_device_names_removal_and_a_vanished_node_is_called_removed() {
        let gone = device_error_advice(Path::new("/dev/nvme-that-was-removed-0n1"));
        assert!(gone.contains("was removed during the copy"), "{gone}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dst.dat");
        std::fs::write(&file, b"x").unwrap();
        let plain = device_error_advice(&file);
        assert!(!plain.contains("removed"), "{plain}");
        if let Some(block) = ["/dev/vda", "/dev/sda", "/dev/nvme0n1", "/dev/loop0"]
            .iter()
            .map(Path::new)
            .find(|p| {
                use std::os::unix::fs::FileTypeExt;
                std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device())
            })
        {
            let advice = device_error_advice(block);
            assert!(advice.contains("failing or being removed"), "{advice}");
        }
    }

    #[test]
    fn no_space_on_a_block_device_means_it_went_away_not_that_it_is_full() {
        let advice = no_space_advice(Path::new("/dev/nvme1n1"), EndpointKind::BlockDevice);
        assert!(advice.contains("shrank or was removed"), "{advice}");
        assert!(!advice.contains("is full"), "{advice}");
        let advice = no_space_advice(Path::new("/mnt/b/out.bin"), EndpointKind::RegularFile);
        assert!(advice.contains("/mnt/b/out.bin is full"), "{advice}");
    }

    /// The library refuses what the CLI refuses, before touching anything: an
    /// overlapping range in one file is a plan error, and the destination is unchanged.
    #[test]
    fn run_refuses_an_overlapping_copy_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 + 3) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let job = CopyJob {
            src: path.clone(),
            dst: path.clone(),
            request: CopyRequest {
                src_offset: 0,
                dst_offset: 4096,
                length: Some(64 << 10),
                chunk_size: 64 << 10,
                queue_depth: 2,
                force: false,
            },
            bounce: Bounce::Always,
            provider: None,
            direction: Direction::Copy,
            verify: true,
            sysfs: SysfsRoot::new(dir.path().join("no-sysfs")),
            kernel_release: None,
            io_timeout: crate::copy::pipeline::DEFAULT_IO_TIMEOUT,
        };
        let err = run(&job, &mut ()).unwrap_err();
        assert!(matches!(err, CopyError::Plan(_)), "{err:?}");
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }
}

#[cfg(test)]
pub(crate) mod multipath_tests {
    use super::*;
    use crate::copy::plan::{EndpointFacts, StorageId};
    use crate::sysfs::builder::{FunctionSpec as F, SysfsBuilder};

    /// Two NVMe controllers behind one switch, the first a p2pmem provider with its own
    /// namespace, the second reached only through its native-multipath head `nvme1n1`.
    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut b = SysfsBuilder::new(dir.path()).unwrap();
        b.add(None, "0000:00:00.0", F::host_bridge(0x8086, 0x29c0))
            .unwrap();
        let rp = b.add(None, "0000:00:01.0", F::root_port()).unwrap();
        let up = b
            .add(Some(rp), "0000:01:00.0", F::switch_upstream())
            .unwrap();
        let d1 = b
            .add(Some(up), "0000:02:00.0", F::switch_downstream())
            .unwrap();
        let d2 = b
            .add(Some(up), "0000:02:01.0", F::switch_downstream())
            .unwrap();
        b.add(
            Some(d1),
            "0000:03:00.0",
            F::nvme()
                .p2pmem(16 << 20)
                .nvme_controller("nvme0", "SER0", &["nvme0n1"]),
        )
        .unwrap();
        let mp = b
            .add(
                Some(d2),
                "0000:04:00.0",
                F::nvme().nvme_controller("nvme1", "SER1", &["nvme1c1n1"]),
            )
            .unwrap();
        b.nvme_multipath_head("nvme-subsys1", "nvme1n1", mp, "nvme1")
            .unwrap();
        dir
    }

    pub(crate) fn disk(path: &str) -> Inspected {
        Inspected {
            facts: EndpointFacts {
                path: PathBuf::from(path),
                kind: EndpointKind::BlockDevice,
                storage: StorageId::Unique,
                base: 0,
                size: 1 << 30,
                block_size: 512,
                read_only: false,
                mounted: None,
                holders: Vec::new(),
            },
            block_device: None,
        }
    }

    #[test]
    fn the_route_judges_the_multipath_head_by_the_release_it_is_asked_about() {
        let dir = tree();
        let sysfs = SysfsRoot::new(dir.path());
        let (src, dst) = (disk("/dev/nvme0n1"), disk("/dev/nvme1n1"));

        let e =
            decide_route(&sysfs, Some("6.12.117"), &src, &dst, Bounce::Never, None).unwrap_err();
        let text = crate::display::error_chain(&e);
        assert!(matches!(e, CopyError::Route(_)), "{text}");
        assert!(text.contains("under Linux 6.12 rules"), "{text}");

        let (route, sides, release) =
            decide_route(&sysfs, Some("7.2.13"), &src, &dst, Bounce::Never, None).unwrap();
        assert_eq!(release.as_deref(), Some("7.2.13"));
        assert_eq!(sides[1].not_p2p_because, None);
        assert_eq!(sides[1].controller, Some("0000:04:00.0".parse().unwrap()));
        assert_eq!(route.mode, Mode::P2p);
        assert_eq!(route.provider, Some("0000:03:00.0".parse().unwrap()));
    }
}
