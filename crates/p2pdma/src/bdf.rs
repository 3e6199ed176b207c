//! PCI addresses: domain, bus, device and function.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A PCI function address (`DDDD:BB:DD.F`), as in `/sys/bus/pci/devices/`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// PCI segment (domain), 0 on most machines.
    pub domain: u32,
    /// Bus number.
    pub bus: u8,
    /// Device (slot) number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

/// Why a string is not a PCI address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{input}' is not a PCI address: {why} (expected DDDD:BB:DD.F or BB:DD.F, e.g. 0000:01:00.0)"
)]
pub struct ParseBdfError {
    input: String,
    why: &'static str,
}

impl Bdf {
    /// A new address; `None` if the device or function number is out of range.
    pub fn new(domain: u32, bus: u8, device: u8, function: u8) -> Option<Self> {
        (device < 32 && function < 8).then_some(Bdf {
            domain,
            bus,
            device,
            function,
        })
    }

    /// `devfn` as the kernel encodes it: `device << 3 | function`.
    pub fn devfn(self) -> u8 {
        (self.device << 3) | self.function
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl fmt::Debug for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Bdf {
    type Err = ParseBdfError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |why| ParseBdfError {
            input: input.to_owned(),
            why,
        };
        let (rest, function) = input.rsplit_once('.').ok_or_else(|| err("no '.'"))?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [d, b, s] => (*d, *b, *s),
            [b, s] => ("0", *b, *s),
            _ => return Err(err("wrong number of ':'")),
        };
        let hex = |s: &str, max_len: usize| {
            if s.is_empty() || s.len() > max_len || !s.chars().all(|c| c.is_ascii_hexdigit()) {
                None
            } else {
                u32::from_str_radix(s, 16).ok()
            }
        };
        let domain = hex(domain, 8).ok_or_else(|| err("bad domain"))?;
        let bus = hex(bus, 2).ok_or_else(|| err("bad bus"))? as u8;
        let device = hex(device, 2)
            .filter(|d| *d < 32)
            .ok_or_else(|| err("device must be 00..1f"))? as u8;
        let function = hex(function, 1)
            .filter(|f| *f < 8)
            .ok_or_else(|| err("function must be 0..7"))? as u8;
        Ok(Bdf {
            domain,
            bus,
            device,
            function,
        })
    }
}

impl Serialize for Bdf {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bdf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_full_and_short_forms() {
        let b: Bdf = "0000:01:00.0".parse().unwrap();
        assert_eq!(b, Bdf::new(0, 1, 0, 0).unwrap());
        assert_eq!(b.to_string(), "0000:01:00.0");
        let s: Bdf = "3a:1f.7".parse().unwrap();
        assert_eq!(s.to_string(), "0000:3a:1f.7");
        assert_eq!(s.devfn(), (0x1f << 3) | 7);
    }

    #[test]
    fn rejects_out_of_range_and_garbage_without_panicking() {
        for bad in [
            "",
            "0000:01:20.0",
            "0000:01:00.8",
            "01.0",
            "zz:00.0",
            "0000:100:00.0",
            "0:0:0:0.0",
        ] {
            let e = bad.parse::<Bdf>().unwrap_err();
            assert!(e.to_string().contains("is not a PCI address"), "{bad}: {e}");
        }
    }
}
