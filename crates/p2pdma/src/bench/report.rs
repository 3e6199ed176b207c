//! The results of a benchmark (a `Serialize` struct, field names as fio's where they
//! overlap) and its renderers: a table for people and a JSON document (pure).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::cpu::CpuTimes;
use super::spec::{MemKind, Modes, Pattern, Workload};
use super::stats::{Spread, PERCENTILES};
use crate::copy::plan::HumanBytes;
use crate::Bdf;

const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;

/// Who moved the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// This crate: its io_uring jobs (`read`, `write`) or its copy engine (`copy`).
    P2pdma,
    /// fio (io_uring, direct=1) with the same shape.
    Fio,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::P2pdma => "p2pdma",
            Engine::Fio => "fio",
        })
    }
}

/// Completion latency of one run, as fio's `clat_ns`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Clat {
    /// Fastest request, ns.
    pub min: u64,
    /// Slowest request, ns.
    pub max: u64,
    /// Mean, ns.
    pub mean: f64,
    /// Percentiles keyed as fio keys them ("50.000000", "99.900000"), ns.
    pub percentile: BTreeMap<String, u64>,
}

impl Clat {
    /// From an HDR histogram of nanoseconds; `None` if it is empty.
    pub fn from_histogram(h: &Histogram<u64>) -> Option<Clat> {
        if h.is_empty() {
            return None;
        }
        Some(Clat {
            min: h.min(),
            max: h.max(),
            mean: h.mean(),
            percentile: PERCENTILES
                .iter()
                .map(|(q, key)| ((*key).to_owned(), h.value_at_percentile(*q)))
                .collect(),
        })
    }

    fn at(&self, key: &str) -> Option<f64> {
        self.percentile.get(key).map(|v| *v as f64)
    }
}

/// The figures of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunFigures {
    /// Bytes moved (for a copy: bytes written to the destination).
    pub io_bytes: u64,
    /// Wall time of the run, ms (fio's unit).
    pub runtime: u64,
    /// Wall time of the run, ns.
    pub runtime_ns: u64,
    /// Throughput, KiB/s (fio's unit).
    pub bw: f64,
    /// Throughput, MiB/s.
    pub bw_mib_s: f64,
    /// Requests (blocks) per second.
    pub iops: f64,
    /// Completion latency per request (absent for a copy: the copy engine does not time
    /// single requests, and fio's copy-equivalent has two directions).
    pub clat_ns: Option<Clat>,
    /// User CPU, percent of the run's wall time (fio's unit).
    pub usr_cpu: f64,
    /// System CPU, percent of the run's wall time.
    pub sys_cpu: f64,
    /// User plus system CPU seconds per GiB moved.
    pub cpu_s_per_gib: f64,
}

impl RunFigures {
    /// Figures from raw counts.
    pub fn new(
        io_bytes: u64,
        block_size: u64,
        elapsed: Duration,
        clat: Option<Clat>,
        cpu: CpuTimes,
    ) -> RunFigures {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let cpu_secs = cpu.user.as_secs_f64() + cpu.system.as_secs_f64();
        RunFigures {
            io_bytes,
            runtime: elapsed.as_millis() as u64,
            runtime_ns: elapsed.as_nanos() as u64,
            bw: io_bytes as f64 / 1024.0 / secs,
            bw_mib_s: io_bytes as f64 / MIB / secs,
            iops: (io_bytes / block_size.max(1)) as f64 / secs,
            clat_ns: clat,
            usr_cpu: cpu.user.as_secs_f64() * 100.0 / secs,
            sys_cpu: cpu.system.as_secs_f64() * 100.0 / secs,
            cpu_s_per_gib: if io_bytes == 0 {
                0.0
            } else {
                cpu_secs / (io_bytes as f64 / GIB)
            },
        }
    }
}

