//! `p2pdma lab check`: the lab as a P2PDMA regression suite for one kernel.
//!
//! Boots every topology given (the shipped ones by default) one after another on one
//! kernel image and, in each boot, runs conformance ([`conformance`]: every (p2pmem
//! provider, NVMe namespace) pair, p2pdma's predicted verdict against the kernel's own
//! O_DIRECT answer) and one verified copy ([`copy`]); then boots the teardown topology
//! once for the core teardown scenarios ([`scenarios`]). Every boot's console log is
//! scanned for kernel bug reports ([`kernel_log`]). The result is a [`Report`]: a
//! `Serialize` struct the CLI prints as JSON or, through [`Report::table`], as a table.

pub mod conformance;
pub mod copy;
pub mod kernel_log;
pub mod scenarios;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use p2pdma::display::error_chain;

use crate::spec::{Catalog, SpecError, Topology};
use crate::vm::{self, Accel, Fault, RunRequest};
use conformance::Conformance;
use copy::CopyResult;
use kernel_log::LogScan;
use scenarios::ScenarioResult;

/// Errors that stop a check before it boots anything.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The teardown topology did not parse (a bug in the shipped text).
    #[error("the teardown scenarios' topology")]
    Topology(#[source] SpecError),
    /// A fault did not parse (a bug in the shipped text).
    #[error("the teardown scenarios' fault {fault}: {reason}")]
    Fault {
        /// The fault as written.
        fault: &'static str,
        /// Why it did not parse.
        reason: String,
    },
}

/// Where the kernel came from, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// The image booted.
    pub image: PathBuf,
    /// How it was obtained ("cached build of tarball ...", "given with --kernel").
    pub origin: String,
    /// Whether the build was a cache hit (None: an image given by path).
    pub cache_hit: Option<bool>,
    /// Seconds this check spent building it (0 on a cache hit).
    pub build_seconds: f64,
    /// Seconds its build took when it was built (from the cache's record).
    pub cold_build_seconds: Option<f64>,
    /// `uname -r` in the guest.
    pub release: Option<String>,
}

/// What to check.
#[derive(Debug, Clone)]
pub struct CheckRequest {
    /// The kernel to boot and where it came from.
    pub kernel: KernelInfo,
    /// The static p2pdma binary for the guest.
    pub guest_binary: PathBuf,
    /// The topologies for conformance and copies, booted in this order.
    pub topologies: Vec<Topology>,
    /// Whether to run the teardown scenarios.
    pub scenarios: bool,
    /// Judge with this release's rules instead of the guest kernel's own
    /// (`p2pdma --kernel-release` in the guest): "would that kernel's rules hold here".
    pub rules_release: Option<String>,
    /// QEMU accelerator.
    pub accel: Accel,
    /// Run directories go under this one (one per boot).
    pub out_dir: PathBuf,
}

/// How long one boot of `lab check` took. Its fields stand in each boot's JSON object
/// (`#[serde(flatten)]`) after the topology's name.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BootTimes {
    /// Seconds from starting QEMU to the guest being ready (0 when it did not boot).
    pub boot_seconds: f64,
    /// Seconds of the whole run (boot, the guest script, power-off).
    pub seconds: f64,
}

/// What one boot of `lab check` left besides the guest's answers: the kernel log and the
/// lab failure, if any. Its fields end each boot's JSON object (`#[serde(flatten)]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootLog {
    /// What the kernel log showed.
    pub kernel_log: LogScan,
    /// The lab failure that stopped this boot (no boot, timeout, panic).
    pub error: Option<String>,
    /// The kernel console log.
    pub serial_log: PathBuf,
}

/// One topology's boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopologyReport {
    /// The topology.
    pub name: String,
    /// How long the boot and the whole run took.
    #[serde(flatten)]
    pub times: BootTimes,
    /// Conformance of every pair.
    pub conformance: Conformance,
    /// The verified copy (None with fewer than two namespaces).
    pub copy: Option<CopyResult>,
    /// The kernel log and the lab failure.
    #[serde(flatten)]
    pub log: BootLog,
}

