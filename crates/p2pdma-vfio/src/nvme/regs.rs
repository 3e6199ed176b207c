//! NVMe controller registers (NVM Express Base Specification 2.0, section 3.1): offsets
//! and the fields p2pdma reads or writes. Pure: values in, values out.

/// Controller Capabilities (64 bit).
pub const CAP: usize = 0x00;
/// Version.
pub const VS: usize = 0x08;
/// Controller Configuration.
pub const CC: usize = 0x14;
/// Controller Status.
pub const CSTS: usize = 0x1c;
/// Admin Queue Attributes.
pub const AQA: usize = 0x24;
/// Admin Submission Queue base address (64 bit).
pub const ASQ: usize = 0x28;
/// Admin Completion Queue base address (64 bit).
pub const ACQ: usize = 0x30;
/// Controller Memory Buffer Location.
pub const CMBLOC: usize = 0x38;
/// Controller Memory Buffer Size.
pub const CMBSZ: usize = 0x3c;
/// Controller Memory Buffer Memory Space Control (64 bit, NVMe 1.4).
pub const CMBMSC: usize = 0x50;
/// Controller Memory Buffer Status (NVMe 1.4).
pub const CMBSTS: usize = 0x58;
/// First doorbell register.
pub const DOORBELLS: usize = 0x1000;

/// The fields of CAP that the driver uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    /// Maximum queue entries supported (1-based, from the 0-based MQES).
    pub max_queue_entries: u32,
    /// Worst-case time to become ready or not ready, in milliseconds (TO x 500 ms).
    pub timeout_ms: u64,
    /// Doorbell stride in bytes (4 << DSTRD).
    pub doorbell_stride: usize,
    /// Smallest memory page size, in bytes (2 ^ (12 + MPSMIN)).
    pub page_size_min: usize,
    /// Largest memory page size, in bytes.
    pub page_size_max: usize,
    /// Controller Memory Buffer supported (CMBS, NVMe 1.4): CMBMSC must be used.
    pub cmb_supported: bool,
    /// Whether the NVM command set is supported (CSS bit 0).
    pub nvm_command_set: bool,
}

impl Cap {
    /// Parses the 64-bit register value.
    pub fn parse(v: u64) -> Cap {
        Cap {
            max_queue_entries: (v & 0xffff) as u32 + 1,
            timeout_ms: ((v >> 24) & 0xff) * 500,
            doorbell_stride: 4 << ((v >> 32) & 0xf),
            page_size_min: 1 << (12 + ((v >> 48) & 0xf)),
            page_size_max: 1 << (12 + ((v >> 52) & 0xf)),
            cmb_supported: v & (1 << 57) != 0,
            nvm_command_set: v & (1 << 37) != 0,
        }
    }

    /// Offset of the submission queue tail doorbell of queue `qid`.
    pub fn sq_tail_doorbell(&self, qid: u16) -> usize {
        DOORBELLS + (2 * qid as usize) * self.doorbell_stride
    }

    /// Offset of the completion queue head doorbell of queue `qid`.
    pub fn cq_head_doorbell(&self, qid: u16) -> usize {
        DOORBELLS + (2 * qid as usize + 1) * self.doorbell_stride
    }
}

/// CC.EN.
pub const CC_EN: u32 = 1;

/// The CC value that enables a controller with the NVM command set, `page_size` memory
/// pages (a power of two >= 4096), round-robin arbitration, 64-byte submission and 16-byte
/// completion entries. `None` if the page size is not one CC can name.
pub fn cc_enable(page_size: usize) -> Option<u32> {
    if !page_size.is_power_of_two() || page_size < 4096 {
        return None;
    }
    let mps = page_size.trailing_zeros() - 12;
    if mps > 15 {
        return None;
    }
    Some(CC_EN | (mps << 7) | (6 << 16) | (4 << 20))
}

