//! What the lab's commands do around a boot, as library calls: `lab run` ([`run`]: the
//! topology from the catalog, the kernel, `--file`s, programs, the run request, the
//! `--report` file), `lab demo` ([`demo`]), `lab bench` ([`BootBench`]) and `lab check`
//! ([`check`]). Each takes a request that says what the user asked for and returns a
//! typed result; the `p2pdma` binary turns its arguments into these requests, shows the
//! kernel's progress through [`KernelProgress`] and prints what comes back.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bench::{self, BootFigures};
use crate::check::{self, CheckError, CheckRequest, Report};
use crate::obtain::{self, KernelChoice, KernelProgress, ObtainError};
use crate::paths;
use crate::spec::{Catalog, SpecError};
use crate::vm::{self, Accel, Fault, GuestBinaryError, RunOutcome, RunRequest, VmError};

/// The topology `lab demo` boots.
pub const DEMO_TOPOLOGY: &str = "fast";
/// What `lab demo` says before it starts (three lines, each ending in a newline).
pub const DEMO_INTRO: &str = "p2pdma lab demo: a real Linux kernel with CONFIG_PCI_P2PDMA boots in QEMU with two emulated NVMe
controllers with Controller Memory Buffers and a RAM-backed p2pmem provider, behind one PCIe
switch (topology `fast`); fio runs beside p2pdma for the speed figures.
";
/// The demo's guest script; each step runs the real tool and stops the demo if it fails.
pub const DEMO_SCRIPT: &str = include_str!("../../../lab/demo.sh");

