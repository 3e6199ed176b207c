//! `p2pdma bench --via vfio`: the VFIO copy's throughput and CPU cost, with the kernel
//! path's figures (MiB/s min / median / max over the measured runs, CPU seconds per GiB;
//! [`p2pdma::bench::RunFigures`], [`p2pdma::bench::report::Summary`]) and the same
//! chunking and depth flags, then one verification of the copied range with the kernel
//! path's comparison.
//!
//! fio cannot drive controllers bound to vfio-pci, so the yardstick is a kernel-path
//! `p2pdma bench --workload copy --json` report of the same namespaces made in the same
//! boot before `vfio attach` (or after `vfio detach`), given as [`Yardstick`]: its fio
//! rows (fio's O_DIRECT copy-equivalent through the kernel's nvme driver) and its p2pdma
//! rows (the kernel path's copy through p2pmem or host memory). Ratios are VFIO's median
//! over theirs, per block size and depth.
//!
//! Each run copies `size` bytes from offset 0 of the source namespace to offset 0 of the
//! destination through the same pool, so every run writes the same bytes; the comparison
//! after the last run checks them all.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use p2pdma::bench::cpu::CpuTimes;
use p2pdma::bench::report::{short_size, Machine, Summary};
use p2pdma::bench::stats::Spread;
use p2pdma::bench::{Progress, RunFigures};
use p2pdma::copy::verify::Verification;
use p2pdma::display::HumanBytes;
use p2pdma::sysfs::SysfsRoot;
use p2pdma::Bdf;
use serde::{Deserialize, Serialize};

use crate::driver::CmbInfo;
use crate::job::{Namespace, Opened, VfioCopyError, VfioCopyJob};

/// A VFIO benchmark as asked for.
#[derive(Debug, Clone)]
pub struct VfioBenchRequest {
    /// The namespace read.
    pub src: Namespace,
    /// The namespace written (overwritten from offset 0 for `size` bytes).
    pub dst: Namespace,
    /// The pool's device [default: the source controller's CMB].
    pub provider: Option<Bdf>,
    /// The BAR of a provider that is not one of the controllers.
    pub provider_bar: u32,
    /// Bytes per command asked for (each cut to the controllers' MDTS).
    pub block_sizes: Vec<u64>,
    /// Chunks in flight per direction.
    pub iodepths: Vec<u32>,
    /// Bytes per run, from offset 0.
    pub size: u64,
    /// Unmeasured runs per case first.
    pub warmup: u32,
    /// Measured runs per case.
    pub repeat: u32,
    /// The kernel path's report of the same namespaces, same boot.
    pub yardstick: Option<Yardstick>,
    /// The sysfs root.
    pub sysfs: SysfsRoot,
}

/// Why a VFIO benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum VfioBenchError {
    /// Nothing to measure.
    #[error("--repeat 0 measures nothing: give at least 1")]
    NoRuns,
    /// No block size or depth.
    #[error("give at least one --bs and one --iodepth")]
    NoCases,
    /// The devices, the pool, a copy or the verification failed.
    #[error(transparent)]
    Copy(#[from] VfioCopyError),
    /// The process's CPU times could not be read.
    #[error("cannot read the process's CPU times (getrusage)")]
    Cpu(#[source] std::io::Error),
    /// The yardstick report cannot be read.
    #[error("cannot read the yardstick report {}", path.display())]
    YardstickRead {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The yardstick report is not a `p2pdma bench --workload copy --json` report.
    #[error("{} is not the JSON report of `p2pdma bench --workload copy --json` (made before `vfio attach`)", path.display())]
    YardstickParse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The yardstick measured another workload.
    #[error("{} measured the {workload} workload; the VFIO bench compares copies: make it with --workload copy", path.display())]
    YardstickWorkload {
        /// The file.
        path: PathBuf,
        /// Its workload.
        workload: String,
    },
}

/// Figures of the kernel path (fio and p2pdma) from a `bench --json` report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Yardstick {
    /// The report file.
    pub file: PathBuf,
    /// The kernel it ran on.
    pub kernel: String,
    /// When it ran.
    pub date: String,
    /// Its source and destination (block devices).
    pub src: Option<PathBuf>,
    /// Its destination.
    pub dst: Option<PathBuf>,
    /// Bytes per run.
    pub size: u64,
    /// fio's version.
    pub fio_version: Option<String>,
    /// Its copy rows that have figures.
    pub rows: Vec<YardstickRow>,
}

/// One row of the yardstick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct YardstickRow {
    /// `p2pdma` (the kernel path's copy engine) or `fio`.
    pub engine: String,
    /// `p2p` (p2pmem buffers) or `host`.
    pub mode: String,
    /// Bytes per request.
    pub bs: u64,
    /// Requests in flight per direction.
    pub iodepth: u32,
    /// Throughput over its runs, MiB/s.
    pub bw_mib_s: Spread,
}

