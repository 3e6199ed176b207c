//! Files for the tests that run real `O_DIRECT` I/O on the host's filesystem (the copy
//! engine's, verify's and bench's).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::engine::Endpoint;

/// `path` opened for reading (and writing with `write`) with `O_DIRECT`.
pub(crate) fn open_direct(path: &Path, write: bool) -> File {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap()
}

/// A source and a destination file (`src`, `dst`) in a temp dir, written with the given
/// bytes and opened `O_DIRECT` (the destination read-write).
pub(crate) struct SrcDst {
    _dir: tempfile::TempDir,
    pub(crate) src_path: PathBuf,
    pub(crate) dst_path: PathBuf,
    pub(crate) src: File,
    pub(crate) dst: File,
}

impl SrcDst {
    pub(crate) fn new(src: &[u8], dst: &[u8]) -> SrcDst {
        let dir = tempfile::tempdir().unwrap();
        let (src_path, dst_path) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::write(&src_path, src).unwrap();
        std::fs::write(&dst_path, dst).unwrap();
        SrcDst {
            src: open_direct(&src_path, false),
            dst: open_direct(&dst_path, true),
            _dir: dir,
            src_path,
            dst_path,
        }
    }

    /// Both files as the engine's endpoints.
    pub(crate) fn endpoints(&self) -> (Endpoint<'_>, Endpoint<'_>) {
        (
            Endpoint {
                file: &self.src,
                path: &self.src_path,
            },
            Endpoint {
                file: &self.dst,
                path: &self.dst_path,
            },
        )
    }
}
