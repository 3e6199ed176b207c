//! p2pmem buffers and the probe against a real kernel, in the QEMU lab.
//!
//! Each test boots a lab topology with `p2pdma lab run` and runs this same static
//! binary inside the guest (`p2pdma mem test`, `p2pdma probe`), then checks the JSON it
//! printed. Controllers are found by the serial numbers of lab/topologies.toml (the
//! harness's `bdf SERIAL` and `ns SERIAL`).

use serde_json::Value;

use crate::harness::{
    assert_removal_revoked_both_buffers, assert_unbind_revoked_both_buffers, lab_release,
    p2p_refusal_errno, Flavour, Lab, LabRun,
};

/// A guest on `topology`, the standard kernel, with 300 s for the script.
fn lab(topology: &str) -> Lab {
    Lab::new(topology, Flavour::Standard).args(&["--timeout", "300"])
}

/// The JSON objects the guest printed, one per line starting with `{` or `[`, in order.
fn json_lines(run: &LabRun) -> Vec<Value> {
    let values: Vec<Value> = run
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('{') || l.starts_with('['))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect();
    assert!(
        !values.is_empty(),
        "no JSON in the guest's output\nstdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    values
}

fn u64_at(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} is not a number in {v}"))
}

#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn allocations_take_their_rounded_length_from_the_pool_and_hold_a_pattern() {
    let run = lab("switch")
        .run("p2pdma mem info --json; p2pdma mem test $(bdf sw0) --buffers 3 --size 100000 --json");
    let values = json_lines(&run);
    run.assert_success();
    let pools = values[0].as_array().expect("mem info prints an array");
    assert_eq!(pools.len(), 2, "switch has two CMB providers: {pools:?}");
    for pool in pools {
        assert_eq!(u64_at(pool, "/size"), 16 << 20, "{pool}");
        assert!(u64_at(pool, "/available") <= 16 << 20, "{pool}");
    }

    let report = &values[1];
    let page = 4096;
    let rounded = 100_000u64.div_ceil(page) * page;
    let before = u64_at(report, "/available_before");
    let allocations = report["allocations"].as_array().unwrap();
    assert_eq!(allocations.len(), 3);
    for (i, a) in allocations.iter().enumerate() {
        assert_eq!(u64_at(a, "/len"), rounded, "buffer {i}");
        assert_eq!(
            u64_at(a, "/available_after"),
            before - rounded * (i as u64 + 1),
            "buffer {i} must take exactly its rounded length from the pool"
        );
    }
    assert_eq!(u64_at(report, "/pattern_bytes"), rounded * 3);
    assert!(report["pattern_mismatch"].is_null(), "{report}");
    assert_eq!(
        u64_at(report, "/available_after"),
        before,
        "dropping the buffers must return every byte"
    );
    assert_eq!(report["passed"], true, "{report}");
}

#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn an_exhausted_pool_says_how_many_bytes_are_free() {
    let run = lab("switch").run("p2pdma mem test $(bdf sw1) --size 4194304 --exhaust --json");
    let values = json_lines(&run);
    run.assert_success();
    let report = &values[0];
    let exhaustion = &report["exhaustion"];
    assert_eq!(exhaustion["error_kind"], "pool-exhausted", "{report}");
    let free = u64_at(exhaustion, "/available_reported");
    assert!(
        free < 4 << 20,
        "the pool refused 4 MiB with {free} bytes free"
    );
    // 16 MiB CMB: one buffer held by the test plus the extra ones fill it.
    let held = 1 + u64_at(exhaustion, "/extra_buffers");
    assert_eq!(
        held,
        u64_at(report, "/available_before") / (4 << 20),
        "{report}"
    );
    let message = exhaustion["error"].as_str().unwrap();
    assert!(
        message.contains(&format!("{free} bytes free")) && message.contains("4194304"),
        "{message}"
    );
    assert_eq!(
        u64_at(report, "/available_after"),
        u64_at(report, "/available_before")
    );
}

