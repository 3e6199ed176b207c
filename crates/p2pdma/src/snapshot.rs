//! Capturing the sysfs subset the model reads, for bug reports and test fixtures.
//!
//! A snapshot is a directory that works as a sysfs root (`p2pdma --sysfs DIR ...`):
//! - `bus/pci/devices/<bdf>` symlinks into `devices/pci*/...`, exactly as in /sys, so the
//!   directory nesting still spells out each function's upstream bridges;
//! - per function: `vendor device class config current_link_* max_link_* numa_node`,
//!   the `driver`, `physfn` and `iommu_group` links (kept as dangling links: only their
//!   names matter), `p2pmem/{size,available,published}` and `nvme/<ctrl>/{serial,...}`;
//! - `class/block`, `class/nvme`, `dev/block` and `dev/char` links and the `dev`,
//!   `partition` files they lead to, so names like `nvme0n1` resolve;
//! - `p2pdma-host.json` ([`HostFacts`]): what is not in sysfs (CPU vendor and family,
//!   kernel release, whether the kernel has `CONFIG_PCI_P2PDMA`, and how that was decided).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pci::PciFunction;
use crate::sysfs::{SysfsError, SysfsRoot};
use crate::Bdf;

/// Name of the host-facts file at the root of a snapshot.
pub const HOST_FACTS_FILE: &str = "p2pdma-host.json";

/// Facts the P2P rules need that do not live in sysfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    /// `vendor_id` from /proc/cpuinfo (`AuthenticAMD`, `GenuineIntel`), if known.
    pub cpu_vendor: Option<String>,
    /// `cpu family` from /proc/cpuinfo, if known.
    pub cpu_family: Option<u32>,
    /// Kernel release (`uname -r`), if known.
    pub kernel_release: Option<String>,
    /// Whether the kernel was built with `CONFIG_PCI_P2PDMA`.
    pub p2pdma_config: KernelP2pdma,
    /// How `p2pdma_config` was decided, or why it is unknown.
    pub p2pdma_config_source: String,
    /// Where these facts came from (`live /proc`, a snapshot file, or nowhere).
    pub origin: String,
}

/// Whether the kernel has PCI P2PDMA support compiled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelP2pdma {
    /// `CONFIG_PCI_P2PDMA=y`.
    Yes,
    /// Not set.
    No,
    /// Could not tell.
    Unknown,
}

impl HostFacts {
    /// Facts nobody knows (a fixture or snapshot without `p2pdma-host.json`).
    pub fn unknown(origin: impl Into<String>) -> Self {
        HostFacts {
            cpu_vendor: None,
            cpu_family: None,
            kernel_release: None,
            p2pdma_config: KernelP2pdma::Unknown,
            p2pdma_config_source: "no host facts".to_owned(),
            origin: origin.into(),
        }
    }

    /// Whether the kernel's `cpu_supports_p2pdma()` holds: an AMD CPU of family 0x17 (Zen)
    /// or newer routes P2P through its root complex. `None` when the CPU is unknown.
    pub fn cpu_supports_p2pdma(&self) -> Option<bool> {
        let vendor = self.cpu_vendor.as_deref()?;
        if vendor != "AuthenticAMD" {
            return Some(false);
        }
        Some(self.cpu_family? >= 0x17)
    }

    /// `<root>/p2pdma-host.json` if present; the running system's `/proc` when `root` is
    /// `/sys`; otherwise unknown.
    pub fn read(
        root: &SysfsRoot,
        functions: &BTreeMap<Bdf, PciFunction>,
    ) -> Result<HostFacts, SysfsError> {
        let file = root.host_facts_file();
        match std::fs::read(&file) {
            Ok(bytes) => {
                let mut facts: HostFacts = serde_json::from_slice(&bytes).map_err(|e| {
                    crate::sysfs::malformed(&file, &e.to_string(), "p2pdma host facts JSON")
                })?;
                facts.origin = file.display().to_string();
                return Ok(facts);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(SysfsError::Read { path: file, source }),
        }
        if root.is_live() {
            Ok(Self::live(Path::new("/"), functions))
        } else {
            Ok(Self::unknown(format!(
                "{} has no {HOST_FACTS_FILE}",
                root.path().display()
            )))
        }
    }

    /// Reads the facts of the running system under `fs_root` (`/` normally).
    pub fn live(fs_root: &Path, functions: &BTreeMap<Bdf, PciFunction>) -> HostFacts {
        let cpuinfo = std::fs::read_to_string(fs_root.join("proc/cpuinfo")).unwrap_or_default();
        let field = |name: &str| {
            cpuinfo.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_owned())
            })
        };
        let kernel_release = std::fs::read_to_string(fs_root.join("proc/sys/kernel/osrelease"))
            .ok()
            .map(|s| s.trim().to_owned());
        let (p2pdma_config, p2pdma_config_source) =
            detect_p2pdma(fs_root, kernel_release.as_deref(), functions);
        HostFacts {
            cpu_vendor: field("vendor_id"),
            cpu_family: field("cpu family").and_then(|f| f.parse().ok()),
            kernel_release,
            p2pdma_config,
            p2pdma_config_source,
            origin: "live /proc".to_owned(),
        }
    }
}

