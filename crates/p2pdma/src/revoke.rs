//! Turning SIGBUS on a revoked p2pmem mapping into an error instead of a dead process.
