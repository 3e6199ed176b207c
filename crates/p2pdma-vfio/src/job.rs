//! A whole VFIO copy in one call: what `p2pdma copy --via vfio` does, for any library user.
//!
//! [`check`] refuses what is wrong with the request alone (different offsets, the same
//! namespace twice) before any device is opened. [`Opened::open`] opens the controllers in
//! one VFIO container (which resets them), identifies both namespaces, validates the range
//! against them, and sets up the pool (the named controller's CMB, enabled with CMBMSC at
//! [`POOL_IOVA`], or another device's BAR mapped there). [`run`] does both, copies through
//! leases of the pool over the kernel path's pipeline, and with `verify` compares both
//! ranges with the kernel path's comparison ([`p2pdma::copy::verify::verify_through`])
//! through host memory. A [`VfioObserver`] hears the phases and the progress, and may ask
//! the copy to stop (which begins the revocation as a device request would). Errors are
//! typed ([`VfioCopyError`]); a copy that stopped part-way keeps its exact written ranges
//! and the revocation's steps ([`Stopped`]).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use p2pdma::bdf::ParseBdfError;
use p2pdma::copy::job::{CopyObserver, Phase};
use p2pdma::copy::verify::Verification;
use p2pdma::sysfs::SysfsRoot;
use p2pdma::Bdf;
use serde::Serialize;

use crate::copy::{CopySpec, CopyStop, Session, Step, VfioVerifyError};
use crate::driver::{CmbInfo, Controller, DriverError, PAGE};
use crate::nvme::cmd::IdentifyNamespace;
use crate::pool::{BarPool, PoolError};
use crate::vfio::{Container, Device, IommuMapping, VfioError};

/// IOVA of the first controller's queue memory (each next one 16 MiB further).
pub const HOST_IOVA: u64 = 0x1000_0000;
/// IOVA of the verification buffers (host memory, at most 128 MiB).
pub const VERIFY_IOVA: u64 = 0x3000_0000;
/// IOVA where the pool's BAR is mapped when it is not a CMB (256 GiB: far from guest
/// RAM's identity range).
pub const POOL_IOVA: u64 = 0x40_0000_0000;
/// IOVA where a CMB's BAR is mapped (CMBMSC.CBA) when it fits below the x86 MSI window
/// (0xfee00000): a CBA below 4 GiB, as Linux's own (the CMB's bus address) always is, so
/// a controller that takes CBA from the register's low half alone still finds its CMB.
pub const CMB_IOVA: u64 = 0x8000_0000;
/// The end of the IOVA range [`CMB_IOVA`] may use.
const CMB_IOVA_END: u64 = 0xfee0_0000;

/// Where to map a CMB whose BAR holds `bar_len` bytes.
pub fn cmb_iova(bar_len: u64) -> u64 {
    if CMB_IOVA
        .checked_add(bar_len)
        .is_some_and(|end| end <= CMB_IOVA_END)
    {
        CMB_IOVA
    } else {
        POOL_IOVA
    }
}
/// The most chunks in flight per direction (the I/O queues push back beyond).
pub const MAX_DEPTH: usize = 32;

/// A namespace of a controller bound to vfio-pci: `0000:03:00.0/1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Namespace {
    /// The controller.
    pub bdf: Bdf,
    /// The namespace id (1, 2, ...).
    pub nsid: u32,
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.bdf, self.nsid)
    }
}

/// Why a `BDF/NSID` does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamespaceParseError {
    /// No `/`.
    #[error("'{text}' is not BDF/NSID (with --via vfio, name namespaces as 0000:03:00.0/1)")]
    NotBdfNsid {
        /// The text given.
        text: String,
    },
    /// The part before `/` is not a PCI address.
    #[error("'{text}' does not start with a PCI address (DDDD:BB:DD.F)")]
    Bdf {
        /// The text given.
        text: String,
        /// Why.
        #[source]
        source: ParseBdfError,
    },
    /// The part after `/` is not a namespace id.
    #[error("'{nsid}' in '{text}' is not a namespace id (1, 2, ...)")]
    Nsid {
        /// The text given.
        text: String,
        /// The part after `/`.
        nsid: String,
    },
}

impl FromStr for Namespace {
    type Err = NamespaceParseError;

