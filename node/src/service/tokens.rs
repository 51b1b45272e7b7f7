//! The Tokens service: API tokens for the HTTPS API and the dashboard (admins only).

use std::sync::Arc;

use paddock_api::pb::{self, tokens_server};
use paddock_model::{Command, Query, QueryResult};
use tonic::{Request, Response, Status};

use super::{caller, reply, unexpected};
use crate::ops::tokens::{new_secret, token_text};
use crate::ops::Ops;

pub struct TokensService {
    pub ops: Arc<Ops>,
}

/// Longest a token may live: ten years (longer is "until revoked": ttl 0).
const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

#[tonic::async_trait]
impl tokens_server::Tokens for TokensService {
    async fn create(
        &self,
        request: Request<pb::TokenCreateRequest>,
    ) -> Result<Response<pb::TokenCreated>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        if r.ttl_secs > MAX_TTL_SECS {
            return Err(Status::invalid_argument(format!(
                "a token lives at most {MAX_TTL_SECS} s (ten years); give 0 for one that lives until revoked"
            )));
        }
        let scope = parse_scope(&r.scope)?;
        let (secret, sha256) = new_secret().map_err(Status::internal)?;
        let ttl_ms = (r.ttl_secs > 0).then(|| r.ttl_secs * 1000);
        self.ops
            .done(
                &who,
                None,
                Command::TokenCreate {
                    name: r.name.clone(),
                    role: r.role.clone(),
                    sha256,
                    ttl_ms,
                    by: who.name.clone(),
                    scope,
                },
            )
            .await?;
        let expires_ms = match self.ops.shared().read().state.tokens.get(&r.name) {
            Some(token) => token.expires_ms,
            None => None,
        };
        Ok(reply(
            self.ops.proposer(),
            pb::TokenCreated {
                token: token_text(&r.name, &secret),
                name: r.name,
                expires_ms,
            },
        ))
    }

    async fn list(
        &self,
        request: Request<pb::TokenListRequest>,
    ) -> Result<Response<pb::TokenListResponse>, Status> {
        let who = caller(&request)?;
        let now = crate::ops::tokens::now_ms();
        match self.ops.read(&who, Query::Tokens, false).await? {
            QueryResult::Tokens(tokens) => Ok(reply(
                self.ops.proposer(),
                pb::TokenListResponse {
                    tokens: tokens
                        .into_iter()
                        .map(|(name, t)| pb::TokenInfo {
                            expired: !t.valid_at(now),
                            name,
                            role: t.role,
                            created_ms: t.created_ms,
                            expires_ms: t.expires_ms,
                            created_by: t.created_by,
                            scope: t.scope.map(|s| s.to_string()).unwrap_or_default(),
                        })
                        .collect(),
                },
            )),
            other => Err(unexpected(&other)),
        }
    }

    async fn revoke(
        &self,
        request: Request<pb::TokenRevokeRequest>,
    ) -> Result<Response<pb::TokenRevokeResponse>, Status> {
        let who = caller(&request)?;
        let name = request.into_inner().name;
        self.ops
            .done(&who, None, Command::TokenRevoke { name })
            .await?;
        Ok(reply(self.ops.proposer(), pb::TokenRevokeResponse {}))
    }
}

/// An optional `KEY=VALUE` scope of a request (empty: none).
pub(crate) fn parse_scope(text: &str) -> Result<Option<paddock_model::access::Scope>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    paddock_model::access::Scope::parse(text)
        .map(Some)
        .map_err(Status::invalid_argument)
}
