//! The PCI model: functions, bridges, capabilities and links, as read from sysfs.
//!
//! [`PciTree::read`] walks `<root>/bus/pci/devices/*`. The place of each function in the
//! tree comes from where its symlink points (`<root>/devices/pci0000:00/0000:00:01.0/
//! 0000:01:00.0`: the path *is* the chain of upstream bridges), its port type and ACS
//! state from its `config` file, the rest from one small attribute file each.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::HostFacts;
use crate::sysfs::{self, SysfsError, SysfsRoot};
use crate::Bdf;

/// PCI class code of a PCI-to-PCI bridge (`0x0604xx`).
const CLASS_PCI_BRIDGE: u32 = 0x0604;
/// PCI class code of an NVMe controller (`0x010802`).
pub const CLASS_NVME: u32 = 0x010802;

/// PCI Express capability ID in the standard capability list.
const CAP_ID_EXP: u8 = 0x10;
/// ACS extended capability ID.
const EXT_CAP_ID_ACS: u16 = 0x000d;
/// ACS P2P Request Redirect; with CR and EC, the bits `pci_bridge_has_acs_redir()` checks.
pub const ACS_RR: u16 = 1 << 2;
/// ACS P2P Completion Redirect.
pub const ACS_CR: u16 = 1 << 3;
/// ACS P2P Egress Control.
pub const ACS_EC: u16 = 1 << 5;

/// One PCI function.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PciFunction {
    /// Its address.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (24 bits: class, subclass, programming interface).
    pub class: u32,
    /// Bound driver (`nvme`, `pcieport`), if any.
    pub driver: Option<String>,
    /// The bridge the kernel's `pci_upstream_bridge()` returns: the bridge above this
    /// function (above the PF for a VF); `None` on a root bus.
    pub upstream: Option<Bdf>,
    /// The host bridge directory this function hangs off (`pci0000:00`).
    pub root_bus: String,
    /// For a virtual function, its physical function.
    pub physfn: Option<Bdf>,
    /// PCIe port type from the PCI Express capability, when readable.
    pub port_type: Option<PortType>,
    /// ACS capability and control.
    pub acs: AcsState,
    /// Link speed and width.
    pub link: LinkInfo,
    /// NUMA node (`-1` in sysfs is `None`).
    pub numa_node: Option<i32>,
    /// IOMMU group number.
    pub iommu_group: Option<u32>,
    /// The p2pmem pool this function provides, if it is a provider.
    pub p2pmem: Option<P2pmemInfo>,
    /// NVMe controllers on this function (`nvme0`), with serial and namespaces.
    pub nvme: Vec<NvmeController>,
}

/// The `p2pmem/` directory of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct P2pmemInfo {
    /// Bytes in the pool (`p2pmem/size`).
    pub size: u64,
    /// Bytes free (`p2pmem/available`).
    pub available: u64,
    /// Whether the driver published it for other drivers (`p2pmem/published`).
    pub published: bool,
}

/// An NVMe controller bound to a PCI function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvmeController {
    /// Kernel name (`nvme0`).
    pub name: String,
    /// Serial number, unless the snapshot left it out.
    pub serial: Option<String>,
    /// Namespace block devices (`nvme0n1`), or path devices (`nvme0c0n1`) under multipath.
    pub namespaces: Vec<String>,
}

/// PCIe device/port type (PCI Express Capabilities register, bits 7:4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortType {
    /// PCI Express endpoint.
    Endpoint,
    /// Legacy PCI Express endpoint.
    LegacyEndpoint,
    /// Root port of a root complex.
    RootPort,
    /// Upstream port of a switch.
    SwitchUpstream,
    /// Downstream port of a switch.
    SwitchDownstream,
    /// PCIe to PCI/PCI-X bridge.
    PcieToPciBridge,
    /// PCI/PCI-X to PCIe bridge.
    PciToPcieBridge,
    /// Root-complex integrated endpoint.
    RcIntegratedEndpoint,
    /// Root-complex event collector.
    RcEventCollector,
    /// A value the specification does not define.
    Other(u8),
}

impl PortType {
    fn from_bits(bits: u8) -> Self {
        match bits {
            0x0 => PortType::Endpoint,
            0x1 => PortType::LegacyEndpoint,
            0x4 => PortType::RootPort,
            0x5 => PortType::SwitchUpstream,
            0x6 => PortType::SwitchDownstream,
            0x7 => PortType::PcieToPciBridge,
            0x8 => PortType::PciToPcieBridge,
            0x9 => PortType::RcIntegratedEndpoint,
            0xa => PortType::RcEventCollector,
            other => PortType::Other(other),
        }
    }

