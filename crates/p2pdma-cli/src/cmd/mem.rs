//! `p2pdma mem`: look at p2pmem pools and check that one really holds data.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use p2pdma::p2pmem::{self, P2pBuffer, P2pmemError, Provider};
use p2pdma::Bdf;
use serde::Serialize;

use crate::exit::Kind;
use crate::output::{self, ErrorObject};
use crate::Globals;

/// The `mem` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum MemCommand {
    /// List p2pmem providers with their pool size, free bytes and published flag.
    Info(InfoArgs),
    /// Allocate buffers from a provider, write a pattern through the CPU, read it back,
    /// and check the pool's accounting. Needs root.
    Test(TestArgs),
}

/// Arguments of `p2pdma mem info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Only this provider (PCI address); all providers by default.
    #[arg(value_name = "BDF")]
    provider: Option<Bdf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Print the pools in the Prometheus text format, for node_exporter's textfile
    /// collector (gauges labelled by BDF and driver).
    #[arg(long, conflicts_with = "json")]
    prometheus: bool,
}

/// Arguments of `p2pdma mem test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// The provider to test (PCI address, e.g. 0000:01:00.0).
    #[arg(value_name = "BDF")]
    provider: Bdf,
    /// Bytes per buffer (rounded up to the page size); k, M, G, T suffixes (binary).
    #[arg(long, default_value = "1M", value_name = "SIZE", value_parser = super::size_usize)]
    size: usize,
    /// How many buffers to hold at once.
    #[arg(long, default_value_t = 1, value_name = "N")]
    buffers: usize,
    /// Then keep allocating buffers of --size until the pool refuses, and report how.
    #[arg(long)]
    exhaust: bool,
    /// Then unbind the provider from its driver while the buffers are mapped, check that
    /// access reports the revocation instead of killing the process, and bind it again.
    /// Disruptive: the device disappears for a moment (its block devices too).
    #[arg(long, conflicts_with = "while_mapped")]
    unbind_after_map: bool,
    /// Then run this shell command while the buffers are mapped (e.g. one that removes
    /// the device), and report whether each buffer still holds its pattern or was
    /// revoked. A buffer that reads back anything else fails the test.
    #[arg(long, value_name = "COMMAND")]
    while_mapped: Option<String>,
    /// Print JSON instead of sentences.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct PoolInfo {
    provider: Bdf,
    /// The provider's driver (`driver` link), if bound.
    driver: Option<String>,
    size: u64,
    available: u64,
    published: bool,
}

/// Runs a `mem` subcommand.
pub fn run(cmd: MemCommand, globals: &Globals) -> anyhow::Result<ExitCode> {
    match cmd {
        MemCommand::Info(args) => info(args, globals),
        MemCommand::Test(args) => test(args, globals),
    }
}

