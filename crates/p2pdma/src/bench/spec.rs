//! What a benchmark is asked to do, and the checks that need no device (pure).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::copy::plan::{parse_size, PlanError, MAX_CHUNK_SIZE, MAX_QUEUE_DEPTH};
use crate::Bdf;

/// Smallest block size accepted: one 512-byte sector (the device's own O_DIRECT block size
/// is checked once the targets are inspected).
pub const MIN_BLOCK_SIZE: u64 = 512;

/// Most jobs (threads, each with its own ring and buffers) accepted.
pub const MAX_JOBS: u32 = 64;

/// What moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// The source (`--src`) into the buffers.
    Read,
    /// The buffers to the destination (`--dst`).
    Write,
    /// Source into the buffers, then the buffers to the destination: the copy engine.
    Copy,
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Workload::Read => "read",
            Workload::Write => "write",
            Workload::Copy => "copy",
        })
    }
}

/// Which memory the I/O buffers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemKind {
    /// A p2pmem provider's memory: the data goes device to device.
    P2p,
    /// Page-aligned host memory.
    Host,
}

impl fmt::Display for MemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemKind::P2p => "p2p",
            MemKind::Host => "host",
        })
    }
}

/// Which memory kinds to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Modes {
    /// p2pmem only.
    P2p,
    /// Host memory only.
    Host,
    /// Both, interleaved run by run (p2p, host, p2p, host, ...).
    Both,
}

impl Modes {
    /// The kinds, in the order runs interleave.
    pub fn kinds(self) -> Vec<MemKind> {
        match self {
            Modes::P2p => vec![MemKind::P2p],
            Modes::Host => vec![MemKind::Host],
            Modes::Both => vec![MemKind::P2p, MemKind::Host],
        }
    }

    /// Whether p2pmem is needed.
    pub fn wants_p2p(self) -> bool {
        self != Modes::Host
    }
}

/// Order of the requests within the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// Block after block.
    Seq,
    /// Every block of the range once per pass, in a pseudo-random order (as fio's
    /// default random map).
    Rand,
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pattern::Seq => "seq",
            Pattern::Rand => "rand",
        })
    }
}

/// A benchmark, as the user asked for it (checked by [`BenchRequest::check`], then against
/// the targets by the runner).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchRequest {
    /// What moves.
    pub workload: Workload,
    /// What is read (`read`, `copy`).
    pub src: Option<PathBuf>,
    /// What is written (`write`, `copy`): only ever a target the user named explicitly.
    pub dst: Option<PathBuf>,
    /// Which memory kinds.
    pub modes: Modes,
    /// The p2pmem provider [default: the route logic's choice, as for `copy`].
    pub provider: Option<Bdf>,
    /// Block sizes, one case each (bytes per request; per buffer).
    pub block_sizes: Vec<u64>,
    /// Queue depths, one case each (requests in flight per job; for copy, per direction).
    pub iodepths: Vec<u32>,
    /// Jobs (threads), each on its own slice of the range with its own ring and buffers.
    pub jobs: u32,
    /// Request order.
    pub pattern: Pattern,
    /// Bytes per run (all jobs together), from offset 0.
    pub size: Option<u64>,
    /// Time per run (the range is gone over again until it is up).
    pub runtime: Option<Duration>,
    /// Unmeasured runs per case and mode before the measured ones.
    pub warmup: u32,
    /// Measured runs per case and mode.
    pub repeat: u32,
    /// Also run fio with the same shape, interleaved, and report ratios.
    pub fio: bool,
    /// Allow growing (or creating) a destination regular file, as `copy --force`.
    pub force: bool,
    /// Judge P2P by this kernel release's rules instead of the running kernel's.
    pub kernel_release: Option<String>,
}

