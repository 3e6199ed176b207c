//! The kernel's rules on synthetic trees written by [`SysfsBuilder`] and read back by
//! the real reader.

use super::*;
use crate::host::HostFacts;
use crate::pci::{ACS_CR, ACS_EC, ACS_RR};
use crate::sysfs::builder::{FunctionSpec as F, SysfsBuilder};
use crate::sysfs::SysfsRoot;

fn host(vendor: &str, family: u32) -> HostFacts {
    HostFacts {
        cpu_vendor: Some(vendor.to_owned()),
        cpu_family: Some(family),
        kernel_release: Some("6.12.0".to_owned()),
        p2pdma_config: KernelP2pdma::Yes,
        p2pdma_config_source: "test".to_owned(),
        origin: "test".to_owned(),
    }
}

fn intel() -> HostFacts {
    host("GenuineIntel", 6)
}

fn bdf(s: &str) -> Bdf {
    s.parse().unwrap()
}

/// Options for the standard tree.
#[derive(Default, Clone)]
struct Opts {
    host_bridge: Option<(u16, u16)>,
    acs: Vec<(&'static str, u16)>,
    facts: Option<HostFacts>,
}

/// q35-like tree:
/// ```text
/// 00:00.0 host bridge (8086:29c0 unless overridden)
/// 00:01.0 root port ─ 01:00.0 switch up ─┬ 02:00.0 down ─ 03:00.0 nvme [p2pmem]
///                                        └ 02:01.0 down ─ 04:00.0 nvme [p2pmem]
/// 00:02.0 root port ─ 05:00.0 nvme [p2pmem]
/// 00:03.0 root port ─ 06:00.0 nvme [p2pmem], 06:00.1 nvme (multi-function)
/// 00:04.0 nvme on the root bus [p2pmem]
/// ```
fn standard(opts: Opts) -> (tempfile::TempDir, PciTree) {
    let dir = tempfile::tempdir().unwrap();
    let mut b = SysfsBuilder::new(dir.path()).unwrap();
    let acs = |name: &str, spec: F| match opts.acs.iter().find(|(n, _)| *n == name) {
        Some((_, ctrl)) => spec.acs(*ctrl),
        None => spec.acs(0),
    };
    let (hv, hd) = opts.host_bridge.unwrap_or((0x8086, 0x29c0));
    b.add(None, "0000:00:00.0", F::host_bridge(hv, hd)).unwrap();
    let rp1 = b
        .add(None, "0000:00:01.0", acs("00:01.0", F::root_port()))
        .unwrap();
    let up = b
        .add(
            Some(rp1),
            "0000:01:00.0",
            acs("01:00.0", F::switch_upstream()).link(8.0, 8),
        )
        .unwrap();
    let dn0 = b
        .add(
            Some(up),
            "0000:02:00.0",
            acs("02:00.0", F::switch_downstream()),
        )
        .unwrap();
    let dn1 = b
        .add(
            Some(up),
            "0000:02:01.0",
            acs("02:01.0", F::switch_downstream()),
        )
        .unwrap();
    b.add(
        Some(dn0),
        "0000:03:00.0",
        F::nvme().p2pmem(16 << 20).link(8.0, 4),
    )
    .unwrap();
    b.add(
        Some(dn1),
        "0000:04:00.0",
        F::nvme().p2pmem(16 << 20).link(2.5, 1),
    )
    .unwrap();
    let rp2 = b
        .add(None, "0000:00:02.0", acs("00:02.0", F::root_port()))
        .unwrap();
    b.add(
        Some(rp2),
        "0000:05:00.0",
        F::nvme().p2pmem(16 << 20).link(8.0, 4),
    )
    .unwrap();
    let rp3 = b.add(None, "0000:00:03.0", F::root_port()).unwrap();
    b.add(Some(rp3), "0000:06:00.0", F::nvme().p2pmem(16 << 20))
        .unwrap();
    b.add(Some(rp3), "0000:06:00.1", F::nvme()).unwrap();
    b.add(None, "0000:00:04.0", F::nvme().p2pmem(16 << 20))
        .unwrap();
    b.host_facts(&opts.facts.unwrap_or_else(intel)).unwrap();
    let tree = PciTree::read(&SysfsRoot::new(dir.path())).unwrap();
    (dir, tree)
}

fn v(tree: &PciTree, p: &str, c: &str) -> Verdict {
    verdict(tree, bdf(p), bdf(c))
}

fn bdfs(list: &[&str]) -> Vec<Bdf> {
    list.iter().map(|s| bdf(s)).collect()
}

#[test]
fn two_devices_under_one_switch_are_direct_at_distance_4() {
    let (_d, tree) = standard(Opts::default());
    let v = v(&tree, "03:00.0", "04:00.0");
    assert_eq!(v.map_type, MapType::BusAddr);
    assert_eq!(v.distance, Some(4));
    assert!(v.is_direct());
    assert_eq!(v.common_upstream, Some(bdf("01:00.0")));
    assert_eq!(
        v.path,
        bdfs(&["03:00.0", "02:00.0", "01:00.0", "02:01.0", "04:00.0"])
    );
    assert!(v.reasons.is_empty(), "{:?}", v.reasons);
}

#[test]
fn same_function_is_distance_0() {
    let (_d, tree) = standard(Opts::default());
    let v = v(&tree, "03:00.0", "03:00.0");
    assert_eq!((v.map_type, v.distance), (MapType::BusAddr, Some(0)));
    assert_eq!(v.path, bdfs(&["03:00.0"]));
    assert_eq!(v.reasons, vec![Reason::SameFunction]);
    assert_eq!(v.bottleneck, None);
}

#[test]
fn functions_of_one_multifunction_device_are_distance_2() {
    let (_d, tree) = standard(Opts::default());
    let v = v(&tree, "06:00.0", "06:00.1");
    assert_eq!((v.map_type, v.distance), (MapType::BusAddr, Some(2)));
    assert_eq!(v.common_upstream, Some(bdf("00:03.0")));
}

#[test]
fn acs_redirect_on_the_provider_side_goes_through_the_host_bridge() {
    let (_d, tree) = standard(Opts {
        acs: vec![("02:00.0", ACS_RR)],
        ..Opts::default()
    });
    let v = v(&tree, "03:00.0", "04:00.0");
    assert_eq!(v.map_type, MapType::NotSupported);
    assert_eq!(v.distance, Some(4));
    assert!(v.reasons.contains(&Reason::AcsRedirect {
        functions: bdfs(&["02:00.0"])
    }));
    let text = v
        .reasons
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        text.contains("pci=disable_acs_redir=0000:02:00.0"),
        "{text}"
    );
}

