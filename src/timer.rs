//! A worker's timer queue. Timers live on the worker's own loop (DESIGN.md:
//! no hand-off to a timer thread); a timer is never cancelled in place —
//! when it fires, its owner checks a generation number and ignores a
//! timer that was superseded (RFC 3261 §17 timers stop by state change).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Instant;

struct Entry<T> {
    at: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.seq == o.seq
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Entry<T> {
    // Reversed: BinaryHeap is a max-heap and the earliest timer must pop first.
    fn cmp(&self, o: &Self) -> Ordering {
        o.at.cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}

/// Min-heap of timers, ordered by deadline then by arming order (so timers
/// armed for the same instant fire in the order they were armed).
pub struct TimerHeap<T> {
    heap: BinaryHeap<Entry<T>>,
    seq: u64,
}

impl<T> Default for TimerHeap<T> {
    fn default() -> Self {
        TimerHeap {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<T> TimerHeap<T> {
    /// Arms a timer firing at `at`.
    pub fn arm(&mut self, at: Instant, item: T) {
        self.seq += 1;
        self.heap.push(Entry { at, seq: self.seq, item });
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.at)
    }

    /// Removes and returns one timer due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        if self.heap.peek()?.at <= now {
            self.heap.pop().map(|e| e.item)
        } else {
            None
        }
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when nothing is armed.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fires_in_deadline_then_arming_order() {
        let t0 = Instant::now();
        let mut h = TimerHeap::default();
        h.arm(t0 + Duration::from_secs(2), "b");
        h.arm(t0 + Duration::from_secs(1), "a");
        h.arm(t0 + Duration::from_secs(2), "c");
        assert_eq!(h.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(h.pop_due(t0), None);
        let now = t0 + Duration::from_secs(2);
        assert_eq!(h.pop_due(now), Some("a"));
        assert_eq!(h.pop_due(now), Some("b"));
        assert_eq!(h.pop_due(now), Some("c"));
        assert!(h.is_empty());
    }
}
