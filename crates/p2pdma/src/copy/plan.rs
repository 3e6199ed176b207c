//! Planning a copy: sizes, ranges, O_DIRECT alignment, overlap and the chunk schedule.
//!
//! Everything here is pure: it works on [`EndpointFacts`] gathered beforehand, so every
//! refusal is decided before a single byte is written, and the rules are unit-tested
//! without devices.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use serde::Serialize;

/// Largest chunk one io_uring Read/Write can carry (its length field is a `u32`);
/// kept to a power of two so it stays aligned for any logical block size.
pub const MAX_CHUNK_SIZE: u64 = 1 << 30;

/// Deepest pipeline accepted: more chunks in flight than this only costs device memory.
pub const MAX_QUEUE_DEPTH: u32 = 256;

/// Default size of one chunk (one p2p buffer, one read and one write).
pub const DEFAULT_CHUNK_SIZE: u64 = 1 << 20;

/// Default number of chunks in flight.
pub const DEFAULT_QUEUE_DEPTH: u32 = 4;

/// Why a copy was refused before it started. Each message names the device or option and
/// what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A size argument could not be parsed.
    #[error("'{input}' is not a size: {why} (use a byte count with an optional k, M, G or T suffix, e.g. 4k, 1M)")]
    BadSize {
        /// What the user wrote.
        input: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Nothing to copy.
    #[error("nothing to copy: the length is 0 (source {src} from offset {offset}); give --length or a smaller --src-offset")]
    EmptyRange {
        /// The source.
        src: PathBuf,
        /// The source offset.
        offset: u64,
    },
    /// An offset or length is not a multiple of a device's O_DIRECT block size.
    #[error("{option} {value} is not a multiple of {block_size}, the O_DIRECT block size of {path}; use a multiple of {block_size}")]
    Unaligned {
        /// The option (or derived quantity) at fault, e.g. `--src-offset`.
        option: &'static str,
        /// Its value in bytes.
        value: u64,
        /// The device or file whose block size it violates.
        path: PathBuf,
        /// That block size in bytes.
        block_size: u64,
    },
    /// The chunk size is zero, too large, or not a multiple of both block sizes.
    #[error("--chunk-size {chunk_size} is not usable: {why}")]
    BadChunkSize {
        /// The chunk size asked for.
        chunk_size: u64,
        /// Why it cannot be used.
        why: String,
    },
    /// The queue depth is zero or too large.
    #[error("--queue-depth {queue_depth} is not usable: use 1..={MAX_QUEUE_DEPTH}")]
    BadQueueDepth {
        /// The depth asked for.
        queue_depth: u32,
    },
    /// The source range ends past the end of the source.
    #[error("the source range {start}..{end} ends past the end of {path} ({size} bytes); give a smaller --length or --src-offset")]
    SourcePastEnd {
        /// The source.
        path: PathBuf,
        /// First byte of the range.
        start: u64,
        /// One past the last byte of the range.
        end: u64,
        /// The source's size.
        size: u64,
    },
    /// The destination is a block device and the write would run past its end.
    #[error("refusing to write {start}..{end} to {path}: the device has only {size} bytes (--force does not apply to block devices); give a smaller --length or --dst-offset")]
    DestinationPastEnd {
        /// The destination.
        path: PathBuf,
        /// First byte of the write.
        start: u64,
        /// One past the last byte of the write.
        end: u64,
        /// The device's size.
        size: u64,
    },
    /// The destination is a regular file and the write would grow it (or create it).
    #[error("refusing to write {start}..{end} to {path}: the file has {size} bytes and would grow{created}; pass --force to allow it")]
    DestinationGrows {
        /// The destination.
        path: PathBuf,
        /// First byte of the write.
        start: u64,
        /// One past the last byte of the write.
        end: u64,
        /// The file's current size (0 if it does not exist yet).
        size: u64,
        /// `" (it does not exist yet and would be created)"` or empty.
        created: &'static str,
    },
    /// The destination (or one of its partitions) is mounted.
    #[error("refusing to write to {path}: {what} is mounted on {mount_point}; unmount it first")]
    DestinationMounted {
        /// The destination.
        path: PathBuf,
        /// The mounted device (the destination or one of its partitions).
        what: String,
        /// Where it is mounted.
        mount_point: String,
    },
    /// Another kernel device (dm, md, ...) holds the destination.
    #[error("refusing to write to {path}: it is held by {holders} (see /sys/class/block/*/holders); stop that device first")]
    DestinationHeld {
        /// The destination.
        path: PathBuf,
        /// The holders' names, comma-separated.
        holders: String,
    },
    /// The destination is read-only.
    #[error("refusing to write to {path}: it is read-only; make it writable (e.g. blockdev --setrw) or pick another destination")]
    DestinationReadOnly {
        /// The destination.
        path: PathBuf,
    },
    /// Source and destination are the same storage and the ranges overlap.
    #[error("refusing to copy: the destination range {dst_start}..{dst_end} of {dst} overlaps the source range {src_start}..{src_end} of {src} (the same storage); pick ranges that do not overlap")]
    Overlap {
        /// The source.
        src: PathBuf,
        /// The destination.
        dst: PathBuf,
        /// Source range start, in the source's own offsets.
        src_start: u64,
        /// Source range end.
        src_end: u64,
        /// Destination range start, in the destination's own offsets.
        dst_start: u64,
        /// Destination range end.
        dst_end: u64,
    },
}

