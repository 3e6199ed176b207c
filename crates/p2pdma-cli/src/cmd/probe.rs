//! `p2pdma probe`: one real P2P read, to learn what the kernel allows between two devices.
//!
//! Lab disks and CMBs start as zeros, so a read whose DMA the platform silently drops
//! would compare zeros with zeros and pass. The buffer is therefore filled with a pattern
//! from a random seed first, and the read only counts when the pattern was replaced by
//! the device's data (the same bytes as a read through host memory).

use std::fs::OpenOptions;
use std::hash::{BuildHasher, Hasher};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use p2pdma::blockdev::BlockDevice;
use p2pdma::p2pmem::{P2pBuffer, P2pmemError, Provider};
use p2pdma::resolve::resolve;
use p2pdma::sysfs::SysfsRoot;
use p2pdma::topology::Topology;
use p2pdma::Bdf;
use serde::Serialize;

use crate::exit::Kind;
use crate::output::{self, ErrorObject};
use crate::Globals;

/// Arguments of `p2pdma probe`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 the device's data arrived in the provider's memory; 3 the kernel \
refused P2P; 1 the read failed otherwise, or completed without delivering the device's data."
)]
pub struct ProbeArgs {
    /// The p2pmem provider to allocate the buffer from (PCI address, e.g. 0000:01:00.0).
    #[arg(long, value_name = "BDF")]
    provider: Bdf,
    /// The block device to read from with O_DIRECT (e.g. /dev/nvme1n1). Nothing is written.
    #[arg(value_name = "CLIENT")]
    client: PathBuf,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    json: bool,
}

/// What the kernel answered.
#[derive(Debug, Serialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum Outcome {
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
enum DataCheck {
    /// The pattern was replaced by the device's data.
    Arrived,
    /// The buffer still holds the whole pattern.
    Dropped,
    /// Something else is there.
    Corrupted,
}

/// Judges the buffer after a read that reported success.
fn check_data(pattern: &[u8], device: &[u8], host: &[u8]) -> DataCheck {
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

/// `len` bytes of a pattern from `seed` (splitmix64), none of them zero.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend(z.to_le_bytes().map(|b| if b == 0 { 0xa5 } else { b }));
    }
    out.truncate(len);
    out
}

/// A seed no earlier run or disk content can predict (std's randomly keyed hasher).
fn random_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

/// The probe's result, printed as JSON with `--json`.
#[derive(Debug, Serialize)]
struct ProbeReport {
    provider: Bdf,
    client: PathBuf,
    /// Bytes asked for (the client's logical block size rounded up to a page).
    bytes: usize,
    /// Bytes the read returned (0 unless the read completed).
    bytes_read: usize,
    result: Outcome,
    /// The seed of the pattern the buffer was filled with before the read.
    pattern_seed: u64,
    /// After a completed read: whether the pattern was replaced (none of it is left
    /// where the device's data differs from it).
    pattern_replaced: Option<bool>,
    /// After a completed read: whether the bytes that landed in device memory equal the
    /// same block read through host memory (a buffered read).
    matches_host_read: Option<bool>,
    errno: Option<i32>,
    /// The topology's verdict for the pair (None: the PCI tree could not be read).
    verdict_p2p: Option<bool>,
    /// The running kernel's release, as the errno was interpreted with it.
    kernel_release: Option<String>,
    /// Unless `result` is `ok`: the contract's error object (kind `p2p_refused` or
    /// `failure`, the exit status, the reason in `message`).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorObject>,
}

