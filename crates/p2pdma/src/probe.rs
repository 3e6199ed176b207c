//! `p2pdma probe` as a library call: one small `O_DIRECT` read from a block device into
//! a provider's p2pmem, to learn what the kernel allows between the two (the ground truth
//! the topology verdicts are checked against).
//!
//! Lab disks and CMBs start as zeros, so a read whose DMA the platform silently drops
//! would compare zeros with zeros and pass. The buffer is therefore filled with a pattern
//! from a random seed first, and the read only counts when the pattern was replaced by
//! the device's data (the same bytes as a read through host memory). Nothing is written
//! to the device.

use std::fs::OpenOptions;
use std::hash::{BuildHasher, Hasher};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::blockdev::{BlockDevice, BlockdevError};
use crate::display::error_chain;
use crate::p2pmem::{P2pBuffer, P2pmemError, Provider};
use crate::pci::PciTree;
use crate::resolve::resolve_with;
use crate::sysfs::SysfsRoot;
use crate::topology::Topology;
use crate::Bdf;

/// What the kernel answered.
#[derive(Debug, Serialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The read completed and the device's data replaced the pattern.
    Ok,
    /// The kernel refused P2P between the two devices (EREMOTEIO; EINVAL on Linux >= 6.17
    /// for a pair the topology refuses).
    P2pRefused,
    /// The read failed for another reason.
    Error,
    /// The read reported success but the buffer still holds the pattern: the DMA never
    /// arrived (dropped by an IOMMU or the platform).
    Dropped,
    /// The read reported success but the buffer holds neither the pattern nor the
    /// device's data.
    Corrupted,
}

/// How the bytes in device memory compare with the pattern and with a host read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataCheck {
    /// The pattern was replaced by the device's data.
    Arrived,
    /// The buffer still holds the whole pattern.
    Dropped,
    /// Something else is there.
    Corrupted,
}

/// Judges the buffer after a read that reported success.
pub fn check_data(pattern: &[u8], device: &[u8], host: &[u8]) -> DataCheck {
    if device == host {
        // Even when the device's data equals the random pattern (which cannot happen by
        // accident), it is the device's data.
        DataCheck::Arrived
    } else if device == pattern {
        DataCheck::Dropped
    } else {
        DataCheck::Corrupted
    }
}

/// `len` bytes of a pseudo-random pattern from `seed` (fastrand's wyrand), none of them
/// zero.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(1..)).collect()
}

/// A seed no earlier run or disk content can predict (std's randomly keyed hasher).
pub fn random_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

/// What the probe found (`probe --json`, less the contract's error object).
#[derive(Debug, Serialize)]
pub struct ProbeReport {
    /// The provider.
    pub provider: Bdf,
    /// The client block device.
    pub client: PathBuf,
    /// Bytes asked for (the client's logical block size rounded up to a page).
    pub bytes: usize,
    /// Bytes the read returned (0 unless the read completed).
    pub bytes_read: usize,
    /// What happened.
    pub result: Outcome,
    /// The seed of the pattern the buffer was filled with before the read.
    pub pattern_seed: u64,
    /// After a completed read: whether the pattern was replaced (none of it is left
    /// where the device's data differs from it).
    pub pattern_replaced: Option<bool>,
    /// After a completed read: whether the bytes that landed in device memory equal the
    /// same block read through host memory (a buffered read).
    pub matches_host_read: Option<bool>,
    /// The errno of a failed read.
    pub errno: Option<i32>,
    /// The topology's verdict for the pair (None: the PCI tree could not be read).
    pub verdict_p2p: Option<bool>,
    /// The running kernel's release, as the errno was interpreted with it.
    pub kernel_release: Option<String>,
    /// Unless `result` is `ok`: why, in one sentence.
    #[serde(skip)]
    pub reason: Option<String>,
}