/// Min/median/max of each figure over the measured runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Throughput, MiB/s.
    pub bw_mib_s: Spread,
    /// Requests per second.
    pub iops: Spread,
    /// Latency percentiles (fio's keys), ns; empty when the runs have no latency.
    pub clat_ns: BTreeMap<String, Spread>,
    /// Slowest request, ns.
    pub clat_max_ns: Option<Spread>,
    /// CPU seconds per GiB.
    pub cpu_s_per_gib: Spread,
}

impl Summary {
    /// The summary of `runs` (at least one).
    pub fn of(runs: &[RunFigures]) -> Option<Summary> {
        let clats: Vec<&Clat> = runs.iter().filter_map(|r| r.clat_ns.as_ref()).collect();
        let with_clat = clats.len() == runs.len();
        Some(Summary {
            bw_mib_s: Spread::of(runs.iter().map(|r| r.bw_mib_s))?,
            iops: Spread::of(runs.iter().map(|r| r.iops))?,
            clat_ns: if with_clat {
                PERCENTILES
                    .iter()
                    .filter_map(|(_, key)| {
                        Spread::of(clats.iter().filter_map(|c| c.at(key)))
                            .map(|s| ((*key).to_owned(), s))
                    })
                    .collect()
            } else {
                BTreeMap::new()
            },
            clat_max_ns: if with_clat {
                Spread::of(clats.iter().map(|c| c.max as f64))
            } else {
                None
            },
            cpu_s_per_gib: Spread::of(runs.iter().map(|r| r.cpu_s_per_gib))?,
        })
    }
}

/// What a result row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Measures {
    /// The workload asked for.
    Workload,
    /// For `copy`: the source read alone (the device ceiling's read side).
    CeilingRead,
    /// For `copy`: the destination written alone (the ceiling's write side).
    CeilingWrite,
}

impl Measures {
    fn label(self, workload: Workload) -> String {
        match self {
            Measures::Workload => workload.to_string(),
            Measures::CeilingRead => "read alone".into(),
            Measures::CeilingWrite => "write alone".into(),
        }
    }
}

/// One case (block size, depth, memory kind, engine, what) and its runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseResult {
    /// Who moved the bytes.
    pub engine: Engine,
    /// The workload or one side of the copy's ceiling.
    pub measures: Measures,
    /// Buffer memory.
    pub mode: MemKind,
    /// Bytes per request.
    pub bs: u64,
    /// Requests in flight per job.
    pub iodepth: u32,
    /// Jobs.
    pub numjobs: u32,
    /// Every measured run, in the order run.
    pub runs: Vec<RunFigures>,
    /// Their spread.
    pub summary: Option<Summary>,
}

/// Ratios for one case, from medians.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ratio {
    /// p2pdma / fio throughput.
    pub bw: Option<f64>,
    /// p2pdma / fio IOPS.
    pub iops: Option<f64>,
    /// p2pdma / fio p99 completion latency (read and write workloads).
    pub clat_p99: Option<f64>,
    /// p2pdma / fio CPU seconds per GiB.
    pub cpu_s_per_gib: Option<f64>,
    /// For `copy`: p2pdma's copy throughput / min(its read alone, its write alone).
    pub copy_over_min_read_write: Option<f64>,
    /// For `copy`: the same for fio's copy-equivalent and fio's read and write.
    pub fio_copy_over_min_read_write: Option<f64>,
}

/// The p2pmem provider the p2p runs used.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderChoice {
    /// Its address.
    pub bdf: Bdf,
    /// Why it was chosen.
    pub reason: Option<String>,
    /// Pool size, bytes.
    pub pool_size: Option<u64>,
    /// Free bytes when the benchmark started.
    pub pool_available: Option<u64>,
    /// The functions the data crosses.
    pub path: Vec<String>,
    /// Why the topology verdict expects the kernel to refuse P2P (P2P is tried anyway,
    /// as by `copy`: the kernel has the last word).
    pub predicted_refusal: Option<String>,
}

/// Bytes one engine moved over the whole invocation, warm-up runs included: what the
/// devices' own counters should show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Bytes read from the source (`--src`).
    pub read_bytes: u64,
    /// Bytes written to the destination (`--dst`).
    pub written_bytes: u64,
}

