//! The io_uring O_DIRECT copy engine.
