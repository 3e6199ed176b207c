//! `p2pdma lab ...` (issue 2: being written).

use std::process::ExitCode;

use crate::Globals;

/// The lab's subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Check the host and install what the lab needs.
    Setup,
}

pub fn run(_cmd: LabCommand, _globals: &Globals) -> anyhow::Result<ExitCode> {
    anyhow::bail!("p2pdma lab is not implemented yet")
}
