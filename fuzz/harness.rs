//! The sysfs/snapshot reader fuzz harness, shared by the cargo-fuzz target
//! (`fuzz/fuzz_targets/sysfs_reader.rs`) and the bounded random loop
//! (`cargo run --release -p p2pdma --example fuzz_sysfs -- ITERATIONS`).
//!
//! The input bytes become a small sysfs tree: how many functions, where each hangs,
//! which attribute files exist and what they hold (arbitrary bytes, so also invalid
//! UTF-8, huge numbers, truncated config spaces and broken capability lists). The
//! reader must never panic; when it accepts a tree, every verdict, the matrix and
//! provider choice must run, and a snapshot of the tree must read back identically.

use std::path::Path;

use p2pdma::pci::{parse_config, PciTree};
use p2pdma::sysfs::SysfsRoot;
use p2pdma::topology::Topology;

/// Consumes input bytes; yields zeros once they run out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.byte() as usize).min(max).min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }

    /// Either a plausible value (so deeper code runs) or raw bytes.
    fn attr(&mut self, plausible: &str) -> Option<Vec<u8>> {
        match self.byte() % 16 {
            0 => None,
            1 => Some(self.bytes(24)),
            _ => Some(format!("{plausible}\n").into_bytes()),
        }
    }
}

fn write(path: &Path, content: Option<Vec<u8>>) {
    if let Some(c) = content {
        std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
        std::fs::write(path, c).expect("write");
    }
}

/// Runs one input; returns whether the reader accepted the tree. Panics only on a real bug.
pub fn run(data: &[u8]) -> bool {
    let _ = parse_config(data);

    let mut input = Input(data);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("bus/pci/devices")).expect("mkdir");
    let n = 1 + (input.byte() % 8) as usize;
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    for i in 0..n {
        let bdf = format!(
            "0000:{:02x}:{:02x}.{}",
            i,
            input.byte() % 32,
            input.byte() % 8
        );
        let parent_choice = input.byte() as usize;
        let rel = if dirs.is_empty() || parent_choice.is_multiple_of(3) {
            Path::new("devices/pci0000:00").join(&bdf)
        } else {
            dirs[parent_choice % dirs.len()].join(&bdf)
        };
        let d = root.join(&rel);
        if std::fs::create_dir_all(&d).is_err() {
            continue;
        }
        let class = if input.byte().is_multiple_of(2) {
            "0x060400"
        } else {
            "0x010802"
        };
        write(&d.join("vendor"), input.attr("0x1b36"));
        write(&d.join("device"), input.attr("0x0010"));
        write(&d.join("class"), input.attr(class));
        write(&d.join("current_link_speed"), input.attr("8.0 GT/s PCIe"));
        write(&d.join("current_link_width"), input.attr("4"));
        write(&d.join("numa_node"), input.attr("-1"));
        if input.byte().is_multiple_of(3) {
            write(&d.join("p2pmem/size"), input.attr("16777216"));
            write(&d.join("p2pmem/available"), input.attr("16777216"));
            write(&d.join("p2pmem/published"), input.attr("1"));
        }
        let config_len = (input.byte() as usize) * 16;
        let mut config = input.bytes(255);
        config.resize(config_len.max(config.len()), input.byte());
        write(&d.join("config"), Some(config));
        let link_target: std::path::PathBuf = (0..3)
            .map(|_| "..")
            .collect::<std::path::PathBuf>()
            .join(&rel);
        let _ = std::os::unix::fs::symlink(&link_target, root.join("bus/pci/devices").join(&bdf));
        dirs.push(rel);
    }
    match input.byte() % 4 {
        0 => write(&root.join("p2pdma-host.json"), Some(input.bytes(200))),
        1 => {}
        family => write(
            &root.join("p2pdma-host.json"),
            Some(
                format!(
                    r#"{{"cpu_vendor":"AuthenticAMD","cpu_family":{},"kernel_release":null,"p2pdma_config":"yes","p2pdma_config_source":"fuzz","origin":"fuzz"}}"#,
                    family * 10
                )
                .into_bytes(),
            ),
        ),
    }

    let sysfs = SysfsRoot::new(root);
    let Ok(tree) = PciTree::read(&sysfs) else {
        return false;
    };
    let topo = Topology::new(&tree);
    let all: Vec<_> = tree.functions.keys().copied().collect();
    let matrix = topo.matrix(&all, &all);
    for (row, a) in all.iter().enumerate() {
        for (col, b) in all.iter().enumerate() {
            let v = topo.verdict(*a, *b);
            let cell = matrix[row][col].expect("both functions are in the tree");
            assert_eq!(
                (cell.map_type, Some(cell.distance)),
                (v.topology_map_type, v.distance),
                "matrix and verdict agree for {a} -> {b}"
            );
            assert_eq!(v.path.first(), Some(a), "path starts at the provider");
            assert_eq!(v.path.last(), Some(b), "path ends at the client");
            for r in &v.reasons {
                let _ = r.to_string();
            }
        }
    }
    let _ = topo.choose_provider(&all);
    for name in ["nvme0n1", "/dev/nvme0", "0000:00:00.0"] {
        let _ = p2pdma::resolve::resolve(&sysfs, name);
    }

    let out = tempfile::tempdir().expect("tempdir");
    let snap = out.path().join("snap");
    p2pdma::snapshot::take(&sysfs, &snap, Default::default()).expect("a readable tree snapshots");
    let again = PciTree::read(&SysfsRoot::new(&snap)).expect("a snapshot reads back");
    assert_eq!(
        serde_json::to_string(&tree.functions).expect("json"),
        serde_json::to_string(&again.functions).expect("json"),
        "snapshot round trip"
    );
    true
}
