//! Token-bucket bandwidth limit, shared by the streams of one migration.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// `rate` bytes per second with bursts of up to 50 ms worth (at least 256 KiB).
    pub fn new(rate: u64) -> TokenBucket {
        let rate = rate.max(1) as f64;
        let burst = (rate * 0.05).max(256.0 * 1024.0);
        TokenBucket {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes `bytes` tokens; returns how long the caller must wait before sending them (the
    /// bucket goes into debt, so concurrent senders queue fairly behind each other).
    pub fn take(&self, bytes: usize) -> Duration {
        let Ok(mut state) = self.state.lock() else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        let (tokens, last) = *state;
        let refilled =
            (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        let left = refilled - bytes as f64;
        *state = (left, now);
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / self.rate)
        }
    }

    /// Takes `bytes` tokens, sleeping as long as needed.
    pub fn pace(&self, bytes: usize) {
        let wait = self.take(bytes);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debt_turns_into_waits_at_the_configured_rate() {
        let bucket = TokenBucket::new(1 << 20);
        // The burst goes through at once, then each MiB costs about a second.
        assert_eq!(bucket.take(256 * 1024), Duration::ZERO);
        let wait = bucket.take(1 << 20);
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_millis(1000),
            "{wait:?}"
        );
        let wait = bucket.take(1 << 20);
        assert!(wait > Duration::from_millis(1900), "{wait:?}");
    }
}
