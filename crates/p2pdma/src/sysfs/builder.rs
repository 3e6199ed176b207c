//! Writing synthetic sysfs trees (unit tests, benchmarks, fuzzing, documentation).
//!
//! The builder writes the same files and symlinks the kernel shows (and
//! [`crate::snapshot::take`] captures), so everything downstream runs the real reader.
//!
//! ```no_run
//! use p2pdma::sysfs::builder::{FunctionSpec, SysfsBuilder};
//! let mut b = SysfsBuilder::new("/tmp/fake-sys").unwrap();
//! b.add(None, "0000:00:00.0", FunctionSpec::host_bridge(0x8086, 0x29c0)).unwrap();
//! let rp = b.add(None, "0000:00:01.0", FunctionSpec::root_port()).unwrap();
//! b.add(Some(rp), "0000:01:00.0", FunctionSpec::nvme().p2pmem(16 << 20)).unwrap();
//! ```

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::host::HostFacts;
use crate::Bdf;

/// What to write for one function.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    vendor: u16,
    device: u16,
    class: u32,
    port_type: Option<u8>,
    acs_control: Option<u16>,
    config_len: usize,
    link: Option<(f32, u8)>,
    p2pmem: Option<(u64, u64, bool)>,
    driver: Option<String>,
    physfn: Option<Bdf>,
    iommu_group: Option<u32>,
    nvme: Option<(String, String, Vec<String>)>,
    root_bus: Option<String>,
}

impl FunctionSpec {
    fn new(vendor: u16, device: u16, class: u32, port_type: Option<u8>) -> Self {
        FunctionSpec {
            vendor,
            device,
            class,
            port_type,
            acs_control: None,
            config_len: 4096,
            link: None,
            p2pmem: None,
            driver: None,
            physfn: None,
            iommu_group: None,
            nvme: None,
            root_bus: None,
        }
    }

    /// A host bridge device (class 0x060000) with these IDs.
    pub fn host_bridge(vendor: u16, device: u16) -> Self {
        Self::new(vendor, device, 0x060000, None)
    }

    /// A PCIe root port (QEMU's pcie-root-port IDs).
    pub fn root_port() -> Self {
        Self::new(0x1b36, 0x000c, 0x060400, Some(4)).driver("pcieport")
    }

    /// A switch upstream port.
    pub fn switch_upstream() -> Self {
        Self::new(0x104c, 0x8232, 0x060400, Some(5)).driver("pcieport")
    }

    /// A switch downstream port.
    pub fn switch_downstream() -> Self {
        Self::new(0x104c, 0x8233, 0x060400, Some(6)).driver("pcieport")
    }

    /// An NVMe controller endpoint (QEMU's IDs) bound to `nvme`.
    pub fn nvme() -> Self {
        Self::new(0x1b36, 0x0010, 0x010802, Some(0)).driver("nvme")
    }

    /// Any endpoint with this class code.
    pub fn endpoint(vendor: u16, device: u16, class: u32) -> Self {
        Self::new(vendor, device, class, Some(0))
    }

    /// An ACS capability with this control register.
    pub fn acs(mut self, control: u16) -> Self {
        self.acs_control = Some(control);
        self
    }

    /// Truncates `config` to `len` bytes (64 is what non-root readers get).
    pub fn config_len(mut self, len: usize) -> Self {
        self.config_len = len;
        self
    }

    /// Current (and maximum) link speed in GT/s and width.
    pub fn link(mut self, speed_gts: f32, width: u8) -> Self {
        self.link = Some((speed_gts, width));
        self
    }

    /// A published p2pmem pool of `size` bytes, all available.
    pub fn p2pmem(mut self, size: u64) -> Self {
        self.p2pmem = Some((size, size, true));
        self
    }

    /// A p2pmem pool with explicit `available` and `published`.
    pub fn p2pmem_full(mut self, size: u64, available: u64, published: bool) -> Self {
        self.p2pmem = Some((size, available, published));
        self
    }

    /// In this IOMMU group (an `iommu_group` link to `kernel/iommu_groups/<group>`).
    pub fn iommu_group(mut self, group: u32) -> Self {
        self.iommu_group = Some(group);
        self
    }

    /// Bound to this driver.
    pub fn driver(mut self, name: &str) -> Self {
        self.driver = Some(name.to_owned());
        self
    }

