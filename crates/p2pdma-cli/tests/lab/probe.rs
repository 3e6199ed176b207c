//! `p2pdma probe` catches a DMA the platform drops: with ACS redirect disabled on the
//! `acs` topology's root port the kernel allows P2P between the two functions, but
//! QEMU's emulated IOMMU drops the peer writes (the copy module's ACS test sees the same data
//! loss through `--verify`). The probe's buffer is filled with a random pattern first,
//! so the read that "succeeds" while delivering nothing is reported as dropped, not as a
//! match of zeros with zeros.

use crate::harness::{Flavour, Lab};

#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn probe_reports_the_dma_the_emulated_iommu_drops_as_dropped() {
    let script = r#"
# The disk holds zeros, as lab disks do: a check without a pattern would pass.
dd if=/dev/zero of=$(ns mf0) bs=4096 count=1 oflag=direct 2>/dev/null
p2pdma probe --provider $(bdf mf1) $(ns mf0) --json > /tmp/probe.json; echo "RC $?"
echo "JSON $(tr '\n' ' ' < /tmp/probe.json)"
p2pdma probe --provider $(bdf mf1) $(ns mf0); echo "TEXTRC $?"
"#;
    let run = Lab::new("acs", Flavour::Standard)
        .args(&["--kernel-arg", "pci=disable_acs_redir=0000:00:01.0"])
        .run(script);
    let probe = run.json("JSON");
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

/// Issue 9, least privilege: a user who is not root, given read-write access to the NVMe
/// block devices and a provider's `p2pmem/allocate` (set by hand here, as
/// docs/60-p2pdma.rules would), can list, probe and copy; without it the error names the
/// file and the permission.
#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn a_user_given_access_probes_and_copies_without_root() {
    let script = r#"
A=$(ns sw0); B=$(ns sw1); PB=$(bdf sw1)
dd if=/dev/urandom of=$A bs=1M count=4 oflag=direct 2>/dev/null
user() { p2pdma lab guest as-user 1000 1000 sh -c "$*"; }
user "p2pdma probe --provider $PB $A" > /tmp/denied.out 2> /tmp/denied.err; echo "DENIED_RC $?"
echo "WHO $(user id -u)"
echo "DENIED_ERR $(cat /tmp/denied.err)"
chgrp 1000 $A $B /sys/bus/pci/devices/$PB/p2pmem/allocate
chmod 660 $A $B /sys/bus/pci/devices/$PB/p2pmem/allocate
user p2pdma topo > /dev/null; echo "TOPO_RC $?"
user p2pdma mem info > /dev/null; echo "MEMINFO_RC $?"
user "p2pdma probe --provider $PB $A --json" > /tmp/probe.json; echo "PROBE_RC $?"
echo "PROBE $(tr '\n' ' ' < /tmp/probe.json)"
user "p2pdma copy $A $B --length 4M --provider $PB --verify --json" > /tmp/copy.json; echo "COPY_RC $?"
echo "COPY $(tr '\n' ' ' < /tmp/copy.json)"
echo "MD5 $(dd if=$A bs=1M count=4 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1) $(dd if=$B bs=1M count=4 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
"#;
    let run = Lab::new("switch", Flavour::Standard).run(script);
    assert_eq!(run.line("WHO"), ["1000"], "{}", run.stdout);
    assert_eq!(run.line("DENIED_RC"), ["1"], "{}", run.stdout);
    let denied = run.line("DENIED_ERR").join(" ");
    assert!(
        denied.contains("p2pmem/allocate") && denied.contains("read and write permission"),
        "{denied}"
    );
    assert_eq!(run.line("TOPO_RC"), ["0"]);
    assert_eq!(run.line("MEMINFO_RC"), ["0"]);
    assert_eq!(run.line("PROBE_RC"), ["0"], "{}", run.stdout);
    let probe = run.json("PROBE");
    assert_eq!(probe["result"], "ok", "{probe}");
    assert_eq!(probe["pattern_replaced"], true, "{probe}");
    assert_eq!(run.line("COPY_RC"), ["0"], "{}", run.stdout);
    let copy = run.json("COPY");
    assert_eq!(copy["verified"], true, "{copy}");
    assert_eq!(copy["mode"], "p2p", "{copy}");
    let md5 = run.line("MD5");
    assert_eq!(md5[0], md5[1], "{}", run.stdout);
}