/// Decides whether the kernel has `CONFIG_PCI_P2PDMA`, most certain evidence first:
/// a `p2pmem` directory exists only if it does; `/proc/config.gz` and
/// `/boot/config-<release>` state it; `/proc/kallsyms` lists `pci_alloc_p2pmem` only if
/// it is built in (the option is a bool, never a module). Otherwise: unknown.
fn detect_p2pdma(
    fs_root: &Path,
    release: Option<&str>,
    functions: &BTreeMap<Bdf, PciFunction>,
) -> (KernelP2pdma, String) {
    if let Some(f) = functions.values().find(|f| f.p2pmem.is_some()) {
        return (
            KernelP2pdma::Yes,
            format!("{} has a p2pmem directory", f.bdf),
        );
    }
    let from_config = |text: &str| {
        text.lines().find_map(|line| {
            if line.trim() == "CONFIG_PCI_P2PDMA=y" {
                Some(KernelP2pdma::Yes)
            } else if line.trim() == "# CONFIG_PCI_P2PDMA is not set" {
                Some(KernelP2pdma::No)
            } else {
                None
            }
        })
    };
    let config_gz = fs_root.join("proc/config.gz");
    if let Ok(file) = std::fs::File::open(&config_gz) {
        let mut text = String::new();
        if flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .is_ok()
        {
            let verdict = from_config(&text).unwrap_or(KernelP2pdma::No);
            return (verdict, config_gz.display().to_string());
        }
    }
    if let Some(release) = release {
        let boot = fs_root.join(format!("boot/config-{release}"));
        if let Ok(text) = std::fs::read_to_string(&boot) {
            let verdict = from_config(&text).unwrap_or(KernelP2pdma::No);
            return (verdict, boot.display().to_string());
        }
    }
    let kallsyms = fs_root.join("proc/kallsyms");
    if let Ok(text) = std::fs::read_to_string(&kallsyms) {
        if !text.is_empty() {
            let has = text
                .lines()
                .any(|l| l.split_whitespace().nth(2) == Some("pci_alloc_p2pmem"));
            let verdict = if has {
                KernelP2pdma::Yes
            } else {
                KernelP2pdma::No
            };
            return (
                verdict,
                format!("{} (pci_alloc_p2pmem)", kallsyms.display()),
            );
        }
    }
    (
        KernelP2pdma::Unknown,
        "no p2pmem directory, no /proc/config.gz, no /boot/config-<release>, no /proc/kallsyms"
            .to_owned(),
    )
}

/// Why a snapshot could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading the source tree failed.
    #[error("cannot read the source tree")]
    Source(#[from] SysfsError),
    /// The output directory exists and is not empty.
    #[error("{path} exists and is not empty: choose a new directory")]
    OutputNotEmpty {
        /// The output directory.
        path: PathBuf,
    },
    /// Writing into the output failed.
    #[error("cannot write {path}")]
    Write {
        /// What was being written.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// Options for [`take`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SnapshotOptions {
    /// Leave NVMe serial numbers out.
    pub no_serials: bool,
}

/// What [`take`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotSummary {
    /// PCI functions captured.
    pub functions: usize,
    /// Files copied.
    pub files: usize,
    /// Symlinks recreated.
    pub links: usize,
}

/// Files copied from each PCI function directory.
const FUNCTION_FILES: &[&str] = &[
    "vendor",
    "device",
    "class",
    "subsystem_vendor",
    "subsystem_device",
    "revision",
    "config",
    "current_link_speed",
    "current_link_width",
    "max_link_speed",
    "max_link_width",
    "numa_node",
    "p2pmem/size",
    "p2pmem/available",
    "p2pmem/published",
];
/// Links recreated in each PCI function directory (only their target names are read).
const FUNCTION_LINKS: &[&str] = &["driver", "physfn", "iommu_group"];

struct Writer<'a> {
    src: &'a Path,
    canonical_src: PathBuf,
    out: &'a Path,
    files: usize,
    links: usize,
}

