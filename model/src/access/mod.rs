//! Who may do what: the one permission table, roles (built-in and custom), bindings of users
//! to roles with an optional label scope, and the decision over them.
//!
//! Every call of every transport is an [`Action`]; a caller holds [`Grant`]s (the role its
//! certificate names, the roles its name is bound to, or its token's role and scope). A grant
//! allows an action when its role lists the action and, for a scoped grant, the target VM
//! carries the scope's label. [`decide`] is a pure function over the replicated state: the
//! node that receives a call decides before proposing (a quick refusal), and apply decides again
//! against the committed state, so a revoked role or token stops working in log order.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::command::{Command, Rejection};

mod apply;

macro_rules! actions {
    ($($variant:ident = $name:literal, $doc:literal;)*) => {
        /// Something a caller asks the cluster to do. Serialized by name, so new actions can
        /// be added anywhere.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Action {
            $(#[doc = $doc] $variant,)*
        }

        impl Action {
            /// Every action, in table order.
            pub const ALL: &'static [Action] = &[$(Action::$variant,)*];

            /// The action's name (`vm.create`), as roles list it and messages show it.
            pub fn name(self) -> &'static str {
                match self {
                    $(Action::$variant => $name,)*
                }
            }

            /// What the action allows, for `paddock role actions`.
            pub fn describe(self) -> &'static str {
                match self {
                    $(Action::$variant => $doc,)*
                }
            }

            pub fn parse(name: &str) -> Option<Action> {
                match name {
                    $($name => Some(Action::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

actions! {
    ClusterStatus = "cluster.status", "See the cluster's status: leader, term, members, nodes' health.";
    SettingsRead = "cluster.settings.read", "Read the cluster settings.";
    SettingsWrite = "cluster.settings.write", "Change a cluster setting.";
    MemberAdd = "member.add", "Add a node to the Raft membership.";
    MemberRemove = "member.remove", "Remove a node from the Raft membership.";
    KvRead = "kv.read", "Read the cluster key/value space.";
    KvWrite = "kv.write", "Write or delete keys of the key/value space.";
    NodeRead = "node.read", "List nodes and their capacity, labels and state.";
    NodeCordon = "node.cordon", "Cordon or uncordon a node.";
    NodeMaintenance = "node.maintenance", "Put a node into or out of maintenance.";
    NodeDrain = "node.drain", "Drain or evacuate a node (its VMs move away).";
    VmRead = "vm.read", "List and show VMs, their events and addresses.";
    VmCreate = "vm.create", "Create VMs.";
    VmStart = "vm.start", "Start a VM (set it to running).";
    VmStop = "vm.stop", "Stop a VM (set it to stopped).";
    VmDelete = "vm.delete", "Delete a VM.";
    VmMigrate = "vm.migrate", "Live-migrate a VM.";
    VmConsole = "vm.console", "Read a VM's serial log and use its console (may show secrets).";
    MigrationRead = "migration.read", "List and show migrations.";
    MigrationCancel = "migration.cancel", "Cancel a migration.";
    ImageRead = "image.read", "List images.";
    ImageImport = "image.import", "Import an image.";
    ImageDelete = "image.delete", "Delete an image.";
    EventRead = "event.read", "Read and follow the cluster's events.";
    TokenRead = "token.read", "List API tokens (names, roles, expiry; never secrets).";
    TokenCreate = "token.create", "Create API tokens.";
    TokenRevoke = "token.revoke", "Revoke API tokens.";
    RoleRead = "role.read", "List roles and what they allow.";
    RoleWrite = "role.write", "Create and delete custom roles.";
    UserRead = "user.read", "List users' role bindings; explain another caller's permissions.";
    UserBind = "user.bind", "Bind users to roles and remove bindings.";
    AuditRead = "audit.read", "List and verify the audit log.";
    Internal = "internal", "Raft traffic, forwarding, heartbeats, agents' reports: cluster nodes only.";
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Action, D::Error> {
        let name = String::deserialize(d)?;
        Action::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown action {name:?}")))
    }
}

impl Action {
    /// Actions on one VM (or on what belongs to one VM, such as its migrations): the only
    /// ones a scoped grant can allow, for VMs that carry the scope's label.
    pub fn on_vm(self) -> bool {
        matches!(
            self,
            Action::VmRead
                | Action::VmCreate
                | Action::VmStart
                | Action::VmStop
                | Action::VmDelete
                | Action::VmMigrate
                | Action::VmConsole
                | Action::MigrationRead
                | Action::MigrationCancel
        )
    }

    /// Reads that change nothing.
    pub fn is_read(self) -> bool {
        matches!(
            self,
            Action::ClusterStatus
                | Action::SettingsRead
                | Action::KvRead
                | Action::NodeRead
                | Action::VmRead
                | Action::MigrationRead
                | Action::ImageRead
                | Action::EventRead
                | Action::TokenRead
                | Action::RoleRead
                | Action::UserRead
                | Action::AuditRead
        )
    }
}

/// The action a request's command is. No wildcard: a new command does not compile until it
/// has an entry, so nothing is open by default.
pub fn action_of(command: &Command) -> Action {
    match command {
        Command::KvPut { .. } | Command::KvDelete { .. } | Command::KvCas { .. } => {
            Action::KvWrite
        }
        Command::NodeCordon { .. } => Action::NodeCordon,
        Command::NodeMaintenance { .. } => Action::NodeMaintenance,
        Command::NodeDrain { .. } => Action::NodeDrain,
        Command::VmCreate { .. } | Command::VmCreateMany { .. } => Action::VmCreate,
        Command::VmSetDesired { desired, .. } => match desired {
            crate::vm::Desired::Running => Action::VmStart,
            crate::vm::Desired::Stopped => Action::VmStop,
        },
        Command::VmDelete { .. } => Action::VmDelete,
        Command::MigrationCreate { .. } => Action::VmMigrate,
        Command::MigrationCancel { .. } => Action::MigrationCancel,
        Command::SettingSet { .. } => Action::SettingsWrite,
        Command::ImageDelete { .. } => Action::ImageDelete,
        Command::TokenCreate { .. } => Action::TokenCreate,
        Command::TokenRevoke { .. } => Action::TokenRevoke,
        Command::RoleCreate { .. } | Command::RoleDelete { .. } => Action::RoleWrite,
        Command::UserBind { .. } | Command::UserUnbind { .. } => Action::UserBind,
        // What agents and the leader propose, and audit notes: never a person's.
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
        | Command::VmAddresses { .. }
        | Command::AuditNote { .. } => Action::Internal,
    }
}

/// The action a read is.
pub fn action_of_query(query: &crate::query::Query) -> Action {
    use crate::query::Query;
    match query {
        Query::KvGet { .. } | Query::KvList { .. } => Action::KvRead,
        Query::NodeList => Action::NodeRead,
        Query::VmList { .. } | Query::VmGet { .. } => Action::VmRead,
        Query::Settings => Action::SettingsRead,
        Query::MigrationList { .. } | Query::MigrationGet { .. } => Action::MigrationRead,
        Query::Images => Action::ImageRead,
        Query::Events { .. } => Action::EventRead,
        Query::Tokens => Action::TokenRead,
        Query::Access => Action::RoleRead,
        Query::Audit { .. } | Query::AuditVerify { .. } => Action::AuditRead,
    }
}

/// What a command is done to, for the audit log: a VM, node, key, token, role or user name.
pub fn target_of(command: &Command) -> String {
    match command {
        Command::KvPut { key, .. } | Command::KvDelete { key } | Command::KvCas { key, .. } => {
            key.clone()
        }
        Command::NodeCordon { name, .. }
        | Command::NodeMaintenance { name, .. }
        | Command::NodeDrain { name, .. }
        | Command::NodeRegister { name, .. }
        | Command::NodeDown { name }
        | Command::NodeDrained { name }
        | Command::VmCreate { name, .. }
        | Command::VmSetDesired { name, .. }
        | Command::VmDelete { name }
        | Command::ImageRegister { name, .. }
        | Command::ImageHeld { name, .. }
        | Command::ImageDelete { name }
        | Command::TokenCreate { name, .. }
        | Command::TokenRevoke { name }
        | Command::RoleCreate { name, .. }
        | Command::RoleDelete { name } => name.clone(),
        Command::SettingSet { key, value } => format!("{key}={value}"),
        Command::VmCreateMany { vms } => match vms.as_slice() {
            [one] => one.name.clone(),
            [first, .., last] => format!("{} VMs ({} … {})", vms.len(), first.name, last.name),
            [] => String::new(),
        },
        Command::MigrationCreate { vm, .. } | Command::VmRecover { vm, .. } => vm.clone(),
        Command::MigrationStart { id, .. }
        | Command::MigrationPrepared { id, .. }
        | Command::MigrationSwitch { id }
        | Command::MigrationFinish { id, .. }
        | Command::MigrationFail { id, .. }
        | Command::MigrationRolledBack { id, .. }
        | Command::MigrationCancel { id } => format!("migration {id}"),
        Command::UserBind { user, role, scope } | Command::UserUnbind { user, role, scope } => {
            match scope {
                Some(scope) => format!("{user} → {role} scoped to {scope}"),
                None => format!("{user} → {role}"),
            }
        }
        Command::AuditNote { target, .. } => target.clone(),
        Command::VmPlace { .. }
        | Command::VmWaiting { .. }
        | Command::VmObserved { .. }
        | Command::VmGone { .. }
        | Command::VmAddresses { .. } => String::new(),
    }
}

/// The built-in roles, weakest first. `node` is for cluster members' certificates only.
pub const BUILTIN_ROLES: &[&str] = &["viewer", "operator", "admin", "node"];

/// Whether built-in role `role` allows `action`; `None` when `role` is not built in.
pub fn builtin_allows(role: &str, action: Action) -> Option<bool> {
    use Action as A;
    let operator = |a: Action| {
        a.is_read() && !matches!(a, A::TokenRead | A::UserRead | A::AuditRead)
            || matches!(
                a,
                A::KvWrite
                    | A::NodeCordon
                    | A::NodeMaintenance
                    | A::NodeDrain
                    | A::VmCreate
                    | A::VmStart
                    | A::VmStop
                    | A::VmDelete
                    | A::VmMigrate
                    | A::VmConsole
                    | A::MigrationCancel
                    | A::ImageImport
                    | A::ImageDelete
            )
    };
    Some(match role {
        "viewer" => {
            action.is_read()
                && !matches!(
                    action,
                    A::TokenRead | A::UserRead | A::AuditRead | A::RoleRead
                )
        }
        "operator" => operator(action),
        "admin" => action != A::Internal,
        "node" => true,
        _ => return None,
    })
}

/// Most custom roles, and most bindings per user.
pub const MAX_ROLES: usize = 200;
pub const MAX_BINDINGS: usize = 50;
/// Most users with bindings.
pub const MAX_USERS: usize = 10_000;

/// A label a grant is limited to: VMs carrying `key=value`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Scope {
    pub key: String,
    pub value: String,
}

impl Scope {
    /// `team=web`.
    pub fn parse(text: &str) -> Result<Scope, String> {
        match text.split_once('=') {
            Some((key, value)) if !key.is_empty() && !value.is_empty() => {
                crate::ids::validate_label(key, value)?;
                Ok(Scope {
                    key: key.into(),
                    value: value.into(),
                })
            }
            _ => Err(format!(
                "scope {text:?} is not KEY=VALUE; give a VM label such as team=web"
            )),
        }
    }

    pub fn covers(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.get(&self.key) == Some(&self.value)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// A role made by an admin: the actions it allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomRole {
    pub allow: BTreeSet<Action>,
    pub created_ms: u64,
    pub created_by: String,
}

/// A user's binding to a role, possibly limited to a label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Binding {
    pub role: String,
    pub scope: Option<Scope>,
}

/// The replicated access-control state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Custom roles by name (built-in ones are not stored).
    pub roles: BTreeMap<String, CustomRole>,
    /// Users (certificate CN) and their bindings.
    pub users: BTreeMap<String, BTreeSet<Binding>>,
}

impl Access {
    /// Whether role `role` (built-in or custom) allows `action`; `None` for an unknown role.
    pub fn role_allows(&self, role: &str, action: Action) -> Option<bool> {
        builtin_allows(role, action)
            .or_else(|| self.roles.get(role).map(|r| r.allow.contains(&action)))
    }

    pub fn role_exists(&self, role: &str) -> bool {
        BUILTIN_ROLES.contains(&role) || self.roles.contains_key(role)
    }

    /// The actions a role allows.
    pub fn allowed_by(&self, role: &str) -> Vec<Action> {
        Action::ALL
            .iter()
            .copied()
            .filter(|a| self.role_allows(role, *a) == Some(true))
            .collect()
    }

    /// Who uses role `role` (users bound to it).
    pub fn users_of(&self, role: &str) -> Vec<&str> {
        self.users
            .iter()
            .filter(|(_, bindings)| bindings.iter().any(|b| b.role == role))
            .map(|(user, _)| user.as_str())
            .collect()
    }
}

/// Checks a new custom role: its name, and that it lists known actions (never `internal`).
pub fn validate_role(name: &str, allow: &[String]) -> Result<BTreeSet<Action>, Rejection> {
    crate::ids::validate_node_name(name).map_err(|reason| Rejection::Invalid {
        reason: format!("role name: {reason}"),
    })?;
    if BUILTIN_ROLES.contains(&name) {
        return Err(Rejection::Invalid {
            reason: format!("{name} is a built-in role; pick another name"),
        });
    }
    if allow.is_empty() {
        return Err(Rejection::Invalid {
            reason: "a role allows at least one action: --allow vm.start,vm.stop".into(),
        });
    }
    let mut actions = BTreeSet::new();
    for name in allow {
        match Action::parse(name) {
            Some(Action::Internal) => {
                return Err(Rejection::Invalid {
                    reason: "a role cannot allow `internal`: that is for cluster nodes only".into(),
                })
            }
            Some(action) => {
                actions.insert(action);
            }
            None => {
                return Err(Rejection::Invalid {
                    reason: format!(
                        "unknown action {name:?}; `paddock role actions` lists them (e.g. vm.start)"
                    ),
                })
            }
        }
    }
    Ok(actions)
}

/// How a caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Credential {
    /// A client certificate of the cluster CA, naming this role.
    Certificate { role: String },
    /// An API token (bearer), by token name.
    Token { token: String },
    /// The dashboard's session, opened with this token.
    Session { token: String },
}

/// Who is asking, where from, and which request this is: what authorization decides on and
/// what the audit log records. Set by the node that authenticated the caller; forwarded with
/// the request (only cluster nodes may forward).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// Certificate CN, or `token:NAME`.
    pub name: String,
    pub credential: Credential,
    /// The peer's address as the receiving node saw it.
    pub from: String,
    /// The request's id, for the audit log (the client's exactly-once id, or one made up).
    pub request: String,
}

impl Caller {
    /// The token behind a token or session credential.
    pub fn token(&self) -> Option<&str> {
        match &self.credential {
            Credential::Token { token } | Credential::Session { token } => Some(token),
            Credential::Certificate { .. } => None,
        }
    }

    /// `certificate (operator)`, `token ci`, `session (token ci)`.
    pub fn via(&self) -> String {
        match &self.credential {
            Credential::Certificate { role } => format!("certificate ({role})"),
            Credential::Token { token } => format!("token {token}"),
            Credential::Session { token } => format!("session (token {token})"),
        }
    }
}

/// One role a caller holds, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub role: String,
    pub scope: Option<Scope>,
    /// Where it comes from: `its certificate`, `binding`, `token ci`.
    pub source: String,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.role)?;
        if let Some(scope) = &self.scope {
            write!(f, " scoped to {scope}")?;
        }
        write!(f, " from {}", self.source)
    }
}

