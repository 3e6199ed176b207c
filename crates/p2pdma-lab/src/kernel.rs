//! Building the lab kernel once and caching it outside the repository.
//!
//! The kernel is a tinyconfig plus the fragment in `lab/kernel/p2pdma.config` (and, for the
//! `debug` flavour, `lab/kernel/debug.config`). The cache key is a hash of the source's
//! identity, the fragments' text and the build recipe's version, so editing a fragment or
//! switching source builds anew while a second call with the same inputs returns at once.
//!
//! Every tree it builds gets the lab's own driver, `p2pdma_ram` (`lab/kernel/p2pdma-ram`):
//! its source goes to `drivers/pci/p2pdma_ram.c` and its Kconfig and Makefile lines are
//! appended to `drivers/pci/`'s. A `--source DIR` tree is not touched: the build works on a
//! hard-linked mirror of it and replaces (never edits through a link) the three files.
//! The driver's text is part of the cache key.

use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::paths;

/// The options every lab kernel needs (see `kernel-p2pdma.md`).
pub const BASE_FRAGMENT: &str = include_str!("../../../lab/kernel/p2pdma.config");
/// Extra options of the `debug` flavour: KASAN, VM and lock debugging.
pub const DEBUG_FRAGMENT: &str = include_str!("../../../lab/kernel/debug.config");
/// The `no-p2pdma` flavour's overrides: CONFIG_PCI_P2PDMA off, VFIO and the IOMMU on.
pub const NO_P2PDMA_FRAGMENT: &str = include_str!("../../../lab/kernel/no-p2pdma.config");
/// The lab's p2pmem driver for QEMU's ivshmem-plain RAM (copied to `drivers/pci/`).
pub const RAM_DRIVER_SOURCE: &str = include_str!("../../../lab/kernel/p2pdma-ram/p2pdma_ram.c");
/// Its Kconfig entry, appended to `drivers/pci/Kconfig`.
pub const RAM_DRIVER_KCONFIG: &str = include_str!("../../../lab/kernel/p2pdma-ram/Kconfig");
/// Its Makefile line, appended to `drivers/pci/Makefile`.
pub const RAM_DRIVER_MAKEFILE: &str = include_str!("../../../lab/kernel/p2pdma-ram/Makefile");
/// The Kconfig symbol that marks a tree that already has the driver.
const RAM_DRIVER_SYMBOL: &str = "config PCI_P2PDMA_LAB_RAM";
/// Where Debian's `linux-source-6.12` package puts its tarball.
pub const DEBIAN_SOURCE_TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";
const DEBIAN_SOURCE_PACKAGE: &str = "linux-source-6.12";
/// Bumped whenever the build steps change in a way that changes the image.
const RECIPE_VERSION: &str = "p2pdma-lab-kernel-recipe-2";

