//! A userspace NVMe driver over VFIO: controller reset and enable, the admin queue,
//! Identify, one I/O queue pair, PRP lists, polled completions with deadlines, doorbells
//! through volatile stores, and the CMB enabled with CMBMSC at an IOVA of our choosing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use p2pdma::sysfs::SysfsRoot;
use p2pdma::Bdf;

use crate::nvme::cmd::{nvm, Cqe, IdentifyController, IdentifyNamespace, Sqe, Status};
use crate::nvme::prp::{prps, Prp2, PrpError};
use crate::nvme::queue::{CqRing, SqRing};
use crate::nvme::regs::{self, Cap, CmbLoc, CmbSz};
use crate::vfio::{Container, Device, IommuMapping, Mmio, VfioError};

/// Memory page size the driver uses (CC.MPS = 0).
pub const PAGE: usize = 4096;
const ADMIN_ENTRIES: u16 = 32;
/// I/O queue depth (commands in flight at most: one less).
pub const IO_ENTRIES: u16 = 64;
const OFF_ASQ: usize = 0;
const OFF_ACQ: usize = 0x1000;
const OFF_IOSQ: usize = 0x2000;
const OFF_IOCQ: usize = 0x3000;
const OFF_IDENTIFY: usize = 0x4000;
const OFF_PRP: usize = 0x5000;
/// Host memory each controller needs for queues, Identify data and PRP lists.
pub const HOST_MEMORY: usize = OFF_PRP + IO_ENTRIES as usize * PAGE;

/// Errors of the driver; each names the controller.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// VFIO refused.
    #[error(transparent)]
    Vfio(#[from] VfioError),
    /// The controller did not reach the state in time.
    #[error("NVMe controller {bdf} did not {what} within {ms} ms (CSTS {csts:#x})")]
    Timeout {
        /// Controller.
        bdf: Bdf,
        /// What it was to do.
        what: &'static str,
        /// The deadline.
        ms: u64,
        /// Last status.
        csts: u32,
    },
    /// CSTS.CFS.
    #[error("NVMe controller {bdf} reports a fatal status (CSTS.CFS): reset it with `p2pdma vfio detach {bdf}` and attach again")]
    Fatal {
        /// Controller.
        bdf: Bdf,
    },
    /// A command failed.
    #[error("NVMe controller {bdf}: {what} failed: {status}")]
    Command {
        /// Controller.
        bdf: Bdf,
        /// Which command.
        what: String,
        /// Its status.
        status: Status,
    },
    /// A command did not complete in time.
    #[error("NVMe controller {bdf}: {what} did not complete within {ms} ms")]
    CommandTimeout {
        /// Controller.
        bdf: Bdf,
        /// Which command.
        what: String,
        /// The deadline.
        ms: u64,
    },
    /// The controller has no CMB or one unfit for copies.
    #[error("NVMe controller {bdf}: {why}")]
    Cmb {
        /// Controller.
        bdf: Bdf,
        /// Why.
        why: String,
    },
    /// PRP building failed.
    #[error("NVMe controller {bdf}: {source}")]
    Prp {
        /// Controller.
        bdf: Bdf,
        /// Why.
        #[source]
        source: PrpError,
    },
    /// The queue is full.
    #[error("NVMe controller {bdf}: I/O queue full ({IO_ENTRIES} entries)")]
    QueueFull {
        /// Controller.
        bdf: Bdf,
    },
    /// The device vanished from the registers (reads of all ones).
    #[error("NVMe controller {bdf} is gone (its registers read all ones): was it removed?")]
    Gone {
        /// Controller.
        bdf: Bdf,
    },
}

struct Queue {
    qid: u16,
    sq_off: usize,
    cq_off: usize,
    sq: SqRing,
    cq: CqRing,
    free_cids: Vec<u16>,
}

