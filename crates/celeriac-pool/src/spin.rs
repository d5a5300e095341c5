//! Bounded spinning before blocking.

use std::hint;
use std::thread;
use std::time::{Duration, Instant};

/// Busy-waits until `ready()` is true or about `budget` has passed; returns
/// the last value of `ready()`. Spins with CPU hints first, then yields the
/// CPU between checks (the machine may have fewer cores than threads).
pub(crate) fn spin_until(budget: Duration, mut ready: impl FnMut() -> bool) -> bool {
    for _ in 0..64 {
        if ready() {
            return true;
        }
        hint::spin_loop();
    }
    let start = Instant::now();
    loop {
        for _ in 0..8 {
            if ready() {
                return true;
            }
            thread::yield_now();
        }
        if start.elapsed() >= budget {
            return ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_true_when_ready() {
        let mut n = 0;
        assert!(spin_until(Duration::from_secs(60), || {
            n += 1;
            n == 100
        }));
        assert_eq!(n, 100);
    }

    #[test]
    fn gives_up_after_budget() {
        assert!(!spin_until(Duration::from_micros(10), || false));
    }
}
