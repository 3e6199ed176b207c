//! The one lab harness: boot a topology with `p2pdma lab run`, run a guest script there
//! (after the shared shell helpers of [`GUEST_LIB`]), keep the run directory (kernel
//! serial log, disk images, fetched files), and read back what the script printed.
//!
//! Guest scripts print one `KEY field...` line per fact; the assertions are made on the
//! host. A failed test keeps its run directory and says where.

use std::collections::HashMap;
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
    helpers: String,
    env: Vec<(String, Option<String>)>,
}

/// Shell helpers every guest script can use: the harness installs them, with a test's own
/// [`Lab::helpers`] after them, as `/root/lib.sh` and sources that file first (commands a
/// script starts, such as `p2pdma mem test --while-mapped`, may source it too).
///
/// - `ns SERIAL`: the namespace block device of the NVMe controller with that serial
///   (kernel names change with enumeration order)
/// - `bdf SERIAL`: that controller's PCI address
/// - `md5 DEV OFFSET LEN`: md5 of a byte range (OFFSET and LEN multiples of 4096)
/// - `fill DEV OFFSET LEN`: random bytes over a range
/// - `zeros LEN`: md5 of LEN zero bytes
/// - `field NAME FILE`: a number or string field of a one-line JSON object
/// - `one_line FILE`: the file on one line
/// - `checked_copy SRC DST LEN DST_OFFSET ARGS...`: fills the first LEN bytes of SRC with
///   random data, runs `p2pdma copy SRC DST --length LEN --dst-offset DST_OFFSET ARGS...`
///   and prints `COPY rc md5(source) md5(destination range) md5(zeros) md5(destination
///   range before) md5(bytes before DST_OFFSET, before) md5(the same, after)`, then the
///   copy's stdout and stderr on `COPY_OUT` and `COPY_ERR` lines; [`LabRun::assert_checked_copy`]
///   checks them
pub const GUEST_LIB: &str = r#"
ns() { p2pdma lab guest nvme "$1" | awk '{print $3}'; }
bdf() { p2pdma lab guest nvme "$1" | awk '{print $1}'; }
md5() { dd if="$1" bs=4096 skip=$(($2 / 4096)) count=$(($3 / 4096)) 2>/dev/null | md5sum | cut -d' ' -f1; }
fill() { dd if=/dev/urandom of="$1" bs=4096 seek=$(($2 / 4096)) count=$(($3 / 4096)) conv=notrunc 2>/dev/null; }
zeros() { dd if=/dev/zero bs=4096 count=$(($1 / 4096)) 2>/dev/null | md5sum | cut -d' ' -f1; }
field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"}]*\).*/\1/p" "$2" | head -1; }
one_line() { tr '\n' ' ' < "$1"; }
checked_copy() {
  local src=$1 dst=$2 len=$3 off=$4
  shift 4
  fill $src 0 $len
  local before=$(md5 $dst $off $len) head=$(md5 $dst 0 $off)
  p2pdma copy $src $dst --length $len --dst-offset $off "$@" > /tmp/checked-copy.out 2> /tmp/checked-copy.err
  echo "COPY $? $(md5 $src 0 $len) $(md5 $dst $off $len) $(zeros $len) $before $head $(md5 $dst 0 $off)"
  echo "COPY_OUT $(one_line /tmp/checked-copy.out)"
  echo "COPY_ERR $(one_line /tmp/checked-copy.err)"
}
"#;

/// The `p2pdma` binary under test, for what is not a guest run (`lab topologies`,
/// `lab kernel`, `lab demo`).
pub fn p2pdma() -> Command {
    Command::new(env!("CARGO_BIN_EXE_p2pdma"))
}