/// Issue 4: unbinding the provider while buffers are mapped must turn the next CPU
/// access into `Revoked`, not a SIGBUS that kills the process.
#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn unbinding_the_provider_revokes_mapped_buffers_and_the_process_survives() {
    let run = lab("switch")
        .run("p2pdma mem test $(bdf sw0) --buffers 2 --unbind-after-map --json; echo exit=$?");
    let values = json_lines(&run);
    assert!(
        run.stdout.contains("exit=0"),
        "p2pdma did not survive the unbind:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    assert_unbind_revoked_both_buffers(&values[0], "nvme");
}

/// Issue 4, the hot-unplug path: QEMU deletes the provider (the guest's pciehp powers the
/// slot off and removes the device) while two buffers are mapped.
#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn hot_removing_the_provider_revokes_mapped_buffers_and_the_process_survives() {
    let run = lab("switch")
        .args(&["--fault", "device_del:nvme-a@signal:mapped"])
        .run(
            r#"B=$(bdf sw0)
            p2pdma mem test $B --buffers 2 --size 65536 --json --while-mapped \
              "p2pdma lab guest signal mapped; i=0; while [ -e /sys/bus/pci/devices/$B ] && [ \$i -lt 60 ]; do sleep 1; i=\$((i+1)); done"
            echo exit=$?
            [ -e /sys/bus/pci/devices/$B ] && echo provider-still-present"#,
        );
    let values = json_lines(&run);
    assert!(
        run.stdout.contains("exit=0") && !run.stdout.contains("provider-still-present"),
        "the provider must be gone and p2pdma alive:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    assert_removal_revoked_both_buffers(&values[0]);
}

/// The same check with nothing happening to the provider: the buffers keep their data.
#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn buffers_keep_their_data_while_a_harmless_command_runs() {
    let run = lab("switch")
        .run("p2pdma mem test $(bdf sw1) --buffers 2 --size 65536 --json --while-mapped 'sleep 1'");
    let values = json_lines(&run);
    run.assert_success();
    let after = &values[0]["while_mapped"];
    assert_eq!(after["is_live_after"], true);
    assert_eq!(
        after["read_results"],
        serde_json::json!(["intact", "intact"])
    );
    assert_eq!(u64_at(after, "/sigbus_revocations"), 0);
}

#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn probe_reports_ok_behind_a_switch_and_refusal_across_the_root_bus() {
    let run = lab("mixed").run(
        "p2pdma probe --json --provider $(bdf sw0) $(ns sw1); \
         p2pdma probe --json --provider $(bdf sw0) $(ns root0); \
         p2pdma probe --provider $(bdf sw0) $(ns root0); echo exit=$?",
    );
    let values = json_lines(&run);
    run.assert_success();
    assert_eq!(values.len(), 2, "{}", run.stdout);
    let (ok, refused) = (&values[0], &values[1]);
    assert_eq!(ok["result"], "ok", "{ok}");
    assert_eq!(u64_at(ok, "/bytes_read"), u64_at(ok, "/bytes"));
    assert_eq!(ok["matches_host_read"], true, "{ok}");
    assert_eq!(refused["result"], "p2p-refused", "{refused}");
    let (errno, name) = p2p_refusal_errno();
    assert_eq!(
        u64_at(refused, "/errno") as i64,
        errno,
        "{name} on the {} kernel",
        lab_release()
    );
    assert!(
        run.stdout
            .contains("p2p-refused, the kernel will not do P2P DMA")
            && run.stdout.contains("exit=3"),
        "{}",
        run.stdout
    );
}

#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn probe_cannot_run_without_p2pmem_and_says_why() {
    let run = lab("mixed").run("p2pdma probe --provider $(bdf nocmb0) $(ns sw0); echo exit=$?");
    assert!(
        run.stdout.contains("exit=1"),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(
        all.contains("has no p2pmem") && all.contains("no Controller Memory Buffer"),
        "{all}"
    );
}

/// On the root bus with an AMD family 0x17 CPU the kernel allows P2P through the host
/// bridge (the same pair is refused under the q35's Intel host bridge).
#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn probe_reports_ok_through_an_amd_host_bridge() {
    let run = lab("rootbus-amd").run("p2pdma probe --json --provider $(bdf root0) $(ns root1)");
    let values = json_lines(&run);
    run.assert_success();
    assert_eq!(values[0]["result"], "ok", "{}", values[0]);
    assert_eq!(values[0]["matches_host_read"], true, "{}", values[0]);
}
