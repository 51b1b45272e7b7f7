//! The fault schedule: derived from the seed alone, so the same seed injects the same faults at
//! the same offsets (which node is "the leader" is decided when the fault fires).

pub(crate) mod inject;

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    Kill,
    Pause,
    Partition,
    Slow,
    /// Every node killed at once, all restarted at heal.
    RestartAll,
    /// A node removed from the cluster under load, wiped, and joined again at heal.
    Membership,
    /// kill -9 of a host (not the leader) with its VMs, long enough to be declared down.
    HostDown,
    /// SIGSTOP of a host past its lease and the down threshold, then SIGCONT.
    HostPause,
    /// A host cut off from every peer (proxies) past the down threshold, then healed.
    HostIsolate,
    /// Two hosts killed at once (on 5+ nodes; one on 3).
    TwoHosts,
    /// A host killed, and the leader killed too just as it declares the host down.
    LeaderFailover,
    /// A live migration started, and mid-transfer: its source or destination host killed or
    /// paused, the leader killed, or the link cut (the destination guest killed).
    Migration,
}

impl FaultKind {
    /// Every kind, in the order `--faults all` draws from.
    pub const ALL: [FaultKind; 12] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Slow,
        FaultKind::RestartAll,
        FaultKind::Membership,
        FaultKind::HostDown,
        FaultKind::HostPause,
        FaultKind::HostIsolate,
        FaultKind::TwoHosts,
        FaultKind::LeaderFailover,
        FaultKind::Migration,
    ];

    /// The host failures that outlast the down threshold (`--faults ha`).
    pub const HA: [FaultKind; 5] = [
        FaultKind::HostDown,
        FaultKind::HostPause,
        FaultKind::HostIsolate,
        FaultKind::TwoHosts,
        FaultKind::LeaderFailover,
    ];

    /// Whether the fault lasts long enough for the failure detector to act.
    pub fn is_host_failure(self) -> bool {
        Self::HA.contains(&self)
    }

    pub fn parse(text: &str) -> Result<FaultKind, String> {
        match text {
            "kill" => Ok(FaultKind::Kill),
            "pause" => Ok(FaultKind::Pause),
            "partition" => Ok(FaultKind::Partition),
            "slow" => Ok(FaultKind::Slow),
            "restart-all" => Ok(FaultKind::RestartAll),
            "membership" => Ok(FaultKind::Membership),
            "host-down" => Ok(FaultKind::HostDown),
            "host-pause" => Ok(FaultKind::HostPause),
            "host-isolate" => Ok(FaultKind::HostIsolate),
            "two-hosts" => Ok(FaultKind::TwoHosts),
            "leader-failover" => Ok(FaultKind::LeaderFailover),
            "migration" => Ok(FaultKind::Migration),
            other => Err(format!(
                "unknown fault {other:?}: use kill, pause, partition, slow, restart-all, membership, host-down, host-pause, host-isolate, two-hosts, leader-failover, migration (or all, ha)"
            )),
        }
    }
}

/// One planned fault.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedFault {
    /// Offset from the start of the run.
    pub at_ms: u64,
    pub kind: FaultKind,
    /// How long the fault lasts before it is healed.
    pub hold_ms: u64,
    /// Seeded choice the fault uses to pick its targets.
    pub pick: u64,
}

/// The faults of a run of `duration` with `seed`, drawn from `kinds`.
pub fn schedule(seed: u64, duration: Duration, kinds: &[FaultKind]) -> Vec<PlannedFault> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut plan = Vec::new();
    if kinds.is_empty() {
        return plan;
    }
    let end = duration.as_millis() as u64;
    let mut at = 1_000;
    // Leave the last two seconds fault-free so the run ends healed and settled.
    while at + 2_000 < end {
        let kind = kinds[rng.usize(..kinds.len())];
        // Host failures outlast the down threshold (4.5 s by default) so failover happens.
        let range = if kind.is_host_failure() || kind == FaultKind::Migration {
            7_000..=9_000
        } else {
            1_000..=4_000
        };
        let hold = rng.u64(range).min(end.saturating_sub(at + 1_000));
        plan.push(PlannedFault {
            at_ms: at,
            kind,
            hold_ms: hold,
            pick: rng.u64(..),
        });
        at += hold + rng.u64(500..=2_000);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let kinds = [FaultKind::Kill, FaultKind::Pause, FaultKind::Partition];
        let a = schedule(7, Duration::from_secs(60), &kinds);
        let b = schedule(7, Duration::from_secs(60), &kinds);
        let c = schedule(8, Duration::from_secs(60), &kinds);
        let key = |p: &[PlannedFault]| {
            p.iter()
                .map(|f| (f.at_ms, f.kind, f.hold_ms, f.pick))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
        assert!(a.len() >= 10);
        assert!(a.iter().all(|f| f.at_ms + f.hold_ms + 1_000 <= 60_000));
    }
}
