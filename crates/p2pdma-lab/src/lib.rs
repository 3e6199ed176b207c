//! The p2pdma lab: a reproducible QEMU test bed with a real `CONFIG_PCI_P2PDMA` kernel
//! and emulated NVMe controllers with Controller Memory Buffers, in PCIe topologies
//! declared in TOML.
#![warn(missing_docs)]
