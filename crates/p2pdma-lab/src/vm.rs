//! Booting a topology in QEMU and running one command in it.
//!
//! The guest talks to the host over four serial ports backed by files in the run
//! directory: the kernel console (`serial.log`), the command's stdout and stderr, and a
//! control channel carrying `@@` lines (booted, signal, status, fetched files). The host
//! polls those files, forwards output as it arrives, injects faults through QMP when the
//! guest signals, and enforces deadlines. QEMU runs in its own process group, killed on
//! every exit path.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Serialize;

use crate::initramfs::{Initramfs, InitramfsError};
use crate::qmp::{Qmp, QmpError};
use crate::spec::{DiskFormat, QemuItem, Topology};

const INIT_SCRIPT: &str = include_str!("guest/init.sh");
/// The QEMU binary the lab runs.
pub const QEMU: &str = "qemu-system-x86_64";
/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Errors from a lab run. Each names the run directory's logs.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// QEMU is not installed.
    #[error("{QEMU} not found: run `p2pdma lab setup` (Debian package qemu-system-x86)")]
    QemuMissing(#[source] std::io::Error),
    /// busybox-static is not installed.
    #[error(
        "{BUSYBOX} not found or not static: run `p2pdma lab setup` (Debian package busybox-static)"
    )]
    BusyboxMissing,
    /// The guest binary is dynamically linked and cannot run in the busybox guest.
    #[error("{path} is dynamically linked; the guest needs a static binary (build with the workspace's .cargo/config.toml, which links statically)")]
    GuestBinaryNotStatic {
        /// The binary.
        path: PathBuf,
    },
    /// A fault names a device the topology does not have.
    #[error("fault '{fault}' names device '{device}', which topology '{topology}' does not have (its NVMe and RAM provider ids: {known})")]
    UnknownFaultDevice {
        /// The fault as written.
        fault: String,
        /// The device id.
        device: String,
        /// The topology.
        topology: String,
        /// Known ids.
        known: String,
    },
    /// The guest did not reach its command in time.
    #[error("the guest did not boot within {seconds} s; serial log {log}:\n{tail}")]
    BootTimeout {
        /// The deadline.
        seconds: u64,
        /// The console log.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// The command ran past its deadline; QEMU was killed, after the guest kernel was
    /// asked (SysRq t) where every task sleeps.
    #[error("the guest command did not finish within {seconds} s and was killed; serial log {log}:\n{tail}\n{tasks}")]
    CommandTimeout {
        /// The deadline.
        seconds: u64,
        /// The console log.
        log: PathBuf,
        /// Its last lines before the task dump.
        tail: String,
        /// The guest's processes (and any kernel thread in D state) with their kernel
        /// stacks, from the task dump, or why there is none.
        tasks: String,
    },
    /// The guest kernel panicked.
    #[error("the guest kernel panicked: {line}; serial log {log}:\n{tail}")]
    KernelPanic {
        /// The panic line.
        line: String,
        /// The console log.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// QEMU exited before the command finished, without a panic.
    #[error("QEMU exited ({status}) before the guest command finished; QEMU said: {qemu_said}; serial log {log}:\n{tail}")]
    QemuExited {
        /// QEMU's exit status.
        status: String,
        /// QEMU's own stderr.
        qemu_said: String,
        /// The console log.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// A fault could not be injected.
    #[error("fault injection failed")]
    Fault(#[from] QmpError),
    /// The initramfs could not be built.
    #[error("cannot build the guest's initramfs")]
    Initramfs(#[from] InitramfsError),
    /// A file in the run directory could not be handled.
    #[error("lab run directory: {what} {path}")]
    RunDir {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A disk image could not be formatted.
    #[error("mkfs.ext4 failed on {path}: {why} (install e2fsprogs: `p2pdma lab setup`)")]
    Format {
        /// The image.
        path: PathBuf,
        /// What mkfs said.
        why: String,
    },
    /// A fetched file could not be unpacked.
    #[error("cannot unpack '{guest_path}' fetched from the guest into {out}: {why}")]
    Fetch {
        /// The guest path.
        guest_path: String,
        /// The host directory.
        out: PathBuf,
        /// What failed.
        why: String,
    },
}

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation (always works, slower).
    Tcg,
}

/// When a fault fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// When the guest runs `p2pdma lab guest signal NAME`.
    Signal(String),
    /// This long after the guest reported it booted.
    AfterBoot(Duration),
}

/// What a fault does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// QMP `device_del`: the hot-unplug path (pciehp attention button; the driver is
    /// unbound, then the device disappears from the bus).
    DeviceDel(String),
}

/// One fault injection rule, written `device_del:ID@signal:NAME` or `device_del:ID@SECONDSs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// What it does.
    pub action: FaultAction,
    /// When.
    pub trigger: Trigger,
    /// As the user wrote it.
    pub text: String,
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let usage = || {
            format!("fault '{text}' is not ACTION@WHEN, e.g. device_del:nvme-b@signal:mapped or device_del:nvme-b@2.5s")
        };
        let (action, when) = text.split_once('@').ok_or_else(usage)?;
        let action = match action.split_once(':') {
            Some(("device_del", id)) if !id.is_empty() => FaultAction::DeviceDel(id.to_owned()),
            _ => return Err(usage()),
        };
        let trigger = if let Some(name) = when.strip_prefix("signal:") {
            if name.is_empty() {
                return Err(usage());
            }
            Trigger::Signal(name.to_owned())
        } else {
            let seconds: f64 = when
                .strip_suffix('s')
                .and_then(|s| s.parse().ok())
                .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                .ok_or_else(usage)?;
            Trigger::AfterBoot(Duration::from_secs_f64(seconds))
        };
        Ok(Fault {
            action,
            trigger,
            text: text.to_owned(),
        })
    }
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The topology to boot.
    pub topology: Topology,
    /// The kernel image.
    pub kernel: PathBuf,
    /// The static p2pdma binary to put at /bin/p2pdma.
    pub guest_binary: PathBuf,
    /// The shell command to run (busybox sh).
    pub command: String,
    /// Host files or directories to copy in, with their guest paths.
    pub files: Vec<(PathBuf, String)>,
    /// Programs to copy in with their shared libraries (e.g. fio), at their host paths.
    pub programs: Vec<PathBuf>,
    /// Guest paths to copy back into `out_dir/fetched` after the command.
    pub fetch: Vec<String>,
    /// Where logs, disks and fetched files go.
    pub out_dir: PathBuf,
    /// Extra kernel command line arguments.
    pub kernel_args: Vec<String>,
    /// How long the guest may take to boot.
    pub boot_timeout: Duration,
    /// How long the command may run.
    pub command_timeout: Duration,
    /// QEMU accelerator.
    pub accel: Accel,
    /// Faults to inject.
    pub faults: Vec<Fault>,
    /// Keep the disk images after the run.
    pub keep_disks: bool,
    /// Forward the guest's stdout/stderr to ours as it arrives.
    pub echo: bool,
}

