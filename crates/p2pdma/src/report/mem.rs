//! The `mem` views: p2pmem pools as a table, JSON or Prometheus text, and the
//! [`PoolTestReport`] of `mem test` as sentences or, with [`pool_test_error`], JSON.

use std::fmt::Write as _;

use serde::Serialize;

use super::error::{ErrorObject, Kind};
use crate::p2pmem::pool_test::PoolTestReport;
use crate::p2pmem::{self, P2pmemError, Provider};
use crate::sysfs::SysfsRoot;
use crate::Bdf;

/// What `mem info` shows of one provider.
#[derive(Debug, Clone, Serialize)]
pub struct PoolInfo {
    /// The provider.
    pub provider: Bdf,
    /// The provider's driver (`driver` link), if bound.
    pub driver: Option<String>,
    /// `p2pmem/size`.
    pub size: u64,
    /// `p2pmem/available`.
    pub available: u64,
    /// `p2pmem/published`.
    pub published: bool,
}

/// Reads one provider's pool (`<root>/bus/pci/devices/<bdf>/p2pmem/*` and its `driver`
/// link).
pub fn pool_info(root: &SysfsRoot, bdf: Bdf) -> Result<PoolInfo, P2pmemError> {
    let provider = Provider::open(root, bdf)?;
    let driver = std::fs::read_link(root.pci_driver_link(bdf))
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

/// The pool of `only`, or of every provider under `root` in address order.
pub fn pools(root: &SysfsRoot, only: Option<Bdf>) -> Result<Vec<PoolInfo>, P2pmemError> {
    let bdfs = match only {
        Some(bdf) => vec![bdf],
        None => p2pmem::list(root)?,
    };
    bdfs.into_iter().map(|bdf| pool_info(root, bdf)).collect()
}

/// `mem info` as a table (or a sentence when there is no provider under `root`).
pub fn pools_table(root: &SysfsRoot, pools: &[PoolInfo]) -> String {
    let mut out = String::new();
    if pools.is_empty() {
        let _ = writeln!(out, "no p2pmem providers under {}", root.path().display());
        return out;
    }
    let _ = writeln!(
        out,
        "{:<14} {:>12} {:>12} published",
        "provider", "size", "available"
    );
    for p in pools {
        let _ = writeln!(
            out,
            "{:<14} {:>12} {:>12} {}",
            p.provider,
            p.size,
            p.available,
            if p.published { "yes" } else { "no" }
        );
    }
    out
}

/// The pools in the Prometheus text exposition format (version 0.0.4), one gauge family
/// per pool attribute, each sample labelled `bdf` and `driver` (empty when unbound).
pub fn prometheus_text(pools: &[PoolInfo]) -> String {
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

/// `mem test` as sentences, ending in `passed` or `FAILED`.
pub fn pool_test_text(report: &PoolTestReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: pool {} bytes, {} free before the test",
        report.provider, report.pool_size, report.available_before
    );
    for (i, a) in report.allocations.iter().enumerate() {
        let _ = writeln!(
            out,
            "  buffer {i}: {} bytes mapped, {} free after",
            a.len, a.available_after
        );
    }
    let _ = writeln!(
        out,
        "  pattern: {} bytes written ({:.1} MiB/s) and read back ({:.1} MiB/s) through the CPU: {}",
        report.pattern_bytes,
        report.cpu_write_mib_per_s,
        report.cpu_read_mib_per_s,
        if report.pattern_mismatch.is_some() {
            "MISMATCH"
        } else {
            "identical"
        }
    );
    if let Some(e) = &report.exhaustion {
        let _ = writeln!(
            out,
            "  exhaustion: {} more buffers, then: {}",
            e.extra_buffers, e.error
        );
    }
    if let Some(u) = &report.unbind {
        let _ = writeln!(
            out,
            "  unbind from {}: live after unbind {}, reads {:?}, {} SIGBUS revocations, io_ptr {}, rebound {}, live after rebind {}",
            u.driver,
            u.is_live_after_unbind,
            u.read_results,
            u.sigbus_revocations,
            u.io_ptr_result,
            u.rebound,
            u.is_live_after_rebind
        );
    }
    if let Some(w) = &report.while_mapped {
        let _ = writeln!(
            out,
            "  while mapped, `{}` exited {:?}: live after {}, buffers {:?}, {} SIGBUS revocations",
            w.command, w.exit_code, w.is_live_after, w.read_results, w.sigbus_revocations
        );
    }
    match report.available_after {
        Some(free) => {
            let _ = writeln!(out, "  {free} free after dropping every buffer");
        }
        None => {
            let _ = writeln!(out, "  the provider is gone after the test");
        }
    }
    for f in &report.failures {
        let _ = writeln!(out, "  FAILED: {f}");
    }
    let _ = writeln!(out, "{}", if report.passed { "passed" } else { "FAILED" });
    out
}

/// The error object of a failed `mem test` (kind `failure`, the failures joined in
/// `message`); `None` when it passed.
pub fn pool_test_error(report: &PoolTestReport) -> Option<ErrorObject> {
    (!report.passed).then(|| {
        ErrorObject::new(
            Kind::Failure,
            format!(
                "mem test of {} failed: {}",
                report.provider,
                report.failures.join("; ")
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::p2pmem::pool_test::Allocation;
    use crate::sysfs::builder::{FunctionSpec, SysfsBuilder};

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
        let root = SysfsRoot::new(dir.path());
        let pools = pools(&root, None).unwrap();
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
        let table = pools_table(&root, &pools);
        assert_eq!(
            table,
            concat!(
                "provider               size    available published\n",
                // Bdf's Display ignores the width, as the table always did.
                "0000:01:00.0     16777216     12582912 yes\n",
                "0000:01:00.1      1048576      1048576 no\n",
            )
        );
        assert_eq!(
            pools_table(&root, &[]),
            format!("no p2pmem providers under {}\n", dir.path().display())
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn a_failed_test_reads_failed_with_each_failure() {
        let report = PoolTestReport {
            provider: "0000:01:00.0".into(),
            pool_size: 16 << 20,
            available_before: 16 << 20,
            allocations: vec![Allocation {
                len: 1 << 20,
                available_after: 15 << 20,
            }],
            pattern_bytes: 1 << 20,
            available_after: Some(16 << 20),
            failures: vec!["buffer 0: read back differs at byte 8".into()],
            pattern_mismatch: Some((0, 8)),
            ..PoolTestReport::default()
        };
        let text = pool_test_text(&report);
        assert!(
            text.starts_with("0000:01:00.0: pool 16777216 bytes"),
            "{text}"
        );
        assert!(text.contains("through the CPU: MISMATCH"), "{text}");
        assert!(
            text.contains("  FAILED: buffer 0: read back differs at byte 8\n"),
            "{text}"
        );
        assert!(text.ends_with("\nFAILED\n"), "{text}");
        let error = pool_test_error(&report).unwrap();
        assert_eq!(error.kind, Kind::Failure);
        assert_eq!(error.exit_code, 1);
        assert_eq!(
            error.message,
            "mem test of 0000:01:00.0 failed: buffer 0: read back differs at byte 8"
        );
        let passed = PoolTestReport {
            passed: true,
            failures: Vec::new(),
            ..report
        };
        assert!(pool_test_error(&passed).is_none());
    }
}