/// Errors while finding the source or building the kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// No source where one was expected.
    #[error("kernel source {path} not found: run `p2pdma lab setup` (it installs {DEBIAN_SOURCE_PACKAGE}) or pass --source DIR|TARBALL")]
    SourceMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A path that is neither a directory with a Makefile nor a tarball.
    #[error("kernel source {path} is neither a kernel tree (a directory with a Makefile) nor a .tar/.tar.xz/.tar.gz tarball")]
    SourceUnrecognised {
        /// The path given.
        path: PathBuf,
    },
    /// A build step failed.
    #[error("kernel build step `{step}` failed (exit status {status}); the last lines of {log}:\n{tail}")]
    StepFailed {
        /// The command that failed.
        step: String,
        /// Its exit status.
        status: String,
        /// The full build log.
        log: PathBuf,
        /// The last lines of output.
        tail: String,
    },
    /// Options the fragment turns off that `make olddefconfig` turned on (something selects them).
    #[error("the kernel config has {enabled} enabled although the flavour turns them off (another option selects them); build log: {log}")]
    ConfigNotOff {
        /// Options that should be off, comma separated.
        enabled: String,
        /// The build log.
        log: PathBuf,
    },
    /// Options the fragment asks for did not survive `make olddefconfig`.
    #[error("the kernel config lacks {missing} after olddefconfig (their dependencies are not met in this source tree); build log: {log}")]
    ConfigIncomplete {
        /// Missing options, comma separated.
        missing: String,
        /// The build log.
        log: PathBuf,
    },
    /// The lab's driver could not be added to the tree being built.
    #[error("cannot add the lab's p2pdma_ram driver: {what} {path} (is it a Linux source tree with drivers/pci/?)")]
    DriverPatch {
        /// What was being done.
        what: &'static str,
        /// On which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tool could not be started.
    #[error("cannot run `{tool}`: install it (`p2pdma lab setup` does)")]
    ToolMissing {
        /// The program.
        tool: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file operation in the cache failed.
    #[error("kernel cache: {what} {path}")]
    Cache {
        /// What was being done.
        what: &'static str,
        /// On which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Which kernel configuration to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Flavour {
    /// The small, fast-booting kernel every lab run uses.
    #[default]
    Standard,
    /// With KASAN, DEBUG_VM and lock debugging, for the reliability suite.
    Debug,
    /// Without CONFIG_PCI_P2PDMA (VFIO and the Intel IOMMU on), for the VFIO path.
    NoP2pdma,
}

/// One row of the flavour table: its name and the fragments it merges, in order (a later
/// fragment's line for an option replaces an earlier one's).
#[derive(Debug)]
struct FlavourSpec {
    flavour: Flavour,
    name: &'static str,
    fragments: &'static [&'static str],
}

const FLAVOURS: &[FlavourSpec] = &[
    FlavourSpec {
        flavour: Flavour::Standard,
        name: "standard",
        fragments: &[BASE_FRAGMENT],
    },
    FlavourSpec {
        flavour: Flavour::Debug,
        name: "debug",
        fragments: &[BASE_FRAGMENT, DEBUG_FRAGMENT],
    },
    FlavourSpec {
        flavour: Flavour::NoP2pdma,
        name: "no-p2pdma",
        fragments: &[BASE_FRAGMENT, NO_P2PDMA_FRAGMENT],
    },
];

impl Flavour {
    /// Every flavour, in the table's order.
    pub fn all() -> impl Iterator<Item = Flavour> {
        FLAVOURS.iter().map(|s| s.flavour)
    }

    fn spec(self) -> &'static FlavourSpec {
        FLAVOURS
            .iter()
            .find(|s| s.flavour == self)
            .expect("every flavour has a row in FLAVOURS")
    }

    /// Its name on the command line and in the cache (`standard`, `debug`, `no-p2pdma`).
    pub fn name(self) -> &'static str {
        self.spec().name
    }
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the kernel source comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// A tarball such as Debian's `/usr/src/linux-source-6.12.tar.xz`.
    Tarball(PathBuf),
    /// An unpacked, clean kernel tree (built out of tree with `O=`).
    Directory(PathBuf),
}

impl KernelSource {
    /// Debian's linux-source-6.12 tarball.
    pub fn debian_default() -> KernelSource {
        KernelSource::Tarball(PathBuf::from(DEBIAN_SOURCE_TARBALL))
    }

    /// A user-given path: a directory is a tree, anything else must be a tarball.
    pub fn from_path(path: &Path) -> Result<KernelSource, KernelError> {
        if path.is_dir() {
            if path.join("Makefile").is_file() {
                return Ok(KernelSource::Directory(path.to_owned()));
            }
            return Err(KernelError::SourceUnrecognised {
                path: path.to_owned(),
            });
        }
        if !path.exists() {
            return Err(KernelError::SourceMissing {
                path: path.to_owned(),
            });
        }
        let name = path.to_string_lossy();
        if [".tar", ".tar.xz", ".tar.gz", ".tgz", ".tar.bz2"]
            .iter()
            .any(|ext| name.ends_with(ext))
        {
            Ok(KernelSource::Tarball(path.to_owned()))
        } else {
            Err(KernelError::SourceUnrecognised {
                path: path.to_owned(),
            })
        }
    }

