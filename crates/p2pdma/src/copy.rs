//! The io_uring O_DIRECT copy engine.
//!
//! A copy is planned first ([`plan`]: sizes, alignment, bounds, overlap and destination
//! safety, all decided before any write), then run by [`engine`], which pipelines
//! O_DIRECT reads and writes through a few buffers: p2pmem buffers for a P2P copy, so the
//! data goes device to device, or [`host_buffer::HostBuffer`]s for a bounce copy through
//! host RAM. [`verify`] re-reads both ranges through host memory afterwards.
//!
//! # References
//! - io_uring_enter(2) (`IORING_OP_READ`, `IORING_OP_WRITE`), open(2) (`O_DIRECT`)
//! - statx(2) (`STATX_DIOALIGN`)

pub mod engine;
pub mod host_buffer;
pub mod plan;
pub mod verify;

pub use engine::{
    Endpoint, EngineError, EngineReport, FailureKind, IoFailure, IoRegion, Op, Written,
};
pub use host_buffer::HostBuffer;
pub use plan::{
    parse_size, CopyPlan, CopyRequest, EndpointFacts, EndpointKind, PlanError, StorageId,
};
pub use verify::{verify, Verification, VerifyError};