/// The grants of `caller` in the replicated state at `now_ms`. A token that is gone or
/// expired grants nothing.
pub fn grants(
    access: &Access,
    tokens: &BTreeMap<String, crate::token::ApiToken>,
    caller: &Caller,
    now_ms: u64,
) -> Vec<Grant> {
    let mut out = Vec::new();
    match &caller.credential {
        Credential::Certificate { role } => {
            out.push(Grant {
                role: role.clone(),
                scope: None,
                source: "its certificate".into(),
            });
            for binding in access.users.get(&caller.name).into_iter().flatten() {
                out.push(Grant {
                    role: binding.role.clone(),
                    scope: binding.scope.clone(),
                    source: "binding".into(),
                });
            }
        }
        Credential::Token { token } | Credential::Session { token } => {
            if let Some(t) = tokens.get(token).filter(|t| t.valid_at(now_ms)) {
                out.push(Grant {
                    role: t.role.clone(),
                    scope: t.scope.clone(),
                    source: format!("token {token}"),
                });
            }
        }
    }
    out
}

/// Whether some grant of `caller` allows `action` on `target` — the same answer as
/// [`decide`] over [`grants`], without building either (no allocation): the path every
/// allowed request takes. [`decide`] runs only to explain.
pub fn allows(
    access: &Access,
    tokens: &BTreeMap<String, crate::token::ApiToken>,
    caller: &Caller,
    now_ms: u64,
    action: Action,
    target: Target<'_>,
) -> bool {
    let one = |role: &str, scope: Option<&Scope>| {
        access.role_allows(role, action) == Some(true)
            && match (scope, target) {
                (None, _) => true,
                (Some(scope), Target::Vm { labels, .. }) => action.on_vm() && scope.covers(labels),
                (Some(_), Target::Cluster) => action.on_vm() && action.is_read(),
            }
    };
    match &caller.credential {
        Credential::Certificate { role } => {
            one(role, None)
                || access
                    .users
                    .get(&caller.name)
                    .is_some_and(|b| b.iter().any(|b| one(&b.role, b.scope.as_ref())))
        }
        Credential::Token { token } | Credential::Session { token } => tokens
            .get(token)
            .filter(|t| t.valid_at(now_ms))
            .is_some_and(|t| one(&t.role, t.scope.as_ref())),
    }
}

