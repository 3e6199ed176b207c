//! `p2pdma lab check`: one command that checks a kernel's P2PDMA in the lab (conformance
//! of every pair, a verified copy per topology, the core teardown scenarios, the kernel
//! log). The lab test boots one topology plus the teardown topology on the cached kernel
//! (`P2PDMA_LAB_RELEASE` picks it), so it stays cheap enough for CI.

use serde_json::Value;

use crate::harness::p2pdma;

#[test]
#[ignore = "lab: boots two QEMU guests; run with --include-ignored"]
fn lab_check_on_the_switch_topology_agrees_on_every_pair_and_passes_the_teardown_scenarios() {
    let out = p2pdma()
        .args(["lab", "check", "--quiet", "--topology", "switch", "--json"])
        .output()
        .expect("p2pdma runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- stdout:\n{stdout}\n--- stderr:\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("one JSON document");
    let s = &report["summary"];
    let total = s["pairs_total"].as_u64().unwrap();
    // switch: two controllers, each CMB paired with both namespaces.
    assert_eq!(total, 4, "{s}");
    assert_eq!(s["pairs_agreeing"].as_u64(), Some(total), "{s}");
    assert_eq!(
        (s["copies_verified"].as_u64(), s["copies_total"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(s["scenarios_total"].as_u64(), Some(2), "{s}");
    assert_eq!(s["scenarios_passed"], s["scenarios_total"], "{report:#}");
    assert_eq!(s["kernel_warnings"].as_u64(), Some(0), "{report:#}");
    assert_eq!(s["passed"], true, "{report:#}");
    assert!(out.status.success(), "exit {:?}", out.status);
    // The guest's kernel is the release that was asked for.
    let release = report["kernel"]["release"].as_str().unwrap();
    let wanted = std::env::var("P2PDMA_LAB_RELEASE").unwrap_or_else(|_| "6.12".into());
    assert!(
        release.starts_with(&format!("{wanted}.")),
        "booted {release}"
    );
    // Switch pairs are P2P by bus address, and the copy went device to device.
    let topology = &report["topologies"][0];
    assert_eq!(topology["copy"]["mode"], "p2p", "{topology:#}");
    for pair in topology["conformance"]["pairs"].as_array().unwrap() {
        assert_eq!(pair["kernel"], "allowed", "{pair}");
        assert_eq!(pair["map_type"], "bus_addr", "{pair}");
    }
}

#[test]
fn lab_check_refuses_an_unknown_topology_before_booting_anything() {
    let out = p2pdma()
        .args([
            "lab",
            "check",
            "--topology",
            "nope",
            "--kernel",
            "/nonexistent/bzImage",
        ])
        .output()
        .expect("p2pdma runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unknown topology 'nope'"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(out.stdout.is_empty());
}
