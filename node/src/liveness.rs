//! Liveness (DESIGN.md §5): heartbeats, leases and the timing that makes failover safe.
//!
//! ```text
//!  agent (every node)                          leader
//!   t0 = now (monotonic) ── Heartbeat ──────▶  answers only while a quorum acked it within
//!                                              the minimum election timeout; remembers
//!                                              "heard from n at T" (memory only, never logged)
//!   lease until t0 + 3 s  ◀── lease, log index
//!   VMs run only while the lease is valid and this replica has applied that log index;
//!   memvm guests halt by themselves at the deadline (they read it from a file).
//!
//!  leader: node n is Down after lease + max election timeout + margin without a heartbeat,
//!  counted from the later of its last heartbeat and the start of this leadership.
//! ```
//!
//! Why this is safe: a node's lease ends at most `lease` after the last answer any leader gave
//! it. A deposed leader stops answering once its quorum acknowledgement is older than the
//! minimum election timeout, which is before any successor can be elected; the successor waits
//! `lease + max election timeout + margin` from its own election before declaring the node
//! down. So by the time a VM is placed elsewhere, every lease its old node could hold has ended.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often an agent heartbeats the leader (default of the `heartbeat_ms` setting).
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// How long a granted lease lasts, from the moment the node sent its heartbeat (default of the
/// `lease_ms` setting).
pub const LEASE: Duration = Duration::from_secs(3);
/// Added to lease + max election timeout before a silent node is declared down.
pub const DOWN_MARGIN: Duration = Duration::from_secs(1);
/// The agent destroys its VMs this long before its lease ends (memvm guests also halt by
/// themselves exactly at the end).
pub const FENCE_AHEAD: Duration = Duration::from_millis(250);

/// The system-wide monotonic clock (CLOCK_MONOTONIC) in nanoseconds: the clock leases are
/// measured on, shared with the memvm guest processes.
pub fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

/// This boot of the machine (leases on CLOCK_MONOTONIC mean nothing across a reboot).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Where a node keeps its current lease deadline, `BOOT_ID UNTIL_NS`: read by the memvm
/// guests every step and by the next paddockd after a restart.
pub fn lease_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("lease")
}

/// Writes the lease deadline atomically.
pub fn store_lease(path: &std::path::Path, until_ns: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{} {until_ns}\n", boot_id()))?;
    std::fs::rename(tmp, path)
}

/// The stored deadline, if it belongs to this boot.
pub fn read_lease(path: &std::path::Path, boot: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let (id, until) = text.trim().split_once(' ')?;
    (id == boot).then(|| until.parse().ok()).flatten()
}

/// The leader's memory of when it last heard from each node.
#[derive(Default)]
pub struct Heard {
    last: Mutex<HashMap<String, Instant>>,
    /// (term, when this process first saw itself leading that term).
    leading: Mutex<Option<(u64, Instant)>>,
}

impl Heard {
    pub fn heartbeat(&self, node: &str, at: Instant) {
        if let Ok(mut last) = self.last.lock() {
            last.insert(node.to_string(), at);
        }
    }

    /// When this leader last heard from `node`, if it has.
    pub fn last(&self, node: &str) -> Option<Instant> {
        self.last.lock().ok().and_then(|l| l.get(node).copied())
    }

    /// When this leadership began (the first call for `term`).
    pub fn leading_since(&self, term: u64, now: Instant) -> Instant {
        let Ok(mut leading) = self.leading.lock() else {
            return now;
        };
        match *leading {
            Some((t, since)) if t == term => since,
            _ => {
                *leading = Some((term, now));
                now
            }
        }
    }

    /// How long `node` has been silent as far as this leadership can tell.
    pub fn silent_for(&self, node: &str, term: u64, now: Instant) -> Duration {
        self.silent_since(node, self.leading_since(term, now), now)
    }

    /// How long `node` has been silent at `now`, counting from no earlier than `floor` (what
    /// was not watched is no evidence of silence).
    pub fn silent_since(&self, node: &str, floor: Instant, now: Instant) -> Duration {
        let last = self.last(node).map_or(floor, |heard| heard.max(floor));
        now.saturating_duration_since(last)
    }
}

/// What the leader knows when a node asks for a lease (read from Raft's metrics).
#[derive(Debug, Clone, Copy)]
pub struct LeaderStanding {
    /// This node is the leader of `term`.
    pub leading: bool,
    pub term: u64,
    /// How long ago a quorum last acknowledged this leader (`None`: never this term).
    pub since_quorum_ack_ms: Option<u64>,
    pub last_log_index: u64,
}

/// A lease granted to a node: it ends `lease_ms` after the node sent its heartbeat, and VMs may
/// run under it once the node's replica has applied `log_index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub lease_ms: u64,
    pub log_index: u64,
    pub term: u64,
}

/// Why no lease was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoLease {
    #[error("this node is not the leader")]
    NotLeader,
    #[error("leadership not confirmed by a quorum recently; no lease granted")]
    QuorumStale,
}

