//! `p2pdma bench`: throughput, IOPS, latency and CPU cost of O_DIRECT I/O through p2pmem
//! and through host memory, side by side, optionally against fio with the same shape.
//!
//! A benchmark is a [`BenchRequest`] (checked without devices by
//! [`BenchRequest::check`]), run by [`run`] into a [`BenchReport`], a `Serialize` struct
//! that [`BenchReport::to_table`], [`BenchReport::to_json`] and [`plot::svg`] render.
//!
//! - Workloads: `read` (device or file into buffers), `write` (buffers to a device or file
//!   named with `--dst`), `copy` (the copy engine of [`crate::copy::engine`], exactly what
//!   `p2pdma copy` runs, plus the source read alone and the destination written alone: the
//!   devices' ceiling).
//! - Memory kinds: p2pmem of a provider (any PCI device with a `p2pmem/` pool; chosen as
//!   `copy` chooses, or given) and page-aligned host memory, interleaved run by run so that
//!   drift (other load, caches, thermal) hits both.
//! - Figures per run: bytes, wall time, throughput, IOPS, per-request completion latency
//!   (an HDR histogram: p50, p90, p99, p99.9, max) for `read` and `write`, and CPU seconds
//!   (user + system, `getrusage(RUSAGE_SELF)`, io_uring workers included) per GiB. Spread
//!   over repetitions is min / median / max; no run is ever left out.
//!
//! # References
//! - fio(1): `--output-format=json`, `mem=mmapshared:FILE`, `offset_increment`
//! - io_uring_enter(2), getrusage(2); Linux `Documentation/block/stat.rst` for the
//!   counters the lab test checks the reported bytes against.

pub mod cpu;
pub mod fio;
pub mod io;
mod lent;
pub mod plot;
pub mod report;
mod runner;
pub mod spec;
pub mod stats;

use std::io as stdio;
use std::path::PathBuf;

pub use report::{BenchReport, CaseResult, Engine, Measures, RunFigures};
pub use runner::{run, NoProgress, Progress};
pub use spec::{BenchRequest, MemKind, Modes, Pattern, SpecError, Workload};

use crate::copy::endpoint::EndpointError;
use crate::copy::engine::{EngineError, FailureKind, Op};
use crate::copy::host_buffer::HostBufferError;
use crate::copy::plan::PlanError;
use crate::copy::route::RouteError;
use crate::p2pmem::P2pmemError;
use crate::Bdf;

