//! P2P DMA without the kernel's P2PDMA: NVMe controllers driven from userspace through
//! VFIO, and a PCI BAR (an NVMe Controller Memory Buffer, or any memory BAR) handed out in
//! revocable leases.
//!
//! The kernel path of p2pdma (`crate p2pdma`) needs `CONFIG_PCI_P2PDMA`. This crate needs
//! only VFIO and an IOMMU: the devices are bound to `vfio-pci`, put in one type1
//! container, and the BAR that serves as the data buffer is mapped into the IOMMU at an IOVA
//! of our choosing, so the controllers address it alike (for a CMB, CMBMSC.CBA is set to
//! that IOVA, NVMe 1.4). Commands name leased ranges of it by IOVA.
//!
//! Layers, bottom up:
//! - [`nvme`]: registers, queue entries, rings and PRP lists (pure, unit-tested);
//! - [`table`]: the lease table, a state machine with a model test: a range returns to the
//!   pool only when its lease is dropped, no submitted command names it and no CPU access
//!   is under way;
//! - [`pool`]: `BarPool` and `Lease`, owned types over the table with volatile CPU access;
//! - [`vfio`]: the VFIO glue (container, group, device, DMA mapping, BAR mmap, the device
//!   request eventfd), the only module with `unsafe` besides the pool's volatile access;
//! - [`driver`]: the userspace NVMe driver (reset, admin queue, Identify, I/O queues,
//!   polled completions with deadlines);
//! - [`copy`]: namespace-to-namespace copies through leases over the kernel path's
//!   pipeline, the revocation sequence of the seed thread (each step logged with its
//!   time), and verification through host memory with the kernel path's comparison;
//! - [`job`]: a whole `copy --via vfio` as one library call (checks, devices, pool, copy,
//!   verify) with an observer and typed errors.
//!
//! # References
//! - NVM Express Base Specification 2.0 (CAP, CC, CSTS, AQA, ASQ, ACQ, CMBLOC, CMBSZ,
//!   CMBMSC, CMBSTS; queues, PRPs)
//! - Linux `Documentation/driver-api/vfio.rst`, `include/uapi/linux/vfio.h`
#![warn(missing_docs)]

pub mod nvme;
pub mod pool;
pub mod table;
pub mod vfio;

pub use pool::{BarPool, InFlight, Lease, PoolError};
pub mod driver;
pub use driver::{Controller, DriverError};
pub mod bench;
pub mod bind;
pub mod copy;
pub mod job;