/// Where and when it ran.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Machine {
    /// `uname -r`.
    pub kernel: String,
    /// CPUs available to the process.
    pub cpus: usize,
    /// Start, seconds since the epoch.
    pub unix_time: u64,
    /// Start, `YYYY-MM-DD HH:MM:SS UTC`.
    pub date: String,
}

impl Machine {
    /// This machine (running kernel, CPUs available to the process), for a run that
    /// started at `unix_time` seconds since the epoch.
    pub fn this(unix_time: u64) -> Machine {
        Machine {
            kernel: rustix::system::uname()
                .release()
                .to_string_lossy()
                .into_owned(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            unix_time,
            date: utc_date(unix_time),
        }
    }
}

/// Everything one `bench` invocation measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// The workload.
    pub workload: Workload,
    /// The source, if any.
    pub src: Option<PathBuf>,
    /// The destination, if any.
    pub dst: Option<PathBuf>,
    /// Memory kinds measured.
    pub modes: Modes,
    /// Request order.
    pub pattern: Pattern,
    /// Jobs.
    pub numjobs: u32,
    /// Bytes per run (all jobs), the range gone over.
    pub size: u64,
    /// Time per run, if time-based, seconds.
    pub runtime_s: Option<f64>,
    /// Unmeasured runs per case and mode.
    pub warmup: u32,
    /// Measured runs per case and mode.
    pub repeat: u32,
    /// The p2pmem provider (p2p runs).
    pub provider: Option<ProviderChoice>,
    /// Where and when.
    pub machine: Machine,
    /// fio's version, when it ran.
    pub fio_version: Option<String>,
    /// Every case.
    pub results: Vec<CaseResult>,
    /// Ratios per case, keyed `"<workload> bs=<bs> iodepth=<d> <mode>"`.
    pub ratios: BTreeMap<String, Ratio>,
    /// Bytes p2pdma moved, warm-up included.
    pub p2pdma_totals: Totals,
    /// Bytes fio moved.
    pub fio_totals: Totals,
    /// How to read the figures.
    pub notes: Vec<String>,
}

/// Key of a case in [`BenchReport::ratios`].
pub fn case_key(workload: Workload, bs: u64, iodepth: u32, mode: MemKind) -> String {
    format!("{workload} bs={} iodepth={iodepth} {mode}", short_size(bs))
}

