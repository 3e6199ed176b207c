//! Copying ranges between NVMe devices and files: planning, routing, the pipeline and its I/O backends.
//!
//! A copy is planned first ([`plan`]: sizes, alignment, bounds, overlap and destination
//! safety, all decided before any write; [`route`]: which p2pmem provider, the topology
//! verdicts, bounce or not), then run by [`engine`], which pipelines reads and writes
//! through a few buffers over an I/O backend ([`backend::IoBackend`]; the kernel path is
//! [`uring`], io_uring over O_DIRECT files, and [`pipeline`] keeps the buffers alive while
//! the backend uses them): p2pmem buffers ([`p2p_buffer::P2pSlot`]) for a P2P copy,
//! so the data goes device to device, or [`host_buffer::HostBuffer`]s for a bounce copy
//! through host RAM. [`verify`] re-reads both ranges through host memory afterwards, both
//! at once, hashing as the chunks come in.
//!
//! # References
//! - io_uring_enter(2) (`IORING_OP_READ`, `IORING_OP_WRITE`, `IORING_OP_READ_FIXED`,
//!   `IORING_OP_WRITE_FIXED`), io_uring_register(2) (`IORING_REGISTER_FILES`,
//!   `IORING_REGISTER_BUFFERS`), io_uring_setup(2) (`IORING_SETUP_DEFER_TASKRUN`),
//!   open(2) (`O_DIRECT`), fallocate(2)
//! - statx(2) (`STATX_DIOALIGN`)

pub mod backend;
pub mod endpoint;
pub mod engine;
#[cfg(test)]
mod fake;
pub mod host_buffer;
pub mod job;
pub mod p2p_buffer;
pub mod pipeline;
pub mod plan;
pub mod route;
#[cfg(test)]
pub(crate) mod test_files;
pub mod uring;
pub mod verify;

pub use backend::{Completion, DmaBuffer, IoBackend, IoRequest, Reap, Target};
pub use engine::{
    Direction, Endpoint, EngineError, EngineReport, FailureKind, IoFailure, IoRegion, Op, Written,
};
pub use host_buffer::HostBuffer;
pub use p2p_buffer::P2pSlot;
pub use plan::{
    parse_size, CopyPlan, CopyRequest, EndpointFacts, EndpointKind, PlanError, StorageId,
};
pub use route::{Bounce, Mode, Route, RouteError, Side};
pub use verify::{verify, Verification, VerifyError};