/// Why a request was refused before anything was opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A block size list could not be parsed.
    #[error("--bs '{input}': {why} (give a list like 64k,1M,4M or a doubling sweep like 4k..4M)")]
    BadBlockSizeList {
        /// What the user wrote.
        input: String,
        /// What is wrong.
        why: String,
    },
    /// A block size is zero, too large or not a multiple of 512.
    #[error("--bs {bs} is not usable: {why}")]
    BadBlockSize {
        /// The block size.
        bs: u64,
        /// Why.
        why: String,
    },
    /// A queue depth list could not be parsed, or a depth is out of range.
    #[error("--iodepth '{input}' is not usable: give numbers in 1..={MAX_QUEUE_DEPTH}, comma-separated (e.g. 4,16)")]
    BadIodepth {
        /// What the user wrote (or the offending value).
        input: String,
    },
    /// Zero or too many jobs.
    #[error("--jobs {jobs} is not usable: give 1..={MAX_JOBS}")]
    BadJobs {
        /// The value.
        jobs: u32,
    },
    /// `--repeat 0`.
    #[error("--repeat 0 measures nothing: give at least 1")]
    NoRepeat,
    /// Neither `--size` nor `--runtime`.
    #[error(
        "say how much each run moves: give --size (e.g. 256M) or --runtime (e.g. 5s), or both"
    )]
    NoAmount,
    /// `--size 0` or `--runtime 0`.
    #[error("{option} 0 moves nothing: give a positive value")]
    ZeroAmount {
        /// The option.
        option: &'static str,
    },
    /// A workload lacks the target it reads or writes.
    #[error("--workload {workload} needs {option} (the {what}); nothing is ever written to a target not named with --dst")]
    MissingTarget {
        /// The workload.
        workload: Workload,
        /// The missing option.
        option: &'static str,
        /// What it names.
        what: &'static str,
    },
    /// A target given that the workload does not use.
    #[error("--workload {workload} does not use {option}; drop it (read takes --src, write takes --dst, copy takes both)")]
    UnusedTarget {
        /// The workload.
        workload: Workload,
        /// The option.
        option: &'static str,
    },
    /// The copy engine copies in order.
    #[error("--pattern rand does not apply to --workload copy: the copy engine moves a range in order (use --workload read or write for random requests)")]
    RandomCopy,
    /// A duration could not be parsed.
    #[error("--runtime '{input}' is not a duration: give seconds, optionally with s, ms or m (e.g. 10, 10s, 500ms, 2m)")]
    BadDuration {
        /// What the user wrote.
        input: String,
    },
}

impl BenchRequest {
    /// The checks that need no device: shapes, amounts and which targets are named.
    pub fn check(&self) -> Result<(), SpecError> {
        if self.block_sizes.is_empty() {
            return Err(SpecError::BadBlockSizeList {
                input: String::new(),
                why: "no block size given".into(),
            });
        }
        for &bs in &self.block_sizes {
            check_block_size(bs)?;
        }
        if self.iodepths.is_empty() {
            return Err(SpecError::BadIodepth {
                input: String::new(),
            });
        }
        for &depth in &self.iodepths {
            if depth == 0 || depth > MAX_QUEUE_DEPTH {
                return Err(SpecError::BadIodepth {
                    input: depth.to_string(),
                });
            }
        }
        if self.jobs == 0 || self.jobs > MAX_JOBS {
            return Err(SpecError::BadJobs { jobs: self.jobs });
        }
        if self.repeat == 0 {
            return Err(SpecError::NoRepeat);
        }
        match (self.size, self.runtime) {
            (None, None) => return Err(SpecError::NoAmount),
            (Some(0), _) => return Err(SpecError::ZeroAmount { option: "--size" }),
            (_, Some(d)) if d.is_zero() => {
                return Err(SpecError::ZeroAmount {
                    option: "--runtime",
                })
            }
            _ => {}
        }
        let (needs_src, needs_dst) = match self.workload {
            Workload::Read => (true, false),
            Workload::Write => (false, true),
            Workload::Copy => (true, true),
        };
        for (needed, given, option, what) in [
            (
                needs_src,
                self.src.is_some(),
                "--src",
                "device or file read",
            ),
            (
                needs_dst,
                self.dst.is_some(),
                "--dst",
                "device or file written",
            ),
        ] {
            if needed && !given {
                return Err(SpecError::MissingTarget {
                    workload: self.workload,
                    option,
                    what,
                });
            }
            if !needed && given {
                return Err(SpecError::UnusedTarget {
                    workload: self.workload,
                    option,
                });
            }
        }
        if self.workload == Workload::Copy && self.pattern == Pattern::Rand {
            return Err(SpecError::RandomCopy);
        }
        Ok(())
    }
}

fn check_block_size(bs: u64) -> Result<(), SpecError> {
    let bad = |why: String| SpecError::BadBlockSize { bs, why };
    if bs == 0 {
        return Err(bad("it must not be 0".into()));
    }
    if !bs.is_multiple_of(MIN_BLOCK_SIZE) {
        return Err(bad(format!(
            "O_DIRECT needs a multiple of the device's logical block size (at least {MIN_BLOCK_SIZE})"
        )));
    }
    if bs > MAX_CHUNK_SIZE {
        return Err(bad(format!("the largest is {MAX_CHUNK_SIZE} (1G)")));
    }
    Ok(())
}