/// Allocates one small buffer from the provider, fills it with a random pattern, and
/// reads the client's first block into it with one O_DIRECT `pread`. Exits 0 when the
/// device's data arrived, 3 ([`Kind::P2pRefused`]) when the kernel refused P2P, 1 when
/// the read failed otherwise, delivered nothing, or the probe cannot be set up.
pub fn probe(args: ProbeArgs, globals: &Globals) -> anyhow::Result<ExitCode> {
    let provider = Provider::open(&globals.sysfs, args.provider)?;
    let client = BlockDevice::read_devnode(&globals.sysfs, &args.client)
        .with_context(|| format!("cannot probe with client {}", args.client.display()))?;
    let (verdict_p2p, kernel_release) = verdict(globals, args.provider, &args.client);
    // The allocation rounds up to a page, which keeps the read block aligned.
    let mut buffer = provider.allocate(client.logical_block_size as usize)?;
    let bytes = buffer.len();
    let pattern_seed = random_seed();
    let pattern = pattern(pattern_seed, bytes);
    buffer.write_from(0, &pattern).with_context(|| {
        format!(
            "filling the p2pmem buffer from {} with the pattern",
            args.provider
        )
    })?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&args.client)
        .with_context(|| {
            format!(
                "cannot open {} for reading with O_DIRECT (needs read permission on the device node)",
                args.client.display()
            )
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
        let (host, device) = host_and_device(&buffer, &args.client, bytes_read)?;
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
    let (kind, message) = match result {
        Outcome::Ok => (None, String::new()),
        Outcome::P2pRefused | Outcome::Error => {
            let e = source.as_ref().map(chain_text).unwrap_or_default();
            let kind = if result == Outcome::P2pRefused {
                Kind::P2pRefused
            } else {
                Kind::Failure
            };
            let note = match (errno, result) {
                (Some(libc::EINVAL), Outcome::Error) => format!(
                    " (EINVAL read as an I/O error: {})",
                    einval_note(verdict_p2p, kernel_release.as_deref())
                ),
                _ => String::new(),
            };
            (Some(kind), format!("{e}{note}"))
        }
        Outcome::Dropped => (
            Some(Kind::Failure),
            format!(
                "the read of {} reported {bytes_read} bytes but the p2pmem buffer still holds the pattern it was filled with (seed {pattern_seed:#x}): the device's data never arrived (an IOMMU or the platform dropped the P2P DMA; check dmesg)",
                args.client.display()
            ),
        ),
        Outcome::Corrupted => (
            Some(Kind::Failure),
            format!(
                "the read of {} completed but the p2pmem buffer holds neither the device's data (as read through host memory) nor the pattern: the P2P DMA was corrupted",
                args.client.display()
            ),
        ),
    };
    let error = kind.map(|kind| ErrorObject {
        kind,
        message,
        exit_code: kind.code(),
        details: Default::default(),
    });
    let report = ProbeReport {
        provider: args.provider,
        client: args.client,
        bytes,
        bytes_read,
        result,
        pattern_seed,
        pattern_replaced,
        matches_host_read,
        errno,
        verdict_p2p,
        kernel_release,
        error,
    };
    output::unless_broken_pipe(print_report(&report, args.json))?;
    Ok(kind.map_or(ExitCode::SUCCESS, Kind::exit))
}

fn einval_note(verdict_p2p: Option<bool>, release: Option<&str>) -> String {
    match p2pdma::refusal::interpret(libc::EINVAL, verdict_p2p, release) {
        p2pdma::refusal::Meaning::IoError { why } => why,
        p2pdma::refusal::Meaning::P2pRefused => String::new(),
    }
}

/// The topology's verdict for the pair and the kernel release, as far as they can be
/// read (the errno is interpreted with them; unknown ones never make EINVAL a refusal).
fn verdict(globals: &Globals, provider: Bdf, client: &Path) -> (Option<bool>, Option<String>) {
    let root = SysfsRoot::new(&globals.sysfs);
    let Ok(tree) = globals.read_tree(&root) else {
        return (None, None);
    };
    let release = tree.host.kernel_release.clone();
    let p2p = resolve(&root, &client.to_string_lossy())
        .ok()
        .and_then(|t| t.bdf.map(|b| (b, t.p2p_queue)))
        .filter(|(b, _)| tree.function(*b).is_some() && tree.function(provider).is_some())
        .map(|(b, queue)| Topology::new(&tree).verdict(provider, b).is_p2p() && queue);
    (p2p, release)
}

/// The first `len` bytes of the client read through the page cache, and what the buffer
/// holds.
fn host_and_device(
    buffer: &P2pBuffer,
    client: &Path,
    len: usize,
) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    use std::io::Read;
    let mut host = vec![0u8; len];
    std::fs::File::open(client)
        .and_then(|mut f| f.read_exact(&mut host))
        .with_context(|| format!("cannot read {} through host memory", client.display()))?;
    let mut device = vec![0u8; len];
    buffer.read_into(0, &mut device)?;
    Ok((host, device))
}

/// The error and its causes on one line.
fn chain_text(e: &P2pmemError) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn print_report(report: &ProbeReport, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    if json {
        return Ok(output::print_json(report, false)?);
    }
    let mut out = output::stdout();
    let head = format!("{} <- {}", report.provider, report.client.display());
    let message = report
        .error
        .as_ref()
        .map_or("no error text", |e| e.message.as_str());
    match report.result {
        Outcome::Ok => writeln!(
            out,
            "{head}: ok, read {} of {} bytes into the provider's memory by P2P DMA: the pattern the buffer was filled with (seed {:#x}) was replaced by the same bytes as a read through host memory",
            report.bytes_read, report.bytes, report.pattern_seed
        )?,
        Outcome::P2pRefused => writeln!(
            out,
            "{head}: p2p-refused, the kernel will not do P2P DMA between these devices ({message})"
        )?,
        Outcome::Error => writeln!(
            out,
            "{head}: error, the read failed for a reason other than P2P ({message})"
        )?,
        Outcome::Dropped => writeln!(out, "{head}: dropped, {message}")?,
        Outcome::Corrupted => writeln!(out, "{head}: corrupted, {message}")?,
    }
    Ok(())
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