#[test]
fn acs_redirect_on_the_common_bridge_counts() {
    let (_d, tree) = standard(Opts {
        acs: vec![("01:00.0", ACS_EC)],
        ..Opts::default()
    });
    let v = v(&tree, "03:00.0", "04:00.0");
    assert_eq!(v.map_type, MapType::NotSupported);
    assert!(v.reasons.contains(&Reason::AcsRedirect {
        functions: bdfs(&["01:00.0"])
    }));
}

#[test]
fn acs_redirect_on_the_client_side_counts() {
    let (_d, tree) = standard(Opts {
        acs: vec![("02:01.0", ACS_CR)],
        ..Opts::default()
    });
    let v = v(&tree, "03:00.0", "04:00.0");
    assert_eq!(v.map_type, MapType::NotSupported);
    assert!(v.reasons.contains(&Reason::AcsRedirect {
        functions: bdfs(&["02:01.0"])
    }));
}

#[test]
fn acs_redirect_above_the_common_bridge_does_not_count() {
    let (_d, tree) = standard(Opts {
        acs: vec![("00:01.0", ACS_RR | ACS_CR | ACS_EC)],
        ..Opts::default()
    });
    let v = v(&tree, "03:00.0", "04:00.0");
    assert_eq!(v.map_type, MapType::BusAddr);
    // The reverse direction walks up from 04:00.0 and stops at the same bridge.
    assert_eq!(v_rev(&tree).map_type, MapType::BusAddr);
}

fn v_rev(tree: &PciTree) -> Verdict {
    v(tree, "04:00.0", "03:00.0")
}

