//! Gathering [`EndpointFacts`] about a source or destination, and opening it for O_DIRECT.
//!
//! Block devices are described by [`crate::blockdev`] (size, logical block size, read-only,
//! holders, mounts); regular files by `statx(2)`, with `STATX_DIOALIGN` giving the
//! filesystem's O_DIRECT offset alignment, and the block device under the filesystem
//! giving the logical block size.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, StatxFlags, CWD};

use super::plan::{EndpointFacts, EndpointKind, StorageId};
use super::route::Side;
use crate::blockdev::{BlockDevice, BlockdevError, DevNumber};
use crate::display::error_chain;
use crate::kernel_rules::RuleChoice;
use crate::resolve::resolve_with;
use crate::sysfs::SysfsRoot;

/// Why an endpoint could not be inspected or opened.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// `stat` failed (other than "does not exist" for a destination).
    #[error("cannot stat {}", path.display())]
    Stat {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The source does not exist.
    #[error("the source {} does not exist; give an NVMe block device or a regular file on one", path.display())]
    MissingSource {
        /// The path.
        path: PathBuf,
    },
    /// Neither a block device nor a regular file.
    #[error("{} is a {what}; give a block device (e.g. /dev/nvme0n1) or a regular file", path.display())]
    Unsupported {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        what: &'static str,
    },
    /// Reading the block device's facts from sysfs failed.
    #[error("cannot read the block device facts of {}", path.display())]
    Blockdev {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: BlockdevError,
    },
    /// Neither the filesystem (`STATX_DIOALIGN`) nor the block device underneath
    /// (`queue/logical_block_size`) says what O_DIRECT alignment a file needs: refused
    /// rather than guessed.
    #[error("cannot learn the O_DIRECT alignment of {}: the filesystem does not report STATX_DIOALIGN and {why}; copy from or to a file on an NVMe filesystem, or name the block device", path.display())]
    UnknownAlignment {
        /// The file (or, for a file still to be created, its directory).
        path: PathBuf,
        /// Why the block device's logical block size could not be read.
        why: String,
    },
    /// The disk a partition belongs to could not be found, so overlap with the other
    /// endpoint (which may name the whole disk) cannot be ruled out.
    #[error("cannot find the disk that partition {} belongs to ({}): overlap with the other endpoint cannot be checked; name the whole disk with offsets instead", path.display(), link.display())]
    UnknownDisk {
        /// The partition's device node.
        path: PathBuf,
        /// The sysfs file that should name the disk's device number.
        link: PathBuf,
        /// Why reading it failed.
        #[source]
        source: io::Error,
    },
    /// Opening with O_DIRECT failed.
    #[error("cannot open {} for O_DIRECT {how}{hint}", path.display())]
    Open {
        /// The path.
        path: PathBuf,
        /// "reading" or "reading and writing".
        how: &'static str,
        /// What to do, if the errno says something specific.
        hint: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Which side of the copy an endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read from.
    Source,
    /// Written to.
    Destination,
}

/// Everything known about one endpoint: the facts the plan checks, plus the block device
/// the bytes live on (for finding the NVMe controller).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspected {
    /// What the plan checks.
    pub facts: EndpointFacts,
    /// The block device itself, or the one holding the file's filesystem (`None` when the
    /// filesystem is not on a block device, e.g. tmpfs).
    pub block_device: Option<BlockDevice>,
}

