//! The Vms service: VM lifecycle. Writes become commands in the log; reads are linearizable
//! unless `stale`.

use std::sync::Arc;

use paddock_api::pb::{self, vms_server};
use paddock_model::{Query, QueryResult};
use tonic::{Request, Response, Status};

use super::{caller, refused, reply, unexpected};
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
        let r = request.into_inner();
        let command = r.command().map_err(refused)?;
        self.ops
            .done(&who, r.request_id.map(Into::into), command)
            .await?;
        Ok(reply(self.ops.proposer(), pb::VmCreateResponse {}))
    }

    async fn create_many(
        &self,
        request: Request<pb::VmCreateManyRequest>,
    ) -> Result<Response<pb::VmCreateResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let command = r.command().map_err(refused)?;
        self.ops
            .done(&who, r.request_id.map(Into::into), command)
            .await?;
        Ok(reply(self.ops.proposer(), pb::VmCreateResponse {}))
    }

    async fn list(
        &self,
        request: Request<pb::VmListRequest>,
    ) -> Result<Response<pb::VmListResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let (query, stale) = (r.query(), r.stale);
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
        let r = request.into_inner();
        self.ops
            .done(&who, r.request_id.map(Into::into), r.command())
            .await?;
        Ok(reply(self.ops.proposer(), pb::VmSetDesiredResponse {}))
    }

    async fn delete(
        &self,
        request: Request<pb::VmDeleteRequest>,
    ) -> Result<Response<pb::VmDeleteResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        self.ops
            .done(&who, r.request_id.map(Into::into), r.command())
            .await?;
        Ok(reply(self.ops.proposer(), pb::VmDeleteResponse {}))
    }
}
