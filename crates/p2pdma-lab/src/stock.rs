//! The distribution's own kernel, fetched instead of built: `p2pdma lab kernel --flavour stock`.
//!
//! Debian's stock 7.2 kernel (sid's `linux-binary-<abi>-amd64`) has `CONFIG_PCI_P2PDMA=y`
//! and carries NVMe, ext4, loop and vfio-pci as modules. The lab downloads it through the
//! private apt configuration of [`crate::host::PrivateApt::for_download`] (never the
//! system's sources, never installed: `apt-get download` and `dpkg-deb -x` into the cache),
//! keeps the image and the decompressed modules the guest needs, in dependency order (read
//! from each module's `depends=` field, which is what `depmod` writes to `modules.dep`),
//! and builds the lab's `p2pdma_ram` driver as a module against the matching
//! `linux-headers` package.
//!
//! Building that module on a bookworm host needs two adaptations, both stated in the
//! kernel's `kernel.json` and printed when the module is built:
//! - sid's kbuild host tools (`modpost`, `objtool`) need glibc 2.38; bookworm has 2.36.
//!   They run through sid's own dynamic loader and libc (`libc6`, fetched the same way,
//!   kept in the build directory only), with the host's other libraries (libelf).
//! - the kernel was compiled by sid's gcc-16, whose flags the headers' Makefiles pass on;
//!   bookworm's gcc-12 lacks `-fmin-function-alignment=N`, which a small wrapper turns into
//!   `-falign-functions=N` (the kernel's own Makefile falls back to the same flag when a
//!   compiler lacks the first). Module BTF is not generated (no pahole needed).
//!
//! The result is cached under `<cache>/kernels/stock-<abi>-<hash>`: `vmlinuz`, `config`,
//! `modules/*.ko` and `modules.load`, the load order that [`crate::initramfs`] puts into
//! the guest and the guest's init loads with `insmod`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::host::{PrivateApt, SetupError};
use crate::kernel::{run_step, BuildEvent, KernelError, RAM_DRIVER_SOURCE};
use crate::kernel_source::by_name;
use crate::paths;

pub use crate::initramfs::MODULES_LOAD;
/// The modules the guest needs from the distribution's kernel, besides their
/// dependencies: NVMe (the lab's disks and CMBs), ext4 (topologies with formatted disks),
/// loop, and vfio-pci (the VFIO work).
pub const GUEST_MODULES: &[&str] = &["nvme", "ext4", "loop", "vfio-pci"];
/// Module parameters the guest loads modules with, so that the stock kernel presents what
/// the lab's built kernels do: Debian enables NVMe native multipath, whose head disk
/// (`nvmeXnY` under the subsystem) replaces the per-controller disks the lab's helpers,
/// tests and topologies name; `multipath=N` keeps one disk per controller, as the built
/// kernels (`# CONFIG_NVME_MULTIPATH is not set`) have.
pub const MODULE_PARAMETERS: &[(&str, &str)] = &[("nvme_core", "multipath=N")];
/// Bumped whenever the steps below change what ends up in the cache.
const RECIPE_VERSION: &str = "p2pdma-lab-stock-recipe-2";

/// One distribution kernel the lab can fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockRelease {
    /// The release users name (`7.2`).
    pub name: &'static str,
    /// The Debian suite it comes from.
    pub suite: &'static str,
    /// Debian's kernel flavour (the package names' last part).
    pub arch_flavour: &'static str,
}

/// The distribution kernels the lab ships.
pub const STOCK_RELEASES: &[StockRelease] = &[StockRelease {
    name: "7.2",
    suite: "sid",
    arch_flavour: "amd64",
}];

