//! Resolving what users name (BDF, /dev/nvme*, files) into PCI functions and block devices.
