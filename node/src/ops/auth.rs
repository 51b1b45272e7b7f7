//! Who may do what: one table of actions and the least role each needs, consulted for every
//! call whatever the transport.
//!
//! A client's write is authorized by the action its [`Command`] is ([`Action::of_command`]), a
//! read by its [`Query`], and the calls that are neither (membership, Raft traffic, forwarding,
//! heartbeats, progress reports) name their action. The matches have no wildcard: a new
//! command, query or call does not compile until it has an entry, so nothing is open by default.
//!
//! Roles today come from the client certificate (`paddock certs client NAME --role R`):
//! `viewer` reads, `operator` also operates VMs, nodes and migrations, `admin` also changes
//! settings and membership, `node` is a cluster member (everything, including the internal
//! calls no person makes).

use paddock_api::certs::{PeerIdentity, Role};
use paddock_model::{Command, Query};

/// Something a caller asks the cluster to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    ClusterStatus,
    MemberAdd,
    MemberRemove,
    KvRead,
    KvWrite,
    NodeRead,
    NodeCordon,
    NodeMaintenance,
    NodeDrain,
    VmRead,
    VmCreate,
    VmStartStop,
    VmDelete,
    VmMigrate,
    /// The VM's serial console (its log): may show what the guest prints, secrets included.
    VmConsole,
    MigrationRead,
    MigrationCancel,
    SettingsRead,
    SettingsWrite,
    ImageRead,
    /// Upload an image (its bytes go to the node called, then to every node).
    ImageImport,
    ImageDelete,
    EventRead,
    /// List API tokens (names, roles, expiry; never secrets).
    TokenRead,
    /// Create or revoke API tokens.
    TokenWrite,
    /// Raft traffic, forwarded requests, heartbeats, agents' reports, leader decisions.
    Internal,
}

/// The least role an action needs, in increasing order of power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Read,
    Operate,
    Administer,
    Member,
}

