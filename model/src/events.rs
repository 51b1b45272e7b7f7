//! The cluster's event log: every state change a person cares about, with a cluster-wide
//! sequence number.
//!
//! Events are written by apply, so every replica holds the same events under the same
//! numbers: a client following one node that fails can resume on any other from the last
//! number it saw and miss nothing that was committed. The log keeps the last [`KEEP_EVENTS`];
//! a client that fell further behind is told where the kept events start.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Events kept in the replicated state (oldest dropped first).
pub const KEEP_EVENTS: usize = 10_000;

/// Most events one read answers.
pub const MAX_EVENTS_PER_READ: u32 = 1_000;

/// What happened, as a dotted name (`vm.failed`) in the API and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventKind {
    VmCreated,
    VmDesired,
    VmWaiting,
    VmScheduled,
    /// The agent saw the VM change state (running, stopped...).
    VmState,
    VmFailed,
    /// The HA policy acted: a restart in place, a placement elsewhere, a VM left failed.
    VmRecovery,
    VmDeleted,
    NodeRegistered,
    NodeDown,
    NodeBack,
    NodeCordon,
    NodeMaintenance,
    NodeDrain,
    MigrationPhase,
    SettingChanged,
    MemberJoined,
    MemberRemoved,
    LeaderChanged,
    ImageRegistered,
    ImageDeleted,
    /// A custom role made or deleted, a user bound to a role or unbound.
    AccessChanged,
}