/// Errors while fetching or preparing a stock kernel.
#[derive(Debug, thiserror::Error)]
pub enum StockError {
    /// No stock kernel for this release.
    #[error("the lab has no stock (distribution) kernel for release '{name}': stock kernels are {known}; use --release {known}, or --flavour standard to build {name}")]
    UnknownRelease {
        /// What was asked for.
        name: String,
        /// The releases there are.
        known: String,
    },
    /// apt could not update, list or download.
    #[error("cannot {what} from Debian's {suite} suite through the lab's private apt configuration (needs network to Debian's mirror)")]
    Fetch {
        /// What was being done.
        what: String,
        /// The suite.
        suite: &'static str,
        /// Why.
        #[source]
        source: SetupError,
    },
    /// The suite has no kernel package of this release.
    #[error("Debian's {suite} lists no linux-binary-{release}.*-{arch} package (its lists in {lists}); the suite may have moved to another release: update p2pdma, or run `p2pdma lab kernel --release {release}` to build one")]
    NoPackage {
        /// The release.
        release: &'static str,
        /// The suite.
        suite: &'static str,
        /// The flavour.
        arch: &'static str,
        /// Where the lists are.
        lists: PathBuf,
    },
    /// The kernel's config lacks what the lab is about.
    #[error("the stock kernel's config {config} does not have CONFIG_PCI_P2PDMA=y; the lab cannot use it (build one with --flavour standard)")]
    NoP2pdma {
        /// The config file.
        config: PathBuf,
    },
    /// A module the guest needs is not in the modules package.
    #[error(
        "module {name} is not in {dir} (wanted by the lab guest, or a dependency of one it wants)"
    )]
    ModuleMissing {
        /// The module.
        name: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// The module built against the headers would not load into the kernel.
    #[error("p2pdma_ram.ko was built with vermagic '{built}' but the kernel's modules have '{kernel}'; it would not load. Build log: {log}")]
    Vermagic {
        /// The built module's.
        built: String,
        /// The kernel's.
        kernel: String,
        /// The build log.
        log: PathBuf,
    },
    /// A build step (module build, unpacking) failed.
    #[error("preparing the stock kernel failed")]
    Step(#[from] KernelError),
    /// A file in the cache or the build directory could not be handled.
    #[error("stock kernel: {what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StockError {
    let path = path.to_owned();
    move |source| StockError::Io { what, path, source }
}

/// A stock kernel in the cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StockKernel {
    /// The bootable image (`vmlinuz`); `modules.load` is beside it.
    pub image: PathBuf,
    /// The cache key.
    pub key: String,
    /// `uname -r` of the kernel (e.g. `7.2.13+deb14-amd64`).
    pub kernel_release: String,
    /// The Debian packages it came from, `name=version`.
    pub packages: Vec<String>,
    /// The modules the guest loads, in order (file names under `modules/`).
    pub modules: Vec<String>,
    /// How p2pdma_ram.ko was built (compiler, adaptations).
    pub ram_module_build: String,
    /// Seconds the fetch and preparation took.
    pub seconds: f64,
    /// Whether this call fetched it (false: it came from the cache).
    #[serde(skip)]
    pub fetched_now: bool,
}

impl StockRelease {
    /// The stock kernel of release `name`.
    pub fn named(name: &str) -> Result<StockRelease, StockError> {
        by_name(STOCK_RELEASES, name, |r| r.name).map_err(|known| StockError::UnknownRelease {
            name: name.to_owned(),
            known,
        })
    }

    fn apt(&self) -> Result<PrivateApt, StockError> {
        let dir = paths::cache_root().join("apt").join(self.suite);
        PrivateApt::for_download(&dir, self.suite).map_err(|source| StockError::Fetch {
            what: "write the private apt configuration".into(),
            suite: self.suite,
            source,
        })
    }

    /// The newest ABI name (`7.2.13+deb14`) the suite's lists have, updating the private
    /// lists first only when there are none.
    fn newest_abi(&self, apt: &PrivateApt, refresh: bool) -> Result<String, StockError> {
        let fetch = |what: &str| {
            let what = what.to_owned();
            let suite = self.suite;
            move |source| StockError::Fetch {
                what,
                suite,
                source,
            }
        };
        let lists = paths::cache_root().join("apt").join(self.suite);
        let _lock = paths::FileLock::exclusive(&lists.join("update.lock"))
            .map_err(io_err("cannot lock", &lists))?;
        if refresh || !apt.has_lists() {
            apt.update_on_stderr()
                .map_err(fetch("update the package lists"))?;
        }
        let prefix = format!("linux-binary-{}.", self.name);
        let names = apt
            .package_names(&prefix)
            .map_err(fetch("list the kernel packages"))?;
        newest_abi(&names, self.name, self.arch_flavour).ok_or(StockError::NoPackage {
            release: self.name,
            suite: self.suite,
            arch: self.arch_flavour,
            lists: lists.join("lists"),
        })
    }
}

