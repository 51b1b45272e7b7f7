//! Apply of the migration commands and of node drains: one command per phase change, the
//! ownership switch as one command with the epoch reserved at `Start`.

use super::{MigrationFigures, MigrationOptions, Phase, KEEP_FINISHED};
use crate::command::{Outcome, Rejection, Response};
use crate::events::EventKind;
use crate::node::Drain;
use crate::state::ClusterState;
use crate::vm::{check_fit, Assignment, Desired, VmState};

fn not_found(id: u64) -> Rejection {
    Rejection::NotFound {
        kind: "migration".into(),
        name: id.to_string(),
    }
}

fn invalid(reason: String) -> Rejection {
    Rejection::Invalid { reason }
}

impl ClusterState {
    /// The migration of `vm` that has not ended, if any.
    pub fn open_migration(&self, vm: &str) -> Option<&crate::migration::Migration> {
        self.migrations
            .values()
            .rev()
            .find(|m| m.vm == vm && (m.phase.before_switch() || m.phase == Phase::Switching))
    }

    /// Checks that `vm` may start migrating now.
    fn check_migratable(&self, vm_name: &str, destination: Option<&str>) -> Result<(), Rejection> {
        let vm = self
            .vms
            .get(vm_name)
            .ok_or_else(|| Rejection::not_found("VM", vm_name))?;
        let Some(assignment) = &vm.assignment else {
            return Err(Rejection::precondition(format!(
                "{vm_name} is not on any node"
            )));
        };
        if vm.desired != Desired::Running || vm.observed != VmState::Running {
            return Err(Rejection::precondition(format!(
                "{vm_name} is {} (desired {}): only running VMs are live-migrated; a stopped VM starts wherever the scheduler puts it",
                vm.observed.name(),
                vm.desired.name()
            )));
        }
        if let Some(m) = self.open_migration(vm_name) {
            return Err(Rejection::precondition(format!(
                "{vm_name} is already migrating (migration {}, {})",
                m.id,
                m.phase.name()
            )));
        }
        if let Some(to) = destination {
            let node = self
                .nodes
                .get(to)
                .ok_or_else(|| Rejection::not_found("node", to))?;
            if to == assignment.node {
                return Err(invalid(format!("{vm_name} already runs on {to}")));
            }
            let source_driver = self.nodes.get(&assignment.node).map(|n| n.driver.as_str());
            if source_driver != Some(node.driver.as_str()) {
                return Err(Rejection::precondition(format!(
                    "{to} runs the {} driver and {} the {}: live migration needs the same driver on both",
                    node.driver,
                    assignment.node,
                    source_driver.unwrap_or("unknown")
                )));
            }
        }
        Ok(())
    }

    fn insert_migration(
        &mut self,
        vm_name: &str,
        requested: Option<String>,
        options: MigrationOptions,
        priority: u16,
        reason: String,
        at_ms: u64,
    ) -> u64 {
        self.migration_seq += 1;
        let id = self.migration_seq;
        let (source, source_epoch) = self
            .vms
            .get(vm_name)
            .and_then(|vm| vm.assignment.clone())
            .map(|a| (a.node, a.epoch))
            .unwrap_or_default();
        if let Some(vm) = self.vms.get_mut(vm_name) {
            vm.event(
                &mut self.events,
                at_ms,
                EventKind::MigrationPhase,
                format!("migration {id} requested ({reason}) from {source}"),
            );
        }
        self.migrations.insert(
            id,
            crate::migration::Migration {
                id,
                vm: vm_name.to_string(),
                source,
                source_epoch,
                requested,
                destination: None,
                target_epoch: 0,
                address: None,
                options,
                priority,
                reason,
                phase: Phase::Pending,
                error: None,
                source_resumed: false,
                created_ms: at_ms,
                started_ms: None,
                switched_ms: None,
                ended_ms: None,
                figures: MigrationFigures::default(),
            },
        );
        id
    }

    /// Gives back the destination's reservation of a migration that will not switch.
    fn release_reservation(&mut self, id: u64) {
        let Some(m) = self.migrations.get(&id) else {
            return;
        };
        if !matches!(m.phase, Phase::Preparing | Phase::Transferring) {
            return;
        }
        let (Some(dest), Some(vm)) = (m.destination.clone(), self.vms.get(&m.vm)) else {
            return;
        };
        let resources = vm.spec.resources();
        if let Some(node) = self.nodes.get_mut(&dest) {
            node.allocated = node.allocated.minus(&resources);
        }
    }

