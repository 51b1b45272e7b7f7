//! Commands carried by the Raft log, and what applying them answers.
//!
//! One log entry is one [`Proposal`]: a batch of client requests the leader collected, stamped
//! with the leader's wall time. Batching many requests into one entry is what makes the log fast
//! (one append, one fsync, one replication round for many writes).
//!
//! postcard encodes enum variants by position: append new variants at the end, never reorder.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::RequestId;
use crate::resources::Resources;
use crate::vm::{Desired, VmSpec, VmState};

/// Longest key accepted in the cluster key/value space, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Largest value accepted in the cluster key/value space, in bytes.
pub const MAX_VALUE_LEN: usize = 1024 * 1024;

/// The payload of one Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Wall-clock milliseconds since the Unix epoch, stamped by the proposing leader. The only
    /// notion of time apply ever sees.
    pub at_ms: u64,
    pub requests: Vec<ClientRequest>,
}

/// One client write inside a [`Proposal`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    /// Present when the client wants exactly-once: a retry with the same id is answered from
    /// the recorded outcome.
    pub id: Option<RequestId>,
    pub command: Command,
    /// The person or program behind a client's request (`None` for what nodes propose
    /// themselves: agents' reports, the leader's decisions). Apply authorizes it against the
    /// committed state and records it in the audit log.
    pub caller: Option<crate::access::Caller>,
}

impl ClientRequest {
    /// A request a node makes itself (no caller: neither authorized by role nor audited).
    pub fn internal(command: Command) -> ClientRequest {
        ClientRequest {
            id: None,
            command,
            caller: None,
        }
    }
}

