//! `p2pdma bench`: parses and checks the arguments into a [`BenchRequest`], runs it with
//! the library, prints the table (or JSON) and writes the plot.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use p2pdma::bench::{self, spec, BenchError, BenchRequest, Modes, Pattern, Workload};
use p2pdma::copy::endpoint::EndpointError;
use p2pdma::copy::plan;
use p2pdma::copy::route::RouteError;
use p2pdma::p2pmem::P2pmemError;
use p2pdma::Bdf;
use p2pdma_vfio::bench::{VfioBenchError, VfioBenchRequest, Yardstick};
use p2pdma_vfio::job::Namespace;

use crate::cmd::copy::Via;
use crate::exit::Kind;
use crate::output::Failure;
use crate::Globals;

/// What moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadArg {
    /// --src into the buffers.
    Read,
    /// The buffers to --dst.
    Write,
    /// --src to --dst through the buffers, with the copy engine (plus each side alone).
    Copy,
}

/// Which buffer memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// A p2pmem provider's memory.
    P2p,
    /// Host memory.
    Host,
    /// Both, interleaved run by run.
    Both,
}

/// Request order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PatternArg {
    /// Sequential.
    Seq,
    /// Every block once per pass, in random order.
    Rand,
}

/// Arguments of `p2pdma bench`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "SIZE values take k, M, G, T suffixes (binary). Runs interleave: for each \
block size and depth, p2p, host, p2p, host... (and fio beside each with --fio). Only a target \
named with --dst is ever written, and never one that is mounted, held or read-only."
)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(long, value_enum)]
    pub workload: WorkloadArg,
    /// The device or file read (read, copy).
    #[arg(long, value_name = "PATH")]
    pub src: Option<PathBuf>,
    /// The device or file written (write, copy): it is overwritten.
    #[arg(long, value_name = "PATH")]
    pub dst: Option<PathBuf>,
    /// Buffer memory: p2pmem, host memory, or both interleaved.
    #[arg(long, value_enum, default_value_t = ModeArg::Both)]
    pub mode: ModeArg,
    /// The p2pmem provider [default: chosen as `copy` chooses].
    #[arg(long, value_name = "BDF")]
    pub provider: Option<Bdf>,
    /// Block sizes: a list (64k,1M,4M) or a doubling sweep (4k..4M).
    #[arg(long, value_name = "LIST", default_value = "1M")]
    pub bs: String,
    /// Requests in flight per job: a list (4,16). For copy, per direction (that many
    /// reads and that many writes, as the copy engine's --queue-depth and fio's pair).
    #[arg(long, value_name = "LIST", default_value = "4")]
    pub iodepth: String,
    /// Jobs (threads), each on its own slice of the range.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub jobs: u32,
    /// Request order (read and write workloads).
    #[arg(long, value_enum, default_value_t = PatternArg::Seq)]
    pub pattern: PatternArg,
    /// Bytes per run, all jobs together, from offset 0.
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,
    /// Time per run (10s, 500ms, 2m): the range is gone over again until it is up.
    #[arg(long, value_name = "DURATION")]
    pub runtime: Option<String>,
    /// Unmeasured runs per case and mode first.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub warmup: u32,
    /// Measured runs per case and mode.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub repeat: u32,
    /// Also run fio (io_uring, direct=1) with the same shape, targets and buffer memory,
    /// and report p2pdma/fio ratios.
    #[arg(long)]
    pub fio: bool,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG plot of throughput and p99 latency against block size.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Allow growing (or creating) a destination regular file, as `copy --force`.
    #[arg(long)]
    pub force: bool,
    /// Which P2P path: the kernel's P2PDMA, or VFIO (`--workload copy` only; --src and
    /// --dst are BDF/NSID of controllers attached with `p2pdma vfio attach`; --provider
    /// names the pool's device [default: the source's CMB]).
    #[arg(long, value_enum, default_value_t = Via::Kernel)]
    pub via: Via,
    /// With --via vfio: a `p2pdma bench --workload copy --fio --json` report of the same
    /// namespaces made in the same boot before `vfio attach` (fio cannot drive devices
    /// bound to vfio-pci); the table and JSON give VFIO/fio and VFIO/kernel-path ratios.
    #[arg(long, value_name = "FILE.json")]
    pub yardstick: Option<PathBuf>,
    /// With --via vfio and a --provider that is not one of the controllers: its BAR.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub provider_bar: u32,
}

