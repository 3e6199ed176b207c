//! Queue ring arithmetic: submission tail and head, completion head and phase tag. Pure.
//! The memory the entries live in is elsewhere ([`crate::driver`]).

/// A submission queue's indices. Full when one slot remains free (tail + 1 == head).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqRing {
    size: u16,
    tail: u16,
    head: u16,
}

impl SqRing {
    /// An empty ring of `size` entries (2..=65536 in NVMe; 2..=u16::MAX here).
    pub fn new(size: u16) -> SqRing {
        assert!(size >= 2, "an NVMe queue has at least 2 entries");
        SqRing {
            size,
            tail: 0,
            head: 0,
        }
    }

    /// Entries submitted and not yet consumed by the controller.
    pub fn in_use(&self) -> u16 {
        (self.tail + self.size - self.head) % self.size
    }

    /// Whether another entry can be queued.
    pub fn has_room(&self) -> bool {
        (self.tail + 1) % self.size != self.head
    }

    /// Claims the slot at the tail; returns its index and the new tail (for the doorbell).
    /// `None` when the ring is full.
    pub fn push(&mut self) -> Option<(u16, u16)> {
        if !self.has_room() {
            return None;
        }
        let slot = self.tail;
        self.tail = (self.tail + 1) % self.size;
        Some((slot, self.tail))
    }

    /// The controller's head pointer from a completion (SQHD).
    pub fn set_head(&mut self, head: u16) {
        self.head = head % self.size;
    }
}

/// A completion queue's head and expected phase tag (starts at 1; flips at each wrap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CqRing {
    size: u16,
    head: u16,
    phase: bool,
}

impl CqRing {
    /// A fresh ring of `size` entries: the controller writes phase 1 on its first pass.
    pub fn new(size: u16) -> CqRing {
        assert!(size >= 2, "an NVMe queue has at least 2 entries");
        CqRing {
            size,
            head: 0,
            phase: true,
        }
    }

    /// The slot to look at next.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// Whether an entry whose phase tag is `phase` at the head is new.
    pub fn is_new(&self, phase: bool) -> bool {
        phase == self.phase
    }

    /// Consumes the head entry; returns the new head (for the doorbell).
    pub fn advance(&mut self) -> u16 {
        self.head += 1;
        if self.head == self.size {
            self.head = 0;
            self.phase = !self.phase;
        }
        self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submission_ring_fills_leaving_one_slot_and_wraps() {
        let mut sq = SqRing::new(4);
        assert_eq!(sq.push(), Some((0, 1)));
        assert_eq!(sq.push(), Some((1, 2)));
        assert_eq!(sq.push(), Some((2, 3)));
        assert_eq!(sq.push(), None, "full at size - 1");
        assert_eq!(sq.in_use(), 3);
        sq.set_head(2);
        assert_eq!(sq.in_use(), 1);
        assert_eq!(sq.push(), Some((3, 0)), "the tail wraps to 0");
        assert_eq!(sq.push(), Some((0, 1)));
        assert_eq!(sq.push(), None);
        sq.set_head(1);
        assert_eq!(sq.in_use(), 0);
    }

    #[test]
    fn completion_ring_flips_phase_on_wrap() {
        let mut cq = CqRing::new(3);
        assert!(cq.is_new(true) && !cq.is_new(false));
        assert_eq!(cq.advance(), 1);
        assert_eq!(cq.advance(), 2);
        assert!(cq.is_new(true));
        assert_eq!(cq.advance(), 0);
        // Second pass: the stale entries still carry phase 1 and are not new.
        assert!(!cq.is_new(true) && cq.is_new(false));
        for _ in 0..3 {
            cq.advance();
        }
        assert!(cq.is_new(true), "third pass: phase 1 again");
        assert_eq!(cq.head(), 0);
    }
}
