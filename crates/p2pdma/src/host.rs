//! Host facts: what the P2P rules need that does not live under `bus/pci`.
//!
//! The CPU vendor and family (`/proc/cpuinfo`), the kernel release
//! (`/proc/sys/kernel/osrelease`) and whether the kernel has `CONFIG_PCI_P2PDMA`
//! (`/proc/config.gz`, `/boot/config-<release>`, `/proc/kallsyms`). On the live system
//! they are read from `/proc` under a filesystem root given as data; a snapshot or a
//! fixture records them in `<root>/p2pdma-host.json` ([`HOST_FACTS_FILE`]), found through
//! [`SysfsRoot::host_facts_file`].
//!
//! This module sits beside [`crate::pci`] (the PCI model carries a [`HostFacts`]) and
//! uses only [`crate::sysfs`] and [`crate::bdf`]; snapshots use it, never the reverse.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::sysfs::{SysfsError, SysfsRoot};
use crate::Bdf;

pub use crate::sysfs::HOST_FACTS_FILE;

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
    ///
    /// `provider` is a function with a `p2pmem` directory, if the caller found one (the
    /// most certain evidence that the kernel has `CONFIG_PCI_P2PDMA`).
    pub fn read(root: &SysfsRoot, provider: Option<Bdf>) -> Result<HostFacts, SysfsError> {
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
            Ok(Self::live(Path::new("/"), provider))
        } else {
            Ok(Self::unknown(format!(
                "{} has no {HOST_FACTS_FILE}",
                root.path().display()
            )))
        }
    }

    /// Reads the facts of the running system under `fs_root` (`/` normally).
    pub fn live(fs_root: &Path, provider: Option<Bdf>) -> HostFacts {
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
            detect_p2pdma(fs_root, kernel_release.as_deref(), provider);
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
    provider: Option<Bdf>,
) -> (KernelP2pdma, String) {
    if let Some(bdf) = provider {
        return (KernelP2pdma::Yes, format!("{bdf} has a p2pmem directory"));
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
        let (v, src) = detect_p2pdma(dir.path(), Some("6.1.0"), None);
        assert_eq!(v, KernelP2pdma::No);
        assert!(src.contains("config-6.1.0"));
        let (v, _) = detect_p2pdma(dir.path(), Some("6.2.0"), None);
        assert_eq!(v, KernelP2pdma::Unknown);
    }
}
