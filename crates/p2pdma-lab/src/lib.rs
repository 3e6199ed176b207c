//! The p2pdma lab: a reproducible QEMU test bed with a real `CONFIG_PCI_P2PDMA` kernel
//! and emulated NVMe controllers with Controller Memory Buffers, in PCIe topologies
//! declared in TOML.
//!
//! - [`spec`]: the topology file and the QEMU devices it becomes (pure).
//! - [`kernel`]: building the lab kernel once and caching it outside the repository.
//! - [`kernel_source`]: the kernel releases the lab ships and fetching their source.
//! - [`stock`]: the distribution's own kernel (Debian's), fetched instead of built.
//! - [`obtain`]: the kernel a command boots: given, stock, cached or built.
//! - [`launch`]: what `lab run`, `lab demo`, `lab bench` and `lab check` do around a boot
//!   (requests in, typed results out; the binary only parses and prints).
//! - [`initramfs`]: the guest's root file system (busybox + the static p2pdma binary).
//! - [`vm`]: booting a topology, running a command, deadlines and fault injection.
//! - [`qmp`]: the QEMU monitor client used for surprise removal.
//! - [`bench`]: boot times of topologies (`lab bench`).
//! - [`check`]: `lab check`, the lab as a P2PDMA regression suite for one kernel.
//! - [`guest`]: what `p2pdma lab guest ...` does inside the guest.
//! - [`host`]: what the host needs and installing it on Debian.
#![warn(missing_docs)]

pub mod bench;
pub mod check;
pub mod guest;
pub mod host;
pub mod initramfs;
pub mod kernel;
pub mod kernel_source;
pub mod launch;
pub mod obtain;
pub mod paths;
pub mod qmp;
pub mod spec;
pub mod stock;
pub mod vm;
