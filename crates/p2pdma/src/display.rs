//! Small text helpers every layer shares: byte counts with binary units and an error
//! with its causes on one line.
//!
//! `indicatif`'s `BinaryBytes` prints two decimals (`16.00 MiB`); p2pdma's messages and
//! tree marks print whole numbers bare and one decimal otherwise (`16 MiB`, `1.5 GiB`),
//! and scripts and tests read them, so the one formatter lives here.

use std::fmt;

/// Bytes shown with a binary unit (`1.5 MiB`), for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanBytes(pub u64);

impl fmt::Display for HumanBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else if value.fract() == 0.0 {
            write!(f, "{value:.0} {}", UNITS[unit])
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

/// An error and its `source()` chain on one line, joined with `": "`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes() {
        assert_eq!(HumanBytes(512).to_string(), "512 B");
        assert_eq!(HumanBytes(1 << 20).to_string(), "1 MiB");
        assert_eq!(HumanBytes(3 << 29).to_string(), "1.5 GiB");
        assert_eq!(HumanBytes(16 << 20).to_string(), "16 MiB");
        assert_eq!(HumanBytes(1536).to_string(), "1.5 KiB");
    }

    #[test]
    fn the_chain_holds_every_cause_in_order() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading /x")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::from_raw_os_error(libc::ENOENT));
        let text = error_chain(&e);
        assert!(text.starts_with("reading /x: "), "{text}");
        assert!(text.contains("No such file"), "{text}");
    }
}
