//! Resolving what users name (BDF, /dev/nvme*, files) into PCI functions and block devices.
//!
//! Accepted names: a PCI address (`0000:01:00.0`), an NVMe controller (`/dev/nvme0` or
//! `nvme0`), a block device or partition (`/dev/nvme0n1`, `nvme0n1p2`, `sda`), or a regular
//! file (through the block device holding it: `st_dev` -> `<root>/dev/block/MAJ:MIN`).
//! Paths under `/dev` that do not exist on this machine (reading a snapshot) are looked
//! up by their kernel name in `<root>/class/{block,nvme}`.
//!
//! Only nvme-pci namespace queues advertise P2PDMA (`BLK_FEAT_PCI_P2PDMA`); dm, md, loop
//! and non-NVMe disks do not, and [`Target::p2p_queue`] says so. The NVMe multipath head
//! disk depends on the release ([`crate::kernel_rules::KernelRules::multipath_head_p2pdma`]: not in 6.12, in 7.2
//! when every path is nvme-pci), so [`resolve_with`] takes the rule set to judge by and
//! every explanation names it.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::host::HostFacts;
use crate::kernel_rules::RuleChoice;
use crate::pci::PciTree;
use crate::sysfs::{SysfsError, SysfsRoot};
use crate::Bdf;

/// What a name turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// A PCI address.
    PciFunction,
    /// An NVMe controller character device (`/dev/nvme0`).
    NvmeController,
    /// A whole disk (`nvme0n1`, `sda`, `dm-0`).
    Disk,
    /// A partition (`nvme0n1p1`).
    Partition,
    /// A regular file or directory, through the block device its filesystem is on.
    File,
}

/// A resolved name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// The name as given.
    pub name: String,
    /// What it is.
    pub kind: TargetKind,
    /// The PCI function doing the DMA, if any.
    pub bdf: Option<Bdf>,
    /// Kernel name of the block device (`nvme0n1p1`), if any.
    pub block_device: Option<String>,
    /// Kernel name of the whole disk (`nvme0n1`), if any.
    pub disk: Option<String>,
    /// NVMe controller (`nvme0`), if any.
    pub controller: Option<String>,
    /// Whether O_DIRECT I/O on it can target p2pmem (its queue supports P2PDMA).
    pub p2p_queue: bool,
    /// Why not, when `p2p_queue` is false.
    pub not_p2p_because: Option<String>,
}

