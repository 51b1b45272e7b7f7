//! gRPC handlers: adapters over the operations layer ([`crate::ops`]). They authenticate the
//! caller (its client certificate), convert between protobuf and model types, and hand the
//! work to `Ops` (which authorizes, checks and proposes) or, for Raft traffic, to openraft; no
//! cluster logic lives here.

mod access;
mod audit;
mod cluster;
pub(crate) mod events;
mod images;
mod kv;
mod migrations;
mod nodes;
mod raft;
mod settings;
mod tokens;
mod vms;

pub use access::AccessService;
pub use audit::AuditService;
pub use cluster::ClusterService;
pub use events::EventsService;
pub use images::ImagesService;
pub use kv::KvService;
pub use migrations::MigrationsService;
pub use nodes::NodesService;
pub use raft::RaftService;
pub use settings::SettingsService;
pub use tokens::TokensService;
pub use vms::VmsService;

use paddock_api::certs::{peer_identity, PeerIdentity};
use paddock_model::access::{Caller, Credential};
use paddock_model::RejectionKind;
use tonic::{Request, Response, Status};

use crate::ops::auth::certificate_caller;
use crate::ops::{Action, OpError, Ops};
use crate::proposer::Proposer;

/// Wraps an answer; on a follower, names the leader so the client can go there directly.
fn reply<T>(proposer: &Proposer, message: T) -> Response<T> {
    let mut response = Response::new(message);
    if let Some(address) = proposer.leader_elsewhere() {
        if let Ok(value) = address.parse() {
            response
                .metadata_mut()
                .insert(paddock_api::client::LEADER_HEADER, value);
        }
    }
    response
}

const NO_LEADER: &str =
    "no leader is known yet (election under way, or no majority reachable); retry shortly";

/// Where a request only the leader answers goes: `Some(address)` when another node leads,
/// `None` when this one does, `Unavailable` while no leader is known.
fn leader_elsewhere(proposer: &Proposer) -> Result<Option<String>, Status> {
    match proposer.leader() {
        Some((leader, address)) if leader != proposer.node_id() => Ok(Some(address)),
        Some(_) => Ok(None),
        None => Err(Status::unavailable(NO_LEADER)),
    }
}

impl From<OpError> for Status {
    fn from(e: OpError) -> Self {
        match e.kind() {
            Some(kind) => Status::new(code_of(kind), e.to_string()),
            None => Status::internal(e.to_string()),
        }
    }
}

/// The one place a [`RejectionKind`] becomes a gRPC code.
pub fn code_of(kind: RejectionKind) -> tonic::Code {
    use tonic::Code;
    match kind {
        RejectionKind::NotFound => Code::NotFound,
        RejectionKind::AlreadyExists => Code::AlreadyExists,
        RejectionKind::FailedPrecondition => Code::FailedPrecondition,
        RejectionKind::Invalid => Code::InvalidArgument,
        RejectionKind::NoCapacity => Code::ResourceExhausted,
        RejectionKind::Unavailable => Code::Unavailable,
        RejectionKind::PermissionDenied => Code::PermissionDenied,
    }
}

/// Apply's refusal as a status.
fn refused(rejection: paddock_model::Rejection) -> Status {
    OpError::from(rejection).into()
}

fn unexpected<T: std::fmt::Debug>(what: &T) -> Status {
    OpError::unexpected(what).into()
}

/// The caller, allowed `action` against this replica (for calls that are not a command or a
/// query; those are authorized by `Ops` from what they are). A refusal is audited.
async fn authorized<T>(ops: &Ops, request: &Request<T>, action: Action) -> Result<Caller, Status> {
    let who = caller(request)?;
    ops.authorize(&who, action).await?;
    Ok(who)
}

/// An identity the HTTPS API verified, carried into these services in process.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Caller);

/// The verified identity of the caller. tonic has already checked the certificate chain
/// against the cluster CA; this reads name and role from it.
fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    // A request of the HTTPS API, authenticated there (client certificate or bearer token)
    // and handed to this service in process: extensions never come off the wire.
    if let Some(Authenticated(who)) = request.extensions().get::<Authenticated>() {
        return Ok(who.clone());
    }
    let certs = request.peer_certs().ok_or_else(|| {
        Status::unauthenticated("a client certificate of the cluster CA is required")
    })?;
    let leaf = certs.first().ok_or_else(|| {
        Status::unauthenticated("a client certificate of the cluster CA is required")
    })?;
    let who = identity_of(leaf).ok_or_else(|| {
        Status::permission_denied(
            "the client certificate has no Paddock name and role; issue one with `paddock certs client NAME --role ROLE`",
        )
    })?;
    Ok(certificate_caller(&who, request.remote_addr()))
}

/// The Raft service's check: only cluster nodes (certificate role `node`) make these calls.
/// It runs on every append and vote, so it reads the certificate only, never the replica.
fn member<T>(request: &Request<T>) -> Result<Caller, Status> {
    let who = caller(request)?;
    match &who.credential {
        Credential::Certificate { role } if role == "node" => Ok(who),
        _ => Err(Status::permission_denied(format!(
            "{} may not make cluster-internal calls: only cluster nodes (certificate role node) do",
            who.name
        ))),
    }
}

/// Parsing the certificate on every request shows in profiles; a caller presents the same
/// certificate on every request of its connection, so identities are kept by certificate.
fn identity_of(der: &[u8]) -> Option<PeerIdentity> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    /// Bound on remembered certificates; the cache is simply emptied when full.
    const MAX_CACHED: usize = 1024;
    static KNOWN: OnceLock<Mutex<HashMap<Vec<u8>, Option<PeerIdentity>>>> = OnceLock::new();
    let known = KNOWN.get_or_init(Mutex::default);
    if let Some(found) = known.lock().ok().and_then(|k| k.get(der).cloned()) {
        return found;
    }
    let parsed = peer_identity(der);
    if let Ok(mut k) = known.lock() {
        if k.len() >= MAX_CACHED {
            k.clear();
        }
        k.insert(der.to_vec(), parsed.clone());
    }
    parsed
}

/// The gRPC server's first check: a method without an entry in the permission table
/// ([`crate::ops::auth::RPCS`]) is refused before any handler runs, so nothing added to the
/// proto file is ever open by default.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardLayer;

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Guard<S> {
    inner: S,
}

impl<S, B> tower::Service<axum::http::Request<B>> for Guard<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if crate::ops::auth::permission_of(path).is_none() {
            let status = Status::permission_denied(format!(
                "{path} has no entry in Paddock's permission table, so it is refused"
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Box::pin(self.inner.call(request))
    }
}