impl EventKind {
    pub const ALL: &'static [EventKind] = &[
        EventKind::VmCreated,
        EventKind::VmDesired,
        EventKind::VmWaiting,
        EventKind::VmScheduled,
        EventKind::VmState,
        EventKind::VmFailed,
        EventKind::VmRecovery,
        EventKind::VmDeleted,
        EventKind::NodeRegistered,
        EventKind::NodeDown,
        EventKind::NodeBack,
        EventKind::NodeCordon,
        EventKind::NodeMaintenance,
        EventKind::NodeDrain,
        EventKind::MigrationPhase,
        EventKind::SettingChanged,
        EventKind::MemberJoined,
        EventKind::MemberRemoved,
        EventKind::LeaderChanged,
        EventKind::ImageRegistered,
        EventKind::ImageDeleted,
        EventKind::AccessChanged,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventKind::VmCreated => "vm.created",
            EventKind::VmDesired => "vm.desired",
            EventKind::VmWaiting => "vm.waiting",
            EventKind::VmScheduled => "vm.scheduled",
            EventKind::VmState => "vm.state",
            EventKind::VmFailed => "vm.failed",
            EventKind::VmRecovery => "vm.recovery",
            EventKind::VmDeleted => "vm.deleted",
            EventKind::NodeRegistered => "node.registered",
            EventKind::NodeDown => "node.down",
            EventKind::NodeBack => "node.back",
            EventKind::NodeCordon => "node.cordon",
            EventKind::NodeMaintenance => "node.maintenance",
            EventKind::NodeDrain => "node.drain",
            EventKind::MigrationPhase => "migration.phase",
            EventKind::SettingChanged => "setting.changed",
            EventKind::MemberJoined => "member.joined",
            EventKind::MemberRemoved => "member.removed",
            EventKind::LeaderChanged => "leader.changed",
            EventKind::ImageRegistered => "image.registered",
            EventKind::ImageDeleted => "image.deleted",
            EventKind::AccessChanged => "access.changed",
        }
    }

    /// Parses a name, or a prefix of names ending in `.` or without one (`vm` or `vm.`
    /// matches every VM kind): the kinds it matches, empty if none.
    pub fn matching(text: &str) -> Vec<EventKind> {
        let prefix = text.trim_end_matches('.');
        EventKind::ALL
            .iter()
            .copied()
            .filter(|k| {
                let name = k.name();
                name == prefix
                    || name
                        .strip_prefix(prefix)
                        .is_some_and(|rest| rest.starts_with('.'))
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterEvent {
    /// Cluster-wide, increasing by one per event, never reused.
    pub seq: u64,
    /// When the entry that caused it was proposed (the leader's clock).
    pub at_ms: u64,
    pub kind: EventKind,
    /// What it is about: a VM, node, member, setting or image name, a migration id.
    pub subject: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLog {
    /// The last number handed out (0: none yet).
    pub last_seq: u64,
    /// Time of the last applied proposal, for events of entries that carry none (a new
    /// leader's blank entry, a membership change).
    pub clock_ms: u64,
    pub recent: VecDeque<ClusterEvent>,
}

/// A page of events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPage {
    pub events: Vec<ClusterEvent>,
    /// The last number handed out: a follower resumes after it.
    pub last_seq: u64,
    /// The oldest number still kept; events before it are gone (`since` older than this
    /// missed some).
    pub first_kept: u64,
}

impl EventLog {
    pub fn push(&mut self, at_ms: u64, kind: EventKind, subject: &str, message: String) {
        self.last_seq += 1;
        if self.recent.len() >= KEEP_EVENTS {
            self.recent.pop_front();
        }
        self.recent.push_back(ClusterEvent {
            seq: self.last_seq,
            at_ms,
            kind,
            subject: subject.to_string(),
            message,
        });
    }

    /// The oldest number kept (`last_seq + 1` when none are).
    pub fn first_kept(&self) -> u64 {
        self.recent.front().map_or(self.last_seq + 1, |e| e.seq)
    }

    /// Events after `after`, of the given kinds (all if empty) and about `subject` if given,
    /// at most `limit`.
    pub fn page(
        &self,
        after: u64,
        kinds: &[EventKind],
        subject: Option<&str>,
        limit: u32,
    ) -> EventPage {
        let limit = limit.clamp(1, MAX_EVENTS_PER_READ) as usize;
        // Numbers are consecutive, so the first event after `after` is found by arithmetic.
        let skip = after.saturating_sub(self.first_kept().saturating_sub(1)) as usize;
        let events = self
            .recent
            .iter()
            .skip(skip)
            .filter(|e| kinds.is_empty() || kinds.contains(&e.kind))
            .filter(|e| subject.is_none_or(|s| e.subject == s))
            .take(limit)
            .cloned()
            .collect();
        EventPage {
            events,
            last_seq: self.last_seq,
            first_kept: self.first_kept(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of(n: u64) -> EventLog {
        let mut log = EventLog::default();
        for i in 0..n {
            let kind = if i % 2 == 0 {
                EventKind::VmCreated
            } else {
                EventKind::NodeDown
            };
            log.push(i, kind, &format!("s{i}"), format!("event {i}"));
        }
        log
    }

    #[test]
    fn pages_resume_after_the_last_number_seen() {
        let log = log_of(10);
        let first = log.page(0, &[], None, 4);
        let seqs: Vec<u64> = first.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        let next = log.page(4, &[], None, 100);
        assert_eq!(next.events.first().map(|e| e.seq), Some(5));
        assert_eq!(next.events.len(), 6);
        assert!(log.page(10, &[], None, 100).events.is_empty());
        assert!(log.page(99, &[], None, 100).events.is_empty());
    }

    #[test]
    fn old_events_are_dropped_and_the_first_kept_is_reported() {
        let log = log_of(KEEP_EVENTS as u64 + 5);
        assert_eq!(log.recent.len(), KEEP_EVENTS);
        assert_eq!(log.first_kept(), 6);
        let page = log.page(0, &[], None, 2);
        assert_eq!(page.first_kept, 6);
        assert_eq!(page.events[0].seq, 6);
        let page = log.page(100, &[], None, 1);
        assert_eq!(page.events[0].seq, 101);
    }

    #[test]
    fn kinds_and_subjects_filter() {
        let log = log_of(10);
        let downs = log.page(0, &[EventKind::NodeDown], None, 100);
        assert!(downs.events.iter().all(|e| e.kind == EventKind::NodeDown));
        assert_eq!(downs.events.len(), 5);
        let one = log.page(0, &[], Some("s3"), 100);
        assert_eq!(one.events.len(), 1);
        assert_eq!(EventKind::matching("vm"), EventKind::matching("vm."));
        assert!(EventKind::matching("vm").contains(&EventKind::VmFailed));
        assert_eq!(EventKind::matching("node.down"), [EventKind::NodeDown]);
        assert!(EventKind::matching("nope").is_empty());
        assert!(EventKind::matching("v").is_empty());
    }
}
