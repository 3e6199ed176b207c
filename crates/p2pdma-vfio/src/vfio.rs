//! The VFIO glue: one type1 container, devices opened through their IOMMU group, host
//! memory and BARs mapped into the IOMMU at IOVAs of our choosing, BAR mmaps with volatile
//! access, and the device request eventfd (`VFIO_PCI_REQ_IRQ_INDEX`), which the kernel
//! signals when it wants the device back (unbind, hot removal).
//!
//! Built on rust-vmm's `vfio-ioctls` (container, group, device ioctls); what it does not
//! wrap (mmap of a region, volatile access) is here, each `unsafe` block with its reason.
//!
//! # References
//! - Linux `Documentation/driver-api/vfio.rst`, `include/uapi/linux/vfio.h`,
//!   `drivers/vfio/pci/vfio_pci_core.c` (`vfio_pci_core_request`)
#![allow(unsafe_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use p2pdma::sysfs::SysfsRoot;
use p2pdma::Bdf;
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_REQ_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Errors of the VFIO layer; each names the device or file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// /dev/vfio/vfio could not be opened or lacks type1 v2.
    #[error("cannot open the VFIO container /dev/vfio/vfio (is vfio-pci loaded and an IOMMU on? boot with intel_iommu=on or amd_iommu=on)")]
    Container(#[source] vfio_ioctls::VfioError),
    /// The device is not bound to vfio-pci.
    #[error("{bdf} is bound to {driver}, not vfio-pci: run `p2pdma vfio attach {bdf}` first")]
    NotVfio {
        /// The device.
        bdf: Bdf,
        /// Its driver (or "no driver").
        driver: String,
    },
    /// The device has no IOMMU group (no IOMMU).
    #[error("{bdf} has no IOMMU group ({path} missing): turn the IOMMU on (intel_iommu=on or amd_iommu=on on the kernel command line)")]
    NoGroup {
        /// The device.
        bdf: Bdf,
        /// The link looked for.
        path: PathBuf,
    },
    /// Opening the device through its group failed.
    #[error("cannot open {bdf} through VFIO (is every device of its IOMMU group bound to vfio-pci or to no driver, and not in use by another process? without interrupt remapping, type1 also needs vfio_iommu_type1.allow_unsafe_interrupts=1; dmesg says which)")]
    Open {
        /// The device.
        bdf: Bdf,
        /// Why.
        #[source]
        source: vfio_ioctls::VfioError,
    },
    /// The device's IOMMU group holds a device bound to a driver that keeps the group from
    /// VFIO: a type1 container takes a whole group, so every endpoint of it must be on
    /// vfio-pci (or on no driver) first.
    #[error("cannot open {bdf} through VFIO: its IOMMU group {group} is not viable while {}; VFIO takes a whole group: attach every endpoint of it first (`p2pdma vfio attach {}`); the group: {}", blocking_text(.members), attach_list(.members), members_text(.members))]
    GroupNotViable {
        /// The device.
        bdf: Bdf,
        /// Its IOMMU group.
        group: u32,
        /// Every device of the group, with its driver.
        members: Vec<GroupMember>,
        /// What VFIO said.
        #[source]
        source: vfio_ioctls::VfioError,
    },
    /// A region (BAR) cannot be mapped.
    #[error("cannot mmap BAR {bar} of {bdf}: {why}")]
    Bar {
        /// The device.
        bdf: Bdf,
        /// The BAR.
        bar: u32,
        /// What is wrong.
        why: String,
    },
    /// mmap failed.
    #[error("cannot mmap {len} bytes for {what}")]
    Mmap {
        /// For what.
        what: String,
        /// Size.
        len: usize,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// VFIO_IOMMU_MAP_DMA failed.
    #[error("cannot map {len:#x} bytes of {what} into the IOMMU at IOVA {iova:#x}")]
    DmaMap {
        /// What.
        what: String,
        /// IOVA.
        iova: u64,
        /// Size.
        len: usize,
        /// Why.
        #[source]
        source: vfio_ioctls::VfioError,
    },
    /// Config space access failed.
    #[error("cannot enable memory decoding and bus mastering in the config space of {bdf}")]
    Config {
        /// The device.
        bdf: Bdf,
    },
    /// The request eventfd could not be set up.
    #[error("cannot register the device request eventfd of {bdf} (VFIO_PCI_REQ_IRQ_INDEX)")]
    RequestIrq {
        /// The device.
        bdf: Bdf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// One type1 container: an IOVA space the devices opened through it share.
#[derive(Clone)]
pub struct Container {
    inner: Arc<VfioContainer>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Container")
    }
}

impl Container {
    /// Opens /dev/vfio/vfio (type1 v2).
    pub fn open() -> Result<Container, VfioError> {
        let inner = VfioContainer::new(None).map_err(VfioError::Container)?;
        Ok(Container {
            inner: Arc::new(inner),
        })
    }

    /// Removes the IOMMU mapping at `iova` (logged by the caller; failures are returned).
    fn unmap(&self, iova: u64, len: usize) -> Result<(), vfio_ioctls::VfioError> {
        self.inner.vfio_dma_unmap(iova, len)
    }
}

/// The driver a device is bound to, from `/sys/bus/pci/devices/<bdf>/driver`.
pub fn driver_of(sysfs: &SysfsRoot, bdf: Bdf) -> Option<String> {
    fs::read_link(sysfs.pci_driver_link(bdf))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// The IOMMU group number of a device, from `/sys/bus/pci/devices/<bdf>/iommu_group`.
pub fn iommu_group(sysfs: &SysfsRoot, bdf: Bdf) -> Option<u32> {
    fs::read_link(sysfs.pci_iommu_group_link(bdf))
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
}

/// One device of an IOMMU group: `/sys/bus/pci/devices/<bdf>/iommu_group/devices/*`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupMember {
    /// The device.
    pub bdf: Bdf,
    /// Its driver (None: no driver).
    pub driver: Option<String>,
    /// A PCI-to-PCI bridge (class 0x0604: root and switch ports), whose port driver
    /// (pcieport) manages its own DMA ownership and so does not keep VFIO from the group.
    pub bridge: bool,
}

impl GroupMember {
    /// Whether this member keeps VFIO from its group: an endpoint bound to a driver other
    /// than vfio-pci or pci-stub (the kernel's DMA ownership claim fails for it).
    pub fn blocks_vfio(&self) -> bool {
        !self.bridge
            && self
                .driver
                .as_deref()
                .is_some_and(|d| d != "vfio-pci" && d != "pci-stub")
    }
}

fn blocking_text(members: &[GroupMember]) -> String {
    let blocking: Vec<String> = members
        .iter()
        .filter(|m| m.blocks_vfio())
        .map(|m| {
            format!(
                "{} is bound to {}",
                m.bdf,
                m.driver.as_deref().unwrap_or("")
            )
        })
        .collect();
    if blocking.is_empty() {
        "a member is in use (see dmesg)".into()
    } else {
        blocking.join(" and ")
    }
}

fn attach_list(members: &[GroupMember]) -> String {
    let endpoints: Vec<String> = members
        .iter()
        .filter(|m| !m.bridge)
        .map(|m| m.bdf.to_string())
        .collect();
    endpoints.join(" ")
}

fn members_text(members: &[GroupMember]) -> String {
    let all: Vec<String> = members
        .iter()
        .map(|m| {
            format!(
                "{} ({}{})",
                m.bdf,
                m.driver.as_deref().unwrap_or("no driver"),
                if m.bridge { ", bridge" } else { "" }
            )
        })
        .collect();
    all.join(", ")
}

/// The devices of `bdf`'s IOMMU group, sorted, with their drivers
/// (`/sys/bus/pci/devices/<bdf>/iommu_group/devices/`; empty without a group).
pub fn group_members(sysfs: &SysfsRoot, bdf: Bdf) -> Vec<GroupMember> {
    let Ok(entries) = fs::read_dir(sysfs.pci_iommu_group_link(bdf).join("devices")) else {
        return Vec::new();
    };
    let mut out: Vec<GroupMember> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<Bdf>().ok())
        .map(|member| GroupMember {
            bdf: member,
            driver: driver_of(sysfs, member),
            bridge: fs::read_to_string(sysfs.pci_device(member).join("class"))
                .is_ok_and(|c| c.trim().starts_with("0x0604")),
        })
        .collect();
    out.sort_by_key(|m| m.bdf);
    out
}

/// A device opened through VFIO.
pub struct Device {
    bdf: Bdf,
    dev: VfioDevice,
    container: Container,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("bdf", &self.bdf).finish()
    }
}