impl Queue {
    fn new(qid: u16, entries: u16, sq_off: usize, cq_off: usize) -> Queue {
        Queue {
            qid,
            sq_off,
            cq_off,
            sq: SqRing::new(entries),
            cq: CqRing::new(entries),
            free_cids: (0..entries - 1).rev().collect(),
        }
    }
}

/// The CMB of a controller, enabled at an IOVA.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CmbInfo {
    /// CMBLOC.
    pub location: CmbLoc,
    /// CMBSZ.
    pub size: CmbSz,
    /// The IOVA of the CMB's first byte (CMBMSC.CBA).
    pub iova: u64,
}

/// A controller driven from userspace.
pub struct Controller {
    bdf: Bdf,
    device: Device,
    regs: Arc<Mmio>,
    cap: Cap,
    host: IommuMapping,
    admin: Queue,
    io: Option<Queue>,
    identify: IdentifyController,
    /// Default command deadline.
    pub deadline: Duration,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("bdf", &self.bdf)
            .finish()
    }
}

impl Controller {
    /// Opens `bdf` in `container`, maps `HOST_MEMORY` bytes of host memory for its queues
    /// at `host_iova`, resets and enables the controller, identifies it and creates one I/O
    /// queue pair.
    pub fn open(
        container: &Container,
        sysfs: &SysfsRoot,
        bdf: Bdf,
        host_iova: u64,
    ) -> Result<Controller, DriverError> {
        let device = Device::open(container, sysfs, bdf)?;
        let regs = device.map_bar(0)?;
        let memory = Mmio::anonymous(HOST_MEMORY, &format!("queues of {bdf}"))?;
        let host = IommuMapping::new(container, memory, host_iova)?;
        let cap = Cap::parse(regs.read64(regs::CAP));
        let mut c = Controller {
            bdf,
            device,
            regs,
            cap,
            host,
            admin: Queue::new(0, ADMIN_ENTRIES, OFF_ASQ, OFF_ACQ),
            io: None,
            identify: IdentifyController::parse(&[0; 4096]),
            deadline: Duration::from_secs(30),
        };
        c.reset_and_enable()?;
        let data = c.identify_page(1, 0)?;
        c.identify = IdentifyController::parse(&data);
        c.create_io_queues()?;
        Ok(c)
    }

    /// The controller's address.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// Its Identify Controller data.
    pub fn identify(&self) -> &IdentifyController {
        &self.identify
    }

    /// Its capabilities.
    pub fn cap(&self) -> Cap {
        self.cap
    }

    /// The VFIO device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The largest transfer one command may move.
    pub fn max_transfer(&self) -> usize {
        // PRP lists here are one page: at most 512 entries after PRP1's page.
        let list_limit = PAGE * (PAGE / 8);
        self.identify
            .max_transfer(self.cap.page_size_min)
            .unwrap_or(list_limit)
            .min(list_limit)
    }

    fn csts(&self) -> u32 {
        self.regs.read32(regs::CSTS)
    }