    /// Short label for trees and tables.
    pub fn label(self) -> &'static str {
        match self {
            PortType::Endpoint | PortType::LegacyEndpoint => "endpoint",
            PortType::RootPort => "root port",
            PortType::SwitchUpstream => "switch upstream port",
            PortType::SwitchDownstream => "switch downstream port",
            PortType::PcieToPciBridge | PortType::PciToPcieBridge => "PCIe/PCI bridge",
            PortType::RcIntegratedEndpoint => "integrated endpoint",
            PortType::RcEventCollector => "event collector",
            PortType::Other(_) => "unknown port type",
        }
    }
}

/// What the `config` file says about Access Control Services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AcsState {
    /// No ACS extended capability: the kernel treats the function as never redirecting.
    Absent,
    /// The ACS capability and its registers.
    Present {
        /// Offset of the capability in config space.
        offset: u16,
        /// ACS Capability register.
        capability: u16,
        /// ACS Control register.
        control: u16,
    },
    /// The extended config space could not be read.
    Unknown {
        /// Why (e.g. only 64 bytes readable without root).
        reason: String,
    },
}

impl AcsState {
    /// Whether RR, CR or EC is set, as `pci_bridge_has_acs_redir()` checks; `None` if unknown.
    pub fn redirects(&self) -> Option<bool> {
        match self {
            AcsState::Absent => Some(false),
            AcsState::Present { control, .. } => Some(control & (ACS_RR | ACS_CR | ACS_EC) != 0),
            AcsState::Unknown { .. } => None,
        }
    }

    /// Names of the redirect bits set (`RR CR EC`).
    pub fn redirect_bits(&self) -> Vec<&'static str> {
        match self {
            AcsState::Present { control, .. } => [(ACS_RR, "RR"), (ACS_CR, "CR"), (ACS_EC, "EC")]
                .into_iter()
                .filter(|(bit, _)| control & bit != 0)
                .map(|(_, name)| name)
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Current and maximum link of a function (the link to its upstream port for
/// endpoints and upstream ports; the link below it for root and downstream ports).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkInfo {
    /// Current speed in GT/s.
    pub current_speed: Option<f32>,
    /// Current width in lanes.
    pub current_width: Option<u8>,
    /// Maximum speed in GT/s.
    pub max_speed: Option<f32>,
    /// Maximum width in lanes.
    pub max_width: Option<u8>,
}

/// A link's speed and width and what it can carry.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// Transfer rate per lane in GT/s.
    pub speed_gts: f32,
    /// Lanes.
    pub width: u8,
}

impl Link {
    /// Payload bandwidth in GB/s per direction after line encoding: 8b/10b up to
    /// 5 GT/s (PCIe 1 and 2), 128b/130b above (PCIe 3 to 5). TLP overhead is not counted.
    pub fn bandwidth_gbps(self) -> f64 {
        let speed = f64::from(self.speed_gts);
        let efficiency = if speed <= 5.0 {
            8.0 / 10.0
        } else {
            128.0 / 130.0
        };
        speed * efficiency * f64::from(self.width) / 8.0
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} GT/s x{} ({:.2} GB/s)",
            self.speed_gts,
            self.width,
            self.bandwidth_gbps()
        )
    }
}

impl LinkInfo {
    /// The current link, when both speed and width are known.
    pub fn current(&self) -> Option<Link> {
        Some(Link {
            speed_gts: self.current_speed?,
            width: self.current_width?,
        })
    }
}

impl PciFunction {
    /// Whether this is a PCI-to-PCI bridge (root port, switch port, ...).
    pub fn is_bridge(&self) -> bool {
        self.class >> 8 == CLASS_PCI_BRIDGE
    }

    /// Whether this is an NVMe controller by class code.
    pub fn is_nvme(&self) -> bool {
        self.class == CLASS_NVME
    }

    /// Whether this is a PCIe root port.
    pub fn is_root_port(&self) -> bool {
        self.port_type == Some(PortType::RootPort)
    }

