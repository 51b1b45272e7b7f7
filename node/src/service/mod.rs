//! gRPC handlers. They check who is calling, convert between protobuf and model types, and
//! hand the work to the proposer or to openraft; no cluster logic lives here.

mod cluster;
mod kv;
mod migrations;
mod nodes;
mod raft;
mod settings;
mod vms;

pub use cluster::ClusterService;
pub use kv::KvService;
pub use migrations::MigrationsService;
pub use nodes::NodesService;
pub use raft::RaftService;
pub use settings::SettingsService;
pub use vms::VmsService;

use paddock_api::certs::{peer_identity, PeerIdentity, Role};
use paddock_api::pb;
use paddock_model::{ClientRequest, Command, Rejection, RejectionKind, Response as Applied};
use tonic::{Request, Response, Status};

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

/// Proposes a client's command; the outer error is the transport's, the inner apply's answer.
async fn write(
    proposer: &Proposer,
    id: Option<pb::RequestId>,
    command: Command,
) -> Result<Result<Applied, Rejection>, Status> {
    let request = ClientRequest {
        id: id.map(Into::into),
        command,
    };
    Ok(proposer.write(request).await?)
}

/// Apply's refusals as status codes that say whose fault it was: the one place a
/// [`RejectionKind`] becomes a gRPC code.
fn refused(rejection: Rejection) -> Status {
    Status::new(code_of(rejection.kind()), rejection.to_string())
}

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

/// A write that answers `Done` on success.
pub(super) async fn done(
    proposer: &Proposer,
    id: Option<pb::RequestId>,
    command: Command,
) -> Result<(), Status> {
    match write(proposer, id, command).await? {
        Ok(Applied::Done) => Ok(()),
        Ok(other) => Err(unexpected(&other)),
        Err(rejection) => Err(refused(rejection)),
    }
}

fn unexpected<T: std::fmt::Debug>(what: &T) -> Status {
    Status::internal(format!("unexpected answer {what:?}"))
}

/// The verified identity of the caller. tonic has already checked the certificate chain
/// against the cluster CA; this reads name and role from it.
fn caller<T>(request: &Request<T>) -> Result<PeerIdentity, Status> {
    let certs = request.peer_certs().ok_or_else(|| {
        Status::unauthenticated("a client certificate of the cluster CA is required")
    })?;
    let leaf = certs.first().ok_or_else(|| {
        Status::unauthenticated("a client certificate of the cluster CA is required")
    })?;
    identity_of(leaf).ok_or_else(|| {
        Status::permission_denied(
            "the client certificate has no Paddock name and role; issue one with `paddock certs client NAME --role ROLE`",
        )
    })
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

/// Only cluster members may speak Raft or forward requests.
fn require_node<T>(request: &Request<T>) -> Result<PeerIdentity, Status> {
    let who = caller(request)?;
    if who.role != Role::Node {
        return Err(Status::permission_denied(format!(
            "{} has role {}; only cluster nodes may call this",
            who.name, who.role
        )));
    }
    Ok(who)
}

/// Writes need a role above viewer.
fn require_writer<T>(request: &Request<T>) -> Result<PeerIdentity, Status> {
    let who = caller(request)?;
    if who.role == Role::Viewer {
        return Err(Status::permission_denied(format!(
            "{} has role viewer, which may only read; use an operator or admin certificate",
            who.name
        )));
    }
    Ok(who)
}

/// Changes to the cluster itself (membership) need admin.
fn require_admin<T>(request: &Request<T>) -> Result<PeerIdentity, Status> {
    let who = caller(request)?;
    if !matches!(who.role, Role::Admin | Role::Node) {
        return Err(Status::permission_denied(format!(
            "{} has role {}; changing the membership needs an admin certificate",
            who.name, who.role
        )));
    }
    Ok(who)
}