/// The newest `<release>.<patch>+<suffix>` ABI among `linux-binary-<abi>-<arch>` names
/// (other flavours such as `-cloud-amd64` and the `-unsigned-` images are ignored).
pub fn newest_abi(names: &[String], release: &str, arch: &str) -> Option<String> {
    let prefix = format!("linux-binary-{release}.");
    let suffix = format!("-{arch}");
    names
        .iter()
        .filter_map(|n| n.strip_prefix("linux-binary-")?.strip_suffix(&suffix))
        .filter(|abi| {
            format!("linux-binary-{abi}").starts_with(&prefix)
                && !abi.contains('-')
                && abi.contains('+')
        })
        .max_by_key(|abi| {
            let (version, suffix) = abi.split_once('+').unwrap_or((abi, ""));
            let numbers: Vec<u64> = version.split('.').filter_map(|p| p.parse().ok()).collect();
            (numbers, suffix.to_owned())
        })
        .map(str::to_owned)
}

/// The value of `field` (e.g. `depends`, `vermagic`) in a module's `.modinfo` strings.
pub fn modinfo_field(module: &[u8], field: &str) -> Option<String> {
    let key = format!("{field}=");
    module
        .split(|&b| b == 0)
        .find(|s| s.starts_with(key.as_bytes()))
        .map(|s| String::from_utf8_lossy(&s[key.len()..]).into_owned())
}

/// A module name as the kernel compares it (`-` and `_` are the same).
pub fn module_key(name: &str) -> String {
    name.replace('-', "_")
}

/// `wanted` and everything they depend on, each after its dependencies (the order
/// `modprobe` would load them in), given each module's direct dependencies.
pub fn dependency_order(
    wanted: &[&str],
    depends_of: &mut dyn FnMut(&str) -> Result<Vec<String>, StockError>,
) -> Result<Vec<String>, StockError> {
    fn visit(
        name: &str,
        depends_of: &mut dyn FnMut(&str) -> Result<Vec<String>, StockError>,
        done: &mut BTreeSet<String>,
        visiting: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), StockError> {
        let key = module_key(name);
        if done.contains(&key) || !visiting.insert(key.clone()) {
            return Ok(()); // loaded already, or a cycle (modules have none; do not loop)
        }
        for dep in depends_of(&key)? {
            visit(&dep, depends_of, done, visiting, order)?;
        }
        visiting.remove(&key);
        done.insert(key.clone());
        order.push(key);
        Ok(())
    }
    let mut done = BTreeSet::new();
    let mut visiting = BTreeSet::new();
    let mut order = Vec::new();
    for name in wanted {
        visit(name, depends_of, &mut done, &mut visiting, &mut order)?;
    }
    Ok(order)
}

/// The headers package's Makefile, which names its two trees by absolute `/usr/src/`
/// paths, pointed at the copy unpacked under `root`.
pub fn relocated_makefile(text: &str, root: &Path) -> String {
    text.replace("/usr/src/", &format!("{}/usr/src/", root.display()))
}

/// The cache key of release `abi`'s stock kernel with the lab's current driver and recipe.
fn cache_key(abi: &str) -> String {
    let mut hasher = Sha256::new();
    let parameters: Vec<String> = MODULE_PARAMETERS
        .iter()
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    for text in [
        RECIPE_VERSION,
        abi,
        RAM_DRIVER_SOURCE,
        &GUEST_MODULES.join(","),
        &parameters.join(","),
    ] {
        hasher.update(text.as_bytes());
        hasher.update(b"\0");
    }
    let digest = hasher.finalize();
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("stock-{abi}-{hash}")
}

fn read_cached(dir: &Path) -> Option<StockKernel> {
    let text = fs::read_to_string(dir.join("kernel.json")).ok()?;
    let kernel: StockKernel = serde_json::from_str(&text).ok()?;
    (kernel.image.is_file() && dir.join(MODULES_LOAD).is_file()).then_some(kernel)
}

