//! Reading the PCI model from a sysfs root (real /sys, a snapshot, or a fixture).
