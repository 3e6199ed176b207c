//! The lab itself: every shipped topology boots and looks, from inside the guest, the way
//! its TOML says; failures of the lab are clear and never hang.
//!
//! Tests that boot QEMU are `#[ignore]`d with the reason, so a plain `cargo test` never
//! starts a VM; README's test command runs them with `--include-ignored`.

use std::collections::HashMap;
use std::path::PathBuf;

use p2pdma_lab::spec::{BridgeKind, Catalog, Topology};

use crate::harness::{p2p_refusal_errno, p2pdma, Flavour, Lab};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Prints, for every NVMe controller, `nvme SERIAL BDF CHAIN P2PMEM_SIZE PUBLISHED`, where
/// CHAIN is the comma-separated BDFs from the root bus down to the controller; for every
/// ivshmem-plain RAM device (1af4:1110), `ram BDF CHAIN P2PMEM_SIZE PUBLISHED DRIVER`; and for
/// every bridge `bridge BDF MAX_SPEED MAX_WIDTH` (the link capability: QEMU's NVMe
/// endpoints train at 2.5 GT/s x1 whatever the port offers, so the current link says
/// nothing about the topology file).
const DESCRIBE_GUEST: &str = r#"
for c in /sys/class/nvme/nvme*; do
  serial=$(cat $c/serial | tr -d ' ')
  dev=$(readlink -f $c/device)
  bdf=$(basename $dev)
  chain=$(echo $dev | tr '/' '\n' | grep -E '^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$' | paste -sd, -)
  if [ -d $dev/p2pmem ]; then size=$(cat $dev/p2pmem/size); pub=$(cat $dev/p2pmem/published); else size=none; pub=none; fi
  echo "nvme $serial $bdf $chain $size $pub"
done
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/vendor):$(cat $d/device)" = 0x1af4:0x1110 ] || continue
  dev=$(readlink -f $d)
  chain=$(echo $dev | tr '/' '\n' | grep -E '^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$' | paste -sd, -)
  if [ -d $dev/p2pmem ]; then size=$(cat $dev/p2pmem/size); pub=$(cat $dev/p2pmem/published); else size=none; pub=none; fi
  drv=none; [ -e $dev/driver ] && drv=$(basename $(readlink $dev/driver))
  echo "ram $(basename $dev) $chain $size $pub $drv"
