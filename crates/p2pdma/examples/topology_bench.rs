//! Times the topology engine: reading a synthetic sysfs tree of 4,096 PCI functions,
//! the full verdict matrix on it, provider choice, and reading this machine's /sys.
//!
//! Run with: `cargo run --release -p p2pdma --example topology_bench`
//! Prints min / median / max over repeated runs (no outlier removal).

use std::time::{Duration, Instant};

use p2pdma::host::{HostFacts, KernelP2pdma};
use p2pdma::pci::{PciTree, ACS_RR};
use p2pdma::sysfs::builder::{FunctionSpec as F, SysfsBuilder};
use p2pdma::sysfs::SysfsRoot;
use p2pdma::topology::{MapType, Topology};
use p2pdma::Bdf;

const FUNCTIONS: usize = 4096;

/// Domains of 7 root ports, each root port with a switch of 32 downstream ports and one
/// NVMe per port; every 4th NVMe has p2pmem and every 5th downstream port redirects
/// with ACS. Stops at exactly `FUNCTIONS` functions.
fn build(dir: &std::path::Path) -> std::io::Result<usize> {
    let mut b = SysfsBuilder::new(dir)?;
    let mut count = 0usize;
    let mut nvme = 0usize;
    'outer: for domain in 0u32.. {
        let d = |bus: u32, dev: u32, f: u32| format!("{domain:04x}:{bus:02x}:{dev:02x}.{f}");
        b.add(None, &d(0, 0, 0), F::host_bridge(0x8086, 0x2030))?;
        count += 1;
        for rp_i in 0..7u32 {
            if count >= FUNCTIONS {
                break 'outer;
            }
            let base = 1 + rp_i * 34;
            let rp = b.add(None, &d(0, rp_i + 1, 0), F::root_port().link(16.0, 16))?;
            let up = b.add(
                Some(rp),
                &d(base, 0, 0),
                F::switch_upstream().link(16.0, 16),
            )?;
            count += 2;
            for port in 0..32u32 {
                if count >= FUNCTIONS {
                    break 'outer;
                }
                let acs = if port % 5 == 4 { ACS_RR } else { 0 };
                let dn = b.add(
                    Some(up),
                    &d(base + 1, port, 0),
                    F::switch_downstream().acs(acs),
                )?;
                count += 1;
                if count >= FUNCTIONS {
                    break 'outer; // an empty downstream port makes the count exact
                }
                let mut spec = F::nvme().link(8.0, 4);
                if nvme.is_multiple_of(4) {
                    spec = spec.p2pmem(64 << 20);
                }
                b.add(Some(dn), &d(base + 2 + port, 0, 0), spec)?;
                nvme += 1;
                count += 1;
            }
        }
        if count >= FUNCTIONS {
            break;
        }
    }
    b.host_facts(&HostFacts {
        cpu_vendor: Some("GenuineIntel".into()),
        cpu_family: Some(6),
        kernel_release: Some("synthetic".into()),
        p2pdma_config: KernelP2pdma::Yes,
        p2pdma_config_source: "synthetic".into(),
        origin: "synthetic".into(),
    })?;
    Ok(count)
}

fn stats(name: &str, mut samples: Vec<Duration>, what: &str) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<44} min {:>9.3} ms  median {:>9.3} ms  max {:>9.3} ms  ({} runs; {what})",
        ms(samples[0]),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1]),
        samples.len()
    );
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Vec<Duration>, T) {
    let mut samples = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        last = Some(std::hint::black_box(f()));
        samples.push(t.elapsed());
    }
    (samples, last.expect("runs > 0"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let count = build(dir.path())?;
    let root = SysfsRoot::new(dir.path());

    let (samples, tree) = time(5, || PciTree::read(&root).expect("synthetic tree reads"));
    assert_eq!(tree.functions.len(), count);
    stats(
        "read synthetic tree (4,096 functions)",
        samples,
        "PciTree::read from a tempdir, page cache warm",
    );

    let providers: Vec<Bdf> = tree.providers().map(|f| f.bdf).collect();
    let all: Vec<Bdf> = tree.functions.keys().copied().collect();
    let nvme: Vec<Bdf> = tree.iter().filter(|f| f.is_nvme()).map(|f| f.bdf).collect();

    let (samples, cells) = time(10, || {
        let topo = Topology::new(&tree);
        topo.matrix(&providers, &all)
    });
    let pairs = providers.len() * all.len();
    let mut counts = [0usize; 3];
    for cell in cells.iter().flatten().flatten() {
        counts[match cell.map_type {
            MapType::BusAddr => 0,
            MapType::ThruHostBridge => 1,
            MapType::NotSupported => 2,
        }] += 1;
    }
    stats(
        "matrix: all providers x all functions",
        samples,
        &format!(
            "{} x {} = {pairs} pairs incl. indexing; bus {} / host bridge {} / refused {}",
            providers.len(),
            all.len(),
            counts[0],
            counts[1],
            counts[2]
        ),
    );

    let (samples, _) = time(10, || Topology::new(&tree));
    stats(
        "  of which indexing (Topology::new)",
        samples,
        "chains, ACS, whitelist",
    );

    let (samples, _) = time(5, || {
        let topo = Topology::new(&tree);
        topo.matrix(&nvme, &nvme)
    });
    stats(
        "matrix: all NVMe x all NVMe",
        samples,
        &format!("{} x {} pairs", nvme.len(), nvme.len()),
    );

    let topo = Topology::new(&tree);
    let (samples, _) = time(20, || topo.verdict(providers[0], nvme[nvme.len() - 1]));
    stats(
        "one full verdict (path, reasons, bottleneck)",
        samples,
        "indexed tree",
    );

    let clients = [nvme[1], nvme[2], nvme[3]];
    let (samples, choice) = time(20, || topo.choose_provider(&clients).expect("a provider"));
    stats(
        "choose provider for 3 clients",
        samples,
        &format!("{} candidates, picked {}", providers.len(), choice.provider),
    );

    let (samples, facts) = time(20, || HostFacts::live(std::path::Path::new("/"), None));
    stats(
        "host facts from /proc (part of reading /sys)",
        samples,
        &format!("CONFIG_PCI_P2PDMA from {}", facts.p2pdma_config_source),
    );

    let live = SysfsRoot::default();
    match PciTree::read(&live) {
        Ok(tree) => {
            let n = tree.functions.len();
            let (samples, _) = time(20, || PciTree::read(&live).expect("read /sys"));
            stats(
                "read this machine's /sys",
                samples,
                &format!("{n} PCI functions, incl. host facts from /proc"),
            );
        }
        Err(e) => println!("read this machine's /sys: skipped: {e}"),
    }
    Ok(())
}