impl RunRequest {
    /// A request with the defaults `lab run` uses: no extra files, faults or kernel
    /// arguments, 90 s to boot, 600 s for the command, output echoed, disks deleted.
    pub fn new(
        topology: Topology,
        kernel: PathBuf,
        guest_binary: PathBuf,
        command: String,
        out_dir: PathBuf,
        accel: Accel,
    ) -> RunRequest {
        RunRequest {
            topology,
            kernel,
            guest_binary,
            command,
            files: Vec::new(),
            programs: Vec::new(),
            fetch: Vec::new(),
            out_dir,
            kernel_args: Vec::new(),
            boot_timeout: Duration::from_secs(90),
            command_timeout: Duration::from_secs(600),
            accel,
            faults: Vec::new(),
            keep_disks: false,
            echo: true,
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    /// The command's exit status.
    pub status: i32,
    /// Its standard output.
    #[serde(skip)]
    pub stdout: Vec<u8>,
    /// Its standard error.
    #[serde(skip)]
    pub stderr: Vec<u8>,
    /// The kernel console log.
    pub serial_log: PathBuf,
    /// Seconds from starting QEMU to the guest reporting it is ready for the command.
    pub boot_seconds: f64,
    /// Seconds the command ran.
    pub command_seconds: f64,
    /// The guest's uptime when it was ready (seconds).
    pub guest_uptime_at_ready: f64,
    /// The accelerator used.
    pub accel: Accel,
    /// Faults that fired, with the time after boot.
    pub faults_fired: Vec<(String, f64)>,
    /// Where fetched files were unpacked.
    pub fetched_dir: Option<PathBuf>,
    /// Warnings from the guest's init (e.g. namespaces that never appeared).
    pub warnings: Vec<String>,
}

/// Kills QEMU's whole process group when dropped, whatever path leaves the run.
struct QemuGuard {
    child: Child,
}

impl QemuGuard {
    fn kill(&mut self) {
        let pid = self.child.id() as i32;
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for QemuGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// A file QEMU appends to, read incrementally.
struct Tail {
    file: Option<fs::File>,
    path: PathBuf,
    offset: u64,
}

impl Tail {
    fn new(path: PathBuf) -> Tail {
        Tail {
            file: None,
            path,
            offset: 0,
        }
    }

    fn read_new(&mut self) -> Vec<u8> {
        if self.file.is_none() {
            self.file = fs::File::open(&self.path).ok();
        }
        let Some(file) = self.file.as_mut() else {
            return Vec::new();
        };
        let mut buf = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_ok() && file.read_to_end(&mut buf).is_ok() {
            self.offset += buf.len() as u64;
        }
        buf
    }
}

fn last_lines(path: &Path, n: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Asks the guest kernel for a task dump (SysRq t through QMP), waits until the console
/// log stops growing (at most 20 s), and returns the stacks of the guest's processes, and
/// of any kernel thread in D state, from what the dump added to `serial_log`; or a line
/// saying why there is no dump.
fn dump_tasks(qmp: &mut Option<Qmp>, socket: &Path, serial_log: &Path) -> String {
    let size = || fs::metadata(serial_log).map_or(0, |m| m.len());
    let before = size();
    if qmp.is_none() {
        match Qmp::connect(socket, Instant::now() + Duration::from_secs(5)) {
            Ok(q) => *qmp = Some(q),
            Err(e) => return format!("no task dump: {e}"),
        }
    }
    let session = qmp.as_mut().expect("connected above");
    if let Err(e) = session.sysrq('t') {
        return format!("no task dump: {e}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = before;
    let mut still_since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = size();
        if now != last {
            (last, still_since) = (now, Instant::now());
        } else if now > before && still_since.elapsed() >= Duration::from_secs(2) {
            break;
        }
    }
    let text = fs::read(serial_log).unwrap_or_default();
    let added = text.get(before as usize..).unwrap_or_default();
    let stacks = process_stacks(&String::from_utf8_lossy(added));
    if stacks.is_empty() {
        "no task dump: the guest printed none after SysRq t (a kernel without CONFIG_MAGIC_SYSRQ, or a guest too busy to answer)".to_owned()
    } else {
        format!("where the guest's processes were sleeping (SysRq t; the whole dump is in the serial log):\n{stacks}")
    }
}

/// From a SysRq t dump on the console: the `task:` lines and stacks of processes (not
/// kernel threads, whose parent is kthreadd, pid 2), and of kernel threads in D state.
fn process_stacks(dump: &str) -> String {
    let mut out = Vec::new();
    let mut keep = false;
    for line in dump.lines() {
        // "[  111.048160] task:p2pdma  state:S ... pid:533 ... ppid:75 ..."
        let message = match line.find("] ") {
            Some(i) if line.starts_with('[') => &line[i + 2..],
            _ => line,
        };
        if let Some(header) = message.strip_prefix("task:") {
            let field = |name: &str| {
                header
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .map(str::to_owned)
            };
            let kernel_thread = field("ppid:").as_deref() == Some("2")
                || matches!(field("pid:").as_deref(), Some("2") | Some("0"));
            keep = !kernel_thread || field("state:").as_deref() == Some("D");
        } else if !(message.starts_with(' ')
            || message.starts_with("Call Trace:")
            || message.starts_with("Workqueue:"))
        {
            keep = false;
        }
        if keep {
            out.push(message);
        }
    }
    out.join("\n")
}

fn panic_line(path: &Path) -> Option<String> {
    let text = fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&text);
    text.lines()
        .find(|l| l.contains("Kernel panic - not syncing"))
        .map(|l| l.trim().to_owned())
}

/// Why the running binary cannot go into the guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestBinaryError {
    /// The running executable could not be found.
    #[error("cannot find the running p2pdma binary to put into the guest")]
    NotFound(#[source] std::io::Error),
    /// It is dynamically linked; busybox's guest has no dynamic loader for it.
    #[error("{} is dynamically linked; the lab guest needs the static build (cargo build in this workspace links statically via .cargo/config.toml)", path.display())]
    Dynamic {
        /// The running executable.
        path: PathBuf,
    },
}

/// The running executable, which the guest runs as `p2pdma`: it must be statically linked.
pub fn guest_binary() -> Result<PathBuf, GuestBinaryError> {
    let exe = std::env::current_exe().map_err(GuestBinaryError::NotFound)?;
    if !is_static_elf(&exe) {
        return Err(GuestBinaryError::Dynamic { path: exe });
    }
    Ok(exe)
}

/// Is `path` a statically linked ELF (no program interpreter)?
pub fn is_static_elf(path: &Path) -> bool {
    let Ok(data) = fs::read(path) else {
        return false;
    };
    elf_has_no_interpreter(&data)
}

fn elf_has_no_interpreter(data: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[32..40].try_into().expect("8 bytes")) as usize;
    let phentsize = u16_at(54);
    let phnum = u16_at(56);
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            != Some(PT_INTERP)
    })
}

fn run_dir_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError {
    let path = path.to_owned();
    move |source| VmError::RunDir { what, path, source }
}

/// Boots the topology, runs the command, and returns what happened.
pub fn run(req: &RunRequest) -> Result<RunOutcome, VmError> {
    if !is_static_elf(Path::new(BUSYBOX)) {
        return Err(VmError::BusyboxMissing);
    }
    if !is_static_elf(&req.guest_binary) {
        return Err(VmError::GuestBinaryNotStatic {
            path: req.guest_binary.clone(),
        });
    }
    let removable = req.topology.removable_ids();
    for fault in &req.faults {
        let FaultAction::DeviceDel(device) = &fault.action;
        if !removable.contains(&device.as_str()) {
            return Err(VmError::UnknownFaultDevice {
                fault: fault.text.clone(),
                device: device.clone(),
                topology: req.topology.name.clone(),
                known: removable.join(", "),
            });
        }
    }
    let out = &req.out_dir;
    fs::create_dir_all(out).map_err(run_dir_err("cannot create", out))?;
    let path = |name: &str| out.join(name);
    for name in ["serial.log", "stdout", "stderr", "control", "qemu.log"] {
        let p = path(name);
        fs::write(&p, b"").map_err(run_dir_err("cannot create", &p))?;
    }

    let initrd = path("initrd.gz");
    build_initramfs(req)?.write_gz(&initrd)?;

    let mut args: Vec<String> = vec![
        "-nodefaults".into(),
        "-M".into(),
        "q35".into(),
        "-accel".into(),
        match req.accel {
            Accel::Kvm => "kvm".into(),
            Accel::Tcg => "tcg".into(),
        },
        "-cpu".into(),
        req.topology.spec.cpu.clone(),
        "-m".into(),
        format!("{}M", req.topology.spec.memory_mib),
        "-smp".into(),
        "2".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        // pciehp, not ACPI hotplug, so device_del reaches the guest's PCIe hotplug driver.
        "-global".into(),
        "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off".into(),
        "-kernel".into(),
        req.kernel.display().to_string(),
        "-initrd".into(),
        initrd.display().to_string(),
    ];
    let mut cmdline = vec![
        "console=ttyS0".to_owned(),
        "panic=-1".to_owned(),
        "oops=panic".to_owned(),
        "loglevel=7".to_owned(),
        "rdinit=/init".to_owned(),
        // Under TCG on a loaded host the IO-APIC timer check can miss its ticks and the
        // kernel panics with "IO-APIC + timer doesn't work!" before userspace (seen at load
        // average 17-20); the emulated timer is fine, only the check's deadline is not.
        "no_timer_check".to_owned(),
        // SysRq t (the task dump taken when a command times out) on every kernel: a
        // distribution kernel's default mask leaves the dumps out.
        "sysrq_always_enabled".to_owned(),
    ];
    cmdline.extend(req.topology.kernel_args());
    cmdline.extend(req.kernel_args.iter().cloned());
    args.push("-append".into());
    args.push(cmdline.join(" "));
    for (i, name) in ["serial.log", "stdout", "stderr", "control"]
        .iter()
        .enumerate()
    {
        args.push("-chardev".into());
        args.push(format!("file,id=ser{i},path={}", path(name).display()));
        args.push("-serial".into());
        args.push(format!("chardev:ser{i}"));
    }
    let qmp_socket = path("qmp.sock");
    let _ = fs::remove_file(&qmp_socket);
    args.push("-qmp".into());
    args.push(format!("unix:{},server=on,wait=off", qmp_socket.display()));

    let disks_dir = path("disks");
    fs::create_dir_all(&disks_dir).map_err(run_dir_err("cannot create", &disks_dir))?;
    for item in req.topology.qemu_items() {
        match item {
            QemuItem::Object(object) => {
                args.push("-object".into());
                args.push(object);
            }
            QemuItem::Device(device) => {
                args.push("-device".into());
                args.push(device);
            }
            QemuItem::Drive {
                drive_id,
                nvme_id,
                bytes,
                format,
            } => {
                let image = disks_dir.join(format!("{nvme_id}.img"));
                create_disk(&image, bytes, format)?;
                args.push("-drive".into());
                args.push(format!(
                    "file={},if=none,id={drive_id},format=raw,cache=unsafe",
                    image.display()
                ));
            }
        }
    }
    fs::write(path("qemu.args"), args.join("\n"))
        .map_err(run_dir_err("cannot write", &path("qemu.args")))?;

    let qemu_log = fs::File::create(path("qemu.log"))
        .map_err(run_dir_err("cannot create", &path("qemu.log")))?;
    let started = Instant::now();
    let child = Command::new(QEMU)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(qemu_log)
        .process_group(0)
        .spawn()
        .map_err(VmError::QemuMissing)?;
    let mut qemu = QemuGuard { child };
    let outcome = supervise(req, &mut qemu, started, &qmp_socket);
    if let Ok(None) = qemu.child.try_wait() {
        qemu.kill();
    }
    if !req.keep_disks {
        let _ = fs::remove_dir_all(&disks_dir);
    }
    // The initramfs (busybox, the static p2pdma binary, modules: ~45 MB) is rebuilt for
    // every boot; the run directory keeps the logs, not a copy of it per run.
    let _ = fs::remove_file(&initrd);
    outcome
}

fn create_disk(image: &Path, bytes: u64, format: Option<DiskFormat>) -> Result<(), VmError> {
    let file = fs::File::create(image).map_err(run_dir_err("cannot create disk image", image))?;
    file.set_len(bytes)
        .map_err(run_dir_err("cannot size disk image", image))?;
    drop(file);
    if let Some(DiskFormat::Ext4) = format {
        let output = Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-E",
                "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
            ])
            .arg(image)
            .output()
            .map_err(|e| VmError::Format {
                path: image.to_owned(),
                why: e.to_string(),
            })?;
        if !output.status.success() {
            return Err(VmError::Format {
                path: image.to_owned(),
                why: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
    }
    Ok(())
}

fn build_initramfs(req: &RunRequest) -> Result<Initramfs, VmError> {
    let mut fs = Initramfs::new();
    for dir in [
        "/proc", "/sys", "/dev", "/tmp", "/run", "/mnt", "/root", "/usr/bin", "/sbin",
    ] {
        fs.dir(dir)?;
    }
    fs.host_path(Path::new(BUSYBOX), "/bin/busybox")?;
    fs.symlink("/bin/sh", "busybox")?;
    fs.host_path(&stripped_guest_binary(&req.guest_binary), "/bin/p2pdma")?;
    fs.bytes("/init", INIT_SCRIPT, 0o755)?;
    fs.kernel_modules_beside(&req.kernel)?;
    fs.bytes("/lab/cmd.sh", format!("{}\n", req.command), 0o755)?;
    let env = format!(
        "export P2PDMA_LAB_TOPOLOGY='{}'\nexport P2PDMA_LAB_NAMESPACES={}\n",
        req.topology.name,
        req.topology.spec.nvme.len()
    );
    fs.bytes("/lab/env", env, 0o644)?;
    fs.bytes("/lab/fetch", req.fetch.join("\n") + "\n", 0o644)?;
    fs.bytes(
        "/lab/topology.json",
        serde_json::to_vec_pretty(&req.topology).unwrap_or_default(),
        0o644,
    )?;
    for program in &req.programs {
        fs.program_with_libraries(program, &program.to_string_lossy())?;
    }
    for (host, guest) in &req.files {
        fs.host_path(host, guest)?;
    }
    Ok(fs)
}

/// A copy of the guest binary without debug sections, cached by the binary's path, size
/// and modification time: a debug build carries megabytes of DWARF that the emulated CPU
/// would otherwise decompress at every boot. Falls back to the binary itself when `strip`
/// is unavailable.
fn stripped_guest_binary(binary: &Path) -> PathBuf {
    let Ok(meta) = fs::metadata(binary) else {
        return binary.to_owned();
    };
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&(binary, meta.len(), mtime), &mut hasher);
    let dir = crate::paths::cache_root().join("guest-bin");
    let stripped = dir.join(format!(
        "p2pdma-{:016x}",
        std::hash::Hasher::finish(&hasher)
    ));
    if stripped.is_file() {
        return stripped;
    }
    let partial = stripped.with_extension(format!("partial-{}", std::process::id()));
    let ok = fs::create_dir_all(&dir).is_ok()
        && Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&partial)
            .arg(binary)
            .status()
            .is_ok_and(|s| s.success())
        && fs::rename(&partial, &stripped).is_ok();
    if ok {
        stripped
    } else {
        let _ = fs::remove_file(&partial);
        binary.to_owned()
    }
}

#[derive(Default)]
struct Control {
    pending: String,
    booted_at: Option<Instant>,
    guest_uptime: f64,
    status: Option<i32>,
    done: bool,
    signals: Vec<String>,
    warnings: Vec<String>,
    fetching: Option<(String, String)>,
    fetched: Vec<(String, Vec<u8>)>,
    missing: Vec<String>,
}

impl Control {
    fn feed(&mut self, bytes: &[u8]) {
        self.pending.push_str(&String::from_utf8_lossy(bytes));
        while let Some(nl) = self.pending.find('\n') {
            let line: String = self.pending.drain(..=nl).collect();
            self.line(line.trim_end_matches(['\r', '\n']));
        }
    }

