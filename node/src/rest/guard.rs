//! Every route of the API listener and how it is authorized. A handler authorizes by calling
//! the gRPC service methods it names here in process (each is in `ops::auth::RPCS` and
//! decides there); the few open routes say why they are open. A request to a route that is
//! not in the table is refused by [`check`] before its handler runs, and a test compares the
//! table with the OpenAPI document, so nothing is open by default.

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::problem::Problem;

/// How a route is authorized.
#[derive(Debug, Clone, Copy)]
pub enum Route {
    /// By the gRPC methods its handler calls (authorized each as for gRPC).
    Calls(&'static [&'static str]),
    /// Open to anyone, and why.
    Open(&'static str),
}

const STATUS: &str = "/paddock.v1.Cluster/Status";
const SETTINGS: &str = "/paddock.v1.Settings/List";
const NODES: &str = "/paddock.v1.Nodes/List";
const VMS: &str = "/paddock.v1.Vms/List";
const VM: &str = "/paddock.v1.Vms/Get";
const MIGRATIONS: &str = "/paddock.v1.Migrations/List";
const EVENTS: &str = "/paddock.v1.Events/List";

/// (method, path as routed, how it is authorized). API paths include `/api/v1`.
pub const ROUTES: &[(Method, &str, Route)] = {
    use Route::{Calls, Open};
    &[
        (Method::GET, "/api/v1/cluster", Calls(&[STATUS])),
        (Method::GET, "/api/v1/members", Calls(&[STATUS])),
        (Method::GET, "/api/v1/settings", Calls(&[SETTINGS])),
        (
            Method::PUT,
            "/api/v1/settings/{key}",
            Calls(&["/paddock.v1.Settings/Set", SETTINGS]),
        ),
        (
            Method::GET,
            "/api/v1/tokens",
            Calls(&["/paddock.v1.Tokens/List"]),
        ),
        (
            Method::POST,
            "/api/v1/tokens",
            Calls(&["/paddock.v1.Tokens/Create"]),
        ),
        (
            Method::DELETE,
            "/api/v1/tokens/{name}",
            Calls(&["/paddock.v1.Tokens/Revoke"]),
        ),
        (Method::GET, "/api/v1/nodes", Calls(&[NODES])),
        (Method::GET, "/api/v1/nodes/{name}", Calls(&[NODES])),
        (
            Method::POST,
            "/api/v1/nodes/{name}/cordon",
            Calls(&["/paddock.v1.Nodes/Cordon"]),
        ),
        (
            Method::POST,
            "/api/v1/nodes/{name}/uncordon",
            Calls(&["/paddock.v1.Nodes/Cordon"]),
        ),
        (
            Method::POST,
            "/api/v1/nodes/{name}/maintenance",
            Calls(&["/paddock.v1.Nodes/Maintenance"]),
        ),
        (
            Method::POST,
            "/api/v1/nodes/{name}/drain",
            Calls(&["/paddock.v1.Nodes/Drain"]),
        ),
        (
            Method::POST,
            "/api/v1/nodes/{name}/evacuate",
            Calls(&["/paddock.v1.Nodes/Drain"]),
        ),
        (Method::GET, "/api/v1/vms", Calls(&[VMS])),
        (
            Method::POST,
            "/api/v1/vms",
            Calls(&["/paddock.v1.Vms/Create"]),
        ),
        (Method::GET, "/api/v1/vms/{name}", Calls(&[VM])),
        (
            Method::DELETE,
            "/api/v1/vms/{name}",
            Calls(&["/paddock.v1.Vms/Delete"]),
        ),
        (
            Method::POST,
            "/api/v1/vms/{name}/start",
            Calls(&["/paddock.v1.Vms/SetDesired"]),
        ),
        (
            Method::POST,
            "/api/v1/vms/{name}/stop",
            Calls(&["/paddock.v1.Vms/SetDesired"]),
        ),
        (
            Method::POST,
            "/api/v1/vms/{name}/restart",
            Calls(&["/paddock.v1.Vms/SetDesired"]),
        ),
        (
            Method::POST,
            "/api/v1/vms/{name}/migrate",
            Calls(&["/paddock.v1.Migrations/Create"]),
        ),
        (Method::GET, "/api/v1/migrations", Calls(&[MIGRATIONS])),
        (
            Method::GET,
            "/api/v1/migrations/{id}",
            Calls(&["/paddock.v1.Migrations/Get"]),
        ),
        (
            Method::POST,
            "/api/v1/migrations/{id}/cancel",
            Calls(&["/paddock.v1.Migrations/Cancel"]),
        ),
        (
            Method::GET,
            "/api/v1/events",
            Calls(&[EVENTS, "/paddock.v1.Events/Follow"]),
        ),
        (Method::GET, "/api/v1/kv", Calls(&["/paddock.v1.Kv/List"])),
        (
            Method::GET,
            "/api/v1/kv/entry",
            Calls(&["/paddock.v1.Kv/Get"]),
        ),
        (
            Method::PUT,
            "/api/v1/kv/entry",
            Calls(&["/paddock.v1.Kv/Put"]),
        ),
        (
            Method::DELETE,
            "/api/v1/kv/entry",
            Calls(&["/paddock.v1.Kv/Delete"]),
        ),
        (
            Method::GET,
            "/api/v1/whoami",
            Calls(&["/paddock.v1.Access/WhoAmI"]),
        ),
        (
            Method::GET,
            "/api/v1/auth/can",
            Calls(&["/paddock.v1.Access/Can"]),
        ),
        (
            Method::GET,
            "/api/v1/roles",
            Calls(&["/paddock.v1.Access/Roles"]),
        ),
        (
            Method::POST,
            "/api/v1/roles",
            Calls(&["/paddock.v1.Access/CreateRole"]),
        ),
        (
            Method::DELETE,
            "/api/v1/roles/{name}",
            Calls(&["/paddock.v1.Access/DeleteRole"]),
        ),
        (
            Method::GET,
            "/api/v1/users",
            Calls(&["/paddock.v1.Access/Users"]),
        ),
        (
            Method::POST,
            "/api/v1/users/{name}/bindings",
            Calls(&["/paddock.v1.Access/Bind"]),
        ),
        (
            Method::DELETE,
            "/api/v1/users/{name}/bindings",
            Calls(&["/paddock.v1.Access/Unbind"]),
        ),
        (
            Method::GET,
            "/api/v1/audit",
            Calls(&["/paddock.v1.Audit/List"]),
        ),
        (
            Method::GET,
            "/api/v1/audit/verify",
            Calls(&["/paddock.v1.Audit/Verify"]),
        ),
        (
            Method::GET,
            "/api/v1/openapi.json",
            Open("the API's public description"),
        ),
        (
            Method::GET,
            "/metrics",
            Open("metrics for Prometheus: counts and gauges, no secrets, no names of tokens"),
        ),
        (Method::GET, "/", Open("a redirect to /ui")),
        (
            Method::GET,
            "/ui",
            Calls(&[STATUS, SETTINGS, NODES, VMS, MIGRATIONS]),
        ),
        (
            Method::GET,
            "/ui/fragment/overview",
            Calls(&[STATUS, SETTINGS, NODES, VMS, MIGRATIONS]),
        ),
        (Method::GET, "/ui/vms/{name}", Calls(&[VM])),
        (Method::GET, "/ui/login", Open("the login form")),
        (
            Method::POST,
            "/ui/login",
            Open("checks the token it is given (a failure is audited)"),
        ),
        (
            Method::POST,
            "/ui/logout",
            Open("clears the session cookie"),
        ),
        (
            Method::GET,
            "/ui/static/app.js",
            Open("the dashboard's script"),
        ),
        (
            Method::GET,
            "/ui/static/app.css",
            Open("the dashboard's style sheet"),
        ),
    ]
};

