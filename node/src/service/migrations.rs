//! The Migrations service: ask for, list, watch and cancel live migrations. Reads go to the
//! leader, which merges the committed objects with the live progress sources report to it.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use paddock_api::convert::migration_info;
use paddock_api::pb::{self, migrations_client, migrations_server};
use paddock_model::access::Caller;
use paddock_model::{Command, Query, QueryResult, Response as Applied};
use tonic::{Request, Response, Status};

use super::{authorized, caller, leader_elsewhere, member, reply, unexpected};
use crate::ops::{Action, Ops};
use crate::progress_board::ProgressBoard;

pub struct MigrationsService {
    pub ops: Arc<Ops>,
    pub board: Arc<ProgressBoard>,
}

impl MigrationsService {
    fn client(
        &self,
        address: &str,
    ) -> Result<migrations_client::MigrationsClient<tonic::transport::Channel>, Status> {
        Ok(migrations_client::MigrationsClient::new(
            self.ops.proposer().channel(address)?,
        ))
    }

    async fn get_here(&self, who: &Caller, id: u64) -> Result<pb::MigrationInfo, Status> {
        match self.ops.read(who, Query::MigrationGet { id }, false).await? {
            QueryResult::Migration(Some(m)) => {
                Ok(migration_info(&m, self.board.get(id).map(|(p, _)| p)))
            }
            QueryResult::Migration(None) => Err(Status::not_found(format!(
                "migration {id} does not exist (finished ones are kept for the last 1000); see `paddock migration list --all`"
            ))),
            other => Err(unexpected(&other)),
        }
    }
}

type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::MigrationInfo, Status>> + Send>>;

#[tonic::async_trait]
impl migrations_server::Migrations for MigrationsService {
    async fn create(
        &self,
        request: Request<pb::MigrationCreateRequest>,
    ) -> Result<Response<pb::MigrationCreateResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let command = r.command().map_err(super::refused)?;
        created(&self.ops, &who, r.request_id, command).await
    }

    async fn list(
        &self,
        request: Request<pb::MigrationListRequest>,
    ) -> Result<Response<pb::MigrationListResponse>, Status> {
        let who = authorized(&self.ops, &request, Action::MigrationRead).await?;
        let finished = request.into_inner().finished;
        if let Some(address) = leader_elsewhere(self.ops.proposer())? {
            return self
                .client(&address)?
                .list(pb::MigrationListRequest { finished })
                .await;
        }
        match self
            .ops
            .read(&who, Query::MigrationList { finished }, false)
            .await?
        {
            QueryResult::Migrations(list) => Ok(reply(
                self.ops.proposer(),
                pb::MigrationListResponse {
                    migrations: list
                        .iter()
                        .map(|m| migration_info(m, self.board.get(m.id).map(|(p, _)| p)))
                        .collect(),
                },
            )),
            other => Err(unexpected(&other)),
        }
    }

    async fn get(
        &self,
        request: Request<pb::MigrationGetRequest>,
    ) -> Result<Response<pb::MigrationInfo>, Status> {
        let who = authorized(&self.ops, &request, Action::MigrationRead).await?;
        let id = request.into_inner().id;
        if let Some(address) = leader_elsewhere(self.ops.proposer())? {
            return self
                .client(&address)?
                .get(pb::MigrationGetRequest { id })
                .await;
        }
        Ok(reply(self.ops.proposer(), self.get_here(&who, id).await?))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::MigrationGetRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let who = authorized(&self.ops, &request, Action::MigrationRead).await?;
        let id = request.into_inner().id;
        // Each update is a Get answered by the leader (whichever node that is by then), so a
        // watch survives leader changes.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let ops = self.ops.clone();
        let board = self.board.clone();
        tokio::spawn(async move {
            let here = MigrationsService { ops, board };
            let mut last: Option<pb::MigrationInfo> = None;
            loop {
                let next = match leader_elsewhere(here.ops.proposer()) {
                    Ok(Some(address)) => match here.client(&address) {
                        Ok(mut client) => client
                            .get(pb::MigrationGetRequest { id })
                            .await
                            .map(Response::into_inner),
                        Err(e) => Err(e),
                    },
                    Ok(None) => here.get_here(&who, id).await,
                    Err(e) => Err(e),
                };
                match next {
                    Ok(info) => {
                        let ended = info.ended_ms > 0;
                        if last.as_ref() != Some(&info) {
                            if tx.send(Ok(info.clone())).await.is_err() {
                                return;
                            }
                            last = Some(info);
                        }
                        if ended {
                            return;
                        }
                    }
                    Err(status) if status.code() == tonic::Code::NotFound => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    // Elections and lost connections: keep watching.
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn cancel(
        &self,
        request: Request<pb::MigrationCancelRequest>,
    ) -> Result<Response<pb::MigrationCancelResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        self.ops
            .done(&who, r.request_id.map(Into::into), r.command())
            .await?;
        Ok(reply(self.ops.proposer(), pb::MigrationCancelResponse {}))
    }

    async fn report(
        &self,
        request: Request<pb::MigrationReport>,
    ) -> Result<Response<pb::MigrationReportResponse>, Status> {
        member(&request)?;
        let pb::MigrationReport { id, progress } = request.into_inner();
        let progress = progress
            .ok_or_else(|| Status::invalid_argument("a migration report needs its progress"))?
            .into();
        self.board.put(id, progress, std::time::Instant::now());
        Ok(Response::new(pb::MigrationReportResponse {}))
    }
}

/// Proposes a command that answers `Migrations` (a migration asked for, a drain) and converts
/// the answer.
pub async fn created(
    ops: &Ops,
    who: &Caller,
    request_id: Option<pb::RequestId>,
    command: Command,
) -> Result<Response<pb::MigrationCreateResponse>, Status> {
    match ops.write(who, request_id.map(Into::into), command).await? {
        Applied::Migrations { created, refused } => Ok(reply(
            ops.proposer(),
            pb::MigrationCreateResponse {
                created: created
                    .into_iter()
                    .map(|(vm, id)| pb::MigrationCreated { vm, id })
                    .collect(),
                refused: refused
                    .into_iter()
                    .map(|(vm, reason)| pb::MigrationRefused { vm, reason })
                    .collect(),
            },
        )),
        other => Err(unexpected(&other)),
    }
}
