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