fn info(args: InfoArgs, globals: &Globals) -> anyhow::Result<ExitCode> {
    let bdfs = match args.provider {
        Some(bdf) => vec![bdf],
        None => p2pmem::list(&globals.sysfs)?,
    };
    let mut pools = Vec::new();
    for bdf in bdfs {
        pools.push(pool_info(&globals.sysfs, bdf)?);
    }
    if args.json {
        output::print_json(&pools, false)?;
    } else if args.prometheus {
        write!(output::stdout(), "{}", prometheus_text(&pools))?;
    } else if pools.is_empty() {
        writeln!(
            output::stdout(),
            "no p2pmem providers under {}",
            globals.sysfs.display()
        )?;
    } else {
        writeln!(
            output::stdout(),
            "{:<14} {:>12} {:>12} published",
            "provider",
            "size",
            "available"
        )?;
        for p in &pools {
            writeln!(
                output::stdout(),
                "{:<14} {:>12} {:>12} {}",
                p.provider,
                p.size,
                p.available,
                if p.published { "yes" } else { "no" }
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `mem info` shows of one provider.
fn pool_info(sysfs: &Path, bdf: Bdf) -> anyhow::Result<PoolInfo> {
    let provider = Provider::open(sysfs, bdf)?;
    let driver_link = sysfs
        .join("bus/pci/devices")
        .join(bdf.to_string())
        .join("driver");
    let driver = std::fs::read_link(driver_link)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    Ok(PoolInfo {
        provider: bdf,
        driver,
        size: provider.size()?,
        available: provider.available()?,
        published: provider.published()?,
    })
}

/// The pools in the Prometheus text exposition format (version 0.0.4), one gauge family
/// per pool attribute, each sample labelled `bdf` and `driver` (empty when unbound).
fn prometheus_text(pools: &[PoolInfo]) -> String {
    use std::fmt::Write as _;
    type Family = (&'static str, &'static str, fn(&PoolInfo) -> u64);
    let families: [Family; 3] = [
        (
            "p2pdma_pool_size_bytes",
            "Size of the p2pmem pool of a PCI device (sysfs p2pmem/size).",
            |p| p.size,
        ),
        (
            "p2pdma_pool_available_bytes",
            "Free bytes in the p2pmem pool of a PCI device (sysfs p2pmem/available); an allocation needs one contiguous run.",
            |p| p.available,
        ),
        (
            "p2pdma_pool_published",
            "1 if the device publishes its p2pmem to other drivers (sysfs p2pmem/published), else 0.",
            |p| u64::from(p.published),
        ),
    ];
    let mut out = String::new();
    for (name, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for p in pools {
            let _ = writeln!(
                out,
                "{name}{{bdf=\"{}\",driver=\"{}\"}} {}",
                p.provider,
                label_value(p.driver.as_deref().unwrap_or("")),
                value(p)
            );
        }
    }
    out
}

/// A label value with `\`, `"` and newlines escaped, as the text format requires.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Everything `mem test` saw, printed as JSON with `--json`.
#[derive(Debug, Default, Serialize)]
struct TestReport {
    provider: String,
    pool_size: u64,
    available_before: u64,
    /// Length of each buffer after rounding, and `available` right after mapping it.
    allocations: Vec<Allocation>,
    /// Bytes written and read back through the CPU.
    pattern_bytes: u64,
    /// CPU copy throughput into and out of device memory (MiB/s), pattern included.
    cpu_write_mib_per_s: f64,
    cpu_read_mib_per_s: f64,
    /// First offset (buffer index, byte offset) where the read-back differed.
    pattern_mismatch: Option<(usize, usize)>,
    exhaustion: Option<Exhaustion>,
    unbind: Option<UnbindReport>,
    while_mapped: Option<WhileMappedReport>,
    /// `available` after every buffer was dropped (None: the provider is gone).
    available_after: Option<u64>,
    /// Whether every check passed.
    passed: bool,
    /// What failed, one line each.
    failures: Vec<String>,
    /// When a check failed: the contract's error object (kind `failure`, the failures
    /// joined in `message`), so a script finds `error` in every failed run's document.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorObject>,
}

#[derive(Debug, Serialize)]
struct Allocation {
    len: usize,
    available_after: u64,
}

#[derive(Debug, Serialize)]
struct Exhaustion {
    /// Extra buffers obtained before the pool refused.
    extra_buffers: usize,
    /// `pool-exhausted` when the pool refused as expected.
    error_kind: String,
    error: String,
    /// Free bytes the error reported.
    available_reported: Option<u64>,
}

#[derive(Debug, Serialize)]
struct WhileMappedReport {
    command: String,
    /// The command's exit code (None: killed by a signal).
    exit_code: Option<i32>,
    is_live_after: bool,
    /// Per buffer: `intact` (pattern still there), `revoked`, `corrupted`, or an error.
    read_results: Vec<String>,
    /// SIGBUS faults turned into revocations during those reads.
    sigbus_revocations: usize,
}

#[derive(Debug, Default, Serialize)]
struct UnbindReport {
    driver: String,
    is_live_before: bool,
    /// Right after the unbind, before any access (the `allocate` file check).
    is_live_after_unbind: bool,
    /// What a CPU read of each buffer returned.
    read_results: Vec<String>,
    /// SIGBUS faults turned into revocations during those reads.
    sigbus_revocations: usize,
    /// What asking for an I/O pointer returned afterwards.
    io_ptr_result: String,
    rebound: bool,
    /// After the rebind: the buffer must stay dead (a new `allocate` file is not its own).
    is_live_after_rebind: bool,
}

fn test(args: TestArgs, globals: &Globals) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.buffers > 0, "--buffers must be at least 1");
    let provider = Provider::open(&globals.sysfs, args.provider)?;
    let mut report = TestReport {
        provider: args.provider.to_string(),
        pool_size: provider.size()?,
        available_before: provider.available()?,
        ..TestReport::default()
    };

    let mut buffers = Vec::new();
    for _ in 0..args.buffers {
        let buffer = provider.allocate(args.size)?;
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
        write_pattern(buffer, index as u64)?;
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
    if args.exhaust {
        let outcome = loop {
            match provider.allocate(args.size) {
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

    if args.unbind_after_map {
        let unbind = unbind_and_check(&globals.sysfs, args.provider, &mut buffers)?;
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

    if let Some(command) = &args.while_mapped {
        let status = std::process::Command::new("sh")
            .args(["-c", command])
            .status()
            .with_context(|| format!("cannot run sh -c {command:?}"))?;
        let is_live_after = buffers.iter().all(P2pBuffer::is_live);
        let before = p2pdma::revoke::revocation_count();
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
                Err(e) if is_revoked(&e) => "revoked".to_owned(),
                Err(e) => {
                    report.failures.push(format!("buffer {index}: {e:#}"));
                    format!("{e:#}")
                }
            });
        }
        report.while_mapped = Some(WhileMappedReport {
            command: command.clone(),
            exit_code: status.code(),
            is_live_after,
            read_results,
            sigbus_revocations: p2pdma::revoke::revocation_count() - before,
        });
    }

    drop(extra);
    drop(buffers);
    // After a rebind or a removal the pool is a new one or gone: only compare when the
    // provider stayed.
    let still_there = !args.unbind_after_map
        && report
            .while_mapped
            .as_ref()
            .is_none_or(|w| w.read_results.iter().all(|r| r == "intact"));
    report.available_after = match Provider::open(&globals.sysfs, args.provider) {
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
    if !report.passed {
        report.error = Some(ErrorObject {
            kind: Kind::Failure,
            message: format!(
                "mem test of {} failed: {}",
                report.provider,
                report.failures.join("; ")
            ),
            exit_code: Kind::Failure.code(),
            details: Default::default(),
        });
    }
    output::unless_broken_pipe(print_test_report(&report, args.json))?;
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn mib_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64().max(1e-9)
}

/// Each mapping must take exactly its length from the pool.
fn check_accounting(report: &TestReport) -> Vec<String> {
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

/// Word `index` of buffer `seed`'s pattern (splitmix64: every word differs).
fn pattern_word(seed: u64, index: u64) -> u64 {
    let mut z = (seed << 40 ^ index).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const CHUNK: usize = 64 * 1024;

fn pattern_chunk(seed: u64, offset: usize, out: &mut [u8]) {
    for (i, word) in out.chunks_mut(8).enumerate() {
        let bytes = pattern_word(seed, ((offset / 8) + i) as u64).to_le_bytes();
        word.copy_from_slice(&bytes[..word.len()]);
    }
}

fn write_pattern(buffer: &mut P2pBuffer, seed: u64) -> anyhow::Result<()> {
    let mut chunk = vec![0u8; CHUNK];
    let mut offset = 0;
    while offset < buffer.len() {
        let n = CHUNK.min(buffer.len() - offset);
        pattern_chunk(seed, offset, &mut chunk[..n]);
        buffer
            .write_from(offset, &chunk[..n])
            .context("writing the test pattern")?;
        offset += n;
    }
    Ok(())
}

fn first_mismatch(buffer: &P2pBuffer, seed: u64) -> anyhow::Result<Option<usize>> {
    let mut expected = vec![0u8; CHUNK];
    let mut actual = vec![0u8; CHUNK];
    let mut offset = 0;
    while offset < buffer.len() {
        let n = CHUNK.min(buffer.len() - offset);
        pattern_chunk(seed, offset, &mut expected[..n]);
        buffer
            .read_into(offset, &mut actual[..n])
            .context("reading the test pattern back")?;
        if let Some(i) = (0..n).find(|&i| expected[i] != actual[i]) {
            return Ok(Some(offset + i));
        }
        offset += n;
    }
    Ok(None)
}

/// Whether an error from the copy helpers is the buffer's revocation.
fn is_revoked(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<P2pmemError>(),
        Some(P2pmemError::Revoked { .. })
    )
}

fn unbind_and_check(
    sysfs: &Path,
    bdf: Bdf,
    buffers: &mut [P2pBuffer],
) -> anyhow::Result<UnbindReport> {
    let device = sysfs.join("bus/pci/devices").join(bdf.to_string());
    let driver_link = device.join("driver");
    let driver_dir = std::fs::canonicalize(&driver_link)
        .with_context(|| format!("{bdf} has no driver to unbind ({})", driver_link.display()))?;
    let driver = driver_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut report = UnbindReport {
        driver,
        is_live_before: buffers.iter().all(|b| b.is_live()),
        ..UnbindReport::default()
    };
    let unbind = driver_dir.join("unbind");
    std::fs::write(&unbind, bdf.to_string())
        .with_context(|| format!("cannot unbind {bdf} (writing {})", unbind.display()))?;
    report.is_live_after_unbind = buffers.iter().any(|b| b.is_live());

    let before = p2pdma::revoke::revocation_count();
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
    report.sigbus_revocations = p2pdma::revoke::revocation_count() - before;
    report.io_ptr_result = match buffers[0].io_ptr(0, 4096.min(buffers[0].len())) {
        Ok(_) => "ok".to_owned(),
        Err(P2pmemError::Revoked { .. }) => "revoked".to_owned(),
        Err(e) => e.to_string(),
    };

    let bind = driver_dir.join("bind");
    std::fs::write(&bind, bdf.to_string())
        .with_context(|| format!("cannot bind {bdf} again (writing {})", bind.display()))?;
    report.rebound = true;
    // The driver re-creates p2pmem/allocate while probing, possibly asynchronously.
    let allocate = device.join("p2pmem/allocate");
    for _ in 0..100 {
        if allocate.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    report.is_live_after_rebind = buffers.iter().any(|b| b.is_live());
    Ok(report)
}

fn print_test_report(report: &TestReport, json: bool) -> anyhow::Result<()> {
    if json {
        output::print_json(report, false)?;
        return Ok(());
    }
    writeln!(
        output::stdout(),
        "{}: pool {} bytes, {} free before the test",
        report.provider,
        report.pool_size,
        report.available_before
    )?;
    for (i, a) in report.allocations.iter().enumerate() {
        writeln!(
            output::stdout(),
            "  buffer {i}: {} bytes mapped, {} free after",
            a.len,
            a.available_after
        )?;
    }
    writeln!(
        output::stdout(),
        "  pattern: {} bytes written ({:.1} MiB/s) and read back ({:.1} MiB/s) through the CPU: {}",
        report.pattern_bytes,
        report.cpu_write_mib_per_s,
        report.cpu_read_mib_per_s,
        if report.pattern_mismatch.is_some() {
            "MISMATCH"
        } else {
            "identical"
        }
    )?;
    if let Some(e) = &report.exhaustion {
        writeln!(
            output::stdout(),
            "  exhaustion: {} more buffers, then: {}",
            e.extra_buffers,
            e.error
        )?;
    }
    if let Some(u) = &report.unbind {
        writeln!(output::stdout(),
            "  unbind from {}: live after unbind {}, reads {:?}, {} SIGBUS revocations, io_ptr {}, rebound {}, live after rebind {}",
            u.driver,
            u.is_live_after_unbind,
            u.read_results,
            u.sigbus_revocations,
            u.io_ptr_result,
            u.rebound,
            u.is_live_after_rebind
        )?;
    }
    if let Some(w) = &report.while_mapped {
        writeln!(
            output::stdout(),
            "  while mapped, `{}` exited {:?}: live after {}, buffers {:?}, {} SIGBUS revocations",
            w.command,
            w.exit_code,
            w.is_live_after,
            w.read_results,
            w.sigbus_revocations
        )?;
    }
    match report.available_after {
        Some(free) => writeln!(
            output::stdout(),
            "  {free} free after dropping every buffer"
        )?,
        None => writeln!(output::stdout(), "  the provider is gone after the test")?,
    }
    for f in &report.failures {
        writeln!(output::stdout(), "  FAILED: {f}")?;
    }
    writeln!(
        output::stdout(),
        "{}",
        if report.passed { "passed" } else { "FAILED" }
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pdma::sysfs::builder::{FunctionSpec, SysfsBuilder};

    #[test]
    fn prometheus_text_of_a_fixture_has_help_type_and_labelled_gauges() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = SysfsBuilder::new(dir.path()).unwrap();
        b.add(
            None,
            "0000:00:00.0",
            FunctionSpec::host_bridge(0x8086, 0x29c0),
        )
        .unwrap();
        let rp = b
            .add(None, "0000:00:01.0", FunctionSpec::root_port())
            .unwrap();
        b.add(
            Some(rp),
            "0000:01:00.0",
            FunctionSpec::nvme()
                .p2pmem_full(16 << 20, 12 << 20, true)
                .driver("nvme"),
        )
        .unwrap();
        b.add(
            Some(rp),
            "0000:01:00.1",
            // A memory device with no driver bound: an empty driver label.
            FunctionSpec::endpoint(0x1b36, 0x0011, 0x050000).p2pmem_full(1 << 20, 1 << 20, false),
        )
        .unwrap();
        let pools: Vec<PoolInfo> = p2pmem::list(dir.path())
            .unwrap()
            .into_iter()
            .map(|bdf| pool_info(dir.path(), bdf).unwrap())
            .collect();
        let text = prometheus_text(&pools);
        let expected = "\
# HELP p2pdma_pool_size_bytes Size of the p2pmem pool of a PCI device (sysfs p2pmem/size).
# TYPE p2pdma_pool_size_bytes gauge
p2pdma_pool_size_bytes{bdf=\"0000:01:00.0\",driver=\"nvme\"} 16777216
p2pdma_pool_size_bytes{bdf=\"0000:01:00.1\",driver=\"\"} 1048576
# HELP p2pdma_pool_available_bytes Free bytes in the p2pmem pool of a PCI device (sysfs p2pmem/available); an allocation needs one contiguous run.
# TYPE p2pdma_pool_available_bytes gauge
p2pdma_pool_available_bytes{bdf=\"0000:01:00.0\",driver=\"nvme\"} 12582912
p2pdma_pool_available_bytes{bdf=\"0000:01:00.1\",driver=\"\"} 1048576
# HELP p2pdma_pool_published 1 if the device publishes its p2pmem to other drivers (sysfs p2pmem/published), else 0.
# TYPE p2pdma_pool_published gauge
p2pdma_pool_published{bdf=\"0000:01:00.0\",driver=\"nvme\"} 1
p2pdma_pool_published{bdf=\"0000:01:00.1\",driver=\"\"} 0
";
        assert_eq!(text, expected);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
