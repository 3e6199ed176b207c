//! `p2pdma copy`: move a range between NVMe devices (or files on them) through device
//! memory.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use p2pdma::copy::endpoint::Inspected;
use p2pdma::copy::job::{self, CopyError, CopyJob, CopyObserver, EngineFailure, Phase, Prepared};
use p2pdma::copy::plan::{HumanBytes, DEFAULT_CHUNK_SIZE, DEFAULT_QUEUE_DEPTH};
use p2pdma::copy::route::{self, Mode, Route};
use p2pdma::copy::{
    CopyPlan, CopyRequest, Direction, EngineError, EngineReport, FailureKind, Verification,
};
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
    let job = CopyJob {
        src: args.src.clone(),
        dst: args.dst.clone(),
        request: CopyRequest {
            src_offset: args.src_offset,
            dst_offset: args.dst_offset,
            length: args.length,
            chunk_size: args.chunk_size,
            queue_depth: args.queue_depth,
            force: args.force,
        },
        bounce: args.bounce.into(),
        provider: args.provider,
        direction: match args.only {
            None => Direction::Copy,
            Some(Half::Read) => Direction::ReadOnly,
            Some(Half::Write) => Direction::WriteOnly,
        },
        verify: args.verify,
        sysfs: globals.sysfs.clone(),
        kernel_release: globals.kernel_release.clone(),
    };

    if args.dry_run {
        let prepared = job::prepare(&job).map_err(library_error)?;
        print_dry_run(&args, &prepared)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut bars = Bars {
        args: &args,
        quiet: globals.quiet,
        bar: None,
    };
    let outcome = match job::run(&job, &mut bars) {
        Ok(outcome) => outcome,
        Err(CopyError::Engine(failure)) => return Err(engine_failure(*failure)),
        Err(e) => return Err(library_error(e)),
    };
    let route = &outcome.prepared.route;
    let plan = &outcome.prepared.plan;
    if route.mode == Mode::P2p && route.p2p_expected == Some(false) && !globals.quiet {
        eprintln!(
            "p2pdma: note: the topology verdict predicted that the kernel would refuse P2P ({}), but it allowed it; please report this with `p2pdma snapshot`",
            route.why_not.as_deref().unwrap_or("no reason recorded")
        );
    }

    let summary = summary(
        &args,
        plan,
        route,
        &outcome.report,
        outcome.verification.as_ref(),
    );
    let verification = outcome.verification.map(|(v, _)| v);
    match verification {
        Some(v) if !v.matched() => {
            let at = v.first_difference.unwrap_or(0);
            if !args.json {
                output::unless_broken_pipe(print_summary(&args, route, &summary))?;
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
            print_summary(&args, route, &summary)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The progress bars of the copy and the verification, and the note when the route
/// bounces through host memory.
struct Bars<'a> {
    args: &'a CopyArgs,
    quiet: bool,
    bar: Option<ProgressBar>,
}

impl CopyObserver for Bars<'_> {
    fn route_decided(&mut self, prepared: &Prepared) {
        if let Some(note) = &prepared.route.bounce_reason {
            if !self.args.json && !self.quiet && self.args.bounce != Bounce::Always {
                eprintln!("p2pdma: copying through host memory: {note}");
            }
        }
    }

    fn phase_started(&mut self, phase: Phase, total: u64) {
        let what = match phase {
            Phase::Copy => "copy",
            Phase::Verify => "verify",
        };
        self.bar = Some(progress_bar(total, what, self.quiet));
    }

    fn progress(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    fn phase_ended(&mut self, _phase: Phase) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// A library error as the CLI reports it: the error the library wraps, so the exit
/// status is classified from it as before (`output::classify` looks for the library's
/// error types in the chain).
fn library_error(err: CopyError) -> anyhow::Error {
    match err {
        CopyError::Endpoint(e) => e.into(),
        CopyError::Plan(e) => e.into(),
        CopyError::Route(e) => e.into(),
        CopyError::P2pmem(e) => e.into(),
        CopyError::Verify(e) => e.into(),
        CopyError::Engine(failure) => engine_failure(*failure),
        e => e.into(),
    }
}

/// A copy the engine stopped: the meaning of the first failed request, in terms of this
/// copy, on top of the engine's report of what reached the destination, and the exact
/// written ranges in the error object.
fn engine_failure(failure: EngineFailure) -> anyhow::Error {
    let (kind, summary) = failure_summary(&failure.error, &failure.route);
    let advice = failure.advice();
    let mut err = anyhow::Error::new(failure.error);
    if !advice.is_empty() {
        err = err.context(advice);
    }
    if let Some(why) = failure.einval {
        err = err.context(format!(
            "an I/O on device memory failed with EINVAL, reported as an I/O error, not a P2P refusal: {why}"
        ));
    }
    Failure::new(kind, err).with_details(&summary).into()
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

fn print_dry_run(args: &CopyArgs, prepared: &Prepared) -> anyhow::Result<()> {
    let Prepared {
        src,
        dst,
        plan,
        route,
        sides,
        ..
    } = prepared;
    let buffer_bytes = plan.chunk_size * prepared.buffers();
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
            Mode::P2p => format!("P2P through {}", job::provider_name(route)),
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

    use super::*;
    use p2pdma::copy::job::reinterpret_einval;

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
}