    fn line(&mut self, line: &str) {
        if let Some((path, data)) = self.fetching.as_mut() {
            if line == "@@fetch-end" {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(data.as_bytes())
                    .unwrap_or_default();
                self.fetched.push((path.clone(), decoded));
                self.fetching = None;
            } else {
                data.push_str(line.trim());
            }
            return;
        }
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "@@booted" => {
                self.booted_at = Some(Instant::now());
                self.guest_uptime = rest.trim().parse().unwrap_or(0.0);
            }
            "@@signal" => self.signals.push(rest.trim().to_owned()),
            "@@status" => self.status = rest.trim().parse().ok(),
            "@@warning" => self.warnings.push(rest.to_owned()),
            "@@fetch-begin" => self.fetching = Some((rest.to_owned(), String::new())),
            "@@fetch-missing" => self.missing.push(rest.to_owned()),
            "@@done" => self.done = true,
            _ => {}
        }
    }
}

fn supervise(
    req: &RunRequest,
    qemu: &mut QemuGuard,
    started: Instant,
    qmp_socket: &Path,
) -> Result<RunOutcome, VmError> {
    let out = &req.out_dir;
    let serial_log = out.join("serial.log");
    let mut stdout_tail = Tail::new(out.join("stdout"));
    let mut stderr_tail = Tail::new(out.join("stderr"));
    let mut control_tail = Tail::new(out.join("control"));
    let mut control = Control::default();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut qmp: Option<Qmp> = None;
    let mut pending_faults: Vec<Fault> = req.faults.clone();
    let mut fired = Vec::new();
    let mut signals_seen = 0;
    let mut exited_at: Option<Instant> = None;
    let tail = || last_lines(&serial_log, 30);

    loop {
        let new_out = stdout_tail.read_new();
        let new_err = stderr_tail.read_new();
        if req.echo {
            let _ = std::io::stdout()
                .write_all(&new_out)
                .and_then(|_| std::io::stdout().flush());
            let _ = std::io::stderr().write_all(&new_err);
        }
        stdout.extend_from_slice(&new_out);
        stderr.extend_from_slice(&new_err);
        control.feed(&control_tail.read_new());

        if let Some(booted) = control.booted_at {
            let new_signals: Vec<String> = control.signals[signals_seen..].to_vec();
            signals_seen = control.signals.len();
            let mut due = Vec::new();
            pending_faults.retain(|f| {
                let fire = match &f.trigger {
                    Trigger::Signal(name) => new_signals.contains(name),
                    Trigger::AfterBoot(after) => booted.elapsed() >= *after,
                };
                if fire {
                    due.push(f.clone());
                }
                !fire
            });
            for fault in due {
                if qmp.is_none() {
                    qmp = Some(Qmp::connect(
                        qmp_socket,
                        Instant::now() + Duration::from_secs(5),
                    )?);
                }
                let session = qmp.as_mut().expect("connected above");
                let FaultAction::DeviceDel(id) = &fault.action;
                session.device_del(id)?;
                fired.push((fault.text.clone(), booted.elapsed().as_secs_f64()));
                if req.echo {
                    eprintln!(
                        "lab: fault injected: {} at {:.2} s after boot",
                        fault.text,
                        booted.elapsed().as_secs_f64()
                    );
                }
            }
        }

        let exited = matches!(qemu.child.try_wait(), Ok(Some(_)));
        if control.done || exited {
            // Let the last bytes of the serial files land before judging.
            let settle = *exited_at.get_or_insert_with(Instant::now);
            if !exited && settle.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            if exited && settle.elapsed() < Duration::from_millis(100) {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let rest_out = stdout_tail.read_new();
            let rest_err = stderr_tail.read_new();
            if req.echo {
                let _ = std::io::stdout().write_all(&rest_out);
                let _ = std::io::stderr().write_all(&rest_err);
            }
            stdout.extend_from_slice(&rest_out);
            stderr.extend_from_slice(&rest_err);
            control.feed(&control_tail.read_new());
            break;
        }

        let now = Instant::now();
        match control.booted_at {
            None if now.duration_since(started) > req.boot_timeout => {
                return Err(VmError::BootTimeout {
                    seconds: req.boot_timeout.as_secs(),
                    log: serial_log.clone(),
                    tail: tail(),
                })
            }
            Some(booted)
                if control.status.is_none() && now.duration_since(booted) > req.command_timeout =>
            {
                let tail = tail();
                let tasks = dump_tasks(&mut qmp, qmp_socket, &serial_log);
                return Err(VmError::CommandTimeout {
                    seconds: req.command_timeout.as_secs(),
                    log: serial_log.clone(),
                    tail,
                    tasks,
                });
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let Some(status) = control.status else {
        if let Some(line) = panic_line(&serial_log) {
            return Err(VmError::KernelPanic {
                line,
                log: serial_log.clone(),
                tail: tail(),
            });
        }
        let status = qemu
            .child
            .try_wait()
            .ok()
            .flatten()
            .map_or("still running".to_owned(), |s| s.to_string());
        return Err(VmError::QemuExited {
            status,
            qemu_said: last_lines(&out.join("qemu.log"), 5),
            log: serial_log.clone(),
            tail: tail(),
        });
    };
    let booted = control.booted_at.expect("status comes after boot");
    let fetched_dir = if req.fetch.is_empty() {
        None
    } else {
        let dir = out.join("fetched");
        fs::create_dir_all(&dir).map_err(run_dir_err("cannot create", &dir))?;
        for (guest_path, tar) in &control.fetched {
            unpack_tar(tar, &dir).map_err(|why| VmError::Fetch {
                guest_path: guest_path.clone(),
                out: dir.clone(),
                why,
            })?;
        }
        for missing in &control.missing {
            control
                .warnings
                .push(format!("--fetch {missing}: no such file in the guest"));
        }
        Some(dir)
    };
    Ok(RunOutcome {
        status,
        stdout,
        stderr,
        serial_log,
        boot_seconds: booted.duration_since(started).as_secs_f64(),
        command_seconds: booted.elapsed().as_secs_f64(),
        guest_uptime_at_ready: control.guest_uptime,
        accel: req.accel,
        faults_fired: fired,
        fetched_dir,
        warnings: control.warnings,
    })
}

fn unpack_tar(tar: &[u8], dir: &Path) -> Result<(), String> {
    let mut child = Command::new("tar")
        .arg("-xf")
        .arg("-")
        .arg("-C")
        .arg(dir)
        .arg("--no-same-owner")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(tar)
        .map_err(|e| e.to_string())?;
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

/// Decides whether KVM works here by booting `kernel` with it once (no initramfs: the
/// kernel panics at once on the missing root, which is a clean exit with -no-reboot).
/// The answer is cached per QEMU version and host kernel, since a broken KVM (as on
/// nested build machines) aborts QEMU instead of falling back.
pub fn probe_accel(kernel: &Path, cache_dir: &Path) -> Accel {
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Accel::Tcg;
    }
    let qemu_version = Command::new(QEMU)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    let host = rustix::system::uname();
    let key = format!("{qemu_version} | {}", host.release().to_string_lossy());
    let cache = cache_dir.join("accel-probe.json");
    if let Ok(text) = fs::read_to_string(&cache) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            if v["key"] == key.as_str() {
                return if v["kvm_works"] == true {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                };
            }
        }
    }
    let log = cache_dir.join("accel-probe.log");
    let works = (|| {
        let mut child = Command::new(QEMU)
            .args([
                "-nodefaults",
                "-M",
                "q35",
                "-accel",
                "kvm",
                "-cpu",
                "host",
                "-m",
                "256M",
                "-display",
                "none",
                "-no-reboot",
            ])
            .arg("-kernel")
            .arg(kernel)
            .args(["-append", "console=ttyS0 panic=-1", "-serial"])
            .arg(format!("file:{}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let text = fs::read_to_string(&log).unwrap_or_default();
                return Some(status.success() && text.contains("Kernel panic"));
            }
            if Instant::now() > deadline {
                let mut guard = QemuGuard { child };
                guard.kill();
                return Some(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })()
    .unwrap_or(false);
    let _ = fs::create_dir_all(cache_dir);
    let _ = fs::write(
        &cache,
        serde_json::json!({ "key": key, "kvm_works": works }).to_string(),
    );
    if works {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_or_explain_the_syntax() {
        let f: Fault = "device_del:nvme-b@signal:mapped".parse().unwrap();
        assert_eq!(f.action, FaultAction::DeviceDel("nvme-b".into()));
        assert_eq!(f.trigger, Trigger::Signal("mapped".into()));
        let f: Fault = "device_del:nvme-a@2.5s".parse().unwrap();
        assert_eq!(f.trigger, Trigger::AfterBoot(Duration::from_millis(2500)));
        for bad in [
            "device_del:nvme-a",
            "reboot@1s",
            "device_del:@1s",
            "device_del:a@soon",
            "device_del:a@signal:",
        ] {
            let e = bad.parse::<Fault>().unwrap_err();
            assert!(e.contains("is not ACTION@WHEN"), "{bad}: {e}");
        }
    }

    #[test]
    fn control_channel_parses_status_signals_and_fetched_files() {
        let mut c = Control::default();
        let payload = base64::engine::general_purpose::STANDARD.encode(b"tar bytes");
        c.feed(b"@@booted 1.5");
        assert!(c.booted_at.is_none(), "a line counts only once complete");
        c.feed(format!("3\n@@signal mapped\n@@status 3\n@@fetch-begin /tmp/x\n{}\n{}\n@@fetch-end\n@@done\n", &payload[..4], &payload[4..]).as_bytes());
        assert!(c.booted_at.is_some());
        assert_eq!(c.guest_uptime, 1.53);
        assert_eq!(c.signals, ["mapped"]);
        assert_eq!(c.status, Some(3));
        assert_eq!(c.fetched, [("/tmp/x".to_owned(), b"tar bytes".to_vec())]);
        assert!(c.done);
    }

    /// From a task dump (captured from a 7.2 guest where a copy sat in io_uring_enter),
    /// the processes and their stacks are kept; idle kernel threads and the scheduler
    /// statistics that follow the dump are not; a kernel thread in D state is.
    #[test]
    fn the_task_dump_keeps_processes_and_blocked_kernel_threads() {
        let dump = "\
[  110.748617] sysrq: Show State
[  110.749226] task:init            state:S stack:0     pid:1     tgid:1     ppid:0      task_flags:0x400000 flags:0x00080000
[  110.760769] Call Trace:
[  110.761189]  <TASK>
[  110.761917]  ? kernel_wait4+0xca/0x10a
[  110.762355]  </TASK>
[  110.762479] task:kthreadd        state:S stack:0     pid:2     tgid:2     ppid:0      task_flags:0x208040 flags:0x00080000
[  110.762710] Call Trace:
[  110.763007]  ? kthreadd+0x5b/0xfb
[  111.045293] task:kworker/1:1H    state:I stack:0     pid:93    tgid:93    ppid:2      task_flags:0x4208060 flags:0x00080000
[  111.045518] Workqueue:  0x0 (kblockd)
[  111.045608] Call Trace:
[  111.045861]  ? worker_thread+0x175/0x1ad
[  111.046537]  </TASK>
[  111.046585] task:kworker/0:2     state:D stack:0     pid:105   tgid:105   ppid:2      task_flags:0x4208060 flags:0x00080000
[  111.046943] Workqueue: events nvme_reset_work
[  111.047028] Call Trace:
[  111.047375]  ? blk_mq_freeze_queue_wait+0x1/0x2
[  111.048004]  </TASK>
[  111.048160] task:p2pdma          state:S stack:0     pid:533   tgid:533   ppid:75     task_flags:0x400100 flags:0x00080000
[  111.048382] Call Trace:
[  111.048437]  <TASK>
[  111.048661]  ? io_cqring_wait+0x3ca/0x503
[  111.048830]  ? __x64_sys_io_uring_enter+0x5d2/0x5fd
[  111.049114]  </TASK>
[  111.049319] Sched Debug Version: v0.11, 7.2.13 #1
[  111.049484] ktime                                   : 111068.573711
[  111.050756]   .nr_running                    : 0
";
        let kept = process_stacks(dump);
        for wanted in [
            "task:init ",
            "kernel_wait4",
            "task:p2pdma ",
            "io_cqring_wait",
            "__x64_sys_io_uring_enter",
            "task:kworker/0:2 ",
            "blk_mq_freeze_queue_wait",
        ] {
            assert!(kept.contains(wanted), "{wanted} missing from:\n{kept}");
        }
        for unwanted in [
            "kthreadd",
            "kworker/1:1H",
            "worker_thread",
            "Sched Debug",
            ".nr_running",
            "sysrq: Show State",
            "[  111.",
        ] {
            assert!(!kept.contains(unwanted), "{unwanted} kept in:\n{kept}");
        }
        assert_eq!(process_stacks("no dump here\n"), "");
    }

    #[test]
    fn static_detection_reads_the_program_headers() {
        // Test binaries are linked like the p2pdma binary: statically.
        assert!(is_static_elf(&std::env::current_exe().unwrap()));
        assert!(!is_static_elf(Path::new("/nonexistent")));
        let ls = fs::read("/bin/ls").expect("/bin/ls exists on Debian");
        assert!(
            !elf_has_no_interpreter(&ls),
            "/bin/ls is dynamically linked on Debian"
        );
    }
}