/// Parses `--bs`: a comma-separated list of sizes (`64k,1M,4M`) or a doubling sweep
/// (`4k..4M`: 4k, 8k, ..., 4M). Each size is checked.
pub fn parse_block_sizes(input: &str) -> Result<Vec<u64>, SpecError> {
    let bad = |why: String| SpecError::BadBlockSizeList {
        input: input.to_owned(),
        why,
    };
    let size = |s: &str| parse_size(s).map_err(|e: PlanError| bad(e.to_string()));
    let sizes = if let Some((lo, hi)) = input.split_once("..") {
        let (lo, hi) = (size(lo)?, size(hi)?);
        if lo == 0 || lo > hi {
            return Err(bad(
                "a sweep goes from a smaller non-zero size up to a larger one".into(),
            ));
        }
        let mut v = Vec::new();
        let mut bs = lo;
        while bs <= hi {
            v.push(bs);
            bs = bs.saturating_mul(2);
        }
        v
    } else {
        input
            .split(',')
            .map(|s| size(s.trim()))
            .collect::<Result<Vec<_>, _>>()?
    };
    for &bs in &sizes {
        check_block_size(bs)?;
    }
    let mut unique = sizes;
    unique.dedup();
    Ok(unique)
}

/// Parses `--iodepth`: a comma-separated list of depths (`4,16`).
pub fn parse_iodepths(input: &str) -> Result<Vec<u32>, SpecError> {
    let bad = || SpecError::BadIodepth {
        input: input.to_owned(),
    };
    input
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<u32>()
                .ok()
                .filter(|d| (1..=MAX_QUEUE_DEPTH).contains(d))
                .ok_or_else(bad)
        })
        .collect()
}

/// Parses `--runtime`: `10`, `10s`, `500ms`, `2m`.
pub fn parse_duration(input: &str) -> Result<Duration, SpecError> {
    let bad = || SpecError::BadDuration {
        input: input.to_owned(),
    };
    let t = input.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(bad),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> BenchRequest {
        BenchRequest {
            workload: Workload::Copy,
            src: Some("/dev/a".into()),
            dst: Some("/dev/b".into()),
            modes: Modes::Both,
            provider: None,
            block_sizes: vec![1 << 20],
            iodepths: vec![4],
            jobs: 1,
            pattern: Pattern::Seq,
            size: Some(64 << 20),
            runtime: None,
            warmup: 0,
            repeat: 3,
            fio: false,
            force: false,
            kernel_release: None,
        }
    }

    #[test]
    fn block_size_lists_and_sweeps() {
        assert_eq!(
            parse_block_sizes("64k,1M,4M").unwrap(),
            vec![64 << 10, 1 << 20, 4 << 20]
        );
        assert_eq!(
            parse_block_sizes("4k..32k").unwrap(),
            vec![4096, 8192, 16384, 32768]
        );
        assert_eq!(parse_block_sizes("1M").unwrap(), vec![1 << 20]);
        for bad in ["", "0", "4k,,8k", "1000", "8k..4k", "2G", "x"] {
            assert!(parse_block_sizes(bad).is_err(), "{bad}");
        }
        let msg = parse_block_sizes("1000").unwrap_err().to_string();
        assert!(msg.contains("--bs 1000") && msg.contains("512"), "{msg}");
    }

    #[test]
    fn depths_and_durations() {
        assert_eq!(parse_iodepths("4,16").unwrap(), vec![4, 16]);
        assert!(parse_iodepths("0").is_err());
        assert!(parse_iodepths("4,999").is_err());
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn requests_are_checked_before_any_device_is_touched() {
        assert_eq!(request().check(), Ok(()));
        let mut r = request();
        r.size = None;
        assert_eq!(r.check(), Err(SpecError::NoAmount));
        r.runtime = Some(Duration::ZERO);
        assert!(matches!(r.check(), Err(SpecError::ZeroAmount { .. })));
        let mut r = request();
        r.iodepths = vec![0];
        assert!(matches!(r.check(), Err(SpecError::BadIodepth { .. })));
        let mut r = request();
        r.block_sizes = vec![0];
        assert!(matches!(r.check(), Err(SpecError::BadBlockSize { .. })));
        let mut r = request();
        r.pattern = Pattern::Rand;
        assert_eq!(r.check(), Err(SpecError::RandomCopy));
        let mut r = request();
        r.repeat = 0;
        assert_eq!(r.check(), Err(SpecError::NoRepeat));
        let mut r = request();
        r.jobs = 0;
        assert!(matches!(r.check(), Err(SpecError::BadJobs { .. })));
    }

    #[test]
    fn writes_need_an_explicit_destination() {
        let mut r = request();
        r.workload = Workload::Write;
        r.src = None;
        r.dst = None;
        let e = r.check().unwrap_err();
        assert!(
            matches!(
                e,
                SpecError::MissingTarget {
                    option: "--dst",
                    ..
                }
            ),
            "{e}"
        );
        let mut r = request();
        r.workload = Workload::Read;
        assert!(matches!(
            r.check(),
            Err(SpecError::UnusedTarget {
                option: "--dst",
                ..
            })
        ));
        r.dst = None;
        assert_eq!(r.check(), Ok(()));
    }
}
