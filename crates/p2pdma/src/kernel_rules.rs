//! The P2PDMA rules of each kernel release p2pdma has read, and which one a release gets.
//!
//! The kernel's P2P decision (`calc_map_type_and_dist()`) is the same walk in every release
//! since 6.2; what changes between releases is the host-bridge whitelist
//! (`pci_p2pdma_whitelist[]`), which block queues advertise P2PDMA (the NVMe multipath
//! head disk from 7.2) and how a refused transfer fails in userspace:
//! - up to 6.16 the block layer's pin fails and the I/O returns `EREMOTEIO`;
//! - from 6.17 NVMe maps requests with `blk_rq_dma_map()`, a refused P2P mapping is
//!   `BLK_STS_INVAL`, and the I/O returns `EINVAL`, which has other causes too.
//!
//! Each [`KernelRules`] mirrors one release's `drivers/pci/p2pdma.c` as read from Debian's
//! `linux-source` package of that release; what an errno means on a release is
//! [`crate::refusal`]'s to say. A release between two known ones gets the older
//! one's rules, a newer release the newest, an unknown release the newest: every
//! [`RuleChoice`] says which it used and why, so an explanation never claims more than was
//! read.
//!
//! # References
//! - Linux 6.12.117 and 7.2.13 `drivers/pci/p2pdma.c` (`pci_p2pdma_whitelist[]`,
//!   `__host_bridge_whitelist()`), `include/linux/pci_ids.h`
//! - `drivers/nvme/host/pci.c` (`blk_rq_dma_map_iter_start`, Linux >= 6.17)
//! - 6.12 and 7.2 `drivers/nvme/host/multipath.c` (`nvme_mpath_alloc_disk()`: the
//!   multipath head's queue features), 7.2 `block/blk-settings.c` (`blk_stack_limits()`)

use std::fmt;

use serde::Serialize;

/// A kernel release as `major.minor.patch` (`6.12.117-p2pdma` is 6.12.117).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct KernelVersion {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Patch (stable) number, 0 when absent.
    pub patch: u32,
}

impl KernelVersion {
    /// A version from its numbers.
    pub const fn new(major: u32, minor: u32, patch: u32) -> KernelVersion {
        KernelVersion {
            major,
            minor,
            patch,
        }
    }

    /// Reads the leading `X.Y[.Z]` of a release string (`uname -r`); `None` if there is
    /// none.
    pub fn parse(release: &str) -> Option<KernelVersion> {
        let numeric: String = release
            .trim()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut parts = numeric.split('.').filter(|p| !p.is_empty());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(KernelVersion::new(major, minor, patch))
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// One `pci_p2pdma_whitelist[]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WhitelistEntry {
    /// PCI vendor ID of the host bridge device.
    pub vendor: u16,
    /// PCI device ID; `None` is `PCI_ANY_ID` (any device of the vendor).
    pub device: Option<u16>,
    /// `REQ_SAME_HOST_BRIDGE`: both devices must sit under this one host bridge.
    pub same_host_bridge: bool,
}

const INTEL: u16 = 0x8086;
const GOOGLE: u16 = 0x1ae0;

const fn intel(device: u16, same_host_bridge: bool) -> WhitelistEntry {
    WhitelistEntry {
        vendor: INTEL,
        device: Some(device),
        same_host_bridge,
    }
}

/// Linux 6.12 (read from 6.12.117): Xeon E5/E7 host bridges need both devices under the
/// same bridge; Skylake-E root ports do not.
const WHITELIST_6_12: &[WhitelistEntry] = &[
    intel(0x3c00, true),
    intel(0x3c01, true),
    intel(0x2f00, true),
    intel(0x2f01, true),
    intel(0x2030, false),
    intel(0x2031, false),
    intel(0x2032, false),
    intel(0x2033, false),
    intel(0x2020, false),
    intel(0x09a2, false),
];

/// What Linux 7.2 (read from 7.2.13) adds to 6.12's table: Intel DSA, IAX/IAA and QAT
/// devices (`PCI_DEVICE_ID_INTEL_DSA_SPR0` 0x0b25, `IAX_SPR0` 0x0cfe, `DSA_GNRD` 0x11fb,
/// `DSA_DMR` 0x1212, `IAA_DMR` 0x1216, `QAT_4XXX` 0x4940, `QAT_401XX` 0x4942, `QAT_402XX`
/// 0x4944, `QAT_420XX` 0x4946, `QAT_6XXX` 0x4948) and every Google device.
const ADDED_IN_7_2: &[WhitelistEntry] = &[
    intel(0x0b25, false),
    intel(0x0cfe, false),
    intel(0x11fb, false),
    intel(0x1212, false),
    intel(0x1216, false),
    intel(0x4940, false),
    intel(0x4942, false),
    intel(0x4944, false),
    intel(0x4946, false),
    intel(0x4948, false),
    WhitelistEntry {
        vendor: GOOGLE,
        device: None,
        same_host_bridge: false,
    },
];

/// From this release a refused P2P mapping fails the I/O with `EINVAL`, not `EREMOTEIO`.
pub const EINVAL_REFUSAL_SINCE: KernelVersion = KernelVersion::new(6, 17, 0);
/// The first release with userspace P2PDMA (`p2pmem/allocate`).
pub const USERSPACE_P2PDMA_SINCE: KernelVersion = KernelVersion::new(6, 2, 0);

/// The P2PDMA rules of one kernel release.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct KernelRules {
    /// The release the rules were read from.
    pub version: KernelVersion,
    /// `pci_p2pdma_whitelist[]`, as the tables that make it up (a release's table is
    /// the previous one's plus what it added).
    pub whitelist: &'static [&'static [WhitelistEntry]],
    /// Whether the NVMe native-multipath head disk (`/dev/nvmeXnY` under
    /// `nvme-subsystem`) advertises P2PDMA: `nvme_mpath_alloc_disk()` in
    /// `drivers/nvme/host/multipath.c` sets `BLK_FEAT_PCI_P2PDMA` on it from Linux 7.2
    /// (not in 6.12), and `blk_stack_limits()` in `block/blk-settings.c` clears it again
    /// as soon as one path's queue lacks it (a fabrics path: only nvme-pci queues have it).
    pub multipath_head_p2pdma: bool,
}