    fn from_str(text: &str) -> Result<Namespace, NamespaceParseError> {
        let (bdf, nsid) = text
            .split_once('/')
            .ok_or_else(|| NamespaceParseError::NotBdfNsid { text: text.into() })?;
        let bdf = bdf.parse().map_err(|source| NamespaceParseError::Bdf {
            text: text.into(),
            source,
        })?;
        let nsid =
            nsid.parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| NamespaceParseError::Nsid {
                    text: text.into(),
                    nsid: nsid.into(),
                })?;
        Ok(Namespace { bdf, nsid })
    }
}

/// A copy through VFIO as the user asked for it (checked by [`check`] and
/// [`Opened::open`]).
#[derive(Debug, Clone)]
pub struct VfioCopyJob {
    /// Source namespace.
    pub src: Namespace,
    /// Destination namespace.
    pub dst: Namespace,
    /// First byte read (must equal `dst_offset`).
    pub src_offset: u64,
    /// First byte written.
    pub dst_offset: u64,
    /// Bytes to copy [default: from the offset to the end of the smaller namespace].
    pub length: Option<u64>,
    /// Bytes per command (cut to the controllers' MDTS, rounded to pages).
    pub chunk_size: u64,
    /// Chunks in flight (at most what the pool holds, at most [`MAX_DEPTH`]).
    pub queue_depth: u32,
    /// The device whose memory the data moves through [default: the source controller's
    /// CMB]; a controller of the copy lends its CMB, another device its `provider_bar`.
    pub provider: Option<Bdf>,
    /// The BAR of a provider that is not one of the controllers.
    pub provider_bar: u32,
    /// Re-read both ranges through host memory and compare.
    pub verify: bool,
    /// The sysfs root.
    pub sysfs: SysfsRoot,
}

/// Why a VFIO copy did not happen or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum VfioCopyError {
    /// Different offsets on the two namespaces.
    #[error("--via vfio copies at the same offset on both namespaces: give --src-offset and --dst-offset equal (got {src_offset} and {dst_offset})")]
    OffsetsDiffer {
        /// The source offset.
        src_offset: u64,
        /// The destination offset.
        dst_offset: u64,
    },
    /// Source and destination are one namespace.
    #[error("source and destination are the same namespace ({0})")]
    SameNamespace(Namespace),
    /// VFIO refused (container, group, device, BAR, IOMMU mapping): the message names
    /// the device and what to check.
    #[error(transparent)]
    Vfio(#[from] VfioError),
    /// The userspace NVMe driver failed (reset, Identify, a command).
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// The pool could not be made over the provider's memory.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// A namespace has no blocks.
    #[error("namespace {src} or {dst} is not active (0 blocks): check `p2pdma vfio info`")]
    Inactive {
        /// The source.
        src: Namespace,
        /// The destination.
        dst: Namespace,
    },
    /// The two namespaces' logical blocks differ.
    #[error("{src} has {src_block}-byte blocks and {dst} {dst_block}-byte blocks: --via vfio needs equal block sizes")]
    BlockSizes {
        /// The source.
        src: Namespace,
        /// Its block size.
        src_block: u32,
        /// The destination.
        dst: Namespace,
        /// Its block size.
        dst_block: u32,
    },
    /// Offset or length not whole blocks, or no length.
    #[error("offset {offset} and length {length} must be non-zero multiples of the {block}-byte logical block")]
    Unaligned {
        /// The offset.
        offset: u64,
        /// The length.
        length: u64,
        /// The logical block size.
        block: u64,
    },
    /// The range runs past a namespace's end.
    #[error("{ns} holds {bytes} bytes: offset {offset} + length {length} runs past its end")]
    PastEnd {
        /// The namespace.
        ns: Namespace,
        /// Its size.
        bytes: u64,
        /// The offset.
        offset: u64,
        /// The length.
        length: u64,
    },
    /// The copy stopped part-way (revoked, a failed or stalled command): what reached
    /// the destination and what the revocation did.
    #[error(transparent)]
    Stopped(Box<Stopped>),
    /// `verify` could not re-read or compare (a mismatch is not an error: see
    /// [`VfioCopySummary::verified`]).
    #[error("the copy finished but could not be verified")]
    Verify(#[source] VfioVerifyError),
}

impl VfioCopyError {
    /// The request itself is wrong (as opposed to a device or the system failing).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            VfioCopyError::Unaligned { .. } | VfioCopyError::PastEnd { .. }
        )
    }
}

