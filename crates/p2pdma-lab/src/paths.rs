//! Where the lab keeps things outside the repository, and a file lock for sharing them.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// The lab's cache root: `$P2PDMA_CACHE_DIR`, else `$XDG_CACHE_HOME/p2pdma`, else
/// `$HOME/.cache/p2pdma`, else `/tmp/p2pdma-cache`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("P2PDMA_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("p2pdma");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".cache/p2pdma");
    }
    PathBuf::from("/tmp/p2pdma-cache")
}

/// The user's topology file: `$XDG_CONFIG_HOME/p2pdma/topologies.toml` (or `~/.config/...`).
pub fn user_topologies() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("p2pdma/topologies.toml"))
}

/// The directory of one cached kernel.
pub fn kernel_dir(key: &str) -> PathBuf {
    cache_root().join("kernels").join(key)
}

/// An exclusive advisory lock on a file, released on drop.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Blocks until the lock on `path` (created if missing) is ours.
    pub fn exclusive(path: &Path) -> std::io::Result<FileLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(FileLock { _file: file })
    }
}

/// A new run directory for `label` under the system temp dir
/// (`<tmp>/p2pdma-lab/<label>-<pid>-<nanos>`).
pub fn run_dir(label: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::env::temp_dir()
        .join("p2pdma-lab")
        .join(format!("{label}-{}-{nanos}", std::process::id()))
}

/// The first `program` on `$PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