    /// Ends migration `id` in `phase` (releasing what it held) and records why.
    fn end_migration(&mut self, id: u64, phase: Phase, error: Option<String>, at_ms: u64) {
        self.release_reservation(id);
        let Some(m) = self.migrations.get_mut(&id) else {
            return;
        };
        let was = m.phase;
        m.phase = phase;
        if error.is_some() {
            m.error = error.clone();
        }
        // Settled: nothing more will happen. A migration that failed or was cancelled while
        // the source was involved (preparing, transferring) settles when the source agent
        // confirms its guest runs on (`MigrationRolledBack`).
        let settled = match phase {
            Phase::Completed | Phase::RolledBack => true,
            Phase::Failed | Phase::Cancelled => matches!(was, Phase::Pending | Phase::Switching),
            _ => false,
        };
        if settled {
            m.ended_ms = Some(at_ms);
            m.source_resumed = phase != Phase::Completed;
        }
        let message = match &error {
            Some(why) => format!("migration {id} {}: {why}", phase.name()),
            None => format!("migration {id} {}", phase.name()),
        };
        let vm_name = m.vm.clone();
        if let Some(vm) = self.vms.get_mut(&vm_name) {
            vm.event(&mut self.events, at_ms, EventKind::MigrationPhase, message);
        }
        self.prune_migrations();
    }

    fn prune_migrations(&mut self) {
        let finished: Vec<u64> = self
            .migrations
            .values()
            .filter(|m| m.ended_ms.is_some())
            .map(|m| m.id)
            .collect();
        if finished.len() > KEEP_FINISHED {
            for id in &finished[..finished.len() - KEEP_FINISHED] {
                self.migrations.remove(id);
            }
        }
    }

    /// A VM about to be stopped or deleted: a pending migration of it is dropped; one under
    /// way refuses the change (the operator cancels it first, or waits).
    pub(crate) fn settle_migration_before_change(
        &mut self,
        vm: &str,
        what: &str,
        at_ms: u64,
    ) -> Result<(), Rejection> {
        let Some((id, phase)) = self.open_migration(vm).map(|m| (m.id, m.phase)) else {
            return Ok(());
        };
        if phase == Phase::Pending {
            self.end_migration(
                id,
                Phase::Cancelled,
                Some(format!("the VM was {what}")),
                at_ms,
            );
            return Ok(());
        }
        Err(Rejection::precondition(format!(
            "{vm} is migrating (migration {id}, {}); wait for it, or `paddock migration cancel {id}` first",
            phase.name()
        )))
    }

    /// Fails the migrations of `vm` that have not switched (its assignment changed under them).
    pub(crate) fn fail_migrations_of_vm(&mut self, vm: &str, reason: &str, at_ms: u64) {
        let ids: Vec<u64> = self
            .migrations
            .values()
            .filter(|m| m.vm == vm && m.phase.before_switch())
            .map(|m| m.id)
            .collect();
        for id in ids {
            self.end_migration(id, Phase::Failed, Some(reason.to_string()), at_ms);
        }
    }

    /// A node went down: its migrations, in or out, fail.
    pub(crate) fn fail_migrations_of_node(&mut self, node: &str, at_ms: u64) {
        let ids: Vec<(u64, Phase)> = self
            .migrations
            .values()
            .filter(|m| {
                (m.phase.before_switch() || m.phase == Phase::Switching)
                    && (m.source == node || m.destination.as_deref() == Some(node))
            })
            .map(|m| (m.id, m.phase))
            .collect();
        for (id, phase) in ids {
            let reason = if phase == Phase::Switching {
                format!("{node} went down after the switch; HA takes care of the VM")
            } else {
                format!("{node} went down")
            };
            self.end_migration(id, Phase::Failed, Some(reason), at_ms);
            // A source that went down has nothing left to resume.
            if let Some(m) = self.migrations.get_mut(&id) {
                if m.source == node {
                    m.source_resumed = true;
                    m.ended_ms.get_or_insert(at_ms);
                }
            }
        }
    }