/// What an action is done to.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// The cluster as a whole (or a list, filtered afterwards).
    Cluster,
    /// One VM, with its labels (for a new VM, the labels it asks for).
    Vm {
        name: &'a str,
        labels: &'a BTreeMap<String, String>,
    },
}

/// A decision and its explanation, e.g. "alice may not vm.migrate db-1: role web-operator
/// (binding) is scoped to team=web, db-1 has team=db".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub explanation: String,
}

/// Decides whether a caller holding `grants` may do `action` to `target`.
pub fn decide(
    access: &Access,
    who: &str,
    grants: &[Grant],
    action: Action,
    target: Target<'_>,
) -> Decision {
    let on = match target {
        Target::Cluster => String::new(),
        Target::Vm { name, .. } => format!(" {name}"),
    };
    let mut scoped_out = Vec::new();
    for grant in grants {
        if access.role_allows(&grant.role, action) != Some(true) {
            continue;
        }
        match (&grant.scope, target) {
            (None, _) => {
                return Decision {
                    allowed: true,
                    explanation: format!("{who} may {action}{on}: role {grant}"),
                }
            }
            (Some(scope), Target::Vm { labels, .. }) if action.on_vm() => {
                if scope.covers(labels) {
                    return Decision {
                        allowed: true,
                        explanation: format!("{who} may {action}{on}: role {grant}"),
                    };
                }
                scoped_out.push((grant, scope));
            }
            (Some(scope), Target::Cluster) if action.on_vm() && action.is_read() => {
                // A list: allowed, and filtered to what the scopes cover.
                return Decision {
                    allowed: true,
                    explanation: format!(
                        "{who} may {action}: role {grant}, showing only VMs with {scope}"
                    ),
                };
            }
            (Some(scope), _) => scoped_out.push((grant, scope)),
        }
    }
    let explanation = if let Some((grant, scope)) = scoped_out.first() {
        let has = match target {
            Target::Vm { name, labels } => match labels.get(&scope.key) {
                Some(value) => format!(", {name} has {}={value}", scope.key),
                None => format!(", {name} has no label {}", scope.key),
            },
            Target::Cluster if action.on_vm() => "; on a VM with that label it may".into(),
            Target::Cluster => format!(" and {action} is not an action on one VM"),
        };
        format!(
            "{who} may not {action}{on}: role {} ({}) is scoped to {scope}{has}",
            grant.role, grant.source
        )
    } else if grants.is_empty() {
        format!("{who} may not {action}{on}: it holds no role (a token that is revoked or expired holds none)")
    } else {
        let held: Vec<String> = grants.iter().map(|g| g.to_string()).collect();
        format!(
            "{who} may not {action}{on}: its roles ({}) do not allow {action}; an admin can bind a role that does (`paddock user bind NAME ROLE`)",
            held.join(", ")
        )
    };
    Decision {
        allowed: false,
        explanation,
    }
}