    /// A virtual function of `pf`.
    pub fn virtfn_of(mut self, pf: Bdf) -> Self {
        self.physfn = Some(pf);
        self
    }

    /// An NVMe controller `ctrl` (e.g. `nvme0`) with `serial` and namespace disks.
    pub fn nvme_controller(mut self, ctrl: &str, serial: &str, namespaces: &[&str]) -> Self {
        self.nvme = Some((
            ctrl.to_owned(),
            serial.to_owned(),
            namespaces.iter().map(|s| (*s).to_owned()).collect(),
        ));
        self
    }

    /// On this root bus (`pci0000:80`) instead of the default `pciDDDD:00`.
    pub fn root_bus(mut self, name: &str) -> Self {
        self.root_bus = Some(name.to_owned());
        self
    }

    /// The config space bytes this spec describes.
    pub fn config_bytes(&self) -> Vec<u8> {
        let mut c = vec![0u8; 4096];
        c[0..2].copy_from_slice(&self.vendor.to_le_bytes());
        c[2..4].copy_from_slice(&self.device.to_le_bytes());
        c[0x09..0x0c].copy_from_slice(&self.class.to_le_bytes()[..3]);
        if let Some(pt) = self.port_type {
            c[0x06] = 0x10;
            c[0x34] = 0x40;
            c[0x40] = 0x10;
            c[0x42..0x44].copy_from_slice(&((u16::from(pt) << 4) | 2).to_le_bytes());
        }
        if let Some(ctrl) = self.acs_control {
            c[0x100..0x104].copy_from_slice(&(0x000du32 | (1 << 16)).to_le_bytes());
            c[0x104..0x106].copy_from_slice(&0x007fu16.to_le_bytes());
            c[0x106..0x108].copy_from_slice(&ctrl.to_le_bytes());
        }
        c.truncate(self.config_len);
        c
    }
}

/// Writes a fake sysfs root.
#[derive(Debug)]
pub struct SysfsBuilder {
    root: PathBuf,
    dirs: HashMap<Bdf, PathBuf>,
    next_minor: u32,
}

fn symlink(target: impl AsRef<Path>, link: &Path) -> io::Result<()> {
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::os::unix::fs::symlink(target, link)
}

/// `../` repeated so that a link at depth `depth` below the root reaches the root.
fn up(depth: usize) -> PathBuf {
    (0..depth).map(|_| "..").collect()
}