    fn path(&self) -> &Path {
        match self {
            KernelSource::Tarball(p) | KernelSource::Directory(p) => p,
        }
    }

    /// What identifies this source's content cheaply, for the cache key.
    ///
    /// A tarball is named by path, size and modification time (plus the Debian package
    /// version for the default tarball); a tree by its path, `make kernelversion`, and the
    /// git commit when it is a git checkout. Hashing 150 MB on every call would defeat the
    /// cache's purpose of returning at once.
    fn identity(&self) -> Result<String, KernelError> {
        let path = self.path();
        let meta = fs::metadata(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                KernelError::SourceMissing {
                    path: path.to_owned(),
                }
            } else {
                KernelError::Cache {
                    what: "cannot read the kernel source",
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        match self {
            KernelSource::Tarball(p) => {
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                let mut id = format!("tarball {} {} {}", p.display(), meta.len(), mtime);
                if p == Path::new(DEBIAN_SOURCE_TARBALL) {
                    if let Some(v) = debian_package_version(DEBIAN_SOURCE_PACKAGE) {
                        id.push_str(&format!(" debian {v}"));
                    }
                }
                Ok(id)
            }
            KernelSource::Directory(p) => {
                let version = command_output(
                    Command::new("make")
                        .arg("-s")
                        .arg("-C")
                        .arg(p)
                        .arg("kernelversion"),
                )
                .unwrap_or_default();
                let commit = command_output(
                    Command::new("git")
                        .arg("-C")
                        .arg(p)
                        .args(["rev-parse", "HEAD"]),
                )
                .unwrap_or_default();
                Ok(format!(
                    "tree {} {} {}",
                    p.display(),
                    version.trim(),
                    commit.trim()
                ))
            }
        }
    }
}

fn command_output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn debian_package_version(package: &str) -> Option<String> {
    command_output(Command::new("dpkg-query").args(["-W", "-f=${Version}", package]))
        .filter(|v| !v.is_empty())
}

/// A built kernel in the cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedKernel {
    /// The bootable image.
    pub bzimage: PathBuf,
    /// The cache key (hash of the inputs).
    pub key: String,
    /// The inputs' description.
    pub source: String,
    /// Which configuration.
    pub flavour: Flavour,
    /// How long the build took, in seconds (0 when unknown).
    pub build_seconds: f64,
}

/// What the builder reports while it works.
#[derive(Debug, Clone)]
pub enum BuildEvent {
    /// A new stage began.
    Stage(String),
    /// A line of build output.
    Line(String),
}

/// The cache key of a kernel built from `source` in `flavour`.
pub fn cache_key(source: &KernelSource, flavour: Flavour) -> Result<(String, String), KernelError> {
    let identity = source.identity()?;
    let mut hasher = Sha256::new();
    hasher.update(RECIPE_VERSION.as_bytes());
    hasher.update(b"\0");
    hasher.update(identity.as_bytes());
    hasher.update(b"\0");
    for text in keyed_texts(flavour) {
        hasher.update(text.as_bytes());
        hasher.update(b"\0");
    }
    let digest = hasher.finalize();
    let key: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Ok((format!("{flavour}-{key}"), identity))
}

/// The texts a build's image depends on besides the source: the config fragments and
/// every file of the lab's driver.
fn keyed_texts(flavour: Flavour) -> Vec<&'static str> {
    let mut texts = flavour.spec().fragments.to_vec();
    texts.extend([RAM_DRIVER_SOURCE, RAM_DRIVER_KCONFIG, RAM_DRIVER_MAKEFILE]);
    texts
}