impl YardstickRow {
    /// `fio host`, `p2pdma p2p`, ...
    pub fn label(&self) -> String {
        format!("{} {}", self.engine, self.mode)
    }
}

#[derive(Deserialize)]
struct ReportIn {
    workload: String,
    src: Option<PathBuf>,
    dst: Option<PathBuf>,
    size: u64,
    machine: MachineIn,
    fio_version: Option<String>,
    results: Vec<RowIn>,
}

#[derive(Deserialize)]
struct MachineIn {
    kernel: String,
    date: String,
}

#[derive(Deserialize)]
struct RowIn {
    engine: String,
    measures: String,
    mode: String,
    bs: u64,
    iodepth: u32,
    summary: Option<SummaryIn>,
}

#[derive(Deserialize)]
struct SummaryIn {
    bw_mib_s: SpreadIn,
}

#[derive(Deserialize)]
struct SpreadIn {
    min: f64,
    median: f64,
    max: f64,
}

impl Yardstick {
    /// Reads a `p2pdma bench --workload copy --json` report.
    pub fn read(path: &Path) -> Result<Yardstick, VfioBenchError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| VfioBenchError::YardstickRead {
                path: path.to_owned(),
                source,
            })?;
        Yardstick::parse(&text, path)
    }

    /// Parses the report `text` (read from `path`, named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Yardstick, VfioBenchError> {
        let report: ReportIn =
            serde_json::from_str(text).map_err(|source| VfioBenchError::YardstickParse {
                path: path.to_owned(),
                source,
            })?;
        if report.workload != "copy" {
            return Err(VfioBenchError::YardstickWorkload {
                path: path.to_owned(),
                workload: report.workload,
            });
        }
        let rows = report
            .results
            .into_iter()
            .filter(|r| r.measures == "workload")
            .filter_map(|r| {
                let s = r.summary?.bw_mib_s;
                Some(YardstickRow {
                    engine: r.engine,
                    mode: r.mode,
                    bs: r.bs,
                    iodepth: r.iodepth,
                    bw_mib_s: Spread {
                        min: s.min,
                        median: s.median,
                        max: s.max,
                    },
                })
            })
            .collect();
        Ok(Yardstick {
            file: path.to_owned(),
            kernel: report.machine.kernel,
            date: report.machine.date,
            src: report.src,
            dst: report.dst,
            size: report.size,
            fio_version: report.fio_version,
            rows,
        })
    }
}

/// One block size and depth of the VFIO copy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VfioCase {
    /// Bytes per command asked for (`--bs`).
    pub bs: u64,
    /// Bytes per command used (cut to the controllers' MDTS, whole pages).
    pub chunk: u64,
    /// Depth asked for (`--iodepth`).
    pub iodepth: u32,
    /// Chunks in flight used (at most what the pool holds).
    pub depth: usize,
    /// Every measured run, in the order run.
    pub runs: Vec<RunFigures>,
    /// Their spread.
    pub summary: Option<Summary>,
}

/// Everything one `bench --via vfio` measured.
#[derive(Debug, Clone, Serialize)]
pub struct VfioBenchReport {
    /// Always `"vfio"`.
    pub via: &'static str,
    /// Always `"copy"`.
    pub workload: &'static str,
    /// `BDF/NSID` read.
    pub src: String,
    /// `BDF/NSID` written.
    pub dst: String,
    /// Bytes per run.
    pub size: u64,
    /// Unmeasured runs per case.
    pub warmup: u32,
    /// Measured runs per case.
    pub repeat: u32,
    /// The pool's device.
    pub provider: String,
    /// `"cmb"` or `"bar"`.
    pub provider_kind: &'static str,
    /// The CMB's registers, when the pool is a CMB.
    pub cmb: Option<CmbInfo>,
    /// Where and when.
    pub machine: Machine,
    /// Every case.
    pub results: Vec<VfioCase>,
    /// The comparison of both ranges after the last run.
    pub verification: Verification,
    /// Wall time of the verification.
    pub verify_seconds: f64,
    /// Whether the destination range holds the source's bytes.
    pub verified: bool,
    /// The kernel path's figures compared against.
    pub yardstick: Option<Yardstick>,
    /// Per case (`copy bs=1M iodepth=4`): VFIO's median MiB/s over each yardstick row's
    /// of the same block size and depth (`fio host`, `p2pdma p2p`, ...).
    pub ratios: BTreeMap<String, BTreeMap<String, f64>>,
    /// How to read the figures.
    pub notes: Vec<String>,
}