impl Device {
    /// Opens `bdf` (bound to vfio-pci) in `container` and turns on memory decoding and bus
    /// mastering.
    pub fn open(container: &Container, sysfs: &SysfsRoot, bdf: Bdf) -> Result<Device, VfioError> {
        let path = sysfs.pci_device(bdf);
        let driver = driver_of(sysfs, bdf);
        if driver.as_deref() != Some("vfio-pci") {
            return Err(VfioError::NotVfio {
                bdf,
                driver: driver.unwrap_or_else(|| "no driver".into()),
            });
        }
        let Some(group) = iommu_group(sysfs, bdf) else {
            return Err(VfioError::NoGroup {
                bdf,
                path: sysfs.pci_iommu_group_link(bdf),
            });
        };
        let ops: Arc<dyn VfioOps> = container.inner.clone();
        let dev = VfioDevice::new(&path, ops, false)
            .map_err(|source| open_error(sysfs, bdf, group, source))?;
        let device = Device {
            bdf,
            dev,
            container: container.clone(),
        };
        device.enable_bus_master()?;
        Ok(device)
    }

    /// The device's address.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    fn enable_bus_master(&self) -> Result<(), VfioError> {
        let mut cmd = [0u8; 2];
        self.dev
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut cmd, 4);
        let value = u16::from_le_bytes(cmd) | 0x2 | 0x4;
        self.dev
            .region_write(VFIO_PCI_CONFIG_REGION_INDEX, &value.to_le_bytes(), 4);
        let mut check = [0u8; 2];
        self.dev
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut check, 4);
        if u16::from_le_bytes(check) & 0x6 != 0x6 {
            return Err(VfioError::Config { bdf: self.bdf });
        }
        Ok(())
    }

    /// Size of BAR `bar` (0 if absent).
    pub fn bar_size(&self, bar: u32) -> u64 {
        self.dev.get_region_size(bar)
    }

    /// Maps BAR `bar` into this process (shared, read-write).
    pub fn map_bar(&self, bar: u32) -> Result<Arc<Mmio>, VfioError> {
        let bdf = self.bdf;
        let len = self.dev.get_region_size(bar) as usize;
        if len == 0 {
            return Err(VfioError::Bar {
                bdf,
                bar,
                why: "the BAR is absent or empty".into(),
            });
        }
        if self.dev.get_region_flags(bar) & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(VfioError::Bar {
                bdf,
                bar,
                why: "vfio-pci does not allow mmap of it".into(),
            });
        }
        let offset = self.dev.get_region_offset(bar);
        // SAFETY: a new shared mapping at an address the kernel chooses, of the device
        // fd's region; it aliases no Rust object. The fd stays open while `Device` lives,
        // and the mapping stays valid after the fd closes anyway (vfio-pci zaps it, and a
        // later access faults with SIGBUS, which the owner handles).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&self.dev),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(VfioError::Mmap {
                what: format!("BAR {bar} of {bdf}"),
                len,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Arc::new(Mmio {
            ptr: NonNull::new(ptr.cast()).expect("mmap does not return null on success"),
            len,
            what: format!("BAR {bar} of {bdf}"),
        }))
    }

    /// Registers an eventfd the kernel signals when it wants the device back (unbind, hot
    /// removal). Poll it with [`RequestFd::requested`].
    pub fn request_fd(&self) -> Result<RequestFd, VfioError> {
        let bdf = self.bdf;
        let fd =
            EventFd::new(EFD_NONBLOCK).map_err(|source| VfioError::RequestIrq { bdf, source })?;
        self.dev
            .enable_irq(VFIO_PCI_REQ_IRQ_INDEX, vec![&fd])
            .map_err(|e| VfioError::RequestIrq {
                bdf,
                source: std::io::Error::other(e.to_string()),
            })?;
        Ok(RequestFd { fd })
    }

    /// The container this device lives in.
    pub fn container(&self) -> &Container {
        &self.container
    }

    /// Path of the device in sysfs.
    pub fn sysfs_path(sysfs: &SysfsRoot, bdf: Bdf) -> PathBuf {
        sysfs.pci_device(bdf)
    }
}

