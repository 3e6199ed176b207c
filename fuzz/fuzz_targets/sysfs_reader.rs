#![no_main]
//! cargo-fuzz target: `cargo +nightly fuzz run sysfs_reader` (from the repository root).

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::run(data);
});
