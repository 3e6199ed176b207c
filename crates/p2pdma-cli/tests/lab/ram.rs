//! The lab's RAM-backed p2pmem provider (`[[NAME.ram]]`: QEMU ivshmem-plain, published by
//! the lab kernel's p2pdma_ram driver) in the `fast` topology: it is a provider like a CMB
//! for every command, data moves through it intact, and unbind and hot removal of it go
//! through the kernel's p2pdma teardown and revoke mapped buffers.
//!
//! Each test boots `fast` once; the guest script prints one `KEY field...` line per fact
//! and the assertions are made here.

use p2pdma_lab::spec::Catalog;

use crate::harness::{
    assert_removal_revoked_both_buffers, assert_unbind_revoked_both_buffers, json_after, Flavour,
    Lab,
};

/// `ram`: the PCI address of the (one) ivshmem-plain device, 1af4:1110 (besides the
/// harness's helpers).
const RAM_HELPER: &str = r#"
ram() { for d in /sys/bus/pci/devices/*; do [ "$(cat $d/vendor):$(cat $d/device)" = 0x1af4:0x1110 ] && basename $d; done; }
"#;

fn fast(flavour: Flavour) -> Lab {
    Lab::new("fast", flavour).helpers(RAM_HELPER)
}

/// The size `fast` declares for its RAM provider, in bytes.
fn declared_ram_bytes() -> u64 {
    let topology = Catalog::load(None, &[]).unwrap().get("fast").unwrap();
    assert_eq!(topology.spec.ram.len(), 1, "fast has one RAM provider");
    u64::from(topology.spec.ram[0].size_mib) << 20
}

/// The provider shows up everywhere a CMB does, and a copy between the two namespaces
/// through it moves random data intact (the tool's xxh3 verify and the guest's md5 agree).
#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn the_ram_provider_is_listed_and_carries_a_verified_copy_between_the_namespaces() {
    let body = r#"
R=$(ram); A=$(ns fast0); B=$(ns fast1)
echo "RAM $R $(bdf fast0) $(bdf fast1)"
echo "MEM $(p2pdma mem info --json)"
echo "TREE $(p2pdma topo | grep " $R ")"
echo "MATRIX $(p2pdma topo --matrix --json | tr -d '\n')"
p2pdma probe --provider $R $A --json > /tmp/probe.json; echo "PROBE $? $(one_line /tmp/probe.json)"
checked_copy $A $B 16777216 4194304 --provider $R --verify --json
p2pdma copy $A $B --length 1M --dry-run --json > /tmp/auto.json; echo "AUTO $? $(one_line /tmp/auto.json)"
"#;
    let run = fast(Flavour::Standard).run(body);
    run.assert_success();
    let ram_line = run.line("RAM");
    let (ram, nvme_a, nvme_b) = (ram_line[0], ram_line[1], ram_line[2]);

    // mem info: the RAM pool with its declared size, published.
    let pools = run.json("MEM");
    let pools = pools.as_array().expect("mem info prints an array");
    assert_eq!(pools.len(), 3, "two CMBs and the RAM provider: {pools:?}");
    let pool = pools
        .iter()
        .find(|p| p["provider"] == ram)
        .unwrap_or_else(|| panic!("{ram} missing from mem info: {pools:?}"));
    assert_eq!(pool["size"], declared_ram_bytes(), "{pool}");
    assert_eq!(pool["available"], declared_ram_bytes(), "{pool}");
    assert_eq!(pool["published"], true, "{pool}");

    // topo: a RAM function marked as a provider; the matrix has a row for it, and both
    // namespaces can use it by bus address (one switch, distance 4).
    let tree = run.line("TREE").join(" ");
    assert!(tree.contains("1af4:1110 RAM"), "{tree}");
    let mib = declared_ram_bytes() >> 20;
    assert!(
        tree.contains(&format!("[p2pmem {mib} MiB free of {mib} MiB]")),
        "not marked as a whole, published provider: {tree}"
    );
    let matrix = run.json("MATRIX");
    let devices: Vec<&str> = matrix["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(devices.contains(&ram), "{matrix}");
    assert!(matrix["providers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == ram));
    let row = devices.iter().position(|d| *d == ram).unwrap();
    for client in [nvme_a, nvme_b] {
        let col = devices.iter().position(|d| *d == client).unwrap();
        let cell = &matrix["cells"][row][col];
        assert_eq!(cell["map_type"], "bus_addr", "{ram} -> {client}: {cell}");
        assert_eq!(cell["distance"], 4, "{ram} -> {client}: {cell}");
    }

    // probe: the kernel itself DMAs a block into the RAM provider.
    let probe = run.line("PROBE");
    assert_eq!(probe[0], "0");
    let probe = json_after(&probe[1..].join(" "));
    assert_eq!(probe["result"], "ok", "{probe}");
    assert_eq!(probe["matches_host_read"], true, "{probe}");

    // The copy through the RAM provider.
    let summary = json_after(&run.assert_checked_copy());
    assert_eq!(summary["mode"], "p2p", "{summary}");
    assert_eq!(summary["provider"], ram, "{summary}");
    assert_eq!(summary["bytes"], 16 << 20, "{summary}");
    assert_eq!(summary["verified"], true, "{summary}");
    assert_eq!(
        summary["verification"]["src_digest"], summary["verification"]["dst_digest"],
        "{summary}"
    );

    // Automatic choice is unchanged by the RAM provider: the destination's own CMB first
    // (see the report on issue 7: the kernel's closest-distance rule would not pick RAM
    // either, at distance 8 against 4).
    let auto = run.line("AUTO");
    assert_eq!(auto[0], "0");
    let auto = json_after(&auto[1..].join(" "));
    assert_eq!(auto["route"]["provider"], nvme_b, "{auto}");
    run.assert_kernel_log_clean();
}

/// Unbinding p2pdma_ram while two buffers are mapped: the kernel's devres teardown zaps
/// the mappings, reads report the revocation instead of killing the process, and a
/// rebind publishes the whole pool again.
fn unbinding_the_ram_provider_revokes_mapped_buffers_and_rebinding_restores_the_pool(
    flavour: Flavour,
) {
    let body = r#"
R=$(ram)
p2pdma mem test $R --buffers 2 --size 1048576 --unbind-after-map --json > /tmp/out.json; echo "TEST $? $(one_line /tmp/out.json)"
i=0; while [ ! -e /sys/bus/pci/devices/$R/p2pmem/size ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "AFTER $(cat /sys/bus/pci/devices/$R/p2pmem/size) $(cat /sys/bus/pci/devices/$R/p2pmem/available) $(cat /sys/bus/pci/devices/$R/p2pmem/published) $(basename $(readlink /sys/bus/pci/devices/$R/driver))"
"#;
    let run = fast(flavour).run(body);
    run.assert_success();
    let test = run.line("TEST");
    assert_eq!(test[0], "0", "p2pdma did not survive the unbind");
    let report = json_after(&test[1..].join(" "));
    assert_unbind_revoked_both_buffers(&report, "p2pdma_ram");
    let bytes = declared_ram_bytes().to_string();
    assert_eq!(
        run.line("AFTER"),
        [bytes.as_str(), bytes.as_str(), "1", "p2pdma_ram"],
        "the rebound provider has its whole pool again"
    );
    run.assert_kernel_log_clean();
}

/// QEMU deletes the RAM device (`device_del`, the guest's pciehp removes it) while two
/// buffers are mapped: they are revoked, the process lives, the provider is gone from
/// `mem info`, and the CMBs are untouched.
fn hot_removing_the_ram_provider_revokes_mapped_buffers(flavour: Flavour) {
    let body = r#"
R=$(ram)
p2pdma mem test $R --buffers 2 --size 65536 --json --while-mapped \
  "p2pdma lab guest signal mapped; i=0; while [ -e /sys/bus/pci/devices/$R ] && [ \$i -lt 60 ]; do sleep 1; i=\$((i+1)); done" > /tmp/out.json
echo "TEST $? $(one_line /tmp/out.json)"
[ -e /sys/bus/pci/devices/$R ] && echo "STILL-PRESENT $R"
echo "MEM $(p2pdma mem info --json)"
"#;
    let run = fast(flavour)
        .args(&["--fault", "device_del:ram-a@signal:mapped"])
        .run(body);
    run.assert_success();
    assert!(
        run.lines("STILL-PRESENT").is_empty(),
        "the device was not removed"
    );
    let test = run.line("TEST");
    assert_eq!(test[0], "0", "p2pdma did not survive the removal");
    let report = json_after(&test[1..].join(" "));
    assert_removal_revoked_both_buffers(&report);
    let pools = run.json("MEM");
    let pools = pools.as_array().unwrap();
    assert_eq!(pools.len(), 2, "only the two CMBs remain: {pools:?}");
    assert!(pools.iter().all(|p| p["size"] == 16 << 20), "{pools:?}");
    run.assert_kernel_log_clean();
}

on_both_kernels! {
    unbinding_the_ram_provider_revokes_mapped_buffers_and_rebinding_restores_the_pool,
    hot_removing_the_ram_provider_revokes_mapped_buffers,
}