impl TopologyReport {
    /// Whether everything in this boot passed.
    pub fn passed(&self) -> bool {
        self.log.error.is_none()
            && self.conformance.passed()
            && self
                .copy
                .as_ref()
                .is_none_or(|c| c.verified || c.lost_behind_emulated_iommu)
            && self.log.kernel_log.problems.is_empty()
    }
}

/// The teardown scenarios' boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioBoot {
    /// The topology booted.
    pub topology: String,
    /// How long the boot and the whole run took.
    #[serde(flatten)]
    pub times: BootTimes,
    /// Each scenario.
    pub scenarios: Vec<ScenarioResult>,
    /// The kernel log and the lab failure.
    #[serde(flatten)]
    pub log: BootLog,
}

/// The totals a reader looks at first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Pairs whose predicted verdict equals the kernel's answer.
    pub pairs_agreeing: usize,
    /// Pairs probed.
    pub pairs_total: usize,
    /// Copies verified.
    pub copies_verified: usize,
    /// Copies made.
    pub copies_total: usize,
    /// Teardown scenarios passed.
    pub scenarios_passed: usize,
    /// Teardown scenarios run.
    pub scenarios_total: usize,
    /// Kernel log lines reporting a kernel bug, over every boot.
    pub kernel_warnings: usize,
    /// Boots that failed (no boot, timeout, panic).
    pub boots_failed: usize,
    /// Whether everything passed.
    pub passed: bool,
}

/// Wall-clock times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Seconds spent getting the kernel (0 on a cache hit).
    pub build_seconds: f64,
    /// Sum of every boot's boot time.
    pub boot_seconds: f64,
    /// The whole check.
    pub total_seconds: f64,
}

/// Everything `lab check` found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The kernel.
    pub kernel: KernelInfo,
    /// The rules the verdicts followed when not the kernel's own.
    pub rules_release: Option<String>,
    /// The totals.
    pub summary: Summary,
    /// Each topology's boot.
    pub topologies: Vec<TopologyReport>,
    /// The teardown scenarios' boot, if run.
    pub teardown: Option<ScenarioBoot>,
    /// Times.
    pub timings: Timings,
}

impl Report {
    fn summarise(&mut self) {
        let pairs = || self.topologies.iter().flat_map(|t| &t.conformance.pairs);
        let copies = || self.topologies.iter().filter_map(|t| t.copy.as_ref());
        let scenarios = || self.teardown.iter().flat_map(|b| &b.scenarios);
        let warnings = self
            .boot_logs()
            .map(|(_, log)| log.kernel_log.problems.len())
            .sum();
        let boots_failed = self
            .boot_logs()
            .filter(|(_, log)| log.error.is_some())
            .count();
        let passed = !self.topologies.is_empty()
            && self.topologies.iter().all(TopologyReport::passed)
            && self.teardown.as_ref().is_none_or(|b| {
                b.log.error.is_none()
                    && !b.scenarios.is_empty()
                    && b.scenarios.iter().all(|s| s.passed)
                    && b.log.kernel_log.problems.is_empty()
            });
        self.summary = Summary {
            pairs_agreeing: pairs().filter(|p| p.agrees).count(),
            pairs_total: pairs().count(),
            copies_verified: copies().filter(|c| c.verified).count(),
            copies_total: copies().count(),
            scenarios_passed: scenarios().filter(|s| s.passed).count(),
            scenarios_total: scenarios().count(),
            kernel_warnings: warnings,
            boots_failed,
            passed,
        };
        self.timings.boot_seconds = self
            .topologies
            .iter()
            .map(|t| t.times.boot_seconds)
            .chain(self.teardown.iter().map(|b| b.times.boot_seconds))
            .sum();
    }