    /// A short description: `1b36:0010 NVMe (nvme0, serial SER0)`.
    pub fn describe(&self) -> String {
        let mut s = format!("{:04x}:{:04x} {}", self.vendor, self.device, self.kind());
        let names: Vec<String> = self
            .nvme
            .iter()
            .map(|c| match &c.serial {
                Some(serial) => format!("{} serial {serial}", c.name),
                None => c.name.clone(),
            })
            .collect();
        if !names.is_empty() {
            s.push_str(&format!(" ({})", names.join(", ")));
        }
        s
    }

    /// What kind of function this is, in words.
    pub fn kind(&self) -> &'static str {
        if let Some(t) = self.port_type.filter(|_| self.is_bridge()) {
            return t.label();
        }
        match self.class >> 8 {
            0x0600 => "host bridge",
            0x0604 => "PCI bridge",
            0x0108 => "NVMe",
            // PCI_CLASS_MEMORY_RAM, e.g. QEMU's ivshmem-plain (the lab's RAM provider).
            0x0500 => "RAM",
            0x0106 => "SATA",
            0x0200 => "Ethernet",
            0x0300 | 0x0302 => "display",
            0x1200 => "accelerator",
            _ if self.physfn.is_some() => "virtual function",
            _ => "device",
        }
    }
}

/// All PCI functions of a sysfs root, plus the host facts the P2P rules need.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PciTree {
    /// The functions by address.
    pub functions: BTreeMap<Bdf, PciFunction>,
    /// CPU and kernel facts.
    pub host: HostFacts,
}

impl PciTree {
    /// Reads every function under `<root>/bus/pci/devices/` and the host facts
    /// (`<root>/p2pdma-host.json`, or `/proc` for the live `/sys`).
    pub fn read(root: &SysfsRoot) -> Result<PciTree, SysfsError> {
        let devices_dir = root.pci_devices_dir();
        let entries = match std::fs::read_dir(&devices_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SysfsError::NotSysfs {
                    path: root.path().to_owned(),
                })
            }
            Err(source) => {
                return Err(SysfsError::Read {
                    path: devices_dir,
                    source,
                })
            }
        };
        let canonical_root = canonicalize(root.path())?;
        let mut functions = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|source| SysfsError::Read {
                path: devices_dir.clone(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(bdf) = name.parse::<Bdf>() else {
                return Err(sysfs::malformed(
                    &entry.path(),
                    &name,
                    "entries named by PCI address",
                ));
            };
            let function = read_function(root, &canonical_root, bdf, &entry.path())?;
            functions.insert(bdf, function);
        }
        let provider = functions
            .values()
            .find(|f| f.p2pmem.is_some())
            .map(|f| f.bdf);
        let host = HostFacts::read(root, provider)?;
        Ok(PciTree { functions, host })
    }

    /// A tree built from parsed parts (tests, fuzzing, benchmarks).
    pub fn from_parts(functions: impl IntoIterator<Item = PciFunction>, host: HostFacts) -> Self {
        PciTree {
            functions: functions.into_iter().map(|f| (f.bdf, f)).collect(),
            host,
        }
    }

    /// The function at `bdf`.
    pub fn function(&self, bdf: Bdf) -> Option<&PciFunction> {
        self.functions.get(&bdf)
    }

    /// All functions in address order.
    pub fn iter(&self) -> impl Iterator<Item = &PciFunction> {
        self.functions.values()
    }

    /// Functions with a p2pmem directory, in address order.
    pub fn providers(&self) -> impl Iterator<Item = &PciFunction> {
        self.iter().filter(|f| f.p2pmem.is_some())
    }

    /// The chain `bdf, upstream(bdf), upstream(upstream(bdf)), ...` up to the root bus.
    /// Stops (instead of looping) if a malformed tree has a cycle.
    pub fn chain(&self, bdf: Bdf) -> Vec<Bdf> {
        let mut chain = vec![bdf];
        let mut cur = bdf;
        while let Some(up) = self.function(cur).and_then(|f| f.upstream) {
            if chain.contains(&up) || chain.len() > 256 {
                break;
            }
            chain.push(up);
            cur = up;
        }
        chain
    }

    /// Direct children (functions whose upstream bridge is `bdf`), in address order.
    pub fn children(&self, bdf: Bdf) -> impl Iterator<Item = &PciFunction> {
        self.iter().filter(move |f| f.upstream == Some(bdf))
    }

    /// The device the kernel's `pci_host_bridge_dev()` picks for the host bridge of
    /// `root_bus`: the first function on the root bus, if it is devfn 00.0 or a root port.
    /// The kernel takes the head of the bus's device list (enumeration order); sysfs does
    /// not show that order, so the lowest devfn stands in for it (they agree unless a
    /// lower devfn was hot-added later).
    pub fn host_bridge_device(&self, root_bus: &str) -> Option<&PciFunction> {
        let first = self
            .iter()
            .filter(|f| f.root_bus == root_bus && f.upstream.is_none() && f.physfn.is_none())
            .min_by_key(|f| f.bdf)?;
        (first.bdf.devfn() == 0 || first.is_root_port()).then_some(first)
    }
}

