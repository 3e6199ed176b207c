//! Block device facts the copy engine checks: size, block size, mounts, holders, read-only.
//!
//! Everything is read from `<sysfs>/class/block/<name>/` (a symlink into the device tree)
//! and from `/proc/self/mountinfo`. The parsing functions are pure and tested on fixture
//! text; [`BlockDevice::read`] and [`BlockDevice::mounts`] only do the reading.
//!
//! For a partition (`nvme0n1p1`), the queue limits (`queue/...`) belong to the whole disk
//! and are read from the parent directory.
//!
//! # References
//! - Linux `Documentation/ABI/stable/sysfs-block`, proc(5) (`/proc/pid/mountinfo`)

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::sysfs::SysfsRoot;

/// What went wrong reading a block device's facts.
#[derive(Debug, thiserror::Error)]
pub enum BlockdevError {
    /// The kernel has no block device of that name.
    #[error("no block device '{name}' (no {}): check the name with `lsblk`", path.display())]
    NoSuchDevice {
        /// The kernel name asked for.
        name: String,
        /// The directory that is missing.
        path: PathBuf,
    },
    /// A sysfs or procfs file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error the kernel returned.
        #[source]
        source: io::Error,
    },
    /// A file did not hold what the kernel documents.
    #[error("cannot parse {} (it holds {contents:?})", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it held.
        contents: String,
    },
    /// A device node path does not name a block device.
    #[error("{} is not a block device", path.display())]
    NotABlockDevice {
        /// The path.
        path: PathBuf,
    },
}

/// A device number, as in `/sys/class/block/<name>/dev` (`"259:0"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct DevNumber {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl fmt::Display for DevNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl DevNumber {
    /// Parses `"MAJOR:MINOR"` (surrounding whitespace allowed).
    pub fn parse(text: &str) -> Option<DevNumber> {
        let (major, minor) = text.trim().split_once(':')?;
        Some(DevNumber {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }
}

/// One partition of a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// Kernel name (`nvme0n1p1`).
    pub name: String,
    /// Its device number.
    pub dev: DevNumber,
    /// Whether it is read-only.
    pub read_only: bool,
    /// What holds it (device-mapper, md ...).
    pub holders: Vec<String>,
}

/// Facts about one block device (a whole disk or a partition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockDevice {
    /// Kernel name (`nvme0n1`, `nvme0n1p1`).
    pub name: String,
    /// Device number.
    pub dev: DevNumber,
    /// Size in bytes (`size` counts 512-byte sectors whatever the block size).
    pub size_bytes: u64,
    /// Smallest unit the device addresses: `O_DIRECT` offsets and lengths must be
    /// multiples of it.
    pub logical_block_size: u32,
    /// The device's internal block size (writes smaller than it are read-modify-write).
    pub physical_block_size: u32,
    /// Largest single request the hardware takes, in KiB (`queue/max_hw_sectors_kb`).
    pub max_hw_sectors_kb: u32,
    /// Whether the kernel marks the device read-only (`ro`).
    pub read_only: bool,
    /// Devices stacked on top of it (`holders/`: device-mapper, md ...).
    pub holders: Vec<String>,
    /// Partitions, for a whole disk (empty for a partition).
    pub partitions: Vec<Partition>,
    /// For a partition: its first byte on the disk.
    pub partition_start_bytes: Option<u64>,
}

/// One line of `/proc/self/mountinfo`, the fields this crate needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountEntry {
    /// The `st_dev` of the mounted filesystem.
    pub dev: DevNumber,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The filesystem type.
    pub fs_type: String,
    /// The mount source (usually a `/dev` path).
    pub source: String,
}

impl BlockDevice {
    /// The largest request the block layer passes on whole, in bytes: the soft limit
    /// `<root>/class/block/<disk>/queue/max_sectors_kb` (a partition's is its disk's), or
    /// [`BlockDevice::max_hw_sectors_kb`] when that cannot be read. An O_DIRECT request
    /// larger than this is split, which io_uring's non-blocking first attempt does not do
    /// (it hands the request to a worker thread instead).
    pub fn max_request_bytes(&self, sysfs: &SysfsRoot) -> u64 {
        let dir = sysfs.class_block(&self.name);
        let queue = if self.partition_start_bytes.is_some() {
            dir.join("../queue")
        } else {
            dir.join("queue")
        };
        let soft = std::fs::read_to_string(queue.join("max_sectors_kb"))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        soft.unwrap_or(u64::from(self.max_hw_sectors_kb))
            .saturating_mul(1024)
    }

