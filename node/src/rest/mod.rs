//! The HTTPS JSON API (`/api/v1`), the dashboard (`/ui`) and `/metrics`, on their own
//! listener (`paddockd --api host:port`).
//!
//! ```text
//!  TLS (node certificate; client certificate optional; h2 + http/1.1)
//!   └─ per request: Caller = client certificate | Bearer token | session cookie (+ CSRF)
//!       └─ handler: JSON ⇄ protobuf message, the gRPC service called in process
//!           └─ the operations layer (authorize, check, propose / read) — as for gRPC
//! ```
//!
//! Handlers hold no cluster logic: they call the same service code the gRPC port serves
//! (with the caller's identity attached in process), so forwarding to the leader, the
//! leader's live views (suspects, migration progress) and every check are the same on both.
//! The protobuf messages are the JSON bodies and OpenAPI schemas (derives added in the api
//! crate's build script).

mod access;
pub mod auth;
mod cluster;
mod events;
pub mod guard;
mod kv;
mod migrations;
mod nodes;
pub mod problem;
pub mod vms;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{OpenApi, RefOr};
use utoipa::{IntoParams, Modify, OpenApi as _};
use utoipa_axum::router::OpenApiRouter;

use crate::metrics::NodeMetrics;
use crate::ops::Ops;
use crate::service::{
    ClusterService, EventsService, KvService, MigrationsService, NodesService, SettingsService,
    TokensService, VmsService,
};
pub use auth::Caller;
pub use problem::Problem;

/// The gRPC services the handlers call in process.
pub struct Services {
    pub cluster: Arc<ClusterService>,
    pub nodes: Arc<NodesService>,
    pub vms: Arc<VmsService>,
    pub migrations: Arc<MigrationsService>,
    pub kv: Arc<KvService>,
    pub settings: Arc<SettingsService>,
    pub events: Arc<EventsService>,
    pub tokens: Arc<TokensService>,
    pub access: Arc<crate::service::AccessService>,
    pub audit: Arc<crate::service::AuditService>,
}

#[derive(Clone)]
pub struct Api {
    pub ops: Arc<Ops>,
    pub raft: paddock_raft::Raft,
    pub services: Arc<Services>,
    pub metrics: Arc<NodeMetrics>,
    /// This node's name.
    pub node: String,
}

/// `?stale=true`: this node's replica, no read-index round through the leader.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Stale {
    #[serde(default)]
    pub stale: bool,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Paddock",
        description = "The HTTPS API of a Paddock cluster: any node answers, writes are forwarded to the leader, reads are linearizable unless `stale=true`. Authenticate with `Authorization: Bearer TOKEN` (`paddock token create NAME --role viewer|operator|admin`) or a client certificate of the cluster CA. Errors are `application/problem+json` (RFC 9457).",
        license(name = "Apache-2.0")
    ),
    modifiers(&Common),
    tags(
        (name = "cluster", description = "status, members, settings"),
        (name = "nodes", description = "the inventory; cordon, maintenance, drain, evacuate"),
        (name = "vms", description = "VM lifecycle and live migration"),
        (name = "migrations", description = "live migrations in flight and finished"),
        (name = "events", description = "the cluster's event log, paged or live (SSE)"),
        (name = "kv", description = "the cluster key/value space"),
        (name = "tokens", description = "API tokens (admin)"),
        (name = "access", description = "who may do what: roles, bindings, decisions explained, the audit log"),
    )
)]
struct ApiDoc;

/// What every operation shares: bearer or certificate authentication, and the problems any
/// of them may answer.
struct Common;

impl Modify for Common {
    fn modify(&self, openapi: &mut OpenApi) {
        use utoipa::openapi::response::ResponseBuilder;
        use utoipa::openapi::security::SecurityRequirement;
        use utoipa::openapi::ContentBuilder;
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.schemas.insert(
            "Problem".to_string(),
            <Problem as utoipa::PartialSchema>::schema(),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
        let problem = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/problem+json",
                        ContentBuilder::new()
                            .schema(Some(utoipa::openapi::Ref::from_schema_name("Problem")))
                            .build(),
                    )
                    .build(),
            )
        };
        let common = [
            ("400", "the request is malformed"),
            ("401", "no valid certificate or token"),
            ("403", "the caller's role may not do this"),
            ("404", "no such object"),
            (
                "409",
                "refused by the current state (exists, conflicting, no capacity)",
            ),
            ("415", "the body is not JSON"),
            ("422", "a value is invalid"),
            ("503", "no leader or majority reachable; retry"),
        ];
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                for (code, description) in common {
                    op.responses
                        .responses
                        .entry(code.to_string())
                        .or_insert_with(|| problem(description));
                }
            }
        }
    }
}