/// Why a name could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Nothing by that name.
    #[error("'{name}' is not a PCI address, an NVMe device, a block device or an existing file: name a BDF (0000:01:00.0), /dev/nvme0n1, or a file on an NVMe filesystem")]
    NotFound {
        /// The name.
        name: String,
    },
    /// A PCI address with no function there.
    #[error("no PCI function {bdf} in {}: list them with `p2pdma topo`", path.display())]
    NoSuchFunction {
        /// The address.
        bdf: Bdf,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// `stat` failed.
    #[error("cannot stat '{}'", path.display())]
    Stat {
        /// The path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A file whose `st_dev` is no block device (tmpfs, overlayfs, btrfs subvolume, NFS).
    #[error("'{}' is on a filesystem with no block device of its own (st_dev {major}:{minor}, no {}): P2P needs a file on an NVMe filesystem", name.display(), sysfs_path.display())]
    NoBlockDevice {
        /// The file.
        name: PathBuf,
        /// Device major.
        major: u32,
        /// Device minor.
        minor: u32,
        /// The sysfs entry that is missing.
        sysfs_path: PathBuf,
    },
    /// A device file that is neither a block device nor an NVMe controller.
    #[error("'{}' is a device file but neither a block device nor an NVMe controller ({what})", path.display())]
    UnsupportedDevice {
        /// The path.
        path: PathBuf,
        /// What it is.
        what: String,
    },
    /// Reading sysfs failed.
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
}

/// Resolves `name` (see the module docs) against the sysfs `root`, judging its queue by
/// the rules of the root's own kernel release (its host facts; the newest rules when the
/// release is unknown). Callers that hold a tree or a `--kernel-release` use
/// [`resolve_with`].
pub fn resolve(root: &SysfsRoot, name: &str) -> Result<Target, ResolveError> {
    let release = HostFacts::read(root, None)
        .ok()
        .and_then(|h| h.kernel_release);
    resolve_with(root, name, &RuleChoice::for_release(release.as_deref()))
}

/// Resolves `name` (see the module docs) against the sysfs `root`, judging whether its
/// queue supports P2PDMA by `rules`.
pub fn resolve_with(
    root: &SysfsRoot,
    name: &str,
    rules: &RuleChoice,
) -> Result<Target, ResolveError> {
    if let Ok(bdf) = name.parse::<Bdf>() {
        let path = root.pci_device(bdf);
        if std::fs::symlink_metadata(&path).is_err() {
            return Err(ResolveError::NoSuchFunction { bdf, path });
        }
        return Ok(Target {
            name: name.to_owned(),
            kind: TargetKind::PciFunction,
            bdf: Some(bdf),
            block_device: None,
            disk: None,
            controller: None,
            p2p_queue: false,
            not_p2p_because: Some("a PCI function, not a block device".to_owned()),
        });
    }
    let path = Path::new(name);
    // A live path wins (files, and /dev nodes of this machine) when reading the live /sys.
    let on_this_machine = root.is_live() || !name.starts_with("/dev/");
    if on_this_machine {
        match std::fs::metadata(path) {
            Ok(meta) => return resolve_metadata(root, name, &meta, rules),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ResolveError::Stat {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
    let kernel_name = name.strip_prefix("/dev/").unwrap_or(name);
    if !kernel_name.is_empty() && !kernel_name.contains('/') {
        if exists(&root.class_block(kernel_name)) {
            return resolve_block(root, name, kernel_name, false, rules);
        }
        if exists(&root.class_nvme(kernel_name)) {
            return resolve_controller(root, name, &root.class_nvme(kernel_name));
        }
    }
    Err(ResolveError::NotFound {
        name: name.to_owned(),
    })
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

fn resolve_metadata(
    root: &SysfsRoot,
    name: &str,
    meta: &std::fs::Metadata,
    rules: &RuleChoice,
) -> Result<Target, ResolveError> {
    let ft = meta.file_type();
    if ft.is_block_device() {
        let (major, minor) = split_dev(meta.rdev());
        let dir = canonical(&root.dev_block(major, minor))?;
        let kname = file_name(&dir);
        return resolve_block(root, name, &kname, false, rules);
    }
    if ft.is_char_device() {
        let (major, minor) = split_dev(meta.rdev());
        let link = root.dev_char(major, minor);
        let dir = canonical(&link).map_err(|_| ResolveError::UnsupportedDevice {
            path: name.into(),
            what: format!("character device {major}:{minor}"),
        })?;
        let class = dir
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned());
        if class.as_deref() == Some("nvme") {
            return resolve_controller(root, name, &dir);
        }
        return Err(ResolveError::UnsupportedDevice {
            path: name.into(),
            what: format!("character device {major}:{minor}, {}", dir.display()),
        });
    }
    if ft.is_file() || ft.is_dir() {
        let (major, minor) = split_dev(meta.dev());
        let sysfs_path = root.dev_block(major, minor);
        if !exists(&sysfs_path) {
            return Err(ResolveError::NoBlockDevice {
                name: name.into(),
                major,
                minor,
                sysfs_path,
            });
        }
        let dir = canonical(&sysfs_path)?;
        let kname = file_name(&dir);
        return resolve_block(root, name, &kname, true, rules);
    }
    Err(ResolveError::UnsupportedDevice {
        path: name.into(),
        what: "not a file, block device or character device".to_owned(),
    })
}

fn split_dev(dev: u64) -> (u32, u32) {
    (rustix::fs::major(dev), rustix::fs::minor(dev))
}

fn canonical(path: &Path) -> Result<PathBuf, ResolveError> {
    std::fs::canonicalize(path).map_err(|source| {
        ResolveError::Sysfs(SysfsError::Read {
            path: path.to_owned(),
            source,
        })
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The last path component that is a PCI address: the function a sysfs device hangs off.
pub fn bdf_in_path(path: &Path) -> Option<Bdf> {
    path.components()
        .rev()
        .find_map(|c| c.as_os_str().to_str()?.parse::<Bdf>().ok())
}

fn resolve_controller(root: &SysfsRoot, name: &str, link: &Path) -> Result<Target, ResolveError> {
    let dir = canonical(link)?;
    let ctrl = file_name(&dir);
    let bdf = bdf_in_path(&dir);
    let _ = root;
    Ok(Target {
        name: name.to_owned(),
        kind: TargetKind::NvmeController,
        bdf,
        block_device: None,
        disk: None,
        controller: Some(ctrl),
        p2p_queue: false,
        not_p2p_because: Some(
            "an NVMe controller has no block queue: name one of its namespaces (nvme0n1)"
                .to_owned(),
        ),
    })
}

fn resolve_block(
    root: &SysfsRoot,
    name: &str,
    kname: &str,
    is_file: bool,
    rules: &RuleChoice,
) -> Result<Target, ResolveError> {
    let dir = canonical(&root.class_block(kname))?;
    let is_partition = dir.join("partition").exists();
    let disk_dir = if is_partition {
        dir.parent().map(Path::to_owned).unwrap_or(dir.clone())
    } else {
        dir.clone()
    };
    let disk = file_name(&disk_dir);
    let kind = if is_file {
        TargetKind::File
    } else if is_partition {
        TargetKind::Partition
    } else {
        TargetKind::Disk
    };
    let mut target = Target {
        name: name.to_owned(),
        kind,
        bdf: bdf_in_path(&disk_dir),
        block_device: Some(kname.to_owned()),
        disk: Some(disk.clone()),
        controller: None,
        p2p_queue: false,
        not_p2p_because: None,
    };
    let parent_name = disk_dir
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned());
    let why = if disk.starts_with("dm-") {
        Some("a device-mapper disk: its queue does not support P2PDMA; use the NVMe namespace underneath".to_owned())
    } else if disk.starts_with("md") {
        Some(
            "an md RAID disk: its queue does not support P2PDMA; use an NVMe namespace directly"
                .to_owned(),
        )
    } else if disk.starts_with("loop") {
        Some("a loop device: its queue does not support P2PDMA".to_owned())
    } else if disk_dir
        .components()
        .any(|c| c.as_os_str() == "nvme-subsystem")
    {
        // The native-multipath head (nvmeXnY under the subsystem): P2PDMA on its queue
        // depends on the release and on every path; its hidden per-path disks (nvmeXcYnZ)
        // cannot be opened.
        let paths = multipath_controllers(&disk_dir);
        target.bdf = paths.iter().find_map(|(_, bdf)| *bdf);
        target.controller = paths.first().map(|(name, _)| name.clone());
        multipath_head_refusal(rules, &paths)
    } else if is_multipath_path_device(&disk) {
        target.controller = parent_name.clone();
        let head = multipath_head_of(&disk);
        Some(if rules.rules.multipath_head_p2pdma {
            format!(
                "{disk} is a hidden NVMe multipath path device: it has no /dev node; use its head disk /dev/{head} (P2PDMA-capable under {rules} when every path is nvme-pci)"
            )
        } else {
            format!(
                "{disk} is a hidden NVMe multipath path device: it has no /dev node and under {rules} its head disk /dev/{head} has no P2PDMA support; boot with nvme_core.multipath=N to get per-controller disks"
            )
        })
    } else if parent_name
        .as_deref()
        .is_some_and(|p| p.starts_with("nvme"))
        && target.bdf.is_some()
    {
        target.controller = parent_name.clone();
        None
    } else {
        Some(format!(
            "{disk} is not an NVMe PCIe namespace: only nvme-pci queues support P2PDMA"
        ))
    };
    target.p2p_queue = why.is_none();
    target.not_p2p_because = why;
    Ok(target)
}

/// `nvme<X>c<Y>n<Z>`: the per-controller path of a native-multipath namespace.
pub fn is_multipath_path_device(disk: &str) -> bool {
    let Some(rest) = disk.strip_prefix("nvme") else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    match rest
        .split_once('c')
        .and_then(|(x, r)| Some((x, r.split_once('n')?)))
    {
        Some((x, (y, z))) => digits(x) && digits(y) && digits(z),
        None => false,
    }
}

/// `nvme<X>n<Z>`, the head disk of the path device `nvme<X>c<Y>n<Z>` (X is the
/// subsystem's instance, Z the namespace head's).
pub fn multipath_head_of(path_disk: &str) -> String {
    match path_disk.split_once('c') {
        Some((subsys, rest)) => match rest.split_once('n') {
            Some((_, ns)) => format!("{subsys}n{ns}"),
            None => path_disk.to_owned(),
        },
        None => path_disk.to_owned(),
    }
}

/// Why the multipath head disk's queue has no P2PDMA under `rules`, or `None` when it has:
/// from 7.2 the head sets `BLK_FEAT_PCI_P2PDMA` and stacking each path's limits clears it
/// unless every path has it, which only nvme-pci controllers do.
fn multipath_head_refusal(rules: &RuleChoice, paths: &[(String, Option<Bdf>)]) -> Option<String> {
    if !rules.rules.multipath_head_p2pdma {
        return Some(format!(
            "the NVMe multipath head disk: under {rules} its queue does not support P2PDMA (nvme_mpath_alloc_disk() sets no BLK_FEAT_PCI_P2PDMA before Linux 7.2); boot with nvme_core.multipath=N to get per-controller disks"
        ));
    }
    if paths.is_empty() {
        return Some(format!(
            "the NVMe multipath head disk: its subsystem lists no controller, and under {rules} the head supports P2PDMA only through nvme-pci paths"
        ));
    }
    let not_pci: Vec<&str> = paths
        .iter()
        .filter(|(_, bdf)| bdf.is_none())
        .map(|(name, _)| name.as_str())
        .collect();
    if !not_pci.is_empty() {
        return Some(format!(
            "the NVMe multipath head disk: under {rules} its queue supports P2PDMA only when every path's does, and path {} is not an NVMe PCIe controller (blk_stack_limits() clears BLK_FEAT_PCI_P2PDMA); use a per-controller disk or boot with nvme_core.multipath=N",
            not_pci.join(", ")
        ));
    }
    None
}

/// For a multipath head disk, the controllers of its subsystem (`nvme0`, ...) in name
/// order, each with its PCI function (`None` for a fabrics controller).
fn multipath_controllers(disk_dir: &Path) -> Vec<(String, Option<Bdf>)> {
    let Some(subsys) = disk_dir.parent() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(subsys) else {
        return Vec::new();
    };
    let mut ctrls: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("nvme") && n[4..].chars().all(|c| c.is_ascii_digit()) && n.len() > 4
        })
        .map(|e| e.path())
        .collect();
    ctrls.sort();
    ctrls
        .iter()
        .map(|c| {
            let bdf = std::fs::canonicalize(c).ok().and_then(|p| bdf_in_path(&p));
            (file_name(c), bdf)
        })
        .collect()
}

/// Why a name does not stand for a PCI function of a tree.
#[derive(Debug, thiserror::Error)]
pub enum PciNameError {
    /// The name did not resolve.
    #[error("resolving '{name}'")]
    Resolve {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: ResolveError,
    },
    /// It resolved to something with no PCI function doing its DMA.
    #[error("'{name}' is not a PCI device (the kernel refuses P2P for it: \"not a PCI device\"); name an NVMe namespace or a PCI address")]
    NotPci {
        /// The name.
        name: String,
    },
    /// Its PCI function is not in the tree.
    #[error("'{name}' resolves to {bdf}, which is not in the PCI tree")]
    NotInTree {
        /// The name.
        name: String,
        /// The function it resolved to.
        bdf: Bdf,
    },
}

/// Resolves `name` to a PCI function of `tree` (read from `root`), judging its queue by
/// the tree's kernel release: what `topo --explain`, `--choose` and `--matrix` take.
pub fn resolve_pci(
    root: &SysfsRoot,
    tree: &PciTree,
    name: &str,
) -> Result<(Target, Bdf), PciNameError> {
    let rules = RuleChoice::for_release(tree.host.kernel_release.as_deref());
    let target = resolve_with(root, name, &rules).map_err(|source| PciNameError::Resolve {
        name: name.to_owned(),
        source,
    })?;
    let Some(bdf) = target.bdf else {
        return Err(PciNameError::NotPci {
            name: name.to_owned(),
        });
    };
    if tree.function(bdf).is_none() {
        return Err(PciNameError::NotInTree {
            name: name.to_owned(),
            bdf,
        });
    }
    Ok((target, bdf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysfs::builder::{FunctionSpec as F, SysfsBuilder};

    /// An NVMe with a partition, a multipath head, dm/loop devices and a SATA disk.
    fn tree() -> (tempfile::TempDir, SysfsBuilder) {
        let dir = tempfile::tempdir().unwrap();
        let mut b = SysfsBuilder::new(dir.path()).unwrap();
        b.add(None, "0000:00:00.0", F::host_bridge(0x8086, 0x29c0))
            .unwrap();
        let rp = b.add(None, "0000:00:01.0", F::root_port()).unwrap();
        let nvme = b
            .add(
                Some(rp),
                "0000:01:00.0",
                F::nvme().nvme_controller("nvme0", "SER0", &["nvme0n1"]),
            )
            .unwrap();
        let ns = b.function_dir(nvme).unwrap().join("nvme/nvme0/nvme0n1");
        b.block_device_at(&ns.join("nvme0n1p1"), Some(1)).unwrap();
        let rp2 = b.add(None, "0000:00:02.0", F::root_port()).unwrap();
        let mp = b
            .add(
                Some(rp2),
                "0000:02:00.0",
                F::nvme().nvme_controller("nvme1", "SER1", &["nvme1c1n1"]),
            )
            .unwrap();
        b.nvme_multipath_head("nvme-subsys1", "nvme1n1", mp, "nvme1")
            .unwrap();
        b.block_device_at(Path::new("devices/virtual/block/dm-0"), None)
            .unwrap();
        b.block_device_at(Path::new("devices/virtual/block/loop0"), None)
            .unwrap();
        b.block_device_at(Path::new("devices/virtual/block/md0"), None)
            .unwrap();
        let sata = b
            .add(
                Some(rp2),
                "0000:02:00.1",
                F::endpoint(0x8086, 0x2922, 0x010601),
            )
            .unwrap();
        let sda = b
            .function_dir(sata)
            .unwrap()
            .join("ata1/host0/target0:0:0/0:0:0:0/block/sda");
        b.block_device_at(&sda, None).unwrap();
        (dir, b)
    }

    fn root(b: &SysfsBuilder) -> SysfsRoot {
        SysfsRoot::new(b.root())
    }

    #[test]
    fn bdf_controller_namespace_and_partition() {
        let (_d, b) = tree();
        let r = root(&b);
        let t = resolve(&r, "0000:01:00.0").unwrap();
        assert_eq!(t.kind, TargetKind::PciFunction);
        assert_eq!(t.bdf, Some("01:00.0".parse().unwrap()));
        let t = resolve(&r, "/dev/nvme0").unwrap();
        assert_eq!(
            (t.kind, t.controller.as_deref()),
            (TargetKind::NvmeController, Some("nvme0"))
        );
        assert_eq!(t.bdf, Some("01:00.0".parse().unwrap()));
        let t = resolve(&r, "/dev/nvme0n1").unwrap();
        assert_eq!(t.kind, TargetKind::Disk);
        assert!(t.p2p_queue, "{t:?}");
        assert_eq!(t.controller.as_deref(), Some("nvme0"));
        let t = resolve(&r, "nvme0n1p1").unwrap();
        assert_eq!(t.kind, TargetKind::Partition);
        assert_eq!(
            (t.block_device.as_deref(), t.disk.as_deref()),
            (Some("nvme0n1p1"), Some("nvme0n1"))
        );
        assert!(t.p2p_queue);
        assert_eq!(t.bdf, Some("01:00.0".parse().unwrap()));
    }

    fn rules(release: &str) -> RuleChoice {
        RuleChoice::for_release(Some(release))
    }

    #[test]
    fn queues_without_p2pdma_are_named() {
        let (_d, b) = tree();
        let r = root(&b);
        let six_twelve = rules("6.12.117");
        for (name, words) in [
            ("/dev/dm-0", "device-mapper"),
            ("/dev/md0", "md RAID"),
            ("/dev/loop0", "loop device"),
            ("/dev/nvme1n1", "multipath head"),
            ("/dev/sda", "not an NVMe PCIe namespace"),
        ] {
            let t = resolve_with(&r, name, &six_twelve).unwrap();
            assert!(!t.p2p_queue, "{name}");
            let why = t.not_p2p_because.unwrap();
            assert!(why.contains(words), "{name}: {why}");
        }
        let t = resolve_with(&r, "nvme1c1n1", &six_twelve).unwrap();
        assert!(!t.p2p_queue);
        let why = t.not_p2p_because.unwrap();
        assert!(why.contains("hidden NVMe multipath path"), "{why}");
        assert!(why.contains("/dev/nvme1n1"), "{why}");
        assert_eq!(t.bdf, Some("02:00.0".parse().unwrap()));
        // The head disk still leads to the controller's function.
        let t = resolve_with(&r, "nvme1n1", &six_twelve).unwrap();
        assert_eq!(t.bdf, Some("02:00.0".parse().unwrap()));
        let t = resolve_with(&r, "sda", &six_twelve).unwrap();
        assert_eq!(t.bdf, Some("02:00.1".parse().unwrap()));
    }

    #[test]
    fn the_multipath_head_is_refused_under_6_12_rules_and_accepted_under_7_2_rules() {
        let (_d, b) = tree();
        let r = root(&b);
        let t = resolve_with(&r, "/dev/nvme1n1", &rules("6.12.117-p2pdma")).unwrap();
        assert!(!t.p2p_queue);
        let why = t.not_p2p_because.unwrap();
        assert!(why.contains("under Linux 6.12 rules"), "{why}");
        assert!(why.contains("nvme_core.multipath=N"), "{why}");

        let t = resolve_with(&r, "/dev/nvme1n1", &rules("7.2.13+deb14-amd64")).unwrap();
        assert!(t.p2p_queue, "{t:?}");
        assert_eq!(t.not_p2p_because, None);
        assert_eq!(t.bdf, Some("02:00.0".parse().unwrap()));
        assert_eq!(t.controller.as_deref(), Some("nvme1"));
        // The hidden path device stays unusable, and points at its head.
        let t = resolve_with(&r, "nvme1c1n1", &rules("7.2.13")).unwrap();
        assert!(!t.p2p_queue);
        let why = t.not_p2p_because.unwrap();
        assert!(why.contains("use its head disk /dev/nvme1n1"), "{why}");
        assert!(why.contains("Linux 7.2 rules"), "{why}");
        // Releases between the two get 6.12's answer; newer ones 7.2's.
        assert!(
            !resolve_with(&r, "nvme1n1", &rules("6.18.0"))
                .unwrap()
                .p2p_queue
        );
        assert!(
            resolve_with(&r, "nvme1n1", &rules("7.5.1"))
                .unwrap()
                .p2p_queue
        );
    }

    #[test]
    fn under_7_2_rules_a_fabrics_path_takes_p2pdma_away_from_the_head() {
        let (_d, b) = tree();
        let r = root(&b);
        // A second path through a fabrics controller (no PCI function above it).
        let fabrics = b.root().join("devices/virtual/nvme-fabrics/ctl/nvme2");
        std::fs::create_dir_all(&fabrics).unwrap();
        std::os::unix::fs::symlink(
            "../../nvme-fabrics/ctl/nvme2",
            b.root()
                .join("devices/virtual/nvme-subsystem/nvme-subsys1/nvme2"),
        )
        .unwrap();
        let t = resolve_with(&r, "/dev/nvme1n1", &rules("7.2.13")).unwrap();
        assert!(!t.p2p_queue);
        let why = t.not_p2p_because.unwrap();
        assert!(
            why.contains("path nvme2 is not an NVMe PCIe controller"),
            "{why}"
        );
        assert!(why.contains("Linux 7.2 rules"), "{why}");
        assert_eq!(t.bdf, Some("02:00.0".parse().unwrap()));
    }

    #[test]
    fn a_regular_file_resolves_through_its_st_dev() {
        let (_d, b) = tree();
        let file = tempfile::NamedTempFile::new().unwrap();
        let dev = std::fs::metadata(file.path()).unwrap().dev();
        let (major, minor) = split_dev(dev);
        let r = root(&b);
        let name = file.path().to_str().unwrap();
        // Not (yet) a block device in this root: a clear error naming the numbers.
        let e = resolve(&r, name).unwrap_err();
        assert!(e.to_string().contains(&format!("{major}:{minor}")), "{e}");
        // Make the file's st_dev the NVMe partition in the fake root.
        let target = std::fs::read_link(r.dev_block(259, 2)).unwrap();
        std::os::unix::fs::symlink(target, r.dev_block(major, minor)).unwrap();
        let t = resolve(&r, name).unwrap();
        assert_eq!(t.kind, TargetKind::File);
        assert_eq!(t.block_device.as_deref(), Some("nvme0n1p1"));
        assert!(t.p2p_queue);
    }

    #[test]
    fn unknown_names_and_missing_functions_are_clear_errors() {
        let (_d, b) = tree();
        let r = root(&b);
        let e = resolve(&r, "0000:09:00.0").unwrap_err();
        assert!(
            e.to_string().contains("no PCI function 0000:09:00.0"),
            "{e}"
        );
        let e = resolve(&r, "/dev/nvme7n1").unwrap_err();
        assert!(e.to_string().contains("'/dev/nvme7n1' is not"), "{e}");
    }

    #[test]
    fn a_name_for_topo_must_be_a_pci_function_of_the_tree() {
        let root =
            SysfsRoot::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/switch"));
        let tree = PciTree::read(&root).unwrap();
        let (target, bdf) = resolve_pci(&root, &tree, "/dev/nvme0n1").unwrap();
        assert_eq!(target.kind, TargetKind::Disk);
        assert_eq!(Some(bdf), target.bdf);
        assert!(tree.function(bdf).is_some());

        let err = resolve_pci(&root, &tree, "/dev/loop0").unwrap_err();
        assert!(matches!(err, PciNameError::NotPci { .. }), "{err}");
        assert!(err.to_string().contains("is not a PCI device"), "{err}");

        let empty = PciTree::from_parts([], HostFacts::unknown("test"));
        let err = resolve_pci(&root, &empty, &bdf.to_string()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("'{bdf}' resolves to {bdf}, which is not in the PCI tree")
        );

        let err = resolve_pci(&root, &tree, "/nonexistent/thing").unwrap_err();
        assert_eq!(err.to_string(), "resolving '/nonexistent/thing'");
        assert!(matches!(
            err,
            PciNameError::Resolve {
                source: ResolveError::NotFound { .. },
                ..
            }
        ));
    }
}
