//! Submission and completion queue entries (NVMe Base 2.0, 4.2 and 4.6) and the commands
//! p2pdma sends. Pure: entries are plain `[u32; 16]` / `[u32; 4]` values.

/// A 64-byte submission queue entry, as 16 little-endian dwords.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sqe(pub [u32; 16]);

/// Admin opcodes.
pub mod admin {
    /// Delete I/O Submission Queue.
    pub const DELETE_SQ: u8 = 0x00;
    /// Create I/O Submission Queue.
    pub const CREATE_SQ: u8 = 0x01;
    /// Delete I/O Completion Queue.
    pub const DELETE_CQ: u8 = 0x04;
    /// Create I/O Completion Queue.
    pub const CREATE_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
}

/// NVM command set opcodes.
pub mod nvm {
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
}

impl Sqe {
    /// An entry with the opcode, command id and namespace set.
    pub fn new(opcode: u8, nsid: u32) -> Sqe {
        let mut e = Sqe::default();
        e.0[0] = u32::from(opcode);
        e.0[1] = nsid;
        e
    }

    /// The opcode.
    pub fn opcode(&self) -> u8 {
        self.0[0] as u8
    }

    /// Sets the command identifier (CDW0 bits 31:16).
    pub fn set_cid(&mut self, cid: u16) {
        self.0[0] = (self.0[0] & 0xffff) | (u32::from(cid) << 16);
    }

    /// The command identifier.
    pub fn cid(&self) -> u16 {
        (self.0[0] >> 16) as u16
    }

    /// Sets PRP entry 1 and 2.
    pub fn set_prp(&mut self, prp1: u64, prp2: u64) {
        self.0[6] = prp1 as u32;
        self.0[7] = (prp1 >> 32) as u32;
        self.0[8] = prp2 as u32;
        self.0[9] = (prp2 >> 32) as u32;
    }

    /// PRP entry 1 and 2.
    pub fn prp(&self) -> (u64, u64) {
        (
            u64::from(self.0[6]) | u64::from(self.0[7]) << 32,
            u64::from(self.0[8]) | u64::from(self.0[9]) << 32,
        )
    }

    /// Identify with CNS `cns` (1 controller, 0 namespace `nsid`, 2 active namespace list)
    /// into the 4 KiB page at `iova`.
    pub fn identify(cns: u8, nsid: u32, iova: u64) -> Sqe {
        let mut e = Sqe::new(admin::IDENTIFY, nsid);
        e.set_prp(iova, 0);
        e.0[10] = u32::from(cns);
        e
    }

    /// Create I/O Completion Queue `qid` of `entries` (1-based) at `iova`, physically
    /// contiguous, interrupts off (completions are polled).
    pub fn create_cq(qid: u16, entries: u16, iova: u64) -> Sqe {
        let mut e = Sqe::new(admin::CREATE_CQ, 0);
        e.set_prp(iova, 0);
        e.0[10] = (u32::from(entries - 1) << 16) | u32::from(qid);
        e.0[11] = 1;
        e
    }

    /// Create I/O Submission Queue `qid` of `entries` at `iova`, completing on `cqid`.
    pub fn create_sq(qid: u16, entries: u16, iova: u64, cqid: u16) -> Sqe {
        let mut e = Sqe::new(admin::CREATE_SQ, 0);
        e.set_prp(iova, 0);
        e.0[10] = (u32::from(entries - 1) << 16) | u32::from(qid);
        e.0[11] = (u32::from(cqid) << 16) | 1;
        e
    }

    /// A Read or Write of `blocks` (1-based, 1..=65536) logical blocks at `slba`.
    pub fn rw(opcode: u8, nsid: u32, slba: u64, blocks: u32, prp1: u64, prp2: u64) -> Sqe {
        debug_assert!((1..=65536).contains(&blocks));
        let mut e = Sqe::new(opcode, nsid);
        e.set_prp(prp1, prp2);
        e.0[10] = slba as u32;
        e.0[11] = (slba >> 32) as u32;
        e.0[12] = (blocks - 1) & 0xffff;
        e
    }
}

