//! What the modules share: the `p2pdma` binary run and its output echoed for a failing
//! test, the lab snapshots kept as sysfs fixtures, scratch directories with an empty
//! sysfs, and data patterns that cannot be there by accident.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `p2pdma` binary under test.
pub fn p2pdma_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_p2pdma"))
}

/// The lab snapshot of topology `name` (crates/p2pdma/tests/fixtures), a sysfs tree.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../p2pdma/tests/fixtures")
        .join(name)
}

/// Runs `cmd` and echoes its exit status, stdout and stderr on stderr (shown when the
/// test fails), headed by `what`.
pub fn output(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    eprintln!(
        "{what}exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `p2pdma --sysfs SYSFS ARGS...`, never starting a kernel build.
pub fn p2pdma(sysfs: &Path, args: &[&str]) -> Output {
    output(
        p2pdma_command()
            .arg("--sysfs")
            .arg(sysfs)
            .args(args)
            // A kernel build must never start from a test without a VM.
            .env("P2PDMA_LAB_KERNEL", "/nonexistent/bzImage"),
        &format!("p2pdma {args:?}: "),
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `len` bytes of a pattern that differs with `seed` and is nowhere constant.
pub fn data(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

/// A temp dir with an empty `sysfs` directory in it: passed as `--sysfs`, it makes the PCI
/// side deterministic (no device resolves, no provider exists, whatever this machine has).
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sysfs")).unwrap();
        Scratch { dir }
    }

    /// The empty sysfs.
    pub fn sysfs(&self) -> PathBuf {
        self.path("sysfs")
    }

    /// `name` in the temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A file `name` in the temp dir holding `bytes`.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}
