//! `p2pdma`: PCIe peer-to-peer DMA from userspace.
//!
//! The same statically linked binary runs on the host and inside the lab's guest.

mod cmd;
pub mod exit;
pub mod output;
mod progress;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "p2pdma", version, about, long_about = None, after_help = exit::TABLE)]
struct Cli {
    /// Read PCI and block-device facts from this sysfs root instead of /sys
    /// (a snapshot taken with `p2pdma snapshot`, or a test fixture).
    #[arg(long, global = true, value_name = "DIR", env = "P2PDMA_SYSFS")]
    sysfs: Option<PathBuf>,

    /// Judge P2P by this kernel release's rules (its host-bridge whitelist and how it
    /// reports a refusal) instead of the running kernel's or the snapshot's: "what would
    /// kernel X do on this machine".
    #[arg(
        long,
        global = true,
        value_name = "RELEASE",
        env = "P2PDMA_KERNEL_RELEASE"
    )]
    kernel_release: Option<String>,
    /// No progress bars and no notes on stderr (errors and warnings still print).
    #[arg(long, short, global = true)]
    quiet: bool,

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
    /// The VFIO provider: move NVMe controllers to vfio-pci and back, identify them.
    /// Copies through it: `copy --via vfio`. Needs VFIO and an IOMMU, not P2PDMA.
    #[command(subcommand)]
    Vfio(cmd::vfio::VfioCommand),
    /// Measure throughput, IOPS, latency and CPU per GiB of reads, writes or copies
    /// through p2pmem and host memory, interleaved, optionally against fio.
    Bench(cmd::bench::BenchArgs),
    /// Try one small O_DIRECT read from a client into a provider's p2pmem and report
    /// what the kernel did (the ground truth the topology verdicts are checked against).
    Probe(cmd::probe::ProbeArgs),
    /// p2pmem pools: list them, or check that one holds data and survives an unbind.
    #[command(subcommand)]
    Mem(cmd::mem::MemCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(cmd::operator::CompletionsArgs),
    /// Print the man page, or write one per subcommand into a directory.
    Man(cmd::operator::ManArgs),
}

/// Options every subcommand may use.
#[derive(Debug, Clone)]
pub struct Globals {
    /// The sysfs root to read (`/sys` unless `--sysfs` was given).
    pub sysfs: p2pdma::sysfs::SysfsRoot,
    /// `--kernel-release`: the release whose rules verdicts follow, if not the tree's own.
    pub kernel_release: Option<String>,
    /// `--quiet`: no progress bars, no notes on stderr.
    pub quiet: bool,
}

impl Globals {
    /// Reads the PCI tree under the sysfs root, with `--kernel-release` in its host facts.
    pub fn read_tree(
        &self,
        root: &p2pdma::sysfs::SysfsRoot,
    ) -> Result<p2pdma::pci::PciTree, p2pdma::sysfs::SysfsError> {
        let mut tree = p2pdma::pci::PciTree::read(root)?;
        if let Some(release) = &self.kernel_release {
            tree.host.kernel_release = Some(release.clone());
        }
        Ok(tree)
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let globals = Globals {
        sysfs: cli
            .sysfs
            .map(p2pdma::sysfs::SysfsRoot::new)
            .unwrap_or_default(),
        kernel_release: cli.kernel_release,
        quiet: cli.quiet,
    };
    match cli.command {
        Command::Lab(c) => cmd::lab::run(c, &globals),
        Command::Topo(a) => cmd::topo::run(a, &globals),
        Command::Snapshot(a) => cmd::topo::snapshot(a, &globals),
        Command::Copy(a) => cmd::copy::run(a, &globals),
        Command::Vfio(c) => cmd::vfio::run(c, &globals),
        Command::Bench(a) => cmd::bench::run(a, &globals),
        Command::Probe(a) => cmd::probe::probe(a, &globals),
        Command::Mem(c) => cmd::mem::run(c, &globals),
        Command::Completions(a) => cmd::operator::completions(a, Cli::command()),
        Command::Man(a) => cmd::operator::man(a, Cli::command()),
    }
}

fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return usage_error(e),
    };
    let json = output::wants_json(&matches);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match run(cli) {
        Ok(code) => code,
        Err(err) if output::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => ExitCode::from(output::report_error(&err, json)),
    }
}

/// clap's report (help and version included, which are not errors), plus the JSON error
/// object on stdout when `--json` was among the arguments. A usage error is one line on
/// stderr, like every other error: clap's message, then the usage line.
fn usage_error(e: clap::Error) -> ExitCode {
    if !e.use_stderr()
        || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    {
        // --help, --version, or help for a bare `p2pdma mem`: clap's own output.
        let _ = e.print();
        return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(exit::USAGE));
    }
    let message = one_line_usage_error(&e.render().to_string());
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "p2pdma: error: {message}");
    if output::argv_wants_json(std::env::args_os().skip(1)) {
        let _ = output::print_json(
            &output::ErrorReport {
                error: output::ErrorObject {
                    kind: exit::Kind::Usage,
                    message,
                    exit_code: exit::USAGE,
                    details: Default::default(),
                },
            },
            false,
        );
    }
    ExitCode::from(exit::USAGE)
}

/// clap's multi-line report as one line: the message (with the lines that complete it,
/// such as the names of missing arguments), then the usage, then where help is.
fn one_line_usage_error(rendered: &str) -> String {
    let mut message = Vec::new();
    let mut usage = None;
    let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
    for line in lines.by_ref() {
        if let Some(u) = line.strip_prefix("Usage:") {
            usage = Some(u.trim().to_owned());
            break;
        }
        if line.starts_with("For more information") {
            break;
        }
        message.push(line.trim_start_matches("error: "));
    }
    let mut text = message.join(" ");
    if let Some(usage) = usage {
        text.push_str(&format!(" (usage: {usage}; see --help)"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usage_error_becomes_one_line_with_the_usage() {
        let rendered = "error: the following required arguments were not provided:\n  <DST>\n\nUsage: p2pdma copy <SRC> <DST>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line_usage_error(rendered),
            "the following required arguments were not provided: <DST> (usage: p2pdma copy <SRC> <DST>; see --help)"
        );
        let err = Cli::command()
            .try_get_matches_from(["p2pdma", "copy", "a", "b", "--length", "12x"])
            .unwrap_err();
        let line = one_line_usage_error(&err.render().to_string());
        assert!(
            line.starts_with("invalid value '12x' for '--length <SIZE>'"),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }
}