/// Whether a caller holding `grants` may see VM `labels` with `action` (a list's filter).
pub fn may_see(
    access: &Access,
    grants: &[Grant],
    action: Action,
    labels: &BTreeMap<String, String>,
) -> bool {
    grants.iter().any(|g| {
        access.role_allows(&g.role, action) == Some(true)
            && g.scope.as_ref().is_none_or(|s| s.covers(labels))
    })
}

/// What of a list a caller may see with `action`: `None` for everything (an unscoped grant
/// allows it), else only VMs carrying one of the returned labels.
pub fn visible_scopes(access: &Access, grants: &[Grant], action: Action) -> Option<Vec<Scope>> {
    let allowing = grants
        .iter()
        .filter(|g| access.role_allows(&g.role, action) == Some(true));
    let mut scopes = Vec::new();
    for grant in allowing {
        match &grant.scope {
            None => return None,
            Some(scope) => scopes.push(scope.clone()),
        }
    }
    Some(scopes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn cert(role: &str) -> Grant {
        Grant {
            role: role.into(),
            scope: None,
            source: "its certificate".into(),
        }
    }

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut seen = BTreeSet::new();
        for a in Action::ALL {
            assert_eq!(Action::parse(a.name()), Some(*a));
            assert!(seen.insert(a.name()), "{} twice", a.name());
            let bytes = postcard::to_allocvec(a).expect("encode");
            assert_eq!(postcard::from_bytes::<Action>(&bytes).expect("decode"), *a);
        }
    }

    /// The built-in matrix, written out: every action as every built-in role.
    #[test]
    fn every_action_as_every_builtin_role() {
        use Action as A;
        // (action, viewer, operator, admin, node)
        let matrix: &[(Action, bool, bool, bool, bool)] = &[
            (A::ClusterStatus, true, true, true, true),
            (A::SettingsRead, true, true, true, true),
            (A::SettingsWrite, false, false, true, true),
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
            (A::VmStart, false, true, true, true),
            (A::VmStop, false, true, true, true),
            (A::VmDelete, false, true, true, true),
            (A::VmMigrate, false, true, true, true),
            (A::VmConsole, false, true, true, true),
            (A::MigrationRead, true, true, true, true),
            (A::MigrationCancel, false, true, true, true),
            (A::ImageRead, true, true, true, true),
            (A::ImageImport, false, true, true, true),
            (A::ImageDelete, false, true, true, true),
            (A::EventRead, true, true, true, true),
            (A::TokenRead, false, false, true, true),
            (A::TokenCreate, false, false, true, true),
            (A::TokenRevoke, false, false, true, true),
            (A::RoleRead, false, true, true, true),
            (A::RoleWrite, false, false, true, true),
            (A::UserRead, false, false, true, true),
            (A::UserBind, false, false, true, true),
            (A::AuditRead, false, false, true, true),
            (A::Internal, false, false, false, true),
        ];
        assert_eq!(
            matrix.len(),
            Action::ALL.len(),
            "the matrix lists every action"
        );
        let access = Access::default();
        for (action, viewer, operator, admin, node) in matrix {
            for (role, expected) in [
                ("viewer", viewer),
                ("operator", operator),
                ("admin", admin),
                ("node", node),
            ] {
                let d = decide(&access, "alice", &[cert(role)], *action, Target::Cluster);
                assert_eq!(
                    d.allowed, *expected,
                    "{action} as {role}: {}",
                    d.explanation
                );
            }
        }
    }

    #[test]
    fn a_scoped_role_operates_only_its_own_vms() {
        let mut access = Access::default();
        access.roles.insert(
            "web-operator".into(),
            CustomRole {
                allow: [Action::VmMigrate, Action::VmRead, Action::NodeDrain]
                    .into_iter()
                    .collect(),
                created_ms: 0,
                created_by: "root".into(),
            },
        );
        let grants = [
            cert("viewer"),
            Grant {
                role: "web-operator".into(),
                scope: Some(Scope::parse("team=web").expect("scope")),
                source: "binding".into(),
            },
        ];
        let web = labels(&[("team", "web")]);
        let db = labels(&[("team", "db")]);
        let allowed = decide(
            &access,
            "alice",
            &grants,
            Action::VmMigrate,
            Target::Vm {
                name: "web-1",
                labels: &web,
            },
        );
        assert!(allowed.allowed, "{}", allowed.explanation);
        let denied = decide(
            &access,
            "alice",
            &grants,
            Action::VmMigrate,
            Target::Vm {
                name: "db-1",
                labels: &db,
            },
        );
        assert!(!denied.allowed);
        assert_eq!(
            denied.explanation,
            "alice may not vm.migrate db-1: role web-operator (binding) is scoped to team=web, db-1 has team=db"
        );
        // A scoped grant never allows what is not an action on one VM.
        let drain = decide(
            &access,
            "alice",
            &grants,
            Action::NodeDrain,
            Target::Cluster,
        );
        assert!(!drain.allowed, "{}", drain.explanation);
        assert!(drain.explanation.contains("not an action on one VM"));
        // Lists are allowed and filtered.
        assert!(may_see(&access, &grants, Action::VmRead, &db)); // viewer sees everything
        let only_scoped = &grants[1..];
        assert!(may_see(&access, only_scoped, Action::VmRead, &web));
        assert!(!may_see(&access, only_scoped, Action::VmRead, &db));
    }

    #[test]
    fn refusals_name_what_was_held() {
        let access = Access::default();
        let d = decide(
            &access,
            "bob",
            &[cert("viewer")],
            Action::VmStart,
            Target::Cluster,
        );
        assert_eq!(d.explanation, "bob may not vm.start: its roles (viewer from its certificate) do not allow vm.start; an admin can bind a role that does (`paddock user bind NAME ROLE`)");
        let none = decide(&access, "token:ci", &[], Action::VmRead, Target::Cluster);
        assert!(
            none.explanation.contains("holds no role"),
            "{}",
            none.explanation
        );
    }

    /// The allocation-free check and the explaining decision agree, for every action, on
    /// certificates with and without bindings, scoped and unscoped tokens, expired ones, and
    /// VM and cluster targets.
    #[test]
    fn the_fast_check_agrees_with_the_decision() {
        let mut access = Access::default();
        access.roles.insert(
            "web".into(),
            CustomRole {
                allow: [Action::VmStart, Action::VmRead, Action::NodeDrain]
                    .into_iter()
                    .collect(),
                created_ms: 0,
                created_by: "root".into(),
            },
        );
        let scope = Scope::parse("team=web").expect("scope");
        access.users.insert(
            "alice".into(),
            [Binding {
                role: "web".into(),
                scope: Some(scope.clone()),
            }]
            .into_iter()
            .collect(),
        );
        let mut tokens = BTreeMap::new();
        for (name, role, scope, expires) in [
            ("t-scoped", "web", Some(scope.clone()), None),
            ("t-op", "operator", None, None),
            ("t-old", "admin", None, Some(5)),
        ] {
            tokens.insert(
                name.to_string(),
                crate::token::ApiToken {
                    role: role.into(),
                    sha256: String::new(),
                    created_ms: 0,
                    expires_ms: expires,
                    created_by: "root".into(),
                    scope,
                },
            );
        }
        let cert = |name: &str, role: &str| Caller {
            name: name.into(),
            credential: Credential::Certificate { role: role.into() },
            from: String::new(),
            request: String::new(),
        };
        let token = |name: &str| Caller {
            name: format!("token:{name}"),
            credential: Credential::Token { token: name.into() },
            from: String::new(),
            request: String::new(),
        };
        let callers = [
            cert("alice", "viewer"),
            cert("bob", "operator"),
            cert("n1", "node"),
            token("t-scoped"),
            token("t-op"),
            token("t-old"),
            token("gone"),
        ];
        let web = labels(&[("team", "web")]);
        let db = labels(&[("team", "db")]);
        let targets = [
            Target::Cluster,
            Target::Vm {
                name: "w",
                labels: &web,
            },
            Target::Vm {
                name: "d",
                labels: &db,
            },
        ];
        for caller in &callers {
            let held = grants(&access, &tokens, caller, 10);
            for action in Action::ALL {
                for target in targets {
                    let fast = allows(&access, &tokens, caller, 10, *action, target);
                    let full = decide(&access, &caller.name, &held, *action, target);
                    assert_eq!(
                        fast, full.allowed,
                        "{} {action} {target:?}: {}",
                        caller.name, full.explanation
                    );
                }
            }
        }
    }

    #[test]
    fn roles_are_validated() {
        assert!(validate_role("web-operator", &["vm.start".into()]).is_ok());
        for (name, allow) in [
            ("admin", vec!["vm.start".to_string()]),
            ("x", vec![]),
            ("x", vec!["vm.fly".to_string()]),
            ("x", vec!["internal".to_string()]),
            ("Bad Name", vec!["vm.start".to_string()]),
        ] {
            let e = validate_role(name, &allow).expect_err(name);
            assert!(matches!(e, Rejection::Invalid { .. }), "{e}");
        }
        assert!(Scope::parse("team").is_err());
        assert!(Scope::parse("=web").is_err());
    }
}
