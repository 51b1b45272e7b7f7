//! The Vms service: VM lifecycle. Writes become commands in the log; reads are linearizable
//! unless `stale`.

use std::sync::Arc;

use paddock_api::pb::{self, vms_server};
use paddock_model::command::NewVm;
use paddock_model::query::MAX_LIST_LIMIT;
use paddock_model::vm::Desired;
use paddock_model::{Command, Query, QueryResult, VmSpec};
use tonic::{Request, Response, Status};

use super::{caller, reply, unexpected};
use crate::ops::Ops;

pub struct VmsService {
    pub ops: Arc<Ops>,
}

#[tonic::async_trait]
impl vms_server::Vms for VmsService {
    async fn create(
        &self,
        request: Request<pb::VmCreateRequest>,
    ) -> Result<Response<pb::VmCreateResponse>, Status> {
        let who = caller(&request)?;
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
        let desired = if stopped {
            Desired::Stopped
        } else {
            Desired::Running
        };
        self.ops
            .done(
                &who,
                request_id.map(Into::into),
                Command::VmCreate {
                    name,
                    spec,
                    desired,
                },
            )
            .await?;
        Ok(reply(self.ops.proposer(), pb::VmCreateResponse {}))
    }

    async fn create_many(
        &self,
        request: Request<pb::VmCreateManyRequest>,
    ) -> Result<Response<pb::VmCreateResponse>, Status> {
        let who = caller(&request)?;
        let pb::VmCreateManyRequest { vms, request_id } = request.into_inner();
        let mut new = Vec::with_capacity(vms.len());
        for vm in vms {
            let spec = VmSpec::from(&vm.spec.unwrap_or_default());
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
        self.ops
            .done(
                &who,
                request_id.map(Into::into),
                Command::VmCreateMany { vms: new },
            )
            .await?;
        Ok(reply(self.ops.proposer(), pb::VmCreateResponse {}))
    }

    async fn list(
        &self,
        request: Request<pb::VmListRequest>,
    ) -> Result<Response<pb::VmListResponse>, Status> {
        let who = caller(&request)?;
        let pb::VmListRequest {
            start_after,
            limit,
            stale,
        } = request.into_inner();
        let query = Query::VmList {
            start_after: (!start_after.is_empty()).then_some(start_after),
            limit: if limit == 0 { MAX_LIST_LIMIT } else { limit },
        };
        match self.ops.read(&who, query, stale).await? {
            QueryResult::Vms { vms, more } => Ok(reply(
                self.ops.proposer(),
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
        let who = caller(&request)?;
        let pb::VmGetRequest { name, stale } = request.into_inner();
        match self
            .ops
            .read(&who, Query::VmGet { name: name.clone() }, stale)
            .await?
        {
            QueryResult::Vm(Some(vm)) => Ok(reply(self.ops.proposer(), vm.as_ref().into())),
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
        let who = caller(&request)?;
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
        self.ops
            .done(
                &who,
                request_id.map(Into::into),
                Command::VmSetDesired { name, desired },
            )
            .await?;
        Ok(reply(self.ops.proposer(), pb::VmSetDesiredResponse {}))
    }

    async fn delete(
        &self,
        request: Request<pb::VmDeleteRequest>,
    ) -> Result<Response<pb::VmDeleteResponse>, Status> {
        let who = caller(&request)?;
        let pb::VmDeleteRequest { name, request_id } = request.into_inner();
        self.ops
            .done(&who, request_id.map(Into::into), Command::VmDelete { name })
            .await?;
        Ok(reply(self.ops.proposer(), pb::VmDeleteResponse {}))
    }
}
