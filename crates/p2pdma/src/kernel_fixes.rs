//! What a kernel release lacks or offers beyond the P2P rules: stable fixes to the P2PDMA
//! code a running release may not have, and providers without a p2pmem pool.
//!
//! Each [`StableFix`] cites the upstream commit (id and subject) and the releases it is
//! known to be in. Only what was checked is claimed: a series whose backport was seen
//! queued but whose first release carrying it was not verified gives
//! [`FixStatus::Unknown`], never "fixed".
//!
//! How the entries were checked (2026-11-25):
//! - `6220694c52a5` "PCI/P2PDMA: Release per-CPU pgmap ref when vm_insert_page() fails"
//!   (Hou Tao): in the PCI tree's `p2pdma` branch (git push log 2026-01-08), merged for
//!   v7.0; in 6.12.75 (Debian's linux-source-6.12 changelog lists it under the upstream
//!   stable update `ChangeLog-6.12.75`; also the 6.12.75-rc1 review, 2026-02-28); in the
//!   6.18.14-rc1 review's shortlog (2026-02-24; the final 6.18.14 changelog was not read);
//!   reviewed for 6.19 the same day (patch 324/781) without the release number being
//!   verified. Read in the sources: Linux 6.12.117 and 7.2.13 `drivers/pci/p2pdma.c` both
//!   call `percpu_ref_put()` when `vm_insert_page()` fails in `p2pmem_alloc_mmap()`.
//!   The bug came with `7e9c7ef83d78` "PCI/P2PDMA: Allow userspace VMA allocations through
//!   sysfs" (v6.2).
//! - `pcim_p2pdma_provider()`: present in 7.2.13's `drivers/pci/p2pdma.c` (vfio-pci's
//!   dma-buf export uses it), absent from 6.12.117's; the release in between that added
//!   it was not verified.
//!
//! # References
//! - Linux `drivers/pci/p2pdma.c` (`p2pmem_alloc_mmap()`, `pcim_p2pdma_provider()`)
//! - `drivers/vfio/pci/vfio_pci_dmabuf.c`

use serde::Serialize;

use crate::kernel_rules::KernelVersion;

/// A fix to the P2PDMA code that stable releases received.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StableFix {
    /// Upstream commit id (12 hex digits, as kernel changelogs cite them).
    pub commit: &'static str,
    /// The commit's subject line.
    pub subject: &'static str,
    /// What a release without it does, for a user.
    pub effect: &'static str,
    /// The first release with the bug.
    pub introduced: KernelVersion,
    /// The first mainline release with the fix.
    pub mainline: KernelVersion,
    /// Stable series that received it.
    pub backports: &'static [Backport],
    /// Series still maintained when the fix went to stable whose backport p2pdma has not
    /// checked: releases of them are [`FixStatus::Unknown`].
    pub unchecked_series: &'static [(u32, u32)],
}

/// One stable series' copy of a fix.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Backport {
    /// `(major, minor)` of the series (`(6, 12)`).
    pub series: (u32, u32),
    /// The first release of the series carrying it; `None` when the backport was seen but
    /// its release number not verified.
    pub first_release: Option<u32>,
}

/// Whether a release has a fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "why")]
pub enum FixStatus {
    /// The release has the fix, or predates the bug.
    Has,
    /// The release lacks it.
    Lacks,
    /// Not known (the reason says what was not verified).
    Unknown(String),
}

/// The table: P2PDMA fixes that went to stable, newest first.
pub const STABLE_FIXES: &[StableFix] = &[StableFix {
    commit: "6220694c52a5",
    subject: "PCI/P2PDMA: Release per-CPU pgmap ref when vm_insert_page() fails",
    effect: "when vm_insert_page() fails while mapping p2pmem, a reference on the provider's pages leaks and removing or unbinding the provider later hangs forever",
    introduced: KernelVersion::new(6, 2, 0),
    mainline: KernelVersion::new(7, 0, 0),
    backports: &[
        Backport {
            series: (6, 12),
            first_release: Some(75),
        },
        Backport {
            series: (6, 18),
            first_release: Some(14),
        },
        Backport {
            series: (6, 19),
            first_release: None,
        },
    ],
    unchecked_series: &[(6, 6)],
}];