/// `64k`, `1M`, `4M`, `1536` (fio's spelling of binary sizes).
pub fn short_size(bytes: u64) -> String {
    for (shift, suffix) in [(30, "G"), (20, "M"), (10, "k")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

impl BenchReport {
    /// The result row for these coordinates.
    pub fn find(
        &self,
        engine: Engine,
        measures: Measures,
        mode: MemKind,
        bs: u64,
        iodepth: u32,
    ) -> Option<&CaseResult> {
        self.results.iter().find(|r| {
            r.engine == engine
                && r.measures == measures
                && r.mode == mode
                && r.bs == bs
                && r.iodepth == iodepth
        })
    }

    /// Fills [`BenchReport::ratios`] from the medians.
    pub fn compute_ratios(&mut self) {
        let median_bw = |r: Option<&CaseResult>| {
            r.and_then(|r| r.summary.as_ref())
                .map(|s| s.bw_mib_s.median)
        };
        let mut ratios = BTreeMap::new();
        for r in &self.results {
            if r.engine != Engine::P2pdma || r.measures != Measures::Workload {
                continue;
            }
            let fio = self.find(Engine::Fio, Measures::Workload, r.mode, r.bs, r.iodepth);
            let ours = r.summary.as_ref();
            let theirs = fio.and_then(|f| f.summary.as_ref());
            let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            let ceiling = |engine| {
                let read =
                    median_bw(self.find(engine, Measures::CeilingRead, r.mode, r.bs, r.iodepth));
                let write =
                    median_bw(self.find(engine, Measures::CeilingWrite, r.mode, r.bs, r.iodepth));
                let copy =
                    median_bw(self.find(engine, Measures::Workload, r.mode, r.bs, r.iodepth));
                match (read, write) {
                    (Some(a), Some(b)) => div(copy, Some(a.min(b))),
                    _ => None,
                }
            };
            let p99 =
                |s: Option<&Summary>| s.and_then(|s| s.clat_ns.get("99.000000")).map(|x| x.median);
            ratios.insert(
                case_key(self.workload, r.bs, r.iodepth, r.mode),
                Ratio {
                    bw: div(
                        ours.map(|s| s.bw_mib_s.median),
                        theirs.map(|s| s.bw_mib_s.median),
                    ),
                    iops: div(ours.map(|s| s.iops.median), theirs.map(|s| s.iops.median)),
                    clat_p99: div(p99(ours), p99(theirs)),
                    cpu_s_per_gib: div(
                        ours.map(|s| s.cpu_s_per_gib.median),
                        theirs.map(|s| s.cpu_s_per_gib.median),
                    ),
                    copy_over_min_read_write: ceiling(Engine::P2pdma),
                    fio_copy_over_min_read_write: ceiling(Engine::Fio),
                },
            );
        }
        self.ratios = ratios;
    }

    /// The JSON document (`--json`).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serialises")
    }

    /// The table for people, ending with the ratio lines.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let targets = match (&self.src, &self.dst) {
            (Some(s), Some(d)) => format!("{} -> {}", s.display(), d.display()),
            (Some(s), None) => s.display().to_string(),
            (None, Some(d)) => d.display().to_string(),
            (None, None) => String::new(),
        };
        let amount = match self.runtime_s {
            Some(t) => format!("{t} s per run over {}", HumanBytes(self.size)),
            None => format!("{} per run", HumanBytes(self.size)),
        };
        let _ = writeln!(
            out,
            "bench {} {targets}: {}, {} job(s), {amount}, {} measured run(s) + {} warm-up per case and mode",
            self.workload, self.pattern, self.numjobs, self.repeat, self.warmup
        );
        let _ = writeln!(
            out,
            "machine: kernel {}, {} CPUs, {}{}",
            self.machine.kernel,
            self.machine.cpus,
            self.machine.date,
            self.fio_version
                .as_ref()
                .map(|v| format!(", {v}"))
                .unwrap_or_default()
        );
        match &self.provider {
            Some(p) => {
                let _ = writeln!(
                    out,
                    "p2p memory: {} ({}){}",
                    p.bdf,
                    p.reason.as_deref().unwrap_or("chosen"),
                    p.pool_size
                        .map(|s| format!(", pool {}", HumanBytes(s)))
                        .unwrap_or_default()
                );
                if let Some(why) = &p.predicted_refusal {
                    let _ = writeln!(
                        out,
                        "note: the topology verdict predicted a refusal ({why}), yet the kernel allowed every p2p request"
                    );
                }
            }
            None => {
                let _ = writeln!(out, "p2p memory: not used (--mode host)");
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<18} {:<6} {:<4} {:<11} {:>26} {:>9} {:>40} {:>9}",
            "case",
            "engine",
            "mode",
            "what",
            "MiB/s min / median / max",
            "IOPS",
            "clat us p50 / p90 / p99 / p99.9 / max",
            "CPU s/GiB"
        );
        for r in &self.results {
            let case = format!("bs {} depth {}", short_size(r.bs), r.iodepth);
            let Some(s) = &r.summary else {
                continue;
            };
            let us = |key: &str| {
                s.clat_ns
                    .get(key)
                    .map(|x| format_us(x.median))
                    .unwrap_or_else(|| "-".into())
            };
            let lat = if s.clat_ns.is_empty() {
                "-".to_owned()
            } else {
                format!(
                    "{} / {} / {} / {} / {}",
                    us("50.000000"),
                    us("90.000000"),
                    us("99.000000"),
                    us("99.900000"),
                    s.clat_max_ns
                        .map(|x| format_us(x.median))
                        .unwrap_or_else(|| "-".into())
                )
            };
            let _ = writeln!(
                out,
                "{case:<18} {:<6} {:<4} {:<11} {:>26} {:>9.0} {lat:>40} {:>9.3}",
                r.engine.to_string(),
                r.mode.to_string(),
                r.measures.label(self.workload),
                format!(
                    "{:.1} / {:.1} / {:.1}",
                    s.bw_mib_s.min, s.bw_mib_s.median, s.bw_mib_s.max
                ),
                s.iops.median,
                s.cpu_s_per_gib.median
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "latency and CPU columns are medians over the runs; nothing was left out"
        );
        if !self.ratios.is_empty() {
            let _ = writeln!(out, "ratios (medians):");
        }
        // In the order of the table (block size, then depth), not the keys' order.
        let keys = self
            .results
            .iter()
            .filter(|r| r.engine == Engine::P2pdma && r.measures == Measures::Workload)
            .map(|r| case_key(self.workload, r.bs, r.iodepth, r.mode));
        for key in keys {
            let Some(ratio) = self.ratios.get(&key) else {
                continue;
            };
            let mut parts = Vec::new();
            let f = |x: f64| format!("{x:.2}");
            if let Some(x) = ratio.bw {
                parts.push(format!("p2pdma/fio throughput {}", f(x)));
            }
            if let Some(x) = ratio.clat_p99 {
                parts.push(format!("p99 latency {}", f(x)));
            }
            if let Some(x) = ratio.cpu_s_per_gib {
                parts.push(format!("CPU/GiB {}", f(x)));
            }
            if let Some(x) = ratio.copy_over_min_read_write {
                parts.push(format!("p2pdma copy/min(read, write) {}", f(x)));
            }
            if let Some(x) = ratio.fio_copy_over_min_read_write {
                parts.push(format!("fio copy/min(read, write) {}", f(x)));
            }
            if parts.is_empty() {
                continue;
            }
            let _ = writeln!(out, "  {key}: {}", parts.join(", "));
        }
        out
    }
}

