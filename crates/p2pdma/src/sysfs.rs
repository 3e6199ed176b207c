//! Reading the PCI model from a sysfs root (real /sys, a snapshot, or a fixture).
//!
//! Every path p2pdma reads goes through [`SysfsRoot`], whose methods name the path
//! template they resolve, so a snapshot directory (see [`crate::snapshot`]) or a test
//! fixture can stand in for `/sys`. Facts that do not live in sysfs (the CPU, the
//! kernel's configuration) come from [`crate::host::HostFacts`].

use std::io;
use std::path::{Path, PathBuf};

pub mod builder;

/// Name of the host-facts file at the root of a snapshot or fixture (see
/// [`crate::host::HostFacts`]); [`SysfsRoot::host_facts_file`] is its path.
pub const HOST_FACTS_FILE: &str = "p2pdma-host.json";

/// The directory that plays the role of `/sys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysfsRoot(PathBuf);

impl Default for SysfsRoot {
    fn default() -> Self {
        SysfsRoot(PathBuf::from("/sys"))
    }
}

/// Why a sysfs file could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    /// The file or directory could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The file was read but its content is not what the kernel writes there.
    #[error("{path}: unexpected content {content:?} (expected {expected}); is this a sysfs tree or a p2pdma snapshot?")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What was in it (truncated).
        content: String,
        /// What the kernel writes there.
        expected: &'static str,
    },
    /// The directory does not look like a sysfs root at all.
    #[error("{path} has no bus/pci/devices directory: pass a sysfs root such as /sys or a directory made by `p2pdma snapshot`")]
    NotSysfs {
        /// The root that was given.
        path: PathBuf,
    },
}

impl SysfsRoot {
    /// A sysfs root at `path` (nothing is read yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SysfsRoot(path.into())
    }

    /// The root directory itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Whether this is the running system's `/sys` (host facts then come from `/proc`).
    pub fn is_live(&self) -> bool {
        self.0 == Path::new("/sys")
    }

    /// `<root>/bus/pci/devices`: one symlink per PCI function, named by its address.
    pub fn pci_devices_dir(&self) -> PathBuf {
        self.0.join("bus/pci/devices")
    }

    /// `<root>/bus/pci/devices/<bdf>`: the function's directory (a symlink into
    /// `<root>/devices/pciDDDD:BB/...`, whose path is the chain of upstream bridges).
    pub fn pci_device(&self, bdf: crate::Bdf) -> PathBuf {
        self.pci_devices_dir().join(bdf.to_string())
    }

    /// `<root>/bus/pci/devices/<bdf>/p2pmem`: the provider's pool (`size`, `available`,
    /// `published`, `allocate`); present only when the kernel registered one.
    pub fn p2pmem_dir(&self, bdf: crate::Bdf) -> PathBuf {
        self.pci_device(bdf).join("p2pmem")
    }

    /// `<root>/bus/pci/devices/<bdf>/driver`: a link to the bound driver's directory
    /// (absent when no driver is bound).
    pub fn pci_driver_link(&self, bdf: crate::Bdf) -> PathBuf {
        self.pci_device(bdf).join("driver")
    }

    /// `<root>/bus/pci/devices/<bdf>/driver_override`: the driver the next probe must use
    /// (`vfio attach` writes `vfio-pci`, `detach` clears it).
    pub fn pci_driver_override(&self, bdf: crate::Bdf) -> PathBuf {
        self.pci_device(bdf).join("driver_override")
    }

    /// `<root>/bus/pci/devices/<bdf>/iommu_group`: a link to the device's IOMMU group
    /// (absent without an IOMMU).
    pub fn pci_iommu_group_link(&self, bdf: crate::Bdf) -> PathBuf {
        self.pci_device(bdf).join("iommu_group")
    }

    /// `<root>/bus/pci/drivers_probe`: writing a PCI address there probes drivers for it.
    pub fn pci_drivers_probe(&self) -> PathBuf {
        self.0.join("bus/pci/drivers_probe")
    }

    /// `<root>/bus/pci/drivers/<driver>`: a PCI driver's directory, with its `bind` and
    /// `unbind` files.
    pub fn pci_driver_dir(&self, driver: &str) -> PathBuf {
        self.0.join("bus/pci/drivers").join(driver)
    }

    /// `<root>/class/block/<name>`: a disk or partition by kernel name.
    pub fn class_block(&self, name: &str) -> PathBuf {
        self.0.join("class/block").join(name)
    }

    /// `<root>/class/nvme/<name>`: an NVMe controller (`nvme0`) by kernel name.
    pub fn class_nvme(&self, name: &str) -> PathBuf {
        self.0.join("class/nvme").join(name)
    }

    /// `<root>/class/block/<partition>/../dev`: the device number of the disk a partition
    /// belongs to (a partition's directory sits inside its disk's).
    pub fn whole_disk_dev(&self, partition: &str) -> PathBuf {
        self.class_block(partition).join("../dev")
    }

    /// `<root>/dev/block/<major>:<minor>`: a block device by number.
    pub fn dev_block(&self, major: u32, minor: u32) -> PathBuf {
        self.0.join(format!("dev/block/{major}:{minor}"))
    }

    /// `<root>/dev/char/<major>:<minor>`: a character device by number.
    pub fn dev_char(&self, major: u32, minor: u32) -> PathBuf {
        self.0.join(format!("dev/char/{major}:{minor}"))
    }

    /// `<root>/p2pdma-host.json`: the host facts a snapshot recorded.
    pub fn host_facts_file(&self) -> PathBuf {
        self.0.join(HOST_FACTS_FILE)
    }
}