/// The flavour's fragments merged into one: every option keeps only its last setting
/// (`CONFIG_X=...` or `# CONFIG_X is not set`), comments and other lines stay in order.
pub fn merged_fragment(flavour: Flavour) -> String {
    let lines: Vec<&str> = flavour
        .spec()
        .fragments
        .iter()
        .flat_map(|f| f.lines())
        .collect();
    let mut last = std::collections::HashMap::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some((opt, _)) = fragment_setting(line) {
            last.insert(opt, i);
        }
    }
    let mut merged = String::new();
    for (i, line) in lines.iter().enumerate() {
        if fragment_setting(line).is_some_and(|(opt, _)| last[opt] != i) {
            continue;
        }
        merged.push_str(line);
        merged.push('\n');
    }
    merged
}

/// `("CONFIG_X", true)` for `CONFIG_X=...`, `("CONFIG_X", false)` for `# CONFIG_X is not set`.
fn fragment_setting(line: &str) -> Option<(&str, bool)> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("# ") {
        let opt = rest.strip_suffix(" is not set")?;
        return opt.starts_with("CONFIG_").then_some((opt, false));
    }
    let (opt, _) = line.split_once('=')?;
    opt.starts_with("CONFIG_").then_some((opt, true))
}

/// The cached kernel for these inputs, if it was built before.
pub fn cached(
    source: &KernelSource,
    flavour: Flavour,
) -> Result<Option<CachedKernel>, KernelError> {
    let (key, _) = cache_key(source, flavour)?;
    Ok(read_cached(&paths::kernel_dir(&key)))
}

fn read_cached(dir: &Path) -> Option<CachedKernel> {
    let meta = fs::read_to_string(dir.join("kernel.json")).ok()?;
    let kernel: CachedKernel = serde_json::from_str(&meta).ok()?;
    kernel.bzimage.is_file().then_some(kernel)
}

/// Returns the cached kernel for these inputs, building it first if needed.
///
/// Concurrent callers (parallel tests) wait on a lock file rather than building twice.
pub fn ensure(
    source: &KernelSource,
    flavour: Flavour,
    jobs: usize,
    on_event: &mut dyn FnMut(BuildEvent),
) -> Result<CachedKernel, KernelError> {
    let (key, identity) = cache_key(source, flavour)?;
    let dir = paths::kernel_dir(&key);
    if let Some(kernel) = read_cached(&dir) {
        return Ok(kernel);
    }
    let cache_err = |what, path: &Path| {
        let path = path.to_owned();
        move |source| KernelError::Cache { what, path, source }
    };
    fs::create_dir_all(&dir).map_err(cache_err("cannot create", &dir))?;
    let lock_path = dir.with_extension("lock");
    let _lock =
        paths::FileLock::exclusive(&lock_path).map_err(cache_err("cannot lock", &lock_path))?;
    if let Some(kernel) = read_cached(&dir) {
        return Ok(kernel);
    }
    let started = Instant::now();
    let work = paths::cache_root().join("build").join(&key);
    let built = build_in(&work, &dir, source, flavour, jobs, on_event);
    // The tree is a gigabyte or more, success or not; the image, config and build log
    // (in the kernel's cache directory) are all that is kept.
    on_event(BuildEvent::Stage("removing the build tree".into()));
    let _ = fs::remove_dir_all(&work);
    let bzimage = built?;
    let kernel = CachedKernel {
        bzimage,
        key,
        source: identity,
        flavour,
        build_seconds: started.elapsed().as_secs_f64(),
    };
    let meta_path = dir.join("kernel.json");
    let meta = serde_json::to_string_pretty(&kernel).expect("kernel metadata serialises");
    fs::write(&meta_path, meta).map_err(cache_err("cannot write", &meta_path))?;
    Ok(kernel)
}