/// Why opening `bdf` failed: a group member bound to another driver (the group is shared
/// with it, e.g. controllers behind one switch without ACS), or something dmesg explains.
fn open_error(
    sysfs: &SysfsRoot,
    bdf: Bdf,
    group: u32,
    source: vfio_ioctls::VfioError,
) -> VfioError {
    let members = group_members(sysfs, bdf);
    if members.iter().any(GroupMember::blocks_vfio) {
        VfioError::GroupNotViable {
            bdf,
            group,
            members,
            source,
        }
    } else {
        VfioError::Open { bdf, source }
    }
}

/// The device request eventfd.
#[derive(Debug)]
pub struct RequestFd {
    fd: EventFd,
}

impl RequestFd {
    /// Whether the kernel asked for the device back since the last call (non-blocking).
    pub fn requested(&self) -> bool {
        self.fd.read().is_ok_and(|n| n > 0)
    }
}

/// A mapping of device or host memory: volatile access only, never a `&[u8]`.
#[derive(Debug)]
pub struct Mmio {
    ptr: NonNull<u8>,
    len: usize,
    what: String,
}

// SAFETY: the mapping is plain memory (or MMIO) addressed through a raw pointer; every
// access is a volatile load or store of a bounds-checked address, which is as valid from
// any thread as from the one that mapped it.
unsafe impl Send for Mmio {}
// SAFETY: as above; concurrent volatile accesses race only on the values, never on
// memory safety (the device writes it concurrently anyway).
unsafe impl Sync for Mmio {}

