//! What can be said about the host beyond the P2P rules: stable fixes the kernel release
//! lacks ([`crate::kernel_fixes`]) and functions that may be P2PDMA providers without a
//! p2pmem pool.

use std::fmt::Write as _;

use serde::Serialize;

use crate::host::KernelP2pdma;
use crate::kernel_fixes::{fix_notes, has_pool_less_providers, FixNote, FixStatus};
use crate::kernel_rules::KernelVersion;
use crate::pci::PciTree;
use crate::Bdf;

/// Notes on the host facts (`host_notes` in `topo --json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostNotes {
    /// Stable fixes the release lacks or may lack.
    pub fixes: Vec<FixNote>,
    /// Functions that may be providers without a pool.
    pub pool_less: Vec<PoolLess>,
}

/// A function that may be a P2PDMA provider without a p2pmem pool.
#[derive(Debug, Clone, Serialize)]
pub struct PoolLess {
    /// The function.
    pub bdf: Bdf,
    /// Its driver.
    pub driver: String,
    /// Its IOMMU group (`iommu_group` link), the unit vfio-pci hands to userspace.
    pub iommu_group: Option<u32>,
    /// Whether the release has pool-less providers at all (`None`: not known).
    pub release_has_them: Option<bool>,
}

impl HostNotes {
    /// Whether there is nothing to say.
    pub fn is_empty(&self) -> bool {
        self.fixes.is_empty() && self.pool_less.is_empty()
    }
}

/// The notes for `tree`'s kernel release (the running one, the snapshot's, or
/// `--kernel-release`) and functions.
pub fn host_notes(tree: &PciTree) -> HostNotes {
    if tree.host.p2pdma_config == KernelP2pdma::No {
        // Without CONFIG_PCI_P2PDMA neither the fixes nor the providers exist.
        return HostNotes::default();
    }
    let release = tree.host.kernel_release.as_deref();
    let fixes = release.map(fix_notes).unwrap_or_default();
    let version = release.and_then(KernelVersion::parse);
    let release_has_them = version.and_then(has_pool_less_providers);
    let pool_less = if release_has_them == Some(false) {
        Vec::new()
    } else {
        // vfio-pci exports BARs as dma-bufs through pcim_p2pdma_provider(): P2P-capable
        // memory that never shows a p2pmem/ directory.
        tree.iter()
            .filter(|f| f.p2pmem.is_none() && f.driver.as_deref() == Some("vfio-pci"))
            .map(|f| PoolLess {
                bdf: f.bdf,
                driver: "vfio-pci".to_owned(),
                iommu_group: f.iommu_group,
                release_has_them,
            })
            .collect()
    };
    HostNotes { fixes, pool_less }
}

/// The notes as lines (empty when there is nothing to say), for the text views.
pub fn host_notes_text(notes: &HostNotes, release: Option<&str>) -> String {
    let mut out = String::new();
    let release = release.unwrap_or("?");
    for note in &notes.fixes {
        let fix = &note.fix;
        let state = match &note.status {
            FixStatus::Lacks => "lacks".to_owned(),
            FixStatus::Unknown(why) => format!("may lack ({why})"),
            FixStatus::Has => continue,
        };
        let _ = writeln!(
            out,
            "kernel {release} {state} commit {} \"{}\": {}; update to a release with it (mainline {}.{}{})",
            fix.commit,
            fix.subject,
            fix.effect,
            fix.mainline.major,
            fix.mainline.minor,
            fix.backports
                .iter()
                .filter_map(|b| b
                    .first_release
                    .map(|r| format!(", {}.{}.{r}", b.series.0, b.series.1)))
                .collect::<String>()
        );
    }
    for p in &notes.pool_less {
        let maybe = match p.release_has_them {
            Some(true) => "",
            _ => " (if this release has pcim_p2pdma_provider(), which p2pdma has not verified)",
        };
        let group = p
            .iommu_group
            .map(|g| format!(" (IOMMU group {g})"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{}{group} is bound to {}: a possible P2PDMA provider without a pool{maybe} (dma-buf export of its BARs); it has no p2pmem/ directory, so p2pdma cannot allocate from it",
            p.bdf, p.driver
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostFacts;
    use crate::sysfs::builder::{FunctionSpec as F, SysfsBuilder};
    use crate::sysfs::SysfsRoot;

    fn tree(release: &str) -> PciTree {
        let dir = tempfile::tempdir().unwrap();
        let mut b = SysfsBuilder::new(dir.path()).unwrap();
        b.add(None, "0000:00:00.0", F::host_bridge(0x8086, 0x29c0))
            .unwrap();
        let rp = b.add(None, "0000:00:01.0", F::root_port()).unwrap();
        b.add(
            Some(rp),
            "0000:01:00.0",
            F::endpoint(0x10de, 0x2330, 0x030200)
                .driver("vfio-pci")
                .iommu_group(12),
        )
        .unwrap();
        b.add(
            Some(rp),
            "0000:01:00.1",
            F::nvme().p2pmem(16 << 20).driver("vfio-pci"),
        )
        .unwrap();
        let mut facts = HostFacts::unknown("test");
        facts.kernel_release = Some(release.to_owned());
        b.host_facts(&facts).unwrap();
        PciTree::read(&SysfsRoot::new(dir.path())).unwrap()
    }

    #[test]
    fn an_old_stable_release_is_told_the_fix_it_lacks() {
        let t = tree("6.12.40");
        let notes = host_notes(&t);
        assert_eq!(notes.fixes.len(), 1);
        assert!(
            notes.pool_less.is_empty(),
            "6.12 has no pool-less providers"
        );
        let text = host_notes_text(&notes, Some("6.12.40"));
        assert!(
            text.starts_with("kernel 6.12.40 lacks commit 6220694c52a5 \"PCI/P2PDMA: Release per-CPU pgmap ref when vm_insert_page() fails\""),
            "{text}"
        );
        assert!(text.contains("hangs forever"), "{text}");
        assert!(text.contains("(mainline 7.0, 6.12.75, 6.18.14)"), "{text}");
        let json = serde_json::to_value(&notes).unwrap();
        assert_eq!(json["fixes"][0]["status"]["status"], "lacks");
        assert_eq!(json["fixes"][0]["fix"]["commit"], "6220694c52a5");
    }

    #[test]
    fn a_vfio_bound_function_without_a_pool_is_a_possible_pool_less_provider_on_7_2() {
        let t = tree("7.2.13");
        let notes = host_notes(&t);
        assert!(notes.fixes.is_empty());
        let bdfs: Vec<String> = notes.pool_less.iter().map(|p| p.bdf.to_string()).collect();
        // The function with a pool is an ordinary provider, not a pool-less one.
        assert_eq!(bdfs, ["0000:01:00.0"]);
        let text = host_notes_text(&notes, Some("7.2.13"));
        assert_eq!(
            text,
            "0000:01:00.0 (IOMMU group 12) is bound to vfio-pci: a possible P2PDMA provider without a pool (dma-buf export of its BARs); it has no p2pmem/ directory, so p2pdma cannot allocate from it\n"
        );
        let unknown = host_notes(&tree("6.19.2"));
        assert_eq!(unknown.pool_less.len(), 1);
        assert!(host_notes_text(&unknown, Some("6.19.2")).contains("not verified"));
        assert!(host_notes(&tree("6.12.117")).is_empty());
        // A kernel without CONFIG_PCI_P2PDMA has neither the bug nor the providers.
        let mut without = tree("6.12.40");
        without.host.p2pdma_config = KernelP2pdma::No;
        assert!(host_notes(&without).is_empty());
    }
}
