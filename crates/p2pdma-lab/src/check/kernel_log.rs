//! Signs of a kernel bug in a guest's console log: BUG/WARNING splats, KASAN reports,
//! oopses, the hung-task detector, lockdep reports, soft lockups, RCU stalls, call traces
//! and a tainted kernel. Reports known to be about something else are set aside, each
//! named.

use serde::{Deserialize, Serialize};

/// Markers of a kernel bug report.
const PROBLEM_MARKERS: &[&str] = &[
    "BUG:",
    "WARNING:",
    "KASAN",
    "Oops",
    "hung_task",
    "blocked for more than",
    "lockdep",
    "possible circular locking",
    "possible recursive locking",
    "inconsistent lock state",
    "soft lockup",
    "rcu_preempt detected stalls",
    "rcu_sched detected stalls",
    "Kernel panic",
    "general protection fault",
    "Call Trace:",
    "Tainted: ",
];

/// Boot banners that contain a marker but report nothing.
const BENIGN_LINES: &[&str] = &[
    // The debug flavour's PROVE_RCU announcing itself.
    "RCU lockdep checking is enabled",
];

/// A known kernel report that is not about P2PDMA: every line listed must be present
/// for it to be set aside.
struct KnownReport {
    /// Where it is explained.
    reference: &'static str,
    /// The report's first line.
    header: &'static str,
    /// Lines the report must also contain.
    contains: &'static [&'static str],
}

/// Lockdep on the debug kernel flags pciehp itself on every hot removal below a switch
/// port: pciehp_unconfigure_device() takes pci_rescan_remove_lock with the slot's
/// reset_lock held, drops reset_lock around the removal and takes it again while still
/// holding pci_rescan_remove_lock. It fires with no p2pmem in use (RELIABILITY.md).
const KNOWN_REPORTS: &[KnownReport] = &[KnownReport {
    reference: "RELIABILITY.md, known kernel issues: pciehp lock order",
    header: "WARNING: possible circular locking dependency detected",
    contains: &[
        "reset_lock",
        "pci_rescan_remove_lock",
        "at: pciehp_unconfigure_device",
        "pciehp_ist",
    ],
}];

/// A report runs from its header to the end of its stack dump.
const REPORT_END: &str = "</TASK>";

/// What a scan of one log found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogScan {
    /// The lines that report a kernel bug.
    pub problems: Vec<String>,
    /// Known reports set aside, by reference.
    pub set_aside: Vec<String>,
}

/// Scans a kernel console log.
pub fn scan(log: &str) -> LogScan {
    let lines: Vec<&str> = log.lines().collect();
    let mut out = LogScan::default();
    let mut i = 0;
    while i < lines.len() {
        if let Some((known, len)) = known_report_at(&lines[i..]) {
            out.set_aside.push(known.reference.to_owned());
            i += len;
            continue;
        }
        let line = lines[i];
        if PROBLEM_MARKERS.iter().any(|m| line.contains(m))
            && !BENIGN_LINES.iter().any(|b| line.contains(b))
        {
            out.problems.push(line.trim_end_matches('\r').to_owned());
        }
        i += 1;
    }
    out
}

/// The known report starting at `lines[0]` and how many lines it spans.
fn known_report_at(lines: &[&str]) -> Option<(&'static KnownReport, usize)> {
    let known = KNOWN_REPORTS
        .iter()
        .find(|k| lines.first().is_some_and(|l| l.contains(k.header)))?;
    let len = lines.iter().position(|l| l.contains(REPORT_END))? + 1;
    let report = &lines[..len];
    known
        .contains
        .iter()
        .all(|c| report.iter().any(|l| l.contains(c)))
        .then_some((known, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bug_reports_and_taint_are_found_and_a_clean_boot_passes() {
        let clean =
            "[    0.000000] Linux version 6.12.117\n[    0.1] RCU lockdep checking is enabled.\n";
        assert_eq!(scan(clean), LogScan::default());
        let bad = "[   3.1] Oops: general protection fault, probably for non-canonical address\n\
                   [   3.2] CPU: 0 UID: 0 PID: 1 Comm: sh Tainted: G        W 6.12.117\n\
                   [   3.3] Call Trace:\n";
        assert_eq!(scan(bad).problems.len(), 3);
    }

    #[test]
    fn only_the_whole_known_pciehp_report_is_set_aside() {
        let report = "WARNING: possible circular locking dependency detected\n\
                      reset_lock\npci_rescan_remove_lock\nat: pciehp_unconfigure_device+0x1\n\
                      pciehp_ist\n</TASK>\n";
        let s = scan(report);
        assert!(s.problems.is_empty(), "{s:?}");
        assert_eq!(s.set_aside.len(), 1);
        let partial = report.replace("pciehp_ist\n", "");
        assert!(!scan(&partial).problems.is_empty());
    }
}
