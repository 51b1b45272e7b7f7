//! Live migrations, on the leader only (DESIGN.md §7): fails migrations that stall, closes
//! switched ones whose source went quiet, starts pending ones within the limits and ends
//! drains. Limits, queueing and destination choice are the scheduler's
//! ([`paddock_scheduler::migration`]); the time limits are here, because they need the
//! progress sources report to this leader ([`crate::progress_board`]).

use std::time::Duration;

use paddock_model::migration::Phase;
use paddock_model::{ClusterState, Command};

use super::{LeaderMemory, Now};
use crate::progress_board::figures;

/// A destination gets this long to allocate and populate its memory, plus per GiB.
const PREPARE_BASE: Duration = Duration::from_secs(30);
const PREPARE_PER_GIB: Duration = Duration::from_secs(10);
/// A transfer without a progress report for this long has failed (source stuck or gone).
const SILENT_TRANSFER: Duration = Duration::from_secs(20);
/// A switched migration whose source never reports the end is closed after this long.
const SWITCH_GRACE: Duration = Duration::from_secs(120);

/// Timeouts first, then starts, then finished drains.
pub fn plan(state: &ClusterState, now: Now, memory: &LeaderMemory) -> Vec<Command> {
    let mut commands = timeouts(state, now, memory);
    commands.extend(paddock_scheduler::migration::plan_starts(
        state,
        now.wall_ms,
    ));
    commands.extend(paddock_scheduler::migration::finished_drains(state));
    commands
}