impl Writer<'_> {
    fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
        move |source| SnapshotError::Write {
            path: path.to_owned(),
            source,
        }
    }

    fn mkdirs(&self, rel: &Path) -> Result<(), SnapshotError> {
        let dir = self.out.join(rel);
        std::fs::create_dir_all(&dir).map_err(Self::write_err(&dir))
    }

    /// Copies `<src>/<rel>` to `<out>/<rel>` if it exists and is readable.
    fn copy_file(&mut self, rel: &Path) -> Result<(), SnapshotError> {
        let Ok(bytes) = std::fs::read(self.src.join(rel)) else {
            return Ok(());
        };
        if let Some(parent) = rel.parent() {
            self.mkdirs(parent)?;
        }
        let dst = self.out.join(rel);
        std::fs::write(&dst, bytes).map_err(Self::write_err(&dst))?;
        self.files += 1;
        Ok(())
    }

    /// Recreates the symlink `<src>/<rel>` at `<out>/<rel>` with the same target text.
    fn copy_link(&mut self, rel: &Path) -> Result<Option<PathBuf>, SnapshotError> {
        let Ok(target) = std::fs::read_link(self.src.join(rel)) else {
            return Ok(None);
        };
        if let Some(parent) = rel.parent() {
            self.mkdirs(parent)?;
        }
        let dst = self.out.join(rel);
        if std::fs::symlink_metadata(&dst).is_err() {
            std::os::unix::fs::symlink(&target, &dst).map_err(Self::write_err(&dst))?;
            self.links += 1;
        }
        Ok(Some(target))
    }

    /// `<src>/<rel>` resolved, relative to the source root (where a link really points).
    fn resolve(&self, rel: &Path) -> Option<PathBuf> {
        let canonical = std::fs::canonicalize(self.src.join(rel)).ok()?;
        canonical
            .strip_prefix(&self.canonical_src)
            .ok()
            .map(Path::to_owned)
    }

    fn list(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.src.join(rel))
            .map(|it| {
                it.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// Copies what [`crate::pci::PciTree::read`] and [`crate::resolve`] read from `root`
/// into the new directory `out`, plus `p2pdma-host.json`.
pub fn take(
    root: &SysfsRoot,
    out: &Path,
    options: SnapshotOptions,
) -> Result<SnapshotSummary, SnapshotError> {
    // Read the model first: a tree we cannot read is not worth a snapshot.
    let tree = crate::pci::PciTree::read(root)?;
    if let Ok(mut entries) = std::fs::read_dir(out) {
        if entries.next().is_some() {
            return Err(SnapshotError::OutputNotEmpty {
                path: out.to_owned(),
            });
        }
    }
    let canonical_src = std::fs::canonicalize(root.path()).map_err(|source| {
        SnapshotError::Source(SysfsError::Read {
            path: root.path().to_owned(),
            source,
        })
    })?;
    let mut w = Writer {
        src: root.path(),
        canonical_src,
        out,
        files: 0,
        links: 0,
    };
    w.mkdirs(Path::new("bus/pci/devices"))?;

    for name in w.list("bus/pci/devices") {
        let link_rel = PathBuf::from("bus/pci/devices").join(&name);
        w.copy_link(&link_rel)?;
        let Some(dir) = w.resolve(&link_rel) else {
            continue;
        };
        w.mkdirs(&dir)?;
        for file in FUNCTION_FILES {
            w.copy_file(&dir.join(file))?;
        }
        for link in FUNCTION_LINKS {
            w.copy_link(&dir.join(link))?;
        }
        for ctrl in w.list(&dir.join("nvme").to_string_lossy()) {
            let ctrl_dir = dir.join("nvme").join(&ctrl);
            for file in ["dev", "model", "transport", "subsysnqn"] {
                w.copy_file(&ctrl_dir.join(file))?;
            }
            if !options.no_serials {
                w.copy_file(&ctrl_dir.join("serial"))?;
            }
            for ns in w.list(&ctrl_dir.to_string_lossy()) {
                if ns.starts_with(&ctrl) && ns.len() > ctrl.len() {
                    copy_block_dir(&mut w, &ctrl_dir.join(&ns))?;
                }
            }
        }
    }

    for class in ["class/block", "class/nvme", "dev/block", "dev/char"] {
        for name in w.list(class) {
            let rel = PathBuf::from(class).join(&name);
            // dev/char holds every character device; only NVMe controllers matter here.
            if class == "dev/char" {
                let is_nvme = w
                    .resolve(&rel)
                    .is_some_and(|p| p.components().any(|c| c.as_os_str() == "nvme"));
                if !is_nvme {
                    continue;
                }
            }
            if w.copy_link(&rel)?.is_none() {
                continue;
            }
            if let Some(dir) = w.resolve(&rel) {
                copy_block_dir(&mut w, &dir)?;
                w.copy_link(&dir.join("device"))?;
            }
        }
    }

    let facts = tree.host.clone();
    let facts_path = out.join(HOST_FACTS_FILE);
    let json = serde_json::to_vec_pretty(&facts).expect("host facts serialize");
    std::fs::write(&facts_path, json).map_err(Writer::write_err(&facts_path))?;
    Ok(SnapshotSummary {
        functions: tree.functions.len(),
        files: w.files + 1,
        links: w.links,
    })
}

/// A block device or NVMe controller directory: `dev`, `partition`, `size`, its
/// partitions, and (for an NVMe namespace) nothing else we read.
fn copy_block_dir(w: &mut Writer<'_>, dir: &Path) -> Result<(), SnapshotError> {
    w.mkdirs(dir)?;
    for file in ["dev", "partition", "size", "ro", "transport"] {
        w.copy_file(&dir.join(file))?;
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for child in w.list(&dir.to_string_lossy()) {
        if child.starts_with(&name) && child.len() > name.len() {
            let child_dir = dir.join(&child);
            for file in ["dev", "partition", "size"] {
                w.copy_file(&child_dir.join(file))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amd_zen_and_later_supports_p2p_through_the_host_bridge() {
        let mut f = HostFacts::unknown("test");
        assert_eq!(f.cpu_supports_p2pdma(), None);
        f.cpu_vendor = Some("AuthenticAMD".into());
        f.cpu_family = Some(0x17);
        assert_eq!(f.cpu_supports_p2pdma(), Some(true));
        f.cpu_family = Some(0x16);
        assert_eq!(f.cpu_supports_p2pdma(), Some(false));
        f.cpu_vendor = Some("GenuineIntel".into());
        f.cpu_family = Some(6);
        assert_eq!(f.cpu_supports_p2pdma(), Some(false));
    }

    #[test]
    fn kernel_config_is_read_from_boot_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("boot")).unwrap();
        std::fs::write(
            dir.path().join("boot/config-6.1.0"),
            "# CONFIG_PCI_P2PDMA is not set\n",
        )
        .unwrap();
        let (v, src) = detect_p2pdma(dir.path(), Some("6.1.0"), &BTreeMap::new());
        assert_eq!(v, KernelP2pdma::No);
        assert!(src.contains("config-6.1.0"));
        let (v, _) = detect_p2pdma(dir.path(), Some("6.2.0"), &BTreeMap::new());
        assert_eq!(v, KernelP2pdma::Unknown);
    }

    #[test]
    fn a_snapshot_reads_back_as_the_same_tree_and_can_drop_serials() {
        use crate::sysfs::builder::{FunctionSpec as F, SysfsBuilder};
        let src = tempfile::tempdir().unwrap();
        let mut b = SysfsBuilder::new(src.path()).unwrap();
        b.add(None, "0000:00:00.0", F::host_bridge(0x8086, 0x29c0))
            .unwrap();
        let rp = b
            .add(None, "0000:00:01.0", F::root_port().acs(0x1d))
            .unwrap();
        let up = b
            .add(Some(rp), "0000:01:00.0", F::switch_upstream())
            .unwrap();
        let dn = b
            .add(Some(up), "0000:02:00.0", F::switch_downstream())
            .unwrap();
        b.add(
            Some(dn),
            "0000:03:00.0",
            F::nvme()
                .p2pmem(16 << 20)
                .link(8.0, 4)
                .nvme_controller("nvme0", "SER0", &["nvme0n1"]),
        )
        .unwrap();
        let mut facts = HostFacts::unknown("x");
        facts.cpu_vendor = Some("GenuineIntel".into());
        b.host_facts(&facts).unwrap();
        let before = crate::pci::PciTree::read(&SysfsRoot::new(src.path())).unwrap();

        let out = tempfile::tempdir().unwrap();
        let snap = out.path().join("snap");
        let summary = take(
            &SysfsRoot::new(src.path()),
            &snap,
            SnapshotOptions::default(),
        )
        .unwrap();
        assert_eq!(summary.functions, 5);
        let after = crate::pci::PciTree::read(&SysfsRoot::new(&snap)).unwrap();
        assert_eq!(
            serde_json::to_value(&before.functions).unwrap(),
            serde_json::to_value(&after.functions).unwrap()
        );
        assert_eq!(after.host.cpu_vendor.as_deref(), Some("GenuineIntel"));
        let t = crate::resolve::resolve(&SysfsRoot::new(&snap), "/dev/nvme0n1").unwrap();
        assert!(t.p2p_queue);

        let e = take(
            &SysfsRoot::new(src.path()),
            &snap,
            SnapshotOptions::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not empty"), "{e}");

        let anon = out.path().join("anon");
        take(
            &SysfsRoot::new(src.path()),
            &anon,
            SnapshotOptions { no_serials: true },
        )
        .unwrap();
        let tree = crate::pci::PciTree::read(&SysfsRoot::new(&anon)).unwrap();
        let nvme = &tree.function("03:00.0".parse().unwrap()).unwrap().nvme[0];
        assert_eq!((nvme.name.as_str(), nvme.serial.as_ref()), ("nvme0", None));
    }
}
