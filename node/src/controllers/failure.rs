//! The failure detector (DESIGN.md §5), on the leader only: a node whose agent has not
//! heartbeated for `lease + max election timeout + margin`, counted from the latest of its last
//! heartbeat, the start of this leadership and the end of this process's last stall, is
//! declared down (`NodeDown`, one log entry). Apply then releases its HA VMs, which the
//! placement planner places elsewhere with new epochs, and marks its other VMs failed.
//! Heartbeats themselves never reach the log.
//!
//! Nodes in maintenance are never declared down, and no node is while HA is disarmed.

use std::time::Duration;

use paddock_model::{ClusterState, Command, Health};

use super::{LeaderMemory, Now};
use crate::liveness::down_after;

/// `NodeDown` for every ready node silent for longer than any lease it could hold.
pub fn plan(state: &ClusterState, now: Now, memory: &LeaderMemory) -> Vec<Command> {
    let settings = &state.settings;
    if !settings.ha_armed {
        // Disarmed: failover is frozen cluster-wide.
        return Vec::new();
    }
    let threshold = down_after(
        Duration::from_millis(settings.lease_ms),
        Duration::from_millis(settings.down_after_ms),
        memory.election_max,
    );
    state
        .nodes
        .values()
        .filter(|n| n.health == Health::Ready && !n.maintenance)
        .filter_map(|n| {
            let silent = memory.heard.silent_since(
                &n.name,
                memory.leadership.watching_since,
                now.instant,
            );
            (silent > threshold).then(|| {
                tracing::warn!(node = %n.name, silent_ms = silent.as_millis() as u64, "no heartbeat for longer than any lease: declaring the node down");
                Command::NodeDown {
                    name: n.name.clone(),
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::controllers::testing::{at, leading_since, node};
    use crate::controllers::Leadership;
    use crate::liveness::Heard;
    use crate::progress_board::ProgressBoard;

    const ELECTION_MAX: Duration = Duration::from_millis(400);

    fn down(state: &ClusterState, now: Now, leadership: Leadership, heard: &Heard) -> Vec<String> {
        let board = ProgressBoard::default();
        let memory = LeaderMemory {
            leadership,
            heard,
            board: &board,
            election_max: ELECTION_MAX,
        };
        plan(state, now, &memory)
            .into_iter()
            .map(|c| match c {
                Command::NodeDown { name } => name,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn silent_nodes_are_declared_down_only_past_the_safe_bound() {
        let t0 = Instant::now();
        let threshold = down_after(
            Duration::from_millis(ClusterState::default().settings.lease_ms),
            Duration::from_millis(ClusterState::default().settings.down_after_ms),
            ELECTION_MAX,
        );
        let just = Duration::from_millis(1);
        // (case, heard n2 at (after t0), leadership began, stalled until, now, expected down)
        type Case = (
            &'static str,
            Option<Duration>,
            Duration,
            Duration,
            Duration,
            bool,
        );
        let cases: &[Case] = &[
            (
                "leadership just started",
                None,
                Duration::ZERO,
                Duration::ZERO,
                just,
                false,
            ),
            (
                "never heard, past the bound",
                None,
                Duration::ZERO,
                Duration::ZERO,
                threshold + just,
                true,
            ),
            (
                "never heard, exactly the bound",
                None,
                Duration::ZERO,
                Duration::ZERO,
                threshold,
                false,
            ),
            (
                "suspect: silent, within the bound",
                Some(Duration::from_secs(1)),
                Duration::ZERO,
                Duration::ZERO,
                Duration::from_secs(1) + threshold / 2,
                false,
            ),
            (
                "heard recently",
                Some(threshold),
                Duration::ZERO,
                Duration::ZERO,
                threshold + just,
                false,
            ),
            (
                "heard long ago, silent past the bound",
                Some(Duration::from_secs(1)),
                Duration::ZERO,
                Duration::ZERO,
                Duration::from_secs(1) + threshold + just,
                true,
            ),
            (
                "heard by an earlier leadership only",
                Some(Duration::ZERO),
                Duration::from_secs(10),
                Duration::from_secs(10),
                Duration::from_secs(10) + just,
                false,
            ),
            (
                "this process stalled: silence counts from its wake",
                None,
                Duration::ZERO,
                Duration::from_secs(30),
                Duration::from_secs(30) + just,
                false,
            ),
            (
                "stalled, then silent past the bound",
                None,
                Duration::ZERO,
                Duration::from_secs(30),
                Duration::from_secs(30) + threshold + just,
                true,
            ),
        ];
        for (case, heard_at, since, stall_end, now, expected) in cases {
            let mut state = ClusterState::default();
            node(&mut state, "n2");
            let heard = Heard::default();
            if let Some(h) = heard_at {
                heard.heartbeat("n2", t0 + *h);
            }
            let leadership = Leadership {
                since: t0 + *since,
                watching_since: t0 + *stall_end,
            };
            let got = down(&state, at(t0, 0, *now), leadership, &heard);
            assert_eq!(!got.is_empty(), *expected, "{case}: {got:?}");
        }
    }

    #[test]
    fn maintenance_disarmed_ha_and_nodes_already_down_are_left_alone() {
        let t0 = Instant::now();
        let late = at(t0, 0, Duration::from_secs(60));
        let heard = Heard::default();

        let mut state = ClusterState::default();
        node(&mut state, "n2");
        node(&mut state, "n3");
        assert_eq!(down(&state, late, leading_since(t0), &heard), ["n2", "n3"]);

        let mut maintenance = state.clone();
        if let Some(n) = maintenance.nodes.get_mut("n2") {
            n.maintenance = true;
        }
        assert_eq!(down(&maintenance, late, leading_since(t0), &heard), ["n3"]);

        let mut disarmed = state.clone();
        disarmed.settings.ha_armed = false;
        assert!(down(&disarmed, late, leading_since(t0), &heard).is_empty());

        let mut gone = state.clone();
        if let Some(n) = gone.nodes.get_mut("n3") {
            n.health = Health::Down;
        }
        assert_eq!(down(&gone, late, leading_since(t0), &heard), ["n2"]);
    }

    #[test]
    fn a_longer_down_after_setting_waits_longer_but_never_shorter_than_the_bound() {
        let t0 = Instant::now();
        let heard = Heard::default();
        let mut state = ClusterState::default();
        node(&mut state, "n2");
        state.settings.down_after_ms = 30_000;
        let twenty = at(t0, 0, Duration::from_secs(20));
        assert!(down(&state, twenty, leading_since(t0), &heard).is_empty());
        let thirty = at(t0, 0, Duration::from_millis(30_001));
        assert_eq!(down(&state, thirty, leading_since(t0), &heard), ["n2"]);
        // A setting below the safe bound does not shorten it.
        state.settings.down_after_ms = 1;
        let two = at(t0, 0, Duration::from_secs(2));
        assert!(down(&state, two, leading_since(t0), &heard).is_empty());
    }
}