/// CSTS.RDY.
pub const CSTS_RDY: u32 = 1;
/// CSTS.CFS (controller fatal status).
pub const CSTS_CFS: u32 = 1 << 1;

/// The AQA value for admin queues of `sq_entries` and `cq_entries` (1-based, 2..=4096).
pub fn aqa(sq_entries: u32, cq_entries: u32) -> u32 {
    ((cq_entries - 1) << 16) | (sq_entries - 1)
}

/// CMBLOC, read after CMBMSC.CRE is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CmbLoc {
    /// Which BAR holds the CMB (BIR).
    pub bar: u8,
    /// Offset in the BAR, in bytes.
    pub offset: u64,
}

/// CMBSZ, read after CMBMSC.CRE is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CmbSz {
    /// Size in bytes.
    pub size: u64,
    /// The size unit in bytes (SZU), which also scales CMBLOC.OFST.
    pub unit: u64,
    /// Submission queues may live in the CMB (SQS).
    pub submission_queues: bool,
    /// Completion queues may live in the CMB (CQS).
    pub completion_queues: bool,
    /// PRP and SGL lists may live in the CMB (LISTS).
    pub lists: bool,
    /// Read data (controller to host: the destination of a Read) may be in the CMB (RDS).
    pub read_data: bool,
    /// Write data (host to controller: the source of a Write) may be in the CMB (WDS).
    pub write_data: bool,
}

impl CmbSz {
    /// Parses CMBSZ; `None` for a reserved size unit.
    pub fn parse(v: u32) -> Option<CmbSz> {
        let szu = (v >> 8) & 0xf;
        if szu > 6 {
            return None;
        }
        let unit = 4096u64 << (4 * szu);
        Some(CmbSz {
            size: u64::from(v >> 12) * unit,
            unit,
            submission_queues: v & 1 != 0,
            completion_queues: v & 2 != 0,
            lists: v & 4 != 0,
            read_data: v & 8 != 0,
            write_data: v & 16 != 0,
        })
    }

    /// Whether data can move through the CMB in both directions (a Read into it, a Write
    /// out of it), which a copy through it needs.
    pub fn serves_copies(&self) -> bool {
        self.read_data && self.write_data
    }
}

impl CmbLoc {
    /// Parses CMBLOC given CMBSZ's unit.
    pub fn parse(v: u32, unit: u64) -> CmbLoc {
        CmbLoc {
            bar: (v & 0x7) as u8,
            offset: u64::from(v >> 12) * unit,
        }
    }
}

/// CMBMSC.CRE: capabilities registers enabled (CMBLOC and CMBSZ read non-zero).
pub const CMBMSC_CRE: u64 = 1;
/// CMBMSC.CMSE: controller memory space enabled at CBA.
pub const CMBMSC_CMSE: u64 = 1 << 1;
/// CMBSTS.CBAI: the CBA written is invalid.
pub const CMBSTS_CBAI: u32 = 1;

/// The CMBMSC value that enables the CMB's memory space at `cba` (the address the
/// controller and its peers use for it: here the IOVA where its BAR is mapped). `None`
/// unless `cba` is 4 KiB aligned.
pub fn cmbmsc_enable(cba: u64) -> Option<u64> {
    cba.is_multiple_of(4096)
        .then_some(cba | CMBMSC_CRE | CMBMSC_CMSE)
}

