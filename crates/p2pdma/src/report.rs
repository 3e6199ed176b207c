//! What p2pdma shows: the renderers and output structs of every view, as library API.
//!
//! The `p2pdma` binary parses arguments, calls these, and prints the strings or
//! serialises the structs; a library user gets the same tree, matrix, explanation, DOT,
//! SVG, pool table or Prometheus text without shelling out.
//! - [`topo`]: the PCI tree, the verdict matrix, an explanation, the provider choice,
//!   the (provider, namespace) pairs, DOT and SVG.
//! - [`host`]: the host facts as a reader needs them: CPU, kernel, `CONFIG_PCI_P2PDMA`,
//!   stable fixes the release lacks, pool-less providers.
//! - [`mem`]: p2pmem pools (`mem info`: table, JSON, Prometheus) and the `mem test`
//!   report.
//! - [`probe`]: the result of one P2P read (`probe`).
//!
//! Renderers are pure functions of parsed structs; the few functions that read
//! (`pairs`, `pools`) take a [`crate::sysfs::SysfsRoot`].

pub mod topo;

use crate::resolve::ResolveError;

/// Why a report could not be put together.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A device name taken from the tree did not resolve.
    #[error("resolving {name}")]
    Resolve {
        /// The name (`nvme1n1`).
        name: String,
        /// Why it did not resolve.
        #[source]
        source: ResolveError,
    },
}
