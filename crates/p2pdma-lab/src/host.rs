//! What the lab needs on the host, and installing it on Debian.

use std::fs;
use std::path::{Path, PathBuf};
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

impl Requirement {
    /// The requirement as one line of `lab setup`'s list: `ok` or `missing`, how it is
    /// checked, what for, and its Debian package.
    pub fn status_line(&self) -> String {
        format!(
            "{} {:<40} {:<28} ({})",
            if self.present { "ok     " } else { "missing" },
            self.check,
            self.purpose,
            self.debian_package
        )
    }
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
    ("unpacking the stock kernel's packages", "dpkg-deb", "dpkg"),
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
        "installing packages needs root: run `sudo apt-get install -y --no-remove {0}` or run this as root"
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
    /// No suite offers the package without removing or downgrading something installed.
    #[error(
        "installing {package} would remove or downgrade packages already on this machine, from every suite tried ({suites}); nothing was changed. apt said: {reason}. Resolve the conflict by hand, then run `p2pdma lab setup` again"
    )]
    Conflict {
        /// The package that cannot be installed cleanly.
        package: String,
        /// The suites tried.
        suites: String,
        /// apt's explanation (its `E:` or unmet-dependency lines), one line.
        reason: String,
    },
    /// A program could not be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Packages were installed, yet some checks still fail.
    #[error("after installing, still missing: {checks}")]
    StillMissing {
        /// The checks that fail, comma-separated.
        checks: String,
    },
    /// The private apt configuration could not be written.
    #[error("cannot write the lab's private apt configuration {path}")]
    PrivateConfig {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// An apt configuration of the lab's own, under the cache: the system's sources plus
/// `<codename>-backports`, with its own package lists. The system's sources and lists are
/// read, never changed.
///
/// Why backports: a machine may already have QEMU parts from backports (`qemu-utils`
/// 10.0 on these build machines); bookworm's QEMU 7.2 conflicts with them, and apt would
/// remove them to install it. Backports' QEMU installs beside them.
#[derive(Debug)]
pub struct PrivateApt {
    dir: PathBuf,
    backports: String,
}

impl PrivateApt {
    /// Writes the configuration under `dir` (e.g. `<cache>/apt/install`) from the system's
    /// sources in `/etc/apt`.
    pub fn create(dir: &Path) -> Result<PrivateApt, SetupError> {
        Self::create_from(dir, Path::new("/etc/apt"), &os_codename())
    }

    /// A configuration under `dir` that knows only `suite` (e.g. `sid`) on the system's
    /// Debian mirror: for `apt-get download` of a package from a newer suite, never for
    /// installing.
    pub fn for_download(dir: &Path, suite: &str) -> Result<PrivateApt, SetupError> {
        let parts = create_private_dirs(dir)?;
        let system: String = system_source_files(Path::new("/etc/apt"))
            .iter()
            .filter_map(|f| fs::read_to_string(f).ok())
            .collect::<Vec<_>>()
            .join("\n");
        let mirror = debian_mirror(&system, &os_codename());
        let file = parts.join(format!("p2pdma-lab-{suite}.list"));
        fs::write(&file, format!("deb {mirror} {suite} main\n"))
            .map_err(|source| SetupError::PrivateConfig { path: file, source })?;
        Ok(PrivateApt {
            dir: dir.to_owned(),
            backports: format!("{}-backports", os_codename()),
        })
    }

    /// `apt-get download PACKAGE` into `dest` (apt's output shown); the `.deb` it wrote.
    pub fn download(&self, package: &str, dest: &Path) -> Result<PathBuf, SetupError> {
        let mut command = self.apt_get(&["download", "-q", package]);
        command.current_dir(dest);
        run_shown(command, &format!("apt-get download {package}"))?;
        let entries = fs::read_dir(dest).map_err(|source| SetupError::PrivateConfig {
            path: dest.to_owned(),
            source,
        })?;
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .ok_or_else(|| SetupError::AptFailed {
                command: format!("apt-get download {package}"),
                status: format!("no {package}_*.deb appeared in {}", dest.display()),
            })
    }

    /// `apt-get download` of several packages into `dest` in one call, apt's output on
    /// stderr (so that stdout stays the command's own); the `.deb` of each, in order.
    pub fn download_all(
        &self,
        packages: &[String],
        dest: &Path,
    ) -> Result<Vec<PathBuf>, SetupError> {
        let shown = format!("apt-get download {}", packages.join(" "));
        let mut command = self.apt_get(&["download", "-q"]);
        command.args(packages).current_dir(dest);
        let output = command.output().map_err(|source| SetupError::Spawn {
            program: "apt-get",
            source,
        })?;
        use std::io::Write;
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(&output.stdout);
        let _ = stderr.write_all(&output.stderr);
        if !output.status.success() {
            return Err(SetupError::AptFailed {
                command: shown,
                status: output.status.to_string(),
            });
        }
        let names: Vec<String> = fs::read_dir(dest)
            .map_err(|source| SetupError::PrivateConfig {
                path: dest.to_owned(),
                source,
            })?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        packages
            .iter()
            .map(|package| {
                names
                    .iter()
                    .find(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
                    .map(|n| dest.join(n))
                    .ok_or_else(|| SetupError::AptFailed {
                        command: shown.clone(),
                        status: format!("no {package}_*.deb appeared in {}", dest.display()),
                    })
            })
            .collect()
    }

    /// Whether this configuration's package lists were fetched (`apt-get update`) before.
    pub fn has_lists(&self) -> bool {
        fs::read_dir(self.dir.join("lists")).is_ok_and(|entries| {
            entries
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
    }

    /// The names of the packages in this configuration's lists that start with `prefix`
    /// (`apt-cache pkgnames`: read from the local lists, no network).
    pub fn package_names(&self, prefix: &str) -> Result<Vec<String>, SetupError> {
        let output = Command::new("apt-cache")
            .args(self.options())
            .args(["pkgnames", prefix])
            .output()
            .map_err(|source| SetupError::Spawn {
                program: "apt-cache",
                source,
            })?;
        if !output.status.success() {
            return Err(SetupError::AptFailed {
                command: format!("apt-cache pkgnames {prefix}"),
                status: output.status.to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    }

    fn create_from(dir: &Path, etc_apt: &Path, codename: &str) -> Result<PrivateApt, SetupError> {
        let parts = create_private_dirs(dir)?;
        let mut sources = String::new();
        for file in system_source_files(etc_apt) {
            if let Ok(text) = fs::read_to_string(&file) {
                let name = file.file_name().map(|n| n.to_owned()).unwrap_or_default();
                let copy = parts.join(name);
                fs::write(&copy, &text).map_err(|source| SetupError::PrivateConfig {
                    path: copy.clone(),
                    source,
                })?;
                sources.push_str(&text);
                sources.push('\n');
            }
        }
        let backports = format!("{codename}-backports");
        let mirror = debian_mirror(&sources, codename);
        let line = format!("deb {mirror} {backports} main\n");
        let file = parts.join("p2pdma-lab-backports.list");
        fs::write(&file, line)
            .map_err(|source| SetupError::PrivateConfig { path: file, source })?;
        Ok(PrivateApt {
            dir: dir.to_owned(),
            backports,
        })
    }

    /// The `-o` options that point apt-get at this configuration.
    fn options(&self) -> Vec<String> {
        vec![
            "-o".into(),
            "Dir::Etc::SourceList=/dev/null".into(),
            "-o".into(),
            format!(
                "Dir::Etc::SourceParts={}",
                self.dir.join("sources.list.d").display()
            ),
            "-o".into(),
            format!("Dir::State::Lists={}", self.dir.join("lists").display()),
            // The private lists live under the invoking user's cache, which apt's
            // unprivileged `_apt` user cannot enter; apt would fall back to the invoking
            // user anyway, with a warning per file.
            "-o".into(),
            "APT::Sandbox::User=root".into(),
        ]
    }

    fn apt_get(&self, args: &[&str]) -> Command {
        let mut command = Command::new("apt-get");
        command
            .args(self.options())
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive");
        command
    }

    /// `apt-get update` of the private lists.
    pub fn update(&self) -> Result<(), SetupError> {
        run_shown(self.apt_get(&["update", "-q"]), "apt-get update -q")
    }

    /// [`PrivateApt::update`] with apt's output on stderr, for commands whose stdout is
    /// their own (`lab kernel --print-path`).
    pub fn update_on_stderr(&self) -> Result<(), SetupError> {
        let mut command = self.apt_get(&["update", "-q"]);
        command.stdout(std::io::stderr());
        run_shown(command, "apt-get update -q")
    }

    /// Finds, for each package, a suite that installs it without removing or
    /// downgrading anything (the default suites first, then backports), by simulation.
    pub fn plan(&self, packages: &[&str]) -> Result<InstallPlan, SetupError> {
        let mut plan = InstallPlan::default();
        // One simulation for the whole set is the common case.
        if self.simulate(packages, None)?.is_ok() {
            plan.default_suite = packages.iter().map(|p| p.to_string()).collect();
            return Ok(plan);
        }
        for &package in packages {
            match self.simulate(&[package], None)? {
                Ok(()) => plan.default_suite.push(package.to_owned()),
                Err(default_reason) => match self.simulate(&[package], Some(&self.backports))? {
                    Ok(()) => plan.backports.push(package.to_owned()),
                    Err(_) => {
                        return Err(SetupError::Conflict {
                            package: package.to_owned(),
                            suites: format!("the system's suites, {}", self.backports),
                            reason: default_reason,
                        })
                    }
                },
            }
        }
        Ok(plan)
    }

    /// `Ok(Err(reason))` when apt cannot install `packages` cleanly from `target`.
    fn simulate(
        &self,
        packages: &[&str],
        target: Option<&str>,
    ) -> Result<Result<(), String>, SetupError> {
        let mut args = vec![
            "install",
            "-s",
            "-q",
            "--no-remove",
            "--no-install-recommends",
        ];
        if let Some(t) = target {
            args.extend_from_slice(&["-t", t]);
        }
        args.extend_from_slice(packages);
        let output = self
            .apt_get(&args)
            .output()
            .map_err(|source| SetupError::Spawn {
                program: "apt-get",
                source,
            })?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        Ok(judge_simulation(output.status.success(), &text))
    }

    /// Installs the plan: `--no-remove`, and no `--allow-downgrades`, so apt stops rather
    /// than take anything away even if the world changed since the simulation.
    pub fn install(&self, plan: &InstallPlan) -> Result<(), SetupError> {
        for (packages, target) in [
            (&plan.default_suite, None),
            (&plan.backports, Some(self.backports.as_str())),
        ] {
            if packages.is_empty() {
                continue;
            }
            let mut args = vec![
                "install",
                "-y",
                "-q",
                "--no-remove",
                "--no-install-recommends",
            ];
            if let Some(t) = target {
                args.extend_from_slice(&["-t", t]);
            }
            args.extend(packages.iter().map(String::as_str));
            let shown = format!("apt-get {}", args.join(" "));
            run_shown(self.apt_get(&args), &shown)?;
        }
        Ok(())
    }
}

/// `DIR/sources.list.d` and `DIR/lists/partial`; the first is returned.
fn create_private_dirs(dir: &Path) -> Result<PathBuf, SetupError> {
    let parts = dir.join("sources.list.d");
    for d in [parts.clone(), dir.join("lists/partial")] {
        fs::create_dir_all(&d).map_err(|source| SetupError::PrivateConfig { path: d, source })?;
    }
    Ok(parts)
}

/// Which packages come from which suite.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct InstallPlan {
    /// From the system's own suites.
    pub default_suite: Vec<String>,
    /// From `<codename>-backports` (they conflict with the system suites' versions).
    pub backports: Vec<String>,
}

/// Reads an `apt-get install -s --no-remove` run: clean only if apt succeeded and
/// its plan neither removes nor downgrades a package.
fn judge_simulation(succeeded: bool, output: &str) -> Result<(), String> {
    let complaints: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("E:")
                || l.starts_with("Remv ")
                || l.contains("Depends:")
                || l.contains("Breaks:")
                || l.contains("Conflicts:")
        })
        .collect();
    let downgrades: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("Inst ") && is_downgrade_line(l))
        .collect();
    if succeeded && complaints.is_empty() && downgrades.is_empty() {
        return Ok(());
    }
    let mut reason: Vec<&str> = complaints;
    reason.extend(downgrades);
    if reason.is_empty() {
        reason.push("apt-get's simulation failed");
    }
    Err(reason.join("; "))
}

/// `Inst pkg [OLD] (NEW suite [arch])`: a downgrade when NEW sorts below OLD in Debian
/// version order (dpkg decides; if it cannot be asked, treat it as a downgrade).
fn is_downgrade_line(line: &str) -> bool {
    let (head, tail) = line.split_once('(').unwrap_or((line, ""));
    let Some(old) = head.split('[').nth(1).and_then(|s| s.split(']').next()) else {
        return false; // a new package: nothing replaced
    };
    let Some(new) = tail.split_whitespace().next() else {
        return true;
    };
    !Command::new("dpkg")
        .args(["--compare-versions", new, "ge", old])
        .status()
        .is_ok_and(|s| s.success())
}

fn run_shown(mut command: Command, shown: &str) -> Result<(), SetupError> {
    let status = command.status().map_err(|source| SetupError::Spawn {
        program: "apt-get",
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(SetupError::AptFailed {
            command: shown.to_owned(),
            status: status.to_string(),
        })
    }
}

/// `VERSION_CODENAME` from /etc/os-release (`bookworm` if absent).
fn os_codename() -> String {
    fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "bookworm".to_owned())
}

/// The system's source files: `sources.list` and `sources.list.d/*.{list,sources}`
/// (apt ignores other names, e.g. `*.disabled`).
fn system_source_files(etc_apt: &Path) -> Vec<PathBuf> {
    let mut files = vec![etc_apt.join("sources.list")];
    if let Ok(entries) = fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut parts: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|ext| ext == "list" || ext == "sources")
            })
            .collect();
        parts.sort();
        files.extend(parts);
    }
    files.retain(|f| f.is_file());
    files
}

