//! `p2pdma copy`: move a range between NVMe devices (or files on them) through device
//! memory.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use p2pdma::copy::job::{self, CopyError, CopyJob, CopyObserver, EngineFailure, Phase, Prepared};
use p2pdma::copy::plan::{DEFAULT_CHUNK_SIZE, DEFAULT_QUEUE_DEPTH};
use p2pdma::copy::route::{self, Route};
use p2pdma::copy::{CopyRequest, Direction};
use p2pdma::report::copy::{self as report, DryRun, Summary};
use p2pdma::Bdf;

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
    /// Give up when no read or write completes for this many seconds: the copy (or the
    /// verification) fails naming the requests in flight, with the written ranges. The
    /// default is well above the NVMe driver's own 30 s command timeout, so it only fires
    /// when a request was lost for good. (--via vfio has its own command deadlines.)
    #[arg(long, value_name = "SECONDS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub io_timeout: u64,
}

/// One half of a copy, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Half {
    /// Only read the source range.
    Read,
    /// Only write the destination range.
    Write,
}

use super::size;

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
        io_timeout: std::time::Duration::from_secs(args.io_timeout),
    };

    if args.dry_run {
        let prepared = job::prepare(&job).map_err(library_error)?;
        if args.json {
            output::print_json(&DryRun::new(&prepared), true)?;
        } else {
            let text = report::dry_run_text(&args.src, &args.dst, &prepared);
            write!(output::stdout(), "{text}")?;
        }
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
    if let Some(note) = report::unexpected_p2p_note(route).filter(|_| !globals.quiet) {
        eprintln!("p2pdma: note: {note}");
    }
    let summary = Summary::new(&job.src, &job.dst, job.direction, &outcome);
    match &summary.verification {
        Some(v) if !v.matched() => {
            if !args.json {
                output::unless_broken_pipe(print_summary(&args, route, &summary))?;
            }
            let err = anyhow::anyhow!(report::mismatch_text(&summary, v));
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

fn print_summary(args: &CopyArgs, route: &Route, summary: &Summary) -> anyhow::Result<()> {
    if args.json {
        return Ok(output::print_json(summary, false)?);
    }
    write!(output::stdout(), "{}", report::summary_text(summary, route))?;
    Ok(())
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
    let (kind, summary) = report::failure_summary(&failure.error, &failure.route);
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