impl SysfsBuilder {
    /// Starts a tree in `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("bus/pci/devices"))?;
        Ok(SysfsBuilder {
            root,
            dirs: HashMap::new(),
            next_minor: 0,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes `p2pdma-host.json`.
    pub fn host_facts(&mut self, facts: &HostFacts) -> io::Result<()> {
        std::fs::write(
            self.root.join(crate::host::HOST_FACTS_FILE),
            serde_json::to_vec_pretty(facts)?,
        )
    }

    /// Adds function `bdf` below bridge `parent` (or on its root bus when `None`).
    pub fn add(&mut self, parent: Option<Bdf>, bdf: &str, spec: FunctionSpec) -> io::Result<Bdf> {
        let bdf: Bdf = bdf
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let rel = match parent {
            Some(p) => self
                .dirs
                .get(&p)
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("parent {p} not added"))
                })?
                .join(bdf.to_string()),
            None => {
                let bus = spec
                    .root_bus
                    .clone()
                    .unwrap_or_else(|| format!("pci{:04x}:{:02x}", bdf.domain, bdf.bus));
                PathBuf::from("devices").join(bus).join(bdf.to_string())
            }
        };
        let dir = self.root.join(&rel);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("vendor"), format!("0x{:04x}\n", spec.vendor))?;
        std::fs::write(dir.join("device"), format!("0x{:04x}\n", spec.device))?;
        std::fs::write(dir.join("class"), format!("0x{:06x}\n", spec.class))?;
        std::fs::write(dir.join("numa_node"), "-1\n")?;
        std::fs::write(dir.join("config"), spec.config_bytes())?;
        if let Some((speed, width)) = spec.link {
            for prefix in ["current", "max"] {
                std::fs::write(
                    dir.join(format!("{prefix}_link_speed")),
                    format!("{speed:.1} GT/s PCIe\n"),
                )?;
                std::fs::write(
                    dir.join(format!("{prefix}_link_width")),
                    format!("{width}\n"),
                )?;
            }
        }
        let depth = rel.components().count();
        if let Some(driver) = &spec.driver {
            symlink(
                up(depth).join("bus/pci/drivers").join(driver),
                &dir.join("driver"),
            )?;
        }
        if let Some(group) = spec.iommu_group {
            symlink(
                up(depth)
                    .join("kernel/iommu_groups")
                    .join(group.to_string()),
                &dir.join("iommu_group"),
            )?;
        }
        if let Some(pf) = spec.physfn {
            symlink(Path::new("..").join(pf.to_string()), &dir.join("physfn"))?;
        }
        if let Some((size, available, published)) = spec.p2pmem {
            let p = dir.join("p2pmem");
            std::fs::create_dir_all(&p)?;
            std::fs::write(p.join("size"), format!("{size}\n"))?;
            std::fs::write(p.join("available"), format!("{available}\n"))?;
            std::fs::write(p.join("published"), format!("{}\n", u8::from(published)))?;
        }
        if let Some((ctrl, serial, namespaces)) = &spec.nvme {
            let cdir = dir.join("nvme").join(ctrl);
            std::fs::create_dir_all(&cdir)?;
            std::fs::write(cdir.join("serial"), format!("{serial}\n"))?;
            let ctrl_minor = self.next_minor;
            self.next_minor += 1;
            std::fs::write(cdir.join("dev"), format!("241:{ctrl_minor}\n"))?;
            let crel = rel.join("nvme").join(ctrl);
            symlink(up(2).join(&crel), &self.root.join("class/nvme").join(ctrl))?;
            symlink(
                up(2).join(&crel),
                &self.root.join(format!("dev/char/241:{ctrl_minor}")),
            )?;
            for ns in namespaces {
                self.block_device_at(&crel.join(ns), None)?;
            }
        }
        symlink(
            up(3).join(&rel),
            &self.root.join("bus/pci/devices").join(bdf.to_string()),
        )?;
        self.dirs.insert(bdf, rel);
        Ok(bdf)
    }

    /// Writes a block device directory at `rel` (relative to the root) with `dev`, its
    /// `class/block` and `dev/block` links, and a `partition` file when `partition` is set.
    /// Returns its `MAJ:MIN`.
    pub fn block_device_at(&mut self, rel: &Path, partition: Option<u32>) -> io::Result<String> {
        let dir = self.root.join(rel);
        std::fs::create_dir_all(&dir)?;
        let minor = self.next_minor;
        self.next_minor += 1;
        let devno = format!("259:{minor}");
        std::fs::write(dir.join("dev"), format!("{devno}\n"))?;
        if let Some(p) = partition {
            std::fs::write(dir.join("partition"), format!("{p}\n"))?;
        }
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        symlink(up(2).join(rel), &self.root.join("class/block").join(&name))?;
        symlink(up(2).join(rel), &self.root.join("dev/block").join(&devno))?;
        Ok(devno)
    }

    /// Writes NVMe multipath head disk `head` (`nvme1n1`) of subsystem `subsys`
    /// (`nvme-subsys1`) under `devices/virtual/nvme-subsystem`, with the subsystem's link
    /// to its one path, controller `ctrl` (`nvme1`) of function `bdf`, added with
    /// [`FunctionSpec::nvme_controller`]. Returns the head's `MAJ:MIN`.
    pub fn nvme_multipath_head(
        &mut self,
        subsys: &str,
        head: &str,
        bdf: Bdf,
        ctrl: &str,
    ) -> io::Result<String> {
        let subsys = Path::new("devices/virtual/nvme-subsystem").join(subsys);
        let devno = self.block_device_at(&subsys.join(head), None)?;
        let function = self.function_dir(bdf).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{bdf} was not added"))
        })?;
        let target = up(4).join(function).join("nvme").join(ctrl);
        symlink(target, &self.root.join(subsys).join(ctrl))?;
        Ok(devno)
    }

    /// The directory (relative to the root) of an added function.
    pub fn function_dir(&self, bdf: Bdf) -> Option<&Path> {
        self.dirs.get(&bdf).map(PathBuf::as_path)
    }
}