fn api_routes() -> OpenApiRouter<Api> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(cluster::routes())
        .merge(nodes::routes())
        .merge(vms::routes())
        .merge(migrations::routes())
        .merge(events::routes())
        .merge(kv::routes())
        .merge(access::routes())
}

/// The OpenAPI document of `/api/v1` (committed as docs/openapi.json).
pub fn openapi() -> OpenApi {
    let (_, mut doc) = api_routes().split_for_parts();
    doc.servers = Some(vec![utoipa::openapi::Server::new("/api/v1")]);
    let mut modified = doc;
    Common.modify(&mut modified);
    modified
}

/// The document as served and committed: pretty JSON with a final newline.
pub fn openapi_json() -> String {
    let mut text = serde_json::to_string_pretty(&openapi()).unwrap_or_default();
    text.push('\n');
    text
}

/// Every route of the listener.
pub fn router(api: Api) -> Router {
    let (routes, _) = api_routes().split_for_parts();
    let spec = openapi_json();
    let api_v1 = routes
        .route(
            "/openapi.json",
            get(move || {
                let spec = spec.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], spec) }
            }),
        )
        .route_layer(axum::middleware::from_fn(guard::check))
        .fallback(|| async {
            Problem::not_found("no such API route; the routes are listed in /api/v1/openapi.json")
        });
    Router::new()
        .route("/metrics", get(metrics))
        .route("/", get(|| async { axum::response::Redirect::to("/ui") }))
        .merge(crate::ui::routes())
        .route_layer(axum::middleware::from_fn(guard::check))
        .nest("/api/v1", api_v1)
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: the API is under /api/v1 (see /api/v1/openapi.json), the dashboard under /ui\n",
            )
        })
        .with_state(api)
}

async fn metrics(axum::extract::State(api): axum::extract::State<Api>) -> Response {
    match api.metrics.render(&api.raft) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until `shutdown` flips to true.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    api: Api,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let metrics = api.metrics.clone();
    let router = router(api);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "api accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                _ => return,
            };
            let identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|leaf| paddock_api::certs::peer_identity(leaf));
            let connection = auth::ConnectionIdentity { identity, peer };
            let service = hyper::service::service_fn(
                move |mut request: axum::http::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(connection.clone());
                    let router = router.clone();
                    let metrics = metrics.clone();
                    let method = request.method().clone();
                    let started = Instant::now();
                    async move {
                        let response = router.oneshot(request).await;
                        if let Ok(response) = &response {
                            metrics.api_request(&method, response.status(), started.elapsed());
                        }
                        response
                    }
                },
            );
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    /// docs/openapi.json is what this build serves. `PADDOCK_WRITE_OPENAPI=1 cargo test -p
    /// paddock-node openapi` rewrites it.
    #[test]
    fn committed_openapi_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let current = super::openapi_json();
        if std::env::var_os("PADDOCK_WRITE_OPENAPI").is_some() {
            std::fs::write(&path, &current).expect("write docs/openapi.json");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == current,
            "docs/openapi.json is not what this build serves; run PADDOCK_WRITE_OPENAPI=1 cargo test -p paddock-node openapi and commit it"
        );
    }

    #[test]
    fn every_operation_is_documented_with_its_problems() {
        let doc = super::openapi();
        let mut operations = 0;
        for (path, item) in &doc.paths.paths {
            for op in [&item.get, &item.put, &item.post, &item.delete]
                .into_iter()
                .flatten()
            {
                operations += 1;
                assert!(op.responses.responses.contains_key("401"), "{path}");
                assert!(op.responses.responses.contains_key("503"), "{path}");
            }
        }
        assert!(operations >= 30, "{operations} operations");
    }
}