/// Unpacks (if needed), configures and compiles in `work`; puts bzImage and config in `dir`.
fn build_in(
    work: &Path,
    dir: &Path,
    source: &KernelSource,
    flavour: Flavour,
    jobs: usize,
    on_event: &mut dyn FnMut(BuildEvent),
) -> Result<PathBuf, KernelError> {
    let cache_err = |what, path: &Path| {
        let path = path.to_owned();
        move |source| KernelError::Cache { what, path, source }
    };
    if work.exists() {
        fs::remove_dir_all(work).map_err(cache_err("cannot clear", work))?;
    }
    fs::create_dir_all(work).map_err(cache_err("cannot create", work))?;
    let log_path = dir.join("build.log");
    let mut log = fs::File::create(&log_path).map_err(cache_err("cannot create", &log_path))?;
    let mut run = |step: &str, cmd: &mut Command, on_event: &mut dyn FnMut(BuildEvent)| {
        run_step(step, cmd, &mut log, &log_path, on_event)
    };

    let src = match source {
        KernelSource::Tarball(tarball) => {
            on_event(BuildEvent::Stage(format!(
                "unpacking {}",
                tarball.display()
            )));
            let src = work.join("src");
            fs::create_dir_all(&src).map_err(cache_err("cannot create", &src))?;
            run(
                "tar",
                Command::new("tar")
                    .arg("-xf")
                    .arg(tarball)
                    .arg("-C")
                    .arg(&src)
                    .arg("--strip-components=1"),
                on_event,
            )?;
            src
        }
        KernelSource::Directory(dir) => {
            // A hard-linked mirror (a full copy across file systems) so that adding the
            // driver never writes into the user's tree.
            on_event(BuildEvent::Stage(format!(
                "mirroring {} (hard links)",
                dir.display()
            )));
            let src = work.join("src");
            let linked = Command::new("cp")
                .arg("-al")
                .arg(dir)
                .arg(&src)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !linked {
                let _ = fs::remove_dir_all(&src);
                run(
                    "cp -a",
                    Command::new("cp").arg("-a").arg(dir).arg(&src),
                    on_event,
                )?;
            }
            src
        }
    };
    on_event(BuildEvent::Stage(
        "adding the p2pdma_ram driver to drivers/pci".into(),
    ));
    add_ram_driver(&src)?;
    let out = work.join("out");
    fs::create_dir_all(&out).map_err(cache_err("cannot create", &out))?;
    let make = |args: &[&str]| {
        let mut cmd = Command::new("make");
        cmd.arg("-C").arg(&src).arg(format!("O={}", out.display()));
        cmd.args(args);
        cmd
    };

    on_event(BuildEvent::Stage(
        "configuring (tinyconfig + p2pdma fragment)".into(),
    ));
    run("make tinyconfig", &mut make(&["tinyconfig"]), on_event)?;
    let fragment_path = out.join("p2pdma.fragment");
    let fragment = merged_fragment(flavour);
    fs::write(&fragment_path, &fragment).map_err(cache_err("cannot write", &fragment_path))?;
    run(
        "merge_config.sh",
        Command::new(src.join("scripts/kconfig/merge_config.sh"))
            .arg("-m")
            .arg("-O")
            .arg(&out)
            .arg(out.join(".config"))
            .arg(&fragment_path)
            .current_dir(&out),
        on_event,
    )?;
    run("make olddefconfig", &mut make(&["olddefconfig"]), on_event)?;
    let config_path = out.join(".config");
    let config =
        fs::read_to_string(&config_path).map_err(cache_err("cannot read", &config_path))?;
    let missing = missing_options(&fragment, &config);
    if !missing.is_empty() {
        return Err(KernelError::ConfigIncomplete {
            missing: missing.join(", "),
            log: log_path,
        });
    }
    let enabled = options_left_on(&fragment, &config);
    if !enabled.is_empty() {
        return Err(KernelError::ConfigNotOff {
            enabled: enabled.join(", "),
            log: log_path,
        });
    }

    on_event(BuildEvent::Stage(format!(
        "compiling bzImage with {jobs} jobs"
    )));
    run(
        "make bzImage",
        &mut make(&[&format!("-j{jobs}"), "bzImage"]),
        on_event,
    )?;

    let built = out.join("arch/x86/boot/bzImage");
    let bzimage = dir.join("bzImage");
    let partial = dir.join("bzImage.partial");
    fs::copy(&built, &partial).map_err(cache_err("cannot copy", &built))?;
    fs::rename(&partial, &bzimage).map_err(cache_err("cannot rename", &partial))?;
    let config_copy = dir.join("config");
    fs::write(&config_copy, &config).map_err(cache_err("cannot write", &config_copy))?;
    Ok(bzimage)
}

