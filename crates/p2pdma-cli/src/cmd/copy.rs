//! `p2pdma copy`: move a range between NVMe devices (or files on them) through device
//! memory.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use p2pdma::copy::endpoint::{self, Inspected, Role};
use p2pdma::copy::plan::{self, HumanBytes, DEFAULT_CHUNK_SIZE, DEFAULT_QUEUE_DEPTH};
use p2pdma::copy::route::{self, Mode, Route, Side};
use p2pdma::copy::EndpointKind;
use p2pdma::copy::{
    engine, verify, CopyPlan, CopyRequest, Direction, Endpoint, EngineError, EngineReport,
    FailureKind, HostBuffer, P2pSlot, Verification,
};
use p2pdma::p2pmem::{P2pmemError, Provider};
use p2pdma::pci::PciTree;
use p2pdma::snapshot::HostFacts;
use p2pdma::sysfs::SysfsRoot;
use p2pdma::topology::MapType;
use p2pdma::Bdf;
use serde::Serialize;

use crate::exit::Kind;
use crate::output::{self, Failure};
use crate::Globals;

/// When to copy through host memory instead of device memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Bounce {
    /// Only P2P: if the topology says the kernel will refuse, the copy is still tried
    /// (nothing is written when it refuses) and fails with the verdict and the fix.
    Never,
    /// P2P when the topology allows it, else through host memory (saying why).
    Auto,
    /// Always through host memory (the baseline P2P is measured against).
    Always,
}

impl From<Bounce> for route::Bounce {
    fn from(b: Bounce) -> Self {
        match b {
            Bounce::Never => route::Bounce::Never,
            Bounce::Auto => route::Bounce::Auto,
            Bounce::Always => route::Bounce::Always,
        }
    }
}

/// The P2P path of a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// The kernel's P2PDMA: p2pmem buffers and O_DIRECT I/O on block devices.
    Kernel,
    /// VFIO: NVMe driven from userspace, data through a CMB or another device's BAR.
    Vfio,
}

/// Arguments of `p2pdma copy`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "SIZE values take k, M, G, T suffixes (binary: 1M = 1048576).\n\
Nothing is written until every check has passed: alignment to both devices' logical \
block size, bounds, overlap, and a destination that is not mounted, held or read-only."
)]
pub struct CopyArgs {
    /// Source: an NVMe block device (/dev/nvme0n1) or a regular file on one.
    pub src: PathBuf,
    /// Destination: an NVMe block device or a regular file on one.
    pub dst: PathBuf,
    /// First byte to read from the source.
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = size)]
    pub src_offset: u64,
    /// First byte to write in the destination.
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = size)]
    pub dst_offset: u64,
    /// Bytes to copy [default: from --src-offset to the end of the source].
    #[arg(long, value_name = "SIZE", value_parser = size)]
    pub length: Option<u64>,
    /// Bytes per chunk: one device-memory buffer, one read, one write.
    #[arg(long, value_name = "SIZE", default_value_t = DEFAULT_CHUNK_SIZE, value_parser = size)]
    pub chunk_size: u64,
    /// Reads and writes in flight, N of each. A bounce copy allocates 2N host buffers so
    /// both directions run at full depth; a P2P copy allocates N device-memory buffers
    /// (p2pmem pools are small), which its reads and writes share.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_QUEUE_DEPTH)]
    pub queue_depth: u32,
    /// Re-read both ranges through host memory and compare xxh3-128 digests.
    #[arg(long)]
    pub verify: bool,
    /// Print a JSON summary (or, with --dry-run, the plan) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Allow growing (or creating) a destination file. Never writes past the end of a
    /// block device, and never into a mounted, held or read-only one.
    #[arg(long)]
    pub force: bool,
    /// Copy through host memory: never, only when P2P is impossible (auto), or always.
    #[arg(long, value_enum, default_value_t = Bounce::Never)]
    pub bounce: Bounce,
    /// The p2pmem provider to allocate buffers from [default: the destination's or the
    /// source's own CMB, else the published provider closest to both].
    #[arg(long, value_name = "BDF")]
    pub provider: Option<Bdf>,
    /// Print the plan (provider, path, verdicts, bottleneck, chunking) and touch nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Benchmark one half of the copy with the same buffers, chunking and queue depth:
    /// only read SRC, or only write the buffers' contents (zeros, or whatever device memory
    /// holds) over DST's range. All the checks of a copy still apply.
    #[arg(long, value_enum, value_name = "HALF", conflicts_with = "verify")]
    pub only: Option<Half>,
    /// Which P2P path: the kernel's P2PDMA (io_uring O_DIRECT on block devices), or VFIO
    /// (controllers bound to vfio-pci with `p2pdma vfio attach`, driven from userspace;
    /// SRC and DST are BDF/NSID, e.g. 0000:03:00.0/1; needs no CONFIG_PCI_P2PDMA).
    #[arg(long, value_enum, default_value_t = Via::Kernel)]
    pub via: Via,
    /// With --via vfio and a --provider that is not one of the controllers: the BAR of
    /// the provider to copy through.
    #[arg(long, value_name = "N", default_value_t = 2, requires = "provider")]
    pub provider_bar: u32,
}

