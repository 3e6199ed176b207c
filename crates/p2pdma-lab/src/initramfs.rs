//! The guest's root file system: a gzip-compressed cpio (newc) archive.
//!
//! It holds busybox, the p2pdma binary itself (statically linked, so the host's binary
//! runs in the guest unchanged), the init script, the command to run and any files the
//! caller asks for. Dynamically linked programs (fio) come with the libraries `ldd` names.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use flate2::write::GzEncoder;
use flate2::Compression;

/// The file beside a kernel image that lists, one a line and in load order, the module
/// files (relative to the image's directory) the guest loads at boot.
pub const MODULES_LOAD: &str = "modules.load";

/// Errors while assembling the archive.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// A host file to include could not be read.
    #[error("cannot read {path} for the guest")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The archive could not be written.
    #[error("cannot write the initramfs {path}")]
    Write {
        /// The archive.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A guest path that is not absolute or climbs with `..`.
    #[error("guest path '{0}' must be absolute and must not contain '..'")]
    BadGuestPath(String),
    /// `ldd` could not tell what a program needs.
    #[error("cannot list the libraries of {path} with ldd: {why}")]
    Ldd {
        /// The program.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
}

#[derive(Debug, Clone)]
enum Entry {
    Dir,
    File { data: FileData, mode: u32 },
    Symlink(String),
}

#[derive(Debug, Clone)]
enum FileData {
    Host(PathBuf),
    Bytes(Vec<u8>),
}

/// An archive being assembled; entries are keyed by guest path so later additions win.
#[derive(Debug, Default)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

fn normalise(guest: &str) -> Result<String, InitramfsError> {
    let path = Path::new(guest);
    if !path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(InitramfsError::BadGuestPath(guest.to_owned()));
    }
    Ok(guest
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_owned())
}

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Initramfs {
        Initramfs::default()
    }

    fn add_parents(&mut self, path: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.entries.entry(prefix.clone()).or_insert(Entry::Dir);
        }
    }

    /// A directory (and its parents).
    pub fn dir(&mut self, guest: &str) -> Result<&mut Self, InitramfsError> {
        let path = normalise(guest)?;
        self.add_parents(&path);
        self.entries.insert(path, Entry::Dir);
        Ok(self)
    }

    /// A file with the given content and permission bits.
    pub fn bytes(
        &mut self,
        guest: &str,
        data: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Result<&mut Self, InitramfsError> {
        let path = normalise(guest)?;
        self.add_parents(&path);
        self.entries.insert(
            path,
            Entry::File {
                data: FileData::Bytes(data.into()),
                mode,
            },
        );
        Ok(self)
    }

    /// A host file copied in, keeping its permission bits; a host directory is copied
    /// recursively.
    pub fn host_path(&mut self, host: &Path, guest: &str) -> Result<&mut Self, InitramfsError> {
        let meta = fs::metadata(host).map_err(|source| InitramfsError::Read {
            path: host.to_owned(),
            source,
        })?;
        if meta.is_dir() {
            self.dir(guest)?;
            let read = fs::read_dir(host).map_err(|source| InitramfsError::Read {
                path: host.to_owned(),
                source,
            })?;
            for child in read {
                let child = child.map_err(|source| InitramfsError::Read {
                    path: host.to_owned(),
                    source,
                })?;
                let name = child.file_name();
                let guest_child =
                    format!("{}/{}", guest.trim_end_matches('/'), name.to_string_lossy());
                self.host_path(&child.path(), &guest_child)?;
            }
            return Ok(self);
        }
        use std::os::unix::fs::PermissionsExt;
        let path = normalise(guest)?;
        self.add_parents(&path);
        self.entries.insert(
            path,
            Entry::File {
                data: FileData::Host(host.to_owned()),
                mode: meta.permissions().mode() & 0o7777,
            },
        );
        Ok(self)
    }

    /// A symbolic link.
    pub fn symlink(&mut self, guest: &str, target: &str) -> Result<&mut Self, InitramfsError> {
        let path = normalise(guest)?;
        self.add_parents(&path);
        self.entries.insert(path, Entry::Symlink(target.to_owned()));
        Ok(self)
    }

    /// A program and, when it is dynamically linked, every library and the loader `ldd`
    /// names, each at its host path.
    pub fn program_with_libraries(
        &mut self,
        host: &Path,
        guest: &str,
    ) -> Result<&mut Self, InitramfsError> {
        self.host_path(host, guest)?;
        for library in shared_libraries(host)? {
            let real = fs::canonicalize(&library).map_err(|source| InitramfsError::Read {
                path: library.clone(),
                source,
            })?;
            let guest_path = library.to_string_lossy().into_owned();
            self.host_path(&real, &guest_path)?;
        }
        Ok(self)
    }

    /// The kernel modules a kernel image comes with, when it does: a distribution kernel
    /// (`lab kernel --flavour stock`) has [`MODULES_LOAD`] beside its image, listing module
    /// files (relative to the image's directory) in load order, each optionally followed by
    /// module parameters (`modules/nvme_core.ko multipath=N`). Each module goes to
    /// `/lib/modules/lab/`, and `/lab/modules` lists their guest paths and parameters for
    /// the guest's init to `insmod` in that order. Returns how many modules were added (0
    /// for a lab-built kernel, which has everything built in).
    pub fn kernel_modules_beside(&mut self, image: &Path) -> Result<usize, InitramfsError> {
        let Some(dir) = image.parent() else {
            return Ok(0);
        };
        let list = dir.join(MODULES_LOAD);
        let text = match fs::read_to_string(&list) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(source) => return Err(InitramfsError::Read { path: list, source }),
        };
        let mut guest_lines = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (relative, parameters) = line.split_once(' ').unwrap_or((line, ""));
            let host = dir.join(relative);
            let name = host
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| InitramfsError::BadGuestPath(relative.to_owned()))?;
            let guest = format!("/lib/modules/lab/{name}");
            self.host_path(&host, &guest)?;
            guest_lines.push(
                format!("{guest} {}", parameters.trim())
                    .trim_end()
                    .to_owned(),
            );
        }
        self.bytes("/lab/modules", guest_lines.join("\n") + "\n", 0o644)?;
        Ok(guest_lines.len())
    }

    /// Writes the archive, gzip-compressed, to `out`.
    pub fn write_gz(&self, out: &Path) -> Result<(), InitramfsError> {
        let werr = |source| InitramfsError::Write {
            path: out.to_owned(),
            source,
        };
        let file = fs::File::create(out).map_err(werr)?;
        // Level 1: the archive is rebuilt for every run and decompressed by an emulated
        // CPU; a few more megabytes cost less than slower compression.
        let mut gz = GzEncoder::new(BufWriter::new(file), Compression::fast());
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let builder = cpio::newc::Builder::new(path)
                .ino(ino as u32 + 1)
                .nlink(1)
                .uid(0)
                .gid(0);
            match entry {
                Entry::Dir => {
                    builder
                        .mode(0o040755)
                        .write(&mut gz, 0)
                        .finish()
                        .map_err(werr)?;
                }
                Entry::Symlink(target) => {
                    let mut w = builder.mode(0o120777).write(&mut gz, target.len() as u32);
                    w.write_all(target.as_bytes()).map_err(werr)?;
                    w.finish().map_err(werr)?;
                }
                Entry::File { data, mode } => {
                    let bytes = match data {
                        FileData::Bytes(b) => std::borrow::Cow::Borrowed(b.as_slice()),
                        FileData::Host(p) => {
                            std::borrow::Cow::Owned(fs::read(p).map_err(|source| {
                                InitramfsError::Read {
                                    path: p.clone(),
                                    source,
                                }
                            })?)
                        }
                    };
                    let mut w = builder
                        .mode(0o100000 | mode)
                        .write(&mut gz, bytes.len() as u32);
                    w.write_all(&bytes).map_err(werr)?;
                    w.finish().map_err(werr)?;
                }
            }
        }
        let gz = cpio::newc::trailer(gz).map_err(werr)?;
        gz.finish().map_err(werr)?.flush().map_err(werr)?;
        Ok(())
    }

    /// The guest paths in the archive, sorted (for tests and diagnostics).
    pub fn paths(&self) -> Vec<String> {
        self.entries.keys().map(|p| format!("/{p}")).collect()
    }
}