/// How the route `path` (as routed, e.g. `/api/v1/vms/{name}`) answers `method`, if listed.
pub fn route_of(method: &Method, path: &str) -> Option<Route> {
    ROUTES
        .iter()
        .find(|(m, p, _)| m == method && *p == path)
        .map(|(_, _, route)| *route)
}

/// Refuses a request to a route the table does not list (HEAD is answered as GET).
pub async fn check(request: Request, next: Next) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let method = match request.method() {
        &Method::HEAD => Method::GET,
        other => other.clone(),
    };
    match path {
        Some(path) if route_of(&method, &path).is_some() => next.run(request).await,
        Some(path) => Problem::new(
            "permission_denied",
            StatusCode::FORBIDDEN,
            format!("{method} {path} has no entry in Paddock's permission table, so it is refused"),
        )
        .into_response(),
        // Unmatched: the fallback answers 404.
        None => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation of the OpenAPI document is in the table, every API entry of the table
    /// is an operation, and every gRPC method the table names is in the gRPC permission table.
    #[test]
    fn every_route_has_an_entry() {
        let doc = super::super::openapi();
        let mut operations = Vec::new();
        for (path, item) in &doc.paths.paths {
            for (method, op) in [
                (Method::GET, &item.get),
                (Method::PUT, &item.put),
                (Method::POST, &item.post),
                (Method::DELETE, &item.delete),
                (Method::PATCH, &item.patch),
            ] {
                if op.is_some() {
                    operations.push((method, format!("/api/v1{path}")));
                }
            }
        }
        assert!(operations.len() >= 40, "{} operations", operations.len());
        for (method, path) in &operations {
            assert!(
                route_of(method, path).is_some(),
                "{method} {path} needs an entry in rest::guard::ROUTES"
            );
        }
        for (method, path, route) in ROUTES {
            if path.starts_with("/api/v1/") && *path != "/api/v1/openapi.json" {
                assert!(
                    operations.iter().any(|(m, p)| m == method && p == path),
                    "{method} {path} is not an operation of the OpenAPI document"
                );
            }
            if let Route::Calls(methods) = route {
                for rpc in *methods {
                    assert!(
                        crate::ops::auth::permission_of(rpc).is_some(),
                        "{method} {path} names {rpc}, which is not a gRPC method"
                    );
                }
            }
        }
    }
}