/// Grants a lease only while this node leads and a quorum acknowledged it within
/// `quorum_fresh_ms` (the minimum election timeout): a deposed leader stops granting before any
/// successor can be elected (see the module docs).
pub fn grant(
    leader: LeaderStanding,
    quorum_fresh_ms: u64,
    lease_ms: u64,
) -> Result<Grant, NoLease> {
    if !leader.leading {
        return Err(NoLease::NotLeader);
    }
    if leader
        .since_quorum_ack_ms
        .is_none_or(|ms| ms > quorum_fresh_ms)
    {
        return Err(NoLease::QuorumStale);
    }
    Ok(Grant {
        lease_ms,
        log_index: leader.last_log_index,
        term: leader.term,
    })
}

/// A silent node is down after this long: the `down_after_ms` setting, but never less than
/// `lease + max election timeout + margin`.
pub fn down_after(lease: Duration, setting: Duration, election_max: Duration) -> Duration {
    setting.max(lease + election_max + DOWN_MARGIN)
}

/// The lease this node holds.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    /// Ends here (local monotonic clock).
    pub until: Instant,
    /// The same instant as CLOCK_MONOTONIC nanoseconds (for the guests).
    pub until_ns: u64,
    /// VMs may run once this replica has applied this index.
    pub log_index: u64,
}

impl Lease {
    /// Whether VMs may be started or kept under this lease now.
    pub fn valid(&self, now: Instant) -> bool {
        now + FENCE_AHEAD < self.until
    }
}

#[cfg(test)]
mod tests {
    //! Time is an argument here, so these run on made-up instants: a paused clock.
    use super::*;

    #[test]
    fn silence_counts_from_the_later_of_the_last_heartbeat_and_the_election() {
        let heard = Heard::default();
        let t0 = Instant::now();
        // A new leader has heard from nobody: silence starts at its election.
        assert_eq!(heard.silent_for("n2", 5, t0), Duration::ZERO);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(heard.silent_for("n2", 5, t1), Duration::from_secs(2));
        heard.heartbeat("n2", t1);
        assert_eq!(heard.silent_for("n2", 5, t1), Duration::ZERO);
        let t2 = t1 + Duration::from_secs(5);
        assert_eq!(heard.silent_for("n2", 5, t2), Duration::from_secs(5));
        // A leadership of a new term starts counting again, whatever was heard before.
        assert_eq!(heard.silent_for("n2", 6, t2), Duration::ZERO);
        let election_max = Duration::from_millis(400);
        let t3 = t2 + down_after(LEASE, Duration::ZERO, election_max);
        assert_eq!(heard.silent_for("n2", 6, t3), Duration::from_millis(4_400));
    }

    #[test]
    fn a_lease_is_valid_until_shortly_before_it_ends() {
        let now = Instant::now();
        let lease = Lease {
            until: now + LEASE,
            until_ns: 0,
            log_index: 0,
        };
        assert!(lease.valid(now));
        assert!(lease.valid(now + LEASE - FENCE_AHEAD - Duration::from_millis(1)));
        assert!(!lease.valid(now + LEASE - FENCE_AHEAD));
        assert!(!lease.valid(now + LEASE));
    }

    #[test]
    fn leases_are_granted_only_by_a_leader_a_quorum_acknowledged_recently() {
        let standing = |leading, ack| LeaderStanding {
            leading,
            term: 4,
            since_quorum_ack_ms: ack,
            last_log_index: 90,
        };
        let granted = grant(standing(true, Some(10)), 150, 3000);
        assert_eq!(
            granted,
            Ok(Grant {
                lease_ms: 3000,
                log_index: 90,
                term: 4
            })
        );
        assert_eq!(
            grant(standing(true, Some(150)), 150, 3000).map(|g| g.term),
            Ok(4)
        );
        assert_eq!(
            grant(standing(true, Some(151)), 150, 3000),
            Err(NoLease::QuorumStale)
        );
        assert_eq!(
            grant(standing(true, None), 150, 3000),
            Err(NoLease::QuorumStale)
        );
        assert_eq!(
            grant(standing(false, Some(0)), 150, 3000),
            Err(NoLease::NotLeader)
        );
    }

    #[test]
    fn a_node_is_declared_down_only_after_any_lease_it_holds_has_ended() {
        // The last lease a deposed leader can grant starts before the next election, so the
        // next leader's down threshold, counted from its election, outlasts it.
        let election_max = Duration::from_millis(400);
        assert!(down_after(LEASE, Duration::ZERO, election_max) > LEASE + election_max);
        // A setting can lengthen the threshold, never shorten it below the safe bound.
        let long = Duration::from_secs(30);
        assert_eq!(down_after(LEASE, long, election_max), long);
        assert_eq!(
            down_after(LEASE, Duration::from_secs(1), election_max),
            LEASE + election_max + DOWN_MARGIN
        );
    }
}
