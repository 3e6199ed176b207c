//! The PCI model: functions, bridges, capabilities and links, as read from sysfs.
