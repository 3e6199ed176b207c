//! Block device facts the copy engine checks: size, block size, mounts, holders, read-only.