impl StableFix {
    /// Whether `version` has this fix.
    pub fn status(&self, version: KernelVersion) -> FixStatus {
        if version < self.introduced || version >= self.mainline {
            return FixStatus::Has;
        }
        let series = (version.major, version.minor);
        if let Some(b) = self.backports.iter().find(|b| b.series == series) {
            return match b.first_release {
                Some(first) if version.patch >= first => FixStatus::Has,
                Some(_) => FixStatus::Lacks,
                None => FixStatus::Unknown(format!(
                    "backported to {}.{}.y; the first release carrying it was not verified",
                    series.0, series.1
                )),
            };
        }
        if self.unchecked_series.contains(&series) {
            return FixStatus::Unknown(format!(
                "whether {}.{}.y received it was not checked",
                series.0, series.1
            ));
        }
        // Any other series between the bug and the fix had stopped receiving updates.
        FixStatus::Lacks
    }
}

/// A fix a release lacks or may lack.
#[derive(Debug, Clone, Serialize)]
pub struct FixNote {
    /// The fix.
    pub fix: StableFix,
    /// Lacks or unknown.
    pub status: FixStatus,
}

/// The fixes `release` lacks or may lack; empty when it has them all or cannot be parsed
/// (then nothing can be said, and [`KernelVersion::parse`] is the caller's to check).
pub fn fix_notes(release: &str) -> Vec<FixNote> {
    let Some(version) = KernelVersion::parse(release) else {
        return Vec::new();
    };
    STABLE_FIXES
        .iter()
        .filter_map(|fix| match fix.status(version) {
            FixStatus::Has => None,
            status => Some(FixNote { fix: *fix, status }),
        })
        .collect()
}

/// Whether a release has `pcim_p2pdma_provider()` (P2PDMA providers without a pool, such
/// as vfio-pci's dma-buf export): `Some(true)` from 7.2 (read in 7.2.13), `Some(false)` up
/// to 6.12 (read in 6.12.117), `None` in between (not verified).
pub fn has_pool_less_providers(version: KernelVersion) -> Option<bool> {
    if version >= KernelVersion::new(7, 2, 0) {
        Some(true)
    } else if version < KernelVersion::new(6, 13, 0) {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> KernelVersion {
        KernelVersion::parse(s).unwrap()
    }

    #[test]
    fn the_removal_hang_fix_is_judged_per_series_and_patch() {
        let fix = &STABLE_FIXES[0];
        assert_eq!(fix.status(v("6.1.100")), FixStatus::Has, "before the bug");
        assert_eq!(fix.status(v("6.12.74")), FixStatus::Lacks);
        assert_eq!(fix.status(v("6.12.75")), FixStatus::Has);
        assert_eq!(fix.status(v("6.12.117-p2pdma")), FixStatus::Has);
        assert_eq!(fix.status(v("6.8.12")), FixStatus::Lacks, "an ended series");
        assert_eq!(fix.status(v("6.18.13")), FixStatus::Lacks);
        assert_eq!(fix.status(v("6.18.44")), FixStatus::Has);
        assert!(matches!(fix.status(v("6.19.2")), FixStatus::Unknown(_)));
        assert!(matches!(fix.status(v("6.6.120")), FixStatus::Unknown(_)));
        assert_eq!(fix.status(v("7.0.0")), FixStatus::Has);
        assert_eq!(fix.status(v("7.2.13+deb14-amd64")), FixStatus::Has);
    }

    #[test]
    fn notes_name_the_commit_only_for_releases_that_lack_it() {
        let notes = fix_notes("6.12.50");
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].fix.commit, "6220694c52a5");
        assert_eq!(notes[0].status, FixStatus::Lacks);
        assert!(fix_notes("6.12.117").is_empty());
        assert!(fix_notes("7.2.13").is_empty());
        assert!(fix_notes("not a release").is_empty());
    }

    #[test]
    fn pool_less_providers_are_known_where_the_sources_were_read() {
        assert_eq!(has_pool_less_providers(v("6.12.117")), Some(false));
        assert_eq!(has_pool_less_providers(v("7.2.13")), Some(true));
        assert_eq!(has_pool_less_providers(v("6.19.3")), None);
    }
}
