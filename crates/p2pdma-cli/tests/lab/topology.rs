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

use p2pdma_lab::check::conformance::{self, Expect};
use p2pdma_lab::spec::Catalog;
use serde_json::Value;

use crate::harness::{Flavour, Lab};

/// A guest on `topology` (shipped or extra), the standard kernel, with 300 s for the
/// script.
fn lab(topology: &str) -> Lab {
    Lab::new(topology, Flavour::Standard)
        .topologies(include_str!("topology_extra.toml"))
        .args(&["--timeout", "300"])
}

/// The judging is `p2pdma_lab::check::conformance`, the same `p2pdma lab check` uses.
#[test]
#[ignore = "lab: boots a QEMU guest per topology; run with --include-ignored"]
fn predicted_verdicts_equal_what_the_kernel_does_for_every_pair_of_every_topology() {
    let mut catalog = Catalog::load(None, &[]).expect("topologies load");
    catalog
        .merge_str(include_str!("topology_extra.toml"), "topology_extra.toml")
        .expect("extra topologies load");
    let names = catalog.names();
    assert!(!names.is_empty(), "no lab topologies");
    let mut table = String::new();
    let mut total = 0usize;
    let mut disagreements = Vec::new();
    let mut dropped = 0usize;
    let mut with_iommu = Vec::new();
    for topology in &names {
        let spec = catalog.get(topology).expect("listed topology").spec;
        if spec.iommu {
            with_iommu.push(topology.clone());
        }
        let out = lab(topology).run(conformance::GUEST_SCRIPT);
        out.assert_success();
        let (stdout, stderr) = (&out.stdout, &out.stderr);
        let c = conformance::judge(
            stdout,
            Expect {
                iommu: spec.iommu,
                ram_providers: spec.ram.len(),
            },
        );
        assert!(
            c.problems.is_empty(),
            "{topology}: {:#?}\n{stdout}\n{stderr}",
            c.problems
        );
        for p in &c.pairs {
            if p.kernel == conformance::KernelAnswer::AllowedDataLost {
                dropped += 1;
            }
            table.push_str(&format!(
                "{topology:<14} {} <- {:<13} predicted {:<8} ({}, distance {}) kernel {:<11}{}\n",
                p.provider,
                p.client,
                if p.predicted_p2p { "p2p" } else { "refused" },
                p.map_type.as_deref().unwrap_or("?"),
                p.distance.map_or("?".to_owned(), |d| d.to_string()),
                p.kernel_result,
                if p.agrees { "" } else { "  DISAGREE" }
            ));
            if !p.agrees {
                disagreements.push(format!("{topology}: {}", p.describe()));
            }
            total += 1;
        }
        for a in &c.acs_advice {
            table.push_str(&format!(
                "{topology:<14} kernel advised pci=disable_acs_redir={}: {}\n",
                a.value,
                if a.predicted {
                    "predicted"
                } else {
                    "NOT PREDICTED"
                }
            ));
            if !a.predicted {
                disagreements.push(format!(
                    "{topology}: kernel's ACS advice {} not predicted for any pair",
                    a.value
                ));
            }
        }
    }
    println!(
        "{table}{total} pairs on {} topologies, {} disagreements, {dropped} allowed by the kernel but dropped by the emulated IOMMU (topologies with one: {})",
        names.len(),
        disagreements.len(),
        with_iommu.join(", ")
    );
    assert!(total > 0, "no pairs probed");
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