/// A 16-byte completion queue entry, as 4 dwords.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cqe(pub [u32; 4]);

impl Cqe {
    /// Command specific result (DW0).
    pub fn result(&self) -> u32 {
        self.0[0]
    }
    /// Submission queue head pointer.
    pub fn sq_head(&self) -> u16 {
        self.0[2] as u16
    }
    /// Submission queue identifier.
    pub fn sq_id(&self) -> u16 {
        (self.0[2] >> 16) as u16
    }
    /// Command identifier.
    pub fn cid(&self) -> u16 {
        self.0[3] as u16
    }
    /// Phase tag.
    pub fn phase(&self) -> bool {
        self.0[3] & (1 << 16) != 0
    }
    /// The status field without the phase bit (0 = success).
    pub fn status(&self) -> Status {
        Status((self.0[3] >> 17) as u16)
    }
}

/// A completion's status field (SC, SCT, CRD, M, DNR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    /// Success.
    pub fn is_success(self) -> bool {
        self.code() == 0 && self.code_type() == 0
    }
    /// Status Code.
    pub fn code(self) -> u8 {
        self.0 as u8
    }
    /// Status Code Type.
    pub fn code_type(self) -> u8 {
        ((self.0 >> 8) & 7) as u8
    }
    /// Do Not Retry.
    pub fn do_not_retry(self) -> bool {
        self.0 & (1 << 14) != 0
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match (self.code_type(), self.code()) {
            (0, 0x00) => "success",
            (0, 0x01) => "invalid command opcode",
            (0, 0x02) => "invalid field in command",
            (0, 0x04) => "data transfer error",
            (0, 0x06) => "internal error",
            (0, 0x07) => "command abort requested",
            (0, 0x0b) => "invalid namespace or format",
            (0, 0x13) => "invalid number of PRP entries (PRP offset invalid)",
            (0, 0x80) => "LBA out of range",
            (1, 0x01) => "invalid queue identifier",
            (1, 0x02) => "invalid queue size",
            (2, 0x81) => "unrecovered read error",
            (2, 0x86) => "access denied",
            _ => "error",
        };
        write!(
            f,
            "{what} (status code type {:#x}, status code {:#04x}{})",
            self.code_type(),
            self.code(),
            if self.do_not_retry() {
                ", do not retry"
            } else {
                ""
            }
        )
    }
}

/// What Identify Controller says that p2pdma uses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IdentifyController {
    /// PCI vendor id.
    pub vid: u16,
    /// Serial number.
    pub serial: String,
    /// Model number.
    pub model: String,
    /// Firmware revision.
    pub firmware: String,
    /// Maximum data transfer size, in units of the minimum page size (0 = no limit).
    pub mdts: u8,
    /// Controller id.
    pub cntlid: u16,
    /// Number of namespaces (the highest nsid).
    pub nn: u32,
}

fn ascii(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_matches(|c: char| c == ' ' || c == '\0')
        .to_owned()
}

impl IdentifyController {
    /// Parses the 4096-byte Identify Controller data structure.
    pub fn parse(d: &[u8; 4096]) -> IdentifyController {
        IdentifyController {
            vid: u16::from_le_bytes([d[0], d[1]]),
            serial: ascii(&d[4..24]),
            model: ascii(&d[24..64]),
            firmware: ascii(&d[64..72]),
            mdts: d[77],
            cntlid: u16::from_le_bytes([d[78], d[79]]),
            nn: u32::from_le_bytes([d[516], d[517], d[518], d[519]]),
        }
    }

    /// The largest transfer in bytes for a `page_size_min` controller (`None`: no limit).
    pub fn max_transfer(&self, page_size_min: usize) -> Option<usize> {
        (self.mdts != 0).then(|| page_size_min << self.mdts)
    }
}

