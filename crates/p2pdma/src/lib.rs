//! Linux PCIe peer-to-peer DMA from userspace.
//!
//! Since Linux 6.2 a process can `mmap()` `/sys/bus/pci/devices/<BDF>/p2pmem/allocate`
//! to get a piece of a PCI device's BAR memory (for example an NVMe Controller Memory
//! Buffer) and hand that buffer to `O_DIRECT` I/O on NVMe devices: the data then moves
//! device to device without crossing host RAM.
//!
//! The modules form layers that only point down (`docs/architecture.md` has the table,
//! and a unit test fails on any `crate::` path that points up):
//! - [`sysfs`], [`bdf`], [`display`]: every sysfs path ([`sysfs::SysfsRoot`]), PCI
//!   addresses, text helpers.
//! - [`pci`] and [`host`]: a model of the PCI tree read from any sysfs root, and the host
//!   facts (CPU, kernel release, `CONFIG_PCI_P2PDMA`).
//! - [`kernel_rules`], [`kernel_fixes`], [`topology`], [`resolve`], [`refusal`]: the
//!   kernel's own rules (`calc_map_type_and_dist` in `drivers/pci/p2pdma.c`) per release,
//!   for whether a provider and a client may do P2P, by which path, and why not; stable
//!   fixes a release lacks; device names; what an errno means.
//! - [`blockdev`], [`revoke`], [`p2pmem`], [`copy`], [`mod@bench`], [`probe`]: safe
//!   ownership of p2pmem buffers (revocation when the provider goes away), an io_uring
//!   `O_DIRECT` engine that moves data through them, benchmarks against fio, the probe.
//! - [`snapshot`] and [`report`]: capturing what p2pdma reads; every view as text, DOT,
//!   SVG or JSON structs.
//!
//! # References
//! - Linux `drivers/pci/p2pdma.c`, `Documentation/driver-api/pci/p2pdma.rst`
//! - "Userspace P2PDMA with O_DIRECT NVMe devices" (merged in Linux 6.2)
#![warn(missing_docs)]

pub mod bdf;
pub mod bench;
pub mod blockdev;
pub mod copy;
pub mod display;
pub mod host;
pub mod kernel_fixes;
pub mod kernel_rules;
pub mod p2pmem;
pub mod pci;
pub mod probe;
pub mod refusal;
pub mod report;
pub mod resolve;
pub mod revoke;
pub mod snapshot;
pub mod sysfs;
pub mod topology;

pub use bdf::Bdf;

#[cfg(test)]
mod layers;
