//! The integration tests of the `p2pdma` library, one binary (ripgrep-style: each former
//! test file is a module, so `cargo test --test it MODULE::` runs one of them).

mod fixture_topologies;