/// Inspects `path` (a block device node or a regular file) under the sysfs root `sysfs`.
/// A destination that does not exist is described as [`EndpointKind::MissingFile`] using
/// its parent directory's filesystem.
pub fn inspect(sysfs: &SysfsRoot, path: &Path, role: Role) -> Result<Inspected, EndpointError> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound && role == Role::Source => {
            return Err(EndpointError::MissingSource {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return inspect_missing(sysfs, path),
        Err(source) => {
            return Err(EndpointError::Stat {
                path: path.to_owned(),
                source,
            })
        }
    };
    let kind = meta.file_type();
    if kind.is_block_device() {
        inspect_block_device(sysfs, path)
    } else if kind.is_file() {
        let device = filesystem_device(sysfs, meta.dev());
        let block_size = dio_alignment(path, device.as_ref())?;
        Ok(Inspected {
            facts: EndpointFacts {
                path: path.to_owned(),
                kind: EndpointKind::RegularFile,
                storage: StorageId::File {
                    dev: meta.dev(),
                    ino: meta.ino(),
                },
                base: 0,
                size: meta.len(),
                block_size,
                read_only: role == Role::Destination && !writable(path),
                mounted: None,
                holders: Vec::new(),
            },
            block_device: device.ok(),
        })
    } else {
        Err(EndpointError::Unsupported {
            path: path.to_owned(),
            what: if kind.is_dir() {
                "directory"
            } else if kind.is_char_device() {
                "character device"
            } else {
                "special file"
            },
        })
    }
}

fn inspect_block_device(sysfs: &SysfsRoot, path: &Path) -> Result<Inspected, EndpointError> {
    let blockdev_err = |source| EndpointError::Blockdev {
        path: path.to_owned(),
        source,
    };
    let device = BlockDevice::read_devnode(sysfs, path).map_err(blockdev_err)?;
    let mounted = device
        .mounts()
        .map_err(blockdev_err)?
        .into_iter()
        .next()
        .map(|m| (m.source, m.mount_point.display().to_string()));
    let holders = device
        .all_holders()
        .into_iter()
        .map(|(dev, holder)| {
            if dev == device.name {
                holder
            } else {
                format!("{holder} (on {dev})")
            }
        })
        .collect();
    // A partition's bytes are its disk's bytes from partition_start on.
    let disk = match device.partition_start_bytes {
        Some(_) => whole_disk(sysfs, &device.name).map_err(|(link, source)| {
            EndpointError::UnknownDisk {
                path: path.to_owned(),
                link,
                source,
            }
        })?,
        None => device.dev,
    };
    let block_size = u64::from(device.logical_block_size)
        .max(statx_dio_offset_align(path).unwrap_or(0))
        .max(1);
    Ok(Inspected {
        facts: EndpointFacts {
            path: path.to_owned(),
            kind: EndpointKind::BlockDevice,
            storage: StorageId::Disk {
                major: disk.major,
                minor: disk.minor,
            },
            base: device.partition_start_bytes.unwrap_or(0),
            size: device.size_bytes,
            block_size,
            read_only: device.read_only,
            mounted,
            holders,
        },
        block_device: Some(device),
    })
}

fn inspect_missing(sysfs: &SysfsRoot, path: &Path) -> Result<Inspected, EndpointError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let meta = std::fs::metadata(&parent).map_err(|source| EndpointError::Stat {
        path: parent.clone(),
        source,
    })?;
    let device = filesystem_device(sysfs, meta.dev());
    // A directory reports no STATX_DIOALIGN; a nameless O_TMPFILE in it asks the
    // filesystem without creating anything visible.
    let block_size = alignment_from(
        tmpfile_dio_offset_align(&parent),
        device.as_ref().map(|d| d.logical_block_size),
    )
    .map_err(|why| EndpointError::UnknownAlignment {
        path: parent.clone(),
        why: why.clone(),
    })?;
    Ok(Inspected {
        facts: EndpointFacts {
            path: path.to_owned(),
            kind: EndpointKind::MissingFile,
            storage: StorageId::Unique,
            base: 0,
            size: 0,
            block_size,
            read_only: !writable(&parent),
            mounted: None,
            holders: Vec::new(),
        },
        block_device: device.ok(),
    })
}

/// The block device holding a filesystem, by its `st_dev`, or why it cannot be read.
fn filesystem_device(sysfs: &SysfsRoot, st_dev: u64) -> Result<BlockDevice, String> {
    let dev = DevNumber {
        major: rustix::fs::major(st_dev),
        minor: rustix::fs::minor(st_dev),
    };
    let link = sysfs.dev_block(dev.major, dev.minor);
    let name = std::fs::read_link(&link).map_err(|e| {
        format!(
            "its device {dev} has no block device in sysfs ({}: {e})",
            link.display()
        )
    })?;
    let name = name
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{} does not name a block device", link.display()))?;
    BlockDevice::read(sysfs, name)
        .map_err(|e| format!("reading block device {name} failed: {}", error_chain(&e)))
}