done
for d in /sys/bus/pci/devices/*; do
  case $(cat $d/class) in 0x0604*)
    echo "bridge $(basename $d) $(cat $d/max_link_speed 2>/dev/null | tr ' ' _) $(cat $d/max_link_width 2>/dev/null)";;
  esac
done
"#;

#[derive(Debug)]
struct GuestNvme {
    chain: Vec<String>,
    p2pmem_size: Option<u64>,
    published: Option<bool>,
}

/// An ivshmem-plain RAM device as the guest sees it.
#[derive(Debug)]
struct GuestRam {
    bdf: String,
    chain: Vec<String>,
    p2pmem_size: Option<u64>,
    published: Option<bool>,
    driver: String,
}

struct Guest {
    nvmes: HashMap<String, GuestNvme>,
    rams: Vec<GuestRam>,
    bridges: HashMap<String, (String, String)>,
}

fn describe(topology: &str) -> Guest {
    let out = Lab::new(topology, Flavour::Standard).run(DESCRIBE_GUEST);
    out.assert_success();
    let mut nvmes = HashMap::new();
    let mut rams = Vec::new();
    let mut bridges = HashMap::new();
    for line in out.stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["nvme", serial, _bdf, chain, size, published] => {
                nvmes.insert(
                    serial.to_string(),
                    GuestNvme {
                        chain: chain.split(',').map(str::to_owned).collect(),
                        p2pmem_size: size.parse().ok(),
                        published: (*published != "none").then(|| *published == "1"),
                    },
                );
            }
            ["ram", bdf, chain, size, published, driver] => rams.push(GuestRam {
                bdf: bdf.to_string(),
                chain: chain.split(',').map(str::to_owned).collect(),
                p2pmem_size: size.parse().ok(),
                published: (*published != "none").then(|| *published == "1"),
                driver: driver.to_string(),
            }),
            ["bridge", bdf, speed, width] => {
                bridges.insert(bdf.to_string(), (speed.to_string(), width.to_string()));
            }
            _ => {}
        }
    }
    Guest {
        nvmes,
        rams,
        bridges,
    }
}

/// The chain of bridge ids from the root bus down to `parent`.
fn bridge_chain<'a>(topology: &'a Topology, mut parent: &'a str) -> Vec<String> {
    let mut chain = Vec::new();
    while parent != "pcie.0" {
        let bridge = topology
            .spec
            .bridge
            .iter()
            .find(|b| b.id == parent)
            .expect("validated topology");
        chain.push(bridge.id.clone());
        parent = &bridge.parent;
    }
    chain.reverse();
    chain
}

fn check_topology_in_guest(name: &str) {
    let catalog = Catalog::load(None, &[]).unwrap();
    let topology = catalog.get(name).unwrap();
    let Guest {
        nvmes,
        mut rams,
        bridges,
    } = describe(name);
    assert_eq!(
        nvmes.len(),
        topology.spec.nvme.len(),
        "{name}: guest sees {nvmes:?}"
    );
    let mut id_to_bdf: HashMap<String, String> = HashMap::new();
    for nvme in &topology.spec.nvme {
        let guest = nvmes.get(&nvme.serial).unwrap_or_else(|| {
            panic!(
                "{name}: no controller with serial {} in {nvmes:?}",
                nvme.serial
            )
        });
        let expected = bridge_chain(&topology, &nvme.parent);
        assert_eq!(
            guest.chain.len(),
            expected.len() + 1,
            "{name}/{}: chain {:?} does not have the {} bridges {expected:?}",
            nvme.serial,
            guest.chain,
            expected.len()
        );
        for (id, bdf) in expected.iter().zip(&guest.chain) {
            let known = id_to_bdf.entry(id.clone()).or_insert_with(|| bdf.clone());
            assert_eq!(known, bdf, "{name}: bridge {id} appears as two functions");
        }
        if nvme.cmb_mib > 0 {
            assert_eq!(
                guest.p2pmem_size,
                Some(u64::from(nvme.cmb_mib) << 20),
                "{name}/{}: p2pmem size",
                nvme.serial
            );
            assert_eq!(
                guest.published,
                Some(true),
                "{name}/{}: CMB not published",
                nvme.serial
            );
        } else {
            assert_eq!(
                guest.p2pmem_size, None,
                "{name}/{}: has p2pmem without a CMB",
                nvme.serial
            );
        }
    }
    // RAM providers: each declared one is a guest function below the declared bridges,
    // bound to the lab kernel's p2pdma_ram driver, with its whole size published.
    assert_eq!(
        rams.len(),
        topology.spec.ram.len(),
        "{name}: guest RAM devices {rams:?}"
    );
    for ram in &topology.spec.ram {
        let expected = bridge_chain(&topology, &ram.parent);
        let fits = |guest: &GuestRam| {
            guest.chain.len() == expected.len() + 1
                && expected
                    .iter()
                    .zip(&guest.chain)
                    .all(|(id, bdf)| id_to_bdf.get(id).is_none_or(|known| known == bdf))
        };
        let at = rams.iter().position(fits).unwrap_or_else(|| {
            panic!(
                "{name}: no RAM device below {expected:?} (known bridges {id_to_bdf:?}) in {rams:?}"
            )
        });
        let guest = rams.remove(at);
        for (id, bdf) in expected.iter().zip(&guest.chain) {
            id_to_bdf.entry(id.clone()).or_insert_with(|| bdf.clone());
        }
        assert_eq!(
            guest.p2pmem_size,
            Some(u64::from(ram.size_mib) << 20),
            "{name}/{} ({}): p2pmem size",
            ram.id,
            guest.bdf
        );
        assert_eq!(
            guest.published,
            Some(true),
            "{name}/{} ({}): not published",
            ram.id,
            guest.bdf
        );
        assert_eq!(guest.driver, "p2pdma_ram", "{name}/{}", ram.id);
    }
    let distinct: std::collections::HashSet<_> = id_to_bdf.values().collect();
    assert_eq!(
        distinct.len(),
        id_to_bdf.len(),
        "{name}: two bridge ids map to one function: {id_to_bdf:?}"
    );
    assert_eq!(
        bridges.len(),
        topology.spec.bridge.len(),
        "{name}: guest bridges {bridges:?}"
    );
    for bridge in &topology.spec.bridge {
        let Some(bdf) = id_to_bdf.get(&bridge.id) else {
            continue;
        };
        let (speed, width) = &bridges[bdf];
        if let Some(s) = bridge.speed {
            let want = match s {
                p2pdma_lab::spec::LinkSpeed::Gen1 => "2.5_GT/s_PCIe",
                p2pdma_lab::spec::LinkSpeed::Gen2 => "5.0_GT/s_PCIe",
                p2pdma_lab::spec::LinkSpeed::Gen3 => "8.0_GT/s_PCIe",
                p2pdma_lab::spec::LinkSpeed::Gen4 => "16.0_GT/s_PCIe",
            };
            assert_eq!(speed, want, "{name}: {} link speed", bridge.id);
        }
        if let Some(w) = bridge.width {
            assert_eq!(width, &w.to_string(), "{name}: {} link width", bridge.id);
        }
        assert!(
            bridge.kind != BridgeKind::RootPort || bdf.starts_with("0000:00:"),
            "{name}: root port {} is not on the root bus: {bdf}",
            bridge.id
        );
    }
}

macro_rules! topology_tests {
    ($($test:ident => $name:literal),* $(,)?) => {$(
        #[test]
        #[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
        fn $test() {
            check_topology_in_guest($name);
        }
    )*};
}

topology_tests! {
    topology_switch_boots_as_declared => "switch",
    topology_rootbus_boots_as_declared => "rootbus",
    topology_rootbus_amd_boots_as_declared => "rootbus-amd",
    topology_mixed_boots_as_declared => "mixed",
    topology_cascade_boots_as_declared => "cascade",
    topology_acs_boots_as_declared => "acs",
    topology_multifunction_boots_as_declared => "multifunction",
    topology_slow_link_boots_as_declared => "slow-link",
    topology_ext4_boots_as_declared => "ext4",
    topology_fast_boots_as_declared => "fast",
    topology_vfio_boots_as_declared => "vfio",
    topology_vfio_switch_boots_as_declared => "vfio-switch",
}

#[test]
fn every_shipped_topology_has_a_boot_test() {
    let source = include_str!("lab.rs");
    for name in Catalog::load(None, &[]).unwrap().names() {
        assert!(
            source.contains(&format!("=> \"{name}\"")),
            "topology {name} has no boot test in tests/lab/lab.rs"
        );
    }
}

#[test]
fn unknown_topology_is_a_clear_error_without_booting() {
    let out = Lab::new("no-such-topology", Flavour::Standard).try_run("true");
    assert_eq!(out.status, Some(125));
    let err = &out.stderr;
    assert!(err.contains("unknown topology 'no-such-topology'"), "{err}");
    assert!(
        err.contains("switch"),
        "the error lists the known topologies: {err}"
    );
}

#[test]
fn missing_kernel_source_is_a_clear_error() {
    let out = Lab::new("switch", Flavour::Standard)
        .env_remove("P2PDMA_LAB_KERNEL")
        .args(&["--source", "/nonexistent/linux.tar.xz"])
        .try_run("true");
    assert_eq!(out.status, Some(125));
    let err = &out.stderr;
    assert!(err.contains("/nonexistent/linux.tar.xz not found"), "{err}");
    assert!(err.contains("p2pdma lab setup"), "{err}");
}

fn cached_kernel() -> PathBuf {
    let out = p2pdma()
        .args(["lab", "kernel", "--print-path"])
        .output()
        .unwrap();
    assert!(out.status.success(), "lab kernel: {}", text(&out.stderr));
    PathBuf::from(text(&out.stdout).trim())
}

#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn missing_qemu_is_a_clear_error() {
    let kernel = cached_kernel();
    let out = Lab::new("switch", Flavour::Standard)
        .env("PATH", "/nonexistent")
        .args(&["--accel", "tcg", "--kernel", kernel.to_str().unwrap()])
        .try_run("true");
    assert_eq!(out.status, Some(125));
    let err = &out.stderr;
    assert!(err.contains("qemu-system-x86_64 not found"), "{err}");
}

#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn guest_command_status_and_output_come_back() {
    let out =
        Lab::new("switch", Flavour::Standard).run("echo to-stdout; echo to-stderr >&2; exit 7");
    assert_eq!(out.status, Some(7));
    assert_eq!(out.stdout, "to-stdout\n");
    assert_eq!(out.stderr, "to-stderr\n");
}

#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn a_hanging_command_is_killed_at_its_deadline() {
    let started = std::time::Instant::now();
    let out = Lab::new("switch", Flavour::Standard)
        .args(&["--timeout", "3"])
        .try_run("sleep 1000");
    assert_eq!(out.status, Some(125));
    let err = &out.stderr;
    assert!(err.contains("did not finish within 3 s"), "{err}");
    // Before QEMU is killed the guest kernel says where every process sleeps: the
    // command, asleep in nanosleep.
    assert!(
        err.contains("where the guest's processes were sleeping"),
        "{err}"
    );
    let sleep = err
        .split("task:")
        .find(|t| t.starts_with("sleep "))
        .unwrap_or_else(|| panic!("no stack of the sleeping command: {err}"));
    assert!(sleep.contains("nanosleep"), "{sleep}");
    assert!(started.elapsed().as_secs() < 120, "the lab itself hung");
}

#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn a_guest_kernel_panic_is_reported_with_the_panic_line() {
    let out =
        Lab::new("switch", Flavour::Standard).try_run("echo c > /proc/sysrq-trigger; sleep 30");
    assert_eq!(out.status, Some(125));
    let err = &out.stderr;
    assert!(err.contains("the guest kernel panicked"), "{err}");
    assert!(err.contains("Kernel panic - not syncing"), "{err}");
}

#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn files_go_in_and_fetched_files_come_back() {
    let out = Lab::new("switch", Flavour::Standard)
        .file("/root/in.txt", "from the host\n")
        .args(&["--fetch", "/tmp/result"])
        .run("mkdir /tmp/result && tr a-z A-Z < /root/in.txt > /tmp/result/upper.txt");
    out.assert_success();
    let run_dir = out.dir();
    let fetched = std::fs::read_to_string(run_dir.join("fetched/tmp/result/upper.txt")).unwrap();
    assert_eq!(fetched, "FROM THE HOST\n");
    assert!(
        run_dir.join("serial.log").is_file(),
        "the serial log is kept"
    );
}

#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn unbind_and_rebind_inside_the_guest() {
    let out = Lab::new("switch", Flavour::Standard).run(
        "set -e; bdf=$(p2pdma lab guest nvme sw1 | cut -d' ' -f1); p2pdma lab guest unbind sw1; \
         test ! -e /sys/bus/pci/devices/$bdf/p2pmem && echo gone; p2pdma lab guest bind $bdf; \
         i=0; while [ ! -e /sys/bus/pci/devices/$bdf/p2pmem ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
         cat /sys/bus/pci/devices/$bdf/p2pmem/size",
    );
    out.assert_success();
    assert_eq!(out.stdout, "gone\n16777216\n");
}

#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn device_del_on_a_guest_signal_removes_the_controller() {
    let out = Lab::new("switch", Flavour::Standard)
        .args(&["--fault", "device_del:nvme-b@signal:remove-now"])
        .run(
            "set -e; bdf=$(p2pdma lab guest nvme sw1 | cut -d' ' -f1); p2pdma lab guest signal remove-now; \
             i=0; while [ -e /sys/bus/pci/devices/$bdf ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; \
             test ! -e /sys/bus/pci/devices/$bdf && echo removed; ls /sys/class/nvme | wc -l",
        );
    out.assert_success();
    assert_eq!(out.stdout, "removed\n1\n");
}

#[test]
fn readme_test_command_is_what_ci_runs() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    // README's second command: the one line that sets up and runs all tests.
    let test_command = readme
        .lines()
        .find(|l| l.starts_with("cargo run -- lab setup && ") && l.contains("cargo test"))
        .expect("README.md lost the test command");
    for step in [
        "cargo run -- lab kernel --flavour debug",
        "cargo run -- lab kernel --release 7.2",
        "cargo test --workspace -- --include-ignored",
        "P2PDMA_LAB_RELEASE=7.2 cargo test",
    ] {
        assert!(
            test_command.contains(step),
            "README's test command lacks {step:?}"
        );
    }
    assert!(
        ci.lines().any(|l| l.trim() == test_command),
        ".ci/run does not run README's test command"
    );
    // The 7.2 pass picks the kernel-facing suites of the `lab` binary by module path: each
    // filter must name a module (a filter that matches nothing would run nothing).
    let second_pass = &test_command[test_command
        .find("P2PDMA_LAB_RELEASE=7.2 cargo test -p p2pdma-cli --test lab -- ")
        .expect("README's 7.2 pass runs the lab binary")..];
    let modules = include_str!("main.rs");
    for suite in [
        "topology",
        "copy",
        "bad_input",
        "reliability",
        "ram",
        "p2pmem",
        "probe",
    ] {
        assert!(
            second_pass.contains(&format!(" {suite}:: ")),
            "README's 7.2 pass lacks the {suite} suite"
        );
        assert!(
            modules.contains(&format!("\nmod {suite};\n")),
            "tests/lab/main.rs has no module {suite}"
        );
    }
    assert!(second_pass.ends_with(" --skip debug::"), "{second_pass}");
}

/// Writes random data to sw0's namespace, has `p2pdma copy` read it with O_DIRECT into
/// the p2pmem of the *other* controller (sw1's CMB) and write it to a third place (sw1's
/// namespace at an offset), then compares checksums taken independently in the guest.
const P2P_PROOF: &str = r#"
set -e
src=$(p2pdma lab guest nvme SRC | cut -d' ' -f3)
dst=$(p2pdma lab guest nvme DST | cut -d' ' -f3)
provider=$(p2pdma lab guest nvme DST | cut -d' ' -f1)
dd if=/dev/urandom of=$src bs=1M count=4 oflag=direct 2>/dev/null
p2pdma copy $src $dst --provider $provider --length 4M --dst-offset 8M
echo "src $(dd if=$src bs=1M count=4 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
echo "dst $(dd if=$dst bs=1M skip=8 count=4 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
"#;

#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn real_p2p_moves_data_through_another_controllers_cmb() {
    let script = P2P_PROOF.replace("SRC", "sw0").replace("DST", "sw1");
    let out = Lab::new("switch", Flavour::Standard).run(&script);
    out.assert_success();
    let stdout = &out.stdout;
    let sums: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("src ").or_else(|| l.strip_prefix("dst ")))
        .collect();
    assert_eq!(sums.len(), 2, "{stdout}");
    assert_eq!(sums[0], sums[1], "destination differs from source");
    assert_eq!(sums[0].len(), 32);
    assert!(
        stdout.contains("P2P through 0000:04:00.0"),
        "the copy was not P2P through sw1: {stdout}"
    );
}

#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn the_same_copy_on_rootbus_fails_with_the_kernels_p2p_error() {
    let script = P2P_PROOF.replace("SRC", "root0").replace("DST", "root1");
    let out = Lab::new("rootbus", Flavour::Standard).run(&script);
    assert!(!out.success());
    let err = &out.stderr;
    let (_, refusal) = p2p_refusal_errno();
    assert!(
        err.contains(refusal),
        "not the kernel's P2P error ({refusal}): {err}"
    );
    assert!(
        err.contains("not on its P2PDMA whitelist"),
        "the reason is missing: {err}"
    );
    assert!(
        err.contains("0 B of"),
        "the partial-write report is missing: {err}"
    );
}

/// README's first command ends in `lab demo`: every step must run and say what it saw.
#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn the_demo_runs_every_step_and_shows_measured_speed() {
    let dir = tempfile::tempdir().unwrap();
    let out = p2pdma()
        .args(["lab", "demo", "--out"])
        .arg(dir.path().join("run"))
        .output()
        .expect("p2pdma lab demo starts");
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n--- stderr:\n{}",
        text(&out.stderr)
    );
    for step in 1..=9 {
        assert!(
            stdout.contains(&format!("\n== {step}. ")),
            "step {step} missing:\n{stdout}"
        );
    }
    // The bench table ends in its ratio lines, p2p and host, with fio beside.
    let ratios: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("p2pdma/fio throughput"))
        .collect();
    assert_eq!(ratios.len(), 2, "{stdout}");
    assert!(
        ratios[0].contains(" p2p: ") && ratios[1].contains(" host: "),
        "{ratios:?}"
    );
    assert!(stdout.contains("P2P through 0000:"), "{stdout}");
    assert_eq!(stdout.matches("verified: xxh3-128").count(), 2, "{stdout}");
    let sums: Vec<&str> = stdout
        .lines()
        .filter_map(|l| {
            l.strip_prefix("source      ")
                .or_else(|| l.strip_prefix("destination "))
        })
        .collect();
    assert_eq!(sums.len(), 2, "{stdout}");
    assert_eq!(sums[0], sums[1], "{stdout}");
    assert!(
        stdout.contains("Revoked") || stdout.contains("revoked"),
        "{stdout}"
    );
    // Unless the environment chooses another kernel, the demo boots the distribution's
    // own: Debian's stock 7.2, whose release names the Debian ABI.
    let chosen = [
        "P2PDMA_LAB_KERNEL",
        "P2PDMA_LAB_FLAVOUR",
        "P2PDMA_LAB_RELEASE",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
    if !chosen {
        let last = stdout
            .lines()
            .find(|l| l.starts_with("The demo ran every step for real in a "))
            .unwrap_or_else(|| panic!("the closing line is missing:\n{stdout}"));
        assert!(
            last.contains(" 7.2.") && last.contains("+deb") && last.contains("-amd64 guest"),
            "not Debian's stock kernel: {last}"
        );
    }
}
