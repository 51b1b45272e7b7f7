//! `/migrations`: live migrations, with live progress from the leader.

use axum::extract::State;
use axum::Json;
use paddock_api::pb;
use paddock_api::pb::migrations_server::Migrations as _;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::problem::{Params, Problem, Segments};
use super::Api;

pub fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get))
        .routes(routes!(cancel))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Also the finished ones (the last 1000).
    #[serde(default)]
    pub finished: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct MigrationPath {
    /// The migration's id.
    pub id: u64,
}

impl Api {
    pub async fn migration(&self, caller: &Caller, id: u64) -> Result<pb::MigrationInfo, Problem> {
        Ok(self
            .services
            .migrations
            .get(caller.request(pb::MigrationGetRequest { id }))
            .await?
            .into_inner())
    }

    pub async fn migrations(
        &self,
        caller: &Caller,
        finished: bool,
    ) -> Result<Vec<pb::MigrationInfo>, Problem> {
        Ok(self
            .services
            .migrations
            .list(caller.request(pb::MigrationListRequest { finished }))
            .await?
            .into_inner()
            .migrations)
    }
}

/// Open migrations, newest first (and finished ones with `finished=true`).
#[utoipa::path(get, path = "/migrations", tag = "migrations", params(ListParams),
    responses((status = 200, body = pb::MigrationListResponse)))]
async fn list(
    State(api): State<Api>,
    caller: Caller,
    Params(params): Params<ListParams>,
) -> Result<Json<pb::MigrationListResponse>, Problem> {
    Ok(Json(pb::MigrationListResponse {
        migrations: api.migrations(&caller, params.finished).await?,
    }))
}

/// One migration: phase, live progress (rate, remaining, ETA) or final figures.
#[utoipa::path(get, path = "/migrations/{id}", tag = "migrations", params(MigrationPath),
    responses((status = 200, body = pb::MigrationInfo)))]
async fn get(
    State(api): State<Api>,
    caller: Caller,
    Segments(path): Segments<MigrationPath>,
) -> Result<Json<pb::MigrationInfo>, Problem> {
    Ok(Json(api.migration(&caller, path.id).await?))
}

/// Cancels a migration before its switch: the VM keeps running on its source.
#[utoipa::path(post, path = "/migrations/{id}/cancel", tag = "migrations", params(MigrationPath),
    responses((status = 200, body = pb::MigrationInfo)))]
async fn cancel(
    State(api): State<Api>,
    caller: Caller,
    Segments(path): Segments<MigrationPath>,
) -> Result<Json<pb::MigrationInfo>, Problem> {
    api.services
        .migrations
        .cancel(caller.request(pb::MigrationCancelRequest {
            id: path.id,
            request_id: None,
        }))
        .await?;
    Ok(Json(api.migration(&caller, path.id).await?))
}
