//! The Nodes, Vms and Settings services: the inventory, VM lifecycle and cluster settings.
//! Writes become commands in the log; reads are linearizable unless `stale`.

use std::sync::Arc;

use paddock_api::pb::{self, nodes_client, nodes_server, settings_server, vms_server};
use paddock_model::command::NewVm;
use paddock_model::query::{NodeEntry, MAX_LIST_LIMIT};
use paddock_model::vm::Desired;
use paddock_model::{Command, Query, QueryResult, Response as Applied, VmSpec};
use paddock_raft::SharedState;
use tonic::{Request, Response, Status};

use super::{
    caller, leader_elsewhere, refused, reply, require_writer, unexpected, write, NO_LEADER,
};
use crate::proposer::Proposer;

/// A write that answers `Done` on success.
async fn done(
    proposer: &Proposer,
    id: Option<pb::RequestId>,
    command: Command,
) -> Result<(), Status> {
    match write(proposer, id, command).await? {
        Ok(Applied::Done) => Ok(()),
        Ok(other) => Err(unexpected(&other)),
        Err(rejection) => Err(refused(rejection)),
    }
}

pub struct NodesService {
    pub proposer: Arc<Proposer>,
    pub shared: SharedState,
    pub raft: paddock_raft::Raft,
    /// The leader's memory of heartbeats: nodes silent for more than two heartbeat intervals
    /// are listed as `suspect` (never committed: only `down` is).
    pub heard: Arc<crate::liveness::Heard>,
}

impl NodesService {
    /// On the leader: nodes it has not heard from for two heartbeat intervals are `suspect`.
    fn mark_suspects(&self, nodes: &mut [pb::NodeInfo]) {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(metrics.id) {
            return;
        }
        let heartbeat = self.shared.read().state.settings.heartbeat_ms;
        let now = std::time::Instant::now();
        for node in nodes {
            if matches!(node.state.as_str(), "ready" | "cordoned") {
                let silent = self.heard.silent_for(&node.name, metrics.current_term, now);
                if silent.as_millis() as u64 > 2 * heartbeat {
                    node.state = "suspect".into();
                }
            }
        }
    }

    /// `entry` as the API shows it; `members` gives the node's address (Raft membership).
    fn info(
        entry: NodeEntry,
        members: &std::collections::BTreeMap<String, paddock_model::Member>,
    ) -> pb::NodeInfo {
        let NodeEntry { node, vms } = entry;
        let address = members
            .get(&node.name)
            .map(|m| m.address.clone())
            .unwrap_or_default();
        let free = node.free();
        pb::NodeInfo {
            address,
            state: node.state_name().to_string(),
            cpus: node.capacity.cpus,
            memory_mib: node.capacity.memory_mib,
            disk_mib: node.capacity.disk_mib,
            cpus_free: free.cpus,
            memory_free_mib: free.memory_mib,
            disk_free_mib: free.disk_mib,
            labels: node.labels.into_iter().collect(),
            vms,
            driver: node.driver,
            name: node.name,
        }
    }
}