/// The cached stock kernel of `release`, fetched and prepared first if needed.
///
/// Which kernel is the newest comes from the private package lists, fetched once; a
/// download that fails (sid drops superseded kernels from the mirror) refreshes them and
/// tries once more. Concurrent callers wait on a lock file rather than fetching twice.
pub fn ensure(
    release: &StockRelease,
    on_event: &mut dyn FnMut(BuildEvent),
) -> Result<StockKernel, StockError> {
    let apt = release.apt()?;
    match ensure_abi(release, &apt, release.newest_abi(&apt, false)?, on_event) {
        Err(StockError::Fetch { .. }) => {
            on_event(BuildEvent::Stage(format!(
                "the download failed: refreshing the {} package lists and trying again",
                release.suite
            )));
            let abi = release.newest_abi(&apt, true)?;
            ensure_abi(release, &apt, abi, on_event)
        }
        other => other,
    }
}

fn ensure_abi(
    release: &StockRelease,
    apt: &PrivateApt,
    abi: String,
    on_event: &mut dyn FnMut(BuildEvent),
) -> Result<StockKernel, StockError> {
    let key = cache_key(&abi);
    let dir = paths::kernel_dir(&key);
    if let Some(kernel) = read_cached(&dir) {
        return Ok(kernel);
    }
    fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
    // Beside the directory (`with_extension` would cut the key at the release's dot).
    let lock_path = paths::kernel_dir(&format!("{key}.lock"));
    let _lock =
        paths::FileLock::exclusive(&lock_path).map_err(io_err("cannot lock", &lock_path))?;
    if let Some(kernel) = read_cached(&dir) {
        return Ok(kernel);
    }
    let started = Instant::now();
    let work = paths::cache_root().join("build").join(&key);
    let prepared = prepare(release, apt, &abi, &key, &work, &dir, on_event);
    on_event(BuildEvent::Stage("removing the unpacked packages".into()));
    let _ = fs::remove_dir_all(&work);
    let mut kernel = prepared?;
    kernel.seconds = started.elapsed().as_secs_f64();
    let meta_path = dir.join("kernel.json");
    let meta = serde_json::to_string_pretty(&kernel).expect("kernel metadata serialises");
    fs::write(&meta_path, meta).map_err(io_err("cannot write", &meta_path))?;
    Ok(kernel)
}

