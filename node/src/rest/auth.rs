//! Who is calling the HTTPS API, per request: a client certificate of the cluster CA (the
//! connection's, verified by TLS), a bearer token (`Authorization: Bearer pdk.…`), or the
//! dashboard's session cookie — which holds a token, so a session works on every node and
//! ends when its token is revoked. A request authenticated by the cookie that changes
//! anything must carry the session's CSRF token in `X-CSRF-Token`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, Method};
use paddock_api::certs::PeerIdentity;
use paddock_model::access::{self, Credential};

use super::problem::Problem;
use super::Api;
use crate::ops::tokens;
use crate::service::Authenticated;

pub const SESSION_COOKIE: &str = "paddock_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The client certificate's identity and the peer's address, put on each request of its
/// connection by the server.
#[derive(Debug, Clone)]
pub struct ConnectionIdentity {
    pub identity: Option<PeerIdentity>,
    pub peer: std::net::SocketAddr,
}

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Certificate,
    Bearer,
    Session,
}

#[derive(Debug, Clone)]
pub struct Caller {
    pub who: access::Caller,
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
    /// The token a bearer text stands for on this replica (its name, once its secret, expiry
    /// and existence are checked). A refusal is audited.
    pub async fn token_name(&self, token: &str, from: String) -> Result<String, Problem> {
        let checked = {
            let state = self.ops.shared().read();
            tokens::check(&state.state, token, tokens::now_ms())
        };
        match checked {
            Ok(name) => Ok(name),
            Err(error) => {
                let who = access::Caller {
                    name: error
                        .token_name()
                        .map_or("-".into(), |n| format!("token:{n}")),
                    credential: Credential::Token {
                        token: error.token_name().unwrap_or_default().to_string(),
                    },
                    from,
                    request: String::new(),
                };
                self.ops
                    .note_text(&who, "authenticate", "", &format!("refused: {error}"))
                    .await;
                Err(Problem::unauthenticated(error.to_string()))
            }
        }
    }
}

fn token_caller(name: String, session: bool, from: String) -> access::Caller {
    access::Caller {
        name: format!("token:{name}"),
        credential: if session {
            Credential::Session { token: name }
        } else {
            Credential::Token { token: name }
        },
        from,
        request: String::new(),
    }
}

impl FromRequestParts<Api> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Caller, Problem> {
        let connection = parts.extensions.get::<ConnectionIdentity>().cloned();
        let from = connection
            .as_ref()
            .map(|c| c.peer.to_string())
            .unwrap_or_default();
        if let Some(ConnectionIdentity {
            identity: Some(who),
            peer,
        }) = connection
        {
            return Ok(Caller {
                who: crate::ops::auth::certificate_caller(&who, Some(peer)),
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
            let name = api.token_name(token.trim(), from.clone()).await?;
            return Ok(Caller {
                who: token_caller(name, false, from),
                via: Via::Bearer,
            });
        }
        if let Some(token) = session_token(parts) {
            let name = api.token_name(&token, from.clone()).await?;
            let who = token_caller(name, true, from);
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
