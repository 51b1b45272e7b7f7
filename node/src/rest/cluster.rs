//! `/cluster`, `/members`, `/settings`, `/tokens`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use paddock_api::pb;
use paddock_api::pb::cluster_server::Cluster as _;
use paddock_api::pb::settings_server::Settings as _;
use paddock_api::pb::tokens_server::Tokens as _;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::problem::{Body, Problem, Segments};
use super::Api;

pub fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(members))
        .routes(routes!(settings))
        .routes(routes!(set_setting))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
}

/// Leader, term, indexes and members, as the answering node sees them (reachability as the
/// leader sees it).
#[utoipa::path(get, path = "/cluster", tag = "cluster",
    responses((status = 200, body = pb::ClusterStatus)))]
async fn status(
    State(api): State<Api>,
    caller: Caller,
) -> Result<Json<pb::ClusterStatus>, Problem> {
    let status = api
        .services
        .cluster
        .status(caller.request(pb::StatusRequest { local: false }))
        .await?;
    Ok(Json(status.into_inner()))
}

/// The Raft members: voters and learners, with their replication progress.
#[utoipa::path(get, path = "/members", tag = "cluster",
    responses((status = 200, body = [pb::Member])))]
async fn members(State(api): State<Api>, caller: Caller) -> Result<Json<Vec<pb::Member>>, Problem> {
    let status = api
        .services
        .cluster
        .status(caller.request(pb::StatusRequest { local: false }))
        .await?;
    Ok(Json(status.into_inner().members))
}

/// Every cluster setting with its current value.
#[utoipa::path(get, path = "/settings", tag = "cluster",
    responses((status = 200, body = pb::SettingsListResponse)))]
async fn settings(
    State(api): State<Api>,
    caller: Caller,
) -> Result<Json<pb::SettingsListResponse>, Problem> {
    let list = api
        .services
        .settings
        .list(caller.request(pb::SettingsListRequest {}))
        .await?;
    Ok(Json(list.into_inner()))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SettingValue {
    pub value: String,
}

/// Changes one setting (admin). Checked against the current settings before it is proposed.
#[utoipa::path(put, path = "/settings/{key}", tag = "cluster",
    params(("key" = String, Path, description = "the setting, e.g. heartbeat_ms")),
    request_body = SettingValue,
    responses((status = 200, body = pb::SettingsListResponse)))]
async fn set_setting(
    State(api): State<Api>,
    caller: Caller,
    Segments(key): Segments<String>,
    Body(body): Body<SettingValue>,
) -> Result<Json<pb::SettingsListResponse>, Problem> {
    api.services
        .settings
        .set(caller.request(pb::SettingSetRequest {
            key,
            value: body.value,
            request_id: None,
        }))
        .await?;
    settings(State(api), caller).await
}

/// API tokens (admin): names, roles, expiry; never their secrets.
#[utoipa::path(get, path = "/tokens", tag = "tokens",
    responses((status = 200, body = pb::TokenListResponse)))]
async fn list_tokens(
    State(api): State<Api>,
    caller: Caller,
) -> Result<Json<pb::TokenListResponse>, Problem> {
    let list = api
        .services
        .tokens
        .list(caller.request(pb::TokenListRequest {}))
        .await?;
    Ok(Json(list.into_inner()))
}

/// Makes a token (admin). The answer holds the secret token, shown this once.
#[utoipa::path(post, path = "/tokens", tag = "tokens",
    request_body = pb::TokenCreateRequest,
    responses((status = 201, body = pb::TokenCreated)))]
async fn create_token(
    State(api): State<Api>,
    caller: Caller,
    Body(body): Body<pb::TokenCreateRequest>,
) -> Result<(StatusCode, Json<pb::TokenCreated>), Problem> {
    let created = api.services.tokens.create(caller.request(body)).await?;
    Ok((StatusCode::CREATED, Json(created.into_inner())))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct TokenPath {
    /// The token's name.
    pub name: String,
}

/// Revokes a token (admin): every node refuses it from its next applied entry on.
#[utoipa::path(delete, path = "/tokens/{name}", tag = "tokens", params(TokenPath),
    responses((status = 204, description = "revoked")))]
async fn revoke_token(
    State(api): State<Api>,
    caller: Caller,
    Segments(path): Segments<TokenPath>,
) -> Result<StatusCode, Problem> {
    api.services
        .tokens
        .revoke(caller.request(pb::TokenRevokeRequest { name: path.name }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
