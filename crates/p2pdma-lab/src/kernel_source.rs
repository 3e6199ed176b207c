//! The kernel releases the lab ships, and where their source comes from.
//!
//! Linux 6.12 is Debian bookworm's `linux-source-6.12`, installed by `p2pdma lab setup`.
//! Newer releases come from Debian's newer suites: `linux-source-7.2` is downloaded from
//! `sid` through a private apt configuration under the cache (its own sources list and
//! package lists; the system's apt sources are never changed, nothing is installed) and
//! unpacked beside it. Once there, it is used without asking the network again.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::host::{PrivateApt, SetupError};
use crate::paths;

/// One kernel release the lab can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabRelease {
    /// The name users give (`6.12`, `7.2`).
    pub name: &'static str,
    /// Debian's source package.
    pub package: &'static str,
    /// The suite to download it from, or `None` when `lab setup` installs it.
    pub fetch_from: Option<&'static str>,
}

/// Every release the lab ships, the default first.
pub const LAB_RELEASES: &[LabRelease] = &[
    LabRelease {
        name: "6.12",
        package: "linux-source-6.12",
        fetch_from: None,
    },
    LabRelease {
        name: "7.2",
        package: "linux-source-7.2",
        fetch_from: Some("sid"),
    },
];

/// Errors finding or fetching a release's source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A release the lab does not ship.
    #[error("the lab ships no kernel release '{name}': choose one of {known}, or pass --source DIR|TARBALL")]
    UnknownRelease {
        /// What was asked for.
        name: String,
        /// The names it knows.
        known: String,
    },
    /// Downloading through the private apt configuration failed.
    #[error(
        "cannot fetch {package} from Debian's {suite} suite (needs network to Debian's packages)"
    )]
    Fetch {
        /// The package.
        package: &'static str,
        /// The suite.
        suite: &'static str,
        /// Why.
        #[source]
        source: SetupError,
    },
    /// Unpacking or storing it failed.
    #[error("cannot unpack {what} into {path}")]
    Unpack {
        /// What.
        what: String,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The entry of `table` whose `name_of` is `name`; else the names there are, joined with
/// ", ", for the error that says what exists.
pub(crate) fn by_name<T: Copy>(
    table: &[T],
    name: &str,
    name_of: fn(&T) -> &str,
) -> Result<T, String> {
    table
        .iter()
        .find(|r| name_of(r) == name)
        .copied()
        .ok_or_else(|| table.iter().map(name_of).collect::<Vec<_>>().join(", "))
}

impl LabRelease {
    /// The release called `name`.
    pub fn named(name: &str) -> Result<LabRelease, SourceError> {
        by_name(LAB_RELEASES, name, |r| r.name).map_err(|known| SourceError::UnknownRelease {
            name: name.to_owned(),
            known,
        })
    }

    /// Where its source tarball is (whether or not it is there yet).
    pub fn tarball(&self) -> PathBuf {
        match self.fetch_from {
            None => PathBuf::from(format!("/usr/src/{}.tar.xz", self.package)),
            Some(_) => paths::cache_root()
                .join("sources")
                .join(self.package)
                .join(format!("{}.tar.xz", self.package)),
        }
    }

    /// The source tarball, downloaded and unpacked first if it is fetched and missing.
    pub fn ensure_tarball(&self, on_line: &mut dyn FnMut(&str)) -> Result<PathBuf, SourceError> {
        let tarball = self.tarball();
        let Some(suite) = self.fetch_from else {
            return Ok(tarball); // installed by `lab setup`; a missing file is reported later
        };
        if tarball.is_file() {
            return Ok(tarball);
        }
        let dir = tarball
            .parent()
            .expect("tarball has a directory")
            .to_owned();
        let unpack = |what: &str, path: &Path, source| SourceError::Unpack {
            what: what.to_owned(),
            path: path.to_owned(),
            source,
        };
        fs::create_dir_all(&dir).map_err(|e| unpack("the source directory", &dir, e))?;
        let _lock = paths::FileLock::exclusive(&dir.join(".lock"))
            .map_err(|e| unpack("a lock", &dir, e))?;
        if tarball.is_file() {
            return Ok(tarball); // fetched by another process while we waited
        }
        on_line(&format!(
            "fetching {} from Debian {suite} (private apt configuration under {})",
            self.package,
            paths::cache_root().join("apt").display()
        ));
        let fetch = |source| SourceError::Fetch {
            package: self.package,
            suite,
            source,
        };
        let apt = PrivateApt::for_download(&paths::cache_root().join("apt").join(suite), suite)
            .map_err(fetch)?;
        apt.update().map_err(fetch)?;
        let staging = tempdir_in(&dir).map_err(|e| unpack("a staging directory", &dir, e))?;
        let deb = apt.download(self.package, &staging).map_err(fetch)?;
        // The .deb carries usr/src/<package>.tar.xz; take just that file.
        let inner = format!("./usr/src/{}.tar.xz", self.package);
        let status = Command::new("sh")
            .arg("-c")
            .arg("dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" \"$3\"")
            .args(["sh"])
            .arg(&deb)
            .arg(&staging)
            .arg(&inner)
            .status()
            .map_err(|e| unpack("the .deb (dpkg-deb | tar)", &deb, e))?;
        if !status.success() {
            return Err(unpack(
                "the .deb (dpkg-deb | tar)",
                &deb,
                std::io::Error::other(format!("exit status {status}")),
            ));
        }
        let version = deb
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('_').nth(1))
            .unwrap_or("unknown")
            .to_owned();
        fs::write(dir.join("version"), format!("{version}\n"))
            .map_err(|e| unpack("the version note", &dir, e))?;
        // Renamed into place last, so a half-unpacked file is never taken for the source.
        fs::rename(staging.join(&inner), &tarball)
            .map_err(|e| unpack("the source tarball", &tarball, e))?;
        let _ = fs::remove_dir_all(&staging);
        on_line(&format!(
            "{} {version} is at {}",
            self.package,
            tarball.display()
        ));
        Ok(tarball)
    }
}

fn tempdir_in(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join(format!(".staging-{}", std::process::id()));
    if path.exists() {
        fs::remove_dir_all(&path)?;
    }
    fs::create_dir_all(&path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_is_found_by_name_and_an_unknown_one_lists_the_known_ones() {
        assert_eq!(LabRelease::named("7.2").unwrap().name, "7.2");
        let err = LabRelease::named("5.4").unwrap_err().to_string();
        let known: Vec<&str> = LAB_RELEASES.iter().map(|r| r.name).collect();
        assert!(known.len() >= 2, "{known:?}");
        assert!(
            err.contains("'5.4'") && err.contains(&format!("choose one of {}", known.join(", "))),
            "{err}"
        );
        let table = [("a", 1), ("b", 2)];
        assert_eq!(by_name(&table, "b", |t| t.0), Ok(("b", 2)));
        assert_eq!(by_name(&table, "c", |t| t.0), Err("a, b".to_owned()));
    }

    #[test]
    fn the_default_release_comes_from_lab_setup_and_newer_ones_from_the_cache() {
        let default = LabRelease::named("6.12").unwrap();
        assert_eq!(
            default.tarball(),
            Path::new("/usr/src/linux-source-6.12.tar.xz")
        );
        let newer = LabRelease::named("7.2").unwrap();
        assert_eq!(newer.fetch_from, Some("sid"));
        assert!(newer.tarball().starts_with(paths::cache_root()));
        let err = LabRelease::named("5.4").unwrap_err().to_string();
        assert!(err.contains("6.12, 7.2"), "{err}");
        assert!(err.contains("--source"), "{err}");
    }
}
