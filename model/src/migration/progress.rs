//! Live figures of one migration, as the source reports them (and the orchestrator commits
//! the final ones with the result).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Engine phase: connecting, precopy, stop-and-copy, verifying, switching, postcopy,
    /// completed, rolled-back, abandoned.
    pub phase: String,
    pub round: u32,
    pub memory_bytes: u64,
    /// Bytes put on the wire (frames, after compression).
    pub bytes_sent: u64,
    /// Guest memory bytes those frames carried (zero pages and deltas count in full).
    pub memory_sent: u64,
    /// Dirty memory still to send, as of the last round.
    pub remaining_bytes: u64,
    /// Wire bytes per second since the transfer started.
    pub rate_bps: u64,
    /// Guest memory dirtied per second during the last round.
    pub dirty_rate_bps: u64,
    pub zero_pages: u64,
    pub xor_pages: u64,
    /// Throttle applied to the guest (percent of its speed taken away).
    pub throttle: u8,
    pub postcopy: bool,
    pub expected_downtime_ms: u64,
    /// Pause of the source → "resumed" from the destination.
    pub downtime_ms: Option<u64>,
    /// Handshake → done.
    pub total_ms: u64,
    /// Everything is at the destination and checked: the switch may be committed.
    pub ready: bool,
    pub done: bool,
    pub error: Option<String>,
    /// Guest counter when the source paused (the destination continues from it).
    pub counter_at_pause: Option<u64>,
    pub digest: Option<String>,
    /// After the switch: the frozen source memory hashed to what was sent.
    pub source_verified: Option<bool>,
}

impl Progress {
    /// Percent of the transfer done: the first pass counts for everything when the guest
    /// is idle; later rounds approach 100 as the dirty set shrinks.
    pub fn percent(&self) -> f64 {
        if self.done || self.ready {
            return 100.0;
        }
        let total = self.memory_sent
            + self
                .remaining_bytes
                .max(self.memory_bytes.saturating_sub(self.memory_sent));
        if total == 0 {
            return 0.0;
        }
        (self.memory_sent as f64 / total as f64 * 100.0).min(99.9)
    }

    /// Memory bytes carried per wire byte.
    pub fn compression_ratio(&self) -> f64 {
        if self.bytes_sent == 0 {
            1.0
        } else {
            self.memory_sent as f64 / self.bytes_sent as f64
        }
    }

    /// Seconds left at the current rate, when known.
    pub fn eta_secs(&self) -> Option<f64> {
        let left = if self.round == 0 {
            self.memory_bytes.saturating_sub(self.memory_sent)
        } else {
            self.remaining_bytes
        };
        let rate = self.rate_bps as f64 * self.compression_ratio();
        (rate > 0.0).then(|| left as f64 / rate)
    }
}
