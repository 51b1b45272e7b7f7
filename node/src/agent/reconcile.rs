//! The agent's decisions, pure: given what the replica assigns to this node, what the driver
//! lists and where the agent stands with its lease, which driver actions to take and what to
//! report. The agent's pass ([`super::Agent`]) gathers the inputs, runs the actions and proposes
//! the reports; nothing here does I/O or reads a clock.
//!
//! The rules, in the order they are applied to each listed instance:
//! 1. an instance a live migration owns (arriving at its target epoch, or leaving at its source
//!    epoch) is left to the migration worker;
//! 2. an instance the hypervisor migrated away while the log still assigns it here and no
//!    migration is open is a dead shell (libvirt completes a migration by itself): destroyed,
//!    and the VM starts again from its disks;
//! 3. an instance found crashed on the first pass after this daemon started is destroyed and
//!    started again, same epoch (like VMs after a host reboot);
//! 4. an instance not assigned here, or of an older epoch, is destroyed: it must not run here.
//!
//! Then each VM assigned here is driven toward its desired state: started (only with a lease
//! whose log index this replica has applied, and never while a migration owns it), stopped, or
//! simply observed.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use paddock_model::vm::Desired;
use paddock_model::{ClusterState, VmReport, VmSpec, VmState};

use crate::drivers::{Instance, InstanceState};

/// A report not yet reflected in the replica is sent again after this long.
pub const RESEND_AFTER: Duration = Duration::from_secs(3);

/// Where the agent stands with its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Valid lease and the replica has applied what it came with: VMs may run and start.
    Leased,
    /// Valid lease, but the replica lags: keep what runs, start nothing.
    CatchingUp,
    /// No valid lease: nothing may run.
    Fenced,
}

/// One VM assigned to this node, as the replica says.
#[derive(Debug, Clone)]
pub struct Assigned {
    pub epoch: u64,
    pub desired: Desired,
    pub spec: VmSpec,
    pub observed: VmState,
    pub reason: Option<String>,
}

/// What the replica says about this node, read once per pass.
#[derive(Debug, Clone, Default)]
pub struct Replica {
    pub assigned: BTreeMap<String, Assigned>,
    /// VMs arriving by live migration: the epoch they arrive at.
    pub incoming: BTreeMap<String, u64>,
    /// VMs leaving by live migration: the epoch they leave from.
    pub outgoing: BTreeMap<String, u64>,
    /// Deleted VMs this node ran, confirmed gone once their instances are destroyed.
    pub deleted_here: Vec<String>,
}

impl Replica {
    pub fn of(state: &ClusterState, node: &str) -> Self {
        let assigned = state
            .vms
            .values()
            .filter_map(|vm| {
                let a = vm.assignment.as_ref().filter(|a| a.node == node)?;
                Some((
                    vm.name.clone(),
                    Assigned {
                        epoch: a.epoch,
                        desired: vm.desired,
                        spec: vm.spec.clone(),
                        observed: vm.observed,
                        reason: vm.reason.clone(),
                    },
                ))
            })
            .collect();
        let mut replica = Replica {
            assigned,
            deleted_here: state
                .deleting
                .iter()
                .filter(|(_, (on, _))| on == node)
                .map(|(name, _)| name.clone())
                .collect(),
            ..Replica::default()
        };
        for m in state.migrations.values().filter(|m| m.ended_ms.is_none()) {
            if m.destination.as_deref() == Some(node) && m.phase.active() {
                replica.incoming.insert(m.vm.clone(), m.target_epoch);
            }
            if m.source == node {
                replica.outgoing.insert(m.vm.clone(), m.source_epoch);
            }
        }
        replica
    }
}

/// Why an instance is destroyed before anything else happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// Rule 2: migrated away without a committed switch.
    DeadShell,
    /// Rule 3: found dead after this daemon restarted; started again.
    DeadAfterRestart,
    /// Rule 4: not assigned here, or an older epoch.
    NotAssigned,
}

