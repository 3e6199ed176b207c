//! The lab tests, one binary: each module boots QEMU guests through the one harness
//! ([`harness::Lab`]) and checks what ran inside them.
//!
//! Tests that boot QEMU are `#[ignore]`d with the reason, so a plain `cargo test` never
//! starts a VM; README's test command runs them with `--include-ignored`, and runs the
//! kernel-facing modules a second time on Linux 7.2 by module path
//! (`cargo test -p p2pdma-cli --test lab -- --include-ignored topology:: copy:: ...`,
//! `--skip debug::` for the debug kernel that 7.2 does not build).

#[macro_use]
mod harness;

mod lab;

// The kernel-facing suites, which README's test command runs again on Linux 7.2.
mod bad_input;
mod check;
mod copy;
mod p2pmem;
mod probe;
mod ram;
mod reliability;
mod topology;

// The VFIO provider on the kernel without P2PDMA (`--flavour no-p2pdma`; 6.12 only).
mod vfio;

// `p2pdma bench` in the guest.
mod bench;

// Debian's stock kernel (`--flavour stock`), fetched instead of built.
mod stock;

// NVMe native multipath on the stock kernel: the head disk's P2PDMA per release.
mod multipath;