    pub(crate) fn apply_migration_command(
        &mut self,
        command: &crate::Command,
        at_ms: u64,
    ) -> Outcome {
        use crate::Command as C;
        match command {
            C::MigrationCreate {
                vm,
                destination,
                options,
                priority,
                reason,
            } => {
                self.check_migratable(vm, destination.as_deref())?;
                let id = self.insert_migration(
                    vm,
                    destination.clone(),
                    options.clone(),
                    *priority,
                    reason.clone(),
                    at_ms,
                );
                Ok(Response::Migrations {
                    created: vec![(vm.clone(), id)],
                    refused: vec![],
                })
            }
            C::MigrationStart { id, destination } => {
                let m = self.migrations.get(id).ok_or_else(|| not_found(*id))?;
                if m.phase != Phase::Pending {
                    return Err(Rejection::precondition(format!(
                        "migration {id} is {}, not pending",
                        m.phase.name()
                    )));
                }
                let vm = self
                    .vms
                    .get(&m.vm)
                    .ok_or_else(|| Rejection::not_found("VM", &m.vm))?;
                let at_source = vm
                    .assignment
                    .as_ref()
                    .is_some_and(|a| a.node == m.source && a.epoch == m.source_epoch);
                if !at_source || destination == &m.source {
                    return Err(Rejection::precondition(format!(
                        "VM {} moved since migration {id} was requested",
                        m.vm
                    )));
                }
                let node = self
                    .nodes
                    .get(destination)
                    .ok_or_else(|| Rejection::not_found("node", destination))?;
                if !node.schedulable() {
                    return Err(Rejection::precondition(format!(
                        "{destination} takes no new VMs ({})",
                        node.state_name()
                    )));
                }
                check_fit(node, &node.free(), &vm.spec, &self.groups).map_err(|misfit| {
                    Rejection::NoCapacity {
                        reason: misfit.describe(1).replacen("1 ", "node ", 1),
                    }
                })?;
                let resources = vm.spec.resources();
                self.epoch += 1;
                let epoch = self.epoch;
                if let Some(node) = self.nodes.get_mut(destination) {
                    node.allocated = node.allocated.plus(&resources);
                }
                let m = self.migrations.get_mut(id).ok_or_else(|| not_found(*id))?;
                m.destination = Some(destination.clone());
                m.target_epoch = epoch;
                m.phase = Phase::Preparing;
                m.started_ms = Some(at_ms);
                let vm_name = m.vm.clone();
                if let Some(vm) = self.vms.get_mut(&vm_name) {
                    vm.event(
                        &mut self.events,
                        at_ms,
                        EventKind::MigrationPhase,
                        format!("migration {id}: preparing {destination}"),
                    );
                }
                Ok(Response::Done)
            }
            C::MigrationPrepared {
                id,
                address,
                prepare_ms,
            } => {
                let m = self.migrations.get_mut(id).ok_or_else(|| not_found(*id))?;
                if m.phase != Phase::Preparing {
                    return Err(Rejection::precondition(format!(
                        "migration {id} is {}, not preparing",
                        m.phase.name()
                    )));
                }
                m.address = Some(address.clone());
                m.figures.prepare_ms = *prepare_ms;
                m.phase = Phase::Transferring;
                Ok(Response::Done)
            }
            C::MigrationSwitch { id } => {
                let m = self.migrations.get(id).ok_or_else(|| not_found(*id))?;
                if m.phase != Phase::Transferring {
                    return Err(Rejection::precondition(format!(
                        "migration {id} is {}: the switch happens only from transferring",
                        m.phase.name()
                    )));
                }
                let (vm_name, source, dest, epoch) = (
                    m.vm.clone(),
                    m.source.clone(),
                    m.destination.clone().unwrap_or_default(),
                    m.target_epoch,
                );
                let vm = self
                    .vms
                    .get(&vm_name)
                    .ok_or_else(|| Rejection::not_found("VM", &vm_name))?;
                let at_source = vm
                    .assignment
                    .as_ref()
                    .is_some_and(|a| a.node == source && a.epoch == m.source_epoch);
                if !at_source {
                    return Err(Rejection::precondition(format!(
                        "VM {vm_name} is no longer at {source} epoch {}",
                        m.source_epoch
                    )));
                }
                let spec = vm.spec.clone();
                if let Some(node) = self.nodes.get_mut(&source) {
                    node.allocated = node.allocated.minus(&spec.resources());
                }
                self.groups.remove(&spec, &source);
                self.groups.add(&spec, &dest);
                if let Some(vm) = self.vms.get_mut(&vm_name) {
                    vm.assignment = Some(Assignment {
                        node: dest.clone(),
                        epoch,
                    });
                    vm.crash_restarts = 0;
                    vm.event(
                        &mut self.events,
                        at_ms,
                        EventKind::MigrationPhase,
                        format!("migration {id}: now owned by {dest} (epoch {epoch})"),
                    );
                }
                if let Some(m) = self.migrations.get_mut(id) {
                    m.phase = Phase::Switching;
                    m.switched_ms = Some(at_ms);
                }
                Ok(Response::Done)
            }
            C::MigrationFinish { id, figures } => {
                let m = self.migrations.get_mut(id).ok_or_else(|| not_found(*id))?;
                if m.phase != Phase::Switching {
                    return Ok(Response::Done);
                }
                if let Some(figures) = figures {
                    let prepare_ms = m.figures.prepare_ms;
                    m.figures = figures.clone();
                    m.figures.prepare_ms = prepare_ms;
                }
                self.end_migration(*id, Phase::Completed, None, at_ms);
                Ok(Response::Done)
            }
            C::MigrationFail { id, reason } => {
                let m = self.migrations.get(id).ok_or_else(|| not_found(*id))?;
                if !(m.phase.before_switch() || m.phase == Phase::Switching) {
                    return Ok(Response::Done);
                }
                self.end_migration(*id, Phase::Failed, Some(reason.clone()), at_ms);
                Ok(Response::Done)
            }
            C::MigrationRolledBack {
                id,
                reason,
                figures,
            } => {
                let m = self.migrations.get(id).ok_or_else(|| not_found(*id))?;
                match m.phase {
                    Phase::Cancelled => {
                        if let Some(m) = self.migrations.get_mut(id) {
                            m.source_resumed = true;
                            m.ended_ms.get_or_insert(at_ms);
                        }
                    }
                    Phase::Preparing | Phase::Transferring | Phase::Failed => {
                        if let Some(m) = self.migrations.get_mut(id) {
                            if let Some(f) = figures {
                                let prepare_ms = m.figures.prepare_ms;
                                m.figures = f.clone();
                                m.figures.prepare_ms = prepare_ms;
                            }
                        }
                        self.end_migration(*id, Phase::RolledBack, reason.clone(), at_ms);
                    }
                    _ => {}
                }
                Ok(Response::Done)
            }
            C::MigrationCancel { id } => {
                let m = self.migrations.get(id).ok_or_else(|| not_found(*id))?;
                if !m.phase.before_switch() {
                    return Err(Rejection::precondition(format!(
                        "migration {id} is {}: only a migration before its switch can be cancelled",
                        m.phase.name()
                    )));
                }
                self.end_migration(
                    *id,
                    Phase::Cancelled,
                    Some("cancelled by an operator".into()),
                    at_ms,
                );
                Ok(Response::Done)
            }
            C::NodeDrain { name, evacuate } => self.drain(name, *evacuate, at_ms),
            C::NodeDrained { name } => {
                let left: Vec<String> = self
                    .vms
                    .values()
                    .filter(|vm| vm.node() == Some(name.as_str()))
                    .map(|vm| vm.name.clone())
                    .collect();
                let node = self
                    .nodes
                    .get_mut(name)
                    .ok_or_else(|| Rejection::NotFound {
                        kind: "node".into(),
                        name: name.clone(),
                    })?;
                if let Some(drain) = node.drain.as_mut() {
                    if !drain.done {
                        let message = if left.is_empty() {
                            format!("{name} drained: no VM left on it")
                        } else {
                            format!(
                                "{name} drain ended with {} VM(s) left: {}",
                                left.len(),
                                left.join(", ")
                            )
                        };
                        self.events.push(at_ms, EventKind::NodeDrain, name, message);
                        drain.done = true;
                        drain.left = left;
                        if drain.evacuate {
                            node.maintenance = true;
                        }
                    }
                }
                Ok(Response::Done)
            }
            _ => Err(invalid("not a migration command".into())),
        }
    }