/// A driver call for one VM assigned here, and what it leads to.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing to do: report what the driver shows.
    Observe,
    /// Start it with this spec (`Starting`; `Failed` with the driver's error if the start
    /// fails).
    Start(Box<VmSpec>),
    /// Desired stopped but running: stop it (`Stopping`).
    Stop,
    /// Desired stopped and crashed: clear the failure (`Stopped`).
    DestroyCrashed,
    /// Arrived by migration and assigned here: the switch committed, tell it (`Starting`).
    Switch,
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Observe => "Observe",
            Action::Start(_) => "Start",
            Action::Stop => "Stop",
            Action::DestroyCrashed => "DestroyCrashed",
            Action::Switch => "Switch",
        }
    }
}

/// One VM's step: the action and the observation it leads to when the action succeeds.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub vm: String,
    pub epoch: u64,
    pub action: Action,
    pub observed: VmState,
    pub reason: Option<String>,
}

/// The decisions of one pass.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Instances to destroy first, in listing order.
    pub cleanup: Vec<(Instance, Cleanup)>,
    /// Deleted VMs to confirm gone (`VmGone`), after the cleanup.
    pub gone: Vec<String>,
    pub steps: Vec<Step>,
    /// Some listed instance is between states (the next pass comes soon).
    pub transient: bool,
}

/// Decides one pass (see the module docs). `standing` must not be [`Standing::Fenced`]: a
/// fenced agent destroys everything instead.
pub fn reconcile(
    replica: &Replica,
    instances: Vec<Instance>,
    standing: Standing,
    first_pass: bool,
) -> Reconciled {
    let mut out = Reconciled {
        gone: replica.deleted_here.clone(),
        ..Reconciled::default()
    };
    let mut current: BTreeMap<String, InstanceState> = BTreeMap::new();
    for instance in instances {
        let assigned_here = replica
            .assigned
            .get(&instance.vm)
            .is_some_and(|a| a.epoch == instance.epoch);
        let arriving = replica.incoming.get(&instance.vm) == Some(&instance.epoch);
        // A migrated-away source stays until its migration is settled: its figures (and its
        // memory check) are read from it first.
        let leaving = replica.outgoing.get(&instance.vm) == Some(&instance.epoch);
        if !assigned_here && (arriving || leaving) {
            continue;
        }
        if assigned_here && instance.state == InstanceState::Migrated {
            if !leaving {
                out.cleanup.push((instance, Cleanup::DeadShell));
            }
            // Leaving: migrated away, this replica has not applied the switch yet. Never
            // restart it.
            continue;
        }
        if assigned_here && first_pass && matches!(instance.state, InstanceState::Crashed(_)) {
            out.cleanup.push((instance, Cleanup::DeadAfterRestart));
        } else if assigned_here {
            out.transient |= matches!(
                instance.state,
                InstanceState::Starting | InstanceState::Stopping
            );
            current.insert(instance.vm, instance.state);
        } else {
            out.cleanup.push((instance, Cleanup::NotAssigned));
        }
    }
    for (vm, a) in &replica.assigned {
        let state = current.get(vm);
        if replica.outgoing.get(vm) == Some(&a.epoch)
            && matches!(state, None | Some(InstanceState::Stopped))
        {
            // A migration owns it: starting it here could run it twice.
            continue;
        }
        let (action, observed, reason) = match (a.desired, state) {
            (Desired::Running, None | Some(InstanceState::Stopped))
                if standing != Standing::Leased =>
            {
                // Not before this replica has seen everything the lease came with.
                continue;
            }
            (Desired::Running, None | Some(InstanceState::Stopped)) => (
                Action::Start(Box::new(a.spec.clone())),
                VmState::Starting,
                None,
            ),
            (Desired::Stopped, Some(InstanceState::Running | InstanceState::Starting)) => {
                (Action::Stop, VmState::Stopping, None)
            }
            (Desired::Stopped, Some(InstanceState::Crashed(_))) => {
                // An operator stop clears a failure; the next start starts afresh.
                (Action::DestroyCrashed, VmState::Stopped, None)
            }
            (Desired::Stopped, None) => (Action::Observe, VmState::Stopped, None),
            (_, Some(InstanceState::Migrated)) => continue,
            (_, Some(InstanceState::Incoming)) => {
                // Assigned here at the epoch it was prepared for: the switch committed. Tell it
                // (again: the source or the worker may have already), so it never waits on a
                // source that is gone.
                (Action::Switch, VmState::Starting, None)
            }
            (_, Some(state)) => {
                let (observed, reason) = observed(state);
                (Action::Observe, observed, reason)
            }
        };
        out.steps.push(Step {
            vm: vm.clone(),
            epoch: a.epoch,
            action,
            observed,
            reason,
        });
    }
    out
}

