//! The Migrations service: ask for, list, watch and cancel live migrations. Reads go to the
//! leader, which merges the committed objects with the live progress sources report to it.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use paddock_api::convert::migration_info;
use paddock_api::pb::{self, migrations_client, migrations_server};
use paddock_model::migration::{MigrationMode, MigrationOptions};
use paddock_model::{Command, Query, QueryResult, Response as Applied};
use tonic::{Request, Response, Status};

use super::{
    caller, leader_elsewhere, refused, reply, require_node, require_writer, unexpected, write,
};
use crate::progress_board::ProgressBoard;
use crate::proposer::Proposer;

pub struct MigrationsService {
    pub proposer: Arc<Proposer>,
    pub board: Arc<ProgressBoard>,
}

impl MigrationsService {
    fn client(
        &self,
        address: &str,
    ) -> Result<migrations_client::MigrationsClient<tonic::transport::Channel>, Status> {
        Ok(migrations_client::MigrationsClient::new(
            self.proposer.channel(address)?,
        ))
    }

    async fn get_here(&self, id: u64) -> Result<pb::MigrationInfo, Status> {
        match self.proposer.read(Query::MigrationGet { id }, false).await? {
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
        require_writer(&request)?;
        let r = request.into_inner();
        let mode = if r.mode.is_empty() {
            MigrationMode::Auto
        } else {
            MigrationMode::parse(&r.mode).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "mode must be auto, precopy or postcopy, not {:?}",
                    r.mode
                ))
            })?
        };
        let priority = u16::try_from(r.priority)
            .ok()
            .filter(|p| *p <= 1000)
            .ok_or_else(|| Status::invalid_argument("priority must be 0–1000"))?;
        let command = Command::MigrationCreate {
            vm: r.vm,
            destination: (!r.to.is_empty()).then_some(r.to),
            options: MigrationOptions {
                mode,
                bandwidth: (r.bandwidth > 0).then_some(r.bandwidth),
                // 0: not given, the default.
                max_downtime_ms: if r.max_downtime_ms == 0 {
                    MigrationOptions::default().max_downtime_ms
                } else {
                    r.max_downtime_ms
                },
            },
            priority,
            reason: "operator".into(),
        };
        created(&self.proposer, r.request_id, command).await
    }

    async fn list(
        &self,
        request: Request<pb::MigrationListRequest>,
    ) -> Result<Response<pb::MigrationListResponse>, Status> {
        caller(&request)?;
        let finished = request.into_inner().finished;
        if let Some(address) = leader_elsewhere(&self.proposer)? {
            return self
                .client(&address)?
                .list(pb::MigrationListRequest { finished })
                .await;
        }
        match self
            .proposer
            .read(Query::MigrationList { finished }, false)
            .await?
        {
            QueryResult::Migrations(list) => Ok(reply(
                &self.proposer,
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
        caller(&request)?;
        let id = request.into_inner().id;
        if let Some(address) = leader_elsewhere(&self.proposer)? {
            return self
                .client(&address)?
                .get(pb::MigrationGetRequest { id })
                .await;
        }
        Ok(reply(&self.proposer, self.get_here(id).await?))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::MigrationGetRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        caller(&request)?;
        let id = request.into_inner().id;
        // Each update is a Get answered by the leader (whichever node that is by then), so a
        // watch survives leader changes.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let proposer = self.proposer.clone();
        let board = self.board.clone();
        tokio::spawn(async move {
            let here = MigrationsService { proposer, board };
            let mut last: Option<pb::MigrationInfo> = None;
            loop {
                let next = match leader_elsewhere(&here.proposer) {
                    Ok(Some(address)) => match here.client(&address) {
                        Ok(mut client) => client
                            .get(pb::MigrationGetRequest { id })
                            .await
                            .map(Response::into_inner),
                        Err(e) => Err(e),
                    },
                    Ok(None) => here.get_here(id).await,
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
        require_writer(&request)?;
        let pb::MigrationCancelRequest { id, request_id } = request.into_inner();
        match write(&self.proposer, request_id, Command::MigrationCancel { id }).await? {
            Ok(Applied::Done) => Ok(reply(&self.proposer, pb::MigrationCancelResponse {})),
            Ok(other) => Err(unexpected(&other)),
            Err(rejection) => Err(refused(rejection)),
        }
    }

    async fn report(
        &self,
        request: Request<pb::MigrationReport>,
    ) -> Result<Response<pb::MigrationReportResponse>, Status> {
        require_node(&request)?;
        let pb::MigrationReport { id, progress } = request.into_inner();
        let progress = progress
            .ok_or_else(|| Status::invalid_argument("a migration report needs its progress"))?
            .into();
        self.board.put(id, progress, std::time::Instant::now());
        Ok(Response::new(pb::MigrationReportResponse {}))
    }
}

/// Proposes a command that answers `Migrations` and converts the answer.
pub async fn created(
    proposer: &Proposer,
    request_id: Option<pb::RequestId>,
    command: Command,
) -> Result<Response<pb::MigrationCreateResponse>, Status> {
    match write(proposer, request_id, command).await? {
        Ok(Applied::Migrations { created, refused }) => Ok(reply(
            proposer,
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
        Ok(other) => Err(unexpected(&other)),
        Err(rejection) => Err(refused(rejection)),
    }
}
