//! The kernel's P2P rules: map type, distance, path, reasons and provider choice.