/// What a finished run left behind. The run directory lives as long as this value.
pub struct LabRun {
    /// The exit status of `p2pdma lab run` (the guest script's, or 125 for a lab failure).
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    topology: String,
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
            helpers: String::new(),
            env: Vec::new(),
        }
    }

    /// A run of `topology` on Debian's stock 7.2 kernel (`--flavour stock --release 7.2`).
    pub fn stock(topology: &str) -> Lab {
        // The stock kernel is chosen by flag; an image named by P2PDMA_LAB_KERNEL would
        // conflict with it, and only release 7.2 has a stock kernel.
        Lab::new(topology, Flavour::Standard)
            .env_remove("P2PDMA_LAB_KERNEL")
            .args(&["--flavour", "stock", "--release", "7.2"])
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

    /// More shell helpers for `/root/lib.sh`, after (and so in place of same-named ones
    /// of) [`GUEST_LIB`].
    pub fn helpers(mut self, shell: &str) -> Lab {
        self.helpers.push_str(shell);
        self
    }

    /// Sets an environment variable of `p2pdma lab run`.
    pub fn env(mut self, key: &str, value: &str) -> Lab {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    /// Removes an environment variable from `p2pdma lab run`'s.
    pub fn env_remove(mut self, key: &str) -> Lab {
        self.env.push((key.into(), None));
        self
    }

    /// Boots the topology and runs `script` (a busybox sh script) in the guest; fails
    /// the test when the lab itself fails (exit 125: no boot, timeout, guest kernel
    /// panic).
    pub fn run(self, script: &str) -> LabRun {
        let run = self.try_run(script);
        assert_ne!(
            run.status,
            Some(125),
            "the lab itself failed (no boot, timeout, guest kernel panic): see stderr above"
        );
        run
    }

    /// [`Lab::run`] for a test of the lab's own failures: exit 125 is returned, not a
    /// test failure.
    pub fn try_run(self, script: &str) -> LabRun {
        let dir = tempfile::Builder::new()
            .prefix("p2pdma-lab-test-")
            .tempdir()
            .expect("temp dir");
        let mut cmd = p2pdma();
        for (key, value) in &self.env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
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
        files.push((
            "/root/lib.sh".into(),
            format!("{GUEST_LIB}{}", self.helpers),
        ));
        files.push(("/root/test.sh".into(), format!(". /root/lib.sh\n{script}")));
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
            topology: self.topology.clone(),
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
        run
    }
}

impl LabRun {
    /// Whether the guest script exited 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// Asserts the guest script exited 0.
    pub fn assert_success(&self) {
        assert!(
            self.success(),
            "{}: the guest script failed (exit {:?})\n--- stdout:\n{}\n--- stderr:\n{}",
            self.topology,
            self.status,
            self.stdout,
            self.stderr
        );
    }

    /// The JSON value (object or array) on the one line starting with `key`.
    pub fn json(&self, key: &str) -> serde_json::Value {
        json_after(&self.line(key).join(" "))
    }

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

    /// The lines starting with `key`, by their first field (a case name), with the fields
    /// after it.
    pub fn keyed(&self, key: &str) -> HashMap<&str, Vec<&str>> {
        self.lines(key)
            .into_iter()
            .map(|f| (f[0], f[1..].to_vec()))
            .collect()
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

    /// Asserts what the guest's `checked_copy` (see [`GUEST_LIB`]) printed: the copy
    /// exited 0, the destination range has the source's md5, the source is not zeros (the
    /// random fill happened), the destination range changed, and the bytes before
    /// DST_OFFSET did not. Returns the copy's stdout, on one line.
    pub fn assert_checked_copy(&self) -> String {
        let copy = self.line("COPY");
        // An empty stdout or stderr may come back as a line without the space after its key.
        let text = |key| self.lines(key).concat().join(" ");
        let output = || format!("stdout: {}\nstderr: {}", text("COPY_OUT"), text("COPY_ERR"));
        assert_eq!(copy.len(), 7, "COPY line: {copy:?}");
        assert_eq!(copy[0], "0", "the copy failed:\n{}", output());
        assert_eq!(
            copy[1],
            copy[2],
            "the guest's md5 of the destination range differs from the source's\n{}",
            output()
        );
        assert_ne!(
            copy[1], copy[3],
            "the source range is zeros: the random fill did not happen"
        );
        assert_ne!(copy[4], copy[2], "the destination range did not change");
        assert_eq!(copy[5], copy[6], "bytes before --dst-offset changed");
        text("COPY_OUT")
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

/// The JSON object or array starting at the first `{` or `[` of `line`.
pub fn json_after(line: &str) -> serde_json::Value {
    let start = line
        .find(['{', '['])
        .unwrap_or_else(|| panic!("no JSON in {line:?}"));
    serde_json::from_str(&line[start..]).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// The lines of a kernel log that report a kernel bug, leaving out the known reports
/// that are not about p2pdma (each is named on stderr): `p2pdma_lab::check::kernel_log`,
/// the scan `p2pdma lab check` makes.
pub fn kernel_log_problems(log: &str) -> Vec<String> {
    let scan = p2pdma_lab::check::kernel_log::scan(log);
    for known in &scan.set_aside {
        eprintln!("kernel log: known report set aside ({known})");
    }
    scan.problems
}

/// Asserts the `unbind` object of a `p2pdma mem test --buffers 2 --unbind-after-map
/// --json` report: the provider, bound to `driver`, was live; the unbind revoked both
/// mapped buffers (and the I/O pointer) instead of killing the process; the rebind
/// succeeded and the old mappings stayed dead.
pub fn assert_unbind_revoked_both_buffers(report: &serde_json::Value, driver: &str) {
    let unbind = &report["unbind"];
    assert_eq!(unbind["driver"], driver, "{report}");
    assert_eq!(unbind["is_live_before"], true, "{report}");
    assert_eq!(unbind["is_live_after_unbind"], false, "{report}");
    assert_both_reads_revoked(unbind, report);
    assert_eq!(unbind["io_ptr_result"], "revoked", "{report}");
    assert_eq!(unbind["rebound"], true, "{report}");
    assert_eq!(unbind["is_live_after_rebind"], false, "{report}");
}

/// Asserts a `p2pdma mem test --buffers 2 --while-mapped CMD --json` report whose CMD
/// removed the provider: CMD succeeded, both mapped buffers were revoked, no pool is left
/// to report, and the test passed.
pub fn assert_removal_revoked_both_buffers(report: &serde_json::Value) {
    let after = &report["while_mapped"];
    assert_eq!(after["exit_code"], 0, "{report}");
    assert_eq!(after["is_live_after"], false, "{report}");
    assert_both_reads_revoked(after, report);
    assert!(report["available_after"].is_null(), "{report}");
    assert_eq!(report["passed"], true, "{report}");
}

/// Both buffers' reads in `part` of `report` came back revoked, each through the SIGBUS
/// handler.
fn assert_both_reads_revoked(part: &serde_json::Value, report: &serde_json::Value) {
    assert_eq!(
        part["read_results"],
        serde_json::json!(["revoked", "revoked"]),
        "{report}"
    );
    let revocations = part["sigbus_revocations"]
        .as_u64()
        .unwrap_or_else(|| panic!("no sigbus_revocations in {report}"));
    assert!(
        revocations >= 2,
        "each read must have gone through the SIGBUS handler: {report}"
    );
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
/// 6.12, the lab's default (7.2 with `P2PDMA_LAB_FLAVOUR=stock`, the stock kernel's release).
pub fn lab_release() -> String {
    let stock = std::env::var("P2PDMA_LAB_FLAVOUR").is_ok_and(|f| f == "stock");
    std::env::var("P2PDMA_LAB_RELEASE")
        .ok()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| if stock { "7.2" } else { "6.12" }.to_owned())
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

/// Declares each scenario `fn NAME(flavour: Flavour)` of the calling module as two
/// tests, `MODULE::standard::NAME` and `MODULE::debug::NAME` (the debug kernel: KASAN,
/// lockdep), so `--skip debug::` leaves out the flavour that is not built. The module
/// must have `Flavour` in scope.
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