#[test]
fn acs_list_is_in_the_kernels_order_provider_side_then_client_side() {
    let (_d, tree) = standard(Opts {
        acs: vec![
            ("02:00.0", ACS_RR),
            ("01:00.0", ACS_RR),
            ("02:01.0", ACS_RR),
        ],
        host_bridge: Some((0x8086, 0x2030)),
        ..Opts::default()
    });
    let v = v(&tree, "03:00.0", "04:00.0");
    assert_eq!(v.map_type, MapType::ThruHostBridge);
    let acs = v
        .reasons
        .iter()
        .find(|r| matches!(r, Reason::AcsRedirect { .. }))
        .unwrap();
    assert!(
        acs.to_string()
            .contains("pci=disable_acs_redir=0000:02:00.0;0000:01:00.0;0000:02:01.0"),
        "{acs}"
    );
    let rev = v_rev(&tree);
    assert!(rev.reasons.contains(&Reason::AcsRedirect {
        functions: bdfs(&["02:01.0", "01:00.0", "02:00.0"])
    }));
}

#[test]
fn no_common_bridge_on_a_non_whitelisted_intel_host_is_refused() {
    let (_d, tree) = standard(Opts::default());
    let v = v(&tree, "03:00.0", "05:00.0");
    assert_eq!(v.map_type, MapType::NotSupported);
    // Four functions up from the provider plus two from the client, as the kernel counts.
    assert_eq!(v.distance, Some(6));
    assert_eq!(v.common_upstream, None);
    assert_eq!(
        v.path,
        bdfs(&["03:00.0", "02:00.0", "01:00.0", "00:01.0", "00:02.0", "05:00.0"])
    );
    assert!(v.reasons.contains(&Reason::NoCommonUpstreamBridge));
    let refusal = v.reasons.iter().find(|r| r.blocks()).unwrap().to_string();
    assert!(refusal.contains("8086:29c0"), "{refusal}");
    assert!(
        refusal.contains("put both devices below one PCIe switch"),
        "{refusal}"
    );
}

#[test]
fn root_bus_devices_have_no_upstream_bridge() {
    let (_d, tree) = standard(Opts::default());
    let v = v(&tree, "00:04.0", "06:00.0");
    assert_eq!((v.map_type, v.distance), (MapType::NotSupported, Some(3)));
    let amd = standard(Opts {
        facts: Some(host("AuthenticAMD", 0x17)),
        ..Opts::default()
    });
    let v = verdict(&amd.1, bdf("00:04.0"), bdf("06:00.0"));
    assert_eq!((v.map_type, v.distance), (MapType::ThruHostBridge, Some(3)));
}

#[test]
fn whitelisted_host_bridges_allow_the_host_bridge_path() {
    for id in [
        0x2030, 0x2031, 0x2032, 0x2033, 0x2020, 0x09a2, 0x3c00, 0x3c01, 0x2f00, 0x2f01,
    ] {
        let (_d, tree) = standard(Opts {
            host_bridge: Some((0x8086, id)),
            ..Opts::default()
        });
        let v = v(&tree, "03:00.0", "05:00.0");
        assert_eq!(v.map_type, MapType::ThruHostBridge, "8086:{id:04x}");
        assert!(v
            .reasons
            .iter()
            .any(|r| matches!(r, Reason::HostBridgeWhitelisted { .. })));
    }
    for (vendor, id) in [(0x8086, 0x29c0), (0x1022, 0x1480), (0x8086, 0x2034)] {
        let (_d, tree) = standard(Opts {
            host_bridge: Some((vendor, id)),
            ..Opts::default()
        });
        assert_eq!(
            v(&tree, "03:00.0", "05:00.0").map_type,
            MapType::NotSupported,
            "{vendor:04x}:{id:04x}"
        );
    }
}

/// Two root buses, each with its own host bridge of the given device ID.
fn two_host_bridges(id: u16) -> (tempfile::TempDir, PciTree) {
    let dir = tempfile::tempdir().unwrap();
    let mut b = SysfsBuilder::new(dir.path()).unwrap();
    b.add(None, "0000:00:00.0", F::host_bridge(0x8086, id))
        .unwrap();
    let rp = b.add(None, "0000:00:01.0", F::root_port()).unwrap();
    b.add(Some(rp), "0000:01:00.0", F::nvme().p2pmem(1 << 20))
        .unwrap();
    b.add(None, "0000:80:00.0", F::host_bridge(0x8086, id))
        .unwrap();
    let rp = b.add(None, "0000:80:01.0", F::root_port()).unwrap();
    b.add(Some(rp), "0000:81:00.0", F::nvme().p2pmem(1 << 20))
        .unwrap();
    b.host_facts(&intel()).unwrap();
    let tree = PciTree::read(&SysfsRoot::new(dir.path())).unwrap();
    (dir, tree)
}

