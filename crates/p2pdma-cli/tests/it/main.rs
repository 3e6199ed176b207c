//! The tests of the `p2pdma` command that need no VM, one binary (ripgrep-style: each
//! former test file is a module, so `cargo test -p p2pdma-cli --test it MODULE::` runs
//! one of them). The lab tests, which boot QEMU guests, are the other binary, `lab`.

mod util;

mod bench_cli;
mod contract;
mod copy;
mod least_privilege;
mod topo_cli;
