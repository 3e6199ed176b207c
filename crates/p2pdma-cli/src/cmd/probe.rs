//! `p2pdma probe`: one real P2P read, to learn what the kernel allows between two devices
//! (the work is [`p2pdma::probe`]'s; this parses, prints and sets the exit status).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use p2pdma::probe::{self, ProbeError};
use p2pdma::report::error::WithError;
use p2pdma::report::probe::probe_error;
use p2pdma::Bdf;

use crate::output;
use crate::Globals;

/// Arguments of `p2pdma probe`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 the device's data arrived in the provider's memory; 3 the kernel \
refused P2P; 1 the read failed otherwise, or completed without delivering the device's data."
)]
pub struct ProbeArgs {
    /// The p2pmem provider to allocate the buffer from (PCI address, e.g. 0000:01:00.0).
    #[arg(long, value_name = "BDF")]
    provider: Bdf,
    /// The block device to read from with O_DIRECT (e.g. /dev/nvme1n1). Nothing is written.
    #[arg(value_name = "CLIENT")]
    client: PathBuf,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    json: bool,
}

/// Runs the probe. Exits 0 when the device's data arrived, 3 ([`Kind::P2pRefused`]) when
/// the kernel refused P2P, 1 when the read failed otherwise, delivered nothing, or the
/// probe cannot be set up.
pub fn probe(args: ProbeArgs, globals: &Globals) -> anyhow::Result<ExitCode> {
    let root = &globals.sysfs;
    let tree = globals.read_tree(root).ok();
    let (verdict_p2p, kernel_release) =
        probe::verdict(root, tree.as_ref(), args.provider, &args.client);
    let report = probe::run(
        root,
        args.provider,
        &args.client,
        verdict_p2p,
        kernel_release,
    )
    .map_err(|e| match e {
        // The pool's own error, so `output::classify` sees it.
        ProbeError::P2pmem(e) => anyhow::Error::new(e),
        e => anyhow::Error::new(e),
    })?;
    let error = probe_error(&report);
    let exit = error.as_ref().map_or(ExitCode::SUCCESS, |e| e.kind.exit());
    let printed = if args.json {
        output::print_json(&WithError { report, error }, false).map_err(Into::into)
    } else {
        write!(output::stdout(), "{}", probe::text(&report)).map_err(Into::into)
    };
    output::unless_broken_pipe(printed)?;
    Ok(exit)
}
