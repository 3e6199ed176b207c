//! `p2pdma mem`: look at p2pmem pools and check that one really holds data.

use std::io::Write;
use std::process::ExitCode;

use p2pdma::p2pmem::pool_test::{self, PoolTestError, PoolTestRequest};
use p2pdma::report::error::WithError;
use p2pdma::report::mem as report;
use p2pdma::Bdf;

use crate::output;
use crate::Globals;

/// The `mem` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum MemCommand {
    /// List p2pmem providers with their pool size, free bytes and published flag.
    Info(InfoArgs),
    /// Allocate buffers from a provider, write a pattern through the CPU, read it back,
    /// and check the pool's accounting. Needs root.
    Test(TestArgs),
}

/// Arguments of `p2pdma mem info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Only this provider (PCI address); all providers by default.
    #[arg(value_name = "BDF")]
    provider: Option<Bdf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Print the pools in the Prometheus text format, for node_exporter's textfile
    /// collector (gauges labelled by BDF and driver).
    #[arg(long, conflicts_with = "json")]
    prometheus: bool,
}

/// Arguments of `p2pdma mem test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// The provider to test (PCI address, e.g. 0000:01:00.0).
    #[arg(value_name = "BDF")]
    provider: Bdf,
    /// Bytes per buffer (rounded up to the page size); k, M, G, T suffixes (binary).
    #[arg(long, default_value = "1M", value_name = "SIZE", value_parser = super::size_usize)]
    size: usize,
    /// How many buffers to hold at once.
    #[arg(long, default_value_t = 1, value_name = "N")]
    buffers: usize,
    /// Then keep allocating buffers of --size until the pool refuses, and report how.
    #[arg(long)]
    exhaust: bool,
    /// Then unbind the provider from its driver while the buffers are mapped, check that
    /// access reports the revocation instead of killing the process, and bind it again.
    /// Disruptive: the device disappears for a moment (its block devices too).
    #[arg(long, conflicts_with = "while_mapped")]
    unbind_after_map: bool,
    /// Then run this shell command while the buffers are mapped (e.g. one that removes
    /// the device), and report whether each buffer still holds its pattern or was
    /// revoked. A buffer that reads back anything else fails the test.
    #[arg(long, value_name = "COMMAND")]
    while_mapped: Option<String>,
    /// Print JSON instead of sentences.
    #[arg(long)]
    json: bool,
}

/// Runs a `mem` subcommand.
pub fn run(cmd: MemCommand, globals: &Globals) -> anyhow::Result<ExitCode> {
    match cmd {
        MemCommand::Info(args) => info(args, globals),
        MemCommand::Test(args) => test(args, globals),
    }
}

fn info(args: InfoArgs, globals: &Globals) -> anyhow::Result<ExitCode> {
    let root = &globals.sysfs;
    let pools = report::pools(root, args.provider)?;
    if args.json {
        output::print_json(&pools, false)?;
    } else if args.prometheus {
        write!(output::stdout(), "{}", report::prometheus_text(&pools))?;
    } else {
        write!(output::stdout(), "{}", report::pools_table(root, &pools))?;
    }
    if !globals.quiet {
        if let Ok(tree) = globals.read_tree(root) {
            crate::cmd::print_host_notes(&tree);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn test(args: TestArgs, globals: &Globals) -> anyhow::Result<ExitCode> {
    let root = &globals.sysfs;
    let report = pool_test::run(
        root,
        &PoolTestRequest {
            provider: args.provider,
            size: args.size,
            buffers: args.buffers,
            exhaust: args.exhaust,
            unbind_after_map: args.unbind_after_map,
            while_mapped: args.while_mapped.clone(),
        },
    )
    .map_err(|e| match e {
        // The pool's own error, so `output::classify` sees it (kind `invalid_input` for
        // a missing device or pool, `permission_denied` for the allocate file).
        PoolTestError::P2pmem(e) => anyhow::Error::new(e),
        e => anyhow::Error::new(e),
    })?;
    let error = report::pool_test_error(&report);
    let passed = report.passed;
    let printed = if args.json {
        output::print_json(&WithError { report, error }, false).map_err(Into::into)
    } else {
        write!(output::stdout(), "{}", report::pool_test_text(&report)).map_err(Into::into)
    };
    output::unless_broken_pipe(printed)?;
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