/// Why the probe could not be set up (a refused or failed read is a [`ProbeReport`]).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Opening the provider or allocating from it failed.
    #[error(transparent)]
    P2pmem(#[from] P2pmemError),
    /// The client is not a block device p2pdma can read.
    #[error("cannot probe with client {}", client.display())]
    Client {
        /// The client.
        client: PathBuf,
        /// Why.
        #[source]
        source: BlockdevError,
    },
    /// Filling the buffer with the pattern failed.
    #[error("filling the p2pmem buffer from {provider} with the pattern")]
    Fill {
        /// The provider.
        provider: Bdf,
        /// Why.
        #[source]
        source: P2pmemError,
    },
    /// The client could not be opened with `O_DIRECT`.
    #[error("cannot open {} for reading with O_DIRECT (needs read permission on the device node)", client.display())]
    Open {
        /// The client.
        client: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The block could not be read through host memory for the comparison.
    #[error("cannot read {} through host memory", client.display())]
    HostRead {
        /// The client.
        client: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Reading the buffer back failed.
    #[error(transparent)]
    ReadBack(P2pmemError),
}

/// The topology's verdict for (provider, client) in `tree` and the tree's kernel release,
/// as far as they can be known (the errno is interpreted with them; unknown ones never
/// make EINVAL a refusal). `tree` is `None` when it could not be read.
pub fn verdict(
    root: &SysfsRoot,
    tree: Option<&PciTree>,
    provider: Bdf,
    client: &Path,
) -> (Option<bool>, Option<String>) {
    let Some(tree) = tree else {
        return (None, None);
    };
    let release = tree.host.kernel_release.clone();
    let topology = Topology::new(tree);
    let p2p = resolve_with(root, &client.to_string_lossy(), topology.rules())
        .ok()
        .and_then(|t| t.bdf.map(|b| (b, t.p2p_queue)))
        .filter(|(b, _)| tree.function(*b).is_some() && tree.function(provider).is_some())
        .map(|(b, queue)| topology.verdict(provider, b).is_p2p() && queue);
    (p2p, release)
}

/// Allocates one small buffer from `provider`, fills it with a random pattern, and reads
/// `client`'s first block into it with one `O_DIRECT` `pread`. `verdict_p2p` and
/// `kernel_release` (see [`verdict`]) decide what an errno means.
pub fn run(
    root: &SysfsRoot,
    provider_bdf: Bdf,
    client_path: &Path,
    verdict_p2p: Option<bool>,
    kernel_release: Option<String>,
) -> Result<ProbeReport, ProbeError> {
    let provider = Provider::open(root, provider_bdf)?;
    let client =
        BlockDevice::read_devnode(root, client_path).map_err(|source| ProbeError::Client {
            client: client_path.to_owned(),
            source,
        })?;
    // The allocation rounds up to a page, which keeps the read block aligned.
    let mut buffer = provider.allocate(client.logical_block_size as usize)?;
    let bytes = buffer.len();
    let pattern_seed = random_seed();
    let pattern = pattern(pattern_seed, bytes);
    buffer
        .write_from(0, &pattern)
        .map_err(|source| ProbeError::Fill {
            provider: provider_bdf,
            source,
        })?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(client_path)
        .map_err(|source| ProbeError::Open {
            client: client_path.to_owned(),
            source,
        })?;

    let (mut result, bytes_read, source) = match buffer.pread(&file, 0, 0, bytes) {
        Ok(n) => (Outcome::Ok, n, None),
        Err(e) if e.is_p2p_refusal(verdict_p2p, kernel_release.as_deref()) => {
            (Outcome::P2pRefused, 0, Some(e))
        }
        Err(e) => (Outcome::Error, 0, Some(e)),
    };
    let (mut pattern_replaced, mut matches_host_read) = (None, None);
    if result == Outcome::Ok {
        let (host, device) = host_and_device(&buffer, client_path, bytes_read)?;
        let check = check_data(&pattern[..bytes_read], &device, &host);
        pattern_replaced = Some(check == DataCheck::Arrived || device != pattern[..bytes_read]);
        matches_host_read = Some(host == device);
        result = match check {
            DataCheck::Arrived => Outcome::Ok,
            DataCheck::Dropped => Outcome::Dropped,
            DataCheck::Corrupted => Outcome::Corrupted,
        };
    }
    let errno = source.as_ref().and_then(P2pmemError::transfer_errno);
    let reason = match result {
        Outcome::Ok => None,
        Outcome::P2pRefused | Outcome::Error => {
            let e = source.as_ref().map(|e| error_chain(e)).unwrap_or_default();
            let note = match (errno, result) {
                (Some(libc::EINVAL), Outcome::Error) => format!(
                    " (EINVAL read as an I/O error: {})",
                    einval_note(verdict_p2p, kernel_release.as_deref())
                ),
                _ => String::new(),
            };
            Some(format!("{e}{note}"))
        }
        Outcome::Dropped => Some(format!(
            "the read of {} reported {bytes_read} bytes but the p2pmem buffer still holds the pattern it was filled with (seed {pattern_seed:#x}): the device's data never arrived (an IOMMU or the platform dropped the P2P DMA; check dmesg)",
            client_path.display()
        )),
        Outcome::Corrupted => Some(format!(
            "the read of {} completed but the p2pmem buffer holds neither the device's data (as read through host memory) nor the pattern: the P2P DMA was corrupted",
            client_path.display()
        )),
    };
    Ok(ProbeReport {
        provider: provider_bdf,
        client: client_path.to_owned(),
        bytes,
        bytes_read,
        result,
        pattern_seed,
        pattern_replaced,
        matches_host_read,
        errno,
        verdict_p2p,
        kernel_release,
        reason,
    })
}

fn einval_note(verdict_p2p: Option<bool>, release: Option<&str>) -> String {
    match crate::refusal::interpret(libc::EINVAL, verdict_p2p, release) {
        crate::refusal::Meaning::IoError { why } => why,
        crate::refusal::Meaning::P2pRefused => String::new(),
    }
}

/// The first `len` bytes of the client read through the page cache, and what the buffer
/// holds.
fn host_and_device(
    buffer: &P2pBuffer,
    client: &Path,
    len: usize,
) -> Result<(Vec<u8>, Vec<u8>), ProbeError> {
    use std::io::Read;
    let mut host = vec![0u8; len];
    std::fs::File::open(client)
        .and_then(|mut f| f.read_exact(&mut host))
        .map_err(|source| ProbeError::HostRead {
            client: client.to_owned(),
            source,
        })?;
    let mut device = vec![0u8; len];
    buffer
        .read_into(0, &mut device)
        .map_err(ProbeError::ReadBack)?;
    Ok((host, device))
}

/// `probe` as one sentence: what happened and why.
pub fn text(report: &ProbeReport) -> String {
    let head = format!("{} <- {}", report.provider, report.client.display());
    let message = report.reason.as_deref().unwrap_or("no error text");
    match report.result {
        Outcome::Ok => format!(
            "{head}: ok, read {} of {} bytes into the provider's memory by P2P DMA: the pattern the buffer was filled with (seed {:#x}) was replaced by the same bytes as a read through host memory\n",
            report.bytes_read, report.bytes, report.pattern_seed
        ),
        Outcome::P2pRefused => format!(
            "{head}: p2p-refused, the kernel will not do P2P DMA between these devices ({message})\n"
        ),
        Outcome::Error => {
            format!("{head}: error, the read failed for a reason other than P2P ({message})\n")
        }
        Outcome::Dropped => format!("{head}: dropped, {message}\n"),
        Outcome::Corrupted => format!("{head}: corrupted, {message}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_is_non_zero_seeded_and_reproducible() {
        let a = pattern(1, 4096);
        assert_eq!(a.len(), 4096);
        assert!(a.iter().all(|&b| b != 0), "no zero byte");
        assert_eq!(a, pattern(1, 4096));
        assert_ne!(a, pattern(2, 4096));
        assert_ne!(random_seed(), random_seed(), "two seeds in a row differ");
    }

    #[test]
    fn each_outcome_reads_as_its_sentence() {
        let mut r = ProbeReport {
            provider: "0000:01:00.0".parse().unwrap(),
            client: "/dev/nvme1n1".into(),
            bytes: 4096,
            bytes_read: 4096,
            result: Outcome::Ok,
            pattern_seed: 0x2a,
            pattern_replaced: Some(true),
            matches_host_read: Some(true),
            errno: None,
            verdict_p2p: Some(true),
            kernel_release: Some("6.12.117".into()),
            reason: None,
        };
        assert!(text(&r).starts_with("0000:01:00.0 <- /dev/nvme1n1: ok, read 4096 of 4096 bytes"));
        assert!(text(&r).contains("(seed 0x2a)"));
        r.result = Outcome::P2pRefused;
        r.reason = Some("EREMOTEIO".into());
        assert_eq!(
            text(&r),
            "0000:01:00.0 <- /dev/nvme1n1: p2p-refused, the kernel will not do P2P DMA between these devices (EREMOTEIO)\n"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["result"], "p2p-refused");
        assert!(json.get("reason").is_none(), "{json}");
    }

    #[test]
    fn a_dropped_dma_is_caught_even_when_the_disk_holds_zeros() {
        let pattern = pattern(42, 512);
        let zeros = vec![0u8; 512];
        // The device's zeros arrived: the pattern was replaced.
        assert_eq!(check_data(&pattern, &zeros, &zeros), DataCheck::Arrived);
        // Nothing arrived: zeros on disk, the pattern still in device memory.
        assert_eq!(check_data(&pattern, &pattern, &zeros), DataCheck::Dropped);
        // Half arrived.
        let mut half = pattern.clone();
        half[..256].fill(0);
        assert_eq!(check_data(&pattern, &half, &zeros), DataCheck::Corrupted);
    }
}