/// The absolute library paths `ldd` lists for `program` (empty for a static binary).
pub fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>, InitramfsError> {
    let output = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|e| InitramfsError::Ldd {
            path: program.to_owned(),
            why: e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if text.contains("not a dynamic executable")
        || stderr.contains("not a dynamic executable")
        || text.contains("statically linked")
    {
        return Ok(Vec::new());
    }
    if !output.status.success() {
        return Err(InitramfsError::Ldd {
            path: program.to_owned(),
            why: stderr.trim().to_owned(),
        });
    }
    parse_ldd(&text).map_err(|line| InitramfsError::Ldd {
        path: program.to_owned(),
        why: format!("library not found: {line}"),
    })
}

/// Library paths from `ldd` output; `Err(line)` for a library ldd could not find.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.contains("=> not found") {
            return Err(line.to_owned());
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn parses_ldd_output_including_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }

    #[test]
    fn modules_listed_beside_an_image_go_in_with_their_load_order() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("vmlinuz");
        fs::write(&image, b"kernel").unwrap();
        let mut plain = Initramfs::new();
        assert_eq!(plain.kernel_modules_beside(&image).unwrap(), 0);
        assert!(plain.paths().is_empty());
        fs::create_dir(dir.path().join("modules")).unwrap();
        for name in ["nvme_core.ko", "nvme.ko"] {
            fs::write(dir.path().join("modules").join(name), name).unwrap();
        }
        fs::write(
            dir.path().join(MODULES_LOAD),
            "modules/nvme_core.ko multipath=N\nmodules/nvme.ko\n",
        )
        .unwrap();
        let mut fs = Initramfs::new();
        assert_eq!(fs.kernel_modules_beside(&image).unwrap(), 2);
        assert!(fs.paths().contains(&"/lib/modules/lab/nvme.ko".to_owned()));
        match &fs.entries["lab/modules"] {
            Entry::File {
                data: FileData::Bytes(b),
                ..
            } => assert_eq!(
                b.as_slice(),
                b"/lib/modules/lab/nvme_core.ko multipath=N\n/lib/modules/lab/nvme.ko\n"
            ),
            other => panic!("{other:?}"),
        }
        fs::write(dir.path().join(MODULES_LOAD), "modules/gone.ko\n").unwrap();
        let err = Initramfs::new().kernel_modules_beside(&image).unwrap_err();
        assert!(err.to_string().contains("gone.ko"), "{err}");
    }

    #[test]
    fn refuses_relative_and_climbing_guest_paths() {
        let mut fs = Initramfs::new();
        assert!(fs.bytes("etc/x", "", 0o644).is_err());
        assert!(fs.bytes("/etc/../x", "", 0o644).is_err());
    }

    #[test]
    fn archive_is_valid_gzip_cpio_with_parents_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut fs = Initramfs::new();
        fs.bytes("/lab/cmd.sh", "echo hi\n", 0o755).unwrap();
        fs.symlink("/bin/sh", "busybox").unwrap();
        assert_eq!(fs.paths(), ["/bin", "/bin/sh", "/lab", "/lab/cmd.sh"]);
        let out = dir.path().join("initrd.gz");
        fs.write_gz(&out).unwrap();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(fs::File::open(&out).unwrap())
            .read_to_end(&mut raw)
            .unwrap();
        let mut names = Vec::new();
        let mut rest = raw.as_slice();
        loop {
            let mut reader = cpio::NewcReader::new(rest).unwrap();
            let name = reader.entry().name().to_owned();
            if reader.entry().is_trailer() {
                break;
            }
            let mut content = Vec::new();
            reader.read_to_end(&mut content).unwrap();
            if name == "lab/cmd.sh" {
                assert_eq!(content, b"echo hi\n");
                assert_eq!(reader.entry().mode() & 0o777, 0o755);
            }
            names.push(name);
            rest = reader.finish().unwrap();
        }
        assert_eq!(names, ["bin", "bin/sh", "lab", "lab/cmd.sh"]);
    }
}