/// Fails migrations that stall, closes switched ones whose source went quiet.
fn timeouts(state: &ClusterState, now: Now, memory: &LeaderMemory) -> Vec<Command> {
    let leading = now
        .instant
        .saturating_duration_since(memory.leadership.since);
    let mut commands = Vec::new();
    for m in state.migrations.values().filter(|m| m.phase.active()) {
        let age = Duration::from_millis(
            now.wall_ms
                .saturating_sub(m.started_ms.unwrap_or(now.wall_ms)),
        );
        let report = memory.board.get(m.id);
        // Silent since the last report, but never longer than the migration has existed or
        // this node has led (a transfer that just began has not reported yet).
        let silent = report
            .as_ref()
            .map_or(Duration::MAX, |(_, at)| {
                now.instant.saturating_duration_since(*at)
            })
            .min(age)
            .min(leading);
        let command = match m.phase {
            Phase::Preparing => {
                let memory_gib = state
                    .vms
                    .get(&m.vm)
                    .map_or(0, |vm| vm.spec.memory_mib.div_ceil(1024));
                let limit = PREPARE_BASE + PREPARE_PER_GIB * memory_gib as u32;
                (age > limit && leading > limit).then(|| Command::MigrationFail {
                    id: m.id,
                    reason: format!("the destination did not get ready in {} s", limit.as_secs()),
                })
            }
            Phase::Transferring if silent > SILENT_TRANSFER => Some(Command::MigrationFail {
                id: m.id,
                reason: format!(
                    "no progress from the source for {} s",
                    SILENT_TRANSFER.as_secs()
                ),
            }),
            Phase::Switching => {
                let switched = Duration::from_millis(
                    now.wall_ms
                        .saturating_sub(m.switched_ms.unwrap_or(now.wall_ms)),
                );
                (switched > SWITCH_GRACE && leading > SWITCH_GRACE).then(|| {
                    Command::MigrationFinish {
                        id: m.id,
                        figures: report.map(|(p, _)| figures(&p)),
                    }
                })
            }
            _ => None,
        };
        if let Some(command) = command {
            tracing::warn!(migration = m.id, vm = %m.vm, ?command, "migration stalled");
            commands.push(command);
        }
    }
    commands
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use paddock_migration::Progress;
    use paddock_model::migration::MigrationOptions;
    use paddock_model::VmState;

    use super::*;
    use crate::controllers::testing::{apply, at, leading_since, node, spec, vm};
    use crate::controllers::Leadership;
    use crate::liveness::Heard;
    use crate::progress_board::ProgressBoard;

    const WALL0: u64 = 1_000_000;

    /// Two nodes, VM `v` running on n1, and its migration moved to `phase` at wall time WALL0.
    fn migrating(phase: Phase) -> (ClusterState, u64) {
        let mut state = ClusterState::default();
        node(&mut state, "n1");
        node(&mut state, "n2");
        vm(
            &mut state,
            "v",
            spec(1024, false),
            Some(("n1", VmState::Running)),
        );
        apply(
            &mut state,
            WALL0,
            Command::MigrationCreate {
                vm: "v".into(),
                destination: None,
                options: MigrationOptions::default(),
                priority: 0,
                reason: "test".into(),
            },
        );
        let id = *state.migrations.keys().next().expect("created");
        if phase != Phase::Pending {
            apply(
                &mut state,
                WALL0,
                Command::MigrationStart {
                    id,
                    destination: "n2".into(),
                },
            );
        }
        // The later phases are set directly: the planner reads only the phase and its times.
        if let Some(m) = state.migrations.get_mut(&id) {
            m.phase = phase;
            m.switched_ms = (phase == Phase::Switching).then_some(WALL0);
        }
        (state, id)
    }

    fn planned(
        state: &ClusterState,
        now: Now,
        leadership: Leadership,
        board: &ProgressBoard,
    ) -> Vec<Command> {
        let heard = Heard::default();
        let memory = LeaderMemory {
            leadership,
            heard: &heard,
            board,
            election_max: Duration::from_millis(400),
        };
        plan(state, now, &memory)
    }

    fn kinds(commands: &[Command]) -> Vec<&'static str> {
        commands
            .iter()
            .map(|c| match c {
                Command::MigrationFail { .. } => "fail",
                Command::MigrationFinish { .. } => "finish",
                Command::MigrationStart { .. } => "start",
                Command::NodeDrained { .. } => "drained",
                _ => "other",
            })
            .collect()
    }

    #[test]
    fn stalled_migrations_fail_only_after_their_limit_under_this_leadership() {
        let s = Duration::from_secs;
        let t0 = Instant::now();
        // (case, phase, leadership began (after the migration's start), report at, now, expected)
        type Case = (
            &'static str,
            Phase,
            Duration,
            Option<Duration>,
            Duration,
            &'static [&'static str],
        );
        let cases: &[Case] = &[
            (
                "pending starts",
                Phase::Pending,
                s(0),
                None,
                s(0),
                &["start"],
            ),
            (
                "preparing, within its limit",
                Phase::Preparing,
                s(0),
                None,
                s(39),
                &[],
            ),
            (
                "preparing past 30 s + 10 s per GiB",
                Phase::Preparing,
                s(0),
                None,
                s(41),
                &["fail"],
            ),
            (
                "preparing past its limit, leadership just started",
                Phase::Preparing,
                s(40),
                None,
                s(41),
                &[],
            ),
            (
                "transferring, reported recently",
                Phase::Transferring,
                s(0),
                Some(s(50)),
                s(60),
                &[],
            ),
            (
                "transferring, silent for 21 s",
                Phase::Transferring,
                s(0),
                Some(s(10)),
                s(31),
                &["fail"],
            ),
            (
                "transferring, never reported, just begun",
                Phase::Transferring,
                s(0),
                None,
                s(5),
                &[],
            ),
            (
                "transferring, never reported, leadership just started",
                Phase::Transferring,
                s(100),
                None,
                s(105),
                &[],
            ),
            (
                "switching, within the grace",
                Phase::Switching,
                s(0),
                None,
                s(100),
                &[],
            ),
            (
                "switching, source quiet past the grace",
                Phase::Switching,
                s(0),
                None,
                s(121),
                &["finish"],
            ),
            (
                "ended migrations are left alone",
                Phase::Completed,
                s(0),
                None,
                s(500),
                &[],
            ),
        ];
        for (case, phase, since, report_at, now, expected) in cases {
            let (state, id) = migrating(*phase);
            let board = ProgressBoard::default();
            if let Some(r) = report_at {
                board.put(id, Progress::default(), t0 + *r);
            }
            let leadership = leading_since(t0 + *since);
            let got = planned(&state, at(t0, WALL0, *now), leadership, &board);
            assert_eq!(kinds(&got), *expected, "{case}: {got:?}");
        }
    }

    #[test]
    fn a_finished_drain_is_ended() {
        let (mut state, id) = migrating(Phase::Transferring);
        apply(
            &mut state,
            WALL0,
            Command::NodeDrain {
                name: "n1".into(),
                evacuate: false,
            },
        );
        let t0 = Instant::now();
        let board = ProgressBoard::default();
        board.put(id, Progress::default(), t0);
        let now = at(t0, WALL0, Duration::from_secs(1));
        assert!(planned(&state, now, leading_since(t0), &board).is_empty());
        apply(&mut state, WALL0, Command::MigrationCancel { id });
        // Cancelled mid-transfer, it stays open until the source confirms its guest runs on.
        assert!(planned(&state, now, leading_since(t0), &board).is_empty());
        apply(
            &mut state,
            WALL0,
            Command::MigrationRolledBack {
                id,
                reason: None,
                figures: None,
            },
        );
        assert_eq!(
            kinds(&planned(&state, now, leading_since(t0), &board)),
            ["drained"]
        );
    }
}