fn format_us(ns: f64) -> String {
    let us = ns / 1000.0;
    if us >= 100.0 {
        format!("{us:.0}")
    } else {
        format!("{us:.1}")
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` for seconds since the epoch.
pub fn utc_date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let rem = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(mib_s: f64, p99_us: Option<u64>) -> RunFigures {
        let mut h = new_hist();
        if let Some(p) = p99_us {
            for _ in 0..100 {
                h.record(p * 1000).unwrap();
            }
        }
        RunFigures::new(
            (mib_s * MIB) as u64,
            1 << 20,
            Duration::from_secs(1),
            Clat::from_histogram(&h),
            CpuTimes {
                user: Duration::from_millis(100),
                system: Duration::from_millis(150),
            },
        )
    }

    fn new_hist() -> Histogram<u64> {
        super::super::io::new_histogram()
    }

    fn case(engine: Engine, measures: Measures, bws: &[f64], p99: Option<u64>) -> CaseResult {
        let runs: Vec<RunFigures> = bws.iter().map(|b| figures(*b, p99)).collect();
        CaseResult {
            engine,
            measures,
            mode: MemKind::Host,
            bs: 1 << 20,
            iodepth: 4,
            numjobs: 1,
            summary: Summary::of(&runs),
            runs,
        }
    }

    fn report(results: Vec<CaseResult>, workload: Workload) -> BenchReport {
        BenchReport {
            workload,
            src: Some("/dev/a".into()),
            dst: Some("/dev/b".into()),
            modes: Modes::Host,
            pattern: Pattern::Seq,
            numjobs: 1,
            size: 1 << 30,
            runtime_s: None,
            warmup: 1,
            repeat: 3,
            provider: None,
            machine: Machine {
                kernel: "6.1.0".into(),
                cpus: 2,
                unix_time: 0,
                date: utc_date(0),
            },
            fio_version: Some("fio-3.33".into()),
            results,
            ratios: BTreeMap::new(),
            p2pdma_totals: Totals::default(),
            fio_totals: Totals::default(),
            notes: vec![],
        }
    }

    #[test]
    fn figures_use_fio_units() {
        let f = figures(100.0, Some(250));
        assert_eq!(f.runtime, 1000);
        assert!((f.bw - 102_400.0).abs() < 1.0, "{}", f.bw);
        assert!((f.iops - 100.0).abs() < 1e-6);
        assert!((f.usr_cpu - 10.0).abs() < 1e-6 && (f.sys_cpu - 15.0).abs() < 1e-6);
        // 0.25 CPU s for 100 MiB.
        assert!((f.cpu_s_per_gib - 0.25 * 1024.0 / 100.0).abs() < 1e-6);
        let clat = f.clat_ns.unwrap();
        let p99 = clat.percentile["99.000000"];
        assert!((249_000..=251_000).contains(&p99), "{p99}");
        assert!(clat.percentile.contains_key("99.900000"));
    }

    #[test]
    fn copy_ratios_come_from_medians_and_the_slower_half() {
        let mut r = report(
            vec![
                case(
                    Engine::P2pdma,
                    Measures::Workload,
                    &[90.0, 100.0, 500.0],
                    None,
                ),
                case(
                    Engine::P2pdma,
                    Measures::CeilingRead,
                    &[200.0, 210.0, 220.0],
                    Some(100),
                ),
                case(Engine::P2pdma, Measures::CeilingWrite, &[250.0], Some(100)),
                case(Engine::Fio, Measures::Workload, &[80.0], None),
                case(Engine::Fio, Measures::CeilingRead, &[160.0], Some(50)),
                case(Engine::Fio, Measures::CeilingWrite, &[100.0], Some(50)),
            ],
            Workload::Copy,
        );
        r.compute_ratios();
        let ratio = &r.ratios["copy bs=1M iodepth=4 host"];
        assert!((ratio.bw.unwrap() - 100.0 / 80.0).abs() < 1e-9);
        assert!((ratio.copy_over_min_read_write.unwrap() - 100.0 / 210.0).abs() < 1e-9);
        assert!((ratio.fio_copy_over_min_read_write.unwrap() - 0.8).abs() < 1e-9);
        assert_eq!(ratio.clat_p99, None, "copies have no per-request latency");

        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert!(json["ratios"]["copy bs=1M iodepth=4 host"]["bw"].is_number());
        let run = &json["results"][1]["runs"][0];
        for key in ["io_bytes", "bw", "iops", "runtime", "usr_cpu", "sys_cpu"] {
            assert!(run[key].is_number(), "{key}");
        }
        assert!(run["clat_ns"]["percentile"]["99.900000"].is_number());

        let table = r.to_table();
        let last = table.lines().last().unwrap();
        assert!(
            last.starts_with("  copy bs=1M iodepth=4 host: p2pdma/fio throughput 1.25"),
            "{table}"
        );
        assert!(table.contains("90.0 / 100.0 / 500.0"), "{table}");
    }

    #[test]
    fn read_ratios_include_latency() {
        let mut r = report(
            vec![
                case(Engine::P2pdma, Measures::Workload, &[100.0], Some(200)),
                case(Engine::Fio, Measures::Workload, &[100.0], Some(100)),
            ],
            Workload::Read,
        );
        r.compute_ratios();
        let ratio = &r.ratios["read bs=1M iodepth=4 host"];
        let p99 = ratio.clat_p99.unwrap();
        assert!((1.95..2.05).contains(&p99), "{p99}");
        assert_eq!(ratio.copy_over_min_read_write, None);
    }

    #[test]
    fn sizes_and_dates() {
        assert_eq!(short_size(64 << 10), "64k");
        assert_eq!(short_size(1 << 20), "1M");
        assert_eq!(short_size(1536), "1536");
        assert_eq!(utc_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_date(1_795_912_449), "2026-11-29 00:34:09 UTC");
    }
}