    /// Cordons `name` and asks for a live migration of each of its running VMs.
    fn drain(&mut self, name: &str, evacuate: bool, at_ms: u64) -> Outcome {
        let node = self.nodes.get(name).ok_or_else(|| Rejection::NotFound {
            kind: "node".into(),
            name: name.to_string(),
        })?;
        if node.health != crate::Health::Ready {
            return Err(Rejection::precondition(format!(
                "{name} is down: there is nothing to live-migrate from it (HA restarts its VMs elsewhere)"
            )));
        }
        let verb = if evacuate { "evacuate" } else { "drain" };
        self.events.push(
            at_ms,
            EventKind::NodeDrain,
            name,
            format!("{verb} of {name} started: cordoned, its VMs move away"),
        );
        if let Some(node) = self.nodes.get_mut(name) {
            node.cordoned = true;
            node.drain = Some(Drain {
                evacuate,
                started_ms: at_ms,
                done: false,
                left: Vec::new(),
            });
        }
        let on_node: Vec<(String, u16, bool)> = self
            .vms
            .values()
            .filter(|vm| vm.node() == Some(name))
            .map(|vm| {
                (
                    vm.name.clone(),
                    vm.spec.priority,
                    vm.desired == Desired::Stopped,
                )
            })
            .collect();
        let (mut created, mut refused) = (Vec::new(), Vec::new());
        for (vm_name, priority, stopped) in on_node {
            if self.open_migration(&vm_name).is_some() {
                continue;
            }
            if stopped && evacuate {
                // Nothing runs: it simply leaves (it starts wherever it is placed next).
                if let Some(vm) = self.vms.get(&vm_name).cloned() {
                    self.release(&vm);
                }
                if let Some(vm) = self.vms.get_mut(&vm_name) {
                    vm.assignment = None;
                    vm.observed = VmState::Stopped;
                    vm.event(
                        &mut self.events,
                        at_ms,
                        EventKind::VmState,
                        format!("evacuated from {name} (stopped)"),
                    );
                }
                continue;
            }
            match self.check_migratable(&vm_name, None) {
                Ok(()) => {
                    let id = self.insert_migration(
                        &vm_name,
                        None,
                        MigrationOptions::default(),
                        priority,
                        format!("{verb} {name}"),
                        at_ms,
                    );
                    created.push((vm_name, id));
                }
                Err(why) => refused.push((vm_name, why.to_string())),
            }
        }
        Ok(Response::Migrations { created, refused })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{ClientRequest, Command, Proposal, VmReport};
    use crate::{Resources, VmSpec};

    fn apply(state: &mut ClusterState, command: Command) -> Outcome {
        let mut out = state.apply(&Proposal {
            at_ms: 1000,
            requests: vec![ClientRequest::internal(command)],
        });
        out.remove(0)
    }

    fn node(state: &mut ClusterState, name: &str) {
        apply(
            state,
            Command::NodeRegister {
                name: name.into(),
                capacity: Resources {
                    cpus: 4,
                    memory_mib: 4096,
                    disk_mib: 10_000,
                },
                labels: Default::default(),
                driver: "memvm".into(),
            },
        )
        .expect("register");
    }

    /// A cluster of n1, n2 with VM v running on n1.
    fn cluster() -> ClusterState {
        let mut state = ClusterState::default();
        node(&mut state, "n1");
        node(&mut state, "n2");
        let spec = VmSpec {
            cpus: 1,
            memory_mib: 1024,
            disks: vec![],
            labels: Default::default(),
            ha: false,
            priority: 0,
            constraints: Default::default(),
            guest: Default::default(),
        };
        apply(
            &mut state,
            Command::VmCreate {
                name: "v".into(),
                spec,
                desired: Desired::Running,
            },
        )
        .expect("create");
        apply(
            &mut state,
            Command::VmPlace {
                placements: vec![crate::Placement {
                    vm: "v".into(),
                    node: "n1".into(),
                }],
            },
        )
        .expect("place");
        let epoch = state.vms["v"]
            .assignment
            .as_ref()
            .map(|a| a.epoch)
            .unwrap_or(0);
        apply(
            &mut state,
            Command::VmObserved {
                node: "n1".into(),
                reports: vec![VmReport {
                    vm: "v".into(),
                    epoch,
                    state: VmState::Running,
                    reason: None,
                }],
            },
        )
        .expect("observe");
        state
    }

    fn create(state: &mut ClusterState) -> u64 {
        match apply(
            state,
            Command::MigrationCreate {
                vm: "v".into(),
                destination: None,
                options: MigrationOptions::default(),
                priority: 0,
                reason: "operator".into(),
            },
        ) {
            Ok(Response::Migrations { created, .. }) => created[0].1,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_migration_moves_ownership_in_one_command_with_a_new_epoch() {
        let mut state = cluster();
        let before = state.vms["v"].assignment.clone().expect("assigned");
        let id = create(&mut state);
        apply(
            &mut state,
            Command::MigrationStart {
                id,
                destination: "n2".into(),
            },
        )
        .expect("start");
        assert_eq!(state.nodes["n2"].allocated.memory_mib, 1024, "reserved");
        apply(
            &mut state,
            Command::MigrationPrepared {
                id,
                address: "127.0.0.1:9".into(),
                prepare_ms: 5,
            },
        )
        .expect("prepared");
        // Still the source's until the switch.
        assert_eq!(state.vms["v"].assignment.as_ref(), Some(&before));
        apply(&mut state, Command::MigrationSwitch { id }).expect("switch");
        let after = state.vms["v"].assignment.clone().expect("assigned");
        assert_eq!(after.node, "n2");
        assert!(after.epoch > before.epoch);
        assert_eq!(state.nodes["n1"].allocated.memory_mib, 0);
        assert_eq!(state.nodes["n2"].allocated.memory_mib, 1024);
        // Cancel is too late now, and a second switch is refused.
        assert!(apply(&mut state, Command::MigrationCancel { id }).is_err());
        assert!(apply(&mut state, Command::MigrationSwitch { id }).is_err());
        apply(
            &mut state,
            Command::MigrationFinish {
                id,
                figures: Some(MigrationFigures::default()),
            },
        )
        .expect("finish");
        assert_eq!(state.migrations[&id].phase, Phase::Completed);
    }

    #[test]
    fn failure_before_the_switch_releases_the_reservation_and_waits_for_the_source() {
        let mut state = cluster();
        let id = create(&mut state);
        apply(
            &mut state,
            Command::MigrationStart {
                id,
                destination: "n2".into(),
            },
        )
        .expect("start");
        apply(
            &mut state,
            Command::MigrationFail {
                id,
                reason: "link cut".into(),
            },
        )
        .expect("fail");
        assert_eq!(state.nodes["n2"].allocated.memory_mib, 0);
        assert_eq!(state.migrations[&id].phase, Phase::Failed);
        assert!(!state.migrations[&id].source_resumed);
        // A switch after the failure is refused: the VM stays at the source.
        assert!(apply(&mut state, Command::MigrationSwitch { id }).is_err());
        assert_eq!(
            state.vms["v"].assignment.as_ref().map(|a| a.node.as_str()),
            Some("n1")
        );
        apply(
            &mut state,
            Command::MigrationRolledBack {
                id,
                reason: None,
                figures: None,
            },
        )
        .expect("rolled back");
        assert_eq!(state.migrations[&id].phase, Phase::RolledBack);
        assert!(state.migrations[&id].source_resumed);
    }

    #[test]
    fn a_vm_migrates_once_at_a_time_and_only_when_running() {
        let mut state = cluster();
        create(&mut state);
        let again = apply(
            &mut state,
            Command::MigrationCreate {
                vm: "v".into(),
                destination: None,
                options: MigrationOptions::default(),
                priority: 0,
                reason: "operator".into(),
            },
        );
        assert!(
            matches!(again, Err(Rejection::FailedPrecondition { reason }) if reason.contains("already migrating"))
        );
        let to_itself = apply(
            &mut state,
            Command::MigrationCreate {
                vm: "v".into(),
                destination: Some("n1".into()),
                options: MigrationOptions::default(),
                priority: 0,
                reason: "operator".into(),
            },
        );
        assert!(to_itself.is_err());
    }

    #[test]
    fn a_node_going_down_fails_its_migrations() {
        let mut state = cluster();
        let id = create(&mut state);
        apply(
            &mut state,
            Command::MigrationStart {
                id,
                destination: "n2".into(),
            },
        )
        .expect("start");
        apply(&mut state, Command::NodeDown { name: "n2".into() }).expect("down");
        assert_eq!(state.migrations[&id].phase, Phase::Failed);
        assert_eq!(state.nodes["n2"].allocated.memory_mib, 0);
    }

    #[test]
    fn drain_cordons_and_asks_for_one_migration_per_running_vm() {
        let mut state = cluster();
        let out = apply(
            &mut state,
            Command::NodeDrain {
                name: "n1".into(),
                evacuate: false,
            },
        );
        let Ok(Response::Migrations { created, refused }) = out else {
            panic!("{out:?}");
        };
        assert_eq!(created.len(), 1);
        assert!(refused.is_empty());
        assert!(state.nodes["n1"].cordoned);
        assert_eq!(state.migrations[&created[0].1].reason, "drain n1");
    }
}
