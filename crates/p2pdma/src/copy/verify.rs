//! `--verify`: re-read both ranges through host memory and compare xxh3-128 digests.
//!
//! The reads are O_DIRECT into an aligned host buffer, so they come from the devices, not
//! from a page cache the copy never touched, and they do not use device memory, so a
//! faulty P2P path cannot hide its own mistakes.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use serde::Serialize;
use xxhash_rust::xxh3::Xxh3;

use super::engine::Endpoint;
use super::host_buffer::{HostBuffer, HostBufferError};
use super::plan::CopyPlan;

/// Largest buffer used per side while verifying.
const VERIFY_BUFFER: u64 = 8 << 20;

/// Why verification could not be carried out (a mismatch is not an error: see
/// [`Verification::first_difference`]).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// No host memory for the read buffers.
    #[error("cannot allocate the verification buffers")]
    Buffer(#[source] HostBufferError),
    /// A re-read failed.
    #[error("re-reading {len} bytes at offset {offset} of {} for verification failed", path.display())]
    Read {
        /// The file or device.
        path: PathBuf,
        /// Byte offset of the failed read.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// The outcome of re-reading both ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// xxh3-128 of the source range.
    #[serde(serialize_with = "hex128")]
    pub src_digest: u128,
    /// xxh3-128 of the destination range.
    #[serde(serialize_with = "hex128")]
    pub dst_digest: u128,
    /// Offset, relative to the start of the ranges, of the first byte that differs.
    pub first_difference: Option<u64>,
}

impl Verification {
    /// Both ranges hold the same bytes.
    pub fn matched(&self) -> bool {
        self.first_difference.is_none() && self.src_digest == self.dst_digest
    }
}

fn hex128<S: serde::Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:032x}"))
}

/// Re-reads `plan`'s source and destination ranges (files opened with O_DIRECT and read
/// access) and compares them. Calls `progress` with the bytes compared so far.
pub fn verify(
    src: Endpoint<'_>,
    dst: Endpoint<'_>,
    plan: &CopyPlan,
    progress: &mut dyn FnMut(u64),
) -> Result<Verification, VerifyError> {
    let step = plan
        .length
        .min(VERIFY_BUFFER.max(plan.block_size))
        .next_multiple_of(plan.block_size);
    let mut src_buf = HostBuffer::new(step as usize).map_err(VerifyError::Buffer)?;
    let mut dst_buf = HostBuffer::new(step as usize).map_err(VerifyError::Buffer)?;
    let mut src_hash = Xxh3::new();
    let mut dst_hash = Xxh3::new();
    let mut first_difference = None;

    let mut pos = 0;
    while pos < plan.length {
        let len = (plan.length - pos).min(step) as usize;
        read_exact(
            src,
            plan.src_offset + pos,
            &mut src_buf.as_mut_slice()[..len],
        )?;
        read_exact(
            dst,
            plan.dst_offset + pos,
            &mut dst_buf.as_mut_slice()[..len],
        )?;
        let a = &src_buf.as_slice()[..len];
        let b = &dst_buf.as_slice()[..len];
        src_hash.update(a);
        dst_hash.update(b);
        // Slice equality is a memcmp; the byte search only runs on a mismatch.
        if first_difference.is_none() && a != b {
            first_difference = a
                .iter()
                .zip(b)
                .position(|(x, y)| x != y)
                .map(|i| pos + i as u64);
        }
        pos += len as u64;
        progress(pos);
    }
    Ok(Verification {
        src_digest: src_hash.digest128(),
        dst_digest: dst_hash.digest128(),
        first_difference,
    })
}

fn read_exact(end: Endpoint<'_>, offset: u64, buf: &mut [u8]) -> Result<(), VerifyError> {
    end.file
        .read_exact_at(buf, offset)
        .map_err(|source| VerifyError::Read {
            path: end.path.to_owned(),
            offset,
            len: buf.len() as u64,
            source,
        })
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::Path;

    use super::*;

    fn plan(src_offset: u64, dst_offset: u64, length: u64) -> CopyPlan {
        CopyPlan {
            src_offset,
            dst_offset,
            length,
            chunk_size: 1 << 20,
            queue_depth: 1,
            block_size: 4096,
            grows_destination: false,
        }
    }

    fn open(path: &Path) -> std::fs::File {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .unwrap()
    }

    #[test]
    fn names_the_first_differing_offset_and_matches_equal_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let a_path = dir.path().join("a");
        let b_path = dir.path().join("b");
        let data: Vec<u8> = (0..(10u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&a_path, &data).unwrap();
        let mut shifted = vec![0u8; 4096];
        shifted.extend_from_slice(&data);
        let flip = 4096 + (9 << 20) + 12345;
        shifted[flip] ^= 0x40;
        std::fs::write(&b_path, &shifted).unwrap();
        let (a, b) = (open(&a_path), open(&b_path));
        let ea = Endpoint {
            file: &a,
            path: &a_path,
        };
        let eb = Endpoint {
            file: &b,
            path: &b_path,
        };

        let same = verify(ea, eb, &plan(0, 4096, 9 << 20), &mut |_| {}).unwrap();
        assert!(same.matched());
        assert_eq!(
            same.src_digest,
            xxhash_rust::xxh3::xxh3_128(&data[..9 << 20])
        );

        let mut last = 0;
        let diff = verify(ea, eb, &plan(0, 4096, 10 << 20), &mut |n| last = n).unwrap();
        assert!(!diff.matched());
        assert_eq!(diff.first_difference, Some((9 << 20) + 12345));
        assert_eq!(last, 10 << 20);
        assert_ne!(diff.src_digest, diff.dst_digest);
    }

    #[test]
    fn a_range_past_the_end_is_a_read_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        let f = open(&p);
        let e = Endpoint { file: &f, path: &p };
        let err = verify(e, e, &plan(0, 4096, 8192), &mut |_| {}).unwrap_err();
        assert!(
            matches!(err, VerifyError::Read { offset: 4096, .. }),
            "{err:?}"
        );
    }
}