fn canonicalize(path: &Path) -> Result<PathBuf, SysfsError> {
    std::fs::canonicalize(path).map_err(|source| SysfsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_function(
    root: &SysfsRoot,
    canonical_root: &Path,
    bdf: Bdf,
    link: &Path,
) -> Result<PciFunction, SysfsError> {
    let dir = canonicalize(link)?;
    let rel = dir
        .strip_prefix(canonical_root)
        .map_err(|_| {
            sysfs::malformed(
                link,
                &dir.to_string_lossy(),
                "a link into <root>/devices/pci*/",
            )
        })?
        .to_owned();
    // devices/pci0000:00/0000:00:01.0/0000:01:00.0
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    // The last `pciDDDD:BB` component: a VMD controller nests a second root bus
    // (`pci0000:00/0000:00:0e.0/pci10000:e0/...`) whose devices have no upstream bridge.
    let root_bus = parts
        .iter()
        .rfind(|p| p.starts_with("pci"))
        .cloned()
        .ok_or_else(|| {
            sysfs::malformed(
                link,
                &rel.to_string_lossy(),
                "a link into <root>/devices/pciDDDD:BB/",
            )
        })?;
    let upstream = parts
        .len()
        .checked_sub(2)
        .and_then(|i| parts[i].parse::<Bdf>().ok());

    let vendor = sysfs::read_hex(&dir.join("vendor"), "a 16-bit hex vendor ID")?;
    let device = sysfs::read_hex(&dir.join("device"), "a 16-bit hex device ID")?;
    let class = sysfs::read_hex(&dir.join("class"), "a 24-bit hex class code")?;
    let driver = sysfs::link_name(&dir.join("driver"))?;
    let physfn = match sysfs::link_name(&dir.join("physfn"))? {
        Some(name) => Some(name.parse::<Bdf>().map_err(|_| {
            sysfs::malformed(&dir.join("physfn"), &name, "a link to a PCI function")
        })?),
        None => None,
    };
    let iommu_group = match sysfs::link_name(&dir.join("iommu_group"))? {
        Some(name) => Some(name.parse::<u32>().map_err(|_| {
            sysfs::malformed(
                &dir.join("iommu_group"),
                &name,
                "a link to an IOMMU group number",
            )
        })?),
        None => None,
    };
    let numa_node = sysfs::read_dec_opt::<i32>(&dir.join("numa_node"), "a NUMA node number")?
        .filter(|n| *n >= 0);
    let link_info = LinkInfo {
        current_speed: read_speed(&dir.join("current_link_speed"))?,
        current_width: read_width(&dir.join("current_link_width"))?,
        max_speed: read_speed(&dir.join("max_link_speed"))?,
        max_width: read_width(&dir.join("max_link_width"))?,
    };
    let config_path = dir.join("config");
    let config = match std::fs::read(&config_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(SysfsError::Read {
                path: config_path,
                source,
            })
        }
    };
    let parsed = parse_config(&config);
    let p2pmem = read_p2pmem(&dir.join("p2pmem"))?;
    let nvme = read_nvme_controllers(&dir.join("nvme"))?;
    let _ = root;
    Ok(PciFunction {
        bdf,
        vendor: vendor as u16,
        device: device as u16,
        class,
        driver,
        upstream,
        root_bus,
        physfn,
        port_type: parsed.port_type,
        acs: parsed.acs,
        link: link_info,
        numa_node,
        iommu_group,
        p2pmem,
        nvme,
    })
}

/// Parses `8.0 GT/s PCIe` (or `Unknown`) as the kernel prints link speeds.
fn read_speed(path: &Path) -> Result<Option<f32>, SysfsError> {
    let Some(text) = sysfs::read_text_opt(path)? else {
        return Ok(None);
    };
    if text.starts_with("Unknown") {
        return Ok(None);
    }
    let number = text.split_whitespace().next().unwrap_or("");
    match number.parse::<f32>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(Some(v)),
        _ => Err(sysfs::malformed(
            path,
            &text,
            "a link speed such as \"8.0 GT/s PCIe\"",
        )),
    }
}