/// What the replica should say of a VM whose instance is in `state`.
fn observed(state: &InstanceState) -> (VmState, Option<String>) {
    match state {
        InstanceState::Starting | InstanceState::Incoming | InstanceState::Migrated => {
            (VmState::Starting, None)
        }
        InstanceState::Running => (VmState::Running, None),
        InstanceState::Stopping => (VmState::Stopping, None),
        InstanceState::Stopped => (VmState::Stopped, None),
        InstanceState::Crashed(reason) => (VmState::Failed, Some(reason.clone())),
    }
}

/// The reports this agent sent and the replica does not show yet, so a report is repeated only
/// after [`RESEND_AFTER`] (the replica may lag the leader that applied it).
#[derive(Debug, Default)]
pub struct Reported {
    sent: HashMap<String, (u64, VmState, Instant)>,
}

impl Reported {
    /// The reports due at `now` for observations `(vm, epoch, state, reason)`, remembering
    /// them as sent.
    pub fn due(
        &mut self,
        replica: &Replica,
        observations: impl IntoIterator<Item = (String, u64, VmState, Option<String>)>,
        now: Instant,
    ) -> Vec<VmReport> {
        let mut reports = Vec::new();
        for (vm, epoch, state, reason) in observations {
            let Some(a) = replica.assigned.get(&vm) else {
                continue;
            };
            if (state, &reason) == (a.observed, &a.reason) {
                self.sent.remove(&vm);
                continue;
            }
            let recently = self.sent.get(&vm).is_some_and(|(e, s, at)| {
                *e == epoch && *s == state && now.saturating_duration_since(*at) < RESEND_AFTER
            });
            if !recently {
                self.sent.insert(vm.clone(), (epoch, state, now));
                reports.push(VmReport {
                    vm,
                    epoch,
                    state,
                    reason,
                });
            }
        }
        self.sent.retain(|vm, _| replica.assigned.contains_key(vm));
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::testing::spec;

    fn assigned(epoch: u64, desired: Desired, observed: VmState) -> Assigned {
        Assigned {
            epoch,
            desired,
            spec: spec(512, false),
            observed,
            reason: None,
        }
    }

    fn instance(vm: &str, epoch: u64, state: InstanceState) -> Instance {
        Instance {
            vm: vm.into(),
            epoch,
            state,
        }
    }

    fn replica(vms: &[(&str, Assigned)]) -> Replica {
        Replica {
            assigned: vms
                .iter()
                .map(|(n, a)| (n.to_string(), a.clone()))
                .collect(),
            ..Replica::default()
        }
    }

    /// The pass as short strings: "destroy vm why", "start vm", "observe vm state"...
    fn summary(r: &Reconciled) -> Vec<String> {
        let mut out: Vec<String> = r
            .cleanup
            .iter()
            .map(|(i, why)| format!("destroy {} {why:?}", i.vm))
            .collect();
        out.extend(
            r.steps
                .iter()
                .map(|s| format!("{} {} {:?}", s.action.name(), s.vm, s.observed)),
        );
        out
    }

    #[test]
    fn each_assigned_vm_is_driven_to_its_desired_state() {
        use Desired::{Running as Run, Stopped as Stop};
        use InstanceState as I;
        // (case, desired, instance state or none, standing, expected steps)
        type Case = (
            &'static str,
            Desired,
            Option<I>,
            Standing,
            &'static [&'static str],
        );
        let cases: &[Case] = &[
            (
                "new VM with a lease: started",
                Run,
                None,
                Standing::Leased,
                &["Start v Starting"],
            ),
            (
                "replica lags the lease: not started yet",
                Run,
                None,
                Standing::CatchingUp,
                &[],
            ),
            (
                "stopped, wanted running: started",
                Run,
                Some(I::Stopped),
                Standing::Leased,
                &["Start v Starting"],
            ),
            (
                "running as wanted: observed",
                Run,
                Some(I::Running),
                Standing::Leased,
                &["Observe v Running"],
            ),
            (
                "running while the replica lags: kept",
                Run,
                Some(I::Running),
                Standing::CatchingUp,
                &["Observe v Running"],
            ),
            (
                "crashed, wanted running: reported failed",
                Run,
                Some(I::Crashed("oops".into())),
                Standing::Leased,
                &["Observe v Failed"],
            ),
            (
                "wanted stopped, running: stopped",
                Stop,
                Some(I::Running),
                Standing::Leased,
                &["Stop v Stopping"],
            ),
            (
                "wanted stopped, starting: stopped",
                Stop,
                Some(I::Starting),
                Standing::Leased,
                &["Stop v Stopping"],
            ),
            (
                "wanted stopped, crashed: failure cleared",
                Stop,
                Some(I::Crashed("oops".into())),
                Standing::Leased,
                &["DestroyCrashed v Stopped"],
            ),
            (
                "wanted stopped, absent: stopped",
                Stop,
                None,
                Standing::Leased,
                &["Observe v Stopped"],
            ),
            (
                "arrived by migration and assigned: switched",
                Run,
                Some(I::Incoming),
                Standing::Leased,
                &["Switch v Starting"],
            ),
        ];
        for (case, desired, state, standing, expected) in cases {
            let r = replica(&[("v", assigned(3, *desired, VmState::Pending))]);
            let instances = state.iter().map(|s| instance("v", 3, s.clone())).collect();
            let got = summary(&reconcile(&r, instances, *standing, false));
            assert_eq!(got, *expected, "{case}");
        }
    }