    /// Every boot's name and log: the topologies in order, then the teardown boot.
    fn boot_logs(&self) -> impl Iterator<Item = (&String, &BootLog)> {
        self.topologies
            .iter()
            .map(|t| (&t.name, &t.log))
            .chain(self.teardown.iter().map(|b| (&b.topology, &b.log)))
    }

    /// The report as a table, for a terminal.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let k = &self.kernel;
        s.push_str(&format!(
            "kernel {} ({}; {})\n",
            k.release.as_deref().unwrap_or("?"),
            k.image.display(),
            k.origin
        ));
        if let Some(r) = &self.rules_release {
            s.push_str(&format!(
                "verdicts by the rules of Linux {r} (--kernel-release), not the booted kernel's\n"
            ));
        }
        s.push('\n');
        s.push_str(&format!(
            "{:<16} {:>6} {:>7} {:>11} {:<24} {:>8}\n",
            "topology", "boot s", "total s", "pairs agree", "verified copy", "warnings"
        ));
        for t in &self.topologies {
            let copy = match (&t.log.error, &t.copy) {
                (Some(_), _) => "-".to_owned(),
                (None, None) => "(one namespace)".to_owned(),
                (None, Some(c)) if c.verified => format!("ok ({})", c.mode),
                (None, Some(c)) if c.lost_behind_emulated_iommu => {
                    "lost (p2p, emulated IOMMU)".to_owned()
                }
                (None, Some(_)) => "FAILED".to_owned(),
            };
            s.push_str(&format!(
                "{:<16} {:>6.1} {:>7.1} {:>11} {:<24} {:>8}\n",
                t.name,
                t.times.boot_seconds,
                t.times.seconds,
                format!("{}/{}", t.conformance.agreeing(), t.conformance.pairs.len()),
                copy,
                t.log.kernel_log.problems.len()
            ));
        }
        if let Some(b) = &self.teardown {
            s.push('\n');
            s.push_str(&format!(
                "teardown scenarios ({}, boot {:.1} s, total {:.1} s, {} kernel warnings)\n",
                b.topology,
                b.times.boot_seconds,
                b.times.seconds,
                b.log.kernel_log.problems.len()
            ));
            for sc in &b.scenarios {
                s.push_str(&format!(
                    "  {:<30} {:<6} {}\n",
                    sc.name,
                    if sc.passed { "passed" } else { "FAILED" },
                    sc.detail
                ));
            }
            if let Some(e) = &b.log.error {
                s.push_str(&format!("  the boot failed: {e}\n"));
            }
        }
        let mut problems = Vec::new();
        for t in &self.topologies {
            if let Some(e) = &t.log.error {
                problems.push(format!("{}: the boot failed: {e}", t.name));
            }
            for p in t.conformance.pairs.iter().filter(|p| !p.agrees) {
                problems.push(format!("{}: DISAGREE {}", t.name, p.describe()));
            }
            for a in t.conformance.acs_advice.iter().filter(|a| !a.predicted) {
                problems.push(format!(
                    "{}: the kernel advised pci=disable_acs_redir={}, which no pair predicted",
                    t.name, a.value
                ));
            }
            for p in &t.conformance.problems {
                problems.push(format!("{}: {p}", t.name));
            }
            if let Some(c) = &t.copy {
                match (&c.error, c.lost_behind_emulated_iommu) {
                    (Some(e), true) => problems.push(format!(
                        "{}: copy: {e} (not counted as a failure: QEMU's emulated IOMMU drops P2P DMA the kernel allows)",
                        t.name
                    )),
                    (Some(e), false) => problems.push(format!("{}: copy: {e}", t.name)),
                    (None, _) => {}
                }
            }
        }
        for (name, log) in self.boot_logs() {
            for line in &log.kernel_log.problems {
                problems.push(format!(
                    "{name}: kernel: {line} ({})",
                    log.serial_log.display()
                ));
            }
        }
        if !problems.is_empty() {
            s.push_str("\nproblems:\n");
            for p in &problems {
                s.push_str(&format!("  {p}\n"));
            }
        }
        let m = &self.summary;
        let t = &self.timings;
        s.push_str(&format!(
            "\n{}: pairs agreeing {}/{}, copies verified {}/{}, scenarios passed {}/{}, kernel warnings {}, failed boots {}\n",
            if m.passed { "PASSED" } else { "FAILED" },
            m.pairs_agreeing,
            m.pairs_total,
            m.copies_verified,
            m.copies_total,
            m.scenarios_passed,
            m.scenarios_total,
            m.kernel_warnings,
            m.boots_failed
        ));
        s.push_str(&format!(
            "timings: kernel {} s{}, boots {:.1} s over {} boots, total {:.1} s\n",
            format_args!("{:.1}", t.build_seconds),
            match (k.cache_hit, k.cold_build_seconds) {
                (Some(true), Some(cold)) =>
                    format!(" (cache hit; its cold build took {cold:.0} s)"),
                (Some(true), None) => " (cache hit)".to_owned(),
                _ => String::new(),
            },
            t.boot_seconds,
            self.topologies.len() + usize::from(self.teardown.is_some()),
            t.total_seconds
        ));
        s
    }
}

