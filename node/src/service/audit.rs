//! The Audit service: the replicated audit log, and each node's recomputation of its chain.

use std::sync::Arc;

use paddock_api::pb::{self, audit_server};
use paddock_model::access::Action;
use paddock_model::audit::hex;
use paddock_model::query::AuditFilter;
use paddock_model::{Query, QueryResult};
use tonic::{Request, Response, Status};

use super::{caller, reply, unexpected};
use crate::ops::Ops;

/// Records one list answers when the request gives no limit.
const DEFAULT_LIMIT: u32 = 100;

pub struct AuditService {
    pub ops: Arc<Ops>,
    pub node: String,
}

#[tonic::async_trait]
impl audit_server::Audit for AuditService {
    async fn list(
        &self,
        request: Request<pb::AuditListRequest>,
    ) -> Result<Response<pb::AuditListResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let query = Query::Audit {
            after: r.after,
            filter: AuditFilter {
                who: (!r.who.is_empty()).then_some(r.who),
                action: (!r.action.is_empty()).then_some(r.action),
                since_ms: (r.since_ms > 0).then_some(r.since_ms),
                refused: r.refused,
            },
            limit: if r.limit == 0 { DEFAULT_LIMIT } else { r.limit },
        };
        match self.ops.read(&who, query, r.stale).await? {
            QueryResult::Audit(page) => Ok(reply(
                self.ops.proposer(),
                pb::AuditListResponse {
                    records: page
                        .records
                        .into_iter()
                        .map(|r| pb::AuditRecord {
                            hash: hex(&r.hash),
                            seq: r.seq,
                            at_ms: r.at_ms,
                            who: r.who,
                            via: r.via,
                            from: r.from,
                            action: r.action,
                            target: r.target,
                            outcome: r.outcome,
                            request: r.request,
                        })
                        .collect(),
                    more: page.more,
                    pruned_through: page.pruned_through,
                    last_seq: page.last_seq,
                },
            )),
            other => Err(unexpected(&other)),
        }
    }

    async fn verify(
        &self,
        request: Request<pb::AuditVerifyRequest>,
    ) -> Result<Response<pb::AuditVerifyResponse>, Status> {
        let who = caller(&request)?;
        self.ops.authorize(&who, Action::AuditRead).await?;
        let upto = request.into_inner().upto;
        let query = Query::AuditVerify {
            upto: (upto > 0).then_some(upto),
        };
        // This node's own replica, never another's: comparing nodes is the point. The chain
        // is recomputed off the async threads (a million records take a while).
        let shared = self.ops.shared().clone();
        let (result, applied) = tokio::task::spawn_blocking(move || {
            let applied = shared.read();
            (
                applied.state.query(&query),
                applied.last_applied.map_or(0, |l| l.index),
            )
        })
        .await
        .map_err(|e| Status::internal(format!("verifying the audit chain: {e}")))?;
        match result {
            QueryResult::AuditCheck(check) => Ok(Response::new(pb::AuditVerifyResponse {
                node: self.node.clone(),
                records: check.records,
                first_seq: check.first_seq,
                last_seq: check.last_seq,
                head: hex(&check.head),
                broken_at: check.broken_at.unwrap_or(0),
                pruned_through: check.pruned_through,
                newest_seq: check.newest_seq,
                applied_index: applied,
            })),
            other => Err(unexpected(&other)),
        }
    }
}
