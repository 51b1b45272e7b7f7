//! The leader's live progress board (DESIGN.md §3: byte counters never reach the log): the last
//! progress each migration's source reported, with the instant it arrived. Sources report to the
//! leader (`Migrations.Report`, or directly when they are the leader); `migration show/watch`
//! read it; the migration planner counts a transfer's silence from it. A new leader starts with
//! an empty board, so silence is only ever counted from its own election.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use paddock_migration::Progress;
use paddock_model::migration::MigrationFigures;

/// Live progress of running migrations, as their sources last reported it.
#[derive(Debug, Default)]
pub struct ProgressBoard {
    entries: Mutex<HashMap<u64, (Progress, Instant)>>,
}

impl ProgressBoard {
    /// Records a report of migration `id` that arrived `at`.
    pub fn put(&self, id: u64, progress: Progress, at: Instant) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(id, (progress, at));
        }
    }

    /// The last report of `id` and when it arrived.
    pub fn get(&self, id: u64) -> Option<(Progress, Instant)> {
        let entries = self.entries.lock().ok()?;
        entries.get(&id).cloned()
    }

    /// Forgets every migration for which `open` is false.
    pub fn retain(&self, open: impl Fn(u64) -> bool) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|id, _| open(*id));
        }
    }
}

/// Final figures from a source's progress.
pub fn figures(progress: &Progress) -> MigrationFigures {
    MigrationFigures {
        total_ms: progress.total_ms,
        downtime_ms: progress.downtime_ms,
        prepare_ms: 0,
        bytes_transferred: progress.bytes_sent,
        memory_bytes: progress.memory_bytes,
        memory_sent: progress.memory_sent,
        rounds: progress.round + 1,
        postcopy: progress.postcopy,
        throttle: progress.throttle,
        counter_at_pause: progress.counter_at_pause,
        digest: progress.digest.clone(),
        source_verified: progress.source_verified,
    }
}