/// Prepends the variables the conformance script reads.
fn topology_script(rules_release: Option<&str>) -> String {
    let rules = rules_release.map_or(String::new(), |r| {
        format!("RULES='{}'\n", r.replace('\'', ""))
    });
    format!(
        "{rules}echo \"KERNEL-RELEASE $(uname -r)\"\n{}{}",
        conformance::GUEST_SCRIPT,
        copy::GUEST_SCRIPT
    )
}

fn kernel_release(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("KERNEL-RELEASE "))
        .map(|r| r.trim().to_owned())
}

/// Boots `request` and times it; the guest's outcome (None when the lab failed: no boot,
/// timeout, panic; the failure is in the log's `error`), how long it took, and the scan
/// of its kernel log. Both kinds of boot of a check go through here.
fn boot(request: &RunRequest) -> (Option<vm::RunOutcome>, BootTimes, BootLog) {
    let t0 = Instant::now();
    let outcome = vm::run(request);
    let seconds = t0.elapsed().as_secs_f64();
    let serial_log = request.out_dir.join("serial.log");
    let kernel_log = kernel_log::scan(&std::fs::read_to_string(&serial_log).unwrap_or_default());
    match outcome {
        Ok(o) => {
            let times = BootTimes {
                boot_seconds: o.boot_seconds,
                seconds,
            };
            let log = BootLog {
                kernel_log,
                error: None,
                serial_log: o.serial_log.clone(),
            };
            (Some(o), times, log)
        }
        Err(e) => {
            let times = BootTimes {
                boot_seconds: 0.0,
                seconds,
            };
            let log = BootLog {
                kernel_log,
                error: Some(error_chain(&e)),
                serial_log,
            };
            (None, times, log)
        }
    }
}