impl Action {
    /// Every action, for tables and tests.
    pub const ALL: &'static [Action] = &[
        Action::ClusterStatus,
        Action::MemberAdd,
        Action::MemberRemove,
        Action::KvRead,
        Action::KvWrite,
        Action::NodeRead,
        Action::NodeCordon,
        Action::NodeMaintenance,
        Action::NodeDrain,
        Action::VmRead,
        Action::VmCreate,
        Action::VmStartStop,
        Action::VmDelete,
        Action::VmMigrate,
        Action::VmConsole,
        Action::MigrationRead,
        Action::MigrationCancel,
        Action::SettingsRead,
        Action::SettingsWrite,
        Action::ImageRead,
        Action::ImageImport,
        Action::ImageDelete,
        Action::EventRead,
        Action::TokenRead,
        Action::TokenWrite,
        Action::Internal,
    ];

    /// The table.
    pub fn level(self) -> Level {
        match self {
            Action::ClusterStatus
            | Action::KvRead
            | Action::NodeRead
            | Action::VmRead
            | Action::MigrationRead
            | Action::SettingsRead
            | Action::ImageRead
            | Action::EventRead => Level::Read,
            Action::KvWrite
            | Action::NodeCordon
            | Action::NodeMaintenance
            | Action::NodeDrain
            | Action::VmCreate
            | Action::VmStartStop
            | Action::VmDelete
            | Action::VmMigrate
            | Action::VmConsole
            | Action::MigrationCancel
            | Action::ImageImport
            | Action::ImageDelete => Level::Operate,
            Action::MemberAdd
            | Action::MemberRemove
            | Action::SettingsWrite
            | Action::TokenRead
            | Action::TokenWrite => Level::Administer,
            Action::Internal => Level::Member,
        }
    }

    /// The action's name in messages (`vm.create`).
    pub fn name(self) -> &'static str {
        match self {
            Action::ClusterStatus => "cluster.status",
            Action::MemberAdd => "member.add",
            Action::MemberRemove => "member.remove",
            Action::KvRead => "kv.read",
            Action::KvWrite => "kv.write",
            Action::NodeRead => "node.read",
            Action::NodeCordon => "node.cordon",
            Action::NodeMaintenance => "node.maintenance",
            Action::NodeDrain => "node.drain",
            Action::VmRead => "vm.read",
            Action::VmCreate => "vm.create",
            Action::VmStartStop => "vm.start-stop",
            Action::VmDelete => "vm.delete",
            Action::VmMigrate => "vm.migrate",
            Action::VmConsole => "vm.console",
            Action::MigrationRead => "migration.read",
            Action::MigrationCancel => "migration.cancel",
            Action::SettingsRead => "settings.read",
            Action::SettingsWrite => "settings.write",
            Action::ImageRead => "image.read",
            Action::ImageImport => "image.import",
            Action::ImageDelete => "image.delete",
            Action::EventRead => "event.read",
            Action::TokenRead => "token.read",
            Action::TokenWrite => "token.write",
            Action::Internal => "internal",
        }
    }

    /// The action a client's command is.
    pub fn of_command(command: &Command) -> Action {
        match command {
            Command::KvPut { .. } | Command::KvDelete { .. } | Command::KvCas { .. } => {
                Action::KvWrite
            }
            Command::NodeCordon { .. } => Action::NodeCordon,
            Command::NodeMaintenance { .. } => Action::NodeMaintenance,
            Command::NodeDrain { .. } => Action::NodeDrain,
            Command::VmCreate { .. } | Command::VmCreateMany { .. } => Action::VmCreate,
            Command::VmSetDesired { .. } => Action::VmStartStop,
            Command::VmDelete { .. } => Action::VmDelete,
            Command::MigrationCreate { .. } => Action::VmMigrate,
            Command::MigrationCancel { .. } => Action::MigrationCancel,
            Command::SettingSet { .. } => Action::SettingsWrite,
            Command::ImageDelete { .. } => Action::ImageDelete,
            Command::TokenCreate { .. } | Command::TokenRevoke { .. } => Action::TokenWrite,
            // What agents and the leader propose: never a person's.
            Command::NodeRegister { .. }
            | Command::VmPlace { .. }
            | Command::VmWaiting { .. }
            | Command::VmObserved { .. }
            | Command::NodeDown { .. }
            | Command::VmRecover { .. }
            | Command::VmGone { .. }
            | Command::MigrationStart { .. }
            | Command::MigrationPrepared { .. }
            | Command::MigrationSwitch { .. }
            | Command::MigrationFinish { .. }
            | Command::MigrationFail { .. }
            | Command::MigrationRolledBack { .. }
            | Command::NodeDrained { .. }
            // Registered by the node that received and hashed the bytes (the caller of
            // `Images.Import` needs image.import), held by the node that fetched them.
            | Command::ImageRegister { .. }
            | Command::ImageHeld { .. }
            | Command::VmAddresses { .. } => Action::Internal,
        }
    }

    /// The action a read is.
    pub fn of_query(query: &Query) -> Action {
        match query {
            Query::KvGet { .. } | Query::KvList { .. } => Action::KvRead,
            Query::NodeList => Action::NodeRead,
            Query::VmList { .. } | Query::VmGet { .. } => Action::VmRead,
            Query::Settings => Action::SettingsRead,
            Query::MigrationList { .. } | Query::MigrationGet { .. } => Action::MigrationRead,
            Query::Images => Action::ImageRead,
            Query::Events { .. } => Action::EventRead,
            Query::Tokens => Action::TokenRead,
        }
    }
}

/// How much a role may do.
pub fn level_of(role: Role) -> Level {
    match role {
        Role::Viewer => Level::Read,
        Role::Operator => Level::Operate,
        Role::Admin => Level::Administer,
        Role::Node => Level::Member,
    }
}

