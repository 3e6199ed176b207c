//! The distribution's own kernel (`--flavour stock`: Debian sid's 7.2 image and modules,
//! fetched, not built) in the lab: it boots with the modules the guest init loads, both
//! CMBs of `switch` are p2pmem, a P2P copy between the namespaces is verified, and the
//! lab's RAM provider, built as a module against Debian's headers, loads with nothing in
//! the kernel log but the out-of-tree/unsigned taint, and carries a verified copy.
//!
//! The guest scripts print one `KEY field...` line per fact; the assertions are made here.
//! A cheap pass of the other suites on the stock kernel: `P2PDMA_LAB_FLAVOUR=stock`.

use crate::harness::{json_after, Lab};

/// Taint bits (Documentation/admin-guide/tainted-kernels.rst): O, out-of-tree module
/// loaded (4096); E, unsigned module loaded (8192).
const TAINT_OUT_OF_TREE: u64 = 4096;
const TAINT_UNSIGNED: u64 = 8192;

#[test]
#[ignore = "lab: boots a QEMU guest on Debian's stock kernel (fetched on first use); run with --include-ignored"]
fn the_stock_kernel_boots_and_both_cmbs_carry_a_verified_p2p_copy() {
    let body = r#"
echo "UNAME $(uname -r)"
echo "LOADED $(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"
A=$(ns sw0); B=$(ns sw1); BA=$(bdf sw0); BB=$(bdf sw1)
echo "BDFS $BA $BB"
for d in $BA $BB; do echo "P2PMEM $d $(cat /sys/bus/pci/devices/$d/p2pmem/size) $(cat /sys/bus/pci/devices/$d/p2pmem/published)"; done
checked_copy $A $B 4194304 0 --provider $BB --verify --json
"#;
    let run = Lab::stock("switch").run(body);
    run.assert_success();
    let uname = run.line("UNAME")[0].to_owned();
    assert!(
        uname.starts_with("7.2.") && uname.ends_with("-amd64") && uname.contains("+deb"),
        "not Debian's 7.2 kernel: {uname}"
    );
    let loaded = run.line("LOADED");
    for module in ["nvme", "nvme_core", "ext4", "vfio_pci", "p2pdma_ram"] {
        assert!(loaded.contains(&module), "{module} not loaded: {loaded:?}");
    }
    let p2pmem = run.lines("P2PMEM");
    assert_eq!(p2pmem.len(), 2, "{p2pmem:?}");
    for fields in &p2pmem {
        assert_eq!(fields[1], (16u64 << 20).to_string(), "CMB size: {fields:?}");
        assert_eq!(fields[2], "1", "CMB not published: {fields:?}");
    }
    let j = json_after(&run.assert_checked_copy());
    assert_eq!(j["verified"], true, "{j}");
    assert_eq!(
        j["provider"],
        run.line("BDFS")[1],
        "not through sw1's CMB: {j}"
    );
    run.assert_kernel_log_clean();
}

#[test]
#[ignore = "lab: boots a QEMU guest on Debian's stock kernel (fetched on first use); run with --include-ignored"]
fn the_ram_provider_module_loads_on_the_stock_kernel_and_carries_a_verified_copy() {
    let body = r#"
R=""; for d in /sys/bus/pci/drivers/p2pdma_ram/0000:*; do [ -e "$d" ] && R=$(basename "$d"); done
echo "RAM $R $(cat /sys/bus/pci/devices/$R/p2pmem/size 2>/dev/null)"
echo "TAINTED $(cat /proc/sys/kernel/tainted) $(cat /sys/module/p2pdma_ram/taint)"
dmesg | grep p2pdma_ram | sed 's/^\[[ 0-9.]*\] /DMESG /'
A=$(ns fast0); B=$(ns fast1)
checked_copy $A $B 16777216 4194304 --provider $R --verify
"#;
    let run = Lab::stock("fast").run(body);
    run.assert_success();
    let ram = run.line("RAM");
    assert_eq!(ram.len(), 2, "no device bound to p2pdma_ram: {ram:?}");
    assert_eq!(ram[1], (256u64 << 20).to_string(), "{ram:?}");
    // The module taints the kernel as out-of-tree and unsigned, and nothing else does.
    let tainted = run.line("TAINTED");
    assert_eq!(
        tainted[0].parse::<u64>().unwrap(),
        TAINT_OUT_OF_TREE | TAINT_UNSIGNED,
        "{tainted:?}"
    );
    assert_eq!(tainted[1], "OE", "{tainted:?}");
    let dmesg: Vec<String> = run.lines("DMESG").iter().map(|l| l.join(" ")).collect();
    let expected = [
        "p2pdma_ram: loading out-of-tree module taints kernel.",
        "p2pdma_ram: module verification failed: signature and/or required key missing - tainting kernel",
    ];
    for line in expected {
        assert!(dmesg.iter().any(|l| l == line), "{line:?} not in {dmesg:?}");
    }
    let out = run.assert_checked_copy();
    assert!(out.contains("verified"), "{out}");
    run.assert_kernel_log_clean();
}