impl BenchArgs {
    /// The checked request.
    pub fn request(&self, globals: &Globals) -> anyhow::Result<BenchRequest> {
        let size = self
            .size
            .as_deref()
            .map(plan::parse_size)
            .transpose()
            .map_err(|e| Failure::new(Kind::InvalidInput, anyhow::anyhow!("--size: {e}")))?;
        let invalid = |e: spec::SpecError| Failure::new(Kind::InvalidInput, e);
        let runtime = self
            .runtime
            .as_deref()
            .map(spec::parse_duration)
            .transpose()
            .map_err(invalid)?;
        let request = BenchRequest {
            workload: match self.workload {
                WorkloadArg::Read => Workload::Read,
                WorkloadArg::Write => Workload::Write,
                WorkloadArg::Copy => Workload::Copy,
            },
            src: self.src.clone(),
            dst: self.dst.clone(),
            modes: match self.mode {
                ModeArg::P2p => Modes::P2p,
                ModeArg::Host => Modes::Host,
                ModeArg::Both => Modes::Both,
            },
            provider: self.provider,
            block_sizes: spec::parse_block_sizes(&self.bs).map_err(invalid)?,
            iodepths: spec::parse_iodepths(&self.iodepth).map_err(invalid)?,
            jobs: self.jobs,
            pattern: match self.pattern {
                PatternArg::Seq => Pattern::Seq,
                PatternArg::Rand => Pattern::Rand,
            },
            size,
            runtime,
            warmup: self.warmup,
            repeat: self.repeat,
            fio: self.fio,
            force: self.force,
            kernel_release: globals.kernel_release.clone(),
        };
        request
            .check()
            .map_err(|e| Failure::new(Kind::InvalidInput, e))?;
        Ok(request)
    }
}

/// A progress bar on stderr, only when stderr is a terminal.
struct Bar(ProgressBar);

impl bench::Progress for Bar {
    fn start(&mut self, total_runs: u64) {
        self.0.set_length(total_runs);
    }

    fn run_done(&mut self, label: &str) {
        self.0.set_message(label.to_owned());
        self.0.inc(1);
    }

    fn finish(&mut self) {
        self.0.finish_and_clear();
    }
}