/// The whole disk a partition belongs to: `<sysfs>/class/block/<part>/../dev`, or the
/// file that could not be read and why.
fn whole_disk(sysfs: &SysfsRoot, partition: &str) -> Result<DevNumber, (PathBuf, io::Error)> {
    let link = sysfs.whole_disk_dev(partition);
    let text = std::fs::read_to_string(&link).map_err(|e| (link.clone(), e))?;
    DevNumber::parse(&text).ok_or_else(|| {
        (
            link,
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected content {:?}", text.trim()),
            ),
        )
    })
}

/// O_DIRECT offset alignment for a file: the filesystem's `STATX_DIOALIGN` answer if it
/// gives one, and never less than the logical block size of the device underneath. When
/// neither can be learned the file is refused: a guessed 512 would let a misaligned copy
/// start.
fn dio_alignment(path: &Path, device: Result<&BlockDevice, &String>) -> Result<u64, EndpointError> {
    alignment_from(
        statx_dio_offset_align(path),
        device.map(|d| d.logical_block_size),
    )
    .map_err(|why| EndpointError::UnknownAlignment {
        path: path.to_owned(),
        why: why.clone(),
    })
}

/// The alignment a file needs from what the filesystem and the device say.
fn alignment_from(statx: Option<u64>, device: Result<u32, &String>) -> Result<u64, &String> {
    match (statx, device) {
        (None, Err(why)) => Err(why),
        (statx, device) => Ok(statx.unwrap_or(0).max(device.map_or(0, u64::from)).max(1)),
    }
}

/// `stx_dio_offset_align` (Linux >= 6.1), `None` if the kernel or filesystem does not say.
fn statx_dio_offset_align(path: &Path) -> Option<u64> {
    let stx = rustix::fs::statx(CWD, path, AtFlags::empty(), StatxFlags::DIOALIGN).ok()?;
    (stx.stx_mask & StatxFlags::DIOALIGN.bits() != 0 && stx.stx_dio_offset_align > 0)
        .then_some(u64::from(stx.stx_dio_offset_align))
}

/// `stx_dio_offset_align` of an unnamed temporary file in `dir` (it vanishes when
/// closed), `None` if the directory is not writable or the filesystem does not say.
fn tmpfile_dio_offset_align(dir: &Path) -> Option<u64> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        dir,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .ok()?;
    let stx = rustix::fs::statx(&fd, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN).ok()?;
    (stx.stx_mask & StatxFlags::DIOALIGN.bits() != 0 && stx.stx_dio_offset_align > 0)
        .then_some(u64::from(stx.stx_dio_offset_align))
}

fn writable(path: &Path) -> bool {
    rustix::fs::access(path, rustix::fs::Access::WRITE_OK).is_ok()
}

/// Opens an inspected endpoint for O_DIRECT: the source read-only; the destination
/// read-write (`--verify` reads it back), created if missing, and for a block device with
/// `O_EXCL`, so the kernel refuses if it is mounted or claimed meanwhile.
pub fn open(facts: &EndpointFacts, role: Role) -> Result<File, EndpointError> {
    let mut options = OpenOptions::new();
    options.read(true);
    let mut flags = libc::O_DIRECT;
    let how = match role {
        Role::Source => "reading",
        Role::Destination => {
            options.write(true);
            match facts.kind {
                EndpointKind::BlockDevice => flags |= libc::O_EXCL,
                EndpointKind::MissingFile => {
                    options.create_new(true).mode(0o644);
                }
                EndpointKind::RegularFile => {}
            }
            "reading and writing"
        }
    };
    options
        .custom_flags(flags)
        .open(&facts.path)
        .map_err(|source| EndpointError::Open {
            path: facts.path.clone(),
            how,
            hint: match source.raw_os_error() {
                Some(libc::EBUSY) => {
                    ": it is in use (mounted or opened exclusively by another program)"
                }
                Some(libc::EACCES | libc::EPERM) => {
                    ": permission denied; run as root, or grant a group access to NVMe block devices with docs/60-p2pdma.rules"
                }
                Some(libc::EINVAL) => ": the filesystem does not support O_DIRECT",
                Some(libc::EEXIST) => ": it appeared after it was checked; run again",
                _ => "",
            },
            source,
        })
}

