//! The operations layer (DESIGN.md §8): what every interface calls — the gRPC services today,
//! the HTTPS API next. Transports only authenticate the caller and convert their messages to
//! [`Command`]s and [`Query`]s and back; here every call is
//!
//! 1. authorized against the one table ([`auth`]), by the action the command or query is;
//! 2. checked before it is proposed ([`precheck`]: `Command::validate` plus what this replica
//!    can already tell, such as a setting that contradicts the current ones), so bad input
//!    never reaches the log — apply re-checks everything, the log stays the arbiter;
//! 3. proposed (or read) through the [`Proposer`];
//! 4. answered with an [`OpError`] whose [`RejectionKind`] each transport maps once (gRPC code,
//!    HTTP status, CLI exit code).

pub mod auth;
pub mod tokens;

use std::sync::Arc;

use paddock_model::access::{self, Caller};
use paddock_model::{
    ClientRequest, ClusterState, Command, Query, QueryResult, Rejection, RejectionKind, RequestId,
    Response,
};
use paddock_raft::SharedState;

use crate::proposer::{ProposeError, Proposer};
pub use auth::{Action, Denied};

/// Why an operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Refused by apply, or by the checks before proposing.
    #[error(transparent)]
    Refused(#[from] Rejection),
    /// The caller may not do this.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// No leader or majority reachable, or this node is stopping: retrying may work.
    #[error(transparent)]
    Unavailable(ProposeError),
    /// Something that should not happen (an answer of the wrong shape).
    #[error("internal error: {0}")]
    Internal(String),
}

impl OpError {
    /// The kind of refusal, `None` for an internal error.
    pub fn kind(&self) -> Option<RejectionKind> {
        match self {
            OpError::Refused(rejection) => Some(rejection.kind()),
            OpError::Denied(_) => Some(RejectionKind::PermissionDenied),
            OpError::Unavailable(_) => Some(RejectionKind::Unavailable),
            OpError::Internal(_) => None,
        }
    }

    /// An answer the operation did not expect.
    pub fn unexpected<T: std::fmt::Debug>(what: &T) -> OpError {
        OpError::Internal(format!("unexpected answer {what:?}"))
    }
}

impl From<ProposeError> for OpError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::Internal(message) => OpError::Internal(message),
            other => OpError::Unavailable(other),
        }
    }
}

/// The operations, over this node's proposer and replica.
pub struct Ops {
    proposer: Arc<Proposer>,
    shared: SharedState,
    /// `Full` except under `paddockd --bench-access`.
    enforce: Enforcement,
}

/// How much of access control runs: always all of it, except in benchmarks that measure it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// Decide before proposing and in apply; audit every request.
    Full,
    /// Benchmarks: no decision anywhere (apply sees a cluster node's credential), audit kept.
    AuditOnly,
    /// Benchmarks: no decision, no audit record.
    None,
}

impl Ops {
    pub fn new(proposer: Arc<Proposer>, shared: SharedState) -> Ops {
        Ops {
            proposer,
            shared,
            enforce: Enforcement::Full,
        }
    }

    /// A cluster node's own certificate, or authorization off (benchmarks).
    fn unrestricted(&self, caller: &Caller) -> bool {
        self.enforce != Enforcement::Full || is_member(caller)
    }

    /// Benchmarks only: less than all of access control.
    pub fn with_enforcement(mut self, enforce: Enforcement) -> Ops {
        self.enforce = enforce;
        self
    }

    pub fn proposer(&self) -> &Arc<Proposer> {
        &self.proposer
    }

    /// This node's replica (reads that need no linearizability: where a VM runs, for `Logs`).
    pub fn shared(&self) -> &SharedState {
        &self.shared
    }