#[test]
fn same_host_bridge_entries_refuse_across_host_bridges() {
    let (_d, tree) = two_host_bridges(0x3c00);
    let v = v(&tree, "01:00.0", "81:00.0");
    assert_eq!(v.map_type, MapType::NotSupported);
    assert_eq!(
        tree.function(bdf("81:00.0")).unwrap().root_bus,
        "pci0000:80"
    );
    let (_d, tree) = two_host_bridges(0x2030);
    assert_eq!(
        verdict(&tree, bdf("01:00.0"), bdf("81:00.0")).map_type,
        MapType::ThruHostBridge
    );
}

#[test]
fn amd_zen_allows_the_host_bridge_path_and_older_amd_and_intel_do_not() {
    for (facts, expected) in [
        (host("AuthenticAMD", 0x17), MapType::ThruHostBridge),
        (host("AuthenticAMD", 0x19), MapType::ThruHostBridge),
        (host("AuthenticAMD", 0x16), MapType::NotSupported),
        (host("GenuineIntel", 6), MapType::NotSupported),
        (host("HygonGenuine", 0x18), MapType::NotSupported),
    ] {
        let (_d, tree) = standard(Opts {
            facts: Some(facts.clone()),
            acs: vec![("02:00.0", ACS_RR)],
            ..Opts::default()
        });
        assert_eq!(
            v(&tree, "03:00.0", "05:00.0").map_type,
            expected,
            "{facts:?}"
        );
        assert_eq!(
            v(&tree, "03:00.0", "04:00.0").map_type,
            expected,
            "{facts:?}"
        );
    }
}

#[test]
fn virtual_functions_hang_off_their_pfs_bridge() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = SysfsBuilder::new(dir.path()).unwrap();
    b.add(None, "0000:00:00.0", F::host_bridge(0x8086, 0x29c0))
        .unwrap();
    let rp = b.add(None, "0000:00:01.0", F::root_port()).unwrap();
    let pf = b
        .add(
            Some(rp),
            "0000:01:00.0",
            F::nvme().p2pmem(1 << 20).link(16.0, 4),
        )
        .unwrap();
    b.add(Some(rp), "0000:01:00.1", F::nvme().virtfn_of(pf))
        .unwrap();
    b.add(Some(rp), "0000:01:00.2", F::nvme().virtfn_of(pf))
        .unwrap();
    b.host_facts(&intel()).unwrap();
    let tree = PciTree::read(&SysfsRoot::new(dir.path())).unwrap();
    let vf = tree.function(bdf("01:00.1")).unwrap();
    assert_eq!((vf.physfn, vf.upstream), (Some(pf), Some(rp)));
    let v1 = v(&tree, "01:00.0", "01:00.1");
    assert_eq!((v1.map_type, v1.distance), (MapType::BusAddr, Some(2)));
    assert_eq!(v1.path, bdfs(&["01:00.0", "00:01.0", "01:00.1"]));
    // A VF's link is its PF's.
    assert_eq!(v1.bottleneck.unwrap().link.speed_gts, 16.0);
    let v2 = v(&tree, "01:00.0", "01:00.2");
    assert_eq!(v2.distance, Some(2));
}

#[test]
fn cascaded_switches_count_every_port() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = SysfsBuilder::new(dir.path()).unwrap();
    b.add(None, "0000:00:00.0", F::host_bridge(0x8086, 0x29c0))
        .unwrap();
    let rp = b.add(None, "0000:00:01.0", F::root_port()).unwrap();
    let up1 = b
        .add(Some(rp), "0000:01:00.0", F::switch_upstream())
        .unwrap();
    let dn1a = b
        .add(Some(up1), "0000:02:00.0", F::switch_downstream())
        .unwrap();
    let dn1b = b
        .add(Some(up1), "0000:02:01.0", F::switch_downstream())
        .unwrap();
    let up2 = b
        .add(Some(dn1a), "0000:03:00.0", F::switch_upstream())
        .unwrap();
    let dn2 = b
        .add(Some(up2), "0000:04:00.0", F::switch_downstream())
        .unwrap();
    b.add(Some(dn2), "0000:05:00.0", F::nvme().p2pmem(1 << 20))
        .unwrap();
    b.add(Some(dn1b), "0000:06:00.0", F::nvme().p2pmem(1 << 20))
        .unwrap();
    b.host_facts(&intel()).unwrap();
    let tree = PciTree::read(&SysfsRoot::new(dir.path())).unwrap();
    let v = v(&tree, "05:00.0", "06:00.0");
    assert_eq!((v.map_type, v.distance), (MapType::BusAddr, Some(6)));
    assert_eq!(v.common_upstream, Some(up1));
    assert_eq!(v.path.len(), 7);
}

