//! Authorization at the edge of the operations layer: the receiving node decides with the
//! model's one table ([`paddock_model::access`]) against its replica, before anything is
//! proposed; apply decides again against the committed state.
//!
//! Calls that are neither a command nor a query (membership, Raft traffic, forwarding, the
//! console, event streams) name their action here, in [`RPCS`]: every gRPC method has an entry,
//! checked at run time by the gRPC server's layer (an unlisted method is refused) and by a test
//! against the proto file.

use paddock_api::certs::PeerIdentity;
use paddock_model::access::{self, Decision, Target};
pub use paddock_model::access::{Action, Caller, Credential};
use paddock_model::ClusterState;

/// Why a caller was refused: the decision's explanation ("alice may not vm.migrate db-1: …").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{explanation}")]
pub struct Denied {
    pub action: Action,
    pub explanation: String,
}

/// The caller a verified client certificate stands for.
pub fn certificate_caller(who: &PeerIdentity, from: Option<std::net::SocketAddr>) -> Caller {
    Caller {
        name: who.name.clone(),
        credential: Credential::Certificate {
            role: who.role.as_str().to_string(),
        },
        from: from.map(|a| a.to_string()).unwrap_or_default(),
        request: String::new(),
    }
}

/// The grants `caller` holds on this replica now.
pub fn grants_of(state: &ClusterState, caller: &Caller) -> Vec<access::Grant> {
    access::grants(
        &state.access,
        &state.tokens,
        caller,
        crate::ops::tokens::now_ms(),
    )
}

/// Decides `action` on `target` for `caller` against this replica.
pub fn decide(
    state: &ClusterState,
    caller: &Caller,
    action: Action,
    target: Target<'_>,
) -> Decision {
    let held = grants_of(state, caller);
    access::decide(&state.access, &caller.name, &held, action, target)
}

/// Allows `action` on `target`, or says why not.
pub fn authorize(
    state: &ClusterState,
    caller: &Caller,
    action: Action,
    target: Target<'_>,
) -> Result<(), Denied> {
    let now = crate::ops::tokens::now_ms();
    if access::allows(&state.access, &state.tokens, caller, now, action, target) {
        return Ok(());
    }
    Err(Denied {
        action,
        explanation: decide(state, caller, action, target).explanation,
    })
}

/// How a gRPC method is authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// By the command it proposes or the query it reads (the action of each, in the model).
    ByRequest,
    /// By this action, checked by the handler.
    Action(Action),
    /// Open to every caller with a certificate or token of this cluster: it answers only about
    /// the caller itself (`whoami`, `auth can` for oneself).
    Caller,
}