/// Parses a byte count with an optional binary suffix: `4096`, `4k`, `4K`, `4KiB`, `1M`,
/// `2G`, `1T` (k = 1024).
pub fn parse_size(input: &str) -> Result<u64, PlanError> {
    let err = |why| PlanError::BadSize {
        input: input.to_owned(),
        why,
    };
    let trimmed = input.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(err("it does not start with a number"));
    }
    let number: u64 = digits.parse().map_err(|_| err("the number is too large"))?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(err("unknown suffix")),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| err("the size does not fit in 64 bits"))
}

/// What kind of thing an endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    /// A block device node (`/dev/nvme0n1`, `/dev/nvme0n1p2`).
    BlockDevice,
    /// A regular file on a filesystem.
    RegularFile,
    /// A regular file that does not exist yet (destination only).
    MissingFile,
}

impl fmt::Display for EndpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointKind::BlockDevice => "block device",
            EndpointKind::RegularFile => "regular file",
            EndpointKind::MissingFile => "new file",
        })
    }
}

/// The storage an endpoint's bytes live on, for overlap checks: two endpoints with the same
/// `StorageId` address the same bytes, offset by their `base`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum StorageId {
    /// A whole disk, by its device number (`major:minor`); partitions map onto it.
    Disk {
        /// Major number of the whole disk.
        major: u32,
        /// Minor number of the whole disk.
        minor: u32,
    },
    /// A regular file, by the device number of its filesystem and its inode.
    File {
        /// `st_dev` of the file.
        dev: u64,
        /// `st_ino` of the file.
        ino: u64,
    },
    /// Not known yet (a file that does not exist).
    Unique,
}

/// Facts about one side of a copy, gathered from the system before planning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointFacts {
    /// The path the user gave.
    pub path: PathBuf,
    /// Block device, file, or file to be created.
    pub kind: EndpointKind,
    /// The storage the bytes live on.
    pub storage: StorageId,
    /// Byte offset of this endpoint's offset 0 inside `storage` (a partition's start).
    pub base: u64,
    /// Size in bytes (0 for a missing file).
    pub size: u64,
    /// The O_DIRECT alignment for offsets and lengths: the logical block size of the
    /// device (or the filesystem's `STATX_DIOALIGN` offset alignment, if larger).
    pub block_size: u64,
    /// The device or file cannot be written.
    pub read_only: bool,
    /// A mounted device (this one or one of its partitions) and its mount point.
    pub mounted: Option<(String, String)>,
    /// Kernel devices holding this block device (`/sys/class/block/<dev>/holders`).
    pub holders: Vec<String>,
}

