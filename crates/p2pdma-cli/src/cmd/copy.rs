//! `p2pdma copy` (issue 4: being written).

use std::process::ExitCode;

use crate::Globals;

/// Arguments of `p2pdma copy`.
#[derive(Debug, clap::Args)]
pub struct CopyArgs {}

pub fn run(_args: CopyArgs, _globals: &Globals) -> anyhow::Result<ExitCode> {
    anyhow::bail!("p2pdma copy is not implemented yet")
}
