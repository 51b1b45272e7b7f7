//! Plain-HTTP endpoints for probes and scrapers: `/healthz` (the process serves), `/readyz`
//! (a leader is known, so requests can be served) and `/metrics` (Prometheus text). Read-only
//! and without cluster data; everything else goes through gRPC with mutual TLS.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use paddock_raft::Raft;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::NodeMetrics;

#[derive(Clone)]
pub struct HttpState {
    pub raft: Raft,
    pub metrics: Arc<NodeMetrics>,
}

/// Serves until `shutdown` flips to true.
pub async fn serve(listener: TcpListener, state: HttpState, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, &request)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond<B>(state: &HttpState, request: &Request<B>) -> Response<Full<Bytes>> {
    let metrics = state.raft.metrics().borrow().clone();
    let (status, body) = match request.uri().path() {
        "/healthz" => match &metrics.running_state {
            Ok(()) => (StatusCode::OK, "ok\n".to_string()),
            Err(fatal) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("raft stopped: {fatal}\n"),
            ),
        },
        "/readyz" => match metrics.current_leader {
            Some(_) if metrics.running_state.is_ok() => (StatusCode::OK, "ready\n".to_string()),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no leader known\n".to_string(),
            ),
        },
        "/metrics" => match state.metrics.render(&state.raft) {
            Ok(text) => {
                let mut response = Response::new(Full::new(Bytes::from(text)));
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
                );
                return response;
            }
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "try /healthz, /readyz or /metrics\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