/// A copy that stopped part-way.
#[derive(Debug, thiserror::Error)]
#[error("the copy stopped part-way: destination {dst} bytes written: {}{}", ranges(&self.report.written), uncertain(&self.report.uncertain))]
pub struct Stopped {
    /// The destination.
    pub dst: Namespace,
    /// What was written and what the revocation did.
    pub report: StopReport,
    /// Why it stopped.
    #[source]
    pub stop: CopyStop,
}

impl Stopped {
    /// Something may have reached the destination (a partial copy, not a plain failure).
    pub fn wrote_anything(&self) -> bool {
        self.report.bytes_written > 0 || !self.report.uncertain.is_empty()
    }
}

fn ranges(written: &[(u64, u64)]) -> String {
    if written.is_empty() {
        return "none".into();
    }
    written
        .iter()
        .map(|(s, e)| format!("[{s}, {e})"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn uncertain(uncertain: &[(u64, u64)]) -> String {
    if uncertain.is_empty() {
        String::new()
    } else {
        format!("; possibly written (command cut off): {uncertain:?}")
    }
}

/// The details of a stopped copy (the JSON error document's `details`).
#[derive(Debug, Clone, Serialize)]
pub struct StopReport {
    /// Destination byte ranges whose Write completed, merged, sorted.
    pub written: Vec<(u64, u64)>,
    /// Their total.
    pub bytes_written: u64,
    /// Destination ranges whose Write was cut off by disabling the controllers.
    pub uncertain: Vec<(u64, u64)>,
    /// The revocation's steps.
    pub revocation: Vec<Step>,
}

/// Hears what [`run`] is doing: the phases and the progress as the kernel path's
/// [`CopyObserver`] hears them ([`CopyObserver::route_decided`] is never called: the
/// VFIO path has no route to decide; [`VfioObserver::opened`] comes instead). Every
/// method has a default that does nothing.
pub trait VfioObserver: CopyObserver {
    /// The devices are open and the pool is set up; nothing was written yet.
    fn opened(&mut self, opened: &Opened) {
        let _ = opened;
    }
    /// Polled between completions: true stops the copy (the revocation begins).
    fn stop_requested(&mut self) -> bool {
        false
    }
}

/// An observer that ignores everything.
impl VfioObserver for () {}

/// What `--json` prints after a VFIO copy.
#[derive(Debug, Clone, Serialize)]
pub struct VfioCopySummary {
    /// Always `"vfio"`.
    pub via: &'static str,
    /// `BDF/NSID` of the source.
    pub src: String,
    /// `BDF/NSID` of the destination.
    pub dst: String,
    /// First byte read.
    pub src_offset: u64,
    /// First byte written (the same).
    pub dst_offset: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Wall time of the data movement.
    pub seconds: f64,
    /// `bytes / seconds`.
    pub throughput_bytes_per_sec: f64,
    /// The device whose memory the data moved through.
    pub provider: String,
    /// `"cmb"` or `"bar"`.
    pub provider_kind: &'static str,
    /// Where the pool is mapped in the IOMMU.
    pub pool_iova: String,
    /// The CMB's registers, when the pool is a CMB.
    pub cmb: Option<CmbInfo>,
    /// Bytes per command.
    pub chunk_size: u64,
    /// Chunks in flight.
    pub queue_depth: usize,
    /// With `verify`: whether both ranges hold the same bytes.
    pub verified: Option<bool>,
    /// xxh3-128 of the source range (hex).
    pub src_digest: Option<String>,
    /// xxh3-128 of the destination range (hex).
    pub dst_digest: Option<String>,
    /// Wall time of the verification.
    pub verify_seconds: Option<f64>,
    /// The comparison, as the kernel path reports it (digests, first difference).
    pub verification: Option<Verification>,
}

/// The devices of a copy, open, with the pool set up and the range validated.
pub struct Opened {
    /// Controllers, pool, mappings and request eventfds.
    pub session: Session,
    /// The source.
    pub src: Namespace,
    /// The destination.
    pub dst: Namespace,
    /// Index of the destination's controller in the session (the source's is 0).
    pub dst_index: usize,
    /// The logical block size of both namespaces.
    pub block: u64,
    /// The first byte of both ranges.
    pub offset: u64,
    /// Bytes to copy.
    pub length: u64,
    /// The provider of the pool.
    pub provider: Bdf,
    /// `"cmb"` or `"bar"`.
    pub provider_kind: &'static str,
    /// The CMB's registers, when the pool is a CMB.
    pub cmb: Option<CmbInfo>,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("src", &self.src)
            .field("dst", &self.dst)
            .field("offset", &self.offset)
            .field("length", &self.length)
            .field("provider", &self.provider)
            .finish()
    }
}

/// Refuses what is wrong with the request alone, before any device is opened.
pub fn check(job: &VfioCopyJob) -> Result<(), VfioCopyError> {
    if job.src_offset != job.dst_offset {
        return Err(VfioCopyError::OffsetsDiffer {
            src_offset: job.src_offset,
            dst_offset: job.dst_offset,
        });
    }
    if job.src == job.dst {
        return Err(VfioCopyError::SameNamespace(job.src));
    }
    Ok(())
}

/// The range to copy: `length` (or up to the end of the smaller namespace) at `offset`,
/// whole blocks, inside both namespaces.
fn validate_range(
    (src, src_ns): (Namespace, &IdentifyNamespace),
    (dst, dst_ns): (Namespace, &IdentifyNamespace),
    offset: u64,
    length: Option<u64>,
) -> Result<(u64, u64), VfioCopyError> {
    if src_ns.blocks == 0 || dst_ns.blocks == 0 {
        return Err(VfioCopyError::Inactive { src, dst });
    }
    if src_ns.block_size != dst_ns.block_size {
        return Err(VfioCopyError::BlockSizes {
            src,
            src_block: src_ns.block_size,
            dst,
            dst_block: dst_ns.block_size,
        });
    }
    let block = u64::from(src_ns.block_size);
    let length =
        length.unwrap_or_else(|| src_ns.bytes().min(dst_ns.bytes()).saturating_sub(offset));
    if length == 0 || !offset.is_multiple_of(block) || !length.is_multiple_of(block) {
        return Err(VfioCopyError::Unaligned {
            offset,
            length,
            block,
        });
    }
    for (ns, id) in [(src, src_ns), (dst, dst_ns)] {
        if offset
            .checked_add(length)
            .is_none_or(|end| end > id.bytes())
        {
            return Err(VfioCopyError::PastEnd {
                ns,
                bytes: id.bytes(),
                offset,
                length,
            });
        }
    }
    Ok((block, length))
}

/// Bytes per command and chunks in flight for a copy asked to run at `chunk_size` and
/// `queue_depth`: the chunk cut to `max_transfer` (MDTS), at least one block, whole blocks
/// rounded up to whole pages (PRPs name pages); the depth at most what a pool of
/// `pool_len` bytes holds in such chunks, between 1 and [`MAX_DEPTH`].
pub fn shape(
    chunk_size: u64,
    queue_depth: u32,
    max_transfer: u64,
    block: u64,
    pool_len: u64,
) -> (u64, usize) {
    let page = PAGE as u64;
    let chunk = chunk_size.min(max_transfer).max(block) / block * block;
    let chunk = chunk.div_ceil(page) * page;
    let depth = (queue_depth as usize)
        .min(usize::try_from(pool_len / chunk).unwrap_or(usize::MAX))
        .clamp(1, MAX_DEPTH);
    (chunk, depth)
}

impl Opened {
    /// Opens the controllers of `job` (which resets them) and the provider in one VFIO
    /// container, validates the range against both namespaces and sets up the pool.
    pub fn open(job: &VfioCopyJob) -> Result<Opened, VfioCopyError> {
        check(job)?;
        let (src, dst) = (job.src, job.dst);
        let offset = job.src_offset;
        let container = Container::open()?;
        let mut controllers = vec![Controller::open(
            &container, &job.sysfs, src.bdf, HOST_IOVA,
        )?];
        let dst_index = if dst.bdf == src.bdf {
            0
        } else {
            controllers.push(Controller::open(
                &container,
                &job.sysfs,
                dst.bdf,
                HOST_IOVA + 0x100_0000,
            )?);
            1
        };
        let src_ns = controllers[0].namespace(src.nsid)?;
        let dst_ns = controllers[dst_index].namespace(dst.nsid)?;
        let (block, length) = validate_range((src, &src_ns), (dst, &dst_ns), offset, job.length)?;

        // The pool: a controller's CMB, or another device's BAR. No other controller may
        // decode the pool's IOVA as its own CMB (a CBA left by an earlier session).
        let provider = job.provider.unwrap_or(src.bdf);
        for c in controllers.iter().filter(|c| c.bdf() != provider) {
            c.disable_cmb_memory_space();
        }
        let mut cmb = None;
        let mut provider_device = None;
        let (pool, mapping, provider_kind) =
            if let Some(i) = controllers.iter().position(|c| c.bdf() == provider) {
                // The whole BAR is mapped: its size decides where (0 if the registers do
                // not say, and enable_cmb then explains why there is no CMB).
                let bar_len = controllers[i].cmb_registers().map_or(0, |(location, _)| {
                    controllers[i].device().bar_size(u32::from(location.bar))
                });
                let (info, mapping) = controllers[i].enable_cmb(cmb_iova(bar_len))?;
                let pool = BarPool::new(
                    &format!("the CMB of {provider}"),
                    mapping.memory().clone(),
                    info.location.offset,
                    info.size.size,
                    info.iova,
                    PAGE as u64,
                )?;
                cmb = Some(info);
                (pool, mapping, "cmb")
            } else {
                let dev = Device::open(&container, &job.sysfs, provider)?;
                let bar = dev.map_bar(job.provider_bar)?;
                let len = bar.len() as u64;
                let mapping = IommuMapping::new(&container, bar, POOL_IOVA)?;
                let pool = BarPool::new(
                    &format!("BAR {} of {provider}", job.provider_bar),
                    mapping.memory().clone(),
                    0,
                    len,
                    POOL_IOVA,
                    PAGE as u64,
                )?;
                provider_device = Some(dev);
                (pool, mapping, "bar")
            };
        let mut requests = Vec::new();
        for c in &controllers {
            requests.push((c.bdf().to_string(), c.device().request_fd()?));
        }
        if let Some(d) = &provider_device {
            requests.push((d.bdf().to_string(), d.request_fd()?));
        }
        Ok(Opened {
            session: Session {
                controllers,
                pool,
                pool_mapping: Some(mapping),
                provider: provider_device,
                requests,
                command_deadline: Duration::from_secs(30),
                drain_deadline: Duration::from_secs(5),
            },
            src,
            dst,
            dst_index,
            block,
            offset,
            length,
            provider,
            provider_kind,
            cmb,
        })
    }

    /// The copy of `length` bytes at `offset` with commands of about `chunk_size` bytes,
    /// `queue_depth` in flight (see [`shape`]).
    pub fn spec(&self, offset: u64, length: u64, chunk_size: u64, queue_depth: u32) -> CopySpec {
        let (_, pool_len, _, _) = self.session.pool.stats();
        let (chunk, depth) = shape(
            chunk_size,
            queue_depth,
            self.session.max_transfer(),
            self.block,
            pool_len,
        );
        CopySpec {
            src: 0,
            src_nsid: self.src.nsid,
            dst: self.dst_index,
            dst_nsid: self.dst.nsid,
            offset,
            length,
            chunk,
            depth,
            block: self.block,
        }
    }

    /// Copies `spec` (the observer hears the copy phase and may stop it). A stop becomes
    /// [`VfioCopyError::Stopped`] with the exact written ranges, after the revocation ran.
    pub fn copy(
        &mut self,
        spec: &CopySpec,
        observer: &mut dyn VfioObserver,
    ) -> Result<Duration, VfioCopyError> {
        observer.phase_started(Phase::Copy, spec.length);
        let outcome = {
            let observer = std::cell::RefCell::new(&mut *observer);
            self.session.copy_with_progress(
                spec,
                &mut || observer.borrow_mut().stop_requested(),
                &mut |done| observer.borrow_mut().progress(done),
            )
        };
        observer.phase_ended(Phase::Copy);
        if let Some(stop) = outcome.stop {
            let bytes_written = outcome.written.iter().map(|(s, e)| e - s).sum();
            return Err(VfioCopyError::Stopped(Box::new(Stopped {
                dst: self.dst,
                report: StopReport {
                    written: outcome.written,
                    bytes_written,
                    uncertain: outcome.uncertain,
                    revocation: outcome.revocation,
                },
                stop,
            })));
        }
        Ok(outcome.elapsed)
    }

    /// Re-reads both ranges of `spec` through host memory and compares them (the observer
    /// hears the verify phase); returns the comparison and its wall time.
    pub fn verify(
        &mut self,
        spec: &CopySpec,
        observer: &mut dyn VfioObserver,
    ) -> Result<(Verification, Duration), VfioCopyError> {
        let started = Instant::now();
        observer.phase_started(Phase::Verify, spec.length);
        let v = self
            .session
            .verify(spec, VERIFY_IOVA, &mut |done| observer.progress(done));
        observer.phase_ended(Phase::Verify);
        Ok((v.map_err(VfioCopyError::Verify)?, started.elapsed()))
    }
}

/// Checks, opens, copies and (with `verify`) compares: the whole `copy --via vfio`. A
/// mismatch is an `Ok` summary with `verified: Some(false)`.
pub fn run(
    job: &VfioCopyJob,
    observer: &mut dyn VfioObserver,
) -> Result<VfioCopySummary, VfioCopyError> {
    let mut opened = Opened::open(job)?;
    observer.opened(&opened);
    let spec = opened.spec(
        opened.offset,
        opened.length,
        job.chunk_size,
        job.queue_depth,
    );
    let elapsed = opened.copy(&spec, observer)?;
    let seconds = elapsed.as_secs_f64();
    let mut summary = VfioCopySummary {
        via: "vfio",
        src: opened.src.to_string(),
        dst: opened.dst.to_string(),
        src_offset: spec.offset,
        dst_offset: spec.offset,
        bytes: spec.length,
        seconds,
        throughput_bytes_per_sec: if seconds > 0.0 {
            spec.length as f64 / seconds
        } else {
            0.0
        },
        provider: opened.provider.to_string(),
        provider_kind: opened.provider_kind,
        pool_iova: format!("{:#x}", opened.session.pool.iova()),
        cmb: opened.cmb,
        chunk_size: spec.chunk,
        queue_depth: spec.depth,
        verified: None,
        src_digest: None,
        dst_digest: None,
        verify_seconds: None,
        verification: None,
    };
    if job.verify {
        let (v, took) = opened.verify(&spec, observer)?;
        summary.verified = Some(v.matched());
        summary.src_digest = Some(format!("{:032x}", v.src_digest));
        summary.dst_digest = Some(format!("{:032x}", v.dst_digest));
        summary.verify_seconds = Some(took.as_secs_f64());
        summary.verification = Some(v);
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(blocks: u64, block_size: u32) -> IdentifyNamespace {
        let mut page = [0u8; 4096];
        page[0..8].copy_from_slice(&blocks.to_le_bytes());
        page[8..16].copy_from_slice(&blocks.to_le_bytes());
        // FLBAS 0, LBA format 0: LBADS = log2(block size).
        page[130] = block_size.trailing_zeros() as u8;
        IdentifyNamespace::parse(&page)
    }

    fn target(text: &str) -> Namespace {
        text.parse().unwrap()
    }

    #[test]
    fn namespaces_parse_as_bdf_slash_nsid_and_name_what_is_wrong() {
        let n = target("0000:03:00.0/2");
        assert_eq!(n.nsid, 2);
        assert_eq!(n.bdf.to_string(), "0000:03:00.0");
        assert_eq!(n.to_string(), "0000:03:00.0/2");
        assert!(matches!(
            "/dev/nvme0n1".parse::<Namespace>(),
            Err(NamespaceParseError::Bdf { .. })
        ));
        assert!(matches!(
            "nvme0n1".parse::<Namespace>(),
            Err(NamespaceParseError::NotBdfNsid { .. })
        ));
        let e = "0000:03:00.0/0".parse::<Namespace>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "'0' in '0000:03:00.0/0' is not a namespace id (1, 2, ...)"
        );
    }

    #[test]
    fn the_request_alone_is_refused_before_any_device_is_opened() {
        let job = VfioCopyJob {
            src: target("0000:03:00.0/1"),
            dst: target("0000:04:00.0/1"),
            src_offset: 4096,
            dst_offset: 8192,
            length: None,
            chunk_size: 1 << 20,
            queue_depth: 4,
            provider: None,
            provider_bar: 2,
            verify: false,
            sysfs: SysfsRoot::new("/nonexistent"),
        };
        assert!(matches!(
            check(&job),
            Err(VfioCopyError::OffsetsDiffer {
                src_offset: 4096,
                dst_offset: 8192
            })
        ));
        let same = VfioCopyJob {
            dst: job.src,
            dst_offset: 4096,
            ..job.clone()
        };
        assert!(matches!(
            Opened::open(&same),
            Err(VfioCopyError::SameNamespace(n)) if n == job.src
        ));
    }

    #[test]
    fn the_range_is_whole_blocks_inside_both_namespaces() {
        let (a, b) = (target("0000:03:00.0/1"), target("0000:04:00.0/1"));
        let (big, small) = (ns(1 << 16, 4096), ns(1 << 12, 4096));
        // Default length: to the end of the smaller namespace.
        assert_eq!(
            validate_range((a, &big), (b, &small), 8192, None).unwrap(),
            (4096, (4096 << 12) - 8192)
        );
        let e = validate_range((a, &big), (b, &small), 0, Some(4096 << 13)).unwrap_err();
        assert!(
            matches!(e, VfioCopyError::PastEnd { ns, .. } if ns == b),
            "{e}"
        );
        assert!(e.is_invalid_input());
        let e = validate_range((a, &big), (b, &small), 512, Some(4096)).unwrap_err();
        assert!(matches!(e, VfioCopyError::Unaligned { block: 4096, .. }));
        let e = validate_range((a, &big), (b, &ns(1 << 12, 512)), 0, None).unwrap_err();
        assert!(matches!(
            e,
            VfioCopyError::BlockSizes {
                src_block: 4096,
                dst_block: 512,
                ..
            }
        ));
        let e = validate_range((a, &ns(0, 4096)), (b, &small), 0, None).unwrap_err();
        assert!(matches!(e, VfioCopyError::Inactive { .. }));
        assert!(!e.is_invalid_input());
    }

    #[test]
    fn chunks_fit_the_mdts_and_whole_pages_and_the_depth_fits_the_pool() {
        // 1 MiB asked, MDTS 512 KiB: 512 KiB; a 16 MiB pool holds 32 of them.
        assert_eq!(
            shape(1 << 20, 64, 512 << 10, 4096, 16 << 20),
            (512 << 10, 32)
        );
        // 6000 bytes of 512-byte blocks: 5632, rounded up to two pages.
        assert_eq!(shape(6000, 4, 1 << 20, 512, 16 << 20), (8192, 4));
        // A pool smaller than the depth asks for: what it holds; never 0.
        assert_eq!(shape(1 << 20, 8, 1 << 20, 4096, 3 << 20), (1 << 20, 3));
        assert_eq!(shape(1 << 20, 8, 1 << 20, 4096, 4096), (1 << 20, 1));
    }

    #[test]
    fn a_cmb_goes_below_4_gib_when_it_fits_under_the_msi_window() {
        assert_eq!(cmb_iova(16 << 20), CMB_IOVA);
        assert!(cmb_iova(16 << 20) + (16 << 20) <= 1 << 32);
        assert_eq!(cmb_iova(CMB_IOVA_END - CMB_IOVA), CMB_IOVA);
        assert_eq!(cmb_iova(CMB_IOVA_END - CMB_IOVA + 4096), POOL_IOVA);
        assert_eq!(cmb_iova(8 << 30), POOL_IOVA);
        assert_eq!(cmb_iova(u64::MAX), POOL_IOVA);
    }

    #[test]
    fn a_stopped_copy_names_its_written_ranges_and_whether_it_wrote_anything() {
        let stopped = Stopped {
            dst: target("0000:04:00.0/1"),
            report: StopReport {
                written: vec![(0, 8192), (16384, 20480)],
                bytes_written: 12288,
                uncertain: vec![],
                revocation: vec![],
            },
            stop: CopyStop::Revoked {
                why: "stopped by the caller".into(),
            },
        };
        assert_eq!(
            stopped.to_string(),
            "the copy stopped part-way: destination 0000:04:00.0/1 bytes written: [0, 8192), [16384, 20480)"
        );
        assert!(stopped.wrote_anything());
        let none = Stopped {
            report: StopReport {
                written: vec![],
                bytes_written: 0,
                uncertain: vec![(0, 4096)],
                revocation: vec![],
            },
            ..stopped
        };
        assert_eq!(
            none.to_string(),
            "the copy stopped part-way: destination 0000:04:00.0/1 bytes written: none; possibly written (command cut off): [(0, 4096)]"
        );
        assert!(none.wrote_anything());
        // Wrapped in the job's error, the reason still rides as the cause.
        let e = VfioCopyError::Stopped(Box::new(none));
        let cause = std::error::Error::source(&e).expect("the reason is the cause");
        assert_eq!(
            cause.to_string(),
            "the device memory was revoked: stopped by the caller"
        );
    }
}