/// Puts the lab's `p2pdma_ram` driver into the tree at `src` (idempotent).
///
/// Files are replaced by rename, never written through, so a hard-linked mirror of
/// someone's tree leaves the original untouched.
fn add_ram_driver(src: &Path) -> Result<(), KernelError> {
    let pci = src.join("drivers/pci");
    let replace = |path: &Path, text: &str| -> Result<(), KernelError> {
        let err = |what| {
            let path = path.to_owned();
            move |source| KernelError::DriverPatch { what, path, source }
        };
        let partial = path.with_extension("p2pdma-partial");
        fs::write(&partial, text).map_err(err("cannot write"))?;
        fs::rename(&partial, path).map_err(err("cannot rename onto"))
    };
    let append = |name: &str, addition: &str| -> Result<(), KernelError> {
        let path = pci.join(name);
        let text = fs::read_to_string(&path).map_err(|source| KernelError::DriverPatch {
            what: "cannot read",
            path: path.clone(),
            source,
        })?;
        match with_ram_driver(&text, addition) {
            Some(patched) => replace(&path, &patched),
            None => Ok(()),
        }
    };
    append("Kconfig", RAM_DRIVER_KCONFIG)?;
    append("Makefile", RAM_DRIVER_MAKEFILE)?;
    replace(&pci.join("p2pdma_ram.c"), RAM_DRIVER_SOURCE)
}

/// `text` (drivers/pci's Kconfig or Makefile) with `addition` appended, or `None` when the
/// tree already has the driver.
fn with_ram_driver(text: &str, addition: &str) -> Option<String> {
    if text.contains(RAM_DRIVER_SYMBOL) || text.contains("p2pdma_ram.o") {
        return None;
    }
    let mut patched = text.to_owned();
    if !patched.ends_with('\n') {
        patched.push('\n');
    }
    patched.push_str(addition);
    Some(patched)
}

