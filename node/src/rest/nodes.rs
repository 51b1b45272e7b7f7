//! `/nodes`: the inventory and node operations.

use axum::extract::State;
use axum::Json;
use paddock_api::pb;
use paddock_api::pb::nodes_server::Nodes as _;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::problem::{Body, Params, Problem, Segments};
use super::{Api, Stale};

pub fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get))
        .routes(routes!(cordon))
        .routes(routes!(uncordon))
        .routes(routes!(maintenance))
        .routes(routes!(drain))
        .routes(routes!(evacuate))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct NodePath {
    /// The node's name.
    pub name: String,
}

/// Every node with capacity, free resources, state (`suspect` as the leader sees it) and
/// its VMs.
#[utoipa::path(get, path = "/nodes", tag = "nodes", params(Stale),
    responses((status = 200, body = pb::NodeListResponse)))]
async fn list(
    State(api): State<Api>,
    caller: Caller,
    Params(stale): Params<Stale>,
) -> Result<Json<pb::NodeListResponse>, Problem> {
    Ok(Json(api.node_list(&caller, stale.stale).await?))
}

#[utoipa::path(get, path = "/nodes/{name}", tag = "nodes", params(NodePath, Stale),
    responses((status = 200, body = pb::NodeInfo)))]
async fn get(
    State(api): State<Api>,
    caller: Caller,
    Segments(path): Segments<NodePath>,
    Params(stale): Params<Stale>,
) -> Result<Json<pb::NodeInfo>, Problem> {
    api.node_list(&caller, stale.stale)
        .await?
        .nodes
        .into_iter()
        .find(|n| n.name == path.name)
        .map(Json)
        .ok_or_else(|| {
            Problem::not_found(format!(
                "no node is called {}; see GET /api/v1/nodes",
                path.name
            ))
        })
}

impl Api {
    pub async fn node_list(
        &self,
        caller: &Caller,
        stale: bool,
    ) -> Result<pb::NodeListResponse, Problem> {
        let list = self
            .services
            .nodes
            .list(caller.request(pb::NodeListRequest { stale }))
            .await?;
        Ok(list.into_inner())
    }

    async fn set_cordon(
        &self,
        caller: &Caller,
        name: String,
        cordoned: bool,
    ) -> Result<pb::NodeInfo, Problem> {
        self.services
            .nodes
            .cordon(caller.request(pb::CordonRequest {
                name: name.clone(),
                cordoned,
                request_id: None,
            }))
            .await?;
        self.one_node(caller, &name).await
    }

    async fn one_node(&self, caller: &Caller, name: &str) -> Result<pb::NodeInfo, Problem> {
        self.node_list(caller, false)
            .await?
            .nodes
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| Problem::not_found(format!("no node is called {name}")))
    }
}

/// No new VMs on the node; what runs there stays.
#[utoipa::path(post, path = "/nodes/{name}/cordon", tag = "nodes", params(NodePath),
    responses((status = 200, body = pb::NodeInfo)))]
async fn cordon(
    State(api): State<Api>,
    caller: Caller,
    Segments(path): Segments<NodePath>,
) -> Result<Json<pb::NodeInfo>, Problem> {
    Ok(Json(api.set_cordon(&caller, path.name, true).await?))
}

/// New VMs may be placed on the node again (this also ends a drain).
#[utoipa::path(post, path = "/nodes/{name}/uncordon", tag = "nodes", params(NodePath),
    responses((status = 200, body = pb::NodeInfo)))]
async fn uncordon(
    State(api): State<Api>,
    caller: Caller,
    Segments(path): Segments<NodePath>,
) -> Result<Json<pb::NodeInfo>, Problem> {
    Ok(Json(api.set_cordon(&caller, path.name, false).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct MaintenanceBody {
    /// true: maintenance on (no new VMs, no failover of the node); false: off.
    pub on: bool,
}

#[utoipa::path(post, path = "/nodes/{name}/maintenance", tag = "nodes", params(NodePath),
    request_body = MaintenanceBody,
    responses((status = 200, body = pb::NodeInfo)))]
async fn maintenance(
    State(api): State<Api>,
    caller: Caller,
    Segments(path): Segments<NodePath>,
    Body(body): Body<MaintenanceBody>,
) -> Result<Json<pb::NodeInfo>, Problem> {
    api.services
        .nodes
        .maintenance(caller.request(pb::MaintenanceRequest {
            name: path.name.clone(),
            on: body.on,
            request_id: None,
        }))
        .await?;
    Ok(Json(api.one_node(&caller, &path.name).await?))
}

async fn drain_node(
    api: &Api,
    caller: &Caller,
    name: String,
    evacuate: bool,
) -> Result<Json<pb::MigrationCreateResponse>, Problem> {
    let created = api
        .services
        .nodes
        .drain(caller.request(pb::DrainRequest {
            name,
            evacuate,
            request_id: None,
        }))
        .await?;
    Ok(Json(created.into_inner()))
}

/// Cordons the node and live-migrates its running VMs away: the migrations asked for, and
/// the VMs that cannot move with why.
#[utoipa::path(post, path = "/nodes/{name}/drain", tag = "nodes", params(NodePath),
    responses((status = 200, body = pb::MigrationCreateResponse)))]
async fn drain(
    State(api): State<Api>,
    caller: Caller,
    Segments(path): Segments<NodePath>,
) -> Result<Json<pb::MigrationCreateResponse>, Problem> {
    drain_node(&api, &caller, path.name, false).await
}

/// A drain that also moves stopped VMs away, then puts the node in maintenance.
#[utoipa::path(post, path = "/nodes/{name}/evacuate", tag = "nodes", params(NodePath),
    responses((status = 200, body = pb::MigrationCreateResponse)))]
async fn evacuate(
    State(api): State<Api>,
    caller: Caller,
    Segments(path): Segments<NodePath>,
) -> Result<Json<pb::MigrationCreateResponse>, Problem> {
    drain_node(&api, &caller, path.name, true).await
}