    #[test]
    fn instances_that_must_not_run_here_are_destroyed_first() {
        let r = replica(&[("v", assigned(3, Desired::Running, VmState::Running))]);
        // Stale epochs and VMs assigned elsewhere: destroyed; the assigned VM starts afresh.
        let got = reconcile(
            &r,
            vec![
                instance("v", 2, InstanceState::Running),
                instance("w", 1, InstanceState::Running),
            ],
            Standing::Leased,
            false,
        );
        assert_eq!(
            summary(&got),
            [
                "destroy v NotAssigned",
                "destroy w NotAssigned",
                "Start v Starting"
            ]
        );
    }

    #[test]
    fn a_crash_found_on_the_first_pass_restarts_the_vm_later_ones_are_reported() {
        let r = replica(&[("v", assigned(3, Desired::Running, VmState::Running))]);
        let crashed = || {
            vec![instance(
                "v",
                3,
                InstanceState::Crashed("host rebooted".into()),
            )]
        };
        let first = reconcile(&r, crashed(), Standing::Leased, true);
        assert_eq!(
            summary(&first),
            ["destroy v DeadAfterRestart", "Start v Starting"]
        );
        let later = reconcile(&r, crashed(), Standing::Leased, false);
        assert_eq!(summary(&later), ["Observe v Failed"]);
    }