/// The PCI side of an endpoint for the route decision: its controller, or why it cannot do
/// P2P under `rules`. A destination that does not exist yet is looked up through its
/// directory.
pub fn pci_side(
    root: &SysfsRoot,
    rules: &RuleChoice,
    role: &'static str,
    inspected: &Inspected,
) -> Side {
    let path = &inspected.facts.path;
    let lookup = if inspected.facts.kind == EndpointKind::MissingFile {
        match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        }
    } else {
        path.clone()
    };
    match resolve_with(root, &lookup.to_string_lossy(), rules) {
        Ok(target) => Side {
            role,
            path: path.clone(),
            controller: target.bdf,
            not_p2p_because: if target.p2p_queue {
                None
            } else {
                Some(
                    target
                        .not_p2p_because
                        .unwrap_or_else(|| "its block queue does not support P2PDMA".to_owned()),
                )
            },
        },
        Err(e) => Side {
            role,
            path: path.clone(),
            controller: None,
            not_p2p_because: Some(e.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_described_with_their_dio_alignment_and_identity() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        std::fs::write(&p, vec![0u8; 12288]).unwrap();
        let a = inspect(&SysfsRoot::default(), &p, Role::Source).unwrap();
        assert_eq!(a.facts.kind, EndpointKind::RegularFile);
        assert_eq!(a.facts.size, 12288);
        assert!(a.facts.block_size >= 512 && a.facts.block_size.is_power_of_two());
        assert!(matches!(a.facts.storage, StorageId::File { .. }));
        let again = inspect(&SysfsRoot::default(), &p, Role::Destination).unwrap();
        assert_eq!(
            again.facts.storage, a.facts.storage,
            "same file, same identity"
        );
    }

    #[test]
    fn a_missing_destination_is_described_and_created_only_by_open() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("new");
        let e = inspect(&SysfsRoot::default(), &p, Role::Source).unwrap_err();
        assert!(matches!(e, EndpointError::MissingSource { .. }), "{e:?}");
        let d = inspect(&SysfsRoot::default(), &p, Role::Destination).unwrap();
        assert_eq!(d.facts.kind, EndpointKind::MissingFile);
        assert!(!p.exists(), "inspecting must not create it");
        open(&d.facts, Role::Destination).unwrap();
        assert!(p.exists());
    }

    #[test]
    fn alignment_is_refused_when_neither_the_filesystem_nor_the_device_says() {
        let why = "its device 0:42 has no block device in sysfs".to_owned();
        assert_eq!(alignment_from(None, Err(&why)), Err(&why));
        assert_eq!(alignment_from(Some(4096), Err(&why)), Ok(4096));
        assert_eq!(alignment_from(None, Ok(4096)), Ok(4096));
        assert_eq!(alignment_from(Some(512), Ok(4096)), Ok(4096));
    }

    #[test]
    fn a_partition_whose_disk_cannot_be_found_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = whole_disk(&SysfsRoot::new(dir.path()), "nvme0n1p1").unwrap_err();
        assert!(e.0.ends_with("class/block/nvme0n1p1/../dev"), "{e:?}");
        let part = dir.path().join("class/block/nvme0n1p1");
        std::fs::create_dir_all(&part).unwrap();
        std::fs::write(dir.path().join("class/block/dev"), "garbage\n").unwrap();
        let e = whole_disk(&SysfsRoot::new(dir.path()), "nvme0n1p1").unwrap_err();
        assert!(e.1.to_string().contains("garbage"), "{e:?}");
        std::fs::write(dir.path().join("class/block/dev"), "259:0\n").unwrap();
        assert_eq!(
            whole_disk(&SysfsRoot::new(dir.path()), "nvme0n1p1").unwrap(),
            DevNumber {
                major: 259,
                minor: 0
            }
        );
    }

    #[test]
    fn directories_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let e = inspect(&SysfsRoot::default(), dir.path(), Role::Source).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
    }
}
