//! `/vms`: VM lifecycle, paged and filtered lists, live migration.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use paddock_api::pb;
use paddock_api::pb::migrations_server::Migrations as _;
use paddock_api::pb::vms_server::Vms as _;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::problem::{Body, Params, Problem, Segments};
use super::{Api, Stale};

pub fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get, delete))
        .routes(routes!(start))
        .routes(routes!(stop))
        .routes(routes!(restart))
        .routes(routes!(migrate))
}

/// Most VMs one page holds.
pub const MAX_PAGE: u32 = 10_000;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// VMs after this name (the `next` of the previous page).
    pub after: Option<String>,
    /// VMs per page, 1–10000 [default: 100].
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
    /// Only VMs assigned to this node.
    pub node: Option<String>,
    /// Only VMs in this observed state: pending, starting, running, stopping, stopped, failed.
    pub state: Option<String>,
    /// Only VMs whose name contains this.
    pub q: Option<String>,
    /// Read this node's replica without a read-index round.
    #[serde(default)]
    pub stale: bool,
}

/// A page of VMs.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct VmPage {
    pub vms: Vec<pb::VmSummary>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
}

impl Api {
    pub async fn vm_page(&self, caller: &Caller, params: ListParams) -> Result<VmPage, Problem> {
        // Empty filters are no filters (a form's "any" choice sends them empty).
        let params = ListParams {
            node: params.node.filter(|n| !n.is_empty()),
            state: params.state.filter(|s| !s.is_empty()),
            q: params.q.filter(|q| !q.is_empty()),
            after: params.after.filter(|a| !a.is_empty()),
            ..params
        };
        let limit = params.limit.unwrap_or(100);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(Problem::invalid(format!(
                "limit must be 1–{MAX_PAGE}, not {limit}"
            )));
        }
        const STATES: &[&str] = &[
            "pending", "starting", "running", "stopping", "stopped", "failed",
        ];
        if let Some(state) = &params.state {
            if !STATES.contains(&state.as_str()) {
                return Err(Problem::invalid(format!(
                    "state must be one of {}, not {state:?}",
                    STATES.join(", ")
                )));
            }
        }
        let list = self
            .services
            .vms
            .list(caller.request(pb::VmListRequest {
                start_after: params.after.unwrap_or_default(),
                limit,
                stale: params.stale,
                node: params.node.unwrap_or_default(),
                state: params.state.unwrap_or_default(),
                search: params.q.unwrap_or_default(),
            }))
            .await?
            .into_inner();
        let next = if list.more {
            list.vms.last().map(|vm| vm.name.clone())
        } else {
            None
        };
        Ok(VmPage {
            vms: list.vms,
            next,
        })
    }

    pub async fn vm_detail(
        &self,
        caller: &Caller,
        name: &str,
        stale: bool,
    ) -> Result<pb::VmDetail, Problem> {
        Ok(self
            .services
            .vms
            .get(caller.request(pb::VmGetRequest {
                name: name.to_string(),
                stale,
            }))
            .await?
            .into_inner())
    }

    async fn set_desired(&self, caller: &Caller, name: &str, running: bool) -> Result<(), Problem> {
        self.services
            .vms
            .set_desired(caller.request(pb::VmSetDesiredRequest {
                name: name.to_string(),
                running,
                request_id: None,
            }))
            .await?;
        Ok(())
    }
}

/// VMs in name order, a page at a time, filtered on the server.
#[utoipa::path(get, path = "/vms", tag = "vms", params(ListParams),
    responses((status = 200, body = VmPage)))]
async fn list(
    State(api): State<Api>,
    caller: Caller,
    Params(params): Params<ListParams>,
) -> Result<Json<VmPage>, Problem> {
    Ok(Json(api.vm_page(&caller, params).await?))
}

/// Creates a VM (started unless `stopped`); answers it as committed.
#[utoipa::path(post, path = "/vms", tag = "vms", request_body = pb::VmCreateRequest,
    responses((status = 201, body = pb::VmDetail)))]
async fn create(
    State(api): State<Api>,
    caller: Caller,
    Body(body): Body<pb::VmCreateRequest>,
) -> Result<(StatusCode, Json<pb::VmDetail>), Problem> {
    let name = body.name.clone();
    api.services.vms.create(caller.request(body)).await?;
    Ok((
        StatusCode::CREATED,
        Json(api.vm_detail(&caller, &name, false).await?),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct VmPath {
    /// The VM's name.
    pub name: String,
}

/// One VM: summary, spec, why it failed or waits, its events.
#[utoipa::path(get, path = "/vms/{name}", tag = "vms", params(VmPath, Stale),
    responses((status = 200, body = pb::VmDetail)))]
async fn get(
    State(api): State<Api>,
    caller: Caller,
    Segments(path): Segments<VmPath>,
    Params(stale): Params<Stale>,
) -> Result<Json<pb::VmDetail>, Problem> {
    Ok(Json(api.vm_detail(&caller, &path.name, stale.stale).await?))
}

/// Deletes the VM; its node destroys it.
#[utoipa::path(delete, path = "/vms/{name}", tag = "vms", params(VmPath),
    responses((status = 204, description = "deleted")))]