impl Mmio {
    /// Anonymous host memory of `len` bytes (page aligned, zeroed), for queues, PRP lists
    /// and host buffers the devices reach by DMA.
    pub fn anonymous(len: usize, what: &str) -> Result<Arc<Mmio>, VfioError> {
        // SAFETY: a new private anonymous mapping at an address the kernel picks; it
        // aliases nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(VfioError::Mmap {
                what: what.into(),
                len,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Arc::new(Mmio {
            ptr: NonNull::new(ptr.cast()).expect("mmap does not return null on success"),
            len,
            what: what.into(),
        }))
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never: mmap refuses 0 bytes).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first address, for the SIGBUS registration and for IOMMU mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn check(&self, offset: usize, size: usize) {
        assert!(
            offset.checked_add(size).is_some_and(|end| end <= self.len),
            "access of {size} bytes at {offset:#x} outside {} ({} bytes)",
            self.what,
            self.len
        );
    }

    /// Volatile 32-bit load at `offset` (4-byte aligned).
    pub fn read32(&self, offset: usize) -> u32 {
        self.check(offset, 4);
        assert_eq!(offset % 4, 0);
        // SAFETY: in bounds (checked) and aligned; the mapping lives as long as `self`.
        unsafe { self.ptr.as_ptr().add(offset).cast::<u32>().read_volatile() }
    }

    /// Volatile 32-bit store.
    pub fn write32(&self, offset: usize, value: u32) {
        self.check(offset, 4);
        assert_eq!(offset % 4, 0);
        // SAFETY: in bounds and aligned, as in read32.
        unsafe {
            self.ptr
                .as_ptr()
                .add(offset)
                .cast::<u32>()
                .write_volatile(value)
        }
    }

    /// 64-bit register load as two 32-bit loads (low first), as NVMe allows.
    pub fn read64(&self, offset: usize) -> u64 {
        u64::from(self.read32(offset)) | (u64::from(self.read32(offset + 4)) << 32)
    }

    /// 64-bit register store as two 32-bit stores (low first).
    pub fn write64(&self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }

    /// Copies `src` into the mapping at `offset`, with volatile 8-byte stores where aligned.
    pub fn write_bytes(&self, offset: usize, src: &[u8]) {
        self.check(offset, src.len());
        let base = self.ptr.as_ptr();
        let mut i = 0;
        while i < src.len() {
            if (offset + i).is_multiple_of(8) && src.len() - i >= 8 {
                let v = u64::from_ne_bytes(src[i..i + 8].try_into().expect("8 bytes"));
                // SAFETY: in bounds (checked above), 8-byte aligned.
                unsafe { base.add(offset + i).cast::<u64>().write_volatile(v) };
                i += 8;
            } else {
                // SAFETY: in bounds (checked above).
                unsafe { base.add(offset + i).write_volatile(src[i]) };
                i += 1;
            }
        }
    }

    /// Copies from the mapping at `offset` into `dst`, with volatile loads.
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        self.check(offset, dst.len());
        let base = self.ptr.as_ptr();
        let mut i = 0;
        while i < dst.len() {
            if (offset + i).is_multiple_of(8) && dst.len() - i >= 8 {
                // SAFETY: in bounds (checked above), 8-byte aligned.
                let v = unsafe { base.add(offset + i).cast::<u64>().read_volatile() };
                dst[i..i + 8].copy_from_slice(&v.to_ne_bytes());
                i += 8;
            } else {
                // SAFETY: in bounds (checked above).
                dst[i] = unsafe { base.add(offset + i).read_volatile() };
                i += 1;
            }
        }
    }

    /// Replaces the mapping with inaccessible anonymous memory (CPU access revoked; the
    /// address range stays reserved so nothing else lands there while stale pointers
    /// might exist). Returns the OS error if mmap refused.
    pub fn revoke(&self) -> std::io::Result<()> {
        // SAFETY: MAP_FIXED over exactly our own mapping; no Rust reference covers it
        // (access is volatile through the raw pointer only), and the caller has made sure
        // no access is under way (the lease table counts them).
        let p = unsafe {
            libc::mmap(
                self.ptr.as_ptr().cast(),
                self.len,
                libc::PROT_NONE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Mmio {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once; every borrower holds an Arc, so none is
        // left.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Memory mapped into the container's IOMMU at an IOVA: the mapping is removed on drop,
/// before the memory (held here) can go.
pub struct IommuMapping {
    container: Container,
    memory: Arc<Mmio>,
    iova: u64,
    mapped: bool,
}

impl std::fmt::Debug for IommuMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IommuMapping")
            .field("iova", &format_args!("{:#x}", self.iova))
            .field("len", &self.memory.len())
            .finish()
    }
}

impl IommuMapping {
    /// Maps all of `memory` at `iova` (VFIO_IOMMU_MAP_DMA, read and write).
    pub fn new(
        container: &Container,
        memory: Arc<Mmio>,
        iova: u64,
    ) -> Result<IommuMapping, VfioError> {
        // SAFETY: `memory` is a mapping we own and keep alive in the returned value until
        // it unmaps the IOVA range (drop or `unmap`); it is only ever accessed volatilely
        // through raw pointers, never through a Rust reference, which is what
        // `vfio_dma_map` requires of memory a device may write at any time.
        unsafe {
            container
                .inner
                .vfio_dma_map(iova, memory.len(), memory.as_ptr())
        }
        .map_err(|source| VfioError::DmaMap {
            what: memory.what.clone(),
            iova,
            len: memory.len(),
            source,
        })?;
        Ok(IommuMapping {
            container: container.clone(),
            memory,
            iova,
            mapped: true,
        })
    }

    /// The IOVA of the first byte.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// The memory.
    pub fn memory(&self) -> &Arc<Mmio> {
        &self.memory
    }

    /// Removes the IOMMU mapping now (idempotent).
    pub fn unmap(&mut self) -> Result<(), String> {
        if !self.mapped {
            return Ok(());
        }
        self.mapped = false;
        self.container
            .unmap(self.iova, self.memory.len())
            .map_err(|e| format!("VFIO_IOMMU_UNMAP_DMA of {:#x}: {e}", self.iova))
    }
}

impl Drop for IommuMapping {
    fn drop(&mut self) {
        let _ = self.unmap();
    }
}

/// Whether `/sys/bus/pci/devices/<bdf>` still exists.
pub fn present(sysfs: &SysfsRoot, bdf: Bdf) -> bool {
    Path::new(&sysfs.pci_device(bdf)).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A sysfs tree with IOMMU group 7 holding a switch's ports and two controllers (one
    /// on vfio-pci, one still on nvme) and group 8 with one device on vfio-pci.
    fn tree() -> (tempfile::TempDir, SysfsRoot) {
        let dir = tempfile::tempdir().unwrap();
        let root = SysfsRoot::new(dir.path());
        let groups = dir.path().join("kernel/iommu_groups");
        let devices = [
            ("0000:02:00.0", "0x060400", Some("pcieport"), 7),
            ("0000:03:00.0", "0x060400", Some("pcieport"), 7),
            ("0000:03:01.0", "0x060400", Some("pcieport"), 7),
            ("0000:04:00.0", "0x010802", Some("vfio-pci"), 7),
            ("0000:05:00.0", "0x010802", Some("nvme"), 7),
            ("0000:06:00.0", "0x050000", Some("vfio-pci"), 8),
        ];
        for (name, class, driver, group) in devices {
            let bdf: Bdf = name.parse().unwrap();
            let dev = root.pci_device(bdf);
            fs::create_dir_all(&dev).unwrap();
            fs::write(dev.join("class"), format!("{class}\n")).unwrap();
            if let Some(d) = driver {
                let drv = dir.path().join("bus/pci/drivers").join(d);
                fs::create_dir_all(&drv).unwrap();
                symlink(&drv, root.pci_driver_link(bdf)).unwrap();
            }
            let g = groups.join(group.to_string());
            fs::create_dir_all(g.join("devices")).unwrap();
            symlink(&dev, g.join("devices").join(name)).unwrap();
            symlink(&g, root.pci_iommu_group_link(bdf)).unwrap();
        }
        (dir, root)
    }

    #[test]
    fn a_shared_group_names_every_member_and_the_endpoint_that_blocks_it() {
        let (_dir, root) = tree();
        let a: Bdf = "0000:04:00.0".parse().unwrap();
        assert_eq!(iommu_group(&root, a), Some(7));
        let members = group_members(&root, a);
        let names: Vec<String> = members.iter().map(|m| m.bdf.to_string()).collect();
        assert_eq!(
            names,
            [
                "0000:02:00.0",
                "0000:03:00.0",
                "0000:03:01.0",
                "0000:04:00.0",
                "0000:05:00.0"
            ]
        );
        let blocking: Vec<String> = members
            .iter()
            .filter(|m| m.blocks_vfio())
            .map(|m| m.bdf.to_string())
            .collect();
        assert_eq!(blocking, ["0000:05:00.0"], "ports on pcieport do not block");
        let err = open_error(&root, a, 7, vfio_ioctls::VfioError::GroupViable);
        let text = err.to_string();
        assert!(
            text.contains("IOMMU group 7 is not viable while 0000:05:00.0 is bound to nvme"),
            "{text}"
        );
        assert!(
            text.contains("`p2pdma vfio attach 0000:04:00.0 0000:05:00.0`"),
            "{text}"
        );
        assert!(text.contains("0000:03:01.0 (pcieport, bridge)"), "{text}");
        assert!(
            std::error::Error::source(&err).is_some(),
            "the cause is kept"
        );
    }

    #[test]
    fn a_group_without_a_foreign_driver_gives_the_plain_open_error() {
        let (_dir, root) = tree();
        let c: Bdf = "0000:06:00.0".parse().unwrap();
        assert_eq!(group_members(&root, c).len(), 1);
        let err = open_error(&root, c, 8, vfio_ioctls::VfioError::GroupViable);
        assert!(matches!(err, VfioError::Open { .. }), "{err}");
        let none: Bdf = "0000:09:00.0".parse().unwrap();
        assert!(group_members(&root, none).is_empty());
    }
}
