//! The Kv service: the cluster key/value space.

use std::sync::Arc;

use paddock_api::convert::{join_option, split_option};
use paddock_api::pb::{self, kv_server};
use paddock_model::query::MAX_LIST_LIMIT;
use paddock_model::{Command, Query, QueryResult, Rejection, Response as Applied};
use tonic::{Request, Response, Status};

use super::{caller, refused, reply, require_writer, unexpected, write};
use crate::proposer::Proposer;

pub struct KvService {
    pub proposer: Arc<Proposer>,
}

impl KvService {
    fn reply<T>(&self, message: T) -> Response<T> {
        reply(&self.proposer, message)
    }

    async fn write(
        &self,
        id: Option<pb::RequestId>,
        command: Command,
    ) -> Result<Result<Applied, Rejection>, Status> {
        write(&self.proposer, id, command).await
    }
}

#[tonic::async_trait]
impl kv_server::Kv for KvService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        caller(&request)?;
        let pb::GetRequest { key, stale } = request.into_inner();
        match self.proposer.read(Query::KvGet { key }, stale).await? {
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
        require_writer(&request)?;
        let request = request.into_inner();
        match self.write(request.request_id, request.command()).await? {
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
        require_writer(&request)?;
        let request = request.into_inner();
        match self.write(request.request_id, request.command()).await? {
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
        require_writer(&request)?;
        let request = request.into_inner();
        match self.write(request.request_id, request.command()).await? {
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
        caller(&request)?;
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
        match self.proposer.read(query, request.stale).await? {
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