/// What the user asked for, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyRequest {
    /// First source byte.
    pub src_offset: u64,
    /// First destination byte.
    pub dst_offset: u64,
    /// Bytes to copy; `None` means "to the end of the source".
    pub length: Option<u64>,
    /// Bytes per chunk (per p2p buffer).
    pub chunk_size: u64,
    /// Chunks in flight.
    pub queue_depth: u32,
    /// Allow growing (or creating) a destination file.
    pub force: bool,
}

/// A validated copy: ranges aligned, in bounds, not overlapping, destination writable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CopyPlan {
    /// First source byte.
    pub src_offset: u64,
    /// First destination byte.
    pub dst_offset: u64,
    /// Bytes to copy (a non-zero multiple of both block sizes).
    pub length: u64,
    /// Bytes per chunk (a multiple of both block sizes; the last chunk may be shorter).
    pub chunk_size: u64,
    /// Chunks in flight; never more than the number of chunks.
    pub queue_depth: u32,
    /// The alignment both sides need (the larger block size).
    pub block_size: u64,
    /// The write grows (or creates) the destination file.
    pub grows_destination: bool,
}

/// One step of the schedule: a read of `len` bytes at `src_offset` and a write of them at
/// `dst_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Position in the schedule, from 0.
    pub index: u64,
    /// Where to read.
    pub src_offset: u64,
    /// Where to write.
    pub dst_offset: u64,
    /// How many bytes.
    pub len: u64,
}

impl CopyPlan {
    /// Number of chunks in the schedule.
    pub fn chunk_count(&self) -> u64 {
        self.length.div_ceil(self.chunk_size)
    }

    /// The `index`-th chunk, or `None` past the end of the schedule.
    pub fn chunk(&self, index: u64) -> Option<Chunk> {
        let start = index.checked_mul(self.chunk_size)?;
        (start < self.length).then(|| Chunk {
            index,
            src_offset: self.src_offset + start,
            dst_offset: self.dst_offset + start,
            len: (self.length - start).min(self.chunk_size),
        })
    }

    /// All chunks in order.
    pub fn chunks(&self) -> impl Iterator<Item = Chunk> + '_ {
        (0..self.chunk_count()).filter_map(|i| self.chunk(i))
    }

    /// The destination byte range the copy writes.
    pub fn dst_range(&self) -> Range<u64> {
        self.dst_offset..self.dst_offset + self.length
    }

    /// The source byte range the copy reads.
    pub fn src_range(&self) -> Range<u64> {
        self.src_offset..self.src_offset + self.length
    }
}

