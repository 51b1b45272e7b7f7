//! Migrations and their live progress.

use paddock_model::migration::{Migration, MigrationMode, MigrationOptions, Phase, Progress};
use paddock_model::{Command, Rejection};

use crate::pb;

impl pb::MigrationCancelRequest {
    pub fn command(&self) -> Command {
        Command::MigrationCancel { id: self.id }
    }
}

impl pb::MigrationCreateRequest {
    /// The command an operator's request is. Unset fields take the defaults: mode `auto`, the
    /// default max downtime, no bandwidth limit, the scheduler's destination.
    pub fn command(&self) -> Result<Command, Rejection> {
        let defaults = MigrationOptions::default();
        let mode = if self.mode.is_empty() {
            defaults.mode
        } else {
            MigrationMode::parse(&self.mode).ok_or_else(|| Rejection::Invalid {
                reason: format!(
                    "mode must be auto, precopy or postcopy, not {:?}",
                    self.mode
                ),
            })?
        };
        Ok(Command::MigrationCreate {
            vm: self.vm.clone(),
            destination: (!self.to.is_empty()).then(|| self.to.clone()),
            options: MigrationOptions {
                mode,
                bandwidth: (self.bandwidth > 0).then_some(self.bandwidth),
                max_downtime_ms: if self.max_downtime_ms == 0 {
                    defaults.max_downtime_ms
                } else {
                    self.max_downtime_ms
                },
            },
            // Out of range for u16 is out of range for the model's check too.
            priority: u16::try_from(self.priority).unwrap_or(u16::MAX),
            reason: "operator".into(),
        })
    }
}

/// A migration as the API shows it: committed figures, or live ones while it runs.
pub fn migration_info(m: &Migration, live: Option<Progress>) -> pb::MigrationInfo {
    let f = &m.figures;
    let mut out = pb::MigrationInfo {
        id: m.id,
        vm: m.vm.clone(),
        source: m.source.clone(),
        destination: m
            .destination
            .clone()
            .or(m.requested.clone())
            .unwrap_or_default(),
        mode: m.options.mode.name().into(),
        phase: m.phase.name().into(),
        reason: m.reason.clone(),
        error: m.error.clone().unwrap_or_default(),
        priority: u32::from(m.priority),
        bandwidth: m.options.bandwidth.unwrap_or(0),
        max_downtime_ms: m.options.max_downtime_ms,
        created_ms: m.created_ms,
        started_ms: m.started_ms.unwrap_or(0),
        switched_ms: m.switched_ms.unwrap_or(0),
        ended_ms: m.ended_ms.unwrap_or(0),
        total_ms: f.total_ms,
        downtime_ms: f.downtime_ms,
        prepare_ms: f.prepare_ms,
        bytes_transferred: f.bytes_transferred,
        memory_bytes: f.memory_bytes,
        memory_sent: f.memory_sent,
        round: f.rounds.saturating_sub(1),
        percent: if m.phase == Phase::Completed {
            100.0
        } else {
            0.0
        },
        compression_ratio: if f.bytes_transferred > 0 {
            f.memory_sent as f64 / f.bytes_transferred as f64
        } else {
            1.0
        },
        postcopy: f.postcopy,
        throttle: u32::from(f.throttle),
        source_verified: f.source_verified,
        counter_at_pause: f.counter_at_pause,
        digest: f.digest.clone().unwrap_or_default(),
        source_epoch: m.source_epoch,
        target_epoch: m.target_epoch,
        ..Default::default()
    };
    if let Some(p) = live.filter(|_| m.ended_ms.is_none()) {
        out.live = true;
        out.engine_phase = p.phase.clone();
        out.total_ms = p.total_ms;
        out.downtime_ms = p.downtime_ms;
        out.bytes_transferred = p.bytes_sent;
        out.memory_bytes = p.memory_bytes;
        out.memory_sent = p.memory_sent;
        out.remaining_bytes = p.remaining_bytes;
        out.rate_bps = p.rate_bps;
        out.dirty_rate_bps = p.dirty_rate_bps;
        out.round = p.round;
        out.percent = p.percent();
        out.compression_ratio = p.compression_ratio();
        out.expected_downtime_ms = p.expected_downtime_ms;
        out.eta_secs = p.eta_secs();
        out.postcopy = p.postcopy;
        out.throttle = u32::from(p.throttle);
        out.counter_at_pause = p.counter_at_pause;
        out.digest = p.digest.clone().unwrap_or_default();
    }
    out
}

impl From<&Progress> for pb::MigrationProgress {
    fn from(p: &Progress) -> Self {
        pb::MigrationProgress {
            phase: p.phase.clone(),
            round: p.round,
            memory_bytes: p.memory_bytes,
            bytes_sent: p.bytes_sent,
            memory_sent: p.memory_sent,
            remaining_bytes: p.remaining_bytes,
            rate_bps: p.rate_bps,
            dirty_rate_bps: p.dirty_rate_bps,
            zero_pages: p.zero_pages,
            xor_pages: p.xor_pages,
            throttle: u32::from(p.throttle),
            postcopy: p.postcopy,
            expected_downtime_ms: p.expected_downtime_ms,
            downtime_ms: p.downtime_ms,
            total_ms: p.total_ms,
            ready: p.ready,
            done: p.done,
            error: p.error.clone(),
            counter_at_pause: p.counter_at_pause,
            digest: p.digest.clone(),
            source_verified: p.source_verified,
        }
    }
}

impl From<pb::MigrationProgress> for Progress {
    fn from(p: pb::MigrationProgress) -> Self {
        Progress {
            phase: p.phase,
            round: p.round,
            memory_bytes: p.memory_bytes,
            bytes_sent: p.bytes_sent,
            memory_sent: p.memory_sent,
            remaining_bytes: p.remaining_bytes,
            rate_bps: p.rate_bps,
            dirty_rate_bps: p.dirty_rate_bps,
            zero_pages: p.zero_pages,
            xor_pages: p.xor_pages,
            throttle: u8::try_from(p.throttle).unwrap_or(u8::MAX),
            postcopy: p.postcopy,
            expected_downtime_ms: p.expected_downtime_ms,
            downtime_ms: p.downtime_ms,
            total_ms: p.total_ms,
            ready: p.ready,
            done: p.done,
            error: p.error,
            counter_at_pause: p.counter_at_pause,
            digest: p.digest,
            source_verified: p.source_verified,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_survives_the_wire() {
        let progress = Progress {
            phase: "precopy".into(),
            round: 3,
            memory_bytes: 1 << 30,
            bytes_sent: 7,
            memory_sent: 11,
            remaining_bytes: 13,
            rate_bps: 17,
            dirty_rate_bps: 19,
            zero_pages: 23,
            xor_pages: 29,
            throttle: 40,
            postcopy: true,
            expected_downtime_ms: 31,
            downtime_ms: Some(37),
            total_ms: 41,
            ready: true,
            done: false,
            error: Some("e".into()),
            counter_at_pause: Some(43),
            digest: Some("d".into()),
            source_verified: Some(false),
        };
        let wire = pb::MigrationProgress::from(&progress);
        assert_eq!(Progress::from(wire), progress);
    }
}