/// Key of a case in [`VfioBenchReport::ratios`] (the kernel path's spelling, without
/// the memory kind).
pub fn case_key(bs: u64, iodepth: u32) -> String {
    format!("copy bs={} iodepth={iodepth}", short_size(bs))
}

/// VFIO's median over each yardstick row of the same block size and depth.
pub fn ratios(
    results: &[VfioCase],
    yardstick: Option<&Yardstick>,
) -> BTreeMap<String, BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    let Some(y) = yardstick else {
        return out;
    };
    for case in results {
        let Some(ours) = case.summary.as_ref().map(|s| s.bw_mib_s.median) else {
            continue;
        };
        let per: BTreeMap<String, f64> = y
            .rows
            .iter()
            .filter(|r| r.bs == case.bs && r.iodepth == case.iodepth && r.bw_mib_s.median > 0.0)
            .map(|r| (r.label(), ours / r.bw_mib_s.median))
            .collect();
        if !per.is_empty() {
            out.insert(case_key(case.bs, case.iodepth), per);
        }
    }
    out
}

/// Runs the benchmark: opens the devices once, copies `size` bytes per run for every
/// block size and depth (warm-up runs first), then verifies the range once.
pub fn run(
    req: &VfioBenchRequest,
    progress: &mut dyn Progress,
) -> Result<VfioBenchReport, VfioBenchError> {
    if req.repeat == 0 {
        return Err(VfioBenchError::NoRuns);
    }
    if req.block_sizes.is_empty() || req.iodepths.is_empty() {
        return Err(VfioBenchError::NoCases);
    }
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut opened = Opened::open(&VfioCopyJob {
        src: req.src,
        dst: req.dst,
        src_offset: 0,
        dst_offset: 0,
        length: Some(req.size),
        chunk_size: req.block_sizes[0],
        queue_depth: req.iodepths[0],
        provider: req.provider,
        provider_bar: req.provider_bar,
        verify: true,
        sysfs: req.sysfs.clone(),
    })?;
    let cases = (req.block_sizes.len() * req.iodepths.len()) as u64;
    progress.start(cases * u64::from(req.warmup + req.repeat));
    let mut results = Vec::new();
    let mut last = None;
    for &bs in &req.block_sizes {
        for &iodepth in &req.iodepths {
            let spec = opened.spec(0, req.size, bs, iodepth);
            let mut runs = Vec::new();
            for i in 0..req.warmup + req.repeat {
                let before = CpuTimes::now().map_err(VfioBenchError::Cpu)?;
                let elapsed: Duration = opened.copy(&spec, &mut ())?;
                let cpu = CpuTimes::now().map_err(VfioBenchError::Cpu)?.since(before);
                let warm = i < req.warmup;
                if !warm {
                    runs.push(RunFigures::new(spec.length, spec.chunk, elapsed, None, cpu));
                }
                progress.run_done(&format!(
                    "vfio bs {} depth {iodepth}{}",
                    short_size(bs),
                    if warm { " (warm-up)" } else { "" }
                ));
            }
            results.push(VfioCase {
                bs,
                chunk: spec.chunk,
                iodepth,
                depth: spec.depth,
                summary: Summary::of(&runs),
                runs,
            });
            last = Some(spec);
        }
    }
    progress.finish();
    let spec = last.expect("at least one case ran");
    let (verification, took) = opened.verify(&spec, &mut ())?;
    let mut notes = vec![
        "each run copies the same range (offset 0 of both namespaces) through the pool; the comparison after the last run re-reads both ranges into host memory".to_owned(),
        "CPU seconds count the polling of the completion queues: the userspace driver spins while commands are in flight".to_owned(),
    ];
    if results.iter().any(|c| c.chunk != c.bs) {
        notes.push("a block size above the controllers' MDTS was cut to it (see chunk)".into());
    }
    if req.yardstick.is_some() {
        notes.push("ratios: the VFIO copy's median MiB/s over the yardstick's median of the same block size and depth (fio: O_DIRECT through the kernel's nvme driver, same namespaces, same boot, before attach)".into());
    }
    Ok(VfioBenchReport {
        via: "vfio",
        workload: "copy",
        src: opened.src.to_string(),
        dst: opened.dst.to_string(),
        size: req.size,
        warmup: req.warmup,
        repeat: req.repeat,
        provider: opened.provider.to_string(),
        provider_kind: opened.provider_kind,
        cmb: opened.cmb,
        machine: Machine::this(started),
        ratios: ratios(&results, req.yardstick.as_ref()),
        results,
        verified: verification.matched(),
        verification,
        verify_seconds: took.as_secs_f64(),
        yardstick: req.yardstick.clone(),
        notes,
    })
}

