//! Who is calling the HTTPS API, per request: a client certificate of the cluster CA (the
//! connection's, verified by TLS), a bearer token (`Authorization: Bearer pdk.…`), or the
//! dashboard's session cookie — which holds a token, so a session works on every node and
//! ends when its token is revoked. A request authenticated by the cookie that changes
//! anything must carry the session's CSRF token in `X-CSRF-Token`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, Method};
use paddock_api::certs::PeerIdentity;

use super::problem::Problem;
use super::Api;
use crate::ops::tokens;
use crate::service::Authenticated;

pub const SESSION_COOKIE: &str = "paddock_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The client certificate's identity, put on each request of its connection by the server.
#[derive(Debug, Clone)]
pub struct ConnectionIdentity(pub Option<PeerIdentity>);

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Certificate,
    Bearer,
    Session,
}

#[derive(Debug, Clone)]
pub struct Caller {
    pub who: PeerIdentity,
    pub via: Via,
}

impl Caller {
    /// A request for the gRPC services, in process, as this caller.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .extensions_mut()
            .insert(Authenticated(self.who.clone()));
        request
    }
}

/// The CSRF token of a session: derived from its secret token, so it needs no server state
/// and cannot be made by a page that cannot read the cookie.
pub fn csrf_of(token: &str) -> String {
    tokens::sha256_hex(&format!("paddock-csrf:{token}"))
}

/// The session token in the request's cookies, if any.
pub fn session_token(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_string())
}

impl Api {
    /// The identity a token stands for on this replica.
    pub fn token_identity(&self, token: &str) -> Result<PeerIdentity, Problem> {
        let state = self.ops.shared().read();
        tokens::identity(&state.state, token, tokens::now_ms())
            .map_err(|e| Problem::unauthenticated(e.to_string()))
    }
}

impl FromRequestParts<Api> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Caller, Problem> {
        if let Some(ConnectionIdentity(Some(who))) = parts.extensions.get::<ConnectionIdentity>() {
            return Ok(Caller {
                who: who.clone(),
                via: Via::Certificate,
            });
        }
        if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
            let text = value.to_str().unwrap_or_default();
            let token = text
                .strip_prefix("Bearer ")
                .or_else(|| text.strip_prefix("bearer "))
                .ok_or_else(|| {
                    Problem::unauthenticated(
                        "the Authorization header must be `Bearer TOKEN` (a token from `paddock token create`)",
                    )
                })?;
            return Ok(Caller {
                who: api.token_identity(token.trim())?,
                via: Via::Bearer,
            });
        }
        if let Some(token) = session_token(parts) {
            let who = api.token_identity(&token)?;
            let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
            if !safe {
                let given = parts
                    .headers
                    .get(CSRF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if given != csrf_of(&token) {
                    return Err(Problem::new(
                        "permission_denied",
                        axum::http::StatusCode::FORBIDDEN,
                        "a change made with the session cookie needs the session's X-CSRF-Token header; reload the dashboard",
                    ));
                }
            }
            return Ok(Caller {
                who,
                via: Via::Session,
            });
        }
        Err(Problem::unauthenticated(
            "authenticate with `Authorization: Bearer TOKEN` (make one with `paddock token create NAME --role viewer`) or a client certificate of the cluster CA",
        ))
    }
}
