//! Helpers for lab test binaries: boot a topology with a guest script, keep the run
//! directory (kernel serial log, disk images), and read what the script printed.
//!
//! Guest scripts print one `KEY field...` line per fact; the assertions are made on the
//! host. Each lab test binary uses the part it needs.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Which lab kernel a test boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// The standard lab kernel (or the image named by `P2PDMA_LAB_KERNEL`).
    Standard,
    /// The debug kernel: KASAN, lockdep, DEBUG_VM, hung tasks panic. `lab run` builds it
    /// on first use (`p2pdma lab kernel --flavour debug` builds it ahead).
    Debug,
    /// The kernel without CONFIG_PCI_P2PDMA (VFIO and the Intel IOMMU on), for the VFIO
    /// path (`p2pdma lab kernel --flavour no-p2pdma` builds it ahead).
    #[allow(dead_code)]
    NoP2pdma,
}

impl Flavour {
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Standard => "standard",
            Flavour::Debug => "debug",
            Flavour::NoP2pdma => "no-p2pdma",
        }
    }
}

/// One `p2pdma lab run` to be made.
pub struct Lab {
    topology: String,
    flavour: Flavour,
    topologies_toml: Option<String>,
    lab_args: Vec<String>,
    guest_files: Vec<(String, String)>,
}

/// What a finished run left behind. The run directory lives as long as this value.
pub struct LabRun {
    /// The exit status of `p2pdma lab run` (the guest script's, or 125 for a lab failure).
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    flavour: Flavour,
    dir: tempfile::TempDir,
}

impl Lab {
    /// A run of `topology` on the given kernel.
    pub fn new(topology: &str, flavour: Flavour) -> Lab {
        Lab {
            topology: topology.into(),
            flavour,
            topologies_toml: None,
            lab_args: Vec::new(),
            guest_files: Vec::new(),
        }
    }

    /// Also read topologies from this TOML text.
    pub fn topologies(mut self, toml: &str) -> Lab {
        self.topologies_toml = Some(toml.into());
        self
    }