impl VfioBenchReport {
    /// The JSON document (`--json`).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serialises")
    }

    /// The table for people, ending with the ratio lines.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "bench copy via vfio {} -> {}: {} per run, {} measured run(s) + {} warm-up per case",
            self.src,
            self.dst,
            HumanBytes(self.size),
            self.repeat,
            self.warmup
        );
        let _ = writeln!(
            out,
            "machine: kernel {}, {} CPUs, {}",
            self.machine.kernel, self.machine.cpus, self.machine.date
        );
        let _ = writeln!(
            out,
            "device memory: {} of {}",
            if self.provider_kind == "cmb" {
                "the CMB"
            } else {
                "a BAR"
            },
            self.provider
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<18} {:<22} {:>28} {:>10}",
            "case", "engine", "MiB/s min / median / max", "CPU s/GiB"
        );
        for c in &self.results {
            let Some(s) = &c.summary else {
                continue;
            };
            let _ = writeln!(
                out,
                "{:<18} {:<22} {:>28} {:>10.3}",
                format!("bs {} depth {}", short_size(c.bs), c.iodepth),
                "vfio",
                format!(
                    "{:.1} / {:.1} / {:.1}",
                    s.bw_mib_s.min, s.bw_mib_s.median, s.bw_mib_s.max
                ),
                s.cpu_s_per_gib.median
            );
            for r in self.yardstick.iter().flat_map(|y| &y.rows) {
                if r.bs == c.bs && r.iodepth == c.iodepth {
                    let _ = writeln!(
                        out,
                        "{:<18} {:<22} {:>28} {:>10}",
                        "",
                        format!("kernel: {}", r.label()),
                        format!(
                            "{:.1} / {:.1} / {:.1}",
                            r.bw_mib_s.min, r.bw_mib_s.median, r.bw_mib_s.max
                        ),
                        "-"
                    );
                }
            }
        }
        let _ = writeln!(out);
        let v = &self.verification;
        match v.first_difference {
            None if self.verified => {
                let _ = writeln!(
                    out,
                    "verified: {} of {} equals {} (xxh3-128 {:032x}) in {:.2} s",
                    HumanBytes(self.size),
                    self.dst,
                    self.src,
                    v.dst_digest,
                    self.verify_seconds
                );
            }
            at => {
                let _ = writeln!(
                    out,
                    "NOT verified: {} differs from {} at offset {} (xxh3-128 {:032x} vs {:032x})",
                    self.dst,
                    self.src,
                    at.unwrap_or(0),
                    v.dst_digest,
                    v.src_digest
                );
            }
        }
        if let Some(y) = &self.yardstick {
            let _ = writeln!(
                out,
                "yardstick: {} (kernel {}, {}{})",
                y.file.display(),
                y.kernel,
                y.date,
                y.fio_version
                    .as_ref()
                    .map(|v| format!(", {v}"))
                    .unwrap_or_default()
            );
        }
        if !self.ratios.is_empty() {
            let _ = writeln!(out, "ratios (vfio median / theirs):");
        }
        for c in &self.results {
            let key = case_key(c.bs, c.iodepth);
            if let Some(per) = self.ratios.get(&key) {
                let parts: Vec<String> = per
                    .iter()
                    .map(|(label, x)| format!("vfio/{label} {x:.3}"))
                    .collect();
                let _ = writeln!(out, "  {key}: {}", parts.join(", "));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"{
      "workload": "copy", "src": "/dev/nvme0n1", "dst": "/dev/nvme1n1", "size": 33554432,
      "machine": {"kernel": "7.2.13+deb14-amd64", "cpus": 2, "unix_time": 1, "date": "2026-11-25 07:00:00 UTC"},
      "fio_version": "fio-3.33",
      "results": [
        {"engine": "p2pdma", "measures": "workload", "mode": "p2p", "bs": 1048576, "iodepth": 4,
         "summary": {"bw_mib_s": {"min": 90.0, "median": 100.0, "max": 110.0}}},
        {"engine": "fio", "measures": "workload", "mode": "host", "bs": 1048576, "iodepth": 4,
         "summary": {"bw_mib_s": {"min": 180.0, "median": 200.0, "max": 220.0}}},
        {"engine": "fio", "measures": "ceiling_read", "mode": "host", "bs": 1048576, "iodepth": 4,
         "summary": {"bw_mib_s": {"min": 1.0, "median": 2.0, "max": 3.0}}},
        {"engine": "fio", "measures": "workload", "mode": "host", "bs": 65536, "iodepth": 4,
         "summary": null}
      ]
    }"#;

    fn case(bs: u64, iodepth: u32, mib_s: &[f64]) -> VfioCase {
        let runs: Vec<RunFigures> = mib_s
            .iter()
            .map(|m| {
                let bytes = 64u64 << 20;
                let secs = 64.0 / m;
                RunFigures::new(
                    bytes,
                    bs,
                    Duration::from_secs_f64(secs),
                    None,
                    CpuTimes::default(),
                )
            })
            .collect();
        VfioCase {
            bs,
            chunk: bs,
            iodepth,
            depth: iodepth as usize,
            summary: Summary::of(&runs),
            runs,
        }
    }

    #[test]
    fn the_yardstick_keeps_the_copy_rows_with_figures() {
        let y = Yardstick::parse(REPORT, Path::new("k.json")).unwrap();
        assert_eq!(y.kernel, "7.2.13+deb14-amd64");
        assert_eq!(y.rows.len(), 2, "{:?}", y.rows);
        assert_eq!(y.rows[0].label(), "p2pdma p2p");
        assert_eq!(y.rows[1].label(), "fio host");
        assert_eq!(y.rows[1].bw_mib_s.median, 200.0);
        let read = REPORT.replace("\"workload\": \"copy\"", "\"workload\": \"read\"");
        assert!(matches!(
            Yardstick::parse(&read, Path::new("r.json")),
            Err(VfioBenchError::YardstickWorkload { workload, .. }) if workload == "read"
        ));
        let e = Yardstick::parse("{}", Path::new("bad.json")).unwrap_err();
        assert!(e.to_string().contains("bad.json"), "{e}");
    }

    #[test]
    fn ratios_divide_medians_of_the_same_block_size_and_depth() {
        let y = Yardstick::parse(REPORT, Path::new("k.json")).unwrap();
        let results = [
            case(1 << 20, 4, &[40.0, 50.0, 70.0]),
            case(1 << 20, 8, &[60.0]),
        ];
        let r = ratios(&results, Some(&y));
        assert_eq!(r.len(), 1, "no yardstick row for depth 8: {r:?}");
        let per = &r["copy bs=1M iodepth=4"];
        assert!((per["fio host"] - 0.25).abs() < 1e-9, "{per:?}");
        assert!((per["p2pdma p2p"] - 0.5).abs() < 1e-9, "{per:?}");
        assert!(ratios(&results, None).is_empty());
    }

    #[test]
    fn the_table_shows_spread_verification_and_ratios() {
        let y = Yardstick::parse(REPORT, Path::new("k.json")).unwrap();
        let results = vec![case(1 << 20, 4, &[40.0, 50.0, 70.0])];
        let report = VfioBenchReport {
            via: "vfio",
            workload: "copy",
            src: "0000:01:00.0/1".into(),
            dst: "0000:02:00.0/1".into(),
            size: 64 << 20,
            warmup: 1,
            repeat: 3,
            provider: "0000:01:00.0".into(),
            provider_kind: "cmb",
            cmb: None,
            machine: Machine {
                kernel: "7.2".into(),
                cpus: 2,
                unix_time: 0,
                date: "2026-11-25 07:00:00 UTC".into(),
            },
            ratios: ratios(&results, Some(&y)),
            results,
            verification: Verification {
                src_digest: 0xab,
                dst_digest: 0xab,
                first_difference: None,
            },
            verify_seconds: 0.5,
            verified: true,
            yardstick: Some(y),
            notes: vec![],
        };
        let table = report.to_table();
        assert!(table.contains("40.0 / 50.0 / 70.0"), "{table}");
        assert!(table.contains("kernel: fio host"), "{table}");
        assert!(
            table.contains("verified: 64 MiB of 0000:02:00.0/1 equals"),
            "{table}"
        );
        assert!(
            table.contains("copy bs=1M iodepth=4: vfio/fio host 0.250, vfio/p2pdma p2p 0.500"),
            "{table}"
        );
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["results"][0]["summary"]["bw_mib_s"]["median"], 50.0);
        assert_eq!(json["verified"], true);
        assert_eq!(json["ratios"]["copy bs=1M iodepth=4"]["fio host"], 0.25);
    }
}
