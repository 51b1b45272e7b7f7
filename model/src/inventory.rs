//! Apply for the inventory: node and VM commands. Every check that depends on the state happens here, so a
//! stale plan or a late report is refused the same way on every replica.

use crate::command::{Command, Outcome, Placement, Rejection, Response, VmReport};
use crate::events::EventKind;
use crate::node::{Health, Node};
use crate::state::ClusterState;
use crate::vm::{check_fit, Assignment, Desired, Vm, VmState};

impl ClusterState {
    pub(crate) fn apply_inventory_command(&mut self, command: &Command, at_ms: u64) -> Outcome {
        match command {
            Command::NodeRegister {
                name,
                capacity,
                labels,
                driver,
            } => {
                match self.nodes.get(name).map(|n| n.health) {
                    None => self.events.push(
                        at_ms,
                        EventKind::NodeRegistered,
                        name,
                        format!("{name} registered: {} ({driver})", capacity.describe()),
                    ),
                    Some(Health::Down) => self.events.push(
                        at_ms,
                        EventKind::NodeBack,
                        name,
                        format!("{name} is back (its VMs were handled while it was down)"),
                    ),
                    Some(Health::Ready) => {}
                }
                let node = self.nodes.entry(name.clone()).or_insert_with(|| Node {
                    name: name.clone(),
                    capacity: *capacity,
                    allocated: Default::default(),
                    labels: labels.clone(),
                    driver: driver.clone(),
                    cordoned: false,
                    maintenance: false,
                    health: Health::Ready,
                    registered_ms: at_ms,
                    drain: None,
                });
                node.capacity = *capacity;
                node.labels = labels.clone();
                node.driver = driver.clone();
                node.health = Health::Ready;
                Ok(Response::Done)
            }
            Command::NodeCordon { name, cordoned } => {
                let node = self
                    .nodes
                    .get_mut(name)
                    .ok_or_else(|| Rejection::not_found("node", name))?;
                if node.cordoned != *cordoned {
                    let what = if *cordoned {
                        "cordoned: no new VMs"
                    } else {
                        "uncordoned"
                    };
                    self.events
                        .push(at_ms, EventKind::NodeCordon, name, format!("{name} {what}"));
                }
                node.cordoned = *cordoned;
                if !cordoned {
                    // Uncordoning ends a drain (its migrations carry on or have ended).
                    node.drain = None;
                }
                Ok(Response::Done)
            }
            Command::VmCreate {
                name,
                spec,
                desired,
            } => {
                if self.vms.contains_key(name) {
                    return Err(Rejection::AlreadyExists {
                        kind: "VM".into(),
                        name: name.clone(),
                    });
                }
                self.check_not_deleting(name)?;
                self.check_images(spec)?;
                self.insert_vm(name, spec, *desired, at_ms);
                Ok(Response::Done)
            }
            Command::VmCreateMany { vms } => {
                // All or none: check every name first.
                let mut names = std::collections::BTreeSet::new();
                for vm in vms {
                    if self.vms.contains_key(&vm.name) || !names.insert(vm.name.as_str()) {
                        return Err(Rejection::AlreadyExists {
                            kind: "VM".into(),
                            name: vm.name.clone(),
                        });
                    }
                    self.check_not_deleting(&vm.name)?;
                    self.check_images(&vm.spec)?;
                }
                for vm in vms {
                    self.insert_vm(&vm.name, &vm.spec, vm.desired, at_ms);
                }
                Ok(Response::Done)
            }
            Command::VmSetDesired { name, desired } => {
                if *desired == Desired::Stopped {
                    self.settle_migration_before_change(name, "stopped", at_ms)?;
                }
                let vm = self
                    .vms
                    .get_mut(name)
                    .ok_or_else(|| Rejection::not_found("VM", name))?;
                if vm.desired != *desired {
                    vm.desired = *desired;
                    vm.event(
                        &mut self.events,
                        at_ms,
                        EventKind::VmDesired,
                        format!("desired {}", desired.name()),
                    );
                }
                // An operator's start or stop starts the restart policy afresh...
                vm.crash_restarts = 0;
                vm.avoid = None;
                // ...and clears a failure that left the VM without a node.
                if vm.assignment.is_none() && vm.observed == VmState::Failed {
                    vm.observed = match desired {
                        Desired::Running => VmState::Pending,
                        Desired::Stopped => VmState::Stopped,
                    };
                    vm.reason = None;
                }
                Ok(Response::Done)
            }
            Command::VmDelete { name } => {
                self.settle_migration_before_change(name, "deleted", at_ms)?;
                let vm = self
                    .vms
                    .remove(name)
                    .ok_or_else(|| Rejection::not_found("VM", name))?;
                self.release(&vm);
                self.events
                    .push(at_ms, EventKind::VmDeleted, name, format!("{name} deleted"));
                if let Some(a) = &vm.assignment {
                    self.deleting
                        .insert(name.clone(), (a.node.clone(), a.epoch));
                }
                Ok(Response::Done)
            }
            Command::VmGone { node, vms } => {
                for name in vms {
                    if self.deleting.get(name).is_some_and(|(n, _)| n == node) {
                        self.deleting.remove(name);
                    }
                }
                Ok(Response::Done)
            }
            Command::VmPlace { placements } => Ok(self.place(placements, at_ms)),
            Command::VmWaiting { reasons } => {
                for (name, reason) in reasons {
                    if let Some(vm) = self.vms.get_mut(name) {
                        if vm.needs_placement() && vm.waiting.as_ref() != Some(reason) {
                            vm.waiting = Some(reason.clone());
                            vm.event(
                                &mut self.events,
                                at_ms,
                                EventKind::VmWaiting,
                                format!("waiting: {reason}"),
                            );
                        }
                    }
                }
                Ok(Response::Done)
            }
            Command::VmObserved { node, reports } => Ok(self.observe(node, reports, at_ms)),
            Command::VmAddresses { node, reports } => {
                let (mut taken, mut ignored) = (0, 0);
                for (name, epoch, ips) in reports {
                    match self.vms.get_mut(name) {
                        Some(vm)
                            if vm
                                .assignment
                                .as_ref()
                                .is_some_and(|a| a.node == *node && a.epoch == *epoch) =>
                        {
                            vm.addresses = crate::vm::Addresses {
                                epoch: *epoch,
                                ips: ips.clone(),
                            };
                            taken += 1;
                        }
                        _ => ignored += 1,
                    }
                }
                Ok(Response::Observed { taken, ignored })
            }
            Command::SettingSet { key, value } => {
                self.settings
                    .set(key, value)
                    .map_err(|reason| Rejection::Invalid { reason })?;
                self.events.push(
                    at_ms,
                    EventKind::SettingChanged,
                    key,
                    format!("{key} = {value}"),
                );
                Ok(Response::Done)
            }
            Command::VmRecover { vm: name, epoch } => {
                let limit = self.settings.restart_limit;
                let Some(vm) = self.vms.get(name) else {
                    return Err(Rejection::not_found("VM", name));
                };
                let current = vm
                    .assignment
                    .as_ref()
                    .filter(|a| a.epoch == *epoch)
                    .cloned();
                let Some(assignment) = current.filter(|_| vm.observed == VmState::Failed) else {
                    // Already handled, or no longer failed at that epoch.
                    return Ok(Response::Done);
                };
                let node = assignment.node;
                let crash_restarts = vm.crash_restarts;
                self.fail_migrations_of_vm(name, &format!("the VM crashed on {node}"), at_ms);
                let Some(vm) = self.vms.get(name) else {
                    return Err(Rejection::not_found("VM", name));
                };
                if crash_restarts < limit {
                    self.epoch += 1;
                    let epoch = self.epoch;
                    if let Some(vm) = self.vms.get_mut(name) {
                        vm.crash_restarts += 1;
                        vm.assignment = Some(Assignment {
                            node: node.clone(),
                            epoch,
                        });
                        vm.observed = VmState::Pending;
                        vm.event(
                            &mut self.events,
                            at_ms,
                            EventKind::VmRecovery,
                            format!(
                                "restart {}/{limit} in place on {node} (epoch {epoch})",
                                vm.crash_restarts
                            ),
                        );
                    }
                } else if vm.avoid.is_none() {
                    let released = vm.clone();
                    self.release(&released);
                    if let Some(vm) = self.vms.get_mut(name) {
                        vm.assignment = None;
                        vm.observed = VmState::Pending;
                        // No further restarts in place: a crash on the next node is the last.
                        vm.avoid = Some(node.clone());
                        vm.event(
                            &mut self.events,
                            at_ms,
                            EventKind::VmRecovery,
                            format!("crashed {limit} times on {node}: placing it elsewhere"),
                        );
                    }
                } else if vm.avoid.as_deref() != Some(node.as_str()) {
                    if let Some(vm) = self.vms.get_mut(name) {
                        vm.event(
                            &mut self.events,
                            at_ms,
                            EventKind::VmRecovery,
                            format!("crashed {limit} times again, on {node}: left failed; start it to try again"),
                        );
                        // Handled: a failed VM that avoids its own node is left alone.
                        vm.avoid = Some(node);
                    }
                }
                Ok(Response::Done)
            }
            Command::NodeMaintenance { name, on } => {
                let node = self
                    .nodes
                    .get_mut(name)
                    .ok_or_else(|| Rejection::not_found("node", name))?;
                if node.maintenance != *on {
                    let what = if *on {
                        "in maintenance: no new VMs, no failover"
                    } else {
                        "out of maintenance"
                    };
                    self.events.push(
                        at_ms,
                        EventKind::NodeMaintenance,
                        name,
                        format!("{name} {what}"),
                    );
                }
                node.maintenance = *on;
                Ok(Response::Done)
            }
            Command::NodeDown { name } => {
                let node = self
                    .nodes
                    .get_mut(name)
                    .ok_or_else(|| Rejection::not_found("node", name))?;
                if node.health == Health::Down {
                    return Ok(Response::Done);
                }
                node.health = Health::Down;
                self.events.push(
                    at_ms,
                    EventKind::NodeDown,
                    name,
                    format!("{name} declared down: its lease has ended, its VMs are fenced"),
                );
                // Down means its lease has ended: nothing of it still runs.
                self.deleting.retain(|_, (n, _)| n != name);
                self.fail_migrations_of_node(name, at_ms);
                let on_node: Vec<String> = self
                    .vms
                    .values()
                    .filter(|vm| vm.node() == Some(name.as_str()))
                    .map(|vm| vm.name.clone())
                    .collect();
                for vm_name in on_node {
                    let Some(vm) = self.vms.get(&vm_name).cloned() else {
                        continue;
                    };
                    self.release(&vm);
                    let Some(vm) = self.vms.get_mut(&vm_name) else {
                        continue;
                    };
                    let epoch = vm.assignment.take().map_or(0, |a| a.epoch);
                    if vm.spec.ha && vm.desired == Desired::Running {
                        vm.observed = VmState::Pending;
                        vm.reason = None;
                        vm.event(
                            &mut self.events,
                            at_ms,
                            EventKind::VmRecovery,
                            format!(
                                "node {name} down (epoch {epoch} fenced): placing it elsewhere"
                            ),
                        );
                    } else if vm.desired == Desired::Running {
                        vm.observed = VmState::Failed;
                        vm.reason = Some(format!("host {name} down"));
                        vm.event(
                            &mut self.events,
                            at_ms,
                            EventKind::VmFailed,
                            format!("failed: host {name} down; not HA, so it waits for `paddock vm start`"),
                        );
                    } else {
                        vm.observed = VmState::Stopped;
                        vm.event(
                            &mut self.events,
                            at_ms,
                            EventKind::VmState,
                            format!("node {name} down; the VM was stopped and stays stopped"),
                        );
                    }
                }
                Ok(Response::Done)
            }
            _ => Err(Rejection::Invalid {
                reason: "not a node or VM command".into(),
            }),
        }
    }