/// Every rule set p2pdma knows, oldest first.
pub const KNOWN_RULES: &[KernelRules] = &[
    KernelRules {
        version: KernelVersion::new(6, 12, 117),
        whitelist: &[WHITELIST_6_12],
        // nvme_mpath_alloc_disk(): BLK_FEAT_IO_STAT | BLK_FEAT_NOWAIT | BLK_FEAT_POLL.
        multipath_head_p2pdma: false,
    },
    KernelRules {
        version: KernelVersion::new(7, 2, 13),
        whitelist: &[WHITELIST_6_12, ADDED_IN_7_2],
        // nvme_mpath_alloc_disk() adds BLK_FEAT_ATOMIC_WRITES | BLK_FEAT_PCI_P2PDMA
        // (upstream "nvme-multipath: enable PCI P2PDMA for multipath devices", merged for
        // 7.2 through the block tree's for-7.2/block branch), and blk_stack_limits() clears
        // the flag for a path without it ("block: clear BLK_FEAT_PCI_P2PDMA in
        // blk_stack_limits() for non-supporting devices", the same series).
        multipath_head_p2pdma: true,
    },
];

impl KernelRules {
    /// The newest rules p2pdma knows.
    pub fn newest() -> &'static KernelRules {
        KNOWN_RULES.last().expect("at least one rule set")
    }

    /// `Linux 7.2`.
    pub fn name(&self) -> String {
        format!("Linux {}.{}", self.version.major, self.version.minor)
    }

    /// `__host_bridge_whitelist()`'s table lookup for a host bridge device: `None` when it
    /// is not listed, else whether the entry requires both devices under the same bridge.
    pub fn whitelist_entry(&self, vendor: u16, device: u16) -> Option<bool> {
        self.whitelist
            .iter()
            .flat_map(|table| table.iter())
            .find(|e| e.vendor == vendor && e.device.is_none_or(|d| d == device))
            .map(|e| e.same_host_bridge)
    }
}

/// Why a release got the rules it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RulesBasis {
    /// The release's major.minor is one p2pdma read.
    Read,
    /// Between two known releases: the older one's rules; entries added in between are
    /// not known.
    OlderKnown,
    /// Newer than every release p2pdma read: the newest rules; later entries are not
    /// known.
    NewerThanKnown,
    /// Older than every release p2pdma read: the oldest rules, which may list host
    /// bridges the release does not.
    OlderThanKnown,
    /// The release is unknown (a snapshot without host facts) or unreadable.
    ReleaseUnknown,
}

/// The rules applied for one kernel release, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleChoice {
    /// The rules.
    pub rules: &'static KernelRules,
    /// The release they were chosen for, as given.
    pub release: Option<String>,
    /// Its parsed version.
    pub version: Option<KernelVersion>,
    /// Why these rules.
    pub basis: RulesBasis,
}

impl RuleChoice {
    /// The rules for `release` (`uname -r` of the live system or of a snapshot).
    pub fn for_release(release: Option<&str>) -> RuleChoice {
        let version = release.and_then(KernelVersion::parse);
        let same_series = |r: &KernelRules, v: KernelVersion| {
            (r.version.major, r.version.minor) == (v.major, v.minor)
        };
        let (rules, basis) = match version {
            None => (KernelRules::newest(), RulesBasis::ReleaseUnknown),
            Some(v) => match KNOWN_RULES.iter().find(|r| same_series(r, v)) {
                Some(r) => (r, RulesBasis::Read),
                None => match KNOWN_RULES.iter().rev().find(|r| r.version <= v) {
                    Some(r) if std::ptr::eq(r, KernelRules::newest()) => {
                        (r, RulesBasis::NewerThanKnown)
                    }
                    Some(r) => (r, RulesBasis::OlderKnown),
                    None => (&KNOWN_RULES[0], RulesBasis::OlderThanKnown),
                },
            },
        };
        RuleChoice {
            rules,
            release: release.map(str::to_owned),
            version,
            basis,
        }
    }
}