/// Reads a small text file and trims the trailing newline.
pub(crate) fn read_text(path: &Path) -> Result<String, SysfsError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\0', ' ']).to_owned())
        .map_err(|source| SysfsError::Read {
            path: path.to_owned(),
            source,
        })
}

/// Like [`read_text`] but a missing file is `None` (many attributes are optional).
pub(crate) fn read_text_opt(path: &Path) -> Result<Option<String>, SysfsError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim_end_matches(['\n', '\0', ' ']).to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        // Some attributes exist but refuse reads for a given device (EINVAL, ENXIO).
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENXIO)) => Ok(None),
        Err(source) => Err(SysfsError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

pub(crate) fn malformed(path: &Path, content: &str, expected: &'static str) -> SysfsError {
    let mut content = content.to_owned();
    if content.len() > 64 {
        let mut cut = 64;
        while !content.is_char_boundary(cut) {
            cut -= 1;
        }
        content.truncate(cut);
        content.push('…');
    }
    SysfsError::Malformed {
        path: path.to_owned(),
        content,
        expected,
    }
}

/// Parses `0x1b36`-style hex as the kernel prints vendor, device and class.
pub(crate) fn parse_hex(
    path: &Path,
    text: &str,
    expected: &'static str,
) -> Result<u32, SysfsError> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    if digits.is_empty() || digits.len() > 8 {
        return Err(malformed(path, text, expected));
    }
    u32::from_str_radix(digits, 16).map_err(|_| malformed(path, text, expected))
}

/// Reads a hex attribute (`vendor`, `device`, `class`).
pub(crate) fn read_hex(path: &Path, expected: &'static str) -> Result<u32, SysfsError> {
    let text = read_text(path)?;
    parse_hex(path, &text, expected)
}

/// Reads an optional decimal attribute (`numa_node`, `p2pmem/size`).
pub(crate) fn read_dec_opt<T: std::str::FromStr>(
    path: &Path,
    expected: &'static str,
) -> Result<Option<T>, SysfsError> {
    match read_text_opt(path)? {
        None => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| malformed(path, &text, expected)),
    }
}

/// The final component of a symlink's target (`driver` -> `nvme`), if the link exists.
pub(crate) fn link_name(path: &Path) -> Result<Option<String>, SysfsError> {
    match std::fs::read_link(path) {
        Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SysfsError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_documented_templates() {
        let root = SysfsRoot::new("/snap");
        let bdf: crate::Bdf = "0000:01:00.0".parse().unwrap();
        assert_eq!(
            root.pci_device(bdf),
            Path::new("/snap/bus/pci/devices/0000:01:00.0")
        );
        assert_eq!(root.dev_block(259, 1), Path::new("/snap/dev/block/259:1"));
        assert_eq!(
            root.p2pmem_dir(bdf),
            Path::new("/snap/bus/pci/devices/0000:01:00.0/p2pmem")
        );
        assert_eq!(
            root.pci_driver_link(bdf),
            Path::new("/snap/bus/pci/devices/0000:01:00.0/driver")
        );
        assert_eq!(
            root.pci_driver_dir("nvme"),
            Path::new("/snap/bus/pci/drivers/nvme")
        );
        assert_eq!(
            root.whole_disk_dev("nvme0n1p1"),
            Path::new("/snap/class/block/nvme0n1p1/../dev")
        );
        assert_eq!(root.host_facts_file(), Path::new("/snap/p2pdma-host.json"));
        assert!(SysfsRoot::default().is_live());
        assert!(!root.is_live());
    }

    #[test]
    fn hex_parsing_rejects_garbage_with_the_path() {
        let p = Path::new("/x/vendor");
        assert_eq!(parse_hex(p, "0x1b36", "hex").unwrap(), 0x1b36);
        let e = parse_hex(p, "0xzz", "a hex number").unwrap_err();
        assert!(e.to_string().contains("/x/vendor"), "{e}");
        assert!(parse_hex(p, "", "hex").is_err());
        assert!(parse_hex(p, "0x123456789", "hex").is_err());
    }
}