/// Runs the check: one boot per topology, then the teardown boot. `on_progress` hears
/// one line per step. Boot failures are part of the report, not errors.
pub fn run(req: &CheckRequest, on_progress: &mut dyn FnMut(&str)) -> Result<Report, CheckError> {
    let started = Instant::now();
    let mut report = Report {
        kernel: req.kernel.clone(),
        rules_release: req.rules_release.clone(),
        summary: Summary {
            pairs_agreeing: 0,
            pairs_total: 0,
            copies_verified: 0,
            copies_total: 0,
            scenarios_passed: 0,
            scenarios_total: 0,
            kernel_warnings: 0,
            boots_failed: 0,
            passed: false,
        },
        topologies: Vec::new(),
        teardown: None,
        timings: Timings {
            build_seconds: req.kernel.build_seconds,
            boot_seconds: 0.0,
            total_seconds: 0.0,
        },
    };
    let script = topology_script(req.rules_release.as_deref());
    for (i, topology) in req.topologies.iter().enumerate() {
        on_progress(&format!(
            "[{}/{}] {}: booting, conformance and a verified copy",
            i + 1,
            req.topologies.len(),
            topology.name
        ));
        let out_dir = req.out_dir.join(&topology.name);
        let request = RunRequest {
            command_timeout: Duration::from_secs(300),
            echo: false,
            ..RunRequest::new(
                topology.clone(),
                req.kernel.image.clone(),
                req.guest_binary.clone(),
                script.clone(),
                out_dir,
                req.accel,
            )
        };
        let (outcome, times, log) = boot(&request);
        let entry = match outcome {
            Some(o) => {
                let stdout = String::from_utf8_lossy(&o.stdout);
                if report.kernel.release.is_none() {
                    report.kernel.release = kernel_release(&stdout);
                }
                let expect = conformance::Expect {
                    iommu: topology.spec.iommu,
                    ram_providers: topology.spec.ram.len(),
                };
                let mut conformance = conformance::judge(&stdout, expect);
                if o.status != 0 {
                    conformance.problems.push(format!(
                        "the guest script exited {}: {}",
                        o.status,
                        String::from_utf8_lossy(&o.stderr).trim()
                    ));
                }
                TopologyReport {
                    name: topology.name.clone(),
                    times,
                    conformance,
                    copy: copy::judge(&stdout, topology.spec.iommu),
                    log,
                }
            }
            None => TopologyReport {
                name: topology.name.clone(),
                times,
                conformance: Conformance::default(),
                copy: None,
                log,
            },
        };
        on_progress(&format!(
            "[{}/{}] {}: {}/{} pairs agree, {} in {:.1} s",
            i + 1,
            req.topologies.len(),
            entry.name,
            entry.conformance.agreeing(),
            entry.conformance.pairs.len(),
            if entry.passed() { "passed" } else { "FAILED" },
            entry.times.seconds
        ));
        report.topologies.push(entry);
    }
    if req.scenarios {
        on_progress("teardown scenarios: booting");
        report.teardown = Some(teardown(req)?);
    }
    report.timings.total_seconds = started.elapsed().as_secs_f64() + req.kernel.build_seconds;
    report.summarise();
    Ok(report)
}

