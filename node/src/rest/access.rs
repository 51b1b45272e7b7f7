//! `/whoami`, `/auth/can`, `/roles`, `/users`, `/audit`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use paddock_api::pb;
use paddock_api::pb::access_server::Access as _;
use paddock_api::pb::audit_server::Audit as _;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::problem::{Body, Params, Problem, Segments};
use super::Api;

pub fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new()
        .routes(routes!(whoami))
        .routes(routes!(can))
        .routes(routes!(list_roles, create_role))
        .routes(routes!(delete_role))
        .routes(routes!(list_users))
        .routes(routes!(bind, unbind))
        .routes(routes!(audit))
        .routes(routes!(verify))
}

/// Who the caller is, the roles it holds and the actions they allow.
#[utoipa::path(get, path = "/whoami", tag = "access",
    responses((status = 200, body = pb::WhoAmIResponse)))]
async fn whoami(
    State(api): State<Api>,
    caller: Caller,
) -> Result<Json<pb::WhoAmIResponse>, Problem> {
    let answer = api
        .services
        .access
        .who_am_i(caller.request(pb::WhoAmIRequest {}))
        .await?;
    Ok(Json(answer.into_inner()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CanQuery {
    /// An action name, e.g. `vm.migrate`.
    pub action: String,
    /// The VM it would be done to.
    #[serde(default)]
    pub vm: String,
    /// Another user (a certificate's common name) to ask for; needs `user.read`.
    #[serde(default)]
    pub user: String,
}

/// Whether the caller (or `user`) may do `action` (to `vm`), and why.
#[utoipa::path(get, path = "/auth/can", tag = "access", params(CanQuery),
    responses((status = 200, body = pb::CanResponse)))]
async fn can(
    State(api): State<Api>,
    caller: Caller,
    Params(q): Params<CanQuery>,
) -> Result<Json<pb::CanResponse>, Problem> {
    let answer = api
        .services
        .access
        .can(caller.request(pb::CanRequest {
            action: q.action,
            vm: q.vm,
            user: q.user,
        }))
        .await?;
    Ok(Json(answer.into_inner()))
}

/// Built-in and custom roles with what each allows, and every action a role may list.
#[utoipa::path(get, path = "/roles", tag = "access",
    responses((status = 200, body = pb::RolesResponse)))]
async fn list_roles(
    State(api): State<Api>,
    caller: Caller,
) -> Result<Json<pb::RolesResponse>, Problem> {
    let answer = api
        .services
        .access
        .roles(caller.request(pb::RolesRequest {}))
        .await?;
    Ok(Json(answer.into_inner()))
}

/// Makes a custom role (`role.write`).
#[utoipa::path(post, path = "/roles", tag = "access",
    request_body = pb::RoleCreateRequest,
    responses((status = 201, description = "created")))]
async fn create_role(
    State(api): State<Api>,
    caller: Caller,
    Body(body): Body<pb::RoleCreateRequest>,
) -> Result<StatusCode, Problem> {
    api.services
        .access
        .create_role(caller.request(body))
        .await?;
    Ok(StatusCode::CREATED)
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct NamePath {
    /// The role's or user's name.
    pub name: String,
}

/// Deletes a custom role no user or token uses (`role.write`).
#[utoipa::path(delete, path = "/roles/{name}", tag = "access", params(NamePath),
    responses((status = 204, description = "deleted")))]
async fn delete_role(
    State(api): State<Api>,
    caller: Caller,
    Segments(path): Segments<NamePath>,
) -> Result<StatusCode, Problem> {
    api.services
        .access
        .delete_role(caller.request(pb::RoleDeleteRequest { name: path.name }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Users and their role bindings (`user.read`).
#[utoipa::path(get, path = "/users", tag = "access",
    responses((status = 200, body = pb::UsersResponse)))]
async fn list_users(
    State(api): State<Api>,
    caller: Caller,
) -> Result<Json<pb::UsersResponse>, Problem> {
    let answer = api
        .services
        .access
        .users(caller.request(pb::UsersRequest {}))
        .await?;
    Ok(Json(answer.into_inner()))
}

/// Binds a user to a role, optionally scoped to VMs with a label (`user.bind`).
#[utoipa::path(post, path = "/users/{name}/bindings", tag = "access", params(NamePath),
    request_body = pb::GrantInfo,
    responses((status = 201, description = "bound")))]