/// One half of a copy, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Half {
    /// Only read the source range.
    Read,
    /// Only write the destination range.
    Write,
}

use super::size;

/// What `--json` prints after a copy.
#[derive(Debug, Serialize)]
struct Summary<'a> {
    src: &'a PathBuf,
    dst: &'a PathBuf,
    src_offset: u64,
    dst_offset: u64,
    bytes: u64,
    seconds: f64,
    /// User + system CPU seconds of the process while the engine ran.
    cpu_seconds: f64,
    throughput_bytes_per_sec: f64,
    mode: Mode,
    provider: Option<Bdf>,
    path: Vec<String>,
    bounce_reason: Option<String>,
    chunk_size: u64,
    queue_depth: u32,
    short_transfers: u64,
    only: Option<Half>,
    verified: Option<bool>,
    verification: Option<Verification>,
    /// Wall time of `--verify` (re-reading and comparing both ranges).
    verify_seconds: Option<f64>,
}

/// The engine's buffers: device memory for P2P, host memory for a bounce copy.
enum Buffers {
    Device(Vec<P2pSlot>),
    Host(Vec<HostBuffer>),
}

/// What `--dry-run` prints.
#[derive(Debug, Serialize)]
struct DryRun<'a> {
    src: &'a Inspected,
    dst: &'a Inspected,
    plan: CopyPlan,
    chunks: u64,
    buffer_bytes: u64,
    route: &'a Route,
}