/// The Debian mirror the system's sources use for `codename` (one-line or deb822
/// format); Debian's own CDN name when none is found.
fn debian_mirror(sources: &str, codename: &str) -> String {
    // One-line format: `deb [opts] URI SUITE COMPONENTS`.
    for line in sources.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("deb ") {
            let words: Vec<&str> = rest
                .split_whitespace()
                .filter(|w| !w.starts_with('[') && !w.ends_with(']'))
                .collect();
            if words.len() >= 2 && words[1] == codename {
                return words[0].to_owned();
            }
        }
    }
    // deb822: a stanza whose Suites include the codename.
    for stanza in sources.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        if let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) {
            if suites.split_whitespace().any(|s| s == codename) {
                if let Some(uri) = uris.split_whitespace().next() {
                    return uri.to_owned();
                }
            }
        }
    }
    "http://deb.debian.org/debian".to_owned()
}

/// Installs `packages` on Debian through the lab's private apt configuration under
/// `apt_dir`, never removing or downgrading what is installed, showing apt's output.
pub fn install(packages: &[&str], apt_dir: &Path) -> Result<InstallPlan, SetupError> {
    if packages.is_empty() {
        return Ok(InstallPlan::default());
    }
    let list = packages.join(" ");
    if !has_apt() {
        return Err(SetupError::NotDebian(list));
    }
    if !rustix::process::geteuid().is_root() {
        return Err(SetupError::NotRoot(list));
    }
    let apt = PrivateApt::create(apt_dir)?;
    apt.update()?;
    let plan = apt.plan(packages)?;
    apt.install(&plan)?;
    Ok(plan)
}

