//! `/kv`: the cluster key/value space. Keys may hold `/`, so they travel in the query string
//! (`/kv/entry?key=a/b`) rather than the path.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use paddock_api::pb;
use paddock_api::pb::kv_server::Kv as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::problem::{Body, Params, Problem};
use super::Api;

pub fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get, put, delete))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Keys starting with this [default: all].
    #[serde(default)]
    pub prefix: String,
    /// Keys after this one (the last key of the previous page).
    pub after: Option<String>,
    /// Keys per page, 1–10000 [default: 1000].
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
    #[serde(default)]
    pub stale: bool,
}

/// Keys in order, a page at a time.
#[utoipa::path(get, path = "/kv", tag = "kv", params(ListParams),
    responses((status = 200, body = pb::ListResponse)))]
async fn list(
    State(api): State<Api>,
    caller: Caller,
    Params(params): Params<ListParams>,
) -> Result<Json<pb::ListResponse>, Problem> {
    let limit = params.limit.unwrap_or(1000);
    if !(1..=paddock_model::query::MAX_LIST_LIMIT).contains(&limit) {
        return Err(Problem::invalid(format!(
            "limit must be 1–10000, not {limit}"
        )));
    }
    let list = api
        .services
        .kv
        .list(caller.request(pb::ListRequest {
            prefix: params.prefix,
            start_after: params.after.unwrap_or_default(),
            limit,
            stale: params.stale,
        }))
        .await?;
    Ok(Json(list.into_inner()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeyParams {
    #[param(min_length = 1)]
    pub key: String,
    #[serde(default)]
    pub stale: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Entry {
    #[schema(min_length = 1, max_length = 1024)]
    pub key: String,
    pub value: String,
}

/// One key's value (404 when absent).
#[utoipa::path(get, path = "/kv/entry", tag = "kv", params(KeyParams),
    responses((status = 200, body = Entry)))]
async fn get(
    State(api): State<Api>,
    caller: Caller,
    Params(params): Params<KeyParams>,
) -> Result<Json<Entry>, Problem> {
    let found = api
        .services
        .kv
        .get(caller.request(pb::GetRequest {
            key: params.key.clone(),
            stale: params.stale,
        }))
        .await?
        .into_inner();
    if !found.found {
        return Err(Problem::not_found(format!("no key {:?}", params.key)));
    }
    Ok(Json(Entry {
        key: params.key,
        value: found.value,
    }))
}

/// Sets a key.
#[utoipa::path(put, path = "/kv/entry", tag = "kv", request_body = Entry,
    responses((status = 200, body = Entry)))]
async fn put(
    State(api): State<Api>,
    caller: Caller,
    Body(entry): Body<Entry>,
) -> Result<Json<Entry>, Problem> {
    api.services
        .kv
        .put(caller.request(pb::PutRequest {
            key: entry.key.clone(),
            value: entry.value.clone(),
            request_id: None,
        }))
        .await?;
    Ok(Json(entry))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    #[param(min_length = 1)]
    pub key: String,
}

/// Removes a key (404 when it was absent).
#[utoipa::path(delete, path = "/kv/entry", tag = "kv", params(DeleteParams),
    responses((status = 204, description = "removed")))]
async fn delete(
    State(api): State<Api>,
    caller: Caller,
    Params(params): Params<DeleteParams>,
) -> Result<StatusCode, Problem> {
    let deleted = api
        .services
        .kv
        .delete(caller.request(pb::DeleteRequest {
            key: params.key.clone(),
            request_id: None,
        }))
        .await?
        .into_inner();
    if !deleted.existed {
        return Err(Problem::not_found(format!("no key {:?}", params.key)));
    }
    Ok(StatusCode::NO_CONTENT)
}
