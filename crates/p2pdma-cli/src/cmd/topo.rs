//! `p2pdma topo` and `p2pdma snapshot` (issue 3: being written).

use std::process::ExitCode;

use crate::Globals;

/// Arguments of `p2pdma topo`.
#[derive(Debug, clap::Args)]
pub struct TopoArgs {}

/// Arguments of `p2pdma snapshot`.
#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {}

pub fn run(_args: TopoArgs, _globals: &Globals) -> anyhow::Result<ExitCode> {
    anyhow::bail!("p2pdma topo is not implemented yet")
}

pub fn snapshot(_args: SnapshotArgs, _globals: &Globals) -> anyhow::Result<ExitCode> {
    anyhow::bail!("p2pdma snapshot is not implemented yet")
}