    /// A name whose previous VM may still run somewhere cannot be used yet.
    fn check_not_deleting(&self, name: &str) -> Result<(), Rejection> {
        match self.deleting.get(name) {
            Some((node, epoch)) => Err(Rejection::FailedPrecondition {
                reason: format!(
                    "VM {name} was deleted but {node} has not yet confirmed it destroyed it (epoch {epoch}); retry in a few seconds (at most one lease once {node} is declared down)"
                ),
            }),
            None => Ok(()),
        }
    }

    fn insert_vm(&mut self, name: &str, spec: &crate::VmSpec, desired: Desired, at_ms: u64) {
        let mut vm = Vm {
            name: name.to_string(),
            spec: spec.clone(),
            desired,
            assignment: None,
            observed: VmState::Pending,
            reason: None,
            waiting: None,
            events: Vec::new(),
            created_ms: at_ms,
            crash_restarts: 0,
            avoid: None,
            addresses: Default::default(),
        };
        vm.event(
            &mut self.events,
            at_ms,
            EventKind::VmCreated,
            format!("created, desired {}", desired.name()),
        );
        self.vms.insert(name.to_string(), vm);
    }

    /// Frees what `vm` held on its node.
    pub(crate) fn release(&mut self, vm: &Vm) {
        if let Some(assignment) = &vm.assignment {
            if let Some(node) = self.nodes.get_mut(&assignment.node) {
                node.allocated = node.allocated.minus(&vm.spec.resources());
            }
            self.groups.remove(&vm.spec, &assignment.node);
        }
    }