    /// Reads the facts of block device `name` (`nvme0n1`, `nvme0n1p1`) under the sysfs
    /// root `sysfs` (normally `/sys`), from `<root>/class/block/<name>/`.
    pub fn read(sysfs: &SysfsRoot, name: &str) -> Result<BlockDevice, BlockdevError> {
        let dir = sysfs.class_block(name);
        if !dir.exists() {
            return Err(BlockdevError::NoSuchDevice {
                name: name.to_owned(),
                path: dir,
            });
        }
        let is_partition = dir.join("partition").exists();
        // A partition's directory sits inside its disk's, which owns the queue.
        let queue = if is_partition {
            dir.join("../queue")
        } else {
            dir.join("queue")
        };
        let partitions = if is_partition {
            Vec::new()
        } else {
            read_partitions(&dir)?
        };
        Ok(BlockDevice {
            name: name.to_owned(),
            dev: read_parsed(&dir.join("dev"), DevNumber::parse)?,
            size_bytes: read_parsed(&dir.join("size"), parse_u64)?.saturating_mul(512),
            logical_block_size: read_parsed(&queue.join("logical_block_size"), parse_u32)?,
            physical_block_size: read_parsed(&queue.join("physical_block_size"), parse_u32)?,
            max_hw_sectors_kb: read_parsed(&queue.join("max_hw_sectors_kb"), parse_u32)?,
            read_only: read_parsed(&dir.join("ro"), parse_flag)?,
            holders: read_dir_names(&dir.join("holders"))?,
            partitions,
            partition_start_bytes: if is_partition {
                Some(read_parsed(&dir.join("start"), parse_u64)?.saturating_mul(512))
            } else {
                None
            },
        })
    }

    /// Reads the facts of the block device a device node (`/dev/nvme1n1`) stands for,
    /// found through its device number at `<root>/dev/block/<major>:<minor>`.
    pub fn read_devnode(sysfs: &SysfsRoot, devnode: &Path) -> Result<BlockDevice, BlockdevError> {
        use std::os::unix::fs::FileTypeExt;
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(devnode).map_err(|source| BlockdevError::Read {
            path: devnode.to_owned(),
            source,
        })?;
        if !meta.file_type().is_block_device() {
            return Err(BlockdevError::NotABlockDevice {
                path: devnode.to_owned(),
            });
        }
        let rdev = meta.rdev();
        let dev = DevNumber {
            major: rustix::fs::major(rdev),
            minor: rustix::fs::minor(rdev),
        };
        let link = sysfs.dev_block(dev.major, dev.minor);
        let target = std::fs::read_link(&link).map_err(|source| BlockdevError::Read {
            path: link.clone(),
            source,
        })?;
        let name =
            target
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| BlockdevError::Parse {
                    path: link,
                    contents: target.display().to_string(),
                })?;
        BlockDevice::read(sysfs, name)
    }

    /// Every device number that belongs to this device: itself and its partitions.
    pub fn dev_numbers(&self) -> Vec<DevNumber> {
        std::iter::once(self.dev)
            .chain(self.partitions.iter().map(|p| p.dev))
            .collect()
    }

    /// Mounts of this device or any of its partitions, from `/proc/self/mountinfo`.
    pub fn mounts(&self) -> Result<Vec<MountEntry>, BlockdevError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(|source| BlockdevError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(self.mounts_in(&parse_mountinfo(&text)))
    }

    /// The entries of `mounts` that mount this device or one of its partitions.
    pub fn mounts_in(&self, mounts: &[MountEntry]) -> Vec<MountEntry> {
        let ours = self.dev_numbers();
        mounts
            .iter()
            .filter(|m| ours.contains(&m.dev))
            .cloned()
            .collect()
    }

    /// Holders of this device and of its partitions, as `(device, holder)` pairs.
    pub fn all_holders(&self) -> Vec<(String, String)> {
        let own = self.holders.iter().map(|h| (self.name.clone(), h.clone()));
        let parts = self
            .partitions
            .iter()
            .flat_map(|p| p.holders.iter().map(|h| (p.name.clone(), h.clone())));
        own.chain(parts).collect()
    }
}

/// Parses `/proc/<pid>/mountinfo` (proc(5)): field 3 is `major:minor`, field 5 the mount
/// point (octal-escaped), and after the ` - ` separator come the type and the source.
/// Lines that do not have that shape are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let dev = DevNumber::parse(fields.get(2)?)?;
            let mount_point = PathBuf::from(unescape_octal(fields.get(4)?));
            let mut tail = after.split(' ');
            let fs_type = tail.next()?.to_owned();
            let source = unescape_octal(tail.next()?);
            Some(MountEntry {
                dev,
                mount_point,
                fs_type,
                source,
            })
        })
        .collect()
}