#[test]
fn provider_without_p2pmem_or_kernel_without_p2pdma_is_refused() {
    let (_d, tree) = standard(Opts::default());
    let v = v(&tree, "06:00.1", "06:00.0");
    assert_eq!(v.map_type, MapType::NotSupported);
    // The topology alone would allow it: the refusal comes from the missing pool.
    assert_eq!(
        (v.topology_map_type, v.distance),
        (MapType::BusAddr, Some(2))
    );
    assert!(v.reasons.contains(&Reason::ProviderHasNoP2pmem {
        bdf: bdf("06:00.1")
    }));
    let mut facts = intel();
    facts.p2pdma_config = KernelP2pdma::No;
    let (_d, tree) = standard(Opts {
        facts: Some(facts),
        ..Opts::default()
    });
    let v2 = verdict(&tree, bdf("03:00.0"), bdf("04:00.0"));
    assert!(!v2.is_p2p());
    assert!(v2
        .reasons
        .iter()
        .any(|r| matches!(r, Reason::KernelWithoutP2pdma { .. })));
}

#[test]
fn unpublished_provider_still_serves_userspace_but_is_not_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = SysfsBuilder::new(dir.path()).unwrap();
    b.add(None, "0000:00:00.0", F::host_bridge(0x8086, 0x29c0))
        .unwrap();
    let rp = b.add(None, "0000:00:01.0", F::root_port()).unwrap();
    b.add(
        Some(rp),
        "0000:01:00.0",
        F::nvme().p2pmem_full(1 << 20, 0, false),
    )
    .unwrap();
    b.add(Some(rp), "0000:01:00.1", F::nvme()).unwrap();
    b.host_facts(&intel()).unwrap();
    let tree = PciTree::read(&SysfsRoot::new(dir.path())).unwrap();
    let v = v(&tree, "01:00.0", "01:00.1");
    assert!(v.is_p2p());
    assert!(v.reasons.contains(&Reason::ProviderNotPublished {
        bdf: bdf("01:00.0")
    }));
    let err = choose_provider(&tree, &[bdf("01:00.1")]).unwrap_err();
    assert!(
        err.to_string().contains("0000:01:00.0 not published"),
        "{err}"
    );
}

#[test]
fn unreadable_acs_makes_the_verdict_uncertain() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = SysfsBuilder::new(dir.path()).unwrap();
    b.add(None, "0000:00:00.0", F::host_bridge(0x8086, 0x29c0))
        .unwrap();
    let rp = b
        .add(
            None,
            "0000:00:01.0",
            F::root_port().acs(ACS_RR).config_len(64),
        )
        .unwrap();
    b.add(
        Some(rp),
        "0000:01:00.0",
        F::nvme().p2pmem(1 << 20).config_len(64),
    )
    .unwrap();
    b.add(Some(rp), "0000:01:00.1", F::nvme().config_len(64))
        .unwrap();
    b.host_facts(&intel()).unwrap();
    let tree = PciTree::read(&SysfsRoot::new(dir.path())).unwrap();
    let v = v(&tree, "01:00.0", "01:00.1");
    assert_eq!(v.map_type, MapType::BusAddr);
    assert!(v.is_uncertain());
    assert!(v.reasons.contains(&Reason::AcsUnknown {
        functions: bdfs(&["01:00.0", "00:01.0", "01:00.1"])
    }));
}

#[test]
fn missing_host_facts_are_reported_not_guessed_silently() {
    let (dir, _) = standard(Opts::default());
    std::fs::remove_file(dir.path().join(crate::host::HOST_FACTS_FILE)).unwrap();
    let tree = PciTree::read(&SysfsRoot::new(dir.path())).unwrap();
    let v = v(&tree, "03:00.0", "05:00.0");
    assert_eq!(v.map_type, MapType::NotSupported);
    assert!(v.reasons.contains(&Reason::CpuUnknown));
    assert!(v.is_uncertain());
}