/// Every gRPC method and how it is authorized. The gRPC server refuses any method not listed
/// (`service::Guard`), and a test compares this table with the proto file.
pub const RPCS: &[(&str, Permission)] = {
    use Action as A;
    use Permission::{Action as Do, ByRequest, Caller as Me};
    &[
        ("/paddock.v1.Raft/AppendEntries", Do(A::Internal)),
        ("/paddock.v1.Raft/Vote", Do(A::Internal)),
        ("/paddock.v1.Raft/InstallSnapshot", Do(A::Internal)),
        ("/paddock.v1.Raft/Forward", Do(A::Internal)),
        ("/paddock.v1.Raft/TimeoutNow", Do(A::Internal)),
        ("/paddock.v1.Raft/Heartbeat", Do(A::Internal)),
        ("/paddock.v1.Cluster/Status", Do(A::ClusterStatus)),
        ("/paddock.v1.Cluster/Join", Do(A::MemberAdd)),
        ("/paddock.v1.Cluster/RemoveMember", Do(A::MemberRemove)),
        ("/paddock.v1.Kv/Get", ByRequest),
        ("/paddock.v1.Kv/Put", ByRequest),
        ("/paddock.v1.Kv/Delete", ByRequest),
        ("/paddock.v1.Kv/Cas", ByRequest),
        ("/paddock.v1.Kv/List", ByRequest),
        ("/paddock.v1.Nodes/List", Do(A::NodeRead)),
        ("/paddock.v1.Nodes/Cordon", ByRequest),
        ("/paddock.v1.Nodes/Maintenance", ByRequest),
        ("/paddock.v1.Nodes/Drain", ByRequest),
        ("/paddock.v1.Vms/Create", ByRequest),
        ("/paddock.v1.Vms/CreateMany", ByRequest),
        ("/paddock.v1.Vms/List", ByRequest),
        ("/paddock.v1.Vms/Get", ByRequest),
        ("/paddock.v1.Vms/SetDesired", ByRequest),
        ("/paddock.v1.Vms/Delete", ByRequest),
        ("/paddock.v1.Vms/Logs", Do(A::VmConsole)),
        ("/paddock.v1.Vms/Console", Do(A::VmConsole)),
        ("/paddock.v1.Settings/List", ByRequest),
        ("/paddock.v1.Settings/Set", ByRequest),
        ("/paddock.v1.Migrations/Create", ByRequest),
        ("/paddock.v1.Migrations/List", Do(A::MigrationRead)),
        ("/paddock.v1.Migrations/Get", Do(A::MigrationRead)),
        ("/paddock.v1.Migrations/Watch", Do(A::MigrationRead)),
        ("/paddock.v1.Migrations/Cancel", ByRequest),
        ("/paddock.v1.Migrations/Report", Do(A::Internal)),
        ("/paddock.v1.Images/Import", Do(A::ImageImport)),
        ("/paddock.v1.Images/Fetch", Do(A::Internal)),
        ("/paddock.v1.Images/List", ByRequest),
        ("/paddock.v1.Images/Delete", ByRequest),
        ("/paddock.v1.Events/List", ByRequest),
        ("/paddock.v1.Events/Follow", Do(A::EventRead)),
        ("/paddock.v1.Tokens/Create", ByRequest),
        ("/paddock.v1.Tokens/List", ByRequest),
        ("/paddock.v1.Tokens/Revoke", ByRequest),
        ("/paddock.v1.Access/CreateRole", ByRequest),
        ("/paddock.v1.Access/DeleteRole", ByRequest),
        ("/paddock.v1.Access/Roles", ByRequest),
        ("/paddock.v1.Access/Bind", ByRequest),
        ("/paddock.v1.Access/Unbind", ByRequest),
        ("/paddock.v1.Access/Users", ByRequest),
        ("/paddock.v1.Access/WhoAmI", Me),
        ("/paddock.v1.Access/Can", Me),
        ("/paddock.v1.Audit/List", ByRequest),
        ("/paddock.v1.Audit/Verify", Do(A::AuditRead)),
    ]
};

/// How the method at `path` is authorized, if it is listed.
pub fn permission_of(path: &str) -> Option<Permission> {
    RPCS.iter().find(|(p, _)| *p == path).map(|(_, perm)| *perm)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `rpc` of the proto file has exactly one entry in [`RPCS`], and every entry is an
    /// `rpc` of the proto file: nothing is open by default, nothing listed is stale.
    #[test]
    fn every_grpc_method_has_a_permission() {
        let proto = include_str!("../../../api/proto/paddock.proto");
        let package = proto
            .lines()
            .find_map(|l| l.trim().strip_prefix("package "))
            .map(|p| p.trim_end_matches(';').trim())
            .expect("package line");
        let mut service = "";
        let mut methods = Vec::new();
        for line in proto.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.trim_end_matches('{').trim();
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let name = rest.split('(').next().expect("rpc name").trim();
                methods.push(format!("/{package}.{service}/{name}"));
            }
        }
        assert!(methods.len() > 40, "parsed {} methods", methods.len());
        for method in &methods {
            assert_eq!(
                RPCS.iter().filter(|(p, _)| p == method).count(),
                1,
                "{method} needs exactly one entry in ops::auth::RPCS"
            );
        }
        for (path, _) in RPCS {
            assert!(
                methods.iter().any(|m| m == path),
                "{path} is not in the proto file"
            );
        }
    }

    #[test]
    fn a_refusal_explains_itself() {
        let state = ClusterState::default();
        let viewer = certificate_caller(
            &PeerIdentity {
                name: "alice".into(),
                role: paddock_api::certs::Role::Viewer,
            },
            None,
        );
        let denied =
            authorize(&state, &viewer, Action::VmMigrate, Target::Cluster).expect_err("viewer");
        assert!(
            denied.to_string().starts_with("alice may not vm.migrate"),
            "{denied}"
        );
        assert!(authorize(&state, &viewer, Action::VmRead, Target::Cluster).is_ok());
    }
}
