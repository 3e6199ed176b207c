//! `p2pdma`: PCIe peer-to-peer DMA from userspace.
//!
//! The same statically linked binary runs on the host and inside the lab's guest.

mod cmd;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "p2pdma", version, about, long_about = None)]
struct Cli {
    /// Read PCI and block-device facts from this sysfs root instead of /sys
    /// (a snapshot taken with `p2pdma snapshot`, or a test fixture).
    #[arg(long, global = true, value_name = "DIR", env = "P2PDMA_SYSFS")]
    sysfs: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing would buy nothing
enum Command {
    /// The QEMU lab: a real P2PDMA kernel with emulated NVMe controllers with CMBs.
    #[command(subcommand)]
    Lab(cmd::lab::LabCommand),
    /// Show the PCI tree, P2P providers and verdicts between devices.
    Topo(cmd::topo::TopoArgs),
    /// Capture the sysfs subset p2pdma reads, for bug reports and tests.
    Snapshot(cmd::topo::SnapshotArgs),
    /// Copy a range from one NVMe device or file to another through device memory.
    Copy(cmd::copy::CopyArgs),
    /// Measure throughput, IOPS, latency and CPU per GiB of reads, writes or copies
    /// through p2pmem and host memory, interleaved, optionally against fio.
    Bench(cmd::bench::BenchArgs),
    /// Try one small O_DIRECT read from a client into a provider's p2pmem and report
    /// what the kernel did (the ground truth the topology verdicts are checked against).
    Probe(cmd::probe::ProbeArgs),
    /// p2pmem pools: list them, or check that one holds data and survives an unbind.
    #[command(subcommand)]
    Mem(cmd::mem::MemCommand),
}

/// Options every subcommand may use.
#[derive(Debug, Clone)]
pub struct Globals {
    /// The sysfs root to read (`/sys` unless `--sysfs` was given).
    pub sysfs: PathBuf,
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let globals = Globals {
        sysfs: cli.sysfs.unwrap_or_else(|| PathBuf::from("/sys")),
    };
    match cli.command {
        Command::Lab(c) => cmd::lab::run(c, &globals),
        Command::Topo(a) => cmd::topo::run(a, &globals),
        Command::Snapshot(a) => cmd::topo::snapshot(a, &globals),
        Command::Copy(a) => cmd::copy::run(a, &globals),
        Command::Bench(a) => cmd::bench::run(a, &globals),
        Command::Probe(a) => cmd::probe::probe(a, &globals),
        Command::Mem(c) => cmd::mem::run(c, &globals),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "p2pdma: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Output piped into `head` is not a failure.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