/// Why a caller was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{who} has role {role}, which may not {action} (it needs {needs}); {hint}", action = .action.name())]
pub struct Denied {
    pub who: String,
    pub role: Role,
    pub action: Action,
    pub needs: &'static str,
    pub hint: &'static str,
}

/// Allows `action` to `caller`, or says why not and what would be allowed.
pub fn authorize(caller: &PeerIdentity, action: Action) -> Result<(), Denied> {
    let needs = action.level();
    if level_of(caller.role) >= needs {
        return Ok(());
    }
    let (needs, hint) = match needs {
        Level::Read => ("any role", "use a certificate of this cluster"),
        Level::Operate => ("operator or admin", "use an operator or admin certificate"),
        Level::Administer => ("admin", "use an admin certificate"),
        Level::Member => ("node", "only cluster nodes make this call"),
    };
    Err(Denied {
        who: caller.name.clone(),
        role: caller.role,
        action,
        needs,
        hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(role: Role) -> PeerIdentity {
        PeerIdentity {
            name: "alice".into(),
            role,
        }
    }

    /// The whole matrix, written out: every action as every role.
    #[test]
    fn every_action_as_every_role() {
        use Action as A;
        // (action, viewer, operator, admin, node)
        let matrix: &[(Action, bool, bool, bool, bool)] = &[
            (A::ClusterStatus, true, true, true, true),
            (A::MemberAdd, false, false, true, true),
            (A::MemberRemove, false, false, true, true),
            (A::KvRead, true, true, true, true),
            (A::KvWrite, false, true, true, true),
            (A::NodeRead, true, true, true, true),
            (A::NodeCordon, false, true, true, true),
            (A::NodeMaintenance, false, true, true, true),
            (A::NodeDrain, false, true, true, true),
            (A::VmRead, true, true, true, true),
            (A::VmCreate, false, true, true, true),
            (A::VmStartStop, false, true, true, true),
            (A::VmDelete, false, true, true, true),
            (A::VmMigrate, false, true, true, true),
            (A::VmConsole, false, true, true, true),
            (A::MigrationRead, true, true, true, true),
            (A::MigrationCancel, false, true, true, true),
            (A::SettingsRead, true, true, true, true),
            (A::SettingsWrite, false, false, true, true),
            (A::ImageRead, true, true, true, true),
            (A::ImageImport, false, true, true, true),
            (A::ImageDelete, false, true, true, true),
            (A::EventRead, true, true, true, true),
            (A::TokenRead, false, false, true, true),
            (A::TokenWrite, false, false, true, true),
            (A::Internal, false, false, false, true),
        ];
        assert_eq!(
            matrix.len(),
            Action::ALL.len(),
            "the matrix lists every action"
        );
        for (action, viewer, operator, admin, node) in matrix {
            for (role, expected) in [
                (Role::Viewer, viewer),
                (Role::Operator, operator),
                (Role::Admin, admin),
                (Role::Node, node),
            ] {
                let allowed = authorize(&who(role), *action).is_ok();
                assert_eq!(allowed, *expected, "{} as {role}", action.name());
            }
        }
    }

    #[test]
    fn a_refusal_names_the_caller_the_action_and_what_would_do() {
        let denied = authorize(&who(Role::Viewer), Action::VmMigrate).expect_err("viewer");
        let text = denied.to_string();
        assert!(text.contains("alice has role viewer"), "{text}");
        assert!(text.contains("vm.migrate"), "{text}");
        assert!(text.contains("operator or admin certificate"), "{text}");
    }

    #[test]
    fn agents_and_leader_commands_are_internal() {
        let internal = Command::VmGone {
            node: "n1".into(),
            vms: vec![],
        };
        assert_eq!(Action::of_command(&internal), Action::Internal);
        let create = Command::MigrationCancel { id: 1 };
        assert_eq!(Action::of_command(&create), Action::MigrationCancel);
    }
}
