//! NVMe native multipath, per kernel release: two controllers of one NVM subsystem share a
//! namespace, and Debian's stock 7.2 kernel (booted with `nvme_core.multipath=Y`) shows it
//! as one head disk. Linux 7.2 gives that head disk P2PDMA when every path is nvme-pci
//! (`KernelRules::multipath_head_p2pdma`); 6.12 does not. In one guest: p2pdma judged
//! under the 6.12 rules refuses the head disk, under the running kernel's 7.2 rules it
//! routes the copy P2P, and the kernel carries that copy with `--bounce never` and verify.
//!
//! The lab's built kernels have no CONFIG_NVME_MULTIPATH, so the 6.12 kernel's own refusal
//! is not booted here; the 6.12 side is p2pdma's prediction from the same sysfs.

use crate::harness::{json_after, Lab};

/// One subsystem (`ss0`, serial `mpab`: `mp-a` with a CMB, `mp-b`) and a lone controller `mpc` with a CMB,
/// all behind one switch, so every path is P2P-reachable from `mpc`'s CMB.
const MULTIPATH: &str = r#"
[multipath]
description = "two controllers of one NVM subsystem sharing a namespace, and a lone controller, behind one switch"
kernel_args = ["nvme_core.multipath=Y"]
bridge = [
  { id = "rp1", kind = "root-port", parent = "pcie.0", addr = "1" },
  { id = "up1", kind = "switch-upstream", parent = "rp1" },
  { id = "dn1", kind = "switch-downstream", parent = "up1" },
  { id = "dn2", kind = "switch-downstream", parent = "up1" },
  { id = "dn3", kind = "switch-downstream", parent = "up1" },
]
nvme = [
  { id = "mp-a", serial = "mpab", parent = "dn1", subsystem = "ss0", cmb_mib = 16 },
  { id = "mp-b", serial = "mpab", parent = "dn2", subsystem = "ss0" },
  { id = "mp-c", serial = "mpc", parent = "dn3", cmb_mib = 16 },
]
"#;

#[test]
#[ignore = "lab: boots a QEMU guest on Debian's stock kernel (fetched on first use); run with --include-ignored"]
fn the_multipath_head_disk_is_refused_by_6_12_rules_and_carries_p2p_on_7_2() {
    let body = r#"
HEAD=""; PATHS=0
for s in /sys/class/nvme-subsystem/*; do
    n=$(ls "$s" | grep -c '^nvme[0-9]*$')
    if [ "$n" -ge 2 ]; then HEAD=$(ls "$s" | grep '^nvme[0-9]*n[0-9]*$'); PATHS=$n; fi
done
echo "HEAD $HEAD $(cat /sys/module/nvme_core/parameters/multipath)"
echo "DISKS $(ls /sys/block | grep nvme | tr '\n' ' ')"
echo "PATHS $PATHS $(readlink -f /sys/block/$HEAD)"
C=$(ns mpc); PC=$(bdf mpc)
echo "LONE $C $PC"
LEN=4194304
p2pdma --kernel-release 6.12.117 copy /dev/$HEAD $C --provider $PC --length $LEN --bounce never --dry-run > /tmp/old.out 2>/tmp/old.err
echo "OLD $?"
echo "OLDERR $(tr '\n' ' ' < /tmp/old.err)"
checked_copy /dev/$HEAD $C $LEN 0 --provider $PC --bounce never --verify --json
"#;
    let run = Lab::stock("multipath").topologies(MULTIPATH).run(body);
    run.assert_success();
    let head = run.line("HEAD");
    assert_eq!(
        head.len(),
        2,
        "no multipath head disk: {head:?}, disks {:?}",
        run.line("DISKS")
    );
    assert_eq!(
        head[1], "Y",
        "nvme_core.multipath on the command line did not reach the module"
    );
    // Its two paths are hidden disks `nvme<X>c<Y>n<Z>` beside the head `nvme<X>n<Z>`.
    let (subsystem, nsid) = head[0].rsplit_once('n').expect("head disk name");
    let disks = run.line("DISKS");
    let paths: Vec<&&str> = disks
        .iter()
        .filter(|d| {
            d.strip_prefix(&format!("{subsystem}c"))
                .and_then(|rest| rest.rsplit_once('n'))
                .is_some_and(|(_, n)| n == nsid)
        })
        .collect();
    assert_eq!(paths.len(), 2, "{paths:?} in {disks:?}");
    let paths_line = run.line("PATHS");
    assert_eq!(
        paths_line[0], "2",
        "controllers in the subsystem: {paths_line:?}"
    );
    assert!(
        paths_line[1].contains("/nvme-subsystem/"),
        "the head disk hangs under its subsystem: {paths_line:?}"
    );
    // Judged by the 6.12 rules, the head disk has no P2PDMA: refused, nothing copied.
    assert_ne!(run.line("OLD")[0], "0", "6.12 rules accepted the head disk");
    let old_err = run.line("OLDERR").join(" ");
    assert!(
        old_err.contains("multipath head disk") && old_err.contains("6.12"),
        "{old_err}"
    );
    // The running kernel's rules (7.2) route it P2P, and the kernel carries it.
    let j = json_after(&run.assert_checked_copy());
    assert_eq!(j["mode"], "p2p", "{j}");
    assert_eq!(j["verified"], true, "{j}");
    assert_eq!(
        j["provider"],
        run.line("LONE")[1],
        "not through mpc's CMB: {j}"
    );
    run.assert_kernel_log_clean();
}