/// Undoes the kernel's `\NNN` octal escaping of spaces, tabs, newlines and backslashes.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(&[b'\\', a, b, c]) = bytes.get(i..i + 4) {
            let octal = |d: u8| (b'0'..=b'7').contains(&d).then(|| u32::from(d - b'0'));
            if let (Some(a), Some(b), Some(c)) = (octal(a), octal(b), octal(c)) {
                if let Ok(value) = u8::try_from(a * 64 + b * 8 + c) {
                    out.push(value);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_u64(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

fn parse_u32(text: &str) -> Option<u32> {
    text.trim().parse().ok()
}

fn parse_flag(text: &str) -> Option<bool> {
    match text.trim() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

fn read_parsed<T>(path: &Path, parse: impl Fn(&str) -> Option<T>) -> Result<T, BlockdevError> {
    let contents = std::fs::read_to_string(path).map_err(|source| BlockdevError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&contents).ok_or_else(|| BlockdevError::Parse {
        path: path.to_owned(),
        contents,
    })
}

/// Names in a directory, sorted; a missing directory has none.
fn read_dir_names(dir: &Path) -> Result<Vec<String>, BlockdevError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(BlockdevError::Read {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// The partitions of the disk at `dir`: subdirectories holding a `partition` file.
fn read_partitions(dir: &Path) -> Result<Vec<Partition>, BlockdevError> {
    let mut partitions = Vec::new();
    for name in read_dir_names(dir)? {
        let sub = dir.join(&name);
        if !sub.join("partition").is_file() {
            continue;
        }
        partitions.push(Partition {
            dev: read_parsed(&sub.join("dev"), DevNumber::parse)?,
            read_only: read_parsed(&sub.join("ro"), parse_flag)?,
            holders: read_dir_names(&sub.join("holders"))?,
            name,
        });
    }
    Ok(partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
31 27 259:1 / /boot/my\\040efi rw,relatime shared:5 - vfat /dev/nvme0n1p1 rw
40 27 259:5 / /mnt/data rw master:3 - xfs /dev/nvme1n1 rw
garbage line without separator
";

    #[test]
    fn parses_mountinfo_including_optional_fields_and_escapes() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts.len(), 4);
        assert_eq!(
            mounts[1].dev,
            DevNumber {
                major: 259,
                minor: 2
            }
        );
        assert_eq!(mounts[1].mount_point, Path::new("/"));
        assert_eq!(mounts[1].fs_type, "ext4");
        assert_eq!(mounts[1].source, "/dev/nvme0n1p2");
        assert_eq!(mounts[2].mount_point, Path::new("/boot/my efi"));
        assert_eq!(mounts[3].source, "/dev/nvme1n1");
    }

    #[test]
    fn unescapes_only_valid_octal_sequences() {
        assert_eq!(unescape_octal("a\\040b\\011c\\134d"), "a b\tc\\d");
        assert_eq!(unescape_octal("trailing\\04"), "trailing\\04");
        assert_eq!(unescape_octal("\\xyz"), "\\xyz");
    }

    fn write(path: &Path, contents: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }

    /// A sysfs fixture shaped like the real one: /sys/class/block/<name> are symlinks
    /// into the device tree, partitions live inside their disk's directory.
    fn fixture() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let disk = r.join("devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1");
        write(&disk.join("dev"), "259:0\n");
        write(&disk.join("size"), "2097152\n");
        write(&disk.join("ro"), "0\n");
        write(&disk.join("queue/logical_block_size"), "512\n");
        write(&disk.join("queue/physical_block_size"), "4096\n");
        write(&disk.join("queue/max_hw_sectors_kb"), "128\n");
        std::fs::create_dir_all(disk.join("holders")).unwrap();
        let part = disk.join("nvme0n1p1");
        write(&part.join("dev"), "259:1\n");
        write(&part.join("size"), "204800\n");
        write(&part.join("start"), "2048\n");
        write(&part.join("ro"), "1\n");
        write(&part.join("partition"), "1\n");
        std::fs::create_dir_all(part.join("holders/dm-0")).unwrap();
        std::fs::create_dir_all(r.join("class/block")).unwrap();
        std::os::unix::fs::symlink(&disk, r.join("class/block/nvme0n1")).unwrap();
        std::os::unix::fs::symlink(&part, r.join("class/block/nvme0n1p1")).unwrap();
        root
    }

    #[test]
    fn reads_a_disk_with_its_partitions() {
        let root = fixture();
        let disk = BlockDevice::read(&SysfsRoot::new(root.path()), "nvme0n1").unwrap();
        assert_eq!(
            disk.dev,
            DevNumber {
                major: 259,
                minor: 0
            }
        );
        assert_eq!(disk.size_bytes, 1 << 30);
        assert_eq!(disk.logical_block_size, 512);
        assert_eq!(disk.physical_block_size, 4096);
        assert_eq!(disk.max_hw_sectors_kb, 128);
        assert!(!disk.read_only);
        assert!(disk.holders.is_empty());
        assert_eq!(disk.partitions.len(), 1);
        assert_eq!(disk.partitions[0].name, "nvme0n1p1");
        assert!(disk.partitions[0].read_only);
        assert_eq!(
            disk.all_holders(),
            vec![("nvme0n1p1".to_owned(), "dm-0".to_owned())]
        );
        assert_eq!(disk.partition_start_bytes, None);
        let sysfs = SysfsRoot::new(root.path());
        assert_eq!(
            disk.max_request_bytes(&sysfs),
            128 << 10,
            "without max_sectors_kb, the hardware limit"
        );
        write(
            &root.path().join("class/block/nvme0n1/queue/max_sectors_kb"),
            "64\n",
        );
        assert_eq!(disk.max_request_bytes(&sysfs), 64 << 10);
        let part = BlockDevice::read(&sysfs, "nvme0n1p1").unwrap();
        assert_eq!(part.max_request_bytes(&sysfs), 64 << 10, "the disk's queue");
    }

    #[test]
    fn reads_a_partition_with_its_disks_queue_limits() {
        let root = fixture();
        let part = BlockDevice::read(&SysfsRoot::new(root.path()), "nvme0n1p1").unwrap();
        assert_eq!(part.size_bytes, 204_800 * 512);
        assert_eq!(part.logical_block_size, 512);
        assert_eq!(part.partition_start_bytes, Some(2048 * 512));
        assert!(part.read_only);
        assert_eq!(part.holders, vec!["dm-0".to_owned()]);
        assert!(part.partitions.is_empty());
    }

    #[test]
    fn a_disk_counts_as_mounted_when_a_partition_is() {
        let root = fixture();
        let disk = BlockDevice::read(&SysfsRoot::new(root.path()), "nvme0n1").unwrap();
        let mounts = parse_mountinfo(
            "31 27 259:1 / /boot rw - vfat /dev/nvme0n1p1 rw\n40 27 259:5 / /mnt rw - xfs /dev/nvme1n1 rw\n",
        );
        let ours = disk.mounts_in(&mounts);
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0].mount_point, Path::new("/boot"));
        let part = BlockDevice::read(&SysfsRoot::new(root.path()), "nvme0n1p1").unwrap();
        assert_eq!(part.mounts_in(&mounts).len(), 1);
        assert!(disk.mounts_in(&parse_mountinfo(MOUNTINFO)[3..]).is_empty());
    }

    #[test]
    fn missing_device_and_garbled_files_are_named() {
        let root = fixture();
        let e = BlockDevice::read(&SysfsRoot::new(root.path()), "sdz").unwrap_err();
        assert!(e.to_string().contains("no block device 'sdz'"), "{e}");
        std::fs::write(root.path().join("class/block/nvme0n1/ro"), "maybe\n").unwrap();
        let e = BlockDevice::read(&SysfsRoot::new(root.path()), "nvme0n1").unwrap_err();
        assert!(e.to_string().contains("nvme0n1/ro"), "{e}");
    }

    #[test]
    fn the_hosts_root_filesystem_device_counts_as_mounted() {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root_mount = parse_mountinfo(&text)
            .into_iter()
            .find(|m| m.mount_point == Path::new("/"))
            .expect("a / mount");
        let link = Path::new("/sys/dev/block").join(root_mount.dev.to_string());
        let Ok(target) = std::fs::read_link(&link) else {
            eprintln!(
                "skipped: / is not on a block device ({})",
                root_mount.source
            );
            return;
        };
        let name = target.file_name().unwrap().to_str().unwrap();
        let dev = BlockDevice::read(&SysfsRoot::default(), name).unwrap();
        let mounts = dev.mounts().unwrap();
        assert!(
            mounts.iter().any(|m| m.mount_point == Path::new("/")),
            "{name} holds / but its mounts are {mounts:?}"
        );
    }

    #[test]
    fn reads_a_real_device_node_when_one_exists() {
        // Host-dependent input, but a real check: any block device the host has must
        // resolve to a sysfs entry with a sane block size.
        let Some(node) = ["/dev/vda", "/dev/sda", "/dev/nvme0n1", "/dev/loop0"]
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
        else {
            eprintln!("skipped: no block device node on this host");
            return;
        };
        let dev = BlockDevice::read_devnode(&SysfsRoot::default(), node).unwrap();
        assert!(dev.logical_block_size.is_power_of_two(), "{dev:?}");
        let e =
            BlockDevice::read_devnode(&SysfsRoot::default(), Path::new("/dev/null")).unwrap_err();
        assert!(matches!(e, BlockdevError::NotABlockDevice { .. }), "{e}");
    }
}