/// The two 32-bit register writes (offset, value) that store the 64-bit CMBMSC value
/// `msc`, in the order to make them: the upper half of CBA first, then the lower dword,
/// which carries CRE and CMSE, as Linux's `nvme_map_cmb` does (`hi_lo_writeq`). A
/// controller takes CBA when CMSE is written; written low first, it would enable the memory space at a CBA whose upper half is still the old one
/// (QEMU's nvme computes CBA on the lower dword's write only, so an IOVA above 4 GiB
/// became CBA 0, and the owner reached its own CMB through the IOMMU instead).
pub fn cmbmsc_writes(msc: u64) -> [(usize, u32); 2] {
    [(CMBMSC + 4, (msc >> 32) as u32), (CMBMSC, msc as u32)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields_parse_from_qemus_value() {
        // QEMU 10's nvme: MQES 2047, CQR, TO 15, DSTRD 0, CSS NVM, MPSMAX 4 (64K), CMBS.
        let v: u64 = 0x7ff | (1 << 16) | (0xf << 24) | (1 << 37) | (4 << 52) | (1 << 57);
        let cap = Cap::parse(v);
        assert_eq!(cap.max_queue_entries, 2048);
        assert_eq!(cap.timeout_ms, 7500);
        assert_eq!(cap.doorbell_stride, 4);
        assert_eq!(cap.page_size_min, 4096);
        assert_eq!(cap.page_size_max, 65536);
        assert!(cap.cmb_supported && cap.nvm_command_set);
        assert_eq!(cap.sq_tail_doorbell(0), 0x1000);
        assert_eq!(cap.cq_head_doorbell(0), 0x1004);
        assert_eq!(cap.sq_tail_doorbell(1), 0x1008);
        assert_eq!(cap.cq_head_doorbell(1), 0x100c);
        let strided = Cap::parse(2 << 32);
        assert_eq!(strided.cq_head_doorbell(1), 0x1000 + 3 * 16);
        assert!(!strided.cmb_supported);
    }

    #[test]
    fn cc_names_page_size_and_entry_sizes() {
        assert_eq!(cc_enable(4096), Some(0x0046_0001));
        assert_eq!(cc_enable(8192).unwrap() >> 7 & 0xf, 1);
        assert_eq!(cc_enable(3000), None);
        assert_eq!(cc_enable(2048), None);
        assert_eq!(aqa(32, 64), 0x003f_001f);
    }

    #[test]
    fn cmb_registers_parse_with_their_unit() {
        // 16 MiB in 1 MiB units (SZU 2), RDS WDS LISTS SQS CQS.
        let sz = CmbSz::parse((16 << 12) | (2 << 8) | 0x1f).unwrap();
        assert_eq!(sz.size, 16 << 20);
        assert_eq!(sz.unit, 1 << 20);
        assert!(sz.serves_copies() && sz.lists && sz.submission_queues);
        let no_write = CmbSz::parse((1 << 12) | 0x0f).unwrap();
        assert_eq!(no_write.size, 4096);
        assert!(no_write.read_data && !no_write.write_data && !no_write.serves_copies());
        assert_eq!(CmbSz::parse(7 << 8), None);
        let loc = CmbLoc::parse((3 << 12) | 2, sz.unit);
        assert_eq!(
            loc,
            CmbLoc {
                bar: 2,
                offset: 3 << 20
            }
        );
    }

    #[test]
    fn cmbmsc_is_written_upper_half_first_so_cmse_sees_the_whole_cba() {
        let msc = cmbmsc_enable(0x40_0000_0000).unwrap();
        assert_eq!(
            cmbmsc_writes(msc),
            [(CMBMSC + 4, 0x40), (CMBMSC, 0x3)],
            "the dword with CRE and CMSE goes last"
        );
        let msc = cmbmsc_enable(0x1_2345_6000).unwrap();
        let [(hi_at, hi), (lo_at, lo)] = cmbmsc_writes(msc);
        assert_eq!((hi_at, lo_at), (0x54, 0x50));
        assert_eq!((u64::from(hi) << 32) | u64::from(lo), msc);
    }

    #[test]
    fn cmbmsc_sets_cre_and_cmse_with_an_aligned_cba() {
        assert_eq!(cmbmsc_enable(0x40_0000_0000), Some(0x40_0000_0003));
        assert_eq!(cmbmsc_enable(0x1234), None);
        assert_eq!(cmbmsc_enable(0).unwrap() & !0xfff, 0);
    }
}
