//! gRPC handlers. They check who is calling, convert between protobuf and model types, and
//! hand the work to the proposer or to openraft; no cluster logic lives here.

mod cluster;
mod kv;
mod raft;

pub use cluster::ClusterService;
pub use kv::KvService;
pub use raft::RaftService;

use paddock_api::certs::{peer_identity, PeerIdentity, Role};
use tonic::{Request, Status};

/// The verified identity of the caller. tonic has already checked the certificate chain
/// against the cluster CA; this reads name and role from it.
fn caller<T>(request: &Request<T>) -> Result<PeerIdentity, Status> {
    let certs = request.peer_certs().ok_or_else(|| {
        Status::unauthenticated("a client certificate of the cluster CA is required")
    })?;
    let leaf = certs.first().ok_or_else(|| {
        Status::unauthenticated("a client certificate of the cluster CA is required")
    })?;
    peer_identity(leaf).ok_or_else(|| {
        Status::permission_denied(
            "the client certificate has no Paddock name and role; issue one with `paddock certs client NAME --role ROLE`",
        )
    })
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