    /// A caller's write: authorized by what the command is, checked, proposed through the
    /// leader with the caller, so apply authorizes it again against the committed state and
    /// records it in the audit log. `id` makes retries exactly-once (the client's, or one
    /// minted by the proposer). A refusal before proposing is audited too.
    pub async fn write(
        &self,
        caller: &Caller,
        id: Option<RequestId>,
        command: Command,
    ) -> Result<Response, OpError> {
        if self.enforce != Enforcement::Full {
            precheck(&self.shared.read().state, &command)?;
            let caller = (self.enforce == Enforcement::AuditOnly).then(|| Caller {
                credential: access::Credential::Certificate {
                    role: "node".into(),
                },
                request: format!("{:016x}", fastrand::u64(..)),
                ..caller.clone()
            });
            let request = ClientRequest {
                id,
                command,
                caller,
            };
            return Ok(self.proposer.write(request).await??);
        }
        let mut caller = caller.clone();
        caller.request = match id {
            Some(id) => format!("{:x}-{}", id.client, id.seq),
            None => format!("{:016x}", fastrand::u64(..)),
        };
        let refusal = {
            let state = &self.shared.read().state;
            let now = tokens::now_ms();
            if state.allows(&caller, &command, now) {
                precheck(state, &command).err().map(OpError::from)
            } else {
                Some(OpError::Denied(Denied {
                    action: access::action_of(&command),
                    explanation: state.authorize(&caller, &command, now).explanation,
                }))
            }
        };
        if let Some(refusal) = refusal {
            let action = access::action_of(&command).name();
            self.note(&caller, action, &access::target_of(&command), &refusal)
                .await;
            return Err(refusal);
        }
        Ok(self
            .proposer
            .write(ClientRequest {
                id,
                command,
                caller: Some(caller),
            })
            .await??)
    }

    /// A write that answers `Done` when it succeeds.
    pub async fn done(
        &self,
        caller: &Caller,
        id: Option<RequestId>,
        command: Command,
    ) -> Result<(), OpError> {
        match self.write(caller, id, command).await? {
            Response::Done => Ok(()),
            other => Err(OpError::unexpected(&other)),
        }
    }

    /// A caller's read: linearizable through the leader, or this replica's if `stale`. A
    /// caller whose grants are scoped sees only the VMs (and their migrations) it covers.
    pub async fn read(
        &self,
        caller: &Caller,
        query: Query,
        stale: bool,
    ) -> Result<QueryResult, OpError> {
        let action = access::action_of_query(&query);
        self.authorize(caller, action).await?;
        let scopes = self.visible_scopes(caller, action);
        let query = match (query, &scopes) {
            (
                Query::VmList {
                    start_after,
                    limit,
                    mut filter,
                },
                Some(scopes),
            ) => {
                filter.scopes = Some(scopes.clone());
                Query::VmList {
                    start_after,
                    limit,
                    filter,
                }
            }
            (query, _) => query,
        };
        let result = self.proposer.read(query, stale).await?;
        let Some(scopes) = scopes else {
            return Ok(result);
        };
        let covered = |labels: &std::collections::BTreeMap<String, String>| {
            scopes.iter().any(|s| s.covers(labels))
        };
        Ok(match result {
            QueryResult::Vm(Some(vm)) if !covered(&vm.spec.labels) => QueryResult::Vm(None),
            QueryResult::Migrations(list) => {
                let state = &self.shared.read().state;
                QueryResult::Migrations(
                    list.into_iter()
                        .filter(|m| {
                            state
                                .vms
                                .get(&m.vm)
                                .is_some_and(|vm| covered(&vm.spec.labels))
                        })
                        .collect(),
                )
            }
            QueryResult::Migration(Some(m))
                if !self.may_see_vm(caller, Action::MigrationRead, &m.vm) =>
            {
                QueryResult::Migration(None)
            }
            other => other,
        })
    }

    /// Allows `action` (on no one VM) to `caller`, or refuses it — audited.
    pub async fn authorize(&self, caller: &Caller, action: Action) -> Result<(), OpError> {
        self.authorize_on(caller, action, None).await
    }

    /// Allows `action` on VM `vm` to `caller`, or refuses it — audited.
    pub async fn authorize_vm(
        &self,
        caller: &Caller,
        action: Action,
        vm: &str,
    ) -> Result<(), OpError> {
        self.authorize_on(caller, action, Some(vm)).await
    }

    async fn authorize_on(
        &self,
        caller: &Caller,
        action: Action,
        vm: Option<&str>,
    ) -> Result<(), OpError> {
        if self.unrestricted(caller) {
            return Ok(());
        }
        let verdict = {
            let state = &self.shared.read().state;
            let target = match vm {
                Some(name) => state.vm_target(name),
                None => access::Target::Cluster,
            };
            auth::authorize(state, caller, action, target)
        };
        match verdict {
            Ok(()) => Ok(()),
            Err(denied) => {
                let refusal = OpError::Denied(denied);
                self.note(caller, action.name(), vm.unwrap_or_default(), &refusal)
                    .await;
                Err(refusal)
            }
        }
    }

