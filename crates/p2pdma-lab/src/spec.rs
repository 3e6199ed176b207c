//! Lab topologies: the TOML schema, its validation, and the QEMU devices it becomes.
//!
//! Everything here is pure: a [`Topology`] turns into QEMU arguments without touching
//! the host, so the mapping is unit-tested.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The topologies shipped with p2pdma (`lab/topologies.toml`).
pub const SHIPPED_TOPOLOGIES: &str = include_str!("../../../lab/topologies.toml");

/// What can be wrong with a topology file or a topology in it.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read topology file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for the schema.
    #[error("topology file {origin} is malformed: {message}")]
    Parse {
        /// Where the text came from.
        origin: String,
        /// The parser's message (line and column included).
        message: String,
    },
    /// A topology breaks a rule of the schema.
    #[error("topology '{topology}' is invalid: {problem}")]
    Invalid {
        /// The topology's name.
        topology: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// No topology has that name.
    #[error("unknown topology '{name}'; known topologies: {known} (add your own in {user_file})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names that exist, comma separated.
        known: String,
        /// Where a user can add topologies.
        user_file: String,
    },
}

/// The kind of a PCIe bridge the lab can emulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BridgeKind {
    /// A root port on the root complex (QEMU `pcie-root-port`, with ACS and link settings).
    RootPort,
    /// The upstream port of a switch (QEMU `x3130-upstream`).
    SwitchUpstream,
    /// A downstream port of a switch (QEMU `xio3130-downstream`, no ACS).
    SwitchDownstream,
}

/// A link speed a root port can train at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkSpeed {
    /// 2.5 GT/s (PCIe 1).
    #[serde(rename = "2.5")]
    Gen1,
    /// 5 GT/s (PCIe 2).
    #[serde(rename = "5")]
    Gen2,
    /// 8 GT/s (PCIe 3).
    #[serde(rename = "8")]
    Gen3,
    /// 16 GT/s (PCIe 4).
    #[serde(rename = "16")]
    Gen4,
}

impl LinkSpeed {
    fn qemu_value(self) -> &'static str {
        match self {
            LinkSpeed::Gen1 => "2_5",
            LinkSpeed::Gen2 => "5",
            LinkSpeed::Gen3 => "8",
            LinkSpeed::Gen4 => "16",
        }
    }
}

/// A PCIe bridge (root port or switch port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bridge {
    /// QEMU id; children name it as their parent.
    pub id: String,
    /// What it is.
    pub kind: BridgeKind,
    /// `pcie.0` or the id of another bridge.
    pub parent: String,
    /// Slot (and function) on the parent bus, e.g. `"1"` or `"1.0"`.
    #[serde(default)]
    pub addr: Option<String>,
    /// Root ports only: expose the ACS capability.
    #[serde(default)]
    pub acs: Option<bool>,
    /// Root ports only: link speed.
    #[serde(default)]
    pub speed: Option<LinkSpeed>,
    /// Root ports only: link width in lanes.
    #[serde(default)]
    pub width: Option<u8>,
}

/// An emulated NVMe controller with one namespace backed by a sparse disk image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nvme {
    /// QEMU id, also used for `device_del` fault injection.
    pub id: String,
    /// Serial number: how tests and users find the controller inside the guest.
    pub serial: String,
    /// `pcie.0` or a root port or switch downstream port id.
    pub parent: String,
    /// Slot (and function) on the parent bus.
    #[serde(default)]
    pub addr: Option<String>,
    /// Function 0 of a multi-function slot.
    #[serde(default)]
    pub multifunction: bool,
    /// Controller Memory Buffer size in MiB; 0 means no CMB.
    #[serde(default)]
    pub cmb_mib: u32,
    /// Namespace size in MiB.
    #[serde(default = "default_disk_mib")]
    pub disk_mib: u64,
    /// Format the disk image on the host before boot.
    #[serde(default)]
    pub format: Option<DiskFormat>,
    /// NVM subsystem: controllers naming the same subsystem are two paths to ONE shared
    /// namespace (QEMU `nvme-subsys` with a shared `nvme-ns`), which a kernel with native
    /// multipath shows as one head disk; members share one `serial` (a subsystem has one
    /// serial number) and agree on `disk_mib` and `format`.
    /// Without it each controller is its own subsystem with its own namespace.
    #[serde(default)]
    pub subsystem: Option<String>,
}