async fn delete(
    State(api): State<Api>,
    caller: Caller,
    Segments(path): Segments<VmPath>,
) -> Result<StatusCode, Problem> {
    api.services
        .vms
        .delete(caller.request(pb::VmDeleteRequest {
            name: path.name,
            request_id: None,
        }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Desired running: the scheduler places it if needed, its node starts it.
#[utoipa::path(post, path = "/vms/{name}/start", tag = "vms", params(VmPath),
    responses((status = 200, body = pb::VmDetail)))]
async fn start(
    State(api): State<Api>,
    caller: Caller,
    Segments(path): Segments<VmPath>,
) -> Result<Json<pb::VmDetail>, Problem> {
    api.set_desired(&caller, &path.name, true).await?;
    Ok(Json(api.vm_detail(&caller, &path.name, false).await?))
}

/// Desired stopped: its node shuts it down.
#[utoipa::path(post, path = "/vms/{name}/stop", tag = "vms", params(VmPath),
    responses((status = 200, body = pb::VmDetail)))]
async fn stop(
    State(api): State<Api>,
    caller: Caller,
    Segments(path): Segments<VmPath>,
) -> Result<Json<pb::VmDetail>, Problem> {
    api.set_desired(&caller, &path.name, false).await?;
    Ok(Json(api.vm_detail(&caller, &path.name, false).await?))
}

/// How long a restart waits for the VM to stop before it gives up.
const RESTART_STOP_WAIT: Duration = Duration::from_secs(120);

/// Stops the VM, waits until it is seen stopped, starts it again.
#[utoipa::path(post, path = "/vms/{name}/restart", tag = "vms", params(VmPath),
    responses((status = 200, body = pb::VmDetail)))]
async fn restart(
    State(api): State<Api>,
    caller: Caller,
    Segments(path): Segments<VmPath>,
) -> Result<Json<pb::VmDetail>, Problem> {
    api.set_desired(&caller, &path.name, false).await?;
    // The stop must be observed before the start, or the agent sees no change at all.
    let deadline = tokio::time::Instant::now() + RESTART_STOP_WAIT;
    loop {
        let vm = api.vm_detail(&caller, &path.name, true).await?;
        let summary = vm.summary.unwrap_or_default();
        if summary.node.is_empty() || summary.state == "stopped" || summary.state == "failed" {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Problem::new(
                "unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{} did not stop within {} s (it is {}); it stays desired stopped: start it when it has stopped",
                    path.name,
                    RESTART_STOP_WAIT.as_secs(),
                    summary.state
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    api.set_desired(&caller, &path.name, true).await?;
    Ok(Json(api.vm_detail(&caller, &path.name, false).await?))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct MigrateBody {
    /// Destination node; absent: the leader picks one.
    pub to: Option<String>,
    /// auto, precopy or postcopy [default: auto].
    #[schema(pattern = "^(auto|precopy|postcopy)$")]
    pub mode: Option<String>,
    /// Bytes per second; absent or 0: unlimited.
    pub bandwidth: u64,
    /// Longest acceptable pause at the switch [default: 100].
    pub max_downtime_ms: u64,
    /// 0–1000: which migrations go first.
    #[schema(maximum = 1000)]
    pub priority: u32,
}

/// Asks for a live migration of a running VM; answers the migration created (or why not).
#[utoipa::path(post, path = "/vms/{name}/migrate", tag = "vms", params(VmPath),
    request_body = MigrateBody,
    responses((status = 202, body = pb::MigrationInfo)))]
async fn migrate(
    State(api): State<Api>,
    caller: Caller,
    Segments(path): Segments<VmPath>,
    Body(body): Body<MigrateBody>,
) -> Result<(StatusCode, Json<pb::MigrationInfo>), Problem> {
    let created = api
        .services
        .migrations
        .create(caller.request(pb::MigrationCreateRequest {
            vm: path.name.clone(),
            to: body.to.unwrap_or_default(),
            mode: body.mode.unwrap_or_default(),
            bandwidth: body.bandwidth,
            max_downtime_ms: body.max_downtime_ms,
            priority: body.priority,
            request_id: None,
        }))
        .await?
        .into_inner();
    if let Some(refused) = created.refused.first() {
        return Err(Problem::new(
            "failed_precondition",
            StatusCode::CONFLICT,
            refused.reason.clone(),
        ));
    }
    let id = created.created.first().map(|c| c.id).ok_or_else(|| {
        Problem::new(
            "internal",
            StatusCode::INTERNAL_SERVER_ERROR,
            "no migration was created",
        )
    })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(api.migration(&caller, id).await?),
    ))
}