/// Why a benchmark could not run or stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The request itself is wrong.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A target cannot be inspected or opened.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// A target is refused (mounted, held, read-only, too small, overlapping): the same
    /// checks as `p2pdma copy`.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A block size does not suit a target's O_DIRECT block size.
    #[error("--bs {bs} is not a multiple of {block_size}, the O_DIRECT block size of {}; use a multiple of {block_size}", path.display())]
    UnalignedBlockSize {
        /// The block size.
        bs: u64,
        /// The target.
        path: PathBuf,
        /// Its O_DIRECT block size.
        block_size: u64,
    },
    /// `--size` is not a multiple of a target's block size.
    #[error("--size {size} is not a multiple of {block_size}, the O_DIRECT block size of {}", path.display())]
    UnalignedSize {
        /// The size.
        size: u64,
        /// The target.
        path: PathBuf,
        /// Its block size.
        block_size: u64,
    },
    /// The target is smaller than the range asked for.
    #[error("{} has {available} bytes, fewer than --size {size}; give a smaller --size", path.display())]
    TargetTooSmall {
        /// The target.
        path: PathBuf,
        /// Its size.
        available: u64,
        /// The size asked for.
        size: u64,
    },
    /// Time-based writes to a file need a range.
    #[error("{} is an empty or missing file: give --size so the benchmark knows how much of it to write (with --force to create or grow it)", path.display())]
    NoRange {
        /// The file.
        path: PathBuf,
    },
    /// Each job needs at least one block.
    #[error("--size {size} split over --jobs {jobs} leaves less than one block of --bs {bs} per job; give a larger --size or fewer --jobs")]
    RangeTooSmall {
        /// The size.
        size: u64,
        /// The jobs.
        jobs: u32,
        /// The block size.
        bs: u64,
    },
    /// P2P cannot be measured here.
    #[error("p2p mode is impossible here: {why}; measure host memory only with --mode host")]
    P2pImpossible {
        /// Why.
        why: String,
    },
    /// The kernel refused P2P DMA between the provider and a target.
    #[error("the kernel refused P2P DMA through the p2pmem of {provider}: {why}; measure host memory only with --mode host, or pick another --provider")]
    P2pRefused {
        /// The provider.
        provider: Bdf,
        /// The topology's reason, or where to look.
        why: String,
        /// The failed request.
        #[source]
        source: Box<BenchError>,
    },
    /// `--provider` names a device without p2pmem.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The provider's pool cannot hold the buffers of a case.
    #[error("the p2pmem pool of {provider} has {available} bytes free, but {what} needs {needed} (jobs x iodepth x bs, twice that for copy); use a smaller --bs, --iodepth or --jobs")]
    PoolTooSmall {
        /// The provider.
        provider: Bdf,
        /// Free bytes.
        available: u64,
        /// Bytes needed.
        needed: u64,
        /// Which run needs them.
        what: String,
    },
    /// A p2pmem allocation failed.
    #[error("allocating {len} bytes of p2pmem from {provider}")]
    P2pmem {
        /// The provider.
        provider: Bdf,
        /// Bytes asked for.
        len: u64,
        /// The error.
        #[source]
        source: P2pmemError,
    },
    /// A host buffer could not be allocated.
    #[error(transparent)]
    HostBuffer(#[from] HostBufferError),
    /// io_uring is unavailable.
    #[error("cannot set up an io_uring with {entries} entries (Linux >= 5.6 with io_uring enabled; check /proc/sys/kernel/io_uring_disabled)")]
    Ring {
        /// Ring size.
        entries: u32,
        /// The error.
        #[source]
        source: stdio::Error,
    },
    /// `io_uring_enter` failed with requests in flight (the buffers were leaked).
    #[error("io_uring_enter failed during the run on {} (buffers leaked to stay safe)", path.display())]
    RingFailed {
        /// The target.
        path: PathBuf,
        /// The error.
        #[source]
        source: stdio::Error,
    },
    /// A request failed.
    #[error("{op} of {len} bytes at offset {offset} of {} failed: {kind}", path.display())]
    Io {
        /// Read or write.
        op: Op,
        /// The target.
        path: PathBuf,
        /// Offset of the request.
        offset: u64,
        /// Its length.
        len: u64,
        /// What the errno means here.
        kind: FailureKind,
        /// The error.
        #[source]
        source: stdio::Error,
    },
    /// The copy engine stopped.
    #[error("the copy engine stopped during the {mode} copy run")]
    Engine {
        /// The memory kind.
        mode: MemKind,
        /// The error.
        #[source]
        source: EngineError,
    },
    /// `--fio` without fio.
    #[error("--fio needs fio, which is not installed (not found in PATH); install it (Debian/Ubuntu: apt-get install fio) or drop --fio")]
    FioMissing,
    /// fio could not be started.
    #[error("cannot run {}", fio.display())]
    FioSpawn {
        /// The program.
        fio: PathBuf,
        /// The error.
        #[source]
        source: stdio::Error,
    },
    /// fio failed.
    #[error("fio failed ({status}): {why}; the command was: {command}")]
    FioFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// fio's first message.
        why: String,
    },
    /// fio's output could not be read.
    #[error("reading fio's output for job {job}: {why}")]
    FioOutput {
        /// The job.
        job: String,
        /// What is wrong.
        why: String,
    },
    /// getrusage failed.
    #[error("getrusage(RUSAGE_SELF) failed")]
    Cpu(#[source] stdio::Error),
    /// The plot could not be drawn.
    #[error("drawing the plot: {0}")]
    Plot(String),
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}