async fn bind(
    State(api): State<Api>,
    caller: Caller,
    Segments(path): Segments<NamePath>,
    Body(body): Body<pb::GrantInfo>,
) -> Result<StatusCode, Problem> {
    api.services
        .access
        .bind(caller.request(pb::BindRequest {
            user: path.name,
            role: body.role,
            scope: body.scope,
        }))
        .await?;
    Ok(StatusCode::CREATED)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BindingQuery {
    /// The role of the binding to remove.
    pub role: String,
    /// Its scope, `KEY=VALUE`, if it has one.
    #[serde(default)]
    pub scope: String,
}

/// Removes one of a user's bindings (`user.bind`).
#[utoipa::path(delete, path = "/users/{name}/bindings", tag = "access",
    params(NamePath, BindingQuery),
    responses((status = 204, description = "unbound")))]
async fn unbind(
    State(api): State<Api>,
    caller: Caller,
    Segments(path): Segments<NamePath>,
    Params(q): Params<BindingQuery>,
) -> Result<StatusCode, Problem> {
    api.services
        .access
        .unbind(caller.request(pb::BindRequest {
            user: path.name,
            role: q.role,
            scope: q.scope,
        }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Records after this number.
    #[serde(default)]
    #[param(minimum = 0)]
    pub after: i64,
    /// Only this caller (certificate name or `token:NAME`).
    #[serde(default)]
    pub who: String,
    /// Only this action, or actions starting with a prefix ending in `.` (`vm.`).
    #[serde(default)]
    pub action: String,
    /// Only records at or after this time (ms since the epoch).
    #[serde(default)]
    #[param(minimum = 0)]
    pub since_ms: i64,
    /// Only refusals.
    #[serde(default)]
    pub refused: bool,
    /// At most this many records (default 100, at most 10,000).
    #[serde(default)]
    #[param(maximum = 10000)]
    pub limit: u32,
    /// This node's replica, without a read-index round.
    #[serde(default)]
    pub stale: bool,
}

/// The audit log, oldest first (`audit.read`).
#[utoipa::path(get, path = "/audit", tag = "access", params(AuditQuery),
    responses((status = 200, body = pb::AuditListResponse)))]
async fn audit(
    State(api): State<Api>,
    caller: Caller,
    Params(q): Params<AuditQuery>,
) -> Result<Json<pb::AuditListResponse>, Problem> {
    if q.limit > 10_000 {
        return Err(Problem::invalid(
            "limit is at most 10000; page with `after`",
        ));
    }
    let after = non_negative("after", q.after)?;
    let since_ms = non_negative("since_ms", q.since_ms)?;
    let answer = api
        .services
        .audit
        .list(caller.request(pb::AuditListRequest {
            after,
            who: q.who,
            action: q.action,
            since_ms,
            refused: q.refused,
            limit: q.limit,
            stale: q.stale,
        }))
        .await?;
    Ok(Json(answer.into_inner()))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VerifyQuery {
    /// Recompute through this record (0: all this node holds).
    #[serde(default)]
    #[param(minimum = 0)]
    pub upto: i64,
}

/// This node's recomputation of its audit chain (`audit.read`); compare `head` across nodes
/// at the same `upto`.
#[utoipa::path(get, path = "/audit/verify", tag = "access", params(VerifyQuery),
    responses((status = 200, body = pb::AuditVerifyResponse)))]
async fn verify(
    State(api): State<Api>,
    caller: Caller,
    Params(q): Params<VerifyQuery>,
) -> Result<Json<pb::AuditVerifyResponse>, Problem> {
    let answer = api
        .services
        .audit
        .verify(caller.request(pb::AuditVerifyRequest {
            upto: non_negative("upto", q.upto)?,
        }))
        .await?;
    Ok(Json(answer.into_inner()))
}

/// Numbers are int64 in the document (u64 inside): a negative one is invalid.
fn non_negative(name: &str, value: i64) -> Result<u64, Problem> {
    u64::try_from(value).map_err(|_| Problem::invalid(format!("{name} must be 0 or more")))
}
