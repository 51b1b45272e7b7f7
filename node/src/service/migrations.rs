//! The Migrations service: ask for, list, watch and cancel live migrations. Reads go to the
//! leader, which merges the committed objects with the live progress sources report to it.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use paddock_api::pb::{self, migrations_client, migrations_server};
use paddock_migration::Progress;
use paddock_model::migration::{Migration, MigrationMode, MigrationOptions, Phase};
use paddock_model::{Command, Query, QueryResult, Response as Applied};
use tonic::{Request, Response, Status};

use super::{
    caller, leader_elsewhere, refused, reply, require_node, require_writer, unexpected, write,
};
use crate::controllers::migration::Board;
use crate::proposer::Proposer;

pub struct MigrationsService {
    pub proposer: Arc<Proposer>,
    pub board: Arc<Board>,
}

/// A migration as the API shows it: committed figures, or live ones while it runs.
pub fn info(m: &Migration, live: Option<Progress>) -> pb::MigrationInfo {
    let f = &m.figures;
    let mut out = pb::MigrationInfo {
        id: m.id,
        vm: m.vm.clone(),
        source: m.source.clone(),
        destination: m
            .destination
            .clone()
            .or(m.requested.clone())
            .unwrap_or_default(),
        mode: m.options.mode.name().into(),
        phase: m.phase.name().into(),
        reason: m.reason.clone(),
        error: m.error.clone().unwrap_or_default(),
        priority: u32::from(m.priority),
        bandwidth: m.options.bandwidth.unwrap_or(0),
        max_downtime_ms: m.options.max_downtime_ms,
        created_ms: m.created_ms,
        started_ms: m.started_ms.unwrap_or(0),
        switched_ms: m.switched_ms.unwrap_or(0),
        ended_ms: m.ended_ms.unwrap_or(0),
        total_ms: f.total_ms,
        downtime_ms: f.downtime_ms,
        prepare_ms: f.prepare_ms,
        bytes_transferred: f.bytes_transferred,
        memory_bytes: f.memory_bytes,
        memory_sent: f.memory_sent,
        round: f.rounds.saturating_sub(1),
        percent: if m.phase == Phase::Completed {
            100.0
        } else {
            0.0
        },
        compression_ratio: if f.bytes_transferred > 0 {
            f.memory_sent as f64 / f.bytes_transferred as f64
        } else {
            1.0
        },
        postcopy: f.postcopy,
        throttle: u32::from(f.throttle),
        source_verified: f.source_verified,
        counter_at_pause: f.counter_at_pause,
        digest: f.digest.clone().unwrap_or_default(),
        source_epoch: m.source_epoch,
        target_epoch: m.target_epoch,
        ..Default::default()
    };
    if let Some(p) = live.filter(|_| m.ended_ms.is_none()) {
        out.live = true;
        out.engine_phase = p.phase.clone();
        out.total_ms = p.total_ms;
        out.downtime_ms = p.downtime_ms;
        out.bytes_transferred = p.bytes_sent;
        out.memory_bytes = p.memory_bytes;
        out.memory_sent = p.memory_sent;
        out.remaining_bytes = p.remaining_bytes;
        out.rate_bps = p.rate_bps;
        out.dirty_rate_bps = p.dirty_rate_bps;
        out.round = p.round;
        out.percent = p.percent();
        out.compression_ratio = p.compression_ratio();
        out.expected_downtime_ms = p.expected_downtime_ms;
        out.eta_secs = p.eta_secs();
        out.postcopy = p.postcopy;
        out.throttle = u32::from(p.throttle);
        out.counter_at_pause = p.counter_at_pause;
        out.digest = p.digest.clone().unwrap_or_default();
    }
    out
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
                Ok(info(&m, self.board.get(id).map(|(p, _)| p)))
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
                max_downtime_ms: if r.max_downtime_ms == 0 {
                    100
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
                        .map(|m| info(m, self.board.get(m.id).map(|(p, _)| p)))
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
        let pb::MigrationReport { id, progress_json } = request.into_inner();
        let progress: Progress = serde_json::from_str(&progress_json)
            .map_err(|e| Status::invalid_argument(format!("unreadable progress: {e}")))?;
        self.board.put(id, progress);
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