/// A change to the cluster state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set `key` to `value`.
    KvPut {
        key: String,
        value: String,
    },
    /// Remove `key` if present.
    KvDelete {
        key: String,
    },
    /// Set `key` to `value` only if its current value is `expect` (`None`: only if absent).
    KvCas {
        key: String,
        expect: Option<String>,
        value: String,
    },
    /// A node's agent announces (or updates) what it offers.
    NodeRegister {
        name: String,
        capacity: Resources,
        labels: BTreeMap<String, String>,
        driver: String,
    },
    /// Cordon (no new VMs) or uncordon a node.
    NodeCordon {
        name: String,
        cordoned: bool,
    },
    VmCreate {
        name: String,
        spec: VmSpec,
        desired: Desired,
    },
    VmSetDesired {
        name: String,
        desired: Desired,
    },
    /// Removes the VM; its node's agent destroys it.
    VmDelete {
        name: String,
    },
    /// A placement plan from the leader's scheduler. Apply re-checks each placement and refuses
    /// the stale ones (they are planned again).
    VmPlace {
        placements: Vec<Placement>,
    },
    /// Why VMs could not be placed (recorded only when the reason changes).
    VmWaiting {
        reasons: Vec<(String, String)>,
    },
    /// What a node's agent sees its driver doing. Reports for another node's or an older
    /// epoch's assignment are ignored.
    VmObserved {
        node: String,
        reports: Vec<VmReport>,
    },
    SettingSet {
        key: String,
        value: String,
    },
    /// Several VMs at once, all or none (`paddock vm create NAME --count N`).
    VmCreateMany {
        vms: Vec<NewVm>,
    },
    /// The leader's failure detector declares a node down (it has not heard from it for longer
    /// than any lease it could hold): its HA VMs are released for placement elsewhere with a
    /// new epoch, its other VMs become failed ("host down").
    NodeDown {
        name: String,
    },
    /// Maintenance on or off for a node (no new VMs; no failover while it is in maintenance).
    NodeMaintenance {
        name: String,
        on: bool,
    },
    /// The leader's restart policy for an HA VM that crashed at `epoch` on a live node:
    /// restart in place up to `restart_limit` times, then once elsewhere, then leave it failed.
    VmRecover {
        vm: String,
        epoch: u64,
    },
    /// A node confirms that the deleted VMs it ran are destroyed (their names may be reused).
    VmGone {
        node: String,
        vms: Vec<String>,
    },
    /// Asks for a live migration of a running VM (to `destination`, or where the leader
    /// picks). Answers `Migrations`.
    MigrationCreate {
        vm: String,
        destination: Option<String>,
        options: crate::migration::MigrationOptions,
        priority: u16,
        reason: String,
    },
    /// The leader starts a pending migration: destination chosen, its resources reserved,
    /// the VM's next epoch reserved.
    MigrationStart {
        id: u64,
        destination: String,
    },
    /// The destination's incoming guest is ready and listens at `address`.
    MigrationPrepared {
        id: u64,
        address: String,
        prepare_ms: u64,
    },
    /// The ownership switch: the VM moves to the destination with the reserved epoch.
    MigrationSwitch {
        id: u64,
    },
    /// The source reports the migration done after the switch, with its final figures.
    MigrationFinish {
        id: u64,
        figures: Option<crate::migration::MigrationFigures>,
    },
    /// The migration failed (before the switch: the source must resume).
    MigrationFail {
        id: u64,
        reason: String,
    },
    /// The source's guest runs on after a failure or cancel (or the source rolled back on its
    /// own, with `reason`).
    MigrationRolledBack {
        id: u64,
        reason: Option<String>,
        figures: Option<crate::migration::MigrationFigures>,
    },
    MigrationCancel {
        id: u64,
    },
    /// Cordon a node and live-migrate its running VMs away (`evacuate`: stopped ones leave
    /// too, then maintenance). Answers `Migrations`.
    NodeDrain {
        name: String,
        evacuate: bool,
    },
    /// The leader ends a drain when no migration from the node is open any more.
    NodeDrained {
        name: String,
    },
    /// A node stored an imported image (its hash checked while it was written) and registers
    /// it, or adds itself as a holder when the same bytes are registered already.
    ImageRegister {
        name: String,
        format: String,
        size_bytes: u64,
        sha256: String,
        node: String,
    },
    /// A node fetched a copy of an image from a peer and checked its hash.
    ImageHeld {
        node: String,
        name: String,
        sha256: String,
    },
    /// Removes an image no VM uses; every node deletes its copy.
    ImageDelete {
        name: String,
    },
    /// The guest IP addresses a node sees for its VMs: (vm, epoch, addresses). Reports for
    /// another node's or an older epoch's assignment are ignored.
    VmAddresses {
        node: String,
        reports: Vec<(String, u64, Vec<String>)>,
    },
    /// An API token: its name, role, the SHA-256 of its secret, how long it lives (`None`:
    /// until revoked) and who made it.
    TokenCreate {
        name: String,
        role: String,
        sha256: String,
        ttl_ms: Option<u64>,
        by: String,
        /// Only VMs with this label (for the VM actions the role allows).
        scope: Option<crate::access::Scope>,
    },
    TokenRevoke {
        name: String,
    },
    /// A custom role allowing these actions (by name).
    RoleCreate {
        name: String,
        allow: Vec<String>,
        by: String,
    },
    RoleDelete {
        name: String,
    },
    /// Binds a user (certificate common name) to a role, optionally only for VMs with a label.
    UserBind {
        user: String,
        role: String,
        scope: Option<crate::access::Scope>,
    },
    UserUnbind {
        user: String,
        role: String,
        scope: Option<crate::access::Scope>,
    },
    /// Records, and does nothing else: a request refused before it was proposed, a login, a
    /// console session. Only nodes propose it (for the caller of the request it carries).
    AuditNote {
        action: String,
        target: String,
        outcome: String,
    },
}

/// Most VMs one `VmCreateMany` may carry.
pub const MAX_CREATE_MANY: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewVm {
    pub name: String,
    pub spec: VmSpec,
    pub desired: Desired,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub vm: String,
    pub node: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmReport {
    pub vm: String,
    pub epoch: u64,
    pub state: VmState,
    pub reason: Option<String>,
}

/// What a successfully applied command answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// `KvPut`: the previous value, if any.
    Put { previous: Option<String> },
    /// `KvDelete`: the removed value, if any.
    Deleted { previous: Option<String> },
    /// `KvCas` succeeded.
    Swapped,
    /// A node, VM or setting command took effect.
    Done,
    /// `VmPlace`: what was placed (vm, node, epoch) and what was refused (vm, why).
    Placed {
        placed: Vec<(String, String, u64)>,
        refused: Vec<(String, String)>,
    },
    /// `VmObserved`: reports taken and reports ignored as stale.
    Observed { taken: u32, ignored: u32 },
    /// `MigrationCreate`, `NodeDrain`: migrations asked for (vm, id), VMs refused (vm, why).
    Migrations {
        created: Vec<(String, u64)>,
        refused: Vec<(String, String)>,
    },
}