/// Downloads, unpacks, picks the modules, builds p2pdma_ram.ko; fills `dir`.
fn prepare(
    release: &StockRelease,
    apt: &PrivateApt,
    abi: &str,
    key: &str,
    work: &Path,
    dir: &Path,
    on_event: &mut dyn FnMut(BuildEvent),
) -> Result<StockKernel, StockError> {
    if work.exists() {
        fs::remove_dir_all(work).map_err(io_err("cannot clear", work))?;
    }
    let debs = work.join("debs");
    let root = work.join("root");
    let libc = work.join("libc");
    for d in [&debs, &root, &libc] {
        fs::create_dir_all(d).map_err(io_err("cannot create", d))?;
    }
    let log_path = dir.join("build.log");
    let mut log = fs::File::create(&log_path).map_err(io_err("cannot create", &log_path))?;
    let mut run = |step: &str, cmd: &mut Command, on_event: &mut dyn FnMut(BuildEvent)| {
        run_step(step, cmd, &mut log, &log_path, on_event)
    };

    let arch = release.arch_flavour;
    let kernel_release = format!("{abi}-{arch}");
    let packages: Vec<String> = vec![
        format!("linux-binary-{kernel_release}"),
        // config and System.map
        format!("linux-base-{kernel_release}"),
        format!("linux-modules-{kernel_release}"),
        format!("linux-headers-{kernel_release}"),
        format!("linux-headers-{abi}-common"),
        format!("linux-kbuild-{abi}"),
        // sid's C library, only to run the kbuild host tools above (see the module docs).
        "libc6".to_owned(),
    ];
    on_event(BuildEvent::Stage(format!(
        "downloading Debian {} {} (private apt configuration under {})",
        release.suite,
        packages.join(" "),
        paths::cache_root().join("apt").display()
    )));
    let files = apt
        .download_all(&packages, &debs)
        .map_err(|source| StockError::Fetch {
            what: format!("download {}", packages.join(" ")),
            suite: release.suite,
            source,
        })?;
    let versions: Vec<String> = files
        .iter()
        .zip(&packages)
        .map(|(f, p)| {
            let version = f
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split('_').nth(1))
                .unwrap_or("?")
                .replace("%3a", ":");
            format!("{p}={version}")
        })
        .collect();
    on_event(BuildEvent::Stage(
        "unpacking (dpkg-deb -x, nothing is installed)".into(),
    ));
    for (deb, package) in files.iter().zip(&packages) {
        let into = if package == "libc6" { &libc } else { &root };
        run(
            &format!("dpkg-deb -x {}", deb.display()),
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(into),
            on_event,
        )?;
    }

    let modules_root = root.join("usr/lib/modules").join(&kernel_release);
    let config_path = modules_root.join("config");
    let config = fs::read_to_string(&config_path).map_err(io_err("cannot read", &config_path))?;
    if !config.lines().any(|l| l == "CONFIG_PCI_P2PDMA=y") {
        return Err(StockError::NoP2pdma {
            config: config_path,
        });
    }

    // Index every module file by the name the kernel knows it by.
    let mut index = BTreeMap::new();
    index_modules(&modules_root.join("kernel"), &mut index)?;
    let out_modules = dir.join("modules");
    if out_modules.exists() {
        fs::remove_dir_all(&out_modules).map_err(io_err("cannot clear", &out_modules))?;
    }
    fs::create_dir_all(&out_modules).map_err(io_err("cannot create", &out_modules))?;
    on_event(BuildEvent::Stage(format!(
        "decompressing {} and their dependencies",
        GUEST_MODULES.join(", ")
    )));
    let mut decompressed: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let kernel_dir = modules_root.join("kernel");
    let mut depends_of = |name: &str| -> Result<Vec<String>, StockError> {
        let path = index.get(name).ok_or_else(|| StockError::ModuleMissing {
            name: name.to_owned(),
            dir: kernel_dir.clone(),
        })?;
        let bytes = decompress(path)?;
        let deps = modinfo_field(&bytes, "depends")
            .unwrap_or_default()
            .split(',')
            .filter(|d| !d.is_empty())
            .map(str::to_owned)
            .collect();
        decompressed.insert(name.to_owned(), bytes);
        Ok(deps)
    };
    let order = dependency_order(GUEST_MODULES, &mut depends_of)?;
    let kernel_vermagic = decompressed
        .get("nvme")
        .and_then(|b| modinfo_field(b, "vermagic"))
        .unwrap_or_default();
    let mut load = Vec::new();
    for name in &order {
        let file = format!("{name}.ko");
        let path = out_modules.join(&file);
        fs::write(&path, &decompressed[name]).map_err(io_err("cannot write", &path))?;
        match MODULE_PARAMETERS.iter().find(|(m, _)| m == name) {
            Some((_, parameters)) => load.push(format!("modules/{file} {parameters}")),
            None => load.push(format!("modules/{file}")),
        }
    }

    // The lab's RAM provider, built against the headers.
    let ram_module_build = build_ram_module(
        &root,
        &libc,
        abi,
        &kernel_release,
        work,
        &kernel_vermagic,
        &log_path,
        &mut run,
        on_event,
    )?;
    let ram_path = out_modules.join("p2pdma_ram.ko");
    fs::copy(work.join("ram/p2pdma_ram.ko"), &ram_path)
        .map_err(io_err("cannot copy the built module to", &ram_path))?;
    load.push("modules/p2pdma_ram.ko".to_owned());
    let mut module_names = order.clone();
    module_names.push("p2pdma_ram".into());

    let image = dir.join("vmlinuz");
    let partial = dir.join("vmlinuz.partial");
    let source_image = modules_root.join("vmlinuz");
    fs::copy(&source_image, &partial).map_err(io_err("cannot copy", &source_image))?;
    fs::rename(&partial, &image).map_err(io_err("cannot rename", &partial))?;
    let config_copy = dir.join("config");
    fs::write(&config_copy, &config).map_err(io_err("cannot write", &config_copy))?;
    let load_path = dir.join(MODULES_LOAD);
    fs::write(&load_path, load.join("\n") + "\n").map_err(io_err("cannot write", &load_path))?;
    Ok(StockKernel {
        image,
        key: key.to_owned(),
        kernel_release,
        packages: versions,
        modules: module_names,
        ram_module_build,
        seconds: 0.0,
        fetched_now: true,
    })
}