/// Why a lab command could not do what it was asked. The variants that wrap another
/// module's error show that error's text unchanged.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A topology file did not load, or a topology is unknown.
    #[error(transparent)]
    Topology(#[from] SpecError),
    /// A `--file` argument names no file (it ends in `/` or `..`).
    #[error("--file {arg}: the path has no file name; write HOST:GUEST")]
    FileNoName {
        /// The argument as written.
        arg: String,
    },
    /// A `--file` argument's host path does not exist.
    #[error("--file {arg}: {} does not exist on the host", host.display())]
    FileMissing {
        /// The argument as written.
        arg: String,
        /// The host path.
        host: PathBuf,
    },
    /// `lab run --with-fio` without fio on the host.
    #[error("--with-fio: fio is not installed; run `p2pdma lab setup`")]
    FioMissing,
    /// `lab demo` without fio on the host.
    #[error("the demo compares with fio, which is not installed: run `p2pdma lab setup`")]
    DemoFioMissing,
    /// The running binary cannot go into the guest.
    #[error(transparent)]
    GuestBinary(#[from] GuestBinaryError),
    /// No kernel could be obtained.
    #[error(transparent)]
    Kernel(#[from] ObtainError),
    /// The boot or the guest command failed.
    #[error(transparent)]
    Vm(Box<VmError>),
    /// The `--report` file could not be written.
    #[error("cannot write the report {}", path.display())]
    Report {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `lab bench --runs 0`.
    #[error("--runs must be at least 1")]
    NoRuns,
    /// A boot of `lab bench` failed.
    #[error("booting {name}")]
    Boot {
        /// The topology.
        name: String,
        /// Why.
        #[source]
        source: Box<VmError>,
    },
    /// `lab check` could not start.
    #[error(transparent)]
    Check(#[from] CheckError),
}

impl From<VmError> for LaunchError {
    fn from(e: VmError) -> Self {
        LaunchError::Vm(Box::new(e))
    }
}

impl LaunchError {
    /// Whether the lab itself failed (a boot, a deadline, QEMU) rather than the request
    /// being wrong or the host lacking something: what the binary reports with the
    /// lab-failure status.
    pub fn is_boot_failure(&self) -> bool {
        matches!(self, LaunchError::Vm(_) | LaunchError::Boot { .. })
    }
}

/// Which QEMU accelerator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// KVM where a probe boot shows it works (cached per host), else TCG.
    #[default]
    Auto,
    /// KVM.
    Kvm,
    /// TCG (emulation).
    Tcg,
}

impl AccelChoice {
    /// The accelerator to boot `kernel` with (`Auto` may probe once with it).
    pub fn resolve(self, kernel: &Path) -> Accel {
        match self {
            AccelChoice::Kvm => Accel::Kvm,
            AccelChoice::Tcg => Accel::Tcg,
            AccelChoice::Auto => vm::probe_accel(kernel, &paths::cache_root()),
        }
    }
}

/// A `--file HOST[:GUEST]` argument as host path and guest path, without looking at the
/// host: the guest path defaults to `/root/<file name>`.
pub fn file_arg(arg: &str) -> Result<(PathBuf, String), LaunchError> {
    Ok(match arg.split_once(':') {
        Some((host, guest)) => (PathBuf::from(host), guest.to_owned()),
        None => {
            let host = PathBuf::from(arg);
            let name = host
                .file_name()
                .ok_or_else(|| LaunchError::FileNoName {
                    arg: arg.to_owned(),
                })?
                .to_string_lossy()
                .into_owned();
            (host, format!("/root/{name}"))
        }
    })
}

/// [`file_arg`], and the host path must exist.
pub fn existing_file_arg(arg: &str) -> Result<(PathBuf, String), LaunchError> {
    let (host, guest) = file_arg(arg)?;
    if !host.exists() {
        return Err(LaunchError::FileMissing {
            arg: arg.to_owned(),
            host,
        });
    }
    Ok((host, guest))
}

/// What `lab run` was asked to do.
#[derive(Debug, Clone)]
pub struct LabRun {
    /// The topology's name.
    pub topology: String,
    /// Topology files read besides the shipped one and the user's own.
    pub topology_files: Vec<PathBuf>,
    /// Where the kernel comes from.
    pub kernel: KernelChoice,
    /// Extra kernel command line arguments.
    pub kernel_args: Vec<String>,
    /// `--file` arguments, `HOST` or `HOST:GUEST` (see [`file_arg`]).
    pub files: Vec<String>,
    /// Put the host's fio (with its libraries) into the guest.
    pub with_fio: bool,
    /// Guest paths copied back into `RUN_DIR/fetched`.
    pub fetch: Vec<String>,
    /// The run directory (default: a new one under the system temp dir).
    pub out: Option<PathBuf>,
    /// How long the guest may take to boot.
    pub boot_timeout: Duration,
    /// How long the command may run.
    pub command_timeout: Duration,
    /// Faults to inject.
    pub faults: Vec<Fault>,
    /// QEMU accelerator.
    pub accel: AccelChoice,
    /// Keep the disk images in the run directory.
    pub keep_disks: bool,
    /// Write the run's [`LabRunReport`] as JSON to this file.
    pub report: Option<PathBuf>,
    /// The shell command (busybox sh).
    pub command: String,
}

/// What a `lab run` did: the `--report` file's contents.
#[derive(Debug, Clone, Serialize)]
pub struct LabRunReport {
    /// The kernel image booted.
    pub kernel: PathBuf,
    /// What the run produced.
    pub outcome: RunOutcome,
    /// The run directory (logs, disks, fetched files).
    pub run_dir: PathBuf,
    /// The topology's name.
    pub topology: String,
}

impl LabRunReport {
    /// One line: the topology, its boot time and accelerator, the command's status and
    /// time, and where the logs are.
    pub fn summary(&self) -> String {
        let o = &self.outcome;
        format!(
            "{} booted in {:.1} s ({:?}); command exited {} after {:.1} s; logs in {}",
            self.topology,
            o.boot_seconds,
            o.accel,
            o.status,
            o.command_seconds,
            self.run_dir.display()
        )
    }

    /// The report as the `--report` file holds it: pretty JSON, keys sorted at every
    /// level.
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        // Through a Value: its maps sort their keys, the nested outcome's included.
        serde_json::to_vec_pretty(&serde_json::to_value(self)?)
    }
}

/// Boots the topology with the kernel asked for, runs the command (its output echoed as
/// it arrives), writes the report file if one was asked for, and says what happened. The
/// command's own exit status is in the outcome; an error means the lab failed.
pub fn run(req: &LabRun, progress: &mut dyn KernelProgress) -> Result<LabRunReport, LaunchError> {
    let catalog = Catalog::load(paths::user_topologies().as_deref(), &req.topology_files)?;
    let topology = catalog.get(&req.topology)?;
    let files = req
        .files
        .iter()
        .map(|f| existing_file_arg(f))
        .collect::<Result<Vec<_>, _>>()?;
    let guest_binary = vm::guest_binary()?;
    let kernel = obtain::obtain(&req.kernel.request(None)?, progress)?.image;
    let programs = if req.with_fio {
        vec![paths::which("fio").ok_or(LaunchError::FioMissing)?]
    } else {
        Vec::new()
    };
    let run_dir = req
        .out
        .clone()
        .unwrap_or_else(|| paths::run_dir(&topology.name));
    let accel = req.accel.resolve(&kernel);
    let request = RunRequest {
        files,
        programs,
        fetch: req.fetch.clone(),
        kernel_args: req.kernel_args.clone(),
        boot_timeout: req.boot_timeout,
        command_timeout: req.command_timeout,
        faults: req.faults.clone(),
        keep_disks: req.keep_disks,
        ..RunRequest::new(
            topology,
            kernel.clone(),
            guest_binary,
            req.command.clone(),
            run_dir.clone(),
            accel,
        )
    };
    let outcome = vm::run(&request)?;
    let report = LabRunReport {
        kernel,
        outcome,
        run_dir,
        topology: request.topology.name,
    };
    if let Some(path) = &req.report {
        let json = report.to_json().map_err(|e| LaunchError::Report {
            path: path.clone(),
            source: e.into(),
        })?;
        std::fs::write(path, json).map_err(|source| LaunchError::Report {
            path: path.clone(),
            source,
        })?;
    }
    Ok(report)
}

/// What `lab demo` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct Demo {
    /// Where the kernel comes from; with neither a flavour nor a source named, the stock
    /// kernel ([`KernelChoice::stock_by_default`]).
    pub kernel: KernelChoice,
    /// The run directory (default: a new one under the system temp dir).
    pub out: Option<PathBuf>,
}

/// Boots [`DEMO_TOPOLOGY`] with fio and runs [`DEMO_SCRIPT`], its output echoed.
pub fn demo(req: &Demo, progress: &mut dyn KernelProgress) -> Result<RunOutcome, LaunchError> {
    let fio = paths::which("fio").ok_or(LaunchError::DemoFioMissing)?;
    let choice = req.kernel.stock_by_default();
    let kernel = obtain::obtain(&choice.request(None)?, progress)?.image;
    let catalog = Catalog::load(paths::user_topologies().as_deref(), &[])?;
    let topology = catalog.get(DEMO_TOPOLOGY)?;
    let out_dir = req.out.clone().unwrap_or_else(|| paths::run_dir("demo"));
    let accel = AccelChoice::Auto.resolve(&kernel);
    let mut request = RunRequest::new(
        topology,
        kernel,
        vm::guest_binary()?,
        DEMO_SCRIPT.to_owned(),
        out_dir,
        accel,
    );
    request.programs = vec![fio];
    Ok(vm::run(&request)?)
}

/// The demo's closing line: boot and run time, the script's status, the kernel log.
pub fn demo_summary(outcome: &RunOutcome) -> String {
    format!(
        "demo: guest booted in {:.1} s ({:?}), ran for {:.1} s, exit status {}; kernel log: {}",
        outcome.boot_seconds,
        outcome.accel,
        outcome.command_seconds,
        outcome.status,
        outcome.serial_log.display()
    )
}

/// What `lab bench` was asked to do.
#[derive(Debug, Clone)]
pub struct BootBenchRequest {
    /// Topologies to boot (empty: every one in the catalog).
    pub topologies: Vec<String>,
    /// Boots per topology (at least 1).
    pub runs: usize,
    /// Where the kernel comes from.
    pub kernel: KernelChoice,
}

/// `lab bench`, ready to boot: the kernel obtained, the topologies named. Boot each of
/// [`BootBench::topologies`] with [`BootBench::boot`].
#[derive(Debug)]
pub struct BootBench {
    catalog: Catalog,
    names: Vec<String>,
    kernel: PathBuf,
    accel: Accel,
    guest_binary: PathBuf,
    runs: usize,
}

impl BootBench {
    /// Checks the request, loads the catalog and obtains the kernel.
    pub fn prepare(
        req: &BootBenchRequest,
        progress: &mut dyn KernelProgress,
    ) -> Result<BootBench, LaunchError> {
        if req.runs == 0 {
            return Err(LaunchError::NoRuns);
        }
        let catalog = Catalog::load(paths::user_topologies().as_deref(), &[])?;
        let names = if req.topologies.is_empty() {
            catalog.names()
        } else {
            req.topologies.clone()
        };
        let kernel = obtain::obtain(&req.kernel.request(None)?, progress)?.image;
        let accel = AccelChoice::Auto.resolve(&kernel);
        let guest_binary = vm::guest_binary()?;
        Ok(BootBench {
            catalog,
            names,
            kernel,
            accel,
            guest_binary,
            runs: req.runs,
        })
    }

    /// The topologies to boot, in order.
    pub fn topologies(&self) -> &[String] {
        &self.names
    }

    /// Boots topology `name` the requested number of times.
    pub fn boot(&self, name: &str) -> Result<BootFigures, LaunchError> {
        let topology = self.catalog.get(name)?;
        bench::boot_times(
            &topology,
            &self.kernel,
            &self.guest_binary,
            self.accel,
            self.runs,
        )
        .map_err(|source| LaunchError::Boot {
            name: name.to_owned(),
            source: Box::new(source),
        })
    }
}

/// What `lab check` was asked to do.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Where the kernel comes from.
    pub kernel: KernelChoice,
    /// Parallel compile jobs when the kernel must be built.
    pub jobs: Option<usize>,
    /// Topologies to boot (empty: the shipped ones and those of `topology_files`).
    pub topologies: Vec<String>,
    /// Topology files read besides the shipped one and the user's own.
    pub topology_files: Vec<PathBuf>,
    /// Run the teardown scenarios.
    pub scenarios: bool,
    /// Judge with this release's rules instead of the guest kernel's own.
    pub rules_release: Option<String>,
    /// The run directory for the boots' logs (default: a new one under the system temp
    /// dir).
    pub out: Option<PathBuf>,
}