/// Why apply refused a command. Refusals are normal, replicated outcomes: every replica refuses
/// the same command for the same reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("compare-and-swap failed: the current value is {}", describe(.current))]
    CasMismatch { current: Option<String> },
    #[error("key is invalid: {reason}")]
    InvalidKey { reason: String },
    #[error("value is {len} bytes, the limit is {max} bytes; store large data outside the cluster key space")]
    ValueTooLarge { len: usize, max: usize },
    #[error("request {seq} of client {client:x} is older than its last applied request {last}; the client must use a new sequence number")]
    StaleRequest { client: u64, seq: u64, last: u64 },
    #[error("{kind} {name} does not exist")]
    NotFound { kind: String, name: String },
    #[error("{kind} {name} already exists")]
    AlreadyExists { kind: String, name: String },
    #[error("{reason}")]
    Invalid { reason: String },
    /// Well formed, but the object is not in a state that allows it now (a migration in the
    /// wrong phase, a VM being deleted or moved meanwhile).
    #[error("{reason}")]
    FailedPrecondition { reason: String },
    /// No node has room for it.
    #[error("{reason}")]
    NoCapacity { reason: String },
    /// The caller may not do this (decided against the committed roles and tokens).
    #[error("{reason}")]
    PermissionDenied { reason: String },
}

/// What kind of refusal a [`Rejection`] is, independent of any transport: each interface maps
/// a kind once (gRPC code, HTTP status, CLI exit code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectionKind {
    /// The object named does not exist.
    NotFound,
    /// An object of that name exists already.
    AlreadyExists,
    /// The request is valid but the state does not allow it now (retrying later may work).
    FailedPrecondition,
    /// The request itself is wrong (bad value, bad name, limits).
    Invalid,
    /// Nowhere with room for it.
    NoCapacity,
    /// No leader or quorum could be reached (retrying may work).
    Unavailable,
    /// The caller may not do this.
    PermissionDenied,
}

impl Rejection {
    pub fn kind(&self) -> RejectionKind {
        match self {
            Rejection::NotFound { .. } => RejectionKind::NotFound,
            Rejection::AlreadyExists { .. } => RejectionKind::AlreadyExists,
            Rejection::CasMismatch { .. }
            | Rejection::StaleRequest { .. }
            | Rejection::FailedPrecondition { .. } => RejectionKind::FailedPrecondition,
            Rejection::InvalidKey { .. }
            | Rejection::ValueTooLarge { .. }
            | Rejection::Invalid { .. } => RejectionKind::Invalid,
            Rejection::NoCapacity { .. } => RejectionKind::NoCapacity,
            Rejection::PermissionDenied { .. } => RejectionKind::PermissionDenied,
        }
    }

    pub fn not_found(kind: &str, name: impl Into<String>) -> Rejection {
        Rejection::NotFound {
            kind: kind.into(),
            name: name.into(),
        }
    }

    pub fn precondition(reason: impl Into<String>) -> Rejection {
        Rejection::FailedPrecondition {
            reason: reason.into(),
        }
    }
}

fn describe(value: &Option<String>) -> String {
    match value {
        Some(v) => format!("{v:?}"),
        None => "absent".to_string(),
    }
}

/// The result of applying one [`ClientRequest`].
pub type Outcome = Result<Response, Rejection>;