fn read_width(path: &Path) -> Result<Option<u8>, SysfsError> {
    let Some(text) = sysfs::read_text_opt(path)? else {
        return Ok(None);
    };
    match text.parse::<u8>() {
        Ok(0) => Ok(None),
        Ok(w) => Ok(Some(w)),
        Err(_) => Err(sysfs::malformed(path, &text, "a link width such as \"4\"")),
    }
}

fn read_p2pmem(dir: &Path) -> Result<Option<P2pmemInfo>, SysfsError> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let num = |name: &str| -> Result<u64, SysfsError> {
        let path = dir.join(name);
        let text = sysfs::read_text(&path)?;
        text.parse()
            .map_err(|_| sysfs::malformed(&path, &text, "a byte count"))
    };
    let published_path = dir.join("published");
    let published = match sysfs::read_text(&published_path)?.as_str() {
        "0" => false,
        "1" => true,
        other => return Err(sysfs::malformed(&published_path, other, "0 or 1")),
    };
    Ok(Some(P2pmemInfo {
        size: num("size")?,
        available: num("available")?,
        published,
    }))
}

fn read_nvme_controllers(dir: &Path) -> Result<Vec<NvmeController>, SysfsError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut controllers = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("nvme") {
            continue;
        }
        let ctrl_dir = entry.path();
        let serial = sysfs::read_text_opt(&ctrl_dir.join("serial"))?.map(|s| s.trim().to_owned());
        let mut namespaces: Vec<String> = std::fs::read_dir(&ctrl_dir)
            .map(|it| {
                it.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&name) && n.len() > name.len())
                    .collect()
            })
            .unwrap_or_default();
        namespaces.sort();
        controllers.push(NvmeController {
            name,
            serial,
            namespaces,
        });
    }
    controllers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(controllers)
}

/// What the config space bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedConfig {
    /// PCIe port type, if the PCI Express capability was found.
    pub port_type: Option<PortType>,
    /// ACS state.
    pub acs: AcsState,
}

