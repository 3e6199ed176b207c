//! What the lab needs on the host, and installing it on Debian.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

/// One thing the lab needs.
#[derive(Debug, Clone, Serialize)]
pub struct Requirement {
    /// What it is for.
    pub purpose: &'static str,
    /// How it is checked: a program on PATH or a file.
    pub check: &'static str,
    /// The Debian package that provides it.
    pub debian_package: &'static str,
    /// Whether it is present.
    pub present: bool,
}

const REQUIREMENTS: &[(&str, &str, &str)] = &[
    ("run the guest", "qemu-system-x86_64", "qemu-system-x86"),
    (
        "the guest's shell and tools",
        "/bin/busybox",
        "busybox-static",
    ),
    ("benchmarks in the guest", "fio", "fio"),
    ("ext4 disk images", "mkfs.ext4", "e2fsprogs"),
    (
        "kernel source",
        "/usr/src/linux-source-6.12.tar.xz",
        "linux-source-6.12",
    ),
    ("kernel build", "make", "build-essential"),
    ("kernel build", "gcc", "build-essential"),
    ("kernel build", "bc", "bc"),
    ("kernel build", "bison", "bison"),
    ("kernel build", "flex", "flex"),
    ("kernel build", "/usr/include/libelf.h", "libelf-dev"),
    ("kernel build", "/usr/include/openssl/ssl.h", "libssl-dev"),
    ("kernel build", "cpio", "cpio"),
    ("kernel build", "xz", "xz-utils"),
    ("unpacking fetched files", "tar", "tar"),
    ("listing guest program libraries", "ldd", "libc-bin"),
];

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Every requirement and whether it is met.
pub fn check() -> Vec<Requirement> {
    REQUIREMENTS
        .iter()
        .map(|&(purpose, check, debian_package)| Requirement {
            purpose,
            check,
            debian_package,
            present: if check.starts_with('/') {
                Path::new(check).exists()
            } else {
                on_path(check)
            },
        })
        .collect()
}

/// The Debian packages that would provide what is missing, deduplicated, in order.
pub fn missing_packages(requirements: &[Requirement]) -> Vec<&'static str> {
    let mut packages: Vec<&'static str> = Vec::new();
    for r in requirements.iter().filter(|r| !r.present) {
        if !packages.contains(&r.debian_package) {
            packages.push(r.debian_package);
        }
    }
    packages
}

/// Is this a Debian-like system with apt-get?
pub fn has_apt() -> bool {
    Path::new("/etc/debian_version").exists() && on_path("apt-get")
}

/// Errors installing packages.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Not Debian: the user installs by hand.
    #[error("this is not a Debian system with apt-get; install these (Debian names): {0}")]
    NotDebian(String),
    /// Not root: apt-get would fail.
    #[error(
        "installing packages needs root: run `sudo apt-get install -y {0}` or run this as root"
    )]
    NotRoot(String),
    /// apt-get failed.
    #[error("`{command}` failed ({status}); see its output above")]
    AptFailed {
        /// The command.
        command: String,
        /// Its exit status.
        status: String,
    },
    /// apt-get could not be started.
    #[error("cannot run apt-get")]
    Spawn(#[source] std::io::Error),
}

/// Installs `packages` with apt-get (update first), showing apt's output.
pub fn install(packages: &[&str]) -> Result<(), SetupError> {
    if packages.is_empty() {
        return Ok(());
    }
    let list = packages.join(" ");
    if !has_apt() {
        return Err(SetupError::NotDebian(list));
    }
    if !rustix::process::geteuid().is_root() {
        return Err(SetupError::NotRoot(list));
    }
    let run = |args: &[&str]| -> Result<(), SetupError> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(SetupError::Spawn)?;
        if status.success() {
            Ok(())
        } else {
            Err(SetupError::AptFailed {
                command: format!("apt-get {}", args.join(" ")),
                status: status.to_string(),
            })
        }
    };
    run(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(packages);
    run(&args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_packages_are_deduplicated_in_order() {
        let reqs = vec![
            Requirement {
                purpose: "a",
                check: "make",
                debian_package: "build-essential",
                present: false,
            },
            Requirement {
                purpose: "b",
                check: "gcc",
                debian_package: "build-essential",
                present: false,
            },
            Requirement {
                purpose: "c",
                check: "bc",
                debian_package: "bc",
                present: true,
            },
            Requirement {
                purpose: "d",
                check: "fio",
                debian_package: "fio",
                present: false,
            },
        ];
        assert_eq!(missing_packages(&reqs), ["build-essential", "fio"]);
    }

    #[test]
    fn check_finds_what_every_machine_has() {
        let reqs = check();
        assert!(reqs.iter().any(|r| r.check == "tar" && r.present));
    }
}