impl Command {
    /// Checks limits that do not depend on the state. Done both before proposing (so bad input
    /// never reaches the log) and in apply (so the log stays the arbiter).
    pub fn validate(&self) -> Result<(), Rejection> {
        match self {
            Command::KvPut { key, value } | Command::KvCas { key, value, .. } => {
                validate_key(key)?;
                if value.len() > MAX_VALUE_LEN {
                    return Err(Rejection::ValueTooLarge {
                        len: value.len(),
                        max: MAX_VALUE_LEN,
                    });
                }
                Ok(())
            }
            Command::KvDelete { key } => validate_key(key),
            Command::NodeRegister { name, driver, .. } => {
                crate::ids::validate_node_name(name).map_err(invalid)?;
                if !matches!(driver.as_str(), "memvm" | "libvirt") {
                    return Err(invalid(format!(
                        "driver must be memvm or libvirt, not {driver:?}"
                    )));
                }
                Ok(())
            }
            Command::VmCreate { name, spec, .. } => {
                crate::vm::validate_vm_name(name).map_err(invalid)?;
                spec.validate().map_err(invalid)
            }
            Command::VmCreateMany { vms } => {
                if vms.is_empty() || vms.len() > MAX_CREATE_MANY {
                    return Err(invalid(format!(
                        "create 1–{MAX_CREATE_MANY} VMs at once, not {}",
                        vms.len()
                    )));
                }
                for vm in vms {
                    crate::vm::validate_vm_name(&vm.name).map_err(invalid)?;
                    vm.spec
                        .validate()
                        .map_err(|e| invalid(format!("{}: {e}", vm.name)))?;
                }
                Ok(())
            }
            Command::NodeCordon { .. }
            | Command::VmSetDesired { .. }
            | Command::VmDelete { .. }
            | Command::VmPlace { .. }
            | Command::VmWaiting { .. }
            | Command::VmObserved { .. }
            | Command::SettingSet { .. }
            | Command::NodeDown { .. }
            | Command::NodeMaintenance { .. }
            | Command::VmRecover { .. }
            | Command::VmGone { .. } => Ok(()),
            Command::MigrationCreate {
                options, priority, ..
            } => {
                if *priority > crate::migration::MAX_PRIORITY {
                    return Err(invalid(format!(
                        "priority must be 0–{}, not {priority}",
                        crate::migration::MAX_PRIORITY
                    )));
                }
                options.validate().map_err(invalid)
            }
            Command::MigrationStart { .. }
            | Command::MigrationPrepared { .. }
            | Command::MigrationSwitch { .. }
            | Command::MigrationFinish { .. }
            | Command::MigrationFail { .. }
            | Command::MigrationRolledBack { .. }
            | Command::MigrationCancel { .. }
            | Command::NodeDrain { .. }
            | Command::NodeDrained { .. } => Ok(()),
            Command::ImageRegister { .. }
            | Command::ImageHeld { .. }
            | Command::ImageDelete { .. } => crate::image::validate(self).map_err(invalid),
            Command::VmAddresses { reports, .. } => {
                if reports.len() > MAX_CREATE_MANY {
                    return Err(invalid(format!(
                        "at most {MAX_CREATE_MANY} address reports at once"
                    )));
                }
                let too_many = reports.iter().any(|(_, _, ips)| {
                    ips.len() > crate::vm::MAX_ADDRESSES
                        || ips.iter().any(|ip| ip.len() > crate::vm::MAX_ADDRESS_LEN)
                });
                if too_many {
                    return Err(invalid(format!(
                        "at most {} addresses of {} characters per VM",
                        crate::vm::MAX_ADDRESSES,
                        crate::vm::MAX_ADDRESS_LEN
                    )));
                }
                Ok(())
            }
            Command::TokenCreate {
                name, role, sha256, ..
            } => crate::token::validate_token(name, role, sha256),
            Command::TokenRevoke { .. } | Command::RoleDelete { .. } => Ok(()),
            Command::RoleCreate { name, allow, .. } => {
                crate::access::validate_role(name, allow).map(|_| ())
            }
            Command::UserBind { user, .. } | Command::UserUnbind { user, .. } => {
                crate::ids::validate_user_name(user).map_err(invalid)
            }
            Command::AuditNote {
                action,
                target,
                outcome,
            } => {
                if action.len() > 64 || target.len() > 1024 || outcome.len() > 4096 {
                    Err(invalid("audit note too long".into()))
                } else {
                    Ok(())
                }
            }
        }
    }
}

fn invalid(reason: String) -> Rejection {
    Rejection::Invalid { reason }
}

/// Checks a key of the cluster key/value space.
pub fn validate_key(key: &str) -> Result<(), Rejection> {
    if key.is_empty() {
        return Err(Rejection::InvalidKey {
            reason: "the key is empty".into(),
        });
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Rejection::InvalidKey {
            reason: format!("the key is {} bytes, the limit is {MAX_KEY_LEN}", key.len()),
        });
    }
    Ok(())
}