/// A RAM-backed p2pmem provider: QEMU's `ivshmem-plain` device on a `memory-backend-ram`
/// object, which the lab kernel's `p2pdma_ram` driver publishes as p2pmem. DMA into it is
/// a memory copy in QEMU, unlike an NVMe CMB, which QEMU serves as MMIO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ram {
    /// QEMU id of the ivshmem-plain device, also used for `device_del` fault injection.
    pub id: String,
    /// `pcie.0` or a root port or switch downstream port id.
    pub parent: String,
    /// Slot (and function) on the parent bus.
    #[serde(default)]
    pub addr: Option<String>,
    /// Size of the memory (BAR 2) in MiB: a power of two (QEMU sizes BARs so).
    pub size_mib: u32,
}

/// The largest RAM provider a topology may declare, in MiB.
pub const MAX_RAM_MIB: u32 = 2048;

impl Ram {
    /// The id of the `memory-backend-ram` object behind this device.
    pub fn memdev_id(&self) -> String {
        format!("mem-{}", self.id)
    }
}

fn default_disk_mib() -> u64 {
    64
}

/// A file system the lab can put on a disk image before boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// `mkfs.ext4` on the host.
    Ext4,
}

/// One lab topology as written in TOML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologySpec {
    /// What it shows.
    pub description: String,
    /// QEMU CPU model.
    #[serde(default = "default_cpu")]
    pub cpu: String,
    /// Guest RAM in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// Emulate an Intel IOMMU and turn it on in the guest.
    #[serde(default)]
    pub iommu: bool,
    /// Extra kernel command line arguments.
    #[serde(default)]
    pub kernel_args: Vec<String>,
    /// Bridges, parents before children.
    #[serde(default)]
    pub bridge: Vec<Bridge>,
    /// NVMe controllers.
    #[serde(default)]
    pub nvme: Vec<Nvme>,
    /// RAM-backed p2pmem providers (ivshmem-plain).
    #[serde(default)]
    pub ram: Vec<Ram>,
}

/// QEMU's `qemu64` model calls itself AuthenticAMD family 0xf unless told otherwise; an
/// Intel vendor string makes the default machine what it looks like: an Intel q35.
fn default_cpu() -> String {
    "qemu64,vendor=GenuineIntel".to_owned()
}

fn default_memory_mib() -> u32 {
    1024
}

/// A validated topology with its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// Its name in the file.
    pub name: String,
    /// Its content.
    #[serde(flatten)]
    pub spec: TopologySpec,
}

/// A QEMU device to create, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QemuItem {
    /// `-object <args>`.
    Object(String),
    /// `-device <args>`.
    Device(String),
    /// A disk image for an NVMe namespace: `-drive` plus the image to create.
    Drive {
        /// The drive id the NVMe device refers to.
        drive_id: String,
        /// The NVMe id this image belongs to (names the image file).
        nvme_id: String,
        /// Size in bytes.
        bytes: u64,
        /// Format before boot.
        format: Option<DiskFormat>,
    },
}

/// All topologies known to this run: the shipped ones, then user files overriding them.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    topologies: BTreeMap<String, TopologySpec>,
    user_file_hint: String,
}