fn index_modules(dir: &Path, index: &mut BTreeMap<String, PathBuf>) -> Result<(), StockError> {
    for entry in fs::read_dir(dir).map_err(io_err("cannot read", dir))? {
        let entry = entry.map_err(io_err("cannot read", dir))?;
        let path = entry.path();
        if path.is_dir() {
            index_modules(&path, index)?;
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
            .iter()
            .find_map(|ext| name.strip_suffix(ext));
        if let Some(stem) = stem {
            index.insert(module_key(stem), path);
        }
    }
    Ok(())
}

/// A module file's bytes, decompressed (`xz -dc`, `zstd -dc`, `gzip -dc`) when it is.
fn decompress(path: &Path) -> Result<Vec<u8>, StockError> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return fs::read(path).map_err(io_err("cannot read", path));
    };
    let output = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .map_err(|source| {
            StockError::Step(KernelError::ToolMissing {
                tool: tool.to_owned(),
                source,
            })
        })?;
    if !output.status.success() {
        return Err(StockError::Io {
            what: "cannot decompress",
            path: path.to_owned(),
            source: std::io::Error::other(format!(
                "{tool} -dc: {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )),
        });
    }
    Ok(output.stdout)
}

/// Runs one logged build step (the kernel builder's `run_step` with its log bound).
type StepRunner<'a> =
    dyn FnMut(&str, &mut Command, &mut dyn FnMut(BuildEvent)) -> Result<(), KernelError> + 'a;

/// The kbuild host tools that run through sid's loader: (what kbuild calls, the binary
/// to run). Debian's `modpost` and `objtool` are dispatchers that pick a `.real-*` binary
/// by target; the lab's guest is x86-64, so the wrapper names that one directly.
const KBUILD_TOOLS: &[(&str, &str)] = &[
    ("scripts/mod/modpost", "scripts/mod/modpost.real-lsb-64"),
    ("tools/objtool/objtool", "tools/objtool/objtool.real-x86"),
    ("scripts/basic/fixdep", "scripts/basic/fixdep"),
    ("scripts/genksyms/genksyms", "scripts/genksyms/genksyms"),
];

/// A shell script that runs `binary` with sid's dynamic loader and C library from `libc`
/// (other libraries from the host's directories).
fn loader_wrapper(libc_lib: &Path, binary: &Path) -> String {
    let lib = libc_lib.display();
    format!(
        "#!/bin/sh\n# p2pdma lab: run sid's kbuild tool with sid's C library (the host's is older).\nexec {lib}/ld-linux-x86-64.so.2 --library-path {lib}:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu {} \"$@\"\n",
        binary.display()
    )
}

/// A compiler wrapper for a gcc that lacks `-fmin-function-alignment=N`.
const CC_WRAPPER: &str = "#!/bin/sh
# p2pdma lab: the stock kernel was built by a newer gcc; this gcc lacks
# -fmin-function-alignment=N, so pass -falign-functions=N instead (the kernel's own
# Makefile uses the same fallback for compilers without the first).
for arg in \"$@\"; do
    shift
    case \"$arg\" in
        -fmin-function-alignment=*) set -- \"$@\" \"-falign-functions=${arg#-fmin-function-alignment=}\" ;;
        *) set -- \"$@\" \"$arg\" ;;
    esac
done
exec gcc \"$@\"
";