/// Why `lab check` stopped before its report.
#[derive(Debug, thiserror::Error)]
pub enum CheckStartError {
    /// The request could not be met (a topology, the guest binary, the checks' own data).
    #[error(transparent)]
    Request(#[from] LaunchError),
    /// The kernel could not be obtained.
    #[error(transparent)]
    Kernel(ObtainError),
}

/// Obtains the kernel (noting whether the cache had it), runs [`check::run`] and returns
/// its report, whose total time counts from this call. `on_progress` hears one line per
/// step.
pub fn check(
    req: &CheckOptions,
    progress: &mut dyn KernelProgress,
    on_progress: &mut dyn FnMut(&str),
) -> Result<Report, CheckStartError> {
    let started = Instant::now();
    let catalog = Catalog::load(paths::user_topologies().as_deref(), &req.topology_files)
        .map_err(LaunchError::from)?;
    let names = if req.topologies.is_empty() {
        // The shipped topologies and those of the files given; the user's own file's
        // only when named.
        Catalog::load(None, &req.topology_files)
            .map_err(LaunchError::from)?
            .names()
    } else {
        req.topologies.clone()
    };
    let topologies = names
        .iter()
        .map(|n| catalog.get(n))
        .collect::<Result<Vec<_>, _>>()
        .map_err(LaunchError::from)?;
    let guest_binary = vm::guest_binary().map_err(LaunchError::from)?;
    let kernel = req
        .kernel
        .request(req.jobs)
        .and_then(|request| obtain::obtain(&request, progress))
        .map_err(CheckStartError::Kernel)?;
    let accel = AccelChoice::Auto.resolve(&kernel.image);
    let request = CheckRequest {
        kernel,
        guest_binary,
        topologies,
        scenarios: req.scenarios,
        rules_release: req.rules_release.clone(),
        accel,
        out_dir: req.out.clone().unwrap_or_else(|| paths::run_dir("check")),
    };
    let mut report = check::run(&request, on_progress).map_err(LaunchError::from)?;
    // The kernel's time counts from this command's start, not from the first boot.
    report.timings.total_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_argument_names_its_guest_path_or_defaults_to_root() {
        assert_eq!(
            file_arg("/tmp/x/data.bin:/srv/in.bin").unwrap(),
            (PathBuf::from("/tmp/x/data.bin"), "/srv/in.bin".to_owned())
        );
        assert_eq!(
            file_arg("/tmp/x/data.bin").unwrap(),
            (
                PathBuf::from("/tmp/x/data.bin"),
                "/root/data.bin".to_owned()
            )
        );
        assert_eq!(
            file_arg("relative/dir").unwrap(),
            (PathBuf::from("relative/dir"), "/root/dir".to_owned())
        );
        let err = file_arg("/tmp/..").unwrap_err();
        assert!(matches!(err, LaunchError::FileNoName { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "--file /tmp/..: the path has no file name; write HOST:GUEST"
        );
    }

    #[test]
    fn a_file_argument_must_exist_on_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("present.txt");
        std::fs::write(&file, b"x").unwrap();
        let arg = format!("{}:/root/p", file.display());
        assert_eq!(
            existing_file_arg(&arg).unwrap(),
            (file.clone(), "/root/p".to_owned())
        );
        let gone = dir.path().join("absent.txt");
        let arg = gone.display().to_string();
        let err = existing_file_arg(&arg).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("--file {arg}: {arg} does not exist on the host")
        );
    }

    #[test]
    fn the_report_holds_kernel_outcome_run_dir_and_topology_with_sorted_keys() {
        let report = LabRunReport {
            kernel: "/cache/bzImage".into(),
            outcome: RunOutcome {
                status: 7,
                stdout: b"never in the report".to_vec(),
                stderr: Vec::new(),
                serial_log: "/run/serial.log".into(),
                boot_seconds: 12.5,
                command_seconds: 0.3,
                guest_uptime_at_ready: 3.0,
                accel: Accel::Tcg,
                faults_fired: vec![("device_del:nvme-b@signal:x".into(), 1.5)],
                fetched_dir: None,
                warnings: vec!["a namespace never appeared".into()],
            },
            run_dir: "/run".into(),
            topology: "switch".into(),
        };
        let text = String::from_utf8(report.to_json().unwrap()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["kernel", "outcome", "run_dir", "topology"]);
        assert_eq!(value["kernel"], "/cache/bzImage");
        assert_eq!(value["run_dir"], "/run");
        assert_eq!(value["topology"], "switch");
        let outcome = &value["outcome"];
        assert_eq!(outcome["status"], 7);
        assert_eq!(outcome["accel"], "tcg");
        assert_eq!(outcome["boot_seconds"], 12.5);
        assert_eq!(outcome["faults_fired"][0][1], 1.5);
        assert!(outcome.get("stdout").is_none(), "{text}");
        assert!(!text.contains("never in the report"), "{text}");
        // Sorted at every level, pretty-printed: the bytes `lab run --report` always wrote.
        let outcome_keys: Vec<_> = outcome.as_object().unwrap().keys().cloned().collect();
        let mut sorted = outcome_keys.clone();
        sorted.sort();
        assert_eq!(outcome_keys, sorted);
        let position = |key: &str| text.find(&format!("\"{key}\"")).unwrap();
        assert!(position("accel") < position("boot_seconds"), "{text}");
        assert!(position("warnings") < position("run_dir"), "{text}");
        assert!(text.starts_with("{\n  \"kernel\""), "{text}");
        assert_eq!(
            report.summary(),
            "switch booted in 12.5 s (Tcg); command exited 7 after 0.3 s; logs in /run"
        );
        assert_eq!(
            demo_summary(&report.outcome),
            "demo: guest booted in 12.5 s (Tcg), ran for 0.3 s, exit status 7; kernel log: /run/serial.log"
        );
    }

    #[test]
    fn the_demo_boots_a_shipped_topology_and_says_so() {
        let catalog = Catalog::load(None, &[]).unwrap();
        let fast = catalog.get(DEMO_TOPOLOGY).unwrap();
        assert!(DEMO_INTRO.contains(&format!("(topology `{}`)", fast.name)));
        assert_eq!(DEMO_INTRO.lines().count(), 3);
        assert!(DEMO_INTRO.ends_with('\n'));
        assert!(!DEMO_SCRIPT.is_empty());
    }

    #[test]
    fn only_boot_failures_are_lab_failures() {
        let boot = LaunchError::Boot {
            name: "switch".into(),
            source: Box::new(VmError::BusyboxMissing),
        };
        assert!(boot.is_boot_failure());
        assert_eq!(boot.to_string(), "booting switch");
        assert!(LaunchError::from(VmError::BusyboxMissing).is_boot_failure());
        assert!(!LaunchError::NoRuns.is_boot_failure());
        assert!(!LaunchError::FioMissing.is_boot_failure());
    }
}
