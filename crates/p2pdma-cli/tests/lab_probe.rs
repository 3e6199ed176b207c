//! `p2pdma probe` catches a DMA the platform drops: with ACS redirect disabled on the
//! `acs` topology's root port the kernel allows P2P between the two functions, but
//! QEMU's emulated IOMMU drops the peer writes (lab_copy's ACS test sees the same data
//! loss through `--verify`). The probe's buffer is filled with a random pattern first,
//! so the read that "succeeds" while delivering nothing is reported as dropped, not as a
//! match of zeros with zeros.

#[allow(dead_code)] // each lab test binary uses part of the shared helpers
mod common;

use common::{json_after, Flavour, Lab};

#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn probe_reports_the_dma_the_emulated_iommu_drops_as_dropped() {
    let script = r#"
bdf() { p2pdma lab guest nvme "$1" | awk '{print $1}'; }
ns() { p2pdma lab guest nvme "$1" | awk '{print $3}'; }
# The disk holds zeros, as lab disks do: a check without a pattern would pass.
dd if=/dev/zero of=$(ns mf0) bs=4096 count=1 oflag=direct 2>/dev/null
p2pdma probe --provider $(bdf mf1) $(ns mf0) --json > /tmp/probe.json; echo "RC $?"
echo "JSON $(tr '\n' ' ' < /tmp/probe.json)"
p2pdma probe --provider $(bdf mf1) $(ns mf0); echo "TEXTRC $?"
"#;
    let run = Lab::new("acs", Flavour::Standard)
        .args(&["--kernel-arg", "pci=disable_acs_redir=0000:00:01.0"])
        .run(script);
    let probe = json_after(&run.line("JSON").join(" "));
    assert_eq!(probe["result"], "dropped", "{probe}");
    assert_eq!(
        probe["bytes_read"], probe["bytes"],
        "the read reported success: {probe}"
    );
    assert_eq!(probe["pattern_replaced"], false, "{probe}");
    assert_eq!(probe["matches_host_read"], false, "{probe}");
    assert_eq!(probe["error"]["kind"], "failure", "{probe}");
    assert_eq!(run.line("RC"), ["1"]);
    assert_eq!(run.line("TEXTRC"), ["1"]);
    assert!(
        run.stdout.contains("dropped, the read of") && run.stdout.contains("never arrived"),
        "{}",
        run.stdout
    );
}
