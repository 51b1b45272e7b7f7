//! VM specs, summaries and details.

use paddock_model::command::NewVm;
use paddock_model::query::{VmSummary, MAX_LIST_LIMIT};
use paddock_model::vm::{Constraints, Desired, Disk, DiskPolicy, Guest};
use paddock_model::{Command, Query, Rejection, Vm, VmSpec};

use super::non_empty;
use crate::pb;

impl TryFrom<&pb::VmSpec> for VmSpec {
    type Error = String;

    fn try_from(spec: &pb::VmSpec) -> Result<Self, String> {
        let disk_policy = match spec.disk_policy.as_str() {
            "" => DiskPolicy::default(),
            text => DiskPolicy::parse(text)?,
        };
        Ok(VmSpec {
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            disks: spec
                .disks
                .iter()
                .map(|d| Disk {
                    size_mib: d.size_mib,
                    image: non_empty(&d.image),
                })
                .collect(),
            labels: spec.labels.clone().into_iter().collect(),
            ha: spec.ha,
            priority: u16::try_from(spec.priority).unwrap_or(u16::MAX),
            constraints: Constraints {
                node_selector: spec.node_selector.clone().into_iter().collect(),
                anti_affinity: non_empty(&spec.anti_affinity),
                affinity: non_empty(&spec.affinity),
                prefer: spec.prefer.clone(),
            },
            guest: Guest {
                kernel: non_empty(&spec.kernel),
                initrd: non_empty(&spec.initrd),
                cmdline: non_empty(&spec.cmdline),
                env: spec.env.clone().into_iter().collect(),
                disk_policy,
            },
        })
    }
}

impl From<&VmSpec> for pb::VmSpec {
    fn from(spec: &VmSpec) -> Self {
        pb::VmSpec {
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            disks: spec
                .disks
                .iter()
                .map(|d| pb::Disk {
                    size_mib: d.size_mib,
                    image: d.image.clone().unwrap_or_default(),
                })
                .collect(),
            labels: spec.labels.clone().into_iter().collect(),
            ha: spec.ha,
            priority: u32::from(spec.priority),
            node_selector: spec.constraints.node_selector.clone().into_iter().collect(),
            anti_affinity: spec.constraints.anti_affinity.clone().unwrap_or_default(),
            affinity: spec.constraints.affinity.clone().unwrap_or_default(),
            prefer: spec.constraints.prefer.clone(),
            kernel: spec.guest.kernel.clone().unwrap_or_default(),
            initrd: spec.guest.initrd.clone().unwrap_or_default(),
            cmdline: spec.guest.cmdline.clone().unwrap_or_default(),
            env: spec.guest.env.clone().into_iter().collect(),
            disk_policy: spec.guest.disk_policy.name().to_string(),
        }
    }
}

impl From<&VmSummary> for pb::VmSummary {
    fn from(vm: &VmSummary) -> Self {
        pb::VmSummary {
            name: vm.name.clone(),
            node: vm.node.clone().unwrap_or_default(),
            state: vm.observed.name().to_string(),
            desired: vm.desired.name().to_string(),
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            ha: vm.ha,
            epoch: vm.epoch,
            addresses: vm.addresses.clone(),
        }
    }
}

impl From<&Vm> for pb::VmSummary {
    fn from(vm: &Vm) -> Self {
        (&VmSummary::from(vm)).into()
    }
}

impl From<&Vm> for pb::VmDetail {
    fn from(vm: &Vm) -> Self {
        pb::VmDetail {
            summary: Some(vm.into()),
            spec: Some((&vm.spec).into()),
            reason: vm.reason.clone().unwrap_or_default(),
            waiting: vm.waiting.clone().unwrap_or_default(),
            events: vm
                .events
                .iter()
                .map(|e| pb::VmEvent {
                    at_ms: e.at_ms,
                    message: e.message.clone(),
                })
                .collect(),
            created_ms: vm.created_ms,
        }
    }
}

fn desired(running: bool) -> Desired {
    if running {
        Desired::Running
    } else {
        Desired::Stopped
    }
}

impl pb::VmCreateRequest {
    fn new_vm(&self) -> Result<NewVm, Rejection> {
        let spec = VmSpec::try_from(&self.spec.clone().unwrap_or_default())
            .map_err(|reason| Rejection::Invalid { reason })?;
        Ok(NewVm {
            name: self.name.clone(),
            spec,
            desired: desired(!self.stopped),
        })
    }

    pub fn command(&self) -> Result<Command, Rejection> {
        if self.spec.is_none() {
            return Err(Rejection::Invalid {
                reason: "the VM spec is missing; give at least cpus and memory".into(),
            });
        }
        let NewVm {
            name,
            spec,
            desired,
        } = self.new_vm()?;
        Ok(Command::VmCreate {
            name,
            spec,
            desired,
        })
    }
}

impl pb::VmCreateManyRequest {
    pub fn command(&self) -> Result<Command, Rejection> {
        Ok(Command::VmCreateMany {
            vms: self
                .vms
                .iter()
                .map(pb::VmCreateRequest::new_vm)
                .collect::<Result<_, _>>()?,
        })
    }
}

impl pb::VmSetDesiredRequest {
    pub fn command(&self) -> Command {
        Command::VmSetDesired {
            name: self.name.clone(),
            desired: desired(self.running),
        }
    }
}

impl pb::VmDeleteRequest {
    pub fn command(&self) -> Command {
        Command::VmDelete {
            name: self.name.clone(),
        }
    }
}

impl pb::VmListRequest {
    pub fn query(&self) -> Query {
        Query::VmList {
            start_after: (!self.start_after.is_empty()).then(|| self.start_after.clone()),
            limit: if self.limit == 0 {
                MAX_LIST_LIMIT
            } else {
                self.limit
            },
            filter: paddock_model::query::VmFilter {
                node: (!self.node.is_empty()).then(|| self.node.clone()),
                state: (!self.state.is_empty()).then(|| self.state.clone()),
                search: (!self.search.is_empty()).then(|| self.search.clone()),
                scopes: None,
            },
        }
    }
}