    fn place(&mut self, placements: &[Placement], at_ms: u64) -> Response {
        let mut placed = Vec::new();
        let mut refused = Vec::new();
        for Placement { vm: name, node } in placements {
            match self.place_one(name, node, at_ms) {
                Ok(epoch) => placed.push((name.clone(), node.clone(), epoch)),
                Err(why) => refused.push((name.clone(), why)),
            }
        }
        Response::Placed { placed, refused }
    }

    fn place_one(&mut self, name: &str, node_name: &str, at_ms: u64) -> Result<u64, String> {
        let vm = self.vms.get(name).ok_or("VM no longer exists")?;
        if !vm.needs_placement() {
            return Err("VM no longer needs a node".into());
        }
        let node = self.nodes.get(node_name).ok_or("node is not registered")?;
        check_fit(node, &node.free(), &vm.spec, &self.groups)
            .map_err(|misfit| misfit.describe(1).replacen("1 ", "node ", 1))?;
        let resources = vm.spec.resources();
        self.epoch += 1;
        let epoch = self.epoch;
        if let Some(node) = self.nodes.get_mut(node_name) {
            node.allocated = node.allocated.plus(&resources);
        }
        if let Some(vm) = self.vms.get_mut(name) {
            self.groups.add(&vm.spec, node_name);
            vm.assignment = Some(Assignment {
                node: node_name.to_string(),
                epoch,
            });
            vm.observed = VmState::Pending;
            vm.reason = None;
            vm.waiting = None;
            vm.event(
                &mut self.events,
                at_ms,
                EventKind::VmScheduled,
                format!("scheduled on {node_name} (epoch {epoch})"),
            );
        }
        Ok(epoch)
    }