/// Checks a request against both endpoints and builds the plan. Every refusal of the copy
/// command (except those that need the PCI topology) is decided here, before any write.
pub fn validate(
    src: &EndpointFacts,
    dst: &EndpointFacts,
    req: &CopyRequest,
) -> Result<CopyPlan, PlanError> {
    check_destination_writable(dst)?;

    if req.queue_depth == 0 || req.queue_depth > MAX_QUEUE_DEPTH {
        return Err(PlanError::BadQueueDepth {
            queue_depth: req.queue_depth,
        });
    }

    let length = match req.length {
        Some(length) => length,
        None => src.size.saturating_sub(req.src_offset),
    };
    if length == 0 {
        return Err(PlanError::EmptyRange {
            src: src.path.clone(),
            offset: req.src_offset,
        });
    }

    for (option, value) in [
        ("--src-offset", req.src_offset),
        ("--dst-offset", req.dst_offset),
        ("--length", length),
    ] {
        for side in [src, dst] {
            if !value.is_multiple_of(side.block_size) {
                return Err(PlanError::Unaligned {
                    option,
                    value,
                    path: side.path.clone(),
                    block_size: side.block_size,
                });
            }
        }
    }
    let block_size = src.block_size.max(dst.block_size);
    check_chunk_size(req.chunk_size, src, dst)?;

    let src_end = req
        .src_offset
        .checked_add(length)
        .filter(|end| *end <= src.size)
        .ok_or(PlanError::SourcePastEnd {
            path: src.path.clone(),
            start: req.src_offset,
            end: req.src_offset.saturating_add(length),
            size: src.size,
        })?;
    let dst_end = req.dst_offset.saturating_add(length);
    let grows_destination = dst_end > dst.size;
    if grows_destination {
        match dst.kind {
            EndpointKind::BlockDevice => {
                return Err(PlanError::DestinationPastEnd {
                    path: dst.path.clone(),
                    start: req.dst_offset,
                    end: dst_end,
                    size: dst.size,
                })
            }
            EndpointKind::RegularFile | EndpointKind::MissingFile if !req.force => {
                return Err(PlanError::DestinationGrows {
                    path: dst.path.clone(),
                    start: req.dst_offset,
                    end: dst_end,
                    size: dst.size,
                    created: if dst.kind == EndpointKind::MissingFile {
                        " (it does not exist yet and would be created)"
                    } else {
                        ""
                    },
                })
            }
            _ => {}
        }
    }

    if src.storage == dst.storage && src.storage != StorageId::Unique {
        let in_storage = |base: u64, start: u64, end: u64| base + start..base + end;
        let a = in_storage(src.base, req.src_offset, src_end);
        let b = in_storage(dst.base, req.dst_offset, dst_end);
        if ranges_overlap(&a, &b) {
            return Err(PlanError::Overlap {
                src: src.path.clone(),
                dst: dst.path.clone(),
                src_start: req.src_offset,
                src_end,
                dst_start: req.dst_offset,
                dst_end,
            });
        }
    }

    let chunk_count = length.div_ceil(req.chunk_size);
    Ok(CopyPlan {
        src_offset: req.src_offset,
        dst_offset: req.dst_offset,
        length,
        chunk_size: req.chunk_size,
        queue_depth: u64::from(req.queue_depth).min(chunk_count) as u32,
        block_size,
        grows_destination,
    })
}

fn check_destination_writable(dst: &EndpointFacts) -> Result<(), PlanError> {
    if let Some((what, mount_point)) = &dst.mounted {
        return Err(PlanError::DestinationMounted {
            path: dst.path.clone(),
            what: what.clone(),
            mount_point: mount_point.clone(),
        });
    }
    if !dst.holders.is_empty() {
        return Err(PlanError::DestinationHeld {
            path: dst.path.clone(),
            holders: dst.holders.join(", "),
        });
    }
    if dst.read_only {
        return Err(PlanError::DestinationReadOnly {
            path: dst.path.clone(),
        });
    }
    Ok(())
}

fn check_chunk_size(
    chunk_size: u64,
    src: &EndpointFacts,
    dst: &EndpointFacts,
) -> Result<(), PlanError> {
    let bad = |why: String| PlanError::BadChunkSize { chunk_size, why };
    if chunk_size == 0 {
        return Err(bad("it must not be 0".into()));
    }
    if chunk_size > MAX_CHUNK_SIZE {
        return Err(bad(format!(
            "the largest is {}",
            HumanBytes(MAX_CHUNK_SIZE)
        )));
    }
    for side in [src, dst] {
        if !chunk_size.is_multiple_of(side.block_size) {
            return Err(bad(format!(
                "it is not a multiple of {}, the O_DIRECT block size of {}",
                side.block_size,
                side.path.display()
            )));
        }
    }
    Ok(())
}

/// Half-open ranges `a` and `b` share at least one byte.
pub fn ranges_overlap(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end && a.start < a.end && b.start < b.end
}

/// A set of disjoint, sorted byte ranges: what has reached the destination so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RangeSet {
    ranges: Vec<Range<u64>>,
}

impl RangeSet {
    /// Adds `range`, merging it with neighbours it touches or overlaps.
    pub fn insert(&mut self, range: Range<u64>) {
        if range.start >= range.end {
            return;
        }
        let first = self.ranges.partition_point(|r| r.end < range.start);
        let mut merged = range;
        let mut last = first;
        while last < self.ranges.len() && self.ranges[last].start <= merged.end {
            merged.start = merged.start.min(self.ranges[last].start);
            merged.end = merged.end.max(self.ranges[last].end);
            last += 1;
        }
        self.ranges.splice(first..last, [merged]);
    }