fn bar(quiet: bool) -> Bar {
    if quiet || !std::io::stderr().is_terminal() {
        return Bar(ProgressBar::hidden());
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("bench {bar:30} {pos}/{len} runs, last: {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    Bar(bar)
}

/// The exit-code table's kind of a benchmark error.
fn kind(e: &BenchError) -> Kind {
    match e {
        BenchError::Spec(_)
        | BenchError::Plan(_)
        | BenchError::UnalignedBlockSize { .. }
        | BenchError::UnalignedSize { .. }
        | BenchError::TargetTooSmall { .. }
        | BenchError::NoRange { .. }
        | BenchError::RangeTooSmall { .. }
        | BenchError::PoolTooSmall { .. } => Kind::InvalidInput,
        BenchError::Endpoint(
            EndpointError::MissingSource { .. } | EndpointError::Unsupported { .. },
        ) => Kind::InvalidInput,
        BenchError::Route(RouteError::SideNotP2p { .. }) => Kind::P2pRefused,
        BenchError::Route(_) => Kind::InvalidInput,
        BenchError::P2pImpossible { .. } | BenchError::P2pRefused { .. } => Kind::P2pRefused,
        BenchError::P2pmem {
            source: P2pmemError::PermissionDenied { .. } | P2pmemError::NoReadPermission { .. },
            ..
        } => Kind::PermissionDenied,
        _ => Kind::Failure,
    }
}

pub fn run(args: BenchArgs, globals: &Globals) -> anyhow::Result<ExitCode> {
    if args.via == Via::Vfio {
        return vfio(&args, globals);
    }
    if args.yardstick.is_some() {
        return Err(invalid(
            "--yardstick compares the VFIO path with a kernel-path report: use it with --via vfio",
        ));
    }
    let request = args.request(globals)?;
    if let Some(plot) = &args.plot {
        if plot.extension().and_then(|e| e.to_str()) != Some("svg") {
            return Err(Failure::new(
                Kind::InvalidInput,
                anyhow::anyhow!(
                    "--plot {}: the plot is SVG; give a file name ending in .svg",
                    plot.display()
                ),
            )
            .into());
        }
    }
    let mut progress = bar(globals.quiet);
    let report = bench::run(&globals.sysfs, &request, &mut progress)
        .map_err(|e| Failure::new(kind(&e), e))?;
    if let Some(plot) = &args.plot {
        let svg = bench::plot::svg(&report)?;
        std::fs::write(plot, svg).with_context(|| format!("writing {}", plot.display()))?;
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", report.to_json())?;
    } else {
        write!(out, "{}", report.to_table())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn invalid(message: &str) -> anyhow::Error {
    Failure::new(Kind::InvalidInput, anyhow::anyhow!("{message}")).into()
}

/// `bench --via vfio`: [`p2pdma_vfio::bench::run`], printed.
fn vfio(args: &BenchArgs, globals: &Globals) -> anyhow::Result<ExitCode> {
    if args.workload != WorkloadArg::Copy {
        return Err(invalid(
            "--via vfio measures namespace-to-namespace copies: use --workload copy",
        ));
    }
    if args.fio {
        return Err(invalid("--via vfio: fio cannot drive controllers bound to vfio-pci; run `p2pdma bench --workload copy --fio --json` on their block devices before `vfio attach` and give that report with --yardstick"));
    }
    if args.runtime.is_some() || args.jobs != 1 || args.pattern != PatternArg::Seq {
        return Err(invalid(
            "--via vfio runs one sequential job over --size bytes: drop --runtime, --jobs and --pattern",
        ));
    }
    if args.plot.is_some() {
        return Err(invalid("--via vfio has no plot: drop --plot"));
    }
    let target = |name: &str, p: &Option<PathBuf>| -> anyhow::Result<Namespace> {
        let p = p.as_ref().ok_or_else(|| {
            invalid(&format!(
                "--via vfio needs {name} BDF/NSID (e.g. 0000:03:00.0/1)"
            ))
        })?;
        p.to_string_lossy()
            .parse::<Namespace>()
            .map_err(|e| Failure::new(Kind::InvalidInput, e).into())
    };
    let invalid_spec = |e: spec::SpecError| Failure::new(Kind::InvalidInput, e);
    let size = args
        .size
        .as_deref()
        .map(plan::parse_size)
        .transpose()
        .map_err(|e| Failure::new(Kind::InvalidInput, anyhow::anyhow!("--size: {e}")))?
        .ok_or_else(|| invalid("say how much each run copies: give --size (e.g. 64M)"))?;
    let request = VfioBenchRequest {
        src: target("--src", &args.src)?,
        dst: target("--dst", &args.dst)?,
        provider: args.provider,
        provider_bar: args.provider_bar,
        block_sizes: spec::parse_block_sizes(&args.bs).map_err(invalid_spec)?,
        iodepths: spec::parse_iodepths(&args.iodepth).map_err(invalid_spec)?,
        size,
        warmup: args.warmup,
        repeat: args.repeat,
        yardstick: args
            .yardstick
            .as_deref()
            .map(Yardstick::read)
            .transpose()
            .map_err(|e| Failure::new(Kind::InvalidInput, e))?,
        sysfs: globals.sysfs.clone(),
    };
    let mut progress = bar(globals.quiet);
    let report = p2pdma_vfio::bench::run(&request, &mut progress).map_err(|e| match e {
        VfioBenchError::Copy(e) => super::vfio::copy_failure(e, globals.quiet),
        e @ (VfioBenchError::NoRuns | VfioBenchError::NoCases) => {
            Failure::new(Kind::InvalidInput, e).into()
        }
        e => anyhow::Error::new(e),
    })?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", report.to_json())?;
    } else {
        write!(out, "{}", report.to_table())?;
    }
    if !report.verified {
        let v = &report.verification;
        let at = v.first_difference.unwrap_or(0);
        return Err(Failure::new(
            Kind::VerifyMismatch,
            anyhow::anyhow!(
                "verification failed: {} offset {at} differs from {} offset {at} (xxh3-128 {:032x} vs {:032x})",
                report.dst,
                report.src,
                v.dst_digest,
                v.src_digest
            ),
        )
        .into());
    }
    Ok(ExitCode::SUCCESS)
}
