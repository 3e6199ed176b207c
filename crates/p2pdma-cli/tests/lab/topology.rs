//! Topology verdicts against the real kernel, in the QEMU lab.
//!
//! For every shipped topology, the guest prints p2pdma's prediction for every
//! (p2pmem provider, NVMe namespace) pair (`p2pdma topo --pairs --json`), then asks the
//! kernel: `p2pdma probe` reads the namespace's first block with O_DIRECT into a buffer
//! from the provider's p2pmem (filled with a random pattern first, so a read whose data
//! never arrives shows as `dropped`). The test prints the table and the count and fails
//! on any disagreement with the kernel's decision, and on a dropped read outside the
//! topologies with an emulated IOMMU. The kernel's `pci=disable_acs_redir=` advice, when it logs one, must
//! equal the ACS list p2pdma predicted for some pair.
//!
//! Besides the shipped topologies, `tests/lab/topology_extra.toml` adds ACS cases the
//! shipped ones do not reach (redirect above the common switch, ACS with an AMD CPU,
//! redirecting root ports without a common bridge).
//!
//! RAM providers (`[[NAME.ram]]`, ivshmem-plain published by the lab kernel's p2pdma_ram
//! driver) are providers like any CMB: every one the topology declares must appear in the
//! pairs, once per namespace, and its verdicts are checked like the others.

use std::collections::BTreeMap;

use p2pdma_lab::spec::Catalog;
use serde_json::Value;

use crate::harness::{p2pdma, Flavour, Lab};