pub(crate) fn run_step(
    step: &str,
    cmd: &mut Command,
    log: &mut fs::File,
    log_path: &Path,
    on_event: &mut dyn FnMut(BuildEvent),
) -> Result<(), KernelError> {
    use std::io::Write;
    let _ = writeln!(log, "$ {cmd:?}");
    let program = cmd.get_program().to_string_lossy().into_owned();
    // Both streams go through one pipe so the log keeps their order.
    let (reader, writer) = std::io::pipe().map_err(|source| KernelError::Cache {
        what: "cannot create a pipe for",
        path: log_path.to_owned(),
        source,
    })?;
    let writer2 = writer.try_clone().map_err(|source| KernelError::Cache {
        what: "cannot create a pipe for",
        path: log_path.to_owned(),
        source,
    })?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .spawn()
        .map_err(|source| KernelError::ToolMissing {
            tool: program,
            source,
        })?;
    // Drop the builder's copies of the pipe's write end so reading ends with the child.
    drop(std::mem::replace(cmd, Command::new("true")));
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(log, "{line}");
        tail.push(line.clone());
        if tail.len() > 25 {
            tail.remove(0);
        }
        on_event(BuildEvent::Line(line));
    }
    let status = child.wait().map_err(|source| KernelError::Cache {
        what: "cannot wait for a build step, log",
        path: log_path.to_owned(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(KernelError::StepFailed {
            step: step.to_owned(),
            status: status.to_string(),
            log: log_path.to_owned(),
            tail: tail.join("\n"),
        })
    }
}

/// Options set to `y` in `fragment` that are not `y` in `config`.
pub fn missing_options(fragment: &str, config: &str) -> Vec<String> {
    let set: std::collections::HashSet<&str> = config
        .lines()
        .filter_map(|l| l.strip_suffix("=y"))
        .collect();
    fragment
        .lines()
        .filter_map(|l| l.trim().strip_suffix("=y"))
        .filter(|opt| !set.contains(opt))
        .map(str::to_owned)
        .collect()
}

/// Options `fragment` turns off (`# CONFIG_X is not set`) that are on (`=y` or `=m`) in `config`.
pub fn options_left_on(fragment: &str, config: &str) -> Vec<String> {
    let on: std::collections::HashSet<&str> = config
        .lines()
        .filter_map(|l| l.strip_suffix("=y").or_else(|| l.strip_suffix("=m")))
        .collect();
    fragment
        .lines()
        .filter_map(fragment_setting)
        .filter(|(opt, set)| !set && on.contains(opt))
        .map(|(opt, _)| opt.to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_fragment_has_the_options_p2pdma_cannot_live_without() {
        for opt in [
            "CONFIG_PCI_P2PDMA=y",
            "CONFIG_ZONE_DEVICE=y",
            "CONFIG_BLK_DEV_NVME=y",
            "CONFIG_IO_URING=y",
            "CONFIG_PCI_MMCONFIG=y",
            "CONFIG_HOTPLUG_PCI_PCIE=y",
        ] {
            assert!(BASE_FRAGMENT.lines().any(|l| l == opt), "{opt}");
        }
        assert!(DEBUG_FRAGMENT.contains("CONFIG_KASAN=y"));
    }

    #[test]
    fn the_ram_driver_is_in_the_base_fragment_and_appended_once() {
        assert!(BASE_FRAGMENT
            .lines()
            .any(|l| l == "CONFIG_PCI_P2PDMA_LAB_RAM=y"));
        assert!(RAM_DRIVER_KCONFIG.contains(RAM_DRIVER_SYMBOL));
        assert!(RAM_DRIVER_MAKEFILE.contains("$(CONFIG_PCI_P2PDMA_LAB_RAM)"));
        assert!(RAM_DRIVER_SOURCE.starts_with("// SPDX-License-Identifier: GPL-2.0\n"));
        let kconfig = "config PCI_P2PDMA\n\tbool \"p2p\"\nendif";
        let once = with_ram_driver(kconfig, RAM_DRIVER_KCONFIG).unwrap();
        assert!(once.starts_with("config PCI_P2PDMA\n\tbool \"p2p\"\nendif\n"));
        assert!(once.ends_with(RAM_DRIVER_KCONFIG));
        assert_eq!(with_ram_driver(&once, RAM_DRIVER_KCONFIG), None);
        for flavour in Flavour::all() {
            let keyed = keyed_texts(flavour);
            for driver_file in [RAM_DRIVER_SOURCE, RAM_DRIVER_KCONFIG, RAM_DRIVER_MAKEFILE] {
                assert!(
                    keyed.contains(&driver_file),
                    "not in the {flavour} cache key"
                );
            }
        }
        let makefile = with_ram_driver("obj-y += a.o\n", RAM_DRIVER_MAKEFILE).unwrap();
        assert_eq!(with_ram_driver(&makefile, RAM_DRIVER_MAKEFILE), None);
    }

    #[test]
    fn adding_the_driver_to_a_mirror_leaves_the_linked_original_alone() {
        let dir = tempfile::tempdir().unwrap();
        let original = dir.path().join("orig/drivers/pci");
        fs::create_dir_all(&original).unwrap();
        fs::write(original.join("Kconfig"), "config PCI\n").unwrap();
        fs::write(original.join("Makefile"), "obj-y += pci.o\n").unwrap();
        let mirror = dir.path().join("mirror/drivers/pci");
        fs::create_dir_all(&mirror).unwrap();
        for name in ["Kconfig", "Makefile"] {
            fs::hard_link(original.join(name), mirror.join(name)).unwrap();
        }
        add_ram_driver(&dir.path().join("mirror")).unwrap();
        add_ram_driver(&dir.path().join("mirror")).unwrap();
        assert_eq!(
            fs::read_to_string(original.join("Kconfig")).unwrap(),
            "config PCI\n"
        );
        assert!(!original.join("p2pdma_ram.c").exists());
        let kconfig = fs::read_to_string(mirror.join("Kconfig")).unwrap();
        assert_eq!(kconfig.matches(RAM_DRIVER_SYMBOL).count(), 1);
        assert_eq!(
            fs::read_to_string(mirror.join("p2pdma_ram.c")).unwrap(),
            RAM_DRIVER_SOURCE
        );
        let err = add_ram_driver(dir.path()).unwrap_err();
        assert!(err.to_string().contains("p2pdma_ram"), "{err}");
    }

    #[test]
    fn the_no_p2pdma_flavour_turns_p2pdma_off_and_vfio_on() {
        let merged = merged_fragment(Flavour::NoP2pdma);
        assert!(
            !merged.lines().any(|l| l == "CONFIG_PCI_P2PDMA=y"),
            "{merged}"
        );
        assert!(merged
            .lines()
            .any(|l| l == "# CONFIG_PCI_P2PDMA is not set"));
        assert!(!merged.lines().any(|l| l == "CONFIG_PCI_P2PDMA_LAB_RAM=y"));
        for opt in [
            "CONFIG_VFIO=y",
            "CONFIG_VFIO_PCI=y",
            "CONFIG_VFIO_IOMMU_TYPE1=y",
            "CONFIG_INTEL_IOMMU=y",
            "CONFIG_INTEL_IOMMU_DEFAULT_ON=y",
            "CONFIG_BLK_DEV_NVME=y",
        ] {
            assert_eq!(merged.lines().filter(|l| *l == opt).count(), 1, "{opt}");
        }
        // The standard flavour keeps P2PDMA; nothing in it is turned off by a later line.
        assert!(merged_fragment(Flavour::Standard)
            .lines()
            .any(|l| l == "CONFIG_PCI_P2PDMA=y"));
        let config = "CONFIG_PCI_P2PDMA=y\nCONFIG_VFIO=y\n";
        assert_eq!(options_left_on(&merged, config), ["CONFIG_PCI_P2PDMA"]);
        assert!(options_left_on(&merged, "CONFIG_VFIO=y\n").is_empty());
        let names: Vec<String> = Flavour::all().map(|f| f.to_string()).collect();
        assert_eq!(names, ["standard", "debug", "no-p2pdma"]);
        assert_eq!(
            serde_json::to_string(&Flavour::NoP2pdma).unwrap(),
            "\"no-p2pdma\""
        );
    }

    #[test]
    fn missing_options_names_only_what_olddefconfig_dropped() {
        let fragment = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\n";
        let config = "CONFIG_A=y\nCONFIG_D=y\n";
        assert_eq!(missing_options(fragment, config), ["CONFIG_C"]);
    }

    #[test]
    fn cache_key_depends_on_flavour_and_source() {
        let dir = tempfile::tempdir().unwrap();
        let tarball = dir.path().join("linux.tar.xz");
        fs::write(&tarball, b"not really").unwrap();
        let source = KernelSource::from_path(&tarball).unwrap();
        let (standard, _) = cache_key(&source, Flavour::Standard).unwrap();
        let (debug, _) = cache_key(&source, Flavour::Debug).unwrap();
        assert_ne!(standard, debug);
        assert_eq!(standard, cache_key(&source, Flavour::Standard).unwrap().0);
        fs::write(&tarball, b"another source, another size").unwrap();
        assert_ne!(standard, cache_key(&source, Flavour::Standard).unwrap().0);
    }

    #[test]
    fn source_paths_are_recognised_or_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let err = KernelSource::from_path(&dir.path().join("nope.tar.xz")).unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
        let err = KernelSource::from_path(dir.path()).unwrap_err();
        assert!(err.to_string().contains("neither a kernel tree"), "{err}");
        fs::write(dir.path().join("Makefile"), "").unwrap();
        assert_eq!(
            KernelSource::from_path(dir.path()).unwrap(),
            KernelSource::Directory(dir.path().to_owned())
        );
    }
}