/// Parses a `config` file's bytes: the PCI Express capability (port type) from the
/// standard list and the ACS capability (ID 0x000D) from the extended list at 0x100.
///
/// The kernel reads extended capabilities only when the device's config space is
/// larger than 256 bytes, and sysfs shows the whole space to root; so 256 bytes means
/// "no extended space" (ACS absent for the kernel too), while fewer (64 without root)
/// means we could not see it.
pub fn parse_config(config: &[u8]) -> ParsedConfig {
    let u8_at = |off: usize| config.get(off).copied();
    let u16_at = |off: usize| {
        Some(u16::from_le_bytes([
            *config.get(off)?,
            *config.get(off + 1)?,
        ]))
    };
    let u32_at = |off: usize| {
        Some(u32::from_le_bytes([
            *config.get(off)?,
            *config.get(off + 1)?,
            *config.get(off + 2)?,
            *config.get(off + 3)?,
        ]))
    };

    let mut port_type = None;
    let has_cap_list = u16_at(0x06).is_some_and(|status| status & 0x10 != 0);
    if has_cap_list {
        let mut pos = u8_at(0x34).map(|p| p & !3);
        let mut guard = 0;
        while let Some(p) = pos.filter(|p| *p >= 0x40) {
            guard += 1;
            if guard > 48 {
                break;
            }
            let (Some(id), Some(next)) = (u8_at(p as usize), u8_at(p as usize + 1)) else {
                break;
            };
            if id == CAP_ID_EXP {
                port_type = u16_at(p as usize + 2)
                    .map(|flags| PortType::from_bits(((flags >> 4) & 0xf) as u8));
                break;
            }
            pos = Some(next & !3);
        }
    }

    let acs = if config.len() < 256 {
        AcsState::Unknown {
            reason: if config.is_empty() {
                "no config file".to_owned()
            } else {
                format!(
                    "only {} bytes of config space readable (run as root to see the extended capabilities)",
                    config.len()
                )
            },
        }
    } else if config.len() == 256 {
        AcsState::Absent
    } else {
        let mut acs = AcsState::Absent;
        let mut pos = 0x100usize;
        let mut guard = 0;
        while guard < 512 {
            guard += 1;
            let Some(header) = u32_at(pos) else { break };
            if header == 0 || header == 0xffff_ffff {
                break;
            }
            if (header & 0xffff) as u16 == EXT_CAP_ID_ACS {
                if let (Some(capability), Some(control)) = (u16_at(pos + 4), u16_at(pos + 6)) {
                    acs = AcsState::Present {
                        offset: pos as u16,
                        capability,
                        control,
                    };
                }
                break;
            }
            let next = (header >> 20) as usize & !3;
            if next < 0x100 {
                break;
            }
            pos = next;
        }
        acs
    };
    ParsedConfig { port_type, acs }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Config space with a PCIe capability of `port` at 0x40 and, if given, ACS control at 0x100.
    fn config(port: u8, acs_control: Option<u16>) -> Vec<u8> {
        let mut c = vec![0u8; 4096];
        c[0x06] = 0x10;
        c[0x34] = 0x40;
        c[0x40] = CAP_ID_EXP;
        c[0x41] = 0;
        c[0x42..0x44].copy_from_slice(&(u16::from(port) << 4 | 2).to_le_bytes());
        if let Some(ctrl) = acs_control {
            // A different capability first (AER, 0x0001) pointing at ACS.
            c[0x100..0x104].copy_from_slice(&(0x0001u32 | 1 << 16 | 0x148 << 20).to_le_bytes());
            c[0x148..0x14c].copy_from_slice(&(u32::from(EXT_CAP_ID_ACS) | 1 << 16).to_le_bytes());
            c[0x14c..0x14e].copy_from_slice(&0x5fu16.to_le_bytes());
            c[0x14e..0x150].copy_from_slice(&ctrl.to_le_bytes());
        }
        c
    }

    #[test]
    fn finds_port_type_and_acs_behind_another_extended_capability() {
        let p = parse_config(&config(4, Some(ACS_RR | 1)));
        assert_eq!(p.port_type, Some(PortType::RootPort));
        assert_eq!(
            p.acs,
            AcsState::Present {
                offset: 0x148,
                capability: 0x5f,
                control: ACS_RR | 1
            }
        );
        assert_eq!(p.acs.redirects(), Some(true));
        assert_eq!(p.acs.redirect_bits(), vec!["RR"]);
    }

    #[test]
    fn source_validation_alone_does_not_redirect() {
        // Bit 0 (Source Validation) and bit 4 (Upstream Forwarding) are not redirect bits.
        let p = parse_config(&config(6, Some(0b1_0001)));
        assert_eq!(p.acs.redirects(), Some(false));
        for bit in [ACS_RR, ACS_CR, ACS_EC] {
            assert_eq!(
                parse_config(&config(6, Some(bit))).acs.redirects(),
                Some(true)
            );
        }
    }

    #[test]
    fn short_config_is_unknown_and_256_bytes_is_absent() {
        let full = config(0, Some(ACS_EC));
        let p = parse_config(&full[..64]);
        assert_eq!(p.acs.redirects(), None);
        assert!(matches!(p.acs, AcsState::Unknown { ref reason } if reason.contains("64 bytes")));
        assert_eq!(parse_config(&full[..256]).acs, AcsState::Absent);
        assert_eq!(parse_config(&config(0, None)).acs, AcsState::Absent);
    }

    #[test]
    fn capability_loops_terminate() {
        let mut c = config(0, None);
        c[0x41] = 0x40; // standard list points at itself
        c[0x40] = 0x05;
        c[0x100..0x104].copy_from_slice(&(0x0001u32 | 0x100 << 20).to_le_bytes());
        let p = parse_config(&c);
        assert_eq!(p.port_type, None);
        assert_eq!(p.acs, AcsState::Absent);
    }

    #[test]
    fn bandwidth_accounts_for_encoding() {
        let gen1 = Link {
            speed_gts: 2.5,
            width: 1,
        };
        assert!((gen1.bandwidth_gbps() - 0.25).abs() < 1e-9);
        let gen3x4 = Link {
            speed_gts: 8.0,
            width: 4,
        };
        assert!((gen3x4.bandwidth_gbps() - 3.938_461).abs() < 1e-5);
    }
}