fn gcc_version() -> String {
    Command::new("gcc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "gcc (version unknown)".into())
}

fn gcc_has_min_function_alignment() -> bool {
    Command::new("gcc")
        .args([
            "-fmin-function-alignment=16",
            "-x",
            "c",
            "-c",
            "-o",
            "/dev/null",
            "/dev/null",
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[allow(clippy::too_many_arguments)]
fn build_ram_module(
    root: &Path,
    libc: &Path,
    abi: &str,
    kernel_release: &str,
    work: &Path,
    kernel_vermagic: &str,
    log_path: &Path,
    run: &mut StepRunner<'_>,
    on_event: &mut dyn FnMut(BuildEvent),
) -> Result<String, StockError> {
    let headers = root
        .join("usr/src")
        .join(format!("linux-headers-{kernel_release}"));
    let kbuild = root.join("usr/lib").join(format!("linux-kbuild-{abi}"));
    let libc_lib = libc.join("usr/lib/x86_64-linux-gnu");
    for (called, binary) in KBUILD_TOOLS {
        let called = kbuild.join(called);
        let mut binary = kbuild.join(binary);
        if !binary.is_file() {
            continue;
        }
        if binary == called {
            let moved = called.with_extension("sid");
            fs::rename(&called, &moved).map_err(io_err("cannot rename", &called))?;
            binary = moved;
        } else {
            let _ = fs::remove_file(&called);
        }
        fs::write(&called, loader_wrapper(&libc_lib, &binary))
            .map_err(io_err("cannot write", &called))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&called, fs::Permissions::from_mode(0o755))
            .map_err(io_err("cannot make executable", &called))?;
    }
    let makefile = headers.join("Makefile");
    let text = fs::read_to_string(&makefile).map_err(io_err("cannot read", &makefile))?;
    fs::write(&makefile, relocated_makefile(&text, root))
        .map_err(io_err("cannot write", &makefile))?;

    let gcc = gcc_version();
    let mut adaptations = vec![format!(
        "kbuild tools run with Debian sid's libc6 ({})",
        libc_lib.display()
    )];
    let cc = if gcc_has_min_function_alignment() {
        PathBuf::from("gcc")
    } else {
        let wrapper = work.join("cc-wrapper");
        fs::write(&wrapper, CC_WRAPPER).map_err(io_err("cannot write", &wrapper))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))
            .map_err(io_err("cannot make executable", &wrapper))?;
        adaptations.push("-fmin-function-alignment=N passed as -falign-functions=N".into());
        wrapper
    };
    adaptations.push("no module BTF".into());

    let ram = work.join("ram");
    fs::create_dir_all(&ram).map_err(io_err("cannot create", &ram))?;
    fs::write(ram.join("p2pdma_ram.c"), RAM_DRIVER_SOURCE).map_err(io_err("cannot write", &ram))?;
    fs::write(ram.join("Kbuild"), "obj-m += p2pdma_ram.o\n")
        .map_err(io_err("cannot write", &ram))?;
    let kernel_cc = fs::read_to_string(headers.join(".config"))
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("CONFIG_CC_VERSION_TEXT="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_default();
    on_event(BuildEvent::Stage(format!(
        "building p2pdma_ram.ko against linux-headers-{kernel_release} with {gcc} (the kernel was built with {kernel_cc}; {})",
        adaptations.join("; ")
    )));
    run(
        "make modules (p2pdma_ram)",
        Command::new("make")
            .arg("-C")
            .arg(&headers)
            .arg(format!("M={}", ram.display()))
            .arg(format!("CC={}", cc.display()))
            .arg("CONFIG_DEBUG_INFO_BTF_MODULES=")
            .arg("modules"),
        on_event,
    )?;
    let built = ram.join("p2pdma_ram.ko");
    let bytes = fs::read(&built).map_err(io_err("cannot read", &built))?;
    let vermagic = modinfo_field(&bytes, "vermagic").unwrap_or_default();
    if vermagic != kernel_vermagic || vermagic.is_empty() {
        return Err(StockError::Vermagic {
            built: vermagic,
            kernel: kernel_vermagic.to_owned(),
            log: log_path.to_owned(),
        });
    }
    Ok(format!(
        "{gcc} (kernel: {kernel_cc}); {}; vermagic '{vermagic}' matches the kernel's",
        adaptations.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_amd64_abi_of_the_release_is_chosen() {
        let names: Vec<String> = [
            "linux-binary-7.2.9+deb14-amd64",
            "linux-binary-7.2.13+deb14-amd64",
            "linux-binary-7.2.13+deb14-cloud-amd64",
            "linux-binary-unsigned-7.2.14+deb14-amd64",
            "linux-binary-7.20.1+deb15-amd64",
            "linux-binary-7.2.10+deb14-rt-amd64",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            newest_abi(&names, "7.2", "amd64").as_deref(),
            Some("7.2.13+deb14")
        );
        assert_eq!(newest_abi(&names, "7.3", "amd64"), None);
    }

    #[test]
    fn modinfo_fields_are_read_from_the_nul_separated_strings() {
        let mut module = b"\x7fELF junk\0".to_vec();
        module.extend_from_slice(b"license=GPL\0depends=nvme-core,nvme-auth\0vermagic=7.2.13+deb14-amd64 SMP preempt mod_unload \0");
        assert_eq!(
            modinfo_field(&module, "depends").as_deref(),
            Some("nvme-core,nvme-auth")
        );
        assert_eq!(
            modinfo_field(&module, "vermagic").as_deref(),
            Some("7.2.13+deb14-amd64 SMP preempt mod_unload ")
        );
        assert_eq!(modinfo_field(&module, "alias"), None);
    }

    #[test]
    fn dependencies_load_first_each_once_dashes_and_underscores_alike() {
        let deps: BTreeMap<&str, &str> = [
            ("nvme", "nvme-core,nvme-auth"),
            ("nvme_core", "nvme-auth,nvme-keyring"),
            ("nvme_auth", "nvme-keyring"),
            ("nvme_keyring", ""),
            ("loop", ""),
        ]
        .into_iter()
        .collect();
        let mut asked = Vec::new();
        let mut depends_of = |name: &str| -> Result<Vec<String>, StockError> {
            asked.push(name.to_owned());
            let list = deps.get(name).ok_or_else(|| StockError::ModuleMissing {
                name: name.to_owned(),
                dir: PathBuf::from("/kernel"),
            })?;
            Ok(list
                .split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect())
        };
        let order = dependency_order(&["nvme", "loop", "nvme-core"], &mut depends_of).unwrap();
        assert_eq!(
            order,
            ["nvme_keyring", "nvme_auth", "nvme_core", "nvme", "loop"]
        );
        let err = dependency_order(&["vfio-pci"], &mut depends_of).unwrap_err();
        assert!(err.to_string().contains("vfio_pci"), "{err}");
        // Each module's dependencies were read once, then the missing one was asked for.
        assert_eq!(asked.len(), 6, "{asked:?}");
        assert_eq!(asked[5], "vfio_pci");
    }

    #[test]
    fn the_headers_makefile_points_at_the_unpacked_copy() {
        let text = "KBUILD_OUTPUT=/usr/src/linux-headers-7.2.13+deb14-amd64\ninclude /usr/src/linux-headers-7.2.13+deb14-common/Makefile\n";
        let out = relocated_makefile(text, Path::new("/c/root"));
        assert_eq!(out, "KBUILD_OUTPUT=/c/root/usr/src/linux-headers-7.2.13+deb14-amd64\ninclude /c/root/usr/src/linux-headers-7.2.13+deb14-common/Makefile\n");
    }

    #[test]
    fn stock_releases_are_named_and_others_refused_with_the_alternative() {
        assert_eq!(StockRelease::named("7.2").unwrap().suite, "sid");
        let err = StockRelease::named("6.12").unwrap_err().to_string();
        assert!(err.contains("--release 7.2"), "{err}");
        assert!(err.contains("--flavour standard"), "{err}");
        assert_ne!(cache_key("7.2.13+deb14"), cache_key("7.2.14+deb14"));
        assert!(cache_key("7.2.13+deb14").starts_with("stock-7.2.13+deb14-"));
    }

    #[test]
    fn the_compiler_wrapper_maps_only_the_missing_flag() {
        let dir = tempfile::tempdir().unwrap();
        let wrapper = dir.path().join("cc");
        // The wrapper's last line runs gcc; a stand-in prints the arguments instead.
        fs::write(&wrapper, CC_WRAPPER.replace("exec gcc", "printf '%s|'")).unwrap();
        let out = Command::new("sh")
            .arg(&wrapper)
            .args(["-O2", "-fmin-function-alignment=16", "a b.c"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "-O2|-falign-functions=16|a b.c|"
        );
    }
}
