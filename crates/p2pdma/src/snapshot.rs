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
//! - `p2pdma-host.json` ([`HostFacts`], see [`crate::host`]): what is not in sysfs (CPU vendor and family,
//!   kernel release, whether the kernel has `CONFIG_PCI_P2PDMA`, and how that was decided).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::sysfs::{SysfsError, SysfsRoot};

pub use crate::host::{HostFacts, KernelP2pdma, HOST_FACTS_FILE};

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

/// The warning for a tree (a snapshot read back) some of whose functions' ACS state could
/// not be read (config space beyond 64 bytes needs root), naming up to three of them;
/// `None` when every function's was read.
pub fn acs_unknown_warning(tree: &crate::pci::PciTree) -> Option<String> {
    let unknown: Vec<String> = tree
        .iter()
        .filter(|f| f.acs.redirects().is_none())
        .map(|f| f.bdf.to_string())
        .collect();
    (!unknown.is_empty()).then(|| {
        format!(
            "the ACS state of {} function(s) ({}{}) could not be read (config space beyond 64 bytes needs root): take the snapshot as root for certain verdicts",
            unknown.len(),
            unknown.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
            if unknown.len() > 3 { ", ..." } else { "" }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn functions_whose_acs_could_not_be_read_are_named_up_to_three() {
        use crate::sysfs::builder::{FunctionSpec as F, SysfsBuilder};
        let dir = tempfile::tempdir().unwrap();
        let mut b = SysfsBuilder::new(dir.path()).unwrap();
        let rp = b.add(None, "0000:00:1c.0", F::root_port()).unwrap();
        b.add(Some(rp), "0000:01:00.0", F::nvme()).unwrap();
        let read = |b: &SysfsBuilder| crate::pci::PciTree::read(&SysfsRoot::new(b.root())).unwrap();
        assert_eq!(acs_unknown_warning(&read(&b)), None);

        b.add(None, "0000:00:1d.0", F::root_port().config_len(64))
            .unwrap();
        assert_eq!(
            acs_unknown_warning(&read(&b)).unwrap(),
            "the ACS state of 1 function(s) (0000:00:1d.0) could not be read (config space beyond 64 bytes needs root): take the snapshot as root for certain verdicts"
        );
        for at in ["0000:00:1e.0", "0000:00:1f.0", "0000:00:1f.1"] {
            b.add(None, at, F::root_port().config_len(64)).unwrap();
        }
        let warning = acs_unknown_warning(&read(&b)).unwrap();
        assert!(
            warning.starts_with("the ACS state of 4 function(s) (0000:00:1d.0, 0000:00:1e.0, 0000:00:1f.0, ...) could not"),
            "{warning}"
        );
    }
}