#[tonic::async_trait]
impl nodes_server::Nodes for NodesService {
    async fn list(
        &self,
        request: Request<pb::NodeListRequest>,
    ) -> Result<Response<pb::NodeListResponse>, Status> {
        caller(&request)?;
        let stale = request.into_inner().stale;
        // Only the leader knows who is suspect: a linearizable list is answered by it.
        if !stale {
            let leader = leader_elsewhere(&self.proposer)
                .map_err(|_| Status::unavailable(format!("{NO_LEADER}, or pass --stale")))?;
            if let Some(address) = leader {
                let channel = self.proposer.channel(&address)?;
                return nodes_client::NodesClient::new(channel)
                    .list(pb::NodeListRequest { stale: false })
                    .await;
            }
        }
        match self.proposer.read(Query::NodeList, stale).await? {
            QueryResult::Nodes(entries) => {
                let mut nodes: Vec<pb::NodeInfo> = {
                    let members = self.shared.read().state.members.clone();
                    entries
                        .into_iter()
                        .map(|e| Self::info(e, &members))
                        .collect()
                };
                self.mark_suspects(&mut nodes);
                Ok(reply(&self.proposer, pb::NodeListResponse { nodes }))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn cordon(
        &self,
        request: Request<pb::CordonRequest>,
    ) -> Result<Response<pb::CordonResponse>, Status> {
        require_writer(&request)?;
        let pb::CordonRequest {
            name,
            cordoned,
            request_id,
        } = request.into_inner();
        done(
            &self.proposer,
            request_id,
            Command::NodeCordon { name, cordoned },
        )
        .await?;
        Ok(reply(&self.proposer, pb::CordonResponse {}))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::MigrationCreateResponse>, Status> {
        require_writer(&request)?;
        let pb::DrainRequest {
            name,
            evacuate,
            request_id,
        } = request.into_inner();
        super::migrations::created(
            &self.proposer,
            request_id,
            Command::NodeDrain { name, evacuate },
        )
        .await
    }

    async fn maintenance(
        &self,
        request: Request<pb::MaintenanceRequest>,
    ) -> Result<Response<pb::CordonResponse>, Status> {
        require_writer(&request)?;
        let pb::MaintenanceRequest {
            name,
            on,
            request_id,
        } = request.into_inner();
        done(
            &self.proposer,
            request_id,
            Command::NodeMaintenance { name, on },
        )
        .await?;
        Ok(reply(&self.proposer, pb::CordonResponse {}))
    }
}

pub struct VmsService {
    pub proposer: Arc<Proposer>,
}

#[tonic::async_trait]
impl vms_server::Vms for VmsService {
    async fn create(
        &self,
        request: Request<pb::VmCreateRequest>,
    ) -> Result<Response<pb::VmCreateResponse>, Status> {
        require_writer(&request)?;
        let pb::VmCreateRequest {
            name,
            spec,
            stopped,
            request_id,
        } = request.into_inner();
        let spec = spec.ok_or_else(|| {
            Status::invalid_argument("the VM spec is missing; give at least cpus and memory")
        })?;
        let spec = VmSpec::from(&spec);
        // Refuse bad specs here too, so they never reach the log.
        spec.validate().map_err(Status::invalid_argument)?;
        let desired = if stopped {
            Desired::Stopped
        } else {
            Desired::Running
        };
        done(
            &self.proposer,
            request_id,
            Command::VmCreate {
                name,
                spec,
                desired,
            },
        )
        .await?;
        Ok(reply(&self.proposer, pb::VmCreateResponse {}))
    }

    async fn create_many(
        &self,
        request: Request<pb::VmCreateManyRequest>,
    ) -> Result<Response<pb::VmCreateResponse>, Status> {
        require_writer(&request)?;
        let pb::VmCreateManyRequest { vms, request_id } = request.into_inner();
        let mut new = Vec::with_capacity(vms.len());
        for vm in vms {
            let spec = VmSpec::from(&vm.spec.unwrap_or_default());
            spec.validate()
                .map_err(|e| Status::invalid_argument(format!("{}: {e}", vm.name)))?;
            new.push(NewVm {
                name: vm.name,
                spec,
                desired: if vm.stopped {
                    Desired::Stopped
                } else {
                    Desired::Running
                },
            });
        }
        done(
            &self.proposer,
            request_id,
            Command::VmCreateMany { vms: new },
        )
        .await?;
        Ok(reply(&self.proposer, pb::VmCreateResponse {}))
    }

    async fn list(
        &self,
        request: Request<pb::VmListRequest>,
    ) -> Result<Response<pb::VmListResponse>, Status> {
        caller(&request)?;
        let pb::VmListRequest {
            start_after,
            limit,
            stale,
        } = request.into_inner();
        let query = Query::VmList {
            start_after: (!start_after.is_empty()).then_some(start_after),
            limit: if limit == 0 { MAX_LIST_LIMIT } else { limit },
        };
        match self.proposer.read(query, stale).await? {
            QueryResult::Vms { vms, more } => Ok(reply(
                &self.proposer,
                pb::VmListResponse {
                    vms: vms.iter().map(Into::into).collect(),
                    more,
                },
            )),
            other => Err(unexpected(&other)),
        }
    }

    async fn get(
        &self,
        request: Request<pb::VmGetRequest>,
    ) -> Result<Response<pb::VmDetail>, Status> {
        caller(&request)?;
        let pb::VmGetRequest { name, stale } = request.into_inner();
        match self
            .proposer
            .read(Query::VmGet { name: name.clone() }, stale)
            .await?
        {
            QueryResult::Vm(Some(vm)) => Ok(reply(&self.proposer, vm.as_ref().into())),
            QueryResult::Vm(None) => Err(Status::not_found(format!(
                "VM {name} does not exist; see `paddock vm list`"
            ))),
            other => Err(unexpected(&other)),
        }
    }

    async fn set_desired(
        &self,
        request: Request<pb::VmSetDesiredRequest>,
    ) -> Result<Response<pb::VmSetDesiredResponse>, Status> {
        require_writer(&request)?;
        let pb::VmSetDesiredRequest {
            name,
            running,
            request_id,
        } = request.into_inner();
        let desired = if running {
            Desired::Running
        } else {
            Desired::Stopped
        };
        done(
            &self.proposer,
            request_id,
            Command::VmSetDesired { name, desired },
        )
        .await?;
        Ok(reply(&self.proposer, pb::VmSetDesiredResponse {}))
    }

    async fn delete(
        &self,
        request: Request<pb::VmDeleteRequest>,
    ) -> Result<Response<pb::VmDeleteResponse>, Status> {
        require_writer(&request)?;
        let pb::VmDeleteRequest { name, request_id } = request.into_inner();
        done(&self.proposer, request_id, Command::VmDelete { name }).await?;
        Ok(reply(&self.proposer, pb::VmDeleteResponse {}))
    }
}

pub struct SettingsService {
    pub proposer: Arc<Proposer>,
}

#[tonic::async_trait]
impl settings_server::Settings for SettingsService {
    async fn list(
        &self,
        request: Request<pb::SettingsListRequest>,
    ) -> Result<Response<pb::SettingsListResponse>, Status> {
        caller(&request)?;
        match self.proposer.read(Query::Settings, false).await? {
            QueryResult::Settings(settings) => Ok(reply(
                &self.proposer,
                pb::SettingsListResponse {
                    settings: settings.into_iter().collect(),
                },
            )),
            other => Err(unexpected(&other)),
        }
    }

    async fn set(
        &self,
        request: Request<pb::SettingSetRequest>,
    ) -> Result<Response<pb::SettingSetResponse>, Status> {
        super::require_admin(&request)?;
        let pb::SettingSetRequest {
            key,
            value,
            request_id,
        } = request.into_inner();
        // Check here too, so a bad value never reaches the log.
        paddock_model::settings::Settings::default()
            .set(&key, &value)
            .map_err(Status::invalid_argument)?;
        done(
            &self.proposer,
            request_id,
            Command::SettingSet { key, value },
        )
        .await?;
        Ok(reply(&self.proposer, pb::SettingSetResponse {}))
    }
}
