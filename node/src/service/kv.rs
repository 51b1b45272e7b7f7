//! The Kv service: the cluster key/value space.

use std::sync::Arc;

use paddock_api::convert::{join_option, split_option};
use paddock_api::pb::{self, kv_server};
use paddock_model::access::Caller;
use paddock_model::query::MAX_LIST_LIMIT;
use paddock_model::{Command, Query, QueryResult, Rejection, Response as Applied};
use tonic::{Request, Response, Status};

use super::{caller, refused, reply, unexpected};
use crate::ops::{OpError, Ops};

pub struct KvService {
    pub ops: Arc<Ops>,
}

impl KvService {
    fn reply<T>(&self, message: T) -> Response<T> {
        reply(self.ops.proposer(), message)
    }

    /// The outer error is the transport's, the inner apply's answer (a CAS mismatch is an
    /// answer, not an error).
    async fn write(
        &self,
        who: &Caller,
        id: Option<pb::RequestId>,
        command: Command,
    ) -> Result<Result<Applied, Rejection>, Status> {
        match self.ops.write(who, id.map(Into::into), command).await {
            Ok(applied) => Ok(Ok(applied)),
            Err(OpError::Refused(rejection)) => Ok(Err(rejection)),
            Err(e) => Err(e.into()),
        }
    }
}

#[tonic::async_trait]
impl kv_server::Kv for KvService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let who = caller(&request)?;
        let pb::GetRequest { key, stale } = request.into_inner();
        match self.ops.read(&who, Query::KvGet { key }, stale).await? {
            QueryResult::Value(value) => {
                let (found, value) = split_option(value);
                Ok(self.reply(pb::GetResponse { found, value }))
            }
            other => Err(Status::internal(format!(
                "unexpected read answer {other:?}"
            ))),
        }
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let who = caller(&request)?;
        let request = request.into_inner();
        match self
            .write(&who, request.request_id, request.command())
            .await?
        {
            Ok(Applied::Put { previous }) => {
                let (had_previous, previous) = split_option(previous);
                Ok(self.reply(pb::PutResponse {
                    had_previous,
                    previous,
                }))
            }
            Ok(other) => Err(unexpected(&other)),
            Err(rejection) => Err(refused(rejection)),
        }
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let who = caller(&request)?;
        let request = request.into_inner();
        match self
            .write(&who, request.request_id, request.command())
            .await?
        {
            Ok(Applied::Deleted { previous }) => Ok(self.reply(pb::DeleteResponse {
                existed: previous.is_some(),
            })),
            Ok(other) => Err(unexpected(&other)),
            Err(rejection) => Err(refused(rejection)),
        }
    }

    async fn cas(
        &self,
        request: Request<pb::CasRequest>,
    ) -> Result<Response<pb::CasResponse>, Status> {
        let who = caller(&request)?;
        let request = request.into_inner();
        match self
            .write(&who, request.request_id, request.command())
            .await?
        {
            Ok(Applied::Swapped) => Ok(self.reply(pb::CasResponse {
                swapped: true,
                current_found: false,
                current: String::new(),
            })),
            Ok(other) => Err(unexpected(&other)),
            Err(Rejection::CasMismatch { current }) => {
                let (current_found, current) = split_option(current);
                Ok(self.reply(pb::CasResponse {
                    swapped: false,
                    current_found,
                    current,
                }))
            }
            Err(rejection) => Err(refused(rejection)),
        }
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let who = caller(&request)?;
        let request = request.into_inner();
        let query = Query::KvList {
            prefix: request.prefix,
            start_after: join_option(!request.start_after.is_empty(), request.start_after),
            limit: if request.limit == 0 {
                MAX_LIST_LIMIT
            } else {
                request.limit
            },
        };
        match self.ops.read(&who, query, request.stale).await? {
            QueryResult::Entries { entries, more } => Ok(self.reply(pb::ListResponse {
                entries: entries
                    .into_iter()
                    .map(|(key, value)| pb::KeyValue { key, value })
                    .collect(),
                more,
            })),
            other => Err(Status::internal(format!(
                "unexpected read answer {other:?}"
            ))),
        }
    }
}
