//! `p2pdma mem test` as a library call: allocate buffers from a provider, write and read
//! back a pattern through the CPU, check the pool's accounting, and optionally exhaust the
//! pool, unbind the provider's driver while mapped, or run a command while mapped.
//!
//! The unbind writes `<root>/bus/pci/drivers/<driver>/unbind` and then `bind` for the
//! provider the request names; nothing else is written.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{P2pBuffer, P2pmemError, Provider};
use crate::display::error_chain;
use crate::sysfs::SysfsRoot;
use crate::Bdf;

/// What to test.
#[derive(Debug, Clone)]
pub struct PoolTestRequest {
    /// The provider.
    pub provider: Bdf,
    /// Bytes per buffer (rounded up to a page by the kernel).
    pub size: usize,
    /// Buffers held at once (at least 1).
    pub buffers: usize,
    /// Then allocate until the pool refuses.
    pub exhaust: bool,
    /// Then unbind the provider's driver while mapped, check revocation, bind again.
    pub unbind_after_map: bool,
    /// Then run this `sh -c` command while mapped and check each buffer.
    pub while_mapped: Option<String>,
}

/// Why the test could not run (a failed check is not an error: see
/// [`PoolTestReport::failures`]).
#[derive(Debug, thiserror::Error)]
pub enum PoolTestError {
    /// `--buffers 0`.
    #[error("--buffers must be at least 1")]
    NoBuffers,
    /// Opening, reading or allocating from the pool failed.
    #[error(transparent)]
    P2pmem(#[from] P2pmemError),
    /// Writing the pattern through the CPU failed.
    #[error("writing the test pattern")]
    WritePattern(#[source] P2pmemError),
    /// The provider has no driver bound, so it cannot be unbound.
    #[error("{provider} has no driver to unbind ({})", link.display())]
    NoDriver {
        /// The provider.
        provider: Bdf,
        /// Its `driver` link.
        link: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Writing the driver's `unbind` file failed.
    #[error("cannot unbind {provider} (writing {})", path.display())]
    Unbind {
        /// The provider.
        provider: Bdf,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Writing the driver's `bind` file failed.
    #[error("cannot bind {provider} again (writing {})", path.display())]
    Rebind {
        /// The provider.
        provider: Bdf,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The `while_mapped` command could not be started.
    #[error("cannot run sh -c {command:?}")]
    Command {
        /// The command.
        command: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// Everything the test saw (`mem test --json`).
#[derive(Debug, Default, Serialize)]
pub struct PoolTestReport {
    /// The provider.
    pub provider: String,
    /// `p2pmem/size`.
    pub pool_size: u64,
    /// `p2pmem/available` before the first allocation.
    pub available_before: u64,
    /// Length of each buffer after rounding, and `available` right after mapping it.
    pub allocations: Vec<Allocation>,
    /// Bytes written and read back through the CPU.
    pub pattern_bytes: u64,
    /// CPU copy throughput into device memory (MiB/s), pattern included.
    pub cpu_write_mib_per_s: f64,
    /// CPU copy throughput out of device memory (MiB/s).
    pub cpu_read_mib_per_s: f64,
    /// First offset (buffer index, byte offset) where the read-back differed.
    pub pattern_mismatch: Option<(usize, usize)>,
    /// What exhausting the pool did.
    pub exhaustion: Option<Exhaustion>,
    /// What the unbind while mapped did.
    pub unbind: Option<UnbindReport>,
    /// What the command while mapped did.
    pub while_mapped: Option<WhileMappedReport>,
    /// `available` after every buffer was dropped (None: the provider is gone).
    pub available_after: Option<u64>,
    /// Whether every check passed.
    pub passed: bool,
    /// What failed, one line each.
    pub failures: Vec<String>,
}

/// One buffer of the test.
#[derive(Debug, Serialize)]
pub struct Allocation {
    /// Its length.
    pub len: usize,
    /// `available` right after mapping it.
    pub available_after: u64,
}

/// What allocating until the pool refused did.
#[derive(Debug, Serialize)]
pub struct Exhaustion {
    /// Extra buffers obtained before the pool refused.
    pub extra_buffers: usize,
    /// `pool-exhausted` when the pool refused as expected.
    pub error_kind: String,
    /// The refusal.
    pub error: String,
    /// Free bytes the error reported.
    pub available_reported: Option<u64>,
}

/// What the command run while mapped did to the buffers.
#[derive(Debug, Serialize)]
pub struct WhileMappedReport {
    /// The command.
    pub command: String,
    /// The command's exit code (None: killed by a signal).
    pub exit_code: Option<i32>,
    /// Whether every buffer was still live afterwards.
    pub is_live_after: bool,
    /// Per buffer: `intact` (pattern still there), `revoked`, `corrupted`, or an error.
    pub read_results: Vec<String>,
    /// SIGBUS faults turned into revocations during those reads.
    pub sigbus_revocations: usize,
}

/// What unbinding the provider while mapped did.
#[derive(Debug, Default, Serialize)]
pub struct UnbindReport {
    /// The driver unbound and bound again.
    pub driver: String,
    /// Whether every buffer was live before.
    pub is_live_before: bool,
    /// Right after the unbind, before any access (the `allocate` file check).
    pub is_live_after_unbind: bool,
    /// What a CPU read of each buffer returned.
    pub read_results: Vec<String>,
    /// SIGBUS faults turned into revocations during those reads.
    pub sigbus_revocations: usize,
    /// What asking for an I/O pointer returned afterwards.
    pub io_ptr_result: String,
    /// Whether the driver was bound again.
    pub rebound: bool,
    /// After the rebind: the buffer must stay dead (a new `allocate` file is not its own).
    pub is_live_after_rebind: bool,
}

/// Runs the test on `<root>/bus/pci/devices/<provider>/p2pmem`.
pub fn run(root: &SysfsRoot, req: &PoolTestRequest) -> Result<PoolTestReport, PoolTestError> {
    if req.buffers == 0 {
        return Err(PoolTestError::NoBuffers);
    }
    let provider = Provider::open(root, req.provider)?;
    let mut report = PoolTestReport {
        provider: req.provider.to_string(),
        pool_size: provider.size()?,
        available_before: provider.available()?,
        ..PoolTestReport::default()
    };

    let mut buffers = Vec::new();
    for _ in 0..req.buffers {
        let buffer = provider.allocate(req.size)?;
        report.allocations.push(Allocation {
            len: buffer.len(),
            available_after: provider.available()?,
        });
        buffers.push(buffer);
    }
    let accounting = check_accounting(&report);
    report.failures.extend(accounting);

    let started = Instant::now();
    for (index, buffer) in buffers.iter_mut().enumerate() {
        write_pattern(buffer, index as u64).map_err(PoolTestError::WritePattern)?;
    }
    let total: usize = buffers.iter().map(P2pBuffer::len).sum();
    report.cpu_write_mib_per_s = mib_per_s(total, started.elapsed());
    let started = Instant::now();
    for (index, buffer) in buffers.iter().enumerate() {
        report.pattern_bytes += buffer.len() as u64;
        if let Some(offset) = first_mismatch(buffer, index as u64)? {
            report.pattern_mismatch.get_or_insert((index, offset));
            report.failures.push(format!(
                "buffer {index}: read back differs at byte {offset}"
            ));
        }
    }
    report.cpu_read_mib_per_s = mib_per_s(total, started.elapsed());

    let mut extra = Vec::new();
    if req.exhaust {
        let outcome = loop {
            match provider.allocate(req.size) {
                Ok(buffer) => extra.push(buffer),
                Err(e) => break e,
            }
        };
        let (kind, available_reported) = match &outcome {
            P2pmemError::PoolExhausted { available, .. } => ("pool-exhausted", *available),
            _ => ("other", None),
        };
        if kind != "pool-exhausted" {
            report.failures.push(format!(
                "exhausting the pool ended with an unexpected error: {outcome}"
            ));
        }
        report.exhaustion = Some(Exhaustion {
            extra_buffers: extra.len(),
            error_kind: kind.to_owned(),
            error: outcome.to_string(),
            available_reported,
        });
    }

    if req.unbind_after_map {
        let unbind = unbind_and_check(root, req.provider, &mut buffers)?;
        if unbind.is_live_after_unbind {
            report
                .failures
                .push("is_live() still true after the unbind".into());
        }
        if unbind.read_results.iter().any(|r| r != "revoked") {
            report
                .failures
                .push("a CPU read after the unbind did not report Revoked".into());
        }
        if unbind.sigbus_revocations == 0 {
            report
                .failures
                .push("no SIGBUS was turned into a revocation".into());
        }
        if unbind.is_live_after_rebind {
            report
                .failures
                .push("a buffer claims to be live after the provider was rebound".into());
        }
        report.unbind = Some(unbind);
    }

    if let Some(command) = &req.while_mapped {
        let status = std::process::Command::new("sh")
            .args(["-c", command])
            .status()
            .map_err(|source| PoolTestError::Command {
                command: command.clone(),
                source,
            })?;
        let is_live_after = buffers.iter().all(P2pBuffer::is_live);
        let before = crate::revoke::revocation_count();
        let mut read_results = Vec::new();
        for (index, buffer) in buffers.iter().enumerate() {
            read_results.push(match first_mismatch(buffer, index as u64) {
                Ok(None) => "intact".to_owned(),
                Ok(Some(offset)) => {
                    report.failures.push(format!(
                        "buffer {index} differs at byte {offset} after the command ran"
                    ));
                    "corrupted".to_owned()
                }
                Err(P2pmemError::Revoked { .. }) => "revoked".to_owned(),
                Err(e) => {
                    let text = format!("reading the test pattern back: {}", error_chain(&e));
                    report.failures.push(format!("buffer {index}: {text}"));
                    text
                }
            });
        }
        report.while_mapped = Some(WhileMappedReport {
            command: command.clone(),
            exit_code: status.code(),
            is_live_after,
            read_results,
            sigbus_revocations: crate::revoke::revocation_count() - before,
        });
    }

    drop(extra);
    drop(buffers);
    // After a rebind or a removal the pool is a new one or gone: only compare when the
    // provider stayed.
    let still_there = !req.unbind_after_map
        && report
            .while_mapped
            .as_ref()
            .is_none_or(|w| w.read_results.iter().all(|r| r == "intact"));
    report.available_after = match Provider::open(root, req.provider) {
        Ok(provider) => Some(provider.available()?),
        Err(_) if !still_there => None,
        Err(e) => return Err(e.into()),
    };
    if still_there && report.available_after != Some(report.available_before) {
        report.failures.push(format!(
            "available is {:?} after dropping every buffer, was {} before",
            report.available_after, report.available_before
        ));
    }
    report.passed = report.failures.is_empty();
    Ok(report)
}

fn mib_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64().max(1e-9)
}

/// Each mapping must take exactly its length from the pool.
fn check_accounting(report: &PoolTestReport) -> Vec<String> {
    let mut failures = Vec::new();
    let mut expected = report.available_before;
    for (i, a) in report.allocations.iter().enumerate() {
        expected = expected.saturating_sub(a.len as u64);
        if a.available_after != expected {
            failures.push(format!(
                "after buffer {i} ({} bytes) available is {}, expected {expected}",
                a.len, a.available_after
            ));
        }
    }
    failures
}

/// Word `index` of buffer `seed`'s pattern: the first output of a generator seeded with
/// both (wyrand mixes its seed, so every word differs), which reads at any offset.
fn pattern_word(seed: u64, index: u64) -> u64 {
    fastrand::Rng::with_seed(seed << 40 ^ index).u64(..)
}

const CHUNK: usize = 64 * 1024;

fn pattern_chunk(seed: u64, offset: usize, out: &mut [u8]) {
    for (i, word) in out.chunks_mut(8).enumerate() {
        let bytes = pattern_word(seed, ((offset / 8) + i) as u64).to_le_bytes();
        word.copy_from_slice(&bytes[..word.len()]);
    }
}

fn write_pattern(buffer: &mut P2pBuffer, seed: u64) -> Result<(), P2pmemError> {
    let mut chunk = vec![0u8; CHUNK];
    let mut offset = 0;
    while offset < buffer.len() {
        let n = CHUNK.min(buffer.len() - offset);
        pattern_chunk(seed, offset, &mut chunk[..n]);
        buffer.write_from(offset, &chunk[..n])?;
        offset += n;
    }
    Ok(())
}

fn first_mismatch(buffer: &P2pBuffer, seed: u64) -> Result<Option<usize>, P2pmemError> {
    let mut expected = vec![0u8; CHUNK];
    let mut actual = vec![0u8; CHUNK];
    let mut offset = 0;
    while offset < buffer.len() {
        let n = CHUNK.min(buffer.len() - offset);
        pattern_chunk(seed, offset, &mut expected[..n]);
        buffer.read_into(offset, &mut actual[..n])?;
        if let Some(i) = (0..n).find(|&i| expected[i] != actual[i]) {
            return Ok(Some(offset + i));
        }
        offset += n;
    }
    Ok(None)
}

/// Unbinds `bdf` from its driver (`<root>/bus/pci/drivers/<driver>/unbind`) while
/// `buffers` are mapped, checks that they report the revocation, and binds it again.
fn unbind_and_check(
    root: &SysfsRoot,
    bdf: Bdf,
    buffers: &mut [P2pBuffer],
) -> Result<UnbindReport, PoolTestError> {
    let driver_link = root.pci_driver_link(bdf);
    let driver = std::fs::read_link(&driver_link)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
    // The link must resolve (a dangling one names no driver that could take the device).
    let driver = match std::fs::canonicalize(&driver_link) {
        Ok(_) => driver.unwrap_or_default(),
        Err(source) => {
            return Err(PoolTestError::NoDriver {
                provider: bdf,
                link: driver_link,
                source,
            })
        }
    };
    let driver_dir = root.pci_driver_dir(&driver);
    let mut report = UnbindReport {
        driver,
        is_live_before: buffers.iter().all(|b| b.is_live()),
        ..UnbindReport::default()
    };
    let unbind = driver_dir.join("unbind");
    std::fs::write(&unbind, bdf.to_string()).map_err(|source| PoolTestError::Unbind {
        provider: bdf,
        path: unbind.clone(),
        source,
    })?;
    report.is_live_after_unbind = buffers.iter().any(|b| b.is_live());

    let before = crate::revoke::revocation_count();
    let mut byte = [0u8; 8];
    for buffer in buffers.iter() {
        report
            .read_results
            .push(match buffer.read_into(0, &mut byte) {
                Ok(()) => "ok".to_owned(),
                Err(P2pmemError::Revoked { .. }) => "revoked".to_owned(),
                Err(e) => e.to_string(),
            });
    }
    report.sigbus_revocations = crate::revoke::revocation_count() - before;
    report.io_ptr_result = match buffers[0].io_ptr(0, 4096.min(buffers[0].len())) {
        Ok(_) => "ok".to_owned(),
        Err(P2pmemError::Revoked { .. }) => "revoked".to_owned(),
        Err(e) => e.to_string(),
    };

    let bind = driver_dir.join("bind");
    std::fs::write(&bind, bdf.to_string()).map_err(|source| PoolTestError::Rebind {
        provider: bdf,
        path: bind.clone(),
        source,
    })?;
    report.rebound = true;
    // The driver re-creates p2pmem/allocate while probing, possibly asynchronously.
    let allocate = root.p2pmem_dir(bdf).join("allocate");
    for _ in 0..100 {
        if allocate.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    report.is_live_after_rebind = buffers.iter().any(|b| b.is_live());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_differs_word_to_word_and_buffer_to_buffer() {
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 4096];
        pattern_chunk(0, 0, &mut a);
        pattern_chunk(1, 0, &mut b);
        assert_ne!(a, b);
        assert_ne!(a[..8], a[8..16]);
        let mut tail = vec![0u8; 8];
        pattern_chunk(0, 8, &mut tail);
        assert_eq!(tail, a[8..16]);
    }

    #[test]
    fn accounting_names_the_buffer_that_took_the_wrong_amount() {
        let report = PoolTestReport {
            available_before: 16 << 20,
            allocations: vec![
                Allocation {
                    len: 1 << 20,
                    available_after: 15 << 20,
                },
                Allocation {
                    len: 1 << 20,
                    available_after: 15 << 20,
                },
            ],
            ..PoolTestReport::default()
        };
        let failures = check_accounting(&report);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].starts_with("after buffer 1 "), "{failures:?}");
    }

    #[test]
    fn zero_buffers_and_a_missing_provider_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bus/pci/devices")).unwrap();
        let mut req = PoolTestRequest {
            provider: "0000:01:00.0".parse().unwrap(),
            size: 4096,
            buffers: 0,
            exhaust: false,
            unbind_after_map: false,
            while_mapped: None,
        };
        let root = SysfsRoot::new(dir.path());
        assert!(matches!(run(&root, &req), Err(PoolTestError::NoBuffers)));
        req.buffers = 1;
        let e = run(&root, &req).unwrap_err();
        assert!(e.to_string().contains("no PCI device 0000:01:00.0"), "{e}");
    }
}