const GUEST_SCRIPT: &str = r#"
p2pdma topo --pairs --json
p2pdma topo --pairs | while read p d rest; do p2pdma probe --provider $p /dev/$d --json; done
for d in /sys/bus/pci/devices/*; do [ "$(cat $d/vendor):$(cat $d/device)" = 0x1af4:0x1110 ] && echo "RAM $(basename $d)"; done
dmesg | grep -o 'pci=disable_acs_redir=[0-9a-f:.;]*' | sed 's/^/KERNEL-ACS /'
true
"#;

const EXTRA_TOPOLOGIES: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lab/topology_extra.toml");

/// A guest on `topology` (shipped or extra), the standard kernel, with 300 s for the
/// script.
fn lab(topology: &str) -> Lab {
    Lab::new(topology, Flavour::Standard)
        .topologies(include_str!("topology_extra.toml"))
        .args(&["--timeout", "300"])
}

fn topologies() -> Vec<String> {
    let out = p2pdma()
        .args(["lab", "topologies", "--topologies", EXTRA_TOPOLOGIES])
        .output()
        .expect("run p2pdma lab topologies");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The topologies that give the guest an emulated IOMMU.
fn with_iommu() -> Vec<String> {
    let out = p2pdma()
        .args([
            "lab",
            "topologies",
            "--json",
            "--topologies",
            EXTRA_TOPOLOGIES,
        ])
        .output()
        .expect("run p2pdma lab topologies --json");
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).expect("one JSON document");
    all.iter()
        .filter(|t| t["iommu"] == true)
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
#[ignore = "lab: boots a QEMU guest per topology; run with --include-ignored"]
fn predicted_verdicts_equal_what_the_kernel_does_for_every_pair_of_every_topology() {
    let names = topologies();
    assert!(!names.is_empty(), "no lab topologies");
    let catalog = Catalog::load(None, &[EXTRA_TOPOLOGIES.into()]).expect("topologies load");
    let mut table = String::new();
    let mut total = 0usize;
    let mut disagreements = Vec::new();
    let iommu = with_iommu();
    let mut dropped = 0usize;
    for topology in &names {
        let out = lab(topology).run(GUEST_SCRIPT);
        out.assert_success();
        let (stdout, stderr) = (&out.stdout, &out.stderr);

        let mut predicted: BTreeMap<(String, String), Value> = BTreeMap::new();
        let mut probes = Vec::new();
        let mut kernel_acs = Vec::new();
        let mut rams = Vec::new();
        for line in stdout.lines().map(str::trim) {
            if let Some(value) = line.strip_prefix("KERNEL-ACS pci=disable_acs_redir=") {
                kernel_acs.push(value.to_owned());
            } else if let Some(bdf) = line.strip_prefix("RAM ") {
                rams.push(bdf.to_owned());
            } else if line.starts_with('[') {
                // `topo --pairs --json`: one document, an array of pairs.
                let all: Vec<Value> = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{topology}: bad JSON {line:?}: {e}"));
                for v in all {
                    let disk = v["client_disk"].as_str().expect("client_disk").to_owned();
                    let key = (
                        v["provider"].as_str().unwrap().to_owned(),
                        format!("/dev/{disk}"),
                    );
                    predicted.insert(key, v);
                }
            } else if line.starts_with('{') {
                let v: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{topology}: bad JSON {line:?}: {e}"));
                probes.push(v);
            }
        }
        assert!(
            !predicted.is_empty(),
            "{topology}: no predictions\n{stdout}\n{stderr}"
        );
        assert_eq!(
            probes.len(),
            predicted.len(),
            "{topology}: one probe per predicted pair\n{stdout}"
        );
        let declared_rams = catalog
            .get(topology)
            .expect("listed topology")
            .spec
            .ram
            .len();
        assert_eq!(
            rams.len(),
            declared_rams,
            "{topology}: RAM providers in the guest\n{stdout}"
        );
        let namespaces: std::collections::BTreeSet<&String> =
            predicted.keys().map(|(_, disk)| disk).collect();
        for ram in &rams {
            let pairs = predicted.keys().filter(|(p, _)| p == ram).count();
            assert_eq!(
                pairs,
                namespaces.len(),
                "{topology}: RAM provider {ram} must be paired with every namespace\n{stdout}"
            );
        }
        for probe in &probes {
            let provider = probe["provider"].as_str().unwrap().to_owned();
            let client = probe["client"].as_str().unwrap().to_owned();
            let kernel = probe["result"].as_str().unwrap().to_owned();
            let p = &predicted[&(provider.clone(), client.clone())];
            let p2p = p["p2p"].as_bool().unwrap();
            // What is predicted is the kernel's decision: it allowed the mapping when the
            // read completed, whether or not the data then arrived. The probe's pattern
            // shows when it did not ("dropped"): QEMU sends every DMA through its emulated
            // IOMMU, which does not model peer routing inside a switch, so that is
            // expected where the topology has one, and a failure anywhere else.
            let allowed = matches!(kernel.as_str(), "ok" | "dropped" | "corrupted");
            let mut agrees = allowed == p2p && kernel != "error";
            if kernel == "dropped" || kernel == "corrupted" {
                dropped += 1;
                if !iommu.contains(topology) {
                    agrees = false;
                }
            }
            table.push_str(&format!(
                "{topology:<14} {provider} <- {client:<13} predicted {:<8} ({}, distance {}) kernel {kernel:<11}{}\n",
                if p2p { "p2p" } else { "refused" },
                p["map_type"].as_str().unwrap_or("?"),
                p["distance"],
                if agrees { "" } else { "  DISAGREE" }
            ));
            if !agrees {
                disagreements.push(format!(
                    "{topology}: {provider} <- {client}: predicted {p}, kernel {probe}"
                ));
            }
            total += 1;
        }
        let predicted_acs: Vec<String> = predicted
            .values()
            .map(|p| {
                p["acs_redirect"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b.as_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
                    .join(";")
            })
            .collect();
        for value in &kernel_acs {
            table.push_str(&format!(
                "{topology:<14} kernel advised pci=disable_acs_redir={value}: {}\n",
                if predicted_acs.contains(value) {
                    "predicted"
                } else {
                    "NOT PREDICTED"
                }
            ));
            if !predicted_acs.contains(value) {
                disagreements.push(format!(
                    "{topology}: kernel's ACS advice {value} not among {predicted_acs:?}"
                ));
            }
        }
    }
    println!(
        "{table}{total} pairs on {} topologies, {} disagreements, {dropped} allowed by the kernel but dropped by the emulated IOMMU (topologies with one: {})",
        names.len(),
        disagreements.len(),
        iommu.join(", ")
    );
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

/// Files, namespaces and controllers resolve to the right function inside a real guest.
#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn a_file_on_an_nvme_filesystem_resolves_to_its_controller_in_the_guest() {
    let script = r#"
mkdir -p /mnt/a && mount -t ext4 $(ns sw0) /mnt/a && echo hello > /mnt/a/file
echo "SW0 $(bdf sw0)"
p2pdma topo --explain $(bdf sw1) /mnt/a/file --json | tr -d '\n'; echo
p2pdma topo --explain $(bdf sw1) /proc/cpuinfo; echo "PROC-EXIT $?"
"#;
    let out = lab("ext4").run(script);
    out.assert_success();
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    let sw0 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SW0 "))
        .expect("sw0's address")
        .trim()
        .to_owned();
    let json = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON\n{stdout}\n{stderr}"));
    let v: Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["client"]["kind"], "file", "{v}");
    assert_eq!(v["client"]["bdf"], sw0.as_str(), "{v}");
    assert_eq!(v["client"]["p2p_queue"], true, "{v}");
    assert_eq!(v["verdict"]["map_type"], "bus_addr", "{v}");
    assert_eq!(v["p2p"], true, "{v}");
    assert!(stdout.contains("PROC-EXIT 1"), "{stdout}");
    assert!(
        stderr.contains("is on a filesystem with no block device of its own"),
        "{stderr}"
    );
}
