//! What p2pdma shows: the renderers and output structs of every view, as library API.
//!
//! The `p2pdma` binary parses arguments, calls these, and prints the strings or
//! serialises the structs; a library user gets the same tree, matrix, explanation, DOT,
//! SVG, pool table or Prometheus text without shelling out.
//! - [`topo`]: the PCI tree, the verdict matrix, an explanation, the provider choice,
//!   the (provider, namespace) pairs, DOT and SVG.
//! - [`copy`]: `copy`'s dry-run plan, its summary, a verification mismatch, and the
//!   error details (and kind) of a copy the engine stopped.
//! - [`error`]: the JSON error document and the exit-status table of every command.
//! - [`host`]: what the host facts imply beyond the rules: stable fixes the kernel
//!   release lacks, functions that may be providers without a pool.
//! - [`mem`]: p2pmem pools (`mem info`: table, JSON, Prometheus) and the `mem test`
//!   report ([`crate::p2pmem::pool_test`] runs the test).
//!
//! - [`probe`]: `probe --json`'s error object ([`crate::probe::text`] renders the
//!   sentence beside the probe itself).
//!
//! Renderers are pure functions of parsed structs; the few functions that read
//! (`pairs`, `pools`) take a [`crate::sysfs::SysfsRoot`].

pub mod copy;
pub mod error;
pub mod host;
pub mod mem;
pub mod probe;
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