    fn observe(&mut self, node: &str, reports: &[VmReport], at_ms: u64) -> Response {
        let (mut taken, mut ignored) = (0, 0);
        for report in reports {
            let Some(vm) = self.vms.get_mut(&report.vm) else {
                ignored += 1;
                continue;
            };
            let current = vm
                .assignment
                .as_ref()
                .is_some_and(|a| a.node == node && a.epoch == report.epoch);
            if !current {
                ignored += 1;
                continue;
            }
            taken += 1;
            if vm.observed != report.state || vm.reason != report.reason {
                vm.observed = report.state;
                vm.reason = report.reason.clone();
                let message = match (&report.reason, report.state) {
                    (Some(reason), VmState::Failed) => format!("failed on {node}: {reason}"),
                    (_, state) => format!("{} on {node}", state.name()),
                };
                let kind = if report.state == VmState::Failed {
                    EventKind::VmFailed
                } else {
                    EventKind::VmState
                };
                vm.event(&mut self.events, at_ms, kind, message);
            }
        }
        Response::Observed { taken, ignored }
    }
}

impl Desired {
    /// The observed state that satisfies this desired state.
    pub fn reached_by(self, observed: VmState) -> bool {
        matches!(
            (self, observed),
            (Desired::Running, VmState::Running) | (Desired::Stopped, VmState::Stopped)
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::command::{ClientRequest, Proposal};
    use crate::resources::Resources;
    use crate::vm::{Constraints, VmSpec};

    fn run(state: &mut ClusterState, command: Command) -> Outcome {
        state
            .apply(&Proposal {
                at_ms: 1,
                requests: vec![ClientRequest::internal(command)],
            })
            .remove(0)
    }

    fn register(state: &mut ClusterState, name: &str, cpus: u32, memory_mib: u64) {
        run(
            state,
            Command::NodeRegister {
                name: name.into(),
                capacity: Resources {
                    cpus,
                    memory_mib,
                    disk_mib: 100_000,
                },
                labels: BTreeMap::new(),
                driver: "memvm".into(),
            },
        )
        .expect("test setup");
    }

    fn spec(cpus: u32, memory_mib: u64, anti: Option<&str>) -> VmSpec {
        VmSpec {
            cpus,
            memory_mib,
            disks: Vec::new(),
            labels: BTreeMap::new(),
            ha: false,
            priority: 0,
            constraints: Constraints {
                anti_affinity: anti.map(String::from),
                ..Default::default()
            },
            guest: Default::default(),
        }
    }

    fn create(state: &mut ClusterState, name: &str, spec: VmSpec) {
        run(
            state,
            Command::VmCreate {
                name: name.into(),
                spec,
                desired: Desired::Running,
            },
        )
        .expect("test setup");
    }

    fn place(state: &mut ClusterState, vm: &str, node: &str) -> Response {
        run(
            state,
            Command::VmPlace {
                placements: vec![Placement {
                    vm: vm.into(),
                    node: node.into(),
                }],
            },
        )
        .expect("test setup")
    }

    #[test]
    fn apply_rechecks_fit_and_refuses_stale_plans() {
        let mut state = ClusterState::default();
        register(&mut state, "n1", 4, 4096);
        create(&mut state, "a", spec(2, 3000, Some("db")));
        create(&mut state, "b", spec(1, 2000, None));
        create(&mut state, "c", spec(1, 500, Some("db")));
        assert!(
            matches!(place(&mut state, "a", "n1"), Response::Placed { placed, .. } if placed.len() == 1)
        );
        // b no longer fits (memory), c breaks anti-affinity: both refused, nothing changes.
        let Response::Placed { placed, refused } = place(&mut state, "b", "n1") else {
            panic!()
        };
        assert!(placed.is_empty());
        assert_eq!(refused[0].1, "node lacks memory");
        let Response::Placed { refused, .. } = place(&mut state, "c", "n1") else {
            panic!()
        };
        assert_eq!(refused[0].1, "node violates anti-affinity group db");
        assert_eq!(state.nodes["n1"].allocated.memory_mib, 3000);
        // A placed VM cannot be placed twice.
        let Response::Placed { refused, .. } = place(&mut state, "a", "n1") else {
            panic!()
        };
        assert_eq!(refused.len(), 1);
        // Deleting frees the capacity and the group slot.
        run(&mut state, Command::VmDelete { name: "a".into() }).expect("test setup");
        assert_eq!(state.nodes["n1"].allocated, Resources::default());
        assert!(
            matches!(place(&mut state, "c", "n1"), Response::Placed { placed, .. } if placed.len() == 1)
        );
    }

    #[test]
    fn addresses_count_for_the_current_epoch_of_a_running_vm_only() {
        let mut state = ClusterState::default();
        register(&mut state, "n1", 4, 4096);
        create(&mut state, "web", spec(1, 512, None));
        let Response::Placed { placed, .. } = place(&mut state, "web", "n1") else {
            panic!()
        };
        let epoch = placed[0].2;
        let report = |node: &str, epoch: u64| Command::VmAddresses {
            node: node.into(),
            reports: vec![("web".into(), epoch, vec!["10.0.0.5/24".into()])],
        };
        // Another node, an older epoch: ignored.
        for (node, e) in [("n2", epoch), ("n1", epoch - 1)] {
            let outcome = run(&mut state, report(node, e)).expect("applied");
            assert_eq!(
                outcome,
                Response::Observed {
                    taken: 0,
                    ignored: 1
                }
            );
        }
        run(&mut state, report("n1", epoch)).expect("applied");
        // Known, but shown only while the VM runs.
        assert!(state.vms["web"].current_addresses().is_empty());
        run(
            &mut state,
            Command::VmObserved {
                node: "n1".into(),
                reports: vec![VmReport {
                    vm: "web".into(),
                    epoch,
                    state: VmState::Running,
                    reason: None,
                }],
            },
        )
        .expect("observed");
        assert_eq!(state.vms["web"].current_addresses(), ["10.0.0.5/24"]);
        let too_many = Command::VmAddresses {
            node: "n1".into(),
            reports: vec![("web".into(), epoch, vec!["x".into(); 17])],
        };
        assert_eq!(
            run(&mut state, too_many).expect_err("refused").kind(),
            crate::RejectionKind::Invalid
        );
    }

    #[test]
    fn reports_of_old_epochs_or_other_nodes_are_ignored() {
        let mut state = ClusterState::default();
        register(&mut state, "n1", 4, 4096);
        register(&mut state, "n2", 4, 4096);
        create(&mut state, "a", spec(1, 100, None));
        place(&mut state, "a", "n1");
        let epoch = state.vms["a"]
            .assignment
            .as_ref()
            .expect("test setup")
            .epoch;
        let report = |epoch, state| VmReport {
            vm: "a".into(),
            epoch,
            state,
            reason: None,
        };
        let out = run(
            &mut state,
            Command::VmObserved {
                node: "n2".into(),
                reports: vec![report(epoch, VmState::Running)],
            },
        );
        assert_eq!(
            out,
            Ok(Response::Observed {
                taken: 0,
                ignored: 1
            })
        );
        let out = run(
            &mut state,
            Command::VmObserved {
                node: "n1".into(),
                reports: vec![
                    report(epoch - 1, VmState::Running),
                    report(epoch, VmState::Running),
                ],
            },
        );
        assert_eq!(
            out,
            Ok(Response::Observed {
                taken: 1,
                ignored: 1
            })
        );
        assert_eq!(state.vms["a"].observed, VmState::Running);
        assert!(state.vms["a"]
            .events
            .last()
            .expect("test setup")
            .message
            .contains("running on n1"));
    }

    #[test]
    fn a_deleted_name_is_reusable_only_once_its_node_confirmed_the_destruction() {
        let mut state = ClusterState::default();
        register(&mut state, "n1", 4, 4096);
        register(&mut state, "n2", 4, 4096);
        create(&mut state, "a", spec(1, 100, None));
        place(&mut state, "a", "n1");
        run(&mut state, Command::VmDelete { name: "a".into() }).expect("delete");
        let again = Command::VmCreate {
            name: "a".into(),
            spec: spec(1, 100, None),
            desired: Desired::Running,
        };
        let refused = run(&mut state, again.clone());
        assert!(
            matches!(&refused, Err(Rejection::FailedPrecondition { reason }) if reason.contains("has not yet confirmed")),
            "{refused:?}"
        );
        // Another node's word does not count; n1's does.
        let gone = |node: &str| Command::VmGone {
            node: node.into(),
            vms: vec!["a".into()],
        };
        run(&mut state, gone("n2")).expect("gone");
        assert!(run(&mut state, again.clone()).is_err());
        run(&mut state, gone("n1")).expect("gone");
        run(&mut state, again).expect("the name is free again");
        // A node declared down frees its names too (its lease has ended).
        place(&mut state, "a", "n2");
        run(&mut state, Command::VmDelete { name: "a".into() }).expect("delete");
        run(&mut state, Command::NodeDown { name: "n2".into() }).expect("down");
        assert!(state.deleting.is_empty());
    }

    #[test]
    fn duplicate_names_and_bad_specs_are_refused() {
        let mut state = ClusterState::default();
        create(&mut state, "a", spec(1, 100, None));
        let again = run(
            &mut state,
            Command::VmCreate {
                name: "a".into(),
                spec: spec(1, 100, None),
                desired: Desired::Running,
            },
        );
        assert!(matches!(again, Err(Rejection::AlreadyExists { .. })));
        let bad = run(
            &mut state,
            Command::VmCreate {
                name: "b".into(),
                spec: spec(0, 100, None),
                desired: Desired::Running,
            },
        );
        assert!(matches!(bad, Err(Rejection::Invalid { .. })));
        let bad_name = run(
            &mut state,
            Command::VmCreate {
                name: "B/1".into(),
                spec: spec(1, 100, None),
                desired: Desired::Running,
            },
        );
        assert!(matches!(bad_name, Err(Rejection::Invalid { .. })));
    }
}