#[test]
fn bottleneck_is_the_slowest_link_on_the_path() {
    let (_d, tree) = standard(Opts::default());
    let v = v(&tree, "03:00.0", "04:00.0");
    let b = v.bottleneck.unwrap();
    assert_eq!(b.below, bdf("04:00.0"));
    assert_eq!((b.link.speed_gts, b.link.width), (2.5, 1));
    assert!((b.bandwidth_gbps - 0.25).abs() < 1e-9);
    // The common bridge's own upstream link (8 GT/s x8) is not on the path.
    let v = v_single(&tree);
    assert_eq!(v.bottleneck.unwrap().below, bdf("03:00.0"));
}

fn v_single(tree: &PciTree) -> Verdict {
    // 03:00.0 to the multi-function device crosses 03's 8 GT/s x4 link and the switch's
    // 8 GT/s x8 link; 06:00.x have no link facts.
    v(tree, "03:00.0", "06:00.0")
}

#[test]
fn unknown_functions_are_named() {
    let (_d, tree) = standard(Opts::default());
    let v = v(&tree, "03:00.0", "09:00.0");
    assert!(!v.is_p2p());
    assert_eq!(
        v.reasons,
        vec![Reason::UnknownFunction {
            bdf: bdf("09:00.0")
        }]
    );
    assert!(matches!(
        choose_provider(&tree, &[bdf("09:00.0")]),
        Err(TopologyError::UnknownFunction { .. })
    ));
    assert!(matches!(
        choose_provider(&tree, &[]),
        Err(TopologyError::NoClients)
    ));
}

#[test]
fn provider_choice_prefers_a_clients_own_memory_then_the_closest() {
    let (_d, tree) = standard(Opts::default());
    let c = choose_provider(&tree, &[bdf("03:00.0"), bdf("04:00.0")]).unwrap();
    // 03:00.0 and 04:00.0 both give total 4; the lowest address wins the tie.
    assert_eq!((c.provider, c.distance), (bdf("03:00.0"), 4));
    assert_eq!(c.tied, bdfs(&["03:00.0", "04:00.0"]));
    assert!(
        c.explanation.contains("lowest address"),
        "{}",
        c.explanation
    );
    let c = choose_provider(&tree, &[bdf("04:00.0")]).unwrap();
    assert_eq!((c.provider, c.distance), (bdf("04:00.0"), 0));
    // 06:00.1 has no memory; its sibling at distance 2 is the closest provider.
    let c = choose_provider(&tree, &[bdf("06:00.1")]).unwrap();
    assert_eq!((c.provider, c.distance), (bdf("06:00.0"), 2));
    // Nobody can serve clients on both sides of the non-whitelisted host bridge.
    let e = choose_provider(&tree, &[bdf("03:00.0"), bdf("05:00.0")]).unwrap_err();
    assert!(e.to_string().contains("unreachable from"), "{e}");
}

#[test]
fn matrix_labels_follow_the_legend() {
    let (_d, tree) = standard(Opts {
        acs: vec![("02:01.0", ACS_RR)],
        facts: Some(host("AuthenticAMD", 0x19)),
        ..Opts::default()
    });
    let t = Topology::new(&tree);
    let rows = bdfs(&["03:00.0", "06:00.0"]);
    let cols = bdfs(&["03:00.0", "04:00.0", "05:00.0", "06:00.1"]);
    let labels: Vec<Vec<String>> = t
        .matrix(&rows, &cols)
        .into_iter()
        .map(|r| r.into_iter().map(|c| c.unwrap().label()).collect())
        .collect();
    assert_eq!(labels[0], ["X", "ACS4", "HB6", "HB6"]);
    assert_eq!(labels[1], ["HB6", "HB6", "HB4", "BUS2"]);
}

#[test]
fn the_matrix_walk_agrees_with_the_full_verdict_on_every_pair() {
    let (_d, tree) = standard(Opts {
        acs: vec![("02:00.0", ACS_RR), ("00:02.0", ACS_EC)],
        ..Opts::default()
    });
    let t = Topology::new(&tree);
    let all: Vec<Bdf> = tree.functions.keys().copied().collect();
    for a in &all {
        for b in &all {
            let (fast, _) = t.pair_map(t.index[a], t.index[b]);
            assert_eq!(fast, t.pair_map_fast(t.index[a], t.index[b]), "{a} {b}");
        }
    }
}

