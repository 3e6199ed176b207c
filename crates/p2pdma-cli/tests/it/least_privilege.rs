//! Without root, p2pdma does what the file permissions allow, and an error for a missing
//! permission names the file and the permission (docs/60-p2pdma.rules grants them to a
//! group). Runs p2pdma as a non-root user: as nobody (uid 65534, no supplementary
//! groups, through setpriv) when the tests run as root, else as the current user. No VM:
//! a copy of a lab snapshot and files in a temp dir.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::util::{fixture, output, stderr};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// p2pdma as a user without root's rights.
fn unprivileged(sysfs: &Path, args: &[&str]) -> Output {
    let exe = env!("CARGO_BIN_EXE_p2pdma");
    let mut cmd = if rustix::process::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(exe);
        c
    } else {
        Command::new(exe)
    };
    output(
        cmd.arg("--sysfs").arg(sysfs).args(args),
        &format!("{args:?}: "),
    )
}

/// A world-readable copy of the `switch` snapshot with an inaccessible `allocate` file
/// for each provider (the kernel makes it root-only).
struct Sysfs {
    dir: tempfile::TempDir,
}

impl Sysfs {
    fn new() -> Sysfs {
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o755);
        let ok = Command::new("cp")
            .arg("-a")
            .arg(fixture("switch"))
            .arg(dir.path().join("sys"))
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let ok = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let s = Sysfs { dir };
        for bdf in ["0000:03:00.0", "0000:04:00.0"] {
            let allocate = s.p2pmem(bdf).join("allocate");
            std::fs::write(&allocate, "").unwrap();
            // Root-only in the kernel (0600 root); no access at all here, so the test also
            // holds when run as the file's owner.
            chmod(&allocate, 0o000);
        }
        s
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("sys")
    }
    fn p2pmem(&self, bdf: &str) -> PathBuf {
        self.root().join("bus/pci/devices").join(bdf).join("p2pmem")
    }
}

#[test]
fn topo_and_mem_info_need_no_root() {
    let s = Sysfs::new();
    let o = unprivileged(&s.root(), &["topo"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = unprivileged(&s.root(), &["mem", "info", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let pools: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(pools.as_array().unwrap().len(), 2);
}

#[test]
fn allocating_without_permission_names_the_allocate_file_and_read_write() {
    let s = Sysfs::new();
    let allocate = s.p2pmem("0000:03:00.0").join("allocate");
    let o = unprivileged(&s.root(), &["mem", "test", "0000:03:00.0", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
    assert_eq!(v["error"]["kind"], "permission_denied", "{v}");
    let msg = stderr(&o);
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(msg.contains(&allocate.display().to_string()), "{msg}");
    assert!(msg.contains("needs read and write permission"), "{msg}");
    assert!(msg.contains("docs/60-p2pdma.rules"), "{msg}");
}

#[test]
fn an_unreadable_pool_attribute_is_named_with_the_read_permission() {
    let s = Sysfs::new();
    let available = s.p2pmem("0000:04:00.0").join("available");
    chmod(&available, 0o000);
    let o = unprivileged(&s.root(), &["mem", "info", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
    assert_eq!(v["error"]["kind"], "permission_denied", "{v}");
    let msg = stderr(&o);
    assert!(msg.contains(&available.display().to_string()), "{msg}");
    assert!(msg.contains("needs read permission"), "{msg}");
}

#[test]
fn copying_from_an_unreadable_source_names_it_and_the_permission() {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let sysfs = dir.path().join("sysfs");
    std::fs::create_dir(&sysfs).unwrap();
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    std::fs::write(&src, vec![7u8; 1 << 20]).unwrap();
    std::fs::write(&dst, vec![9u8; 1 << 20]).unwrap();
    chmod(&src, 0o000);
    chmod(&dst, 0o666);
    let o = unprivileged(
        &sysfs,
        &[
            "copy",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
            "--bounce",
            "always",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let msg = stderr(&o);
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(
        msg.contains(&format!(
            "cannot open {} for O_DIRECT reading",
            src.display()
        )),
        "{msg}"
    );
    assert!(msg.contains("permission denied"), "{msg}");
    assert_eq!(std::fs::read(&dst).unwrap(), vec![9u8; 1 << 20]);
}
