//! Reconnect delays for connect mode (the 1.x daemon's rule, §7.6 of the
//! format spec): start at `--reconnect-ms`, double after each failure, stop
//! growing at `--backoff-cap-ms`, start over after a session that brought
//! something new (a connection alone is not a success: a server that
//! accepts and replays only what the follower holds is backed off too).

use std::time::Duration;

/// The smallest initial delay, as in 1.x: a lower value would hammer a server
/// that is down.
pub const MIN_RECONNECT: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    /// `initial` below [`MIN_RECONNECT`] is raised to it, and a `cap` below
    /// `initial` is raised to `initial`, so the sequence never shrinks.
    pub fn new(initial: Duration, cap: Duration) -> Backoff {
        let initial = initial.max(MIN_RECONNECT);
        let cap = cap.max(initial);
        Backoff {
            initial,
            cap,
            next: initial,
        }
    }

    /// The delay before the next attempt; each call doubles the one after it.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.checked_mul(2).unwrap_or(self.cap).min(self.cap);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(ms(1000), ms(15000));
        let seq: Vec<u128> = (0..7).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(seq, [1000, 2000, 4000, 8000, 15000, 15000, 15000]);
        b.reset();
        assert_eq!(b.next_delay(), ms(1000));
    }

    #[test]
    fn clamps_initial_and_cap() {
        let mut b = Backoff::new(ms(10), ms(50));
        assert_eq!(b.next_delay(), ms(100));
        assert_eq!(b.next_delay(), ms(100));
        let mut huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.next_delay(), Duration::MAX);
        assert_eq!(huge.next_delay(), Duration::MAX);
    }
}