impl Catalog {
    /// The shipped topologies plus, if they exist, the user's file and any extra files.
    pub fn load(user_file: Option<&Path>, extra_files: &[PathBuf]) -> Result<Catalog, SpecError> {
        let mut catalog = Catalog::default();
        catalog.merge_str(SHIPPED_TOPOLOGIES, "lab/topologies.toml (shipped)")?;
        if let Some(path) = user_file {
            catalog.user_file_hint = path.display().to_string();
            match std::fs::read_to_string(path) {
                Ok(text) => catalog.merge_str(&text, &path.display().to_string())?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(SpecError::Read {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        }
        for path in extra_files {
            let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
                path: path.clone(),
                source,
            })?;
            catalog.merge_str(&text, &path.display().to_string())?;
        }
        Ok(catalog)
    }

    /// Adds (or replaces) the topologies in `text`; each one is validated.
    pub fn merge_str(&mut self, text: &str, origin: &str) -> Result<(), SpecError> {
        let parsed: BTreeMap<String, TopologySpec> =
            toml::from_str(text).map_err(|e| SpecError::Parse {
                origin: origin.to_owned(),
                message: e.to_string().trim().replace('\n', " "),
            })?;
        for (name, spec) in parsed {
            validate(&name, &spec)?;
            self.topologies.insert(name, spec);
        }
        Ok(())
    }

    /// The topology called `name`.
    pub fn get(&self, name: &str) -> Result<Topology, SpecError> {
        match self.topologies.get(name) {
            Some(spec) => Ok(Topology {
                name: name.to_owned(),
                spec: spec.clone(),
            }),
            None => Err(SpecError::Unknown {
                name: name.to_owned(),
                known: self.names().join(", "),
                user_file: if self.user_file_hint.is_empty() {
                    "a file passed with --topologies".to_owned()
                } else {
                    self.user_file_hint.clone()
                },
            }),
        }
    }

    /// Every topology name, sorted.
    pub fn names(&self) -> Vec<String> {
        self.topologies.keys().cloned().collect()
    }

    /// Every topology, sorted by name.
    pub fn all(&self) -> Vec<Topology> {
        self.topologies
            .iter()
            .map(|(name, spec)| Topology {
                name: name.clone(),
                spec: spec.clone(),
            })
            .collect()
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn valid_addr(addr: &str) -> bool {
    let (slot, function) = match addr.split_once('.') {
        Some((s, f)) => (s, Some(f)),
        None => (addr, None),
    };
    let slot_ok = u8::from_str_radix(slot, 16).is_ok_and(|s| s < 32) && slot.len() <= 2;
    let function_ok = function.is_none_or(|f| f.len() == 1 && f.parse::<u8>().is_ok_and(|f| f < 8));
    slot_ok && function_ok
}

fn validate(name: &str, spec: &TopologySpec) -> Result<(), SpecError> {
    let invalid = |problem: String| SpecError::Invalid {
        topology: name.to_owned(),
        problem,
    };
    if !valid_id(name) {
        return Err(invalid(
            "topology names use lowercase letters, digits and '-'".to_owned(),
        ));
    }
    if spec.nvme.is_empty() {
        return Err(invalid("it has no [[nvme]] controller".to_owned()));
    }
    if !(256..=16384).contains(&spec.memory_mib) {
        return Err(invalid(format!(
            "memory_mib = {} is outside 256..=16384",
            spec.memory_mib
        )));
    }
    let mut kinds: HashMap<&str, BridgeKind> = HashMap::new();
    let mut ids = HashSet::new();
    let mut children: HashMap<&str, usize> = HashMap::new();
    for bridge in &spec.bridge {
        if !valid_id(&bridge.id) || bridge.id == "pcie" {
            return Err(invalid(format!(
                "bridge id '{}' must be lowercase letters, digits and '-', starting with a letter",
                bridge.id
            )));
        }
        if !ids.insert(bridge.id.as_str()) {
            return Err(invalid(format!("id '{}' is used twice", bridge.id)));
        }
        let parent_ok = match (bridge.kind, parent_kind(&kinds, &bridge.parent)) {
            (BridgeKind::RootPort, ParentKind::RootBus) => true,
            (BridgeKind::SwitchUpstream, ParentKind::Bridge(BridgeKind::RootPort))
            | (BridgeKind::SwitchUpstream, ParentKind::Bridge(BridgeKind::SwitchDownstream)) => {
                true
            }
            (BridgeKind::SwitchDownstream, ParentKind::Bridge(BridgeKind::SwitchUpstream)) => true,
            (_, ParentKind::Unknown) => {
                return Err(invalid(format!(
                    "bridge '{}' names parent '{}', which is neither pcie.0 nor a bridge declared before it",
                    bridge.id, bridge.parent
                )))
            }
            _ => false,
        };
        if !parent_ok {
            return Err(invalid(format!(
                "a {:?} cannot sit on '{}' (root ports go on pcie.0, switch upstream ports on a root or downstream port, downstream ports on an upstream port)",
                bridge.kind, bridge.parent
            )));
        }
        if bridge.kind != BridgeKind::RootPort
            && (bridge.acs.is_some() || bridge.speed.is_some() || bridge.width.is_some())
        {
            return Err(invalid(format!(
                "bridge '{}': acs, speed and width can only be set on root ports (QEMU's switch ports have no such settings)",
                bridge.id
            )));
        }
        if let Some(width) = bridge.width {
            if ![1, 2, 4, 8, 12, 16, 32].contains(&width) {
                return Err(invalid(format!(
                    "bridge '{}': width {width} is not one of 1, 2, 4, 8, 12, 16, 32",
                    bridge.id
                )));
            }
        }
        if let Some(addr) = &bridge.addr {
            if !valid_addr(addr) {
                return Err(invalid(format!(
                    "bridge '{}': addr '{addr}' is not SLOT or SLOT.FUNCTION (hex slot < 20, function < 8)",
                    bridge.id
                )));
            }
        }
        *children.entry(bridge.parent.as_str()).or_default() += 1;
        kinds.insert(bridge.id.as_str(), bridge.kind);
    }
    let mut serials = HashSet::new();
    for nvme in &spec.nvme {
        if !valid_id(&nvme.id) {
            return Err(invalid(format!(
                "nvme id '{}' must be lowercase letters, digits and '-', starting with a letter",
                nvme.id
            )));
        }
        if !ids.insert(nvme.id.as_str()) {
            return Err(invalid(format!("id '{}' is used twice", nvme.id)));
        }
        if nvme.serial.is_empty()
            || nvme.serial.len() > 20
            || !nvme.serial.chars().all(|c| c.is_ascii_graphic())
        {
            return Err(invalid(format!(
                "nvme '{}': serial '{}' must be 1 to 20 printable ASCII characters",
                nvme.id, nvme.serial
            )));
        }
        // One subsystem, one serial number (QEMU refuses members whose serials differ):
        // a serial names a lone controller or a whole subsystem.
        if !serials.insert((nvme.serial.as_str(), nvme.subsystem.as_deref()))
            && nvme.subsystem.is_none()
        {
            return Err(invalid(format!(
                "serial '{}' is used twice: serials are how the guest tells controllers apart",
                nvme.serial
            )));
        }
        if serials.iter().any(|(serial, subsystem)| {
            *serial == nvme.serial && *subsystem != nvme.subsystem.as_deref()
        }) {
            return Err(invalid(format!(
                "serial '{}' names two different subsystems or controllers: serials are how the guest tells them apart",
                nvme.serial
            )));
        }
        match parent_kind(&kinds, &nvme.parent) {
            ParentKind::RootBus
            | ParentKind::Bridge(BridgeKind::RootPort)
            | ParentKind::Bridge(BridgeKind::SwitchDownstream) => {}
            ParentKind::Bridge(BridgeKind::SwitchUpstream) => {
                return Err(invalid(format!(
                "nvme '{}' cannot sit on switch upstream port '{}': put it on a downstream port",
                nvme.id, nvme.parent
            )))
            }
            ParentKind::Unknown => {
                return Err(invalid(format!(
                    "nvme '{}' names parent '{}', which is neither pcie.0 nor a declared bridge",
                    nvme.id, nvme.parent
                )))
            }
        }
        if let Some(addr) = &nvme.addr {
            if !valid_addr(addr) {
                return Err(invalid(format!(
                    "nvme '{}': addr '{addr}' is not SLOT or SLOT.FUNCTION",
                    nvme.id
                )));
            }
        }
        if nvme.disk_mib == 0 || nvme.disk_mib > 64 * 1024 {
            return Err(invalid(format!(
                "nvme '{}': disk_mib must be 1..=65536",
                nvme.id
            )));
        }
        if nvme.cmb_mib > 2048 {
            return Err(invalid(format!(
                "nvme '{}': cmb_mib {} is larger than 2048",
                nvme.id, nvme.cmb_mib
            )));
        }
        if nvme.format.is_some() && nvme.disk_mib < 8 {
            return Err(invalid(format!(
                "nvme '{}': a formatted disk needs disk_mib >= 8",
                nvme.id
            )));
        }
        if let Some(subsystem) = &nvme.subsystem {
            if !valid_id(subsystem) {
                return Err(invalid(format!(
                    "nvme '{}': subsystem '{subsystem}' must be lowercase letters, digits and '-', starting with a letter",
                    nvme.id
                )));
            }
            let first = spec
                .nvme
                .iter()
                .find(|n| n.subsystem.as_ref() == Some(subsystem))
                .unwrap_or(nvme);
            if (first.disk_mib, first.format) != (nvme.disk_mib, nvme.format) {
                return Err(invalid(format!(
                    "nvme '{}' and '{}' share subsystem '{subsystem}', hence one namespace: give them the same disk_mib and format",
                    first.id, nvme.id
                )));
            }
            if first.serial != nvme.serial {
                return Err(invalid(format!(
                    "nvme '{}' and '{}' share subsystem '{subsystem}': give them the same serial (an NVM subsystem has one serial number)",
                    first.id, nvme.id
                )));
            }
        }
    }
    for ram in &spec.ram {
        if !valid_id(&ram.id) {
            return Err(invalid(format!(
                "ram id '{}' must be lowercase letters, digits and '-', starting with a letter",
                ram.id
            )));
        }
        if !ids.insert(ram.id.as_str()) {
            return Err(invalid(format!("id '{}' is used twice", ram.id)));
        }
        match parent_kind(&kinds, &ram.parent) {
            ParentKind::RootBus
            | ParentKind::Bridge(BridgeKind::RootPort)
            | ParentKind::Bridge(BridgeKind::SwitchDownstream) => {}
            ParentKind::Bridge(BridgeKind::SwitchUpstream) => {
                return Err(invalid(format!(
                    "ram '{}' cannot sit on switch upstream port '{}': put it on a downstream port",
                    ram.id, ram.parent
                )))
            }
            ParentKind::Unknown => {
                return Err(invalid(format!(
                    "ram '{}' names parent '{}', which is neither pcie.0 nor a declared bridge",
                    ram.id, ram.parent
                )))
            }
        }
        if let Some(addr) = &ram.addr {
            if !valid_addr(addr) {
                return Err(invalid(format!(
                    "ram '{}': addr '{addr}' is not SLOT or SLOT.FUNCTION",
                    ram.id
                )));
            }
        }
        if !ram.size_mib.is_power_of_two() || ram.size_mib > MAX_RAM_MIB {
            return Err(invalid(format!(
                "ram '{}': size_mib {} must be a power of two from 1 to {MAX_RAM_MIB} (it becomes a PCI BAR)",
                ram.id, ram.size_mib
            )));
        }
    }
    for nvme in &spec.nvme {
        if let Some(subsystem) = &nvme.subsystem {
            if ids.contains(subsystem.as_str()) {
                return Err(invalid(format!(
                    "subsystem '{subsystem}' has the id of a device: give it a name of its own"
                )));
            }
        }
    }
    Ok(())
}

enum ParentKind {
    RootBus,
    Bridge(BridgeKind),
    Unknown,
}

fn parent_kind(kinds: &HashMap<&str, BridgeKind>, parent: &str) -> ParentKind {
    if parent == "pcie.0" {
        ParentKind::RootBus
    } else {
        kinds
            .get(parent)
            .map_or(ParentKind::Unknown, |k| ParentKind::Bridge(*k))
    }
}

impl Topology {
    /// The QEMU devices and drives this topology needs, in creation order.
    ///
    /// Chassis and slot numbers of hot-pluggable ports are assigned in declaration order,
    /// so a file always yields the same guest bus numbers.
    pub fn qemu_items(&self) -> Vec<QemuItem> {
        let mut items = Vec::new();
        if self.spec.iommu {
            // QEMU wants the vIOMMU before any PCI device it translates for.
            items.push(QemuItem::Device("intel-iommu,intremap=off".to_owned()));
        }
        let mut chassis = 0u32;
        for bridge in &self.spec.bridge {
            let mut args = match bridge.kind {
                BridgeKind::RootPort => {
                    chassis += 1;
                    format!(
                        "pcie-root-port,id={},bus={},chassis={chassis},slot={chassis}",
                        bridge.id, bridge.parent
                    )
                }
                BridgeKind::SwitchUpstream => {
                    format!("x3130-upstream,id={},bus={}", bridge.id, bridge.parent)
                }
                BridgeKind::SwitchDownstream => {
                    chassis += 1;
                    format!(
                        "xio3130-downstream,id={},bus={},chassis={chassis},slot={chassis}",
                        bridge.id, bridge.parent
                    )
                }
            };
            if let Some(addr) = &bridge.addr {
                args.push_str(&format!(",addr={addr}"));
            }
            if bridge.acs == Some(false) {
                args.push_str(",disable-acs=on");
            }
            if let Some(speed) = bridge.speed {
                args.push_str(&format!(",x-speed={}", speed.qemu_value()));
            }
            if let Some(width) = bridge.width {
                args.push_str(&format!(",x-width={width}"));
            }
            items.push(QemuItem::Device(args));
        }
        for (index, nvme) in self.spec.nvme.iter().enumerate() {
            let mut args = match &nvme.subsystem {
                None => {
                    let drive_id = format!("drive-{}", nvme.id);
                    items.push(QemuItem::Drive {
                        drive_id: drive_id.clone(),
                        nvme_id: nvme.id.clone(),
                        bytes: nvme.disk_mib * 1024 * 1024,
                        format: nvme.format,
                    });
                    format!(
                        "nvme,id={},serial={},drive={drive_id},bus={}",
                        nvme.id, nvme.serial, nvme.parent
                    )
                }
                Some(subsystem) => {
                    if self.subsystem_members(subsystem).next().map(|(i, _)| i) == Some(index) {
                        items.push(QemuItem::Device(format!(
                            "nvme-subsys,id={subsystem},nqn={subsystem}"
                        )));
                    }
                    format!(
                        "nvme,id={},serial={},subsys={subsystem},bus={}",
                        nvme.id, nvme.serial, nvme.parent
                    )
                }
            };
            if let Some(addr) = &nvme.addr {
                args.push_str(&format!(",addr={addr}"));
            }
            if nvme.multifunction {
                args.push_str(",multifunction=on");
            }
            if nvme.cmb_mib > 0 {
                args.push_str(&format!(",cmb_size_mb={}", nvme.cmb_mib));
            }
            items.push(QemuItem::Device(args));
            if let Some(subsystem) = &nvme.subsystem {
                // The shared namespace comes after the subsystem's last controller; QEMU
                // attaches a shared namespace to every controller of its subsystem.
                if self.subsystem_members(subsystem).last().map(|(i, _)| i) == Some(index) {
                    let (_, first) = self
                        .subsystem_members(subsystem)
                        .next()
                        .unwrap_or((index, nvme));
                    let drive_id = format!("drive-{subsystem}");
                    items.push(QemuItem::Drive {
                        drive_id: drive_id.clone(),
                        nvme_id: first.id.clone(),
                        bytes: first.disk_mib * 1024 * 1024,
                        format: first.format,
                    });
                    items.push(QemuItem::Device(format!(
                        "nvme-ns,drive={drive_id},bus={},nsid=1,shared=on",
                        first.id
                    )));
                }
            }
        }
        for ram in &self.spec.ram {
            items.push(QemuItem::Object(format!(
                "memory-backend-ram,id={},size={}M",
                ram.memdev_id(),
                ram.size_mib
            )));
            let mut args = format!(
                "ivshmem-plain,id={},memdev={},bus={}",
                ram.id,
                ram.memdev_id(),
                ram.parent
            );
            if let Some(addr) = &ram.addr {
                args.push_str(&format!(",addr={addr}"));
            }
            items.push(QemuItem::Device(args));
        }
        items
    }

    /// The ids of the NVMe controllers (whose drives a `throttle` fault can slow down).
    pub fn nvme_ids(&self) -> Vec<&str> {
        self.spec.nvme.iter().map(|n| n.id.as_str()).collect()
    }

    /// The controllers of `subsystem`, with their index in the topology, in order.
    fn subsystem_members<'a>(
        &'a self,
        subsystem: &'a str,
    ) -> impl Iterator<Item = (usize, &'a Nvme)> + 'a {
        self.spec
            .nvme
            .iter()
            .enumerate()
            .filter(move |(_, n)| n.subsystem.as_deref() == Some(subsystem))
    }

    /// The ids of the devices `device_del` can remove: NVMe controllers and RAM providers.
    pub fn removable_ids(&self) -> Vec<&str> {
        self.nvme_ids()
            .into_iter()
            .chain(self.spec.ram.iter().map(|r| r.id.as_str()))
            .collect()
    }

    /// Kernel command line arguments this topology needs.
    pub fn kernel_args(&self) -> Vec<String> {
        // PRP lists instead of SGLs: QEMU's NVMe refuses an SGL-described request of two
        // or more segments whose data lies in the controller's own CMB (status 0x12,
        // Invalid Use of CMB), and whether the block layer merges two adjacent requests
        // into one is a matter of timing, so lab runs would fail now and then for a
        // reason that is QEMU's (BENCHMARKS.md, "bench" section). Topologies that want
        // SGLs pass `nvme.sgl_threshold=N` in their kernel_args; the last one counts.
        let mut args = vec!["nvme.sgl_threshold=0".to_owned()];
        if self.spec.iommu {
            args.push("intel_iommu=on".to_owned());
        }
        args.extend(self.spec.kernel_args.iter().cloned());
        args
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.spec.description)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Catalog {
        let mut c = Catalog::default();
        c.merge_str(SHIPPED_TOPOLOGIES, "shipped").unwrap();
        c
    }

    #[test]
    fn shipped_file_has_the_topologies_the_lab_promises() {
        let names = shipped().names();
        for wanted in [
            "switch",
            "rootbus",
            "rootbus-amd",
            "mixed",
            "cascade",
            "acs",
            "slow-link",
            "fast",
        ] {
            assert!(
                names.iter().any(|n| n == wanted),
                "{wanted} missing from {names:?}"
            );
        }
    }

    #[test]
    fn switch_becomes_root_port_switch_and_two_cmb_controllers() {
        let topo = shipped().get("switch").unwrap();
        let devices: Vec<String> = topo
            .qemu_items()
            .into_iter()
            .filter_map(|i| match i {
                QemuItem::Device(d) => Some(d),
                QemuItem::Drive { .. } | QemuItem::Object(_) => None,
            })
            .collect();
        assert_eq!(
            devices,
            [
                "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,addr=1,x-speed=8,x-width=4",
                "x3130-upstream,id=up1,bus=rp1",
                "xio3130-downstream,id=dn1,bus=up1,chassis=2,slot=2",
                "xio3130-downstream,id=dn2,bus=up1,chassis=3,slot=3",
                "nvme,id=nvme-a,serial=sw0,drive=drive-nvme-a,bus=dn1,cmb_size_mb=16",
                "nvme,id=nvme-b,serial=sw1,drive=drive-nvme-b,bus=dn2,cmb_size_mb=16",
            ]
        );
    }

    #[test]
    fn fast_has_a_ram_provider_beside_the_cmb_pair() {
        let topo = shipped().get("fast").unwrap();
        let items = topo.qemu_items();
        let object = items
            .iter()
            .position(|i| {
                *i == QemuItem::Object("memory-backend-ram,id=mem-ram-a,size=256M".into())
            })
            .expect("the memory backend");
        let device = items
            .iter()
            .position(|i| {
                *i == QemuItem::Device("ivshmem-plain,id=ram-a,memdev=mem-ram-a,bus=dn3".into())
            })
            .expect("the ivshmem-plain device");
        assert!(object < device, "the backend must exist before its device");
        assert_eq!(topo.spec.nvme.len(), 2);
        assert!(topo.spec.nvme.iter().all(|n| n.cmb_mib > 0));
        assert_eq!(topo.removable_ids(), ["nvme-a", "nvme-b", "ram-a"]);
    }

    #[test]
    fn ram_providers_are_validated_with_the_reason() {
        let base = "[t]\ndescription='x'\nnvme=[{id='a',serial='s',parent='pcie.0'}]\n";
        let ok = |ram: &str| {
            let mut c = Catalog::default();
            c.merge_str(&format!("{base}{ram}"), "test").map(|_| c)
        };
        let c = ok("ram=[{id='r',parent='pcie.0',addr='6',size_mib=64}]").unwrap();
        assert_eq!(
            c.get("t").unwrap().qemu_items()[2..],
            [
                QemuItem::Object("memory-backend-ram,id=mem-r,size=64M".into()),
                QemuItem::Device("ivshmem-plain,id=r,memdev=mem-r,bus=pcie.0,addr=6".into()),
            ]
        );
        for (ram, wanted) in [
            (
                "ram=[{id='r',parent='pcie.0',size_mib=96}]",
                "size_mib 96 must be a power of two",
            ),
            (
                "ram=[{id='r',parent='pcie.0',size_mib=0}]",
                "size_mib 0 must be a power of two",
            ),
            (
                "ram=[{id='r',parent='pcie.0',size_mib=4096}]",
                "from 1 to 2048",
            ),
            (
                "ram=[{id='a',parent='pcie.0',size_mib=8}]",
                "id 'a' is used twice",
            ),
            (
                "ram=[{id='r',parent='dn9',size_mib=8}]",
                "names parent 'dn9'",
            ),
            (
                "ram=[{id='r',parent='pcie.0',addr='40',size_mib=8}]",
                "addr '40'",
            ),
            ("ram=[{id='R',parent='pcie.0',size_mib=8}]", "ram id 'R'"),
            ("ram=[{id='r',parent='pcie.0'}]", "size_mib"),
        ] {
            let err = ok(ram).unwrap_err().to_string();
            assert!(err.contains(wanted), "{ram}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn controllers_of_one_subsystem_share_one_namespace_after_the_last_of_them() {
        let mut catalog = Catalog::default();
        catalog
            .merge_str(
                "[mp]\ndescription='x'\nnvme=[
                  {id='a',serial='a0',parent='pcie.0',subsystem='ss0',cmb_mib=16,disk_mib=32},
                  {id='lone',serial='l0',parent='pcie.0'},
                  {id='b',serial='a0',parent='pcie.0',subsystem='ss0',disk_mib=32}]",
                "test",
            )
            .unwrap();
        let items = catalog.get("mp").unwrap().qemu_items();
        let device = |i: &QemuItem| match i {
            QemuItem::Device(d) => d.clone(),
            QemuItem::Drive {
                drive_id,
                nvme_id,
                bytes,
                ..
            } => format!("drive {drive_id} {nvme_id} {bytes}"),
            QemuItem::Object(o) => o.clone(),
        };
        assert_eq!(
            items.iter().map(device).collect::<Vec<_>>(),
            [
                "nvme-subsys,id=ss0,nqn=ss0",
                "nvme,id=a,serial=a0,subsys=ss0,bus=pcie.0,cmb_size_mb=16",
                "drive drive-lone lone 67108864",
                "nvme,id=lone,serial=l0,drive=drive-lone,bus=pcie.0",
                "nvme,id=b,serial=a0,subsys=ss0,bus=pcie.0",
                "drive drive-ss0 a 33554432",
                "nvme-ns,drive=drive-ss0,bus=a,nsid=1,shared=on",
            ]
        );
    }

    #[test]
    fn subsystem_members_must_agree_on_their_one_namespace() {
        let err = invalid(
            "[t]\ndescription='x'\nnvme=[{id='a',serial='a',parent='pcie.0',subsystem='ss'},{id='b',serial='a',parent='pcie.0',subsystem='ss',disk_mib=8}]",
        );
        assert!(
            err.contains("'a' and 'b' share subsystem 'ss'") && err.contains("same disk_mib"),
            "{err}"
        );
        let err = invalid(
            "[t]\ndescription='x'\nnvme=[{id='a',serial='a',parent='pcie.0',subsystem='a'}]",
        );
        assert!(
            err.contains("subsystem 'a' has the id of a device"),
            "{err}"
        );
        let err = invalid(
            "[t]\ndescription='x'\nnvme=[{id='a',serial='a',parent='pcie.0',subsystem='S S'}]",
        );
        assert!(err.contains("subsystem 'S S'"), "{err}");
    }

    #[test]
    fn iommu_topology_puts_the_iommu_first_and_turns_it_on() {
        let topo = shipped().get("acs").unwrap();
        assert_eq!(
            topo.qemu_items()[0],
            QemuItem::Device("intel-iommu,intremap=off".into())
        );
        assert_eq!(
            topo.kernel_args(),
            ["nvme.sgl_threshold=0", "intel_iommu=on"]
        );
    }

    #[test]
    fn unknown_topology_lists_the_known_ones() {
        let err = shipped().get("nope").unwrap_err().to_string();
        assert!(err.contains("unknown topology 'nope'"), "{err}");
        assert!(err.contains("switch"), "{err}");
    }

    fn invalid(text: &str) -> String {
        let mut c = Catalog::default();
        c.merge_str(text, "test").unwrap_err().to_string()
    }

    #[test]
    fn rejects_bad_structure_with_the_reason() {
        let e = invalid("[t]\ndescription='x'\nnvme=[{id='a',serial='s',parent='nowhere'}]");
        assert!(e.contains("names parent 'nowhere'"), "{e}");
        let e = invalid(
            "[t]\ndescription='x'\nbridge=[{id='up',kind='switch-upstream',parent='pcie.0'}]\nnvme=[{id='a',serial='s',parent='pcie.0'}]",
        );
        assert!(e.contains("cannot sit on 'pcie.0'"), "{e}");
        let e = invalid("[t]\ndescription='x'\nnvme=[{id='a',serial='s',parent='pcie.0'},{id='b',serial='s',parent='pcie.0'}]");
        assert!(e.contains("serial 's' is used twice"), "{e}");
        let e =
            invalid("[t]\ndescription='x'\nnvme=[{id='a',serial='s',parent='pcie.0',addr='zz'}]");
        assert!(e.contains("addr 'zz'"), "{e}");
        let e = invalid("[t]\ndescription='x'\ncolour='red'\nnvme=[]");
        assert!(e.contains("malformed") && e.contains("colour"), "{e}");
        let e = invalid("[t]\ndescription='x'\n");
        assert!(e.contains("no [[nvme]]"), "{e}");
    }

    #[test]
    fn user_topologies_replace_shipped_ones_by_name() {
        let mut c = shipped();
        c.merge_str(
            "[switch]\ndescription='mine'\nnvme=[{id='a',serial='only',parent='pcie.0',cmb_mib=4}]",
            "user",
        )
        .unwrap();
        assert_eq!(c.get("switch").unwrap().spec.description, "mine");
    }
}