/// `lab setup`'s install: `missing` (from [`missing_packages`]) installed through the
/// private apt configuration under the lab's cache, then every requirement checked again.
pub fn install_missing(missing: &[&str]) -> Result<InstallPlan, SetupError> {
    let plan = install(missing, &crate::paths::cache_root().join("apt"))?;
    let still: Vec<_> = check().into_iter().filter(|r| !r.present).collect();
    if !still.is_empty() {
        return Err(SetupError::StillMissing {
            checks: still.iter().map(|r| r.check).collect::<Vec<_>>().join(", "),
        });
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_line_says_present_or_missing_in_aligned_columns() {
        let fio = Requirement {
            purpose: "benchmarks in the guest",
            check: "fio",
            debian_package: "fio",
            present: false,
        };
        let line = fio.status_line();
        assert_eq!(
            line,
            format!(
                "missing fio{} benchmarks in the guest{} (fio)",
                " ".repeat(37),
                " ".repeat(5)
            )
        );
        let ok = Requirement {
            present: true,
            ..fio
        };
        assert!(
            ok.status_line().starts_with("ok      fio "),
            "{}",
            ok.status_line()
        );
        assert_eq!(ok.status_line().len(), line.len());
    }

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

    #[test]
    fn a_clean_simulation_passes() {
        let out = "Reading package lists...\nInst libfdt1 (1.6.1-4+b1 Debian:12.15/oldstable [amd64])\nConf libfdt1 (1.6.1-4+b1 Debian:12.15/oldstable [amd64])\n";
        assert_eq!(judge_simulation(true, out), Ok(()));
    }

    #[test]
    fn a_simulation_that_removes_or_fails_is_refused_with_apts_words() {
        let unmet = " qemu-system-x86 : Depends: seabios (> 1.16.3-1~) but 1.16.2-1 is to be installed\nE: Unable to correct problems, you have held broken packages.\n";
        let reason = judge_simulation(false, unmet).unwrap_err();
        assert!(reason.contains("seabios"), "{reason}");
        assert!(reason.contains("held broken packages"), "{reason}");
        let removes = "Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]\nInst qemu-system-x86 (1:7.2+dfsg-7 Debian:12 [amd64])\n";
        assert!(judge_simulation(true, removes)
            .unwrap_err()
            .contains("Remv qemu-utils"));
    }

    #[test]
    fn a_downgrade_in_the_plan_is_refused() {
        if !on_path("dpkg") {
            eprintln!("skipped: no dpkg to compare Debian versions");
            return;
        }
        let down = "Inst qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1] (1:7.2+dfsg-7+deb12u18+b2 Debian:12.15/oldstable [amd64])\n";
        assert!(judge_simulation(true, down).is_err());
        let up = "Inst qemu-utils [1:7.2+dfsg-7] (1:10.0.2+ds-2+deb13u1~bpo12+1 Debian Backports [amd64])\n";
        assert_eq!(judge_simulation(true, up), Ok(()));
    }

    #[test]
    fn the_mirror_comes_from_the_systems_sources_in_either_format() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            debian_mirror(deb822, "bookworm"),
            "http://mirror.example/debian"
        );
        let one_line = "deb [arch=amd64] http://ftp.example/debian trixie main\n";
        assert_eq!(
            debian_mirror(one_line, "trixie"),
            "http://ftp.example/debian"
        );
        assert_eq!(
            debian_mirror("", "bookworm"),
            "http://deb.debian.org/debian"
        );
    }

    #[test]
    fn the_private_configuration_copies_the_systems_sources_and_adds_backports() {
        let etc = tempfile::tempdir().unwrap();
        fs::create_dir_all(etc.path().join("sources.list.d")).unwrap();
        let system =
            "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\nComponents: main\n";
        fs::write(etc.path().join("sources.list.d/debian.sources"), system).unwrap();
        fs::write(
            etc.path().join("sources.list.d/old.list.disabled"),
            "deb http://x y z",
        )
        .unwrap();
        let cache = tempfile::tempdir().unwrap();
        let apt = PrivateApt::create_from(cache.path(), etc.path(), "bookworm").unwrap();
        let parts = cache.path().join("sources.list.d");
        assert_eq!(
            fs::read_to_string(parts.join("debian.sources")).unwrap(),
            system
        );
        assert!(!parts.join("old.list.disabled").exists());
        assert_eq!(
            fs::read_to_string(parts.join("p2pdma-lab-backports.list")).unwrap(),
            "deb http://mirror.example/debian bookworm-backports main\n"
        );
        let options = apt.options().join(" ");
        assert!(options.contains(&format!(
            "Dir::State::Lists={}",
            cache.path().join("lists").display()
        )));
        assert!(options.contains("Dir::Etc::SourceList=/dev/null"));
    }

    /// The machine this guards: QEMU parts from backports already installed (issue 9:
    /// `lab setup` once removed qemu-utils 10.0 to install bookworm's QEMU 7.2).
    #[test]
    #[ignore = "host: asks the Debian archive through apt-get (root, network to Debian's packages)"]
    fn setup_plans_qemu_beside_backports_qemu_utils_without_removing_it() {
        let installed = Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", "qemu-utils"])
            .output();
        let version = installed
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if !has_apt() || !rustix::process::geteuid().is_root() || !version.contains("~bpo") {
            eprintln!(
                "skipped: needs root on Debian with qemu-utils from backports (have {version:?})"
            );
            return;
        }
        let cache = tempfile::tempdir().unwrap();
        let apt = PrivateApt::create(cache.path()).unwrap();
        apt.update().unwrap();
        // qemu-system-arm shares qemu-system-common with x86 and is not installed here, so
        // the plan is computed afresh whatever the lab already installed.
        let plan = apt.plan(&["qemu-system-arm", "bc"]).unwrap();
        assert_eq!(plan.backports, ["qemu-system-arm"], "{plan:?}");
        assert_eq!(plan.default_suite, ["bc"], "{plan:?}");
        // bookworm's own QEMU would have to take qemu-utils away: the default suite is refused.
        assert!(apt.simulate(&["qemu-system-arm"], None).unwrap().is_err());
    }
}