    /// Extra `lab run` options (`--fault ...`, `--keep-disks`, `--timeout N`).
    pub fn args(mut self, args: &[&str]) -> Lab {
        self.lab_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// A file the guest gets at `guest_path`, with this content.
    pub fn file(mut self, guest_path: &str, content: &str) -> Lab {
        self.guest_files.push((guest_path.into(), content.into()));
        self
    }

    /// Boots the topology and runs `script` (a busybox sh script) in the guest.
    pub fn run(self, script: &str) -> LabRun {
        let dir = tempfile::Builder::new()
            .prefix("p2pdma-lab-test-")
            .tempdir()
            .expect("temp dir");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_p2pdma"));
        cmd.args(["lab", "run", "--quiet", "--topology", &self.topology]);
        if self.flavour != Flavour::Standard {
            // P2PDMA_LAB_KERNEL names one image and excludes --flavour.
            cmd.env_remove("P2PDMA_LAB_KERNEL")
                .args(["--flavour", self.flavour.name()]);
        }
        if let Some(toml) = &self.topologies_toml {
            let path = dir.path().join("topologies.toml");
            std::fs::write(&path, toml).unwrap();
            cmd.arg("--topologies").arg(path);
        }
        let mut files = self.guest_files;
        files.push(("/root/test.sh".into(), script.into()));
        for (i, (guest, content)) in files.iter().enumerate() {
            let host = dir.path().join(format!("guest-file-{i}"));
            std::fs::write(&host, content).unwrap();
            cmd.arg("--file").arg(format!("{}:{guest}", host.display()));
        }
        let out = cmd
            .args(&self.lab_args)
            .arg("--out")
            .arg(dir.path().join("run"))
            .args(["--", "sh /root/test.sh"])
            .output()
            .expect("p2pdma lab run starts");
        let run = LabRun {
            status: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            flavour: self.flavour,
            dir,
        };
        eprintln!(
            "--- {} ({} kernel) exit {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.topology,
            self.flavour.name(),
            run.status,
            run.stdout,
            run.stderr
        );
        assert_ne!(
            run.status,
            Some(125),
            "the lab itself failed (no boot, timeout, guest kernel panic): see stderr above"
        );
        run
    }
}

impl LabRun {
    /// The kernel the run booted.
    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    /// The run directory (`serial.log`, `disks/` with `--keep-disks`, `fetched/`).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// The guest kernel's console output.
    pub fn serial_log(&self) -> String {
        let path = self.dir().join("serial.log");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    /// A disk image kept by `--keep-disks`, by NVMe id.
    pub fn disk(&self, nvme_id: &str) -> PathBuf {
        self.dir().join("disks").join(format!("{nvme_id}.img"))
    }

    /// The stdout lines starting with `key`, split into fields after the key.
    pub fn lines(&self, key: &str) -> Vec<Vec<&str>> {
        lines(&self.stdout, key)
    }

    /// The fields of the one line starting with `key`.
    pub fn line(&self, key: &str) -> Vec<&str> {
        let found = self.lines(key);
        assert_eq!(
            found.len(),
            1,
            "expected one {key} line in the guest's output:\n{}",
            self.stdout
        );
        found.into_iter().next().unwrap()
    }

    /// Asserts the guest kernel logged no sign of a kernel bug during the run.
    pub fn assert_kernel_log_clean(&self) {
        let log = self.serial_log();
        let problems = kernel_log_problems(&log);
        assert!(
            problems.is_empty(),
            "the guest kernel ({} flavour) reported problems:\n{}",
            self.flavour.name(),
            problems.join("\n")
        );
    }
}

impl Drop for LabRun {
    /// A failed test keeps its run directory (serial log, disks) for a post-mortem.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!(
                "lab run directory kept: {}",
                dir.keep().join("run").display()
            );
        }
    }
}

/// The lines of `out` starting with `key` and a space, split into fields after the key.
pub fn lines<'a>(out: &'a str, key: &str) -> Vec<Vec<&'a str>> {
    out.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .map(|rest| rest.split_whitespace().collect())
        .collect()
}

/// The JSON object starting at the first `{` of `line`.
pub fn json_after(line: &str) -> serde_json::Value {
    let start = line
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in {line:?}"));
    serde_json::from_str(&line[start..]).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// Markers of a kernel bug report: BUG/WARNING splats, KASAN reports, oopses, the
/// hung-task detector, lockdep reports, soft lockups and RCU stalls.
const KERNEL_PROBLEM_MARKERS: &[&str] = &[
    "BUG:",
    "WARNING:",
    "KASAN",
    "Oops",
    "hung_task",
    "blocked for more than",
    "lockdep",
    "possible circular locking",
    "possible recursive locking",
    "inconsistent lock state",
    "soft lockup",
    "rcu_preempt detected stalls",
    "rcu_sched detected stalls",
    "Kernel panic",
    "general protection fault",
    "Call Trace:",
];

/// Boot banners that contain a marker but report nothing.
const KERNEL_BENIGN_LINES: &[&str] = &[
    // The debug flavour's PROVE_RCU announcing itself.
    "RCU lockdep checking is enabled",
];

/// A known kernel report that is not about p2pdma: every line of the report must be
/// present for it to be set aside.
struct KnownReport {
    /// Where it is explained.
    reference: &'static str,
    /// The report's first line.
    header: &'static str,
    /// Lines the report must also contain.
    contains: &'static [&'static str],
}

