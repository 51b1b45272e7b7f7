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

use paddock_api::certs::PeerIdentity;
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
}

impl Ops {
    pub fn new(proposer: Arc<Proposer>, shared: SharedState) -> Ops {
        Ops { proposer, shared }
    }

    pub fn proposer(&self) -> &Arc<Proposer> {
        &self.proposer
    }

    /// This node's replica (reads that need no linearizability: where a VM runs, for `Logs`).
    pub fn shared(&self) -> &SharedState {
        &self.shared
    }

    /// A caller's write: authorized by what the command is, checked, proposed through the
    /// leader. `id` makes retries exactly-once (the client's, or one minted by the proposer).
    pub async fn write(
        &self,
        caller: &PeerIdentity,
        id: Option<RequestId>,
        command: Command,
    ) -> Result<Response, OpError> {
        auth::authorize(caller, Action::of_command(&command))?;
        precheck(&self.shared.read().state, &command)?;
        Ok(self.proposer.write(ClientRequest { id, command }).await??)
    }

    /// A write that answers `Done` when it succeeds.
    pub async fn done(
        &self,
        caller: &PeerIdentity,
        id: Option<RequestId>,
        command: Command,
    ) -> Result<(), OpError> {
        match self.write(caller, id, command).await? {
            Response::Done => Ok(()),
            other => Err(OpError::unexpected(&other)),
        }
    }

    /// A caller's read: linearizable through the leader, or this replica's if `stale`.
    pub async fn read(
        &self,
        caller: &PeerIdentity,
        query: Query,
        stale: bool,
    ) -> Result<QueryResult, OpError> {
        auth::authorize(caller, Action::of_query(&query))?;
        Ok(self.proposer.read(query, stale).await?)
    }
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
