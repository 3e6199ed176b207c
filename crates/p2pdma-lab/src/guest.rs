//! What `p2pdma lab guest ...` does inside the lab guest: find an NVMe controller by the
//! serial its topology gave it, unbind and bind PCI functions, signal the host, and the
//! two load generators of the teardown tests (`read-loop`: O_DIRECT reads into p2pmem
//! racing unbinds, each checked; `hold`: buffers held with a pattern while something
//! happens). The CLI parses and prints; everything else is here.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use p2pdma::display::error_chain;
use p2pdma::p2pmem::{P2pmemError, Provider};
use p2pdma::resolve;
use p2pdma::sysfs::SysfsRoot;
use p2pdma::Bdf;
use serde::Serialize;

/// The guest end of the lab's control channel (a serial port the host reads).
pub const CONTROL_TTY: &str = "/dev/ttyS3";

/// Errors of the guest helpers; each names the file or device.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// `/sys/class/nvme` could not be listed.
    #[error("cannot list {}: is the nvme driver loaded?", path.display())]
    NoNvmeClass {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No controller has the serial.
    #[error("no NVMe controller has serial '{serial}' (serials present: {present})")]
    NoSuchSerial {
        /// The serial asked for.
        serial: String,
        /// The serials seen.
        present: String,
    },
    /// A sysfs file could not be read or written.
    #[error("{what} {}", path.display())]
    Sysfs {
        /// What was being done ("cannot unbind 0000:03:00.0 via").
        what: String,
        /// On which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Arguments that cannot work together.
    #[error("{0}")]
    Invalid(String),
    /// The file to read could not be read or opened.
    #[error("cannot {what} {}", path.display())]
    File {
        /// What was being done.
        what: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The p2pmem library's error.
    #[error(transparent)]
    P2pmem(#[from] P2pmemError),
    /// Dropping to another user failed (`setgroups([])`, `setresgid`, `setresuid`).
    #[error("{call}")]
    Credentials {
        /// The call that failed.
        call: &'static str,
        /// Why.
        #[source]
        source: rustix::io::Errno,
    },
    /// The program could not be run.
    #[error("cannot run {program}")]
    Exec {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// An NVMe controller found by serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvmeController {
    /// Its PCI function.
    pub bdf: Bdf,
    /// The controller (`nvme0`).
    pub controller: String,
    /// Its namespaces' disks (`nvme0n1`; under native multipath, the head disks of its
    /// paths), sorted.
    pub namespaces: Vec<String>,
}

/// Finds the NVMe controller whose serial is `serial` (`<sysfs>/class/nvme/*/serial`).
pub fn nvme_by_serial(sysfs: &SysfsRoot, serial: &str) -> Result<NvmeController, GuestError> {
    let class = sysfs.class_nvme("");
    let entries = std::fs::read_dir(&class).map_err(|source| GuestError::NoNvmeClass {
        path: class.clone(),
        source,
    })?;
    let mut seen = Vec::new();
    for entry in entries.flatten() {
        let ctrl = entry.file_name().to_string_lossy().into_owned();
        let s = std::fs::read_to_string(entry.path().join("serial")).unwrap_or_default();
        let s = s.trim().to_owned();
        if s == serial {
            let link = entry.path().join("device");
            let device = std::fs::canonicalize(&link).map_err(|source| GuestError::Sysfs {
                what: format!("{ctrl} has no PCI device link"),
                path: link,
                source,
            })?;
            let name = device
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let bdf = name.parse::<Bdf>().map_err(|_| {
                GuestError::Invalid(format!(
                    "{ctrl}'s device link leads to {}, not a PCI function",
                    device.display()
                ))
            })?;
            let mut namespaces: Vec<String> = std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| is_namespace_name(n))
                .map(|n| openable_disk(&n))
                .collect();
            namespaces.sort();
            namespaces.dedup();
            return Ok(NvmeController {
                bdf,
                controller: ctrl,
                namespaces,
            });
        }
        seen.push(s);
    }
    Err(GuestError::NoSuchSerial {
        serial: serial.to_owned(),
        present: if seen.is_empty() {
            "none".to_owned()
        } else {
            seen.join(", ")
        },
    })
}

/// Whether `name`, an entry of a controller's sysfs directory, is one of its namespaces:
/// `nvme0n1` without native multipath; with it, the controller lists its path disks
/// (`nvme0c0n1`, hidden, no /dev node) or, for a namespace no other controller shares, a
/// disk named after its subsystem's instance (`nvme1n1` under `nvme2`).
fn is_namespace_name(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let plain = name
        .strip_prefix("nvme")
        .and_then(|rest| rest.split_once('n'))
        .is_some_and(|(instance, nsid)| digits(instance) && digits(nsid));
    plain || resolve::is_multipath_path_device(name)
}

/// The disk with a /dev node for namespace disk `name`: a multipath path disk
/// `nvme<X>c<Y>n<Z>` is hidden, and its head `nvme<X>n<Z>` is what opens.
fn openable_disk(name: &str) -> String {
    if resolve::is_multipath_path_device(name) {
        resolve::multipath_head_of(name)
    } else {
        name.to_owned()
    }
}

/// A PCI function given as a BDF or as an NVMe serial.
pub fn resolve_function(sysfs: &SysfsRoot, device: &str) -> Result<Bdf, GuestError> {
    match device.parse::<Bdf>() {
        Ok(bdf) => Ok(bdf),
        Err(_) => Ok(nvme_by_serial(sysfs, device)?.bdf),
    }
}

/// Unbinds a function (BDF or NVMe serial) from its driver; returns the BDF and the
/// driver's name.
pub fn unbind(sysfs: &SysfsRoot, device: &str) -> Result<(Bdf, String), GuestError> {
    let bdf = resolve_function(sysfs, device)?;
    let link = sysfs.pci_driver_link(bdf);
    let driver = std::fs::canonicalize(&link).map_err(|source| GuestError::Sysfs {
        what: format!("{bdf} is not bound to a driver:"),
        path: link,
        source,
    })?;
    let unbind = driver.join("unbind");
    std::fs::write(&unbind, bdf.to_string()).map_err(|source| GuestError::Sysfs {
        what: format!("cannot unbind {bdf} via"),
        path: unbind.clone(),
        source,
    })?;
    let name = driver
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    Ok((bdf, name))
}

/// Binds a function (BDF or NVMe serial) to the nvme driver; returns the BDF.
pub fn bind_nvme(sysfs: &SysfsRoot, device: &str) -> Result<Bdf, GuestError> {
    let bdf = resolve_function(sysfs, device)?;
    let bind = sysfs.pci_driver_dir("nvme").join("bind");
    std::fs::write(&bind, bdf.to_string()).map_err(|source| GuestError::Sysfs {
        what: format!("cannot bind {bdf} to nvme via"),
        path: bind.clone(),
        source,
    })?;
    Ok(bdf)
}

/// Tells the host `name` happened (fires its `--fault ...@signal:NAME`).
pub fn signal(name: &str) -> Result<(), GuestError> {
    let tty = Path::new(CONTROL_TTY);
    let fail = |what: &str, source| GuestError::Sysfs {
        what: what.to_owned(),
        path: tty.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(tty)
        .map_err(|e| {
            fail(
                "cannot open the lab's control channel (`lab guest signal` works only inside a lab guest):",
                e,
            )
        })?;
    writeln!(f, "@@signal {name}").map_err(|e| fail("cannot write to", e))
}

/// Replaces this process with `command` (program and arguments) run as user `uid` and
/// group `gid` with no supplementary groups (`p2pdma lab guest as-user`: busybox's su
/// needs a passwd database the guest lacks). Returns only when that failed.
pub fn exec_as_user(uid: u32, gid: u32, command: &[String]) -> GuestError {
    use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
    use std::os::unix::process::CommandExt;
    let Some((program, args)) = command.split_first() else {
        return GuestError::Invalid("as-user: no program to run".to_owned());
    };
    let failed = |call| move |source| GuestError::Credentials { call, source };
    // This process has one thread, so the thread-level raw syscalls drop the whole
    // process's rights (glibc's setuid(), which std's Command::uid uses, failed with
    // ENOSYS in the static guest binary). Groups first, then the group, then the user,
    // who can change neither afterwards.
    let gid = rustix::process::Gid::from_raw(gid);
    let uid = rustix::process::Uid::from_raw(uid);
    let dropped = set_thread_groups(&[])
        .map_err(failed("setgroups([])"))
        .and_then(|()| set_thread_res_gid(gid, gid, gid).map_err(failed("setresgid")))
        .and_then(|()| set_thread_res_uid(uid, uid, uid).map_err(failed("setresuid")));
    if let Err(e) = dropped {
        return e;
    }
    GuestError::Exec {
        program: program.clone(),
        source: std::process::Command::new(program).args(args).exec(),
    }
}

/// What `read-loop` does.
#[derive(Debug, Clone)]
pub struct ReadLoop {
    /// The p2pmem provider.
    pub provider: Bdf,
    /// The file or block device read with O_DIRECT.
    pub file: PathBuf,
    /// Reading threads.
    pub threads: usize,
    /// Bytes per read.
    pub size: usize,
    /// Reads land at random multiples of `size` in the first `span` bytes.
    pub span: usize,
    /// Stop once this file exists.
    pub stop_file: PathBuf,
    /// Write "ready" here once every thread has done its first verified read.
    pub ready_file: Option<PathBuf>,
}

/// What `read-loop` counted.
#[derive(Debug, Default, Serialize)]
pub struct ReadLoopReport {
    /// The provider.
    pub provider: String,
    /// The file read.
    pub file: PathBuf,
    /// Reading threads.
    pub threads: usize,
    /// Bytes per read.
    pub read_size: usize,
    /// Seconds the loop ran.
    pub seconds: f64,
    /// O_DIRECT reads issued into p2pmem.
    pub reads_started: u64,
    /// Reads that completed and held FILE's bytes.
    pub reads_verified: u64,
    /// Reads that completed with other bytes than FILE's (must be 0).
    pub reads_mismatched: u64,
    /// Reads that completed short (must be 0: the span lies inside FILE).
    pub reads_short: u64,
    /// Reads refused because the buffer was revoked (the provider went away): the
    /// library noticed first, or the kernel could not pin the zapped pages (EFAULT).
    pub reads_revoked: u64,
    /// Reads that completed, but the buffer was revoked before its bytes were checked.
    pub checks_revoked: u64,
    /// Successful p2pmem allocations (one per thread at start, one after each loss).
    pub allocations: u64,
    /// Allocations refused because the provider was unbound or being torn down.
    pub allocations_provider_gone: u64,
    /// Allocations refused by an empty pool (a rebind creates the pool before filling it).
    pub allocations_pool_empty: u64,
    /// Errors that are none of the above (must be none), the first few of them.
    pub unexpected: Vec<String>,
    /// How many unexpected errors there were.
    pub unexpected_count: u64,
    /// The first mismatch: "offset N: byte M differs".
    pub first_mismatch: Option<String>,
}

impl ReadLoopReport {
    /// Whether every completed read held the right bytes and nothing unexpected happened.
    pub fn clean(&self) -> bool {
        self.reads_mismatched == 0 && self.reads_short == 0 && self.unexpected_count == 0
    }
}

/// Counters shared by the read-loop threads.
#[derive(Default)]
struct Counters {
    started: AtomicU64,
    verified: AtomicU64,
    mismatched: AtomicU64,
    short: AtomicU64,
    revoked: AtomicU64,
    checks_revoked: AtomicU64,
    allocations: AtomicU64,
    gone: AtomicU64,
    pool_empty: AtomicU64,
    ready: AtomicUsize,
    unexpected: Mutex<(u64, Vec<String>)>,
    first_mismatch: Mutex<Option<String>>,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn unexpected(&self, what: String) {
        let mut u = self.unexpected.lock().unwrap_or_else(|e| e.into_inner());
        u.0 += 1;
        if u.1.len() < 10 {
            u.1.push(what);
        }
    }
}

/// The offset of a read of `size` bytes at a random one of `slots` slots: the read
/// offsets need to be spread, not unpredictable.
pub fn read_offset(rng: &mut fastrand::Rng, slots: u64, size: usize) -> u64 {
    rng.u64(..slots) * size as u64
}

/// Small O_DIRECT reads from `file` into the provider's p2pmem from several threads, each
/// checked against the file's bytes read through the page cache at the start, until the
/// stop file exists. A provider that goes away is an expected outcome: the thread counts
/// it, waits for the provider to come back and allocates again.
pub fn read_loop(sysfs: &SysfsRoot, args: &ReadLoop) -> Result<ReadLoopReport, GuestError> {
    use std::os::unix::fs::OpenOptionsExt;

    if !(args.threads > 0 && args.size > 0 && args.span >= args.size) {
        return Err(GuestError::Invalid(
            "read-loop needs --threads >= 1, --size >= 1 and --span >= --size".into(),
        ));
    }
    let mut expected = vec![0u8; args.span];
    std::fs::File::open(&args.file)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut expected))
        .map_err(|source| GuestError::File {
            what: format!("read the first {} bytes of", args.span),
            path: args.file.clone(),
            source,
        })?;
    if expected.iter().all(|&b| b == 0) {
        return Err(GuestError::Invalid(format!(
            "the first {} bytes of {} are all zero: fill them with random data first, or a \
             dropped DMA would pass the check",
            args.span,
            args.file.display()
        )));
    }
    let counters = Counters::default();
    let slots = (args.span / args.size) as u64;
    let started = Instant::now();
    let stop = || args.stop_file.exists();

    std::thread::scope(|scope| -> Result<(), GuestError> {
        let mut handles = Vec::new();
        for thread in 0..args.threads {
            let (counters, expected, stop) = (&counters, &expected, &stop);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(&args.file)
                .map_err(|source| GuestError::File {
                    what: "open with O_DIRECT".into(),
                    path: args.file.clone(),
                    source,
                })?;
            handles.push(scope.spawn(move || {
                let seed = started.elapsed().as_nanos() as u64;
                let mut rng = fastrand::Rng::with_seed(seed ^ thread as u64);
                let mut check = vec![0u8; args.size];
                let mut was_ready = false;
                while !stop() {
                    let allocated =
                        Provider::open(sysfs, args.provider).and_then(|p| p.allocate(args.size));
                    let mut buffer = match allocated {
                        Ok(b) => {
                            bump(&counters.allocations);
                            b
                        }
                        Err(e) => {
                            match e {
                                P2pmemError::NoP2pmem { .. } | P2pmemError::ProviderGone { .. } => {
                                    bump(&counters.gone)
                                }
                                // The pool or its attributes vanish mid-way through the
                                // allocation when the unbind wins the race.
                                P2pmemError::Io { ref source, .. }
                                    if matches!(
                                        source.raw_os_error(),
                                        Some(libc::ENODEV | libc::ENOENT | libc::ENXIO)
                                    ) =>
                                {
                                    bump(&counters.gone)
                                }
                                P2pmemError::PoolExhausted { .. } => bump(&counters.pool_empty),
                                other => counters.unexpected(format!("allocate: {}", error_chain(&other))),
                            }
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    };
                    // Read until the buffer is lost.
                    while !stop() {
                        let offset = read_offset(&mut rng, slots, args.size);
                        bump(&counters.started);
                        match buffer.pread(&file, offset, 0, args.size) {
                            Ok(n) if n == args.size => {}
                            Ok(n) => {
                                bump(&counters.short);
                                counters.unexpected(format!(
                                    "read at {offset}: {n} of {} bytes",
                                    args.size
                                ));
                                continue;
                            }
                            Err(P2pmemError::Revoked { .. }) => {
                                bump(&counters.revoked);
                                break;
                            }
                            Err(e) => {
                                counters.unexpected(format!("read at {offset}: {}", error_chain(&e)));
                                break;
                            }
                        }
                        match buffer.read_into(0, &mut check) {
                            Ok(()) => {}
                            Err(P2pmemError::Revoked { .. }) => {
                                bump(&counters.checks_revoked);
                                break;
                            }
                            Err(e) => {
                                counters.unexpected(format!(
                                    "checking the read at {offset}: {}",
                                    error_chain(&e)
                                ));
                                break;
                            }
                        }
                        let want = &expected[offset as usize..offset as usize + args.size];
                        if let Some(i) = (0..args.size).find(|&i| check[i] != want[i]) {
                            bump(&counters.mismatched);
                            let mut first = counters
                                .first_mismatch
                                .lock()
                                .unwrap_or_else(|e| e.into_inner());
                            first.get_or_insert_with(|| {
                                format!(
                                    "read at offset {offset}: byte {i} is {:#04x}, {} holds {:#04x}",
                                    check[i],
                                    args.file.display(),
                                    want[i]
                                )
                            });
                        } else {
                            bump(&counters.verified);
                            if !was_ready {
                                was_ready = true;
                                counters.ready.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }));
        }
        // Say when every thread has done a verified read, so the disruption starts
        // while the loop runs.
        if let Some(ready) = &args.ready_file {
            while counters.ready.load(Ordering::Relaxed) < args.threads && !stop() {
                std::thread::sleep(Duration::from_millis(10));
            }
            std::fs::write(ready, "ready\n").map_err(|source| GuestError::File {
                what: "write".into(),
                path: ready.clone(),
                source,
            })?;
        }
        for handle in handles {
            if handle.join().is_err() {
                counters.unexpected("a reading thread panicked".into());
            }
        }
        Ok(())
    })?;

    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let (unexpected_count, unexpected) = std::mem::take(
        &mut *counters
            .unexpected
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    let first_mismatch = counters
        .first_mismatch
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(ReadLoopReport {
        provider: args.provider.to_string(),
        file: args.file.clone(),
        threads: args.threads,
        read_size: args.size,
        seconds: started.elapsed().as_secs_f64(),
        reads_started: load(&counters.started),
        reads_verified: load(&counters.verified),
        reads_mismatched: load(&counters.mismatched),
        reads_short: load(&counters.short),
        reads_revoked: load(&counters.revoked),
        checks_revoked: load(&counters.checks_revoked),
        allocations: load(&counters.allocations),
        allocations_provider_gone: load(&counters.gone),
        allocations_pool_empty: load(&counters.pool_empty),
        unexpected,
        unexpected_count,
        first_mismatch,
    })
}

/// The byte a held buffer holds at `offset`: not zero, and different per buffer.
pub fn hold_pattern(buffer: usize, offset: usize) -> u8 {
    ((offset.wrapping_mul(31) ^ buffer.wrapping_mul(97)) % 251 + 1) as u8
}

/// What `hold` does.
#[derive(Debug, Clone)]
pub struct Hold {
    /// The p2pmem provider.
    pub provider: Bdf,
    /// Bytes per buffer.
    pub size: usize,
    /// Buffers to hold at once.
    pub buffers: usize,
    /// Created once every buffer is allocated and filled.
    pub ready_file: PathBuf,
    /// Release the buffers once this file exists (60 s at most).
    pub release_file: PathBuf,
}

/// What `hold` found when it let go.
#[derive(Debug, Clone, Serialize)]
pub struct HoldReport {
    /// The provider.
    pub provider: String,
    /// Buffers held.
    pub buffers: usize,
    /// Bytes held.
    pub bytes: usize,
    /// Per buffer, whether its pattern was intact at the end.
    pub intact: Vec<bool>,
}

impl HoldReport {
    /// Whether every buffer's pattern was intact at the end.
    pub fn all_intact(&self) -> bool {
        self.intact.iter().all(|&i| i)
    }
}

/// Allocates the buffers, fills them with [`hold_pattern`], says so in the ready file,
/// holds them until the release file exists (60 s at most), then checks the patterns.
pub fn hold(sysfs: &SysfsRoot, args: &Hold) -> Result<HoldReport, GuestError> {
    let provider = Provider::open(sysfs, args.provider)?;
    let mut held = Vec::new();
    for index in 0..args.buffers {
        let mut buffer = provider.allocate(args.size)?;
        let pattern: Vec<u8> = (0..buffer.len()).map(|o| hold_pattern(index, o)).collect();
        buffer.write_from(0, &pattern)?;
        held.push(buffer);
    }
    std::fs::write(&args.ready_file, "held\n").map_err(|source| GuestError::File {
        what: "write".into(),
        path: args.ready_file.clone(),
        source,
    })?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !args.release_file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut intact = Vec::new();
    for (index, buffer) in held.iter().enumerate() {
        let mut actual = vec![0u8; buffer.len()];
        buffer.read_into(0, &mut actual)?;
        intact.push(
            actual
                .iter()
                .enumerate()
                .all(|(o, &b)| b == hold_pattern(index, o)),
        );
    }
    Ok(HoldReport {
        provider: args.provider.to_string(),
        buffers: held.len(),
        bytes: held.iter().map(|b| b.len()).sum(),
        intact,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_patterns_are_never_zero_and_differ_between_buffers() {
        for offset in 0..4096 {
            assert_ne!(hold_pattern(0, offset), 0);
            assert_ne!(hold_pattern(3, offset), 0);
        }
        let a: Vec<u8> = (0..4096).map(|o| hold_pattern(0, o)).collect();
        let b: Vec<u8> = (0..4096).map(|o| hold_pattern(1, o)).collect();
        assert_ne!(a, b);
    }

    #[test]
    fn read_offsets_spread_over_the_span() {
        let mut rng = fastrand::Rng::with_seed(0x1234_5678_9abc_def1);
        let slots = 1024;
        let hit: std::collections::HashSet<u64> = (0..4096)
            .map(|_| {
                let offset = read_offset(&mut rng, slots, 4096);
                assert!(
                    offset < slots * 4096 && offset.is_multiple_of(4096),
                    "{offset}"
                );
                offset / 4096
            })
            .collect();
        assert!(hit.len() > 900, "only {} of {slots} slots hit", hit.len());
    }

    #[test]
    fn namespace_names_with_and_without_native_multipath() {
        for name in ["nvme0n1", "nvme1n10", "nvme0c1n1", "nvme12c3n2"] {
            assert!(is_namespace_name(name), "{name}");
        }
        for name in [
            "power",
            "nvme0",
            "nvme0n",
            "nvme0c1",
            "nvmec1n1",
            "nvme0n1p1",
            "ng0n1",
            "nvme0cn1",
        ] {
            assert!(!is_namespace_name(name), "{name}");
        }
        assert_eq!(openable_disk("nvme1c2n3"), "nvme1n3");
        assert_eq!(openable_disk("nvme4n1"), "nvme4n1");
    }

    #[test]
    fn controllers_are_found_by_serial_with_their_namespaces() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path();
        let dev = sys.join("devices/pci0000:00/0000:00:04.0");
        std::fs::create_dir_all(&dev).unwrap();
        for (ctrl, serial) in [("nvme0", "sw0"), ("nvme1", "sw1")] {
            let c = sys.join("class/nvme").join(ctrl);
            std::fs::create_dir_all(c.join(format!("{ctrl}n1"))).unwrap();
            std::fs::create_dir_all(c.join(format!("{ctrl}n10"))).unwrap();
            std::fs::create_dir_all(c.join("power")).unwrap();
            std::fs::write(c.join("serial"), format!("{serial}   \n")).unwrap();
            std::os::unix::fs::symlink(&dev, c.join("device")).unwrap();
        }
        let root = SysfsRoot::new(sys);
        let found = nvme_by_serial(&root, "sw1").unwrap();
        assert_eq!(
            found,
            NvmeController {
                bdf: "0000:00:04.0".parse().unwrap(),
                controller: "nvme1".into(),
                namespaces: vec!["nvme1n1".into(), "nvme1n10".into()],
            }
        );
        let err = nvme_by_serial(&root, "nope").unwrap_err().to_string();
        assert!(
            err.starts_with("no NVMe controller has serial 'nope' (serials present: "),
            "{err}"
        );
        let bdf = |s: &str| s.parse::<Bdf>().unwrap();
        assert_eq!(
            resolve_function(&root, "0000:00:05.0").unwrap(),
            bdf("0000:00:05.0")
        );
        assert_eq!(resolve_function(&root, "sw0").unwrap(), bdf("0000:00:04.0"));
    }
}
