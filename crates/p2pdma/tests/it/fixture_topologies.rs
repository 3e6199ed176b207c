//! The topology rules on snapshots of every lab topology, checked against what the
//! lab's Linux 6.12 kernel did, without booting anything.
//!
//! Each `tests/fixtures/<topology>/` is a `p2pdma snapshot` taken inside the lab guest,
//! plus what the kernel answered there: `kernel-probe.jsonl` (one `p2pdma probe --json`
//! per provider and NVMe namespace: an O_DIRECT read into the provider's p2pmem) and
//! `kernel-dmesg.txt` (the kernel's P2PDMA log lines). Regenerate with the command in
//! `tests/fixtures/README.md`.

use std::path::{Path, PathBuf};

use p2pdma::pci::PciTree;
use p2pdma::resolve::resolve;
use p2pdma::sysfs::SysfsRoot;
use p2pdma::topology::{MapType, Reason, Topology};
use p2pdma::Bdf;
use serde_json::Value;

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("bus/pci/devices").is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn load(name: &str) -> (SysfsRoot, PciTree) {
    let root = SysfsRoot::new(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    );
    let tree = PciTree::read(&root).unwrap_or_else(|e| panic!("{name}: {e}"));
    (root, tree)
}

fn bdf(s: &str) -> Bdf {
    s.parse().unwrap()
}

fn nvme_by_serial(tree: &PciTree, serial: &str) -> Bdf {
    tree.iter()
        .find(|f| f.nvme.iter().any(|c| c.serial.as_deref() == Some(serial)))
        .unwrap_or_else(|| panic!("no controller with serial {serial}"))
        .bdf
}

#[test]
fn predictions_match_what_the_lab_kernel_did_for_every_recorded_pair() {
    let mut total = 0;
    let mut table = String::new();
    let mut disagreements = Vec::new();
    let all = fixtures();
    assert!(
        all.len() >= 9,
        "expected a fixture per lab topology, found {all:?}"
    );
    for dir in &all {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let (root, tree) = load(&name);
        let topo = Topology::new(&tree);
        let probes =
            std::fs::read_to_string(dir.join("kernel-probe.jsonl")).expect("kernel-probe.jsonl");
        for line in probes.lines().filter(|l| !l.trim().is_empty()) {
            let probe: Value = serde_json::from_str(line).expect("probe JSON");
            let provider = bdf(probe["provider"].as_str().unwrap());
            let client_path = probe["client"].as_str().unwrap();
            let kernel = probe["result"].as_str().unwrap();
            assert_ne!(kernel, "error", "{name}: the probe itself failed: {line}");
            let target = resolve(&root, client_path).unwrap();
            let verdict = topo.verdict(provider, target.bdf.unwrap());
            let predicted = verdict.is_p2p() && target.p2p_queue;
            let agrees = predicted == (kernel == "ok");
            table.push_str(&format!(
                "{name:<14} {provider} <- {client_path:<13} predicted {:<8} kernel {kernel:<11} {}\n",
                if predicted { "p2p" } else { "refused" },
                if agrees { "ok" } else { "DISAGREE" }
            ));
            if !agrees {
                disagreements.push(format!("{name}: {provider} <- {client_path}: {verdict:?}"));
            }
            total += 1;
        }
    }
    println!(
        "{table}{total} pairs, {} disagreements",
        disagreements.len()
    );
    assert!(total >= 50, "only {total} recorded pairs");
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

#[test]
fn acs_fix_is_the_value_the_kernel_printed() {
    let (_, tree) = load("acs");
    let f0 = nvme_by_serial(&tree, "mf0");
    let f1 = nvme_by_serial(&tree, "mf1");
    let v = Topology::new(&tree).verdict(f0, f1);
    assert_eq!((v.map_type, v.distance), (MapType::NotSupported, Some(2)));
    let dmesg = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/acs/kernel-dmesg.txt"),
    )
    .unwrap();
    let kernel_value = dmesg
        .lines()
        .find_map(|l| l.split("pci=disable_acs_redir=").nth(1))
        .expect("the kernel printed a disable_acs_redir value")
        .trim();
    let ours = v
        .reasons
        .iter()
        .find_map(|r| match r {
            Reason::AcsRedirect { functions } => Some(
                functions
                    .iter()
                    .map(Bdf::to_string)
                    .collect::<Vec<_>>()
                    .join(";"),
            ),
            _ => None,
        })
        .expect("an ACS reason");
    assert_eq!(ours, kernel_value);
}

#[test]
fn distances_of_the_lab_topologies() {
    let cases = [
        ("switch", "sw0", "sw1", MapType::BusAddr, 4),
        ("multifunction", "mf0", "mf1", MapType::BusAddr, 2),
        ("cascade", "cas-a0", "cas-a1", MapType::BusAddr, 4),
        ("cascade", "cas-a0", "cas-b0", MapType::BusAddr, 8),
        ("rootbus", "root0", "root1", MapType::NotSupported, 2),
        ("rootbus-amd", "root0", "root1", MapType::ThruHostBridge, 2),
        ("mixed", "sw0", "root0", MapType::NotSupported, 5),
        ("slow-link", "sw0", "fast0", MapType::NotSupported, 6),
        // ACS redirect on the root port above the common switch does not count.
        ("acs-above-switch", "sw0", "sw1", MapType::BusAddr, 4),
        ("acs-amd", "mf0", "mf1", MapType::ThruHostBridge, 2),
        ("acs-two-ports", "rpa", "rpb", MapType::NotSupported, 4),
    ];
    for (topology, a, b, map_type, distance) in cases {
        let (_, tree) = load(topology);
        let v = Topology::new(&tree).verdict(nvme_by_serial(&tree, a), nvme_by_serial(&tree, b));
        assert_eq!(
            (v.map_type, v.distance),
            (map_type, Some(distance)),
            "{topology} {a} -> {b}: {v:#?}"
        );
    }
}