impl fmt::Display for RuleChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.rules.name();
        let release = self.release.as_deref().unwrap_or("unknown");
        match self.basis {
            RulesBasis::Read => write!(f, "{name} rules (kernel {release})"),
            RulesBasis::OlderKnown => write!(
                f,
                "{name} rules (kernel {release} lies between the releases p2pdma has read; whitelist entries added after {name} are not known)"
            ),
            RulesBasis::NewerThanKnown => write!(
                f,
                "{name} rules (kernel {release} is newer than any p2pdma has read; the newest known rules are used)"
            ),
            RulesBasis::OlderThanKnown => write!(
                f,
                "{name} rules (kernel {release} is older than any p2pdma has read; its whitelist may be shorter)"
            ),
            RulesBasis::ReleaseUnknown => write!(
                f,
                "{name} rules (kernel release unknown: the newest known rules are used; pass --kernel-release to choose)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_release_strings() {
        assert_eq!(
            KernelVersion::parse("6.12.117-p2pdma"),
            Some(KernelVersion::new(6, 12, 117))
        );
        assert_eq!(
            KernelVersion::parse("7.2.13+deb14-amd64"),
            Some(KernelVersion::new(7, 2, 13))
        );
        assert_eq!(
            KernelVersion::parse("7.2"),
            Some(KernelVersion::new(7, 2, 0))
        );
        assert_eq!(KernelVersion::parse("6"), None);
        assert_eq!(KernelVersion::parse("linux"), None);
    }

    #[test]
    fn each_release_gets_the_rules_of_its_series_or_the_nearest_older() {
        let pick = |r: &str| {
            let c = RuleChoice::for_release(Some(r));
            (c.rules.name(), c.basis)
        };
        assert_eq!(pick("6.12.5"), ("Linux 6.12".into(), RulesBasis::Read));
        assert_eq!(
            pick("7.2.13+deb14-amd64"),
            ("Linux 7.2".into(), RulesBasis::Read)
        );
        assert_eq!(
            pick("6.17.1"),
            ("Linux 6.12".into(), RulesBasis::OlderKnown)
        );
        assert_eq!(
            pick("8.0.0"),
            ("Linux 7.2".into(), RulesBasis::NewerThanKnown)
        );
        assert_eq!(
            pick("6.6.30"),
            ("Linux 6.12".into(), RulesBasis::OlderThanKnown)
        );
        let unknown = RuleChoice::for_release(None);
        assert_eq!(unknown.rules.name(), "Linux 7.2");
        assert_eq!(unknown.basis, RulesBasis::ReleaseUnknown);
        assert!(unknown.to_string().contains("--kernel-release"));
    }

    #[test]
    fn seven_two_whitelists_dsa_qat_and_google_where_six_twelve_does_not() {
        let old = &KNOWN_RULES[0];
        let new = KernelRules::newest();
        for device in [
            0x0b25, 0x0cfe, 0x11fb, 0x1212, 0x1216, 0x4940, 0x4942, 0x4944, 0x4946, 0x4948,
        ] {
            assert_eq!(old.whitelist_entry(INTEL, device), None, "{device:#06x}");
            assert_eq!(
                new.whitelist_entry(INTEL, device),
                Some(false),
                "{device:#06x}"
            );
        }
        // PCI_ANY_ID: any Google device.
        assert_eq!(old.whitelist_entry(GOOGLE, 0x0042), None);
        assert_eq!(new.whitelist_entry(GOOGLE, 0x0042), Some(false));
        // REQ_SAME_HOST_BRIDGE entries keep their flag in both.
        for rules in KNOWN_RULES {
            assert_eq!(rules.whitelist_entry(INTEL, 0x3c00), Some(true));
            assert_eq!(rules.whitelist_entry(INTEL, 0x2030), Some(false));
            // q35's host bridge (0x29c0) is on neither list.
            assert_eq!(rules.whitelist_entry(INTEL, 0x29c0), None);
        }
    }

    #[test]
    fn the_multipath_head_supports_p2pdma_from_seven_two_only() {
        let head = |r| RuleChoice::for_release(Some(r)).rules.multipath_head_p2pdma;
        assert!(!head("6.12.117-p2pdma"));
        // Between the two: 6.12's answer (the change landed for 7.2).
        assert!(!head("6.18.2"));
        assert!(head("7.2.13+deb14-amd64"));
        assert!(head("7.4.0"));
    }
}