    fn wait_ready(&self, ready: bool, what: &'static str) -> Result<(), DriverError> {
        let ms = self.cap.timeout_ms.max(500);
        let deadline = Instant::now() + Duration::from_millis(ms);
        loop {
            let csts = self.csts();
            if csts == u32::MAX {
                return Err(DriverError::Gone { bdf: self.bdf });
            }
            if ready && csts & regs::CSTS_CFS != 0 {
                return Err(DriverError::Fatal { bdf: self.bdf });
            }
            if (csts & regs::CSTS_RDY != 0) == ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(DriverError::Timeout {
                    bdf: self.bdf,
                    what,
                    ms,
                    csts,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// CC.EN = 0 and waits for CSTS.RDY = 0: the controller stops all DMA and forgets its
    /// queues. The revocation's last resort, and the first step of enabling.
    pub fn disable(&self) -> Result<(), DriverError> {
        let cc = self.regs.read32(regs::CC);
        if cc == u32::MAX {
            return Err(DriverError::Gone { bdf: self.bdf });
        }
        self.regs.write32(regs::CC, cc & !regs::CC_EN);
        self.wait_ready(false, "become not ready after CC.EN = 0")
    }

    fn reset_and_enable(&mut self) -> Result<(), DriverError> {
        self.disable()?;
        self.disable_cmb_memory_space();
        let base = self.host.iova();
        self.regs.write32(
            regs::AQA,
            regs::aqa(u32::from(ADMIN_ENTRIES), u32::from(ADMIN_ENTRIES)),
        );
        self.regs.write64(regs::ASQ, base + OFF_ASQ as u64);
        self.regs.write64(regs::ACQ, base + OFF_ACQ as u64);
        let cc = regs::cc_enable(PAGE).expect("4096 is a valid page size");
        self.regs.write32(regs::CC, cc);
        self.wait_ready(true, "become ready after CC.EN = 1")
    }

    fn push(&mut self, io: bool, mut sqe: Sqe) -> Result<u16, DriverError> {
        let bdf = self.bdf;
        let cap = self.cap;
        let q = if io {
            self.io.as_mut().expect("I/O queues created at open")
        } else {
            &mut self.admin
        };
        let cid = q.free_cids.pop().ok_or(DriverError::QueueFull { bdf })?;
        let Some((slot, tail)) = q.sq.push() else {
            q.free_cids.push(cid);
            return Err(DriverError::QueueFull { bdf });
        };
        sqe.set_cid(cid);
        let memory = self.host.memory();
        let at = q.sq_off + usize::from(slot) * 64;
        for (i, dw) in sqe.0.iter().enumerate() {
            memory.write32(at + 4 * i, *dw);
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.regs
            .write32(cap.sq_tail_doorbell(q.qid), u32::from(tail));
        Ok(cid)
    }

    /// Reaps one completion of the I/O (or admin) queue if one is there.
    fn poll(&mut self, io: bool) -> Option<Cqe> {
        let cap = self.cap;
        let q = if io {
            self.io.as_mut()?
        } else {
            &mut self.admin
        };
        let memory = self.host.memory();
        let at = q.cq_off + usize::from(q.cq.head()) * 16;
        let dw3 = memory.read32(at + 12);
        let cqe_phase = dw3 & (1 << 16) != 0;
        if !q.cq.is_new(cqe_phase) {
            return None;
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let cqe = Cqe([
            memory.read32(at),
            memory.read32(at + 4),
            memory.read32(at + 8),
            dw3,
        ]);
        let head = q.cq.advance();
        q.sq.set_head(cqe.sq_head());
        q.free_cids.push(cqe.cid());
        self.regs
            .write32(cap.cq_head_doorbell(q.qid), u32::from(head));
        Some(cqe)
    }

    fn admin(&mut self, sqe: Sqe, what: &str) -> Result<Cqe, DriverError> {
        let cid = self.push(false, sqe)?;
        let start = Instant::now();
        loop {
            if let Some(cqe) = self.poll(false) {
                if cqe.cid() != cid {
                    continue;
                }
                if !cqe.status().is_success() {
                    return Err(DriverError::Command {
                        bdf: self.bdf,
                        what: what.into(),
                        status: cqe.status(),
                    });
                }
                return Ok(cqe);
            }
            if start.elapsed() > self.deadline {
                return Err(DriverError::CommandTimeout {
                    bdf: self.bdf,
                    what: what.into(),
                    ms: self.deadline.as_millis() as u64,
                });
            }
            std::hint::spin_loop();
        }
    }

    fn identify_page(&mut self, cns: u8, nsid: u32) -> Result<[u8; 4096], DriverError> {
        let iova = self.host.iova() + OFF_IDENTIFY as u64;
        self.admin(
            Sqe::identify(cns, nsid, iova),
            &format!("Identify (CNS {cns}, namespace {nsid})"),
        )?;
        let mut data = [0u8; 4096];
        self.host.memory().read_bytes(OFF_IDENTIFY, &mut data);
        Ok(data)
    }

    /// Identify Namespace `nsid`.
    pub fn namespace(&mut self, nsid: u32) -> Result<IdentifyNamespace, DriverError> {
        let data = self.identify_page(0, nsid)?;
        Ok(IdentifyNamespace::parse(&data))
    }

    /// The active namespace ids (Identify CNS 2).
    pub fn active_namespaces(&mut self) -> Result<Vec<u32>, DriverError> {
        let data = self.identify_page(2, 0)?;
        Ok(data
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .take_while(|&n| n != 0)
            .collect())
    }

    fn create_io_queues(&mut self) -> Result<(), DriverError> {
        let base = self.host.iova();
        let entries = IO_ENTRIES.min(self.cap.max_queue_entries.min(65535) as u16);
        self.admin(
            Sqe::create_cq(1, entries, base + OFF_IOCQ as u64),
            "Create I/O Completion Queue 1",
        )?;
        self.admin(
            Sqe::create_sq(1, entries, base + OFF_IOSQ as u64, 1),
            "Create I/O Submission Queue 1",
        )?;
        self.io = Some(Queue::new(1, entries, OFF_IOSQ, OFF_IOCQ));
        Ok(())
    }

    /// Submits a Read (into) or Write (from) `len` bytes at `iova` for `blocks` blocks at
    /// `slba`; returns the command id. The caller keeps the memory reachable until the
    /// completion with that id is reaped (a lease's [`crate::InFlight`]).
    pub fn submit_rw(
        &mut self,
        write: bool,
        nsid: u32,
        slba: u64,
        blocks: u32,
        iova: u64,
        len: u64,
    ) -> Result<u16, DriverError> {
        let bdf = self.bdf;
        let p = prps(iova, len, PAGE as u64).map_err(|source| DriverError::Prp { bdf, source })?;
        let cid_guess = self
            .io
            .as_ref()
            .and_then(|q| q.free_cids.last().copied())
            .ok_or(DriverError::QueueFull { bdf })?;
        let prp2 = match p.prp2 {
            Prp2::None => 0,
            Prp2::Page(a) => a,
            Prp2::List(list) => {
                // The list page belongs to the command id that push() will take next.
                let at = OFF_PRP + usize::from(cid_guess) * PAGE;
                let memory = self.host.memory();
                for (i, a) in list.iter().enumerate() {
                    memory.write64(at + 8 * i, *a);
                }
                self.host.iova() + at as u64
            }
        };
        let opcode = if write { nvm::WRITE } else { nvm::READ };
        let cid = self.push(true, Sqe::rw(opcode, nsid, slba, blocks, p.prp1, prp2))?;
        debug_assert_eq!(cid, cid_guess);
        Ok(cid)
    }

    /// Reaps the I/O completions that are there.
    pub fn reap(&mut self, out: &mut Vec<Cqe>) -> Result<(), DriverError> {
        while let Some(c) = self.poll(true) {
            out.push(c);
        }
        if out.is_empty() && self.csts() == u32::MAX {
            return Err(DriverError::Gone { bdf: self.bdf });
        }
        Ok(())
    }

    /// Enables the CMB (NVMe 1.4): CMBMSC.CRE, read CMBLOC and CMBSZ, map its BAR into the
    /// IOMMU at `bar_iova`, then CMBMSC.CMSE with CBA = the CMB's IOVA, and check CMBSTS.
    /// Returns what it found, the BAR's mapping and its IOMMU mapping.
    pub fn enable_cmb(&mut self, bar_iova: u64) -> Result<(CmbInfo, IommuMapping), DriverError> {
        let bdf = self.bdf;
        if !self.cap.cmb_supported {
            return Err(DriverError::Cmb {
                bdf,
                why: "CAP.CMBS is 0: the controller has no Controller Memory Buffer (or predates NVMe 1.4's CMBMSC)".into(),
            });
        }
        self.regs.write64(regs::CMBMSC, regs::CMBMSC_CRE);
        let sz_raw = self.regs.read32(regs::CMBSZ);
        let size = CmbSz::parse(sz_raw).ok_or_else(|| DriverError::Cmb {
            bdf,
            why: format!("CMBSZ {sz_raw:#x} has a reserved size unit"),
        })?;
        if size.size == 0 {
            return Err(DriverError::Cmb {
                bdf,
                why: "CMBSZ reads 0 after CMBMSC.CRE: no CMB".into(),
            });
        }
        let location = CmbLoc::parse(self.regs.read32(regs::CMBLOC), size.unit);
        if !size.serves_copies() {
            return Err(DriverError::Cmb {
                bdf,
                why: format!(
                    "its CMB does not take both read data (RDS {}) and write data (WDS {}), which a copy through it needs",
                    size.read_data, size.write_data
                ),
            });
        }
        let bar = self.device.map_bar(u32::from(location.bar))?;
        if location.offset + size.size > bar.len() as u64 {
            return Err(DriverError::Cmb {
                bdf,
                why: format!(
                    "CMBLOC/CMBSZ place the CMB at {:#x}+{:#x}, beyond BAR {} ({:#x} bytes)",
                    location.offset,
                    size.size,
                    location.bar,
                    bar.len()
                ),
            });
        }
        let mapping = IommuMapping::new(self.device.container(), bar, bar_iova)?;
        let cba = bar_iova + location.offset;
        let msc = regs::cmbmsc_enable(cba).ok_or_else(|| DriverError::Cmb {
            bdf,
            why: format!("IOVA {cba:#x} is not 4 KiB aligned"),
        })?;
        // High dword first, then the low one with CRE and CMSE (`cmbmsc_stores`): a
        // controller may take CBA when the low half is written. Written low first, the
        // controller took CBA = the low half alone; its own commands then missed the CMB
        // and went through the IOMMU to its own BAR (QEMU: "Blocked re-entrant IO on
        // MemoryRegion: nvme-cmb"), so a copy through the destination's CMB wrote wrong data.
        for (offset, value) in regs::cmbmsc_stores(msc) {
            self.regs.write32(offset, value);
        }
        if self.regs.read32(regs::CMBSTS) & regs::CMBSTS_CBAI != 0 {
            return Err(DriverError::Cmb {
                bdf,
                why: format!("CMBSTS.CBAI: the controller refuses CBA {cba:#x}"),
            });
        }
        Ok((
            CmbInfo {
                location,
                size,
                iova: cba,
            },
            mapping,
        ))
    }

    /// Turns off the CMB's controller memory space (CMBMSC.CMSE = 0, CBA = 0; CRE kept):
    /// the controller then decodes no address as its own CMB. A CBA left from an earlier
    /// session (a controller reset keeps CMBMSC, QEMU's too) or by the kernel's driver
    /// could otherwise equal the IOVA of this session's pool, and the controller would
    /// read and write its own CMB where the pool is meant. No-op without CAP.CMBS.
    pub fn disable_cmb_memory_space(&self) {
        if self.cap.cmb_supported {
            for (offset, value) in regs::cmbmsc_stores(regs::CMBMSC_CRE) {
                self.regs.write32(offset, value);
            }
        }
    }

    /// Reads CMBLOC/CMBSZ (setting CMBMSC.CRE, which changes nothing else) without
    /// enabling the CMB's memory space: for `vfio info`.
    pub fn cmb_registers(&self) -> Option<(CmbLoc, CmbSz)> {
        if !self.cap.cmb_supported {
            return None;
        }
        let msc = self.regs.read64(regs::CMBMSC);
        self.regs.write64(regs::CMBMSC, msc | regs::CMBMSC_CRE);
        let size = CmbSz::parse(self.regs.read32(regs::CMBSZ))?;
        (size.size > 0).then(|| {
            (
                CmbLoc::parse(self.regs.read32(regs::CMBLOC), size.unit),
                size,
            )
        })
    }

    /// The host memory of the queues' IOMMU mapping (for teardown logging).
    pub fn host_iova(&self) -> u64 {
        self.host.iova()
    }
}
