//! Physical Region Page entries for a data buffer (NVMe Base 2.0, 4.1.1). Pure.
//!
//! PRP1 is the buffer's first address (any dword-aligned offset in its page). If the data
//! ends within that page PRP2 is unused; if it ends in the next page PRP2 is that page; else
//! PRP2 points at a list of the remaining page addresses. The list is one page here (at
//! most page_size / 8 entries, no chaining): transfers are split at the controller's MDTS,
//! which keeps them far below that.

/// What PRP2 holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prp2 {
    /// Unused (zero).
    None,
    /// The second page.
    Page(u64),
    /// The page addresses a PRP list must hold; PRP2 is the list's address.
    List(Vec<u64>),
}

/// The PRP entries of one transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prps {
    /// PRP entry 1.
    pub prp1: u64,
    /// PRP entry 2.
    pub prp2: Prp2,
}

/// Why a buffer cannot be described.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrpError {
    /// Zero length.
    #[error("a transfer of 0 bytes has no PRP entries")]
    Empty,
    /// PRP1 must be dword aligned.
    #[error("buffer address {iova:#x} is not 4-byte aligned, which PRP entries require")]
    Misaligned {
        /// The address.
        iova: u64,
    },
    /// More pages than one list page holds.
    #[error("a transfer of {len} bytes at {iova:#x} needs {pages} PRP list entries, more than one {page_size}-byte list holds: split it (at most the controller's MDTS)")]
    TooLong {
        /// Address.
        iova: u64,
        /// Length.
        len: u64,
        /// Entries needed.
        pages: u64,
        /// The page size.
        page_size: u64,
    },
    /// The page size is not a power of two of at least 4 KiB.
    #[error("page size {0} is not a power of two of at least 4096")]
    PageSize(u64),
}

/// The PRP entries for `len` bytes at `iova` with `page_size` memory pages.
pub fn prps(iova: u64, len: u64, page_size: u64) -> Result<Prps, PrpError> {
    if !page_size.is_power_of_two() || page_size < 4096 {
        return Err(PrpError::PageSize(page_size));
    }
    if len == 0 {
        return Err(PrpError::Empty);
    }
    if !iova.is_multiple_of(4) {
        return Err(PrpError::Misaligned { iova });
    }
    let first = page_size - iova % page_size;
    if len <= first {
        return Ok(Prps {
            prp1: iova,
            prp2: Prp2::None,
        });
    }
    let next = iova + first;
    let rest = len - first;
    if rest <= page_size {
        return Ok(Prps {
            prp1: iova,
            prp2: Prp2::Page(next),
        });
    }
    let pages = rest.div_ceil(page_size);
    if pages > page_size / 8 {
        return Err(PrpError::TooLong {
            iova,
            len,
            pages,
            page_size,
        });
    }
    Ok(Prps {
        prp1: iova,
        prp2: Prp2::List((0..pages).map(|i| next + i * page_size).collect()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 4096;

    #[test]
    fn one_page_needs_no_prp2() {
        assert_eq!(prps(0x10000, P, P).unwrap().prp2, Prp2::None);
        assert_eq!(prps(0x10000, 1, P).unwrap().prp2, Prp2::None);
        // Ending exactly at the page boundary from an offset.
        assert_eq!(prps(0x10800, 0x800, P).unwrap().prp2, Prp2::None);
    }

    #[test]
    fn two_pages_put_the_second_in_prp2() {
        assert_eq!(prps(0x10000, P + 1, P).unwrap().prp2, Prp2::Page(0x11000));
        assert_eq!(prps(0x10000, 2 * P, P).unwrap().prp2, Prp2::Page(0x11000));
        // One byte over the boundary from an offset.
        assert_eq!(prps(0x10ffc, 8, P).unwrap().prp2, Prp2::Page(0x11000));
    }

    #[test]
    fn more_pages_make_a_list_of_page_starts() {
        let p = prps(0x10000, 2 * P + 1, P).unwrap();
        assert_eq!(p.prp1, 0x10000);
        assert_eq!(p.prp2, Prp2::List(vec![0x11000, 0x12000]));
        let off = prps(0x10200, 3 * P, P).unwrap();
        assert_eq!(off.prp2, Prp2::List(vec![0x11000, 0x12000, 0x13000]));
        // 512 KiB (QEMU's MDTS 7 at 4 KiB pages): 127 list entries after PRP1's page.
        let mdts = prps(0x40_0000_0000, 512 << 10, P).unwrap();
        match mdts.prp2 {
            Prp2::List(l) => {
                assert_eq!(l.len(), 127);
                assert_eq!(*l.last().unwrap(), 0x40_0000_0000 + 127 * P);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn limits_are_errors() {
        assert_eq!(prps(0x1000, 0, P), Err(PrpError::Empty));
        assert_eq!(
            prps(0x1002, 8, P),
            Err(PrpError::Misaligned { iova: 0x1002 })
        );
        assert_eq!(prps(0x1000, 8, 1000), Err(PrpError::PageSize(1000)));
        // 512 entries fit one list; 513 do not.
        assert!(prps(0, P + 512 * P, P).is_ok());
        let err = prps(0, P + 513 * P, P).unwrap_err();
        assert!(matches!(err, PrpError::TooLong { pages: 513, .. }), "{err}");
    }
}