#[test]
fn acs_on_the_endpoints_themselves_counts_as_the_kernel_checks_every_function() {
    // pci_bridge_has_acs_redir() looks at any function with an ACS capability, endpoints
    // included: the provider (even when it is also the client) and the client below the
    // common bridge.
    let dir = tempfile::tempdir().unwrap();
    let mut b = SysfsBuilder::new(dir.path()).unwrap();
    b.add(None, "0000:00:00.0", F::host_bridge(0x8086, 0x29c0))
        .unwrap();
    let rp = b.add(None, "0000:00:01.0", F::root_port().acs(0)).unwrap();
    b.add(
        Some(rp),
        "0000:01:00.0",
        F::nvme().p2pmem(1 << 20).acs(ACS_EC),
    )
    .unwrap();
    b.add(
        Some(rp),
        "0000:01:00.1",
        F::nvme().p2pmem(1 << 20).acs(ACS_RR),
    )
    .unwrap();
    b.host_facts(&intel()).unwrap();
    let tree = PciTree::read(&SysfsRoot::new(dir.path())).unwrap();
    let same = v(&tree, "01:00.0", "01:00.0");
    assert_eq!(
        (same.map_type, same.distance),
        (MapType::NotSupported, Some(0))
    );
    assert!(same.reasons.contains(&Reason::AcsRedirect {
        functions: bdfs(&["01:00.0"])
    }));
    let pair = v(&tree, "01:00.0", "01:00.1");
    assert!(pair.reasons.contains(&Reason::AcsRedirect {
        functions: bdfs(&["01:00.0", "01:00.1"])
    }));
}

fn with_release(release: &str) -> HostFacts {
    HostFacts {
        kernel_release: Some(release.to_owned()),
        ..intel()
    }
}

#[test]
fn a_host_bridge_on_7_2s_whitelist_but_not_6_12s_is_judged_by_the_release() {
    // Intel DSA (SPR) and any Google device entered the whitelist after 6.12.
    for ids in [(0x8086, 0x0b25), (0x8086, 0x4948), (0x1ae0, 0x0123)] {
        let verdict_on = |release: &str| {
            let (_d, tree) = standard(Opts {
                host_bridge: Some(ids),
                facts: Some(with_release(release)),
                ..Opts::default()
            });
            v(&tree, "03:00.0", "05:00.0")
        };
        let old = verdict_on("6.12.117-p2pdma");
        let new = verdict_on("7.2.13+deb14-amd64");
        assert_eq!(old.map_type, MapType::NotSupported, "{ids:04x?} on 6.12");
        assert_eq!(new.map_type, MapType::ThruHostBridge, "{ids:04x?} on 7.2");
        assert!(old.rules.starts_with("Linux 6.12 rules"), "{}", old.rules);
        assert!(new.rules.starts_with("Linux 7.2 rules"), "{}", new.rules);
    }
}

#[test]
fn same_host_bridge_entries_are_honoured_by_every_release() {
    for release in ["6.12.117", "7.2.13"] {
        let (_d, mut tree) = two_host_bridges(0x3c00);
        tree.host = with_release(release);
        assert_eq!(
            verdict(&tree, bdf("01:00.0"), bdf("81:00.0")).map_type,
            MapType::NotSupported,
            "{release}"
        );
    }
}

#[test]
fn asking_for_another_release_changes_only_the_rules() {
    let (_d, tree) = standard(Opts {
        host_bridge: Some((0x8086, 0x0cfe)),
        facts: Some(with_release("6.12.117")),
        ..Opts::default()
    });
    let live = Topology::new(&tree);
    let what_if = Topology::with_rules(&tree, RuleChoice::for_release(Some("7.2.13")));
    let (p, c) = (bdf("03:00.0"), bdf("05:00.0"));
    assert_eq!(live.verdict(p, c).map_type, MapType::NotSupported);
    assert_eq!(what_if.verdict(p, c).map_type, MapType::ThruHostBridge);
    // A direct pair does not depend on the whitelist.
    let (p, c) = (bdf("03:00.0"), bdf("04:00.0"));
    assert_eq!(live.verdict(p, c).map_type, what_if.verdict(p, c).map_type);
}
