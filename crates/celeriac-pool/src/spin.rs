//! Bounded spinning before blocking.

use std::hint;
use std::thread;
use std::time::{Duration, Instant};

/// Busy-waits until `ready()` is true or about `budget` has passed; returns
/// the last value of `ready()`. Spins with CPU hints first, then yields the
/// CPU between checks (the machine may have fewer cores than threads).
///
/// The budget is checked after every yield: on a busy CPU one yield can
/// hand the CPU to another thread for a whole time slice (milliseconds), and
/// a spinner that kept yielding would stay runnable for many slices, which
/// makes its CPU look busy to the scheduler when it places other threads.
pub(crate) fn spin_until(budget: Duration, mut ready: impl FnMut() -> bool) -> bool {
    for _ in 0..64 {
        if ready() {
            return true;
        }
        hint::spin_loop();
    }
    let start = Instant::now();
    loop {
        thread::yield_now();
        if ready() {
            return true;
        }
        if start.elapsed() >= budget {
            return false;
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

    /// Each check here takes longer than the whole budget (as a yield on a
    /// busy CPU can): the spinner must give up at the first check after the
    /// budget, not keep going for a batch of yields.
    #[test]
    fn stops_at_the_first_check_past_the_budget() {
        let mut checks = 0;
        let ready = spin_until(Duration::from_micros(100), || {
            checks += 1;
            if checks > 64 {
                thread::sleep(Duration::from_millis(1));
            }
            false
        });
        assert!(!ready);
        assert_eq!(checks, 65, "checks after the budget ran out");
    }
}