/// Lockdep on the debug kernel flags pciehp itself on every hot removal below a switch
/// port: pciehp_unconfigure_device() takes pci_rescan_remove_lock with the slot's
/// reset_lock held, drops reset_lock around the removal and takes it again while still
/// holding pci_rescan_remove_lock. It fires with no p2pmem in use (RELIABILITY.md).
const KNOWN_REPORTS: &[KnownReport] = &[KnownReport {
    reference: "RELIABILITY.md, known kernel issues: pciehp lock order",
    header: "WARNING: possible circular locking dependency detected",
    contains: &[
        "reset_lock",
        "pci_rescan_remove_lock",
        "at: pciehp_unconfigure_device",
        "pciehp_ist",
    ],
}];

/// A report runs from its header to the end of its stack dump.
const REPORT_END: &str = "</TASK>";

/// The lines of a kernel log that report a kernel bug (see [`KERNEL_PROBLEM_MARKERS`]),
/// leaving out the reports listed in [`KNOWN_REPORTS`] (each is named on stderr).
pub fn kernel_log_problems(log: &str) -> Vec<String> {
    let lines: Vec<&str> = log.lines().collect();
    let mut problems = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if let Some((known, len)) = known_report_at(&lines[i..]) {
            eprintln!("kernel log: known report set aside ({})", known.reference);
            i += len;
            continue;
        }
        let line = lines[i];
        if KERNEL_PROBLEM_MARKERS.iter().any(|m| line.contains(m))
            && !KERNEL_BENIGN_LINES.iter().any(|b| line.contains(b))
        {
            problems.push(line.to_owned());
        }
        i += 1;
    }
    problems
}

/// The known report starting at `lines[0]` and how many lines it spans.
fn known_report_at(lines: &[&str]) -> Option<(&'static KnownReport, usize)> {
    let known = KNOWN_REPORTS
        .iter()
        .find(|k| lines.first().is_some_and(|l| l.contains(k.header)))?;
    let len = lines.iter().position(|l| l.contains(REPORT_END))? + 1;
    let report = &lines[..len];
    known
        .contains
        .iter()
        .all(|c| report.iter().any(|l| l.contains(c)))
        .then_some((known, len))
}

/// Reads `len` bytes at `offset` of a disk image.
pub fn read_range(image: &Path, offset: u64, len: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(image)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", image.display()));
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0; usize::try_from(len).unwrap()];
    f.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("cannot read {len} bytes of {}: {e}", image.display()));
    buf
}

/// The lab kernel release the tests boot: `P2PDMA_LAB_RELEASE` (what `lab run` reads), else
/// 6.12, the lab's default.
pub fn lab_release() -> String {
    std::env::var("P2PDMA_LAB_RELEASE")
        .ok()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "6.12".to_owned())
}

/// How the booted kernel fails an O_DIRECT transfer it refuses as P2P: `EREMOTEIO` up to
/// 6.16, `EINVAL` from 6.17 (`blk_rq_dma_map`), as (errno, strerror text).
pub fn p2p_refusal_errno() -> (i64, &'static str) {
    let version = p2pdma::kernel_rules::KernelVersion::parse(&lab_release());
    if version.is_some_and(|v| v >= p2pdma::kernel_rules::EINVAL_REFUSAL_SINCE) {
        (22, "Invalid argument")
    } else {
        (121, "Remote I/O error")
    }
}

/// Declares each scenario `fn NAME(flavour: Flavour)` of the calling test binary as two
/// tests, `standard::NAME` and `debug::NAME` (the debug kernel: KASAN, lockdep), so
/// `--skip debug::` leaves out the flavour that is not built. The binary must have
/// `Flavour` in scope.
#[allow(unused_macros)] // only the binaries with teardown scenarios use it
macro_rules! on_both_kernels {
    ($($scenario:ident),* $(,)?) => {
        mod standard {
            $(
                #[test]
                #[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
                fn $scenario() {
                    super::$scenario(super::Flavour::Standard);
                }
            )*
        }
        mod debug {
            $(
                #[test]
                #[ignore = "lab: boots a QEMU guest on the debug kernel (built on first use); run with --include-ignored"]
                fn $scenario() {
                    super::$scenario(super::Flavour::Debug);
                }
            )*
        }
    };
}