    /// The ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// Total bytes covered.
    pub fn total(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    /// The end of the range that starts exactly at `start` (or `start` if none does):
    /// everything in `start..end` is covered.
    pub fn contiguous_end_from(&self, start: u64) -> u64 {
        match self
            .ranges
            .iter()
            .find(|r| r.start <= start && start < r.end)
        {
            Some(r) => r.end,
            None => start,
        }
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ranges.is_empty() {
            return f.write_str("nothing");
        }
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}..{}", r.start, r.end)?;
        }
        Ok(())
    }
}

/// Bytes shown with a binary unit; kept here for the callers that name it so.
pub use crate::display::HumanBytes;

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(path: &str, minor: u32, size: u64) -> EndpointFacts {
        EndpointFacts {
            path: path.into(),
            kind: EndpointKind::BlockDevice,
            storage: StorageId::Disk { major: 259, minor },
            base: 0,
            size,
            block_size: 512,
            read_only: false,
            mounted: None,
            holders: vec![],
        }
    }

    fn request(length: Option<u64>) -> CopyRequest {
        CopyRequest {
            src_offset: 0,
            dst_offset: 0,
            length,
            chunk_size: 1 << 20,
            queue_depth: 4,
            force: false,
        }
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn sizes_accept_binary_suffixes_and_reject_garbage() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("4KiB").unwrap(), 4096);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert_eq!(parse_size("0").unwrap(), 0);
        for bad in [
            "",
            "k",
            "1.5M",
            "-1",
            "4x",
            "99999999999999999999",
            "20000000T",
        ] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.to_string().contains("is not a size"), "{bad}: {e}");
        }
    }

    #[test]
    fn default_length_runs_to_the_end_of_the_source() {
        let src = disk("/dev/nvme0n1", 0, GIB);
        let dst = disk("/dev/nvme1n1", 1, GIB);
        let mut req = request(None);
        req.src_offset = GIB - (3 << 20);
        req.dst_offset = 4096;
        let plan = validate(&src, &dst, &req).unwrap();
        assert_eq!(plan.length, 3 << 20);
        assert_eq!(plan.src_range(), GIB - (3 << 20)..GIB);
        assert_eq!(plan.dst_range(), 4096..4096 + (3 << 20));
        assert!(!plan.grows_destination);
    }

    #[test]
    fn offsets_and_lengths_must_match_both_block_sizes() {
        let src = disk("/dev/nvme0n1", 0, GIB);
        let mut dst = disk("/dev/nvme1n1", 1, GIB);
        dst.block_size = 4096;
        let mut req = request(Some(1 << 20));
        req.src_offset = 512;
        let e = validate(&src, &dst, &req).unwrap_err();
        assert_eq!(
            e,
            PlanError::Unaligned {
                option: "--src-offset",
                value: 512,
                path: "/dev/nvme1n1".into(),
                block_size: 4096
            }
        );
        assert!(e.to_string().contains("use a multiple of 4096"), "{e}");

        let mut req = request(Some(1000));
        req.chunk_size = 4096;
        let e = validate(&src, &dst, &req).unwrap_err();
        assert!(
            matches!(e, PlanError::Unaligned { option: "--length", value: 1000, ref path, block_size: 512 } if path.as_os_str() == "/dev/nvme0n1"),
            "{e:?}"
        );

        let mut req = request(Some(8192));
        req.chunk_size = 6144;
        let e = validate(&src, &dst, &req).unwrap_err();
        assert!(
            matches!(
                e,
                PlanError::BadChunkSize {
                    chunk_size: 6144,
                    ..
                }
            ),
            "{e:?}"
        );

        let mut req = request(Some(8192));
        req.dst_offset = 4096 * 3;
        assert_eq!(validate(&src, &dst, &req).unwrap().block_size, 4096);
    }

    #[test]
    fn an_unaligned_source_file_tail_is_refused_with_the_derived_length() {
        let mut src = disk("/data/a.bin", 0, 10_000);
        src.kind = EndpointKind::RegularFile;
        src.storage = StorageId::File { dev: 1, ino: 2 };
        let dst = disk("/dev/nvme1n1", 1, GIB);
        let e = validate(&src, &dst, &request(None)).unwrap_err();
        assert!(
            matches!(
                e,
                PlanError::Unaligned {
                    option: "--length",
                    value: 10_000,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn ranges_past_the_end_are_refused_and_force_only_grows_files() {
        let src = disk("/dev/nvme0n1", 0, GIB);
        let dst = disk("/dev/nvme1n1", 1, GIB / 2);

        let e = validate(&src, &dst, &request(None)).unwrap_err();
        assert!(
            matches!(e, PlanError::DestinationPastEnd { end, size, .. } if end == GIB && size == GIB / 2),
            "{e:?}"
        );
        let mut forced = request(None);
        forced.force = true;
        assert!(matches!(
            validate(&src, &dst, &forced),
            Err(PlanError::DestinationPastEnd { .. })
        ));

        let mut req = request(Some(4096));
        req.src_offset = GIB;
        assert!(matches!(
            validate(&src, &dst, &req),
            Err(PlanError::SourcePastEnd { start, end, .. }) if start == GIB && end == GIB + 4096
        ));
        req.src_offset = u64::MAX - 511;
        assert!(matches!(
            validate(&src, &dst, &req),
            Err(PlanError::SourcePastEnd { .. })
        ));

        let mut file = disk("/data/out.bin", 0, 4096);
        file.kind = EndpointKind::RegularFile;
        file.storage = StorageId::File { dev: 1, ino: 9 };
        let req = request(Some(8192));
        let e = validate(&src, &file, &req).unwrap_err();
        assert!(e.to_string().contains("pass --force"), "{e}");
        let mut req = req;
        req.force = true;
        assert!(validate(&src, &file, &req).unwrap().grows_destination);

        file.kind = EndpointKind::MissingFile;
        file.size = 0;
        file.storage = StorageId::Unique;
        req.force = false;
        let e = validate(&src, &file, &req).unwrap_err();
        assert!(e.to_string().contains("would be created"), "{e}");
    }

    #[test]
    fn unsafe_destinations_are_refused_even_with_force() {
        let src = disk("/dev/nvme0n1", 0, GIB);
        let mut req = request(Some(4096));
        req.force = true;

        let mut mounted = disk("/dev/nvme1n1", 1, GIB);
        mounted.mounted = Some(("/dev/nvme1n1p1".into(), "/mnt".into()));
        let e = validate(&src, &mounted, &req).unwrap_err();
        assert_eq!(
            e.to_string(),
            "refusing to write to /dev/nvme1n1: /dev/nvme1n1p1 is mounted on /mnt; unmount it first"
        );

        let mut held = disk("/dev/nvme1n1", 1, GIB);
        held.holders = vec!["dm-0".into(), "md127".into()];
        let e = validate(&src, &held, &req).unwrap_err();
        assert!(e.to_string().contains("held by dm-0, md127"), "{e}");

        let mut ro = disk("/dev/nvme1n1", 1, GIB);
        ro.read_only = true;
        assert!(matches!(
            validate(&src, &ro, &req),
            Err(PlanError::DestinationReadOnly { .. })
        ));
    }

    #[test]
    fn overlap_is_detected_on_the_same_disk_and_across_partitions() {
        let src = disk("/dev/nvme0n1", 0, GIB);
        let same = disk("/dev/nvme0n1", 0, GIB);
        let mut req = request(Some(1 << 20));
        req.dst_offset = (1 << 20) - 512;
        assert!(matches!(
            validate(&src, &same, &req),
            Err(PlanError::Overlap { .. })
        ));
        req.dst_offset = 1 << 20;
        assert!(validate(&src, &same, &req).is_ok());

        // nvme0n1p1 starts 1 MiB into nvme0n1: its offset 0 is the disk's 1 MiB.
        let mut part = disk("/dev/nvme0n1p1", 0, GIB / 2);
        part.base = 1 << 20;
        let mut req = request(Some(1 << 20));
        req.src_offset = 1 << 20;
        let e = validate(&src, &part, &req).unwrap_err();
        assert!(e.to_string().contains("overlaps the source range"), "{e}");
        req.dst_offset = 1 << 20;
        assert!(validate(&src, &part, &req).is_ok());

        let other = disk("/dev/nvme1n1", 1, GIB);
        assert!(validate(&src, &other, &request(Some(4096))).is_ok());
    }

    #[test]
    fn the_schedule_covers_the_range_exactly_with_a_short_last_chunk() {
        let src = disk("/dev/nvme0n1", 0, GIB);
        let dst = disk("/dev/nvme1n1", 1, GIB);
        let mut req = request(Some((5 << 20) / 2));
        req.src_offset = 4096;
        req.dst_offset = 8192;
        req.queue_depth = 8;
        let plan = validate(&src, &dst, &req).unwrap();
        let chunks: Vec<Chunk> = plan.chunks().collect();
        assert_eq!(chunks.len(), 3);
        assert_eq!(plan.queue_depth, 3, "no more slots than chunks");
        assert_eq!(
            chunks[2],
            Chunk {
                index: 2,
                src_offset: 4096 + (2 << 20),
                dst_offset: 8192 + (2 << 20),
                len: 1 << 19
            }
        );
        assert_eq!(chunks.iter().map(|c| c.len).sum::<u64>(), plan.length);
        for pair in chunks.windows(2) {
            assert_eq!(pair[0].src_offset + pair[0].len, pair[1].src_offset);
        }
        assert_eq!(plan.chunk(3), None);
        assert_eq!(plan.chunk(u64::MAX), None);
    }

    #[test]
    fn zero_length_and_bad_depths_are_refused() {
        let src = disk("/dev/nvme0n1", 0, GIB);
        let dst = disk("/dev/nvme1n1", 1, GIB);
        let mut req = request(None);
        req.src_offset = GIB;
        assert!(matches!(
            validate(&src, &dst, &req),
            Err(PlanError::EmptyRange { .. })
        ));
        for depth in [0, MAX_QUEUE_DEPTH + 1] {
            let mut req = request(Some(4096));
            req.queue_depth = depth;
            assert!(matches!(
                validate(&src, &dst, &req),
                Err(PlanError::BadQueueDepth { .. })
            ));
        }
        let mut req = request(Some(4096));
        req.chunk_size = 0;
        assert!(matches!(
            validate(&src, &dst, &req),
            Err(PlanError::BadChunkSize { .. })
        ));
        req.chunk_size = MAX_CHUNK_SIZE * 2;
        assert!(matches!(
            validate(&src, &dst, &req),
            Err(PlanError::BadChunkSize { .. })
        ));
    }

    #[test]
    fn range_set_merges_and_reports_the_contiguous_prefix() {
        let mut set = RangeSet::default();
        set.insert(8..12);
        set.insert(0..4);
        assert_eq!(set.contiguous_end_from(0), 4);
        set.insert(20..24);
        set.insert(4..8);
        assert_eq!(set.ranges(), &[0..12, 20..24]);
        assert_eq!(set.contiguous_end_from(0), 12);
        assert_eq!(set.total(), 16);
        set.insert(10..21);
        assert_eq!(set.ranges().len(), 1);
        assert_eq!(set.ranges()[0], 0..24);
        set.insert(30..30);
        assert_eq!(set.to_string(), "0..24");
        assert_eq!(RangeSet::default().to_string(), "nothing");
        assert_eq!(RangeSet::default().contiguous_end_from(7), 7);
    }

    #[test]
    fn overlap_of_half_open_ranges() {
        assert!(ranges_overlap(&(0..10), &(9..20)));
        assert!(!ranges_overlap(&(0..10), &(10..20)));
        assert!(!ranges_overlap(&(5..5), &(0..10)));
    }
}