pub fn run(args: CopyArgs, globals: &Globals) -> anyhow::Result<ExitCode> {
    if args.via == Via::Vfio {
        return super::vfio::copy(&args, args.provider_bar, globals);
    }
    let src = endpoint::inspect(&globals.sysfs, &args.src, Role::Source)?;
    let dst = endpoint::inspect(&globals.sysfs, &args.dst, Role::Destination)?;
    let request = CopyRequest {
        src_offset: args.src_offset,
        dst_offset: args.dst_offset,
        length: args.length,
        chunk_size: args.chunk_size,
        queue_depth: args.queue_depth,
        force: args.force,
    };
    let plan = plan::validate(&src.facts, &dst.facts, &request)?;
    let (route, sides, kernel_release) = decide_route(globals, &args, &src, &dst)?;

    if args.dry_run {
        print_dry_run(&args, &src, &dst, &plan, &route, &sides)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(note) = &route.bounce_reason {
        if !args.json && !globals.quiet && args.bounce != Bounce::Always {
            eprintln!("p2pdma: copying through host memory: {note}");
        }
    }

    let direction = match args.only {
        None => Direction::Copy,
        Some(Half::Read) => Direction::ReadOnly,
        Some(Half::Write) => Direction::WriteOnly,
    };
    // Buffers first: if the pool cannot supply them, nothing has been opened or created.
    let buffers = match route.mode {
        Mode::P2p => Buffers::Device(allocate_p2p(globals, &route, &plan)?),
        Mode::Bounce => Buffers::Host(
            (0..engine::buffers_wanted(direction, &plan))
                .map(|_| HostBuffer::new(plan.chunk_size as usize))
                .collect::<Result<Vec<_>, _>>()
                .context("allocating the host bounce buffers")?,
        ),
    };
    let src_file = endpoint::open(&src.facts, Role::Source)?;
    let dst_file = endpoint::open(&dst.facts, Role::Destination)?;
    let src_end = Endpoint {
        file: &src_file,
        path: &args.src,
    };
    let dst_end = Endpoint {
        file: &dst_file,
        path: &args.dst,
    };

    let bar = progress_bar(plan.length, "copy", globals.quiet);
    let mut progress = |n| bar.set_position(n);
    let result = match buffers {
        Buffers::Device(b) => {
            engine::run_one_way(direction, src_end, dst_end, &plan, b, &mut progress)
        }
        Buffers::Host(b) => {
            engine::run_one_way(direction, src_end, dst_end, &plan, b, &mut progress)
        }
    };
    bar.finish_and_clear();
    let report = match result {
        Ok(report) => report,
        Err(mut e) => {
            let einval = reinterpret_einval(&mut e, &route, kernel_release.as_deref());
            let (kind, summary) = failure_summary(&e, &route);
            let mut err = explain_engine_error(e, &route, &plan, dst.facts.kind);
            if let Some(why) = einval {
                err = err.context(format!(
                    "an I/O on device memory failed with EINVAL, reported as an I/O error, not a P2P refusal: {why}"
                ));
            }
            return Err(Failure::new(kind, err).with_details(&summary).into());
        }
    };
    if route.mode == Mode::P2p && route.p2p_expected == Some(false) && !globals.quiet {
        eprintln!(
            "p2pdma: note: the topology verdict predicted that the kernel would refuse P2P ({}), but it allowed it; please report this with `p2pdma snapshot`",
            route.why_not.as_deref().unwrap_or("no reason recorded")
        );
    }
    if direction != Direction::ReadOnly {
        flush_destination(&dst_file, &dst)?;
    }

    let verification = if args.verify {
        let bar = progress_bar(plan.length, "verify", globals.quiet);
        let started = Instant::now();
        let v = verify(src_end, dst_end, &plan, &mut |n| bar.set_position(n))?;
        bar.finish_and_clear();
        Some((v, started.elapsed()))
    } else {
        None
    };

    let summary = summary(&args, &plan, &route, &report, verification.as_ref());
    let verification = verification.map(|(v, _)| v);
    match verification {
        Some(v) if !v.matched() => {
            let at = v.first_difference.unwrap_or(0);
            if !args.json {
                output::unless_broken_pipe(print_summary(&args, &route, &summary))?;
            }
            let err = anyhow::anyhow!(
                "verification failed: {} offset {} differs from {} offset {} (xxh3-128 {:032x} vs {:032x})",
                args.dst.display(),
                plan.dst_offset + at,
                args.src.display(),
                plan.src_offset + at,
                v.dst_digest,
                v.src_digest
            );
            // With --json the summary rides in the error object: one document.
            Err(Failure::new(Kind::VerifyMismatch, err)
                .with_details(&summary)
                .into())
        }
        _ => {
            print_summary(&args, &route, &summary)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// O_DIRECT writes to a file may leave metadata (a grown size, allocated extents) only in
/// memory, and a device may hold written data in a volatile cache: fdatasync covers both.
fn flush_destination(file: &File, dst: &Inspected) -> anyhow::Result<()> {
    file.sync_data().with_context(|| {
        format!(
            "flushing {} after the copy (every write completed, but the data may not be durable)",
            dst.facts.path.display()
        )
    })
}

fn progress_bar(len: u64, what: &'static str, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix} {bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(what);
    bar
}

/// Adds the meaning of the first failed request, in terms of this copy, to the engine's
/// report of what reached the destination.
fn explain_engine_error(
    err: EngineError,
    route: &Route,
    plan: &CopyPlan,
    dst_kind: EndpointKind,
) -> anyhow::Error {
    let advice = match &err {
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
        EngineError::BadBuffers { .. } | EngineError::RingFailed { .. } => String::new(),
    };
    let err = anyhow::Error::new(err);
    if advice.is_empty() {
        err
    } else {
        err.context(advice)
    }
}

/// EIO from a transfer. A block device that is being hot-removed fails its requests with
/// EIO before its node goes away (and with ENOSPC once its capacity is zeroed), so EIO on a
/// block device names removal as well as a failing device, and a node already gone is
/// named as removed.
fn device_error_advice(path: &Path) -> String {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => format!(
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
fn no_space_advice(path: &Path, dst_kind: EndpointKind) -> String {
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

/// The details of the error object when the copy stops part-way: enough for a script to
/// know exactly which destination bytes changed.
#[derive(Debug, Serialize)]
struct FailureSummary {
    /// What the first failed request's errno means here.
    failure_kind: Option<FailureKind>,
    mode: Mode,
    provider: Option<Bdf>,
    /// Destination byte ranges whose writes completed, as [start, end) pairs.
    written: Vec<[u64; 2]>,
    bytes_written: u64,
    /// Everything from the copy's first destination byte up to here was written.
    contiguous_end: Option<u64>,
}

/// The kind of a stopped copy (partial when any destination byte was written, else
/// refused when the kernel refused P2P) and what the error object says about it.
fn failure_summary(err: &EngineError, route: &Route) -> (Kind, FailureSummary) {
    let written = match err {
        EngineError::Stopped { written, .. } | EngineError::RingFailed { written, .. } => {
            Some(written)
        }
        _ => None,
    };
    let failure_kind = match err {
        EngineError::Stopped { failure, .. } => Some(failure.kind),
        _ => None,
    };
    let bytes_written = written.map_or(0, |w| w.ranges.total());
    let kind = if bytes_written > 0 {
        Kind::PartialCopy
    } else if failure_kind == Some(FailureKind::P2pRefused) {
        Kind::P2pRefused
    } else {
        Kind::Failure
    };
    let summary = FailureSummary {
        failure_kind,
        mode: route.mode,
        provider: route.provider,
        written: written
            .map(|w| w.ranges.ranges().iter().map(|r| [r.start, r.end]).collect())
            .unwrap_or_default(),
        bytes_written,
        contiguous_end: written.map(|w| w.contiguous_end()),
    };
    (kind, summary)
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

fn provider_name(route: &Route) -> String {
    match route.provider {
        Some(bdf) => format!("{bdf}'s p2pmem"),
        None => "host memory".to_owned(),
    }
}

/// The engine reads EINVAL on device memory as a P2P refusal; that holds only on Linux
/// 6.17 and later, for a pair the topology refuses ([`p2pdma::refusal::interpret`]). Otherwise the
/// failure becomes an I/O error, and the reason is returned for the message.
fn reinterpret_einval(
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
    match p2pdma::refusal::interpret(libc::EINVAL, route.p2p_expected, kernel_release) {
        p2pdma::refusal::Meaning::P2pRefused => None,
        p2pdma::refusal::Meaning::IoError { why } => {
            failure.kind = FailureKind::Other;
            Some(why)
        }
    }
}

/// Decides the route; also returns the kernel release the PCI tree was read with.
fn decide_route(
    globals: &Globals,
    args: &CopyArgs,
    src: &Inspected,
    dst: &Inspected,
) -> anyhow::Result<(Route, [Side; 2], Option<String>)> {
    let root = SysfsRoot::new(&globals.sysfs);
    let sides = [
        endpoint::pci_side(&root, "source", src),
        endpoint::pci_side(&root, "destination", dst),
    ];
    let tree = match globals.read_tree(&root) {
        Ok(tree) => tree,
        // A bounce copy does not need the PCI tree, nor does explaining that a side
        // cannot do P2P at all.
        Err(_)
            if args.bounce == Bounce::Always
                || sides.iter().any(|s| s.not_p2p_because.is_some()) =>
        {
            PciTree::from_parts([], HostFacts::unknown("no PCI tree"))
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "reading the PCI tree under {} to choose a p2pmem provider (--bounce always needs none)",
                globals.sysfs.display()
            )))
        }
    };
    let route = route::decide(
        &tree,
        &sides[0],
        &sides[1],
        args.bounce.into(),
        args.provider,
    )?;
    let release = tree.host.kernel_release.clone();
    Ok((route, sides, release))
}

/// One p2pmem buffer per chunk in flight.
fn allocate_p2p(globals: &Globals, route: &Route, plan: &CopyPlan) -> anyhow::Result<Vec<P2pSlot>> {
    let bdf = route
        .provider
        .context("internal error: a P2P route without a provider")?;
    let provider = Provider::open(&globals.sysfs, bdf)?;
    let mut slots = Vec::with_capacity(plan.queue_depth as usize);
    for i in 0..plan.queue_depth {
        let buffer = provider.allocate(plan.chunk_size as usize).map_err(|e| {
            let hint = match &e {
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
            anyhow::Error::new(e).context(format!(
                "allocating p2pmem buffer {} of {} ({} each) from {bdf}{hint}",
                i + 1,
                plan.queue_depth,
                HumanBytes(plan.chunk_size)
            ))
        })?;
        slots.push(P2pSlot::new(buffer)?);
    }
    Ok(slots)
}

/// A queue depth that fits `usable` bytes at the current chunk size, and a chunk size
/// (a power of two, at least one block) that fits it at the current depth.
fn smaller_shape(usable: u64, plan: &CopyPlan) -> (u64, u64) {
    let depth = (usable / plan.chunk_size).clamp(1, u64::from(plan.queue_depth));
    let per_buffer = usable / u64::from(plan.queue_depth.max(1));
    let chunk = if per_buffer == 0 {
        plan.block_size
    } else {
        (1u64 << (63 - per_buffer.leading_zeros())).max(plan.block_size)
    };
    (depth, chunk)
}

fn describe_route(route: &Route, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "  mode         {}", route.mode)?;
    if let Some(reason) = &route.bounce_reason {
        writeln!(out, "  why bounce   {reason}")?;
    }
    if let Some(bdf) = route.provider {
        writeln!(
            out,
            "  provider     {bdf}: {}",
            route.provider_reason.as_deref().unwrap_or("")
        )?;
        if let Some(pool) = route.pool {
            writeln!(
                out,
                "  pool         {} total, {} available, {}",
                HumanBytes(pool.size),
                HumanBytes(pool.available),
                if pool.published {
                    "published"
                } else {
                    "not published"
                }
            )?;
        }
    } else if let Some(note) = &route.provider_reason {
        writeln!(out, "  provider     {note}")?;
    }
    for v in &route.verdicts {
        writeln!(
            out,
            "  verdict      {} <-> {}: {}{}",
            v.provider,
            v.client,
            v.map_type,
            v.distance
                .map(|d| format!(", distance {d}"))
                .unwrap_or_default()
        )?;
        for r in &v.reasons {
            writeln!(out, "               - {r}")?;
        }
    }
    if let Some(why) = &route.why_not {
        if route.mode == Mode::P2p {
            writeln!(
                out,
                "  warning      the kernel is expected to refuse: {why}; the copy will fail (nothing written) unless run with --bounce auto"
            )?;
        }
    }
    writeln!(out, "  path         {}", route.path.join(" -> "))?;
    for v in &route.verdicts {
        if v.is_p2p() && v.map_type == MapType::ThruHostBridge {
            writeln!(
                out,
                "  via          the root complex between {} and {} ({})",
                v.provider,
                v.client,
                MapType::ThruHostBridge.kernel_name()
            )?;
        }
    }
    let bottleneck = match (&route.mode, &route.bottleneck) {
        (Mode::Bounce, _) => {
            "the slower device, plus both transfers crossing host memory".to_owned()
        }
        (Mode::P2p, Some(b)) => format!(
            "the slower of the two devices, at most {} (the link above {})",
            b.link, b.below
        ),
        (Mode::P2p, None) => "the slower of the two devices (link speeds unknown)".to_owned(),
    };
    writeln!(out, "  bottleneck   {bottleneck}")?;
    Ok(())
}

fn print_dry_run(
    args: &CopyArgs,
    src: &Inspected,
    dst: &Inspected,
    plan: &CopyPlan,
    route: &Route,
    sides: &[Side; 2],
) -> anyhow::Result<()> {
    let buffers = match route.mode {
        Mode::P2p => u64::from(plan.queue_depth),
        Mode::Bounce => engine::buffers_wanted(Direction::Copy, plan) as u64,
    };
    let buffer_bytes = plan.chunk_size * buffers;
    if args.json {
        let dry = DryRun {
            src,
            dst,
            plan: *plan,
            chunks: plan.chunk_count(),
            buffer_bytes,
            route,
        };
        return Ok(output::print_json(&dry, true)?);
    }
    let mut out = output::stdout();
    writeln!(
        out,
        "plan: copy {} ({} bytes) from {} [{}..{}) to {} [{}..{})",
        HumanBytes(plan.length),
        plan.length,
        args.src.display(),
        plan.src_offset,
        plan.src_offset + plan.length,
        args.dst.display(),
        plan.dst_offset,
        plan.dst_offset + plan.length
    )?;
    for ((label, side), pci) in [("source", src), ("destination", dst)].iter().zip(sides) {
        writeln!(
            out,
            "  {label:<12} {} ({}, {} bytes, O_DIRECT block {}; {})",
            side.facts.path.display(),
            side.facts.kind,
            side.facts.size,
            side.facts.block_size,
            match (pci.controller, &pci.not_p2p_because) {
                (Some(bdf), None) => format!("NVMe controller {bdf}"),
                (Some(bdf), Some(why)) => format!("on {bdf}, but no P2P: {why}"),
                (None, Some(why)) => format!("no P2P: {why}"),
                (None, None) => "not on a PCI device".to_owned(),
            }
        )?;
    }
    describe_route(route, &mut out)?;
    writeln!(
        out,
        "  chunking     {} chunk(s) of {}, {} in flight: {} of {} memory",
        plan.chunk_count(),
        HumanBytes(plan.chunk_size),
        plan.queue_depth,
        HumanBytes(buffer_bytes),
        match route.mode {
            Mode::P2p => "device",
            Mode::Bounce => "host",
        }
    )?;
    if plan.grows_destination {
        writeln!(out, "  note         the destination file grows (--force)")?;
    }
    writeln!(out, "dry run: nothing was read or written")?;
    Ok(())
}

fn summary<'a>(
    args: &'a CopyArgs,
    plan: &CopyPlan,
    route: &Route,
    report: &EngineReport,
    verification: Option<&(Verification, Duration)>,
) -> Summary<'a> {
    let verify_seconds = verification.map(|(_, t)| t.as_secs_f64());
    let verification = verification.map(|(v, _)| v);
    let seconds = report.elapsed.as_secs_f64();
    let throughput = if seconds > 0.0 {
        report.bytes as f64 / seconds
    } else {
        0.0
    };
    Summary {
        src: &args.src,
        dst: &args.dst,
        src_offset: plan.src_offset,
        dst_offset: plan.dst_offset,
        bytes: report.bytes,
        seconds,
        cpu_seconds: (report.cpu_user + report.cpu_system).as_secs_f64(),
        throughput_bytes_per_sec: throughput,
        mode: route.mode,
        provider: route.provider,
        path: route.path.clone(),
        bounce_reason: route.bounce_reason.clone(),
        chunk_size: plan.chunk_size,
        queue_depth: plan.queue_depth,
        short_transfers: report.short_transfers,
        only: args.only,
        verified: verification.map(|v| v.matched()),
        verification: verification.copied(),
        verify_seconds,
    }
}

fn print_summary(args: &CopyArgs, route: &Route, summary: &Summary) -> anyhow::Result<()> {
    if args.json {
        return Ok(output::print_json(summary, false)?);
    }
    let mut out = output::stdout();
    let what = match args.only {
        None => format!(
            "copied {} from {} to {}",
            HumanBytes(summary.bytes),
            args.src.display(),
            args.dst.display()
        ),
        Some(Half::Read) => format!(
            "read {} from {} (--only read)",
            HumanBytes(summary.bytes),
            args.src.display()
        ),
        Some(Half::Write) => format!(
            "wrote {} to {} (--only write)",
            HumanBytes(summary.bytes),
            args.dst.display()
        ),
    };
    writeln!(
        out,
        "{what} in {:.3} s ({}/s), {}",
        summary.seconds,
        HumanBytes(summary.throughput_bytes_per_sec as u64),
        match route.mode {
            Mode::P2p => format!("P2P through {}", provider_name(route)),
            Mode::Bounce => "through host memory".to_owned(),
        }
    )?;
    if let Some(v) = &summary.verification {
        if v.matched() {
            writeln!(
                out,
                "verified: xxh3-128 {:032x} on both sides",
                v.src_digest
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {

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

    use super::*;

    fn stopped(errno: i32, kind: FailureKind) -> EngineError {
        EngineError::Stopped {
            written: p2pdma::copy::Written {
                path: "/dev/nvme1n1".into(),
                dst_offset: 0,
                ranges: Default::default(),
            },
            failure: p2pdma::copy::IoFailure {
                op: p2pdma::copy::Op::Write,
                path: "/dev/nvme1n1".into(),
                offset: 0,
                len: 4096,
                kind,
                source: std::io::Error::from_raw_os_error(errno),
            },
        }
    }

    fn route(p2p_expected: Option<bool>) -> Route {
        Route {
            mode: Mode::P2p,
            provider: None,
            provider_reason: None,
            pool: None,
            verdicts: Vec::new(),
            path: Vec::new(),
            bottleneck: None,
            bounce_reason: None,
            p2p_expected,
            why_not: None,
        }
    }

    fn kind_of(e: &EngineError) -> FailureKind {
        match e {
            EngineError::Stopped { failure, .. } => failure.kind,
            _ => unreachable!(),
        }
    }

    #[test]
    fn einval_on_device_memory_is_a_refusal_only_on_new_kernels_with_a_refusing_verdict() {
        let mut e = stopped(libc::EINVAL, FailureKind::P2pRefused);
        let why = reinterpret_einval(&mut e, &route(Some(false)), Some("6.12.117"));
        assert!(why.unwrap().contains("EREMOTEIO"));
        assert_eq!(kind_of(&e), FailureKind::Other);
        let (kind, _) = failure_summary(&e, &route(Some(false)));
        assert_eq!(
            kind,
            Kind::Failure,
            "nothing written, not a refusal: exit 1"
        );

        let mut e = stopped(libc::EINVAL, FailureKind::P2pRefused);
        assert_eq!(
            reinterpret_einval(&mut e, &route(Some(false)), Some("6.17.2")),
            None
        );
        assert_eq!(kind_of(&e), FailureKind::P2pRefused);
        assert_eq!(failure_summary(&e, &route(Some(false))).0, Kind::P2pRefused);

        let mut e = stopped(libc::EINVAL, FailureKind::P2pRefused);
        assert!(reinterpret_einval(&mut e, &route(Some(true)), Some("6.17.2")).is_some());
        assert_eq!(kind_of(&e), FailureKind::Other);

        let mut e = stopped(libc::EREMOTEIO, FailureKind::P2pRefused);
        assert_eq!(
            reinterpret_einval(&mut e, &route(Some(true)), Some("6.12.1")),
            None
        );
        assert_eq!(kind_of(&e), FailureKind::P2pRefused);
    }

    #[test]
    fn a_stop_after_some_bytes_landed_is_a_partial_copy_whatever_the_cause() {
        let mut e = stopped(libc::EREMOTEIO, FailureKind::P2pRefused);
        if let EngineError::Stopped { written, .. } = &mut e {
            written.ranges.insert(0..8192);
        }
        let (kind, summary) = failure_summary(&e, &route(Some(true)));
        assert_eq!(kind, Kind::PartialCopy);
        assert_eq!(summary.bytes_written, 8192);
        assert_eq!(summary.written, vec![[0, 8192]]);
        assert_eq!(Kind::PartialCopy.code(), 4);
    }

    #[test]
    fn no_space_on_a_block_device_means_it_went_away_not_that_it_is_full() {
        let advice = no_space_advice(Path::new("/dev/nvme1n1"), EndpointKind::BlockDevice);
        assert!(advice.contains("shrank or was removed"), "{advice}");
        assert!(!advice.contains("is full"), "{advice}");
        let advice = no_space_advice(Path::new("/mnt/b/out.bin"), EndpointKind::RegularFile);
        assert!(advice.contains("/mnt/b/out.bin is full"), "{advice}");
    }
}