fn teardown(req: &CheckRequest) -> Result<ScenarioBoot, CheckError> {
    let mut catalog = Catalog::default();
    catalog
        .merge_str(scenarios::TOPOLOGY, "lab check")
        .map_err(CheckError::Topology)?;
    let topology = catalog
        .get(scenarios::TOPOLOGY_NAME)
        .map_err(CheckError::Topology)?;
    let fault: Fault = scenarios::FAULT
        .parse()
        .map_err(|reason: String| CheckError::Fault {
            fault: scenarios::FAULT,
            reason,
        })?;
    let out_dir = req.out_dir.join(scenarios::TOPOLOGY_NAME);
    let request = RunRequest {
        command_timeout: Duration::from_secs(600),
        faults: vec![fault],
        echo: false,
        ..RunRequest::new(
            topology,
            req.kernel.image.clone(),
            req.guest_binary.clone(),
            scenarios::GUEST_SCRIPT.to_owned(),
            out_dir,
            req.accel,
        )
    };
    let (outcome, times, log) = boot(&request);
    Ok(ScenarioBoot {
        topology: scenarios::TOPOLOGY_NAME.to_owned(),
        times,
        scenarios: outcome.map_or_else(Vec::new, |o| {
            scenarios::judge(&String::from_utf8_lossy(&o.stdout))
        }),
        log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use conformance::{KernelAnswer, PairResult};

    fn pair(client: &str, predicted_p2p: bool, kernel: KernelAnswer) -> PairResult {
        let refused = kernel == KernelAnswer::Refused;
        PairResult {
            provider: "0000:00:04.0".into(),
            client: client.into(),
            predicted_p2p,
            map_type: Some(
                if predicted_p2p {
                    "bus_addr"
                } else {
                    "not_supported"
                }
                .into(),
            ),
            distance: Some(2),
            kernel,
            kernel_result: if refused { "p2p-refused" } else { "ok" }.into(),
            errno: refused.then_some(22),
            error: refused.then(|| "Invalid argument (os error 22)".into()),
            agrees: predicted_p2p == (kernel == KernelAnswer::Allowed),
        }
    }

    fn report() -> Report {
        let mut r = Report {
            kernel: KernelInfo {
                image: "/cache/bzImage".into(),
                origin: "standard lab kernel standard-abc".into(),
                cache_hit: Some(true),
                build_seconds: 0.5,
                cold_build_seconds: Some(1675.7),
                release: Some("7.2.13".into()),
            },
            rules_release: None,
            summary: Summary {
                pairs_agreeing: 0,
                pairs_total: 0,
                copies_verified: 0,
                copies_total: 0,
                scenarios_passed: 0,
                scenarios_total: 0,
                kernel_warnings: 0,
                boots_failed: 0,
                passed: false,
            },
            topologies: vec![TopologyReport {
                name: "rootbus".into(),
                times: BootTimes {
                    boot_seconds: 3.25,
                    seconds: 20.0,
                },
                conformance: Conformance {
                    pairs: vec![
                        pair("/dev/nvme0n1", true, KernelAnswer::Allowed),
                        pair("/dev/nvme1n1", true, KernelAnswer::Refused),
                    ],
                    acs_advice: Vec::new(),
                    problems: Vec::new(),
                },
                copy: Some(CopyResult {
                    what: "/dev/nvme0n1 -> /dev/nvme1n1".into(),
                    mode: "bounce".into(),
                    verified: true,
                    error: None,
                    lost_behind_emulated_iommu: false,
                }),
                log: BootLog {
                    kernel_log: LogScan::default(),
                    error: None,
                    serial_log: "/run/rootbus/serial.log".into(),
                },
            }],
            teardown: Some(ScenarioBoot {
                topology: "check-teardown".into(),
                times: BootTimes {
                    boot_seconds: 4.0,
                    seconds: 50.0,
                },
                scenarios: vec![ScenarioResult {
                    name: "unbind-provider-mid-copy".into(),
                    passed: true,
                    detail: "unbind returned in 0.05 s".into(),
                }],
                log: BootLog {
                    kernel_log: LogScan {
                        problems: vec!["[ 9.1] WARNING: CPU: 0 PID: 1 at mm/memremap.c:1".into()],
                        set_aside: Vec::new(),
                    },
                    error: None,
                    serial_log: "/run/check-teardown/serial.log".into(),
                },
            }),
            timings: Timings {
                build_seconds: 0.5,
                boot_seconds: 0.0,
                total_seconds: 75.0,
            },
        };
        r.summarise();
        r
    }

    #[test]
    fn the_table_names_the_disagreeing_pair_and_the_kernel_warning() {
        let expected = "\
kernel 7.2.13 (/cache/bzImage; standard lab kernel standard-abc)

topology         boot s total s pairs agree verified copy            warnings
rootbus             3.2    20.0         1/2 ok (bounce)                     0

teardown scenarios (check-teardown, boot 4.0 s, total 50.0 s, 1 kernel warnings)
  unbind-provider-mid-copy       passed unbind returned in 0.05 s

problems:
  rootbus: DISAGREE 0000:00:04.0 <- /dev/nvme1n1: the kernel refused P2P (errno 22: Invalid argument (os error 22)); the rules predicted P2P (bus_addr, distance 2)
  check-teardown: kernel: [ 9.1] WARNING: CPU: 0 PID: 1 at mm/memremap.c:1 (/run/check-teardown/serial.log)

FAILED: pairs agreeing 1/2, copies verified 1/1, scenarios passed 1/1, kernel warnings 1, failed boots 0
timings: kernel 0.5 s (cache hit; its cold build took 1676 s), boots 7.2 s over 2 boots, total 75.0 s
";
        assert_eq!(report().table(), expected);
    }

    #[test]
    fn the_json_summary_counts_what_the_table_shows() {
        let v = serde_json::to_value(report()).unwrap();
        assert_eq!(
            v["summary"],
            serde_json::json!({
                "pairs_agreeing": 1, "pairs_total": 2, "copies_verified": 1, "copies_total": 1,
                "scenarios_passed": 1, "scenarios_total": 1, "kernel_warnings": 1,
                "boots_failed": 0, "passed": false
            })
        );
        assert_eq!(
            v["topologies"][0]["conformance"]["pairs"][1]["kernel"],
            "refused"
        );
        assert_eq!(v["timings"]["boot_seconds"], 7.25);
    }

    #[test]
    fn everything_agreeing_and_clean_passes() {
        let mut r = report();
        r.topologies[0].conformance.pairs.truncate(1);
        r.teardown.as_mut().unwrap().log.kernel_log.problems.clear();
        r.summarise();
        assert!(r.summary.passed, "{}", r.table());
        assert!(r.table().contains("PASSED: pairs agreeing 1/1"));
        r.topologies[0].log.error = Some("the guest did not boot".into());
        r.summarise();
        assert_eq!((r.summary.passed, r.summary.boots_failed), (false, 1));
    }

    /// `lab check --json` is read by scripts: each boot's keys, their order and their
    /// values are pinned, and the report reads back as it was written.
    #[test]
    fn the_json_of_each_boot_keeps_its_keys_in_order_and_reads_back() {
        let r = report();
        assert_eq!(
            serde_json::to_string(&r.topologies[0]).unwrap(),
            concat!(
                r#"{"name":"rootbus","boot_seconds":3.25,"seconds":20.0,"#,
                r#""conformance":{"pairs":[{"provider":"0000:00:04.0","client":"/dev/nvme0n1","predicted_p2p":true,"map_type":"bus_addr","distance":2,"kernel":"allowed","kernel_result":"ok","errno":null,"error":null,"agrees":true},{"provider":"0000:00:04.0","client":"/dev/nvme1n1","predicted_p2p":true,"map_type":"bus_addr","distance":2,"kernel":"refused","kernel_result":"p2p-refused","errno":22,"error":"Invalid argument (os error 22)","agrees":false}],"acs_advice":[],"problems":[]},"#,
                r#""copy":{"what":"/dev/nvme0n1 -> /dev/nvme1n1","mode":"bounce","verified":true,"error":null},"#,
                r#""kernel_log":{"problems":[],"set_aside":[]},"error":null,"serial_log":"/run/rootbus/serial.log"}"#
            )
        );
        assert_eq!(
            serde_json::to_string(&r.teardown).unwrap(),
            concat!(
                r#"{"topology":"check-teardown","boot_seconds":4.0,"seconds":50.0,"#,
                r#""scenarios":[{"name":"unbind-provider-mid-copy","passed":true,"detail":"unbind returned in 0.05 s"}],"#,
                r#""kernel_log":{"problems":["[ 9.1] WARNING: CPU: 0 PID: 1 at mm/memremap.c:1"],"set_aside":[]},"error":null,"serial_log":"/run/check-teardown/serial.log"}"#
            )
        );
        let text = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn the_topology_script_passes_the_rules_release_to_the_guest() {
        assert!(topology_script(Some("6.12")).starts_with("RULES='6.12'\n"));
        assert!(!topology_script(None).contains("RULES="));
        assert_eq!(
            kernel_release("x\nKERNEL-RELEASE 7.2.13\n").as_deref(),
            Some("7.2.13")
        );
    }
}