/// What Identify Namespace says that p2pdma uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IdentifyNamespace {
    /// Size in logical blocks.
    pub blocks: u64,
    /// Logical block size in bytes of the format in use.
    pub block_size: u32,
    /// Metadata bytes per block of that format (p2pdma refuses namespaces with metadata).
    pub metadata: u16,
}

impl IdentifyNamespace {
    /// Parses the 4096-byte Identify Namespace data structure.
    pub fn parse(d: &[u8; 4096]) -> IdentifyNamespace {
        let blocks = u64::from_le_bytes(d[0..8].try_into().expect("8 bytes"));
        let flbas = d[26];
        let index = usize::from((flbas & 0xf) | ((flbas >> 1) & 0x30));
        let off = 128 + 4 * index.min(63);
        let lbaf = u32::from_le_bytes(d[off..off + 4].try_into().expect("4 bytes"));
        IdentifyNamespace {
            blocks,
            block_size: 1 << ((lbaf >> 16) & 0xff),
            metadata: lbaf as u16,
        }
    }

    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.blocks * u64::from(self.block_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write_entries_carry_lba_count_and_prps() {
        let mut e = Sqe::rw(
            nvm::READ,
            1,
            0x1_0000_0002,
            8,
            0xdead_b000,
            0xbeef_0000_1000,
        );
        e.set_cid(0xabcd);
        assert_eq!(e.opcode(), 2);
        assert_eq!(e.cid(), 0xabcd);
        assert_eq!(e.0[0], 0xabcd_0002);
        assert_eq!(e.0[1], 1);
        assert_eq!((e.0[10], e.0[11], e.0[12]), (2, 1, 7));
        assert_eq!(e.prp(), (0xdead_b000, 0xbeef_0000_1000));
        let q = Sqe::create_sq(1, 64, 0x1000, 1);
        assert_eq!((q.0[10], q.0[11]), (0x003f_0001, 0x0001_0001));
        let c = Sqe::create_cq(1, 64, 0x2000);
        assert_eq!((c.0[10], c.0[11]), (0x003f_0001, 1));
        assert_eq!(Sqe::identify(1, 0, 0x3000).0[10], 1);
    }

    #[test]
    fn completion_fields_and_status() {
        let c = Cqe([7, 0, (3 << 16) | 5, (0x0281 << 17) | (1 << 16) | 42]);
        assert_eq!(c.result(), 7);
        assert_eq!((c.sq_id(), c.sq_head(), c.cid()), (3, 5, 42));
        assert!(c.phase());
        assert!(!c.status().is_success());
        assert_eq!(c.status().code_type(), 2);
        assert_eq!(c.status().code(), 0x81);
        assert!(c.status().to_string().starts_with("unrecovered read error"));
        let ok = Cqe([0, 0, 0, 1 << 16]);
        assert!(ok.status().is_success() && ok.phase());
    }

    #[test]
    fn identify_structures_parse() {
        let mut d = [0u8; 4096];
        d[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
        d[4..12].copy_from_slice(b"vf0     ");
        d[24..36].copy_from_slice(b"QEMU NVMe Ct");
        d[77] = 7;
        d[516..520].copy_from_slice(&256u32.to_le_bytes());
        let c = IdentifyController::parse(&d);
        assert_eq!(
            (c.vid, c.serial.as_str(), c.mdts, c.nn),
            (0x1b36, "vf0", 7, 256)
        );
        assert_eq!(c.model, "QEMU NVMe Ct");
        assert_eq!(c.max_transfer(4096), Some(512 << 10));
        let mut n = [0u8; 4096];
        n[0..8].copy_from_slice(&131072u64.to_le_bytes());
        n[26] = 1; // format 1
        n[128 + 4..128 + 8].copy_from_slice(&(12u32 << 16).to_le_bytes());
        let ns = IdentifyNamespace::parse(&n);
        assert_eq!((ns.blocks, ns.block_size, ns.metadata), (131072, 4096, 0));
        assert_eq!(ns.bytes(), 512 << 20);
    }
}
