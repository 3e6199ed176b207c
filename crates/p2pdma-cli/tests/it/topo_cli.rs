//! `p2pdma topo` and `p2pdma snapshot` on the lab snapshots kept as fixtures (no VM).

use std::process::Command;

use serde_json::Value;

use crate::util::{fixture, p2pdma, stderr, stdout};

#[test]
fn tree_marks_providers_and_acs_redirect() {
    let o = p2pdma(&fixture("acs"), &["topo"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("0000:00:01.0 1b36:000c root port [ACS redirect RR+CR]"),
        "{text}"
    );
    assert!(
        text.contains("0000:01:00.0 1b36:0010 NVMe (nvme0 serial mf0) [p2pmem"),
        "{text}"
    );
    assert!(text.contains("CONFIG_PCI_P2PDMA yes"), "{text}");
}

#[test]
fn matrix_of_the_mixed_topology() {
    let o = p2pdma(&fixture("mixed"), &["topo", "--matrix"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .take(5)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["nvme0", "nvme1", "nvme2", "nvme3"]);
    assert_eq!(rows[1], ["nvme0*", "X", "NO5", "NO5", "NO3"]);
    assert_eq!(rows[2], ["nvme1*", "NO5", "X", "BUS4", "NO6"]);
    assert_eq!(rows[3], ["nvme2*", "NO5", "BUS4", "X", "NO6"]);
    assert_eq!(rows[4], ["nvme3", "NO3", "NO6", "NO6", "X"]);
    assert!(text.contains("Legend"), "{text}");

    let o = p2pdma(&fixture("mixed"), &["topo", "--matrix", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("matrix JSON");
    assert_eq!(v["devices"].as_array().unwrap().len(), 4);
    assert_eq!(v["cells"][1][2]["map_type"], "bus_addr");
    assert_eq!(v["cells"][1][2]["distance"], 4);
}

#[test]
fn explain_names_the_kernels_acs_fix_and_exits_3_when_refused() {
    let o = p2pdma(
        &fixture("acs"),
        &["topo", "--explain", "0000:01:00.0", "/dev/nvme1n1"],
    );
    // 3: refused by the kernel's rules (2 is clap's usage error).
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("P2P REFUSED"), "{text}");
    assert!(
        text.contains("pci=disable_acs_redir=0000:00:01.0"),
        "{text}"
    );

    let o = p2pdma(
        &fixture("switch"),
        &["topo", "--explain", "0000:03:00.0", "nvme1n1", "--json"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("explain JSON");
    assert_eq!(v["p2p"], true);
    assert_eq!(v["verdict"]["map_type"], "bus_addr");
    assert_eq!(v["verdict"]["distance"], 4);
    assert_eq!(v["client"]["block_device"], "nvme1n1");
    assert_eq!(v["verdict"]["path"].as_array().unwrap().len(), 5);
}

#[test]
fn pictures_draw_the_path() {
    let o = p2pdma(
        &fixture("switch"),
        &["topo", "--explain", "0000:03:00.0", "0000:04:00.0", "--dot"],
    );
    let dot = stdout(&o);
    assert!(dot.starts_with("digraph pci {"), "{dot}");
    assert!(
        dot.contains("\"0000:01:00.0\" -> \"0000:02:01.0\" [color=red, penwidth=3];"),
        "{dot}"
    );
    assert!(
        !dot.contains("\"pci0000:00\" -> \"0000:00:1f.0\" [color=red"),
        "{dot}"
    );

    let o = p2pdma(
        &fixture("switch"),
        &["topo", "--explain", "0000:03:00.0", "0000:04:00.0", "--svg"],
    );
    let svg = stdout(&o);
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    assert_eq!(
        svg.matches("stroke=\"red\" stroke-width=\"4\"").count(),
        4,
        "four path edges"
    );
}

#[test]
fn choose_prefers_the_clients_own_memory() {
    let o = p2pdma(
        &fixture("mixed"),
        &["topo", "--choose", "/dev/nvme2n1", "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["provider"], "0000:04:00.0");
    assert_eq!(v["distance"], 0);
}

#[test]
fn snapshot_of_a_snapshot_gives_the_same_json_and_can_drop_serials() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("snap");
    let o = p2pdma(
        &fixture("cascade"),
        &["snapshot", out.to_str().unwrap(), "--no-serials"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let before: Value =
        serde_json::from_slice(&p2pdma(&fixture("cascade"), &["topo", "--json"]).stdout).unwrap();
    let after: Value = serde_json::from_slice(&p2pdma(&out, &["topo", "--json"]).stdout).unwrap();
    assert_eq!(before["host"]["cpu_vendor"], after["host"]["cpu_vendor"]);
    let strip = |mut v: Value| {
        for f in v["functions"].as_object_mut().unwrap().values_mut() {
            for c in f["nvme"].as_array_mut().unwrap() {
                c["serial"] = Value::Null;
            }
        }
        v["functions"].clone()
    };
    assert_eq!(strip(before), after["functions"].clone());
    assert!(!stdout(&p2pdma(&out, &["topo"])).contains("cas-a0"));
}

#[test]
fn bad_input_gets_one_clear_line() {
    let o = p2pdma(
        &fixture("switch"),
        &["topo", "--explain", "0000:03:00.0", "/dev/nvme9n1"],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("'/dev/nvme9n1' is not a PCI address, an NVMe device"),
        "{err}"
    );

    let o = p2pdma(
        &fixture("switch"),
        &["topo", "--explain", "0000:07:00.0", "nvme0n1"],
    );
    assert!(
        stderr(&o).contains("no PCI function 0000:07:00.0"),
        "{}",
        stderr(&o)
    );

    let empty = tempfile::tempdir().unwrap();
    let o = p2pdma(empty.path(), &["topo"]);
    assert!(
        stderr(&o).contains("has no bus/pci/devices directory"),
        "{}",
        stderr(&o)
    );

    // A corrupt attribute names the file.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("switch");
    assert!(Command::new("cp")
        .args(["-a"])
        .arg(fixture("switch"))
        .arg(&copy)
        .status()
        .unwrap()
        .success());
    let vendor = copy.join("devices/pci0000:00/0000:00:01.0/0000:01:00.0/vendor");
    std::fs::write(&vendor, "garbage\n").unwrap();
    let o = p2pdma(&copy, &["topo"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("0000:01:00.0/vendor: unexpected content \"garbage\""),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// Output snapshot: the tree and an explanation of the `switch` fixture, byte for byte.
#[test]
fn switch_tree_and_explain_text_are_stable() {
    let tree = p2pdma(&fixture("switch"), &["topo"]);
    assert_eq!(stdout(&tree), EXPECTED_SWITCH_TREE);
    let explain = p2pdma(
        &fixture("switch"),
        &["topo", "--explain", "0000:03:00.0", "/dev/nvme1n1"],
    );
    assert_eq!(stdout(&explain), EXPECTED_SWITCH_EXPLAIN);
}

const EXPECTED_SWITCH_TREE: &str = r#"CPU: AuthenticAMD family 0xf (does not route P2P between root ports unless the host bridge is whitelisted)
kernel 6.12.117: CONFIG_PCI_P2PDMA yes (0000:03:00.0 has a p2pmem directory)
pci0000:00 (host bridge 0000:00:00.0 8086:29c0)
├─ 0000:00:00.0 8086:29c0 host bridge
├─ 0000:00:01.0 1b36:000c root port 2.5GT/s x1 (capable of 8GT/s x4) (pcieport)
│  └─ 0000:01:00.0 104c:8232 switch upstream port 2.5GT/s x1 (pcieport)
│     ├─ 0000:02:00.0 104c:8233 switch downstream port 2.5GT/s x1 (pcieport)
│     │  └─ 0000:03:00.0 1b36:0010 NVMe (nvme0 serial sw0) [p2pmem 15.9 MiB free of 16 MiB] 2.5GT/s x1 (nvme)
│     └─ 0000:02:01.0 104c:8233 switch downstream port 2.5GT/s x1 (pcieport)
│        └─ 0000:04:00.0 1b36:0010 NVMe (nvme1 serial sw1) [p2pmem 15.9 MiB free of 16 MiB] 2.5GT/s x1 (nvme)
├─ 0000:00:1f.0 8086:2918 device
├─ 0000:00:1f.2 8086:2922 SATA
└─ 0000:00:1f.3 8086:2930 device
legend: [p2pmem ...] P2P memory provider; [ACS redirect RR+CR+EC] sends peer traffic up to the root complex
"#;

const EXPECTED_SWITCH_EXPLAIN: &str = r#"provider: 0000:03:00.0 = 0000:03:00.0 1b36:0010 NVMe (nvme0 serial sw0)
client:   /dev/nvme1n1 = 0000:04:00.0 1b36:0010 NVMe (nvme1 serial sw1)
rules:    Linux 6.12 rules (kernel 6.12.117)
verdict:  P2P works; by topology: direct (bus address) (PCI_P2PDMA_MAP_BUS_ADDR), distance 4
path:     0000:03:00.0 -> 0000:02:00.0 -> 0000:01:00.0 (common upstream bridge) -> 0000:02:01.0 -> 0000:04:00.0
slowest link: 2.5 GT/s x1 above 0000:03:00.0 = 0.25 GB/s per direction
"#;

/// The `rootbus` fixture with its host bridge turned into an Intel DSA (8086:0b25), which
/// Linux 7.2's whitelist has and 6.12's does not.
#[test]
fn kernel_release_chooses_the_rules_a_verdict_follows() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("rootbus");
    assert!(Command::new("cp")
        .args(["-a"])
        .arg(fixture("rootbus"))
        .arg(&copy)
        .status()
        .unwrap()
        .success());
    std::fs::write(
        copy.join("devices/pci0000:00/0000:00:00.0/device"),
        "0x0b25\n",
    )
    .unwrap();
    let explain = |release: Option<&str>| {
        let mut args = vec![
            "topo",
            "--explain",
            "0000:00:04.0",
            "0000:00:05.0",
            "--json",
        ];
        if let Some(r) = release {
            args.extend(["--kernel-release", r]);
        }
        let o = p2pdma(&copy, &args);
        let v: Value = serde_json::from_slice(&o.stdout).expect("explain JSON");
        let verdict = v.get("verdict").unwrap_or(&v).clone();
        (
            verdict["map_type"].as_str().unwrap().to_owned(),
            verdict["rules"].as_str().unwrap().to_owned(),
        )
    };
    // The snapshot says 6.12.117: refused, as that kernel would.
    let (map, rules) = explain(None);
    assert_eq!(map, "not_supported");
    assert!(
        rules.starts_with("Linux 6.12 rules (kernel 6.12.117)"),
        "{rules}"
    );
    let (map, rules) = explain(Some("7.2.13+deb14-amd64"));
    assert_eq!(map, "thru_host_bridge");
    assert!(rules.starts_with("Linux 7.2 rules"), "{rules}");
    let (map, rules) = explain(Some("9.1.0"));
    assert_eq!(map, "thru_host_bridge");
    assert!(rules.contains("newer than any p2pdma has read"), "{rules}");
}

/// Issue 7: a provider that is not an NVMe (the lab's ivshmem-plain RAM, class 0x0500) is
/// marked in the tree, gets a matrix row of its own, and competes in the provider choice
/// by the kernel's rule like any other.
#[test]
fn a_ram_provider_is_a_provider_like_any_cmb() {
    let o = p2pdma(&fixture("fast"), &["topo"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("0000:05:00.0 1af4:1110 RAM [p2pmem 256 MiB free of 256 MiB] (p2pdma_ram)"),
        "{text}"
    );

    let o = p2pdma(&fixture("fast"), &["topo", "--matrix"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .take(4)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["nvme0", "nvme1", "0000:05:00.0"]);
    assert_eq!(rows[3], ["0000:05:00.0*", "BUS4", "BUS4", "X"]);

    let o = p2pdma(&fixture("fast"), &["mem", "info", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pools: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(pools[2]["provider"], "0000:05:00.0");
    assert_eq!(pools[2]["size"], 256 << 20);
    assert_eq!(pools[2]["published"], true);

    // The kernel's pci_p2pmem_find_many() rule: total distance to the clients, so each
    // controller's own CMB (4) beats the RAM behind a third port (8).
    let o = p2pdma(
        &fixture("fast"),
        &["topo", "--choose", "0000:03:00.0", "0000:04:00.0"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("provider: 0000:03:00.0"), "{text}");
    assert!(
        text.contains("candidate 0000:05:00.0: total distance 8"),
        "{text}"
    );
}

#[test]
fn host_facts_name_the_stable_fix_an_older_release_lacks() {
    // The fixture's own kernel (6.12.117) has the removal-hang fix: nothing is said.
    let o = p2pdma(&fixture("switch"), &["topo"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains("6220694c52a5"), "{}", stdout(&o));
    let o = p2pdma(&fixture("switch"), &["mem", "info"]);
    assert!(!stderr(&o).contains("note:"), "{}", stderr(&o));

    // 6.12.40 predates the 6.12.75 backport.
    let old = ["--kernel-release", "6.12.40"];
    let o = p2pdma(&fixture("switch"), &[&old[..], &["topo"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("kernel 6.12.40 lacks commit 6220694c52a5 \"PCI/P2PDMA: Release per-CPU pgmap ref when vm_insert_page() fails\""),
        "{text}"
    );
    let o = p2pdma(
        &fixture("switch"),
        &[&old[..], &["topo", "--json"]].concat(),
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["host_notes"]["fixes"][0]["fix"]["commit"], "6220694c52a5");
    assert_eq!(v["host_notes"]["fixes"][0]["status"]["status"], "lacks");
    assert!(v["functions"].is_object() && v["host"].is_object());
    let o = p2pdma(&fixture("switch"), &[&old[..], &["mem", "info"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with("p2pdma: note: kernel 6.12.40 lacks commit 6220694c52a5"),
        "{}",
        stderr(&o)
    );
}