    #[test]
    fn migrations_own_their_instances() {
        // Leaving: the source copy at the source epoch is the worker's, neither started,
        // stopped nor destroyed here, even once the hypervisor reports it migrated.
        let mut r = replica(&[("v", assigned(3, Desired::Running, VmState::Running))]);
        r.outgoing.insert("v".into(), 3);
        for state in [InstanceState::Running, InstanceState::Migrated] {
            let got = reconcile(
                &r,
                vec![instance("v", 3, state.clone())],
                Standing::Leased,
                false,
            );
            let expected: &[&str] = match state {
                InstanceState::Running => &["Observe v Running"],
                _ => &[],
            };
            assert_eq!(summary(&got), expected, "{state:?}");
        }
        // Switched: the replica assigns it elsewhere, the migration is still open: the
        // migrated-away source is left for the worker to read its figures from.
        let mut switched = Replica::default();
        switched.outgoing.insert("v".into(), 3);
        let got = reconcile(
            &switched,
            vec![instance("v", 3, InstanceState::Migrated)],
            Standing::Leased,
            false,
        );
        assert!(summary(&got).is_empty(), "{:?}", summary(&got));
        // A source whose copy is gone or stopped is not restarted while the migration is open.
        let got = reconcile(&r, vec![], Standing::Leased, false);
        assert!(summary(&got).is_empty(), "{:?}", summary(&got));

        // Arriving: the incoming copy at the target epoch stays although not assigned here.
        let mut r = Replica::default();
        r.incoming.insert("v".into(), 4);
        let got = reconcile(
            &r,
            vec![instance("v", 4, InstanceState::Incoming)],
            Standing::Leased,
            false,
        );
        assert!(summary(&got).is_empty());
        // An incoming copy of another epoch is a leftover: destroyed.
        let got = reconcile(
            &r,
            vec![instance("v", 9, InstanceState::Incoming)],
            Standing::Leased,
            false,
        );
        assert_eq!(summary(&got), ["destroy v NotAssigned"]);
    }

    #[test]
    fn a_copy_migrated_away_without_an_open_migration_is_a_dead_shell() {
        let r = replica(&[("v", assigned(3, Desired::Running, VmState::Running))]);
        let got = reconcile(
            &r,
            vec![instance("v", 3, InstanceState::Migrated)],
            Standing::Leased,
            false,
        );
        assert_eq!(summary(&got), ["destroy v DeadShell", "Start v Starting"]);
    }

    #[test]
    fn deleted_vms_are_confirmed_gone_after_the_cleanup() {
        let mut r = Replica::default();
        r.deleted_here.push("old".into());
        let got = reconcile(
            &r,
            vec![instance("old", 1, InstanceState::Running)],
            Standing::Leased,
            false,
        );
        assert_eq!(summary(&got), ["destroy old NotAssigned"]);
        assert_eq!(got.gone, ["old"]);
    }

    #[test]
    fn reports_are_sent_once_until_the_replica_shows_them_or_the_resend_time_passes() {
        let t0 = Instant::now();
        let mut r = replica(&[("v", assigned(3, Desired::Running, VmState::Pending))]);
        let mut reported = Reported::default();
        let running = || vec![("v".to_string(), 3, VmState::Running, None)];
        assert_eq!(reported.due(&r, running(), t0).len(), 1, "new: sent");
        assert!(
            reported
                .due(&r, running(), t0 + Duration::from_secs(1))
                .is_empty(),
            "sent recently"
        );
        assert_eq!(
            reported.due(&r, running(), t0 + RESEND_AFTER).len(),
            1,
            "not applied yet: sent again"
        );
        // The replica shows it: nothing to report, and the memory is cleared.
        if let Some(a) = r.assigned.get_mut("v") {
            a.observed = VmState::Running;
        }
        assert!(reported
            .due(&r, running(), t0 + RESEND_AFTER * 2)
            .is_empty());
        // A different state is news at once.
        let stopping = vec![("v".to_string(), 3, VmState::Stopping, None)];
        assert_eq!(reported.due(&r, stopping, t0 + RESEND_AFTER * 2).len(), 1);
        // VMs no longer assigned here are forgotten and never reported.
        let gone = Replica::default();
        assert!(reported
            .due(&gone, running(), t0 + RESEND_AFTER * 3)
            .is_empty());
    }
}