#[test]
fn the_snapshots_record_the_guests_host_facts() {
    let (_, amd) = load("rootbus-amd");
    assert_eq!(amd.host.cpu_supports_p2pdma(), Some(true), "{:?}", amd.host);
    let (_, q35) = load("rootbus");
    assert_eq!(
        q35.host.cpu_supports_p2pdma(),
        Some(false),
        "{:?}",
        q35.host
    );
    assert_eq!(q35.host.p2pdma_config, p2pdma::host::KernelP2pdma::Yes);
    let hb = q35.host_bridge_device("pci0000:00").unwrap();
    assert_eq!((hb.vendor, hb.device), (0x8086, 0x29c0));
}

#[test]
fn provider_choice_on_the_mixed_topology_prefers_the_clients_own_memory() {
    let (_, tree) = load("mixed");
    let topo = Topology::new(&tree);
    let sw0 = nvme_by_serial(&tree, "sw0");
    let sw1 = nvme_by_serial(&tree, "sw1");
    let nocmb = nvme_by_serial(&tree, "nocmb0");
    let c = topo.choose_provider(&[sw1]).unwrap();
    assert_eq!((c.provider, c.distance), (sw1, 0));
    let c = topo.choose_provider(&[sw0, sw1]).unwrap();
    assert_eq!(c.distance, 4);
    assert_eq!(c.tied, vec![sw0.min(sw1), sw0.max(sw1)]);
    // The CMB-less controller behind its own root port shares no bridge with any provider.
    assert!(topo.choose_provider(&[nocmb]).is_err());
}

/// Snapshots of the same topologies from Linux 7.2 guests (`tests/fixtures/7.2/<topology>/`),
/// each judged by the rules of the release its host facts carry (7.2.13: Linux 7.2 rules),
/// against what that kernel did; a refusal there is EINVAL (`blk_rq_dma_map`), not
/// EREMOTEIO.
#[test]
fn predictions_match_what_the_7_2_kernel_did_for_every_recorded_pair() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/7.2");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&base)
        .expect("tests/fixtures/7.2")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("bus/pci/devices").is_dir())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 9,
        "expected a 7.2 fixture per lab topology, found {dirs:?}"
    );
    let (mut total, mut refused) = (0, 0);
    let mut disagreements = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let root = SysfsRoot::new(dir.clone());
        let tree = PciTree::read(&root).unwrap_or_else(|e| panic!("7.2/{name}: {e}"));
        assert_eq!(
            tree.host.kernel_release.as_deref(),
            Some("7.2.13"),
            "7.2/{name}"
        );
        let topo = Topology::new(&tree);
        assert!(
            topo.rules().to_string().starts_with("Linux 7.2 rules"),
            "7.2/{name}: judged by {}",
            topo.rules()
        );
        let probes = std::fs::read_to_string(dir.join("kernel-probe.jsonl")).unwrap();
        for line in probes.lines().filter(|l| !l.trim().is_empty()) {
            let probe: Value = serde_json::from_str(line).expect("probe JSON");
            let provider = bdf(probe["provider"].as_str().unwrap());
            let client_path = probe["client"].as_str().unwrap();
            let kernel = probe["result"].as_str().unwrap();
            assert_ne!(
                kernel, "error",
                "7.2/{name}: the probe itself failed: {line}"
            );
            if kernel == "p2p-refused" {
                assert_eq!(
                    probe["errno"], 22,
                    "7.2/{name}: a refusal on 7.2 is EINVAL: {line}"
                );
                refused += 1;
            }
            // A read the kernel allowed whose data never arrived ("dropped") is the
            // kernel allowing P2P, behind QEMU's emulated IOMMU (the snapshot keeps the
            // provider's iommu_group link), which does not route peer traffic.
            let behind_iommu = dir
                .join("bus/pci/devices")
                .join(provider.to_string())
                .join("iommu_group")
                .symlink_metadata()
                .is_ok();
            let allowed = kernel == "ok" || (kernel == "dropped" && behind_iommu);
            let target = resolve(&root, client_path).unwrap();
            let verdict = topo.verdict(provider, target.bdf.unwrap());
            let predicted = verdict.is_p2p() && target.p2p_queue;
            if predicted != allowed {
                disagreements.push(format!(
                    "7.2/{name}: {provider} <- {client_path}: {verdict:?}"
                ));
            }
            total += 1;
        }
    }
    assert!(
        total >= 50 && refused > 0,
        "{total} recorded pairs, {refused} refused"
    );
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}