    /// Whether some grant of `caller` allows `action` (on some VM, for a scoped one): what a
    /// page shows buttons for. The server decides each action again.
    pub fn may_ever(&self, caller: &Caller, action: Action) -> bool {
        if self.unrestricted(caller) {
            return true;
        }
        let state = &self.shared.read().state;
        auth::grants_of(state, caller)
            .iter()
            .any(|g| state.access.role_allows(&g.role, action) == Some(true))
    }

    /// Whether `caller` may see VM `vm` with `action` (a list's or a stream's filter).
    pub fn may_see_vm(&self, caller: &Caller, action: Action, vm: &str) -> bool {
        if self.unrestricted(caller) {
            return true;
        }
        let state = &self.shared.read().state;
        let held = auth::grants_of(state, caller);
        match state.vms.get(vm) {
            Some(v) => access::may_see(&state.access, &held, action, &v.spec.labels),
            // Gone: only a caller who sees every VM sees what is left of it.
            None => access::visible_scopes(&state.access, &held, action).is_none(),
        }
    }

    /// `None` when `caller` may see every VM with `action`, else the labels it is limited to.
    pub fn visible_scopes(&self, caller: &Caller, action: Action) -> Option<Vec<access::Scope>> {
        if !action.on_vm() || self.unrestricted(caller) {
            return None;
        }
        let state = &self.shared.read().state;
        let held = auth::grants_of(state, caller);
        access::visible_scopes(&state.access, &held, action)
    }

    /// Records what was refused (or noted) in the audit log. Best effort: a refusal is
    /// answered whether or not its record could be written (no leader, say).
    pub async fn note(&self, caller: &Caller, action: &str, target: &str, outcome: &OpError) {
        let outcome = format!("refused: {outcome}");
        self.note_text(caller, action, target, &outcome).await
    }

    /// Records something that is not a command (a login, a console session).
    pub async fn note_text(&self, caller: &Caller, action: &str, target: &str, outcome: &str) {
        let mut caller = caller.clone();
        if caller.request.is_empty() {
            caller.request = format!("{:016x}", fastrand::u64(..));
        }
        let cut = |text: &str, max: usize| -> String {
            let mut end = text.len().min(max);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_string()
        };
        let request = ClientRequest {
            id: None,
            command: Command::AuditNote {
                action: cut(action, 64),
                target: cut(target, 1024),
                outcome: cut(outcome, 4096),
            },
            caller: Some(caller),
        };
        if let Err(error) = self.proposer.write(request).await {
            tracing::warn!(%error, action, "could not record a refusal in the audit log");
        }
    }
}

/// A cluster node's own certificate: everything, without reading the replica.
fn is_member(caller: &Caller) -> bool {
    matches!(&caller.credential, access::Credential::Certificate { role } if role == "node")
}

/// What can be refused before proposing: the command's own limits, and what this replica
/// already shows to be impossible. Apply checks again against the committed state.
pub fn precheck(state: &ClusterState, command: &Command) -> Result<(), Rejection> {
    command.validate()?;
    if let Command::SettingSet { key, value } = command {
        // Against the settings as this replica has them: timings are checked against each
        // other (the heartbeat at most a third of the lease, say), not against the defaults.
        state
            .settings
            .clone()
            .set(key, value)
            .map_err(|reason| Rejection::Invalid { reason })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str) -> Command {
        Command::SettingSet {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn settings_are_checked_against_the_current_ones_not_the_defaults() {
        let mut state = ClusterState::default();
        // With the default 3 s lease a 2 s heartbeat is unsafe...
        assert!(precheck(&state, &set("heartbeat_ms", "2000")).is_err());
        // ...with a 9 s lease it is fine (the old check against the defaults refused it).
        state.settings.lease_ms = 9_000;
        state.settings.down_after_ms = 12_000;
        assert_eq!(precheck(&state, &set("heartbeat_ms", "2000")), Ok(()));
        let bad = precheck(&state, &set("scheduler", "random")).expect_err("bad value");
        assert_eq!(bad.kind(), RejectionKind::Invalid);
    }

    #[test]
    fn commands_are_validated_before_proposing() {
        let state = ClusterState::default();
        let bad = Command::KvPut {
            key: String::new(),
            value: "v".into(),
        };
        assert_eq!(
            precheck(&state, &bad).map_err(|r| r.kind()),
            Err(RejectionKind::Invalid)
        );
    }
}
