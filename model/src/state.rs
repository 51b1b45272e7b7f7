//! `ClusterState`: everything the cluster knows, and the pure `apply` that changes it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::{ClientRequest, Command, Outcome, Proposal, Rejection, Response};
use crate::events::EventKind;
use crate::node::Node;
use crate::settings::Settings;
use crate::vm::{GroupIndex, Vm};

/// How long the outcome of a client's last write is kept for retries. A client that retries
/// later than this after its last write may see its request applied twice; real retries come
/// within seconds.
pub const SESSION_TTL_MS: u64 = 15 * 60 * 1000;

/// Most client sessions kept; beyond it the least recently used are dropped first. Bounds the
/// state when many short-lived clients write.
pub const MAX_SESSIONS: usize = 50_000;

/// The replicated cluster state. Ordered maps only, so iteration, snapshots and digests are
/// the same on every replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Cluster members by node name, mirrored from the Raft membership when it changes.
    pub members: BTreeMap<String, Member>,
    /// The cluster key/value space.
    pub kv: BTreeMap<String, String>,
    /// Last write of each client that asked for exactly-once, by client id.
    pub sessions: BTreeMap<u64, Session>,
    /// Sessions ordered by last use, so expiry looks only at the oldest ones.
    pub session_ages: BTreeMap<(u64, u64), ()>,
    /// Node inventory by name (registered by each node's agent).
    pub nodes: BTreeMap<String, Node>,
    pub vms: BTreeMap<String, Vm>,
    /// Where the VMs of each affinity / anti-affinity group are assigned.
    pub groups: GroupIndex,
    /// Last assignment epoch handed out; epochs only grow.
    pub epoch: u64,
    pub settings: Settings,
    /// Deleted VMs whose node has not yet confirmed their destruction, by name: (node,
    /// epoch). A name here cannot be created again, so a new VM never runs while an old one
    /// of the same name still might (its node may be cut off until its lease ends).
    pub deleting: BTreeMap<String, (String, u64)>,
    /// Live migrations by id: the open ones and the last [`crate::migration::KEEP_FINISHED`]
    /// finished ones.
    pub migrations: BTreeMap<u64, crate::migration::Migration>,
    /// Last migration id handed out.
    pub migration_seq: u64,
    /// Disk images by name (their bytes are in each holder's image store, not here).
    pub images: BTreeMap<String, crate::image::Image>,
    /// API tokens by name (hashes only).
    pub tokens: BTreeMap<String, crate::token::ApiToken>,
    /// What happened, numbered cluster-wide ([`crate::events`]).
    pub events: crate::events::EventLog,
    /// Custom roles and users' bindings ([`crate::access`]).
    pub access: crate::access::Access,
    /// Who did what: every caller's request, hash-chained ([`crate::audit`]).
    pub audit: crate::audit::AuditLog,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Raft node id (derived from the name, see [`crate::node_id_for_name`]).
    pub id: u64,
    /// Address other nodes and clients reach it at (`host:port`).
    pub address: String,
    pub role: MemberRole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberRole {
    Voter,
    Learner,
}

impl MemberRole {
    pub fn name(self) -> &'static str {
        match self {
            MemberRole::Voter => "voter",
            MemberRole::Learner => "learner",
        }
    }
}

/// The recorded last write of one client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub last_seq: u64,
    pub outcome: Outcome,
    pub at_ms: u64,
}

impl ClusterState {
    /// Applies one log entry. Pure: the same state and proposal give the same result on every
    /// replica. Returns one outcome per request, in order.
    pub fn apply(&mut self, proposal: &Proposal) -> Vec<Outcome> {
        self.expire_sessions(proposal.at_ms);
        self.events.clock_ms = self.events.clock_ms.max(proposal.at_ms);
        proposal
            .requests
            .iter()
            .map(|request| self.apply_request(request, proposal.at_ms))
            .collect()
    }

    fn apply_request(&mut self, request: &ClientRequest, at_ms: u64) -> Outcome {
        // A retry of an applied request gets its first answer, whatever changed since: it was
        // authorized and recorded when it was applied.
        if let Some(id) = request.id {
            if let Some(session) = self.sessions.get(&id.client) {
                if id.seq == session.last_seq {
                    return session.outcome.clone();
                }
            }
        }
        match &request.caller {
            Some(caller) => self.apply_as(caller, &request.command, at_ms, |state| {
                state.apply_once(request, at_ms)
            }),
            None => self.apply_once(request, at_ms),
        }
    }

    /// Applies a request once: a retry with the id of an applied one gets the first answer.
    fn apply_once(&mut self, request: &ClientRequest, at_ms: u64) -> Outcome {
        let Some(id) = request.id else {
            return self.apply_command(&request.command, at_ms);
        };
        if let Some(session) = self.sessions.get(&id.client) {
            if id.seq == session.last_seq {
                return session.outcome.clone();
            }
            if id.seq < session.last_seq {
                return Err(Rejection::StaleRequest {
                    client: id.client,
                    seq: id.seq,
                    last: session.last_seq,
                });
            }
            self.session_ages.remove(&(session.at_ms, id.client));
        }
        let outcome = self.apply_command(&request.command, at_ms);
        self.sessions.insert(
            id.client,
            Session {
                last_seq: id.seq,
                outcome: outcome.clone(),
                at_ms,
            },
        );
        self.session_ages.insert((at_ms, id.client), ());
        while self.sessions.len() > MAX_SESSIONS {
            let Some(((_, oldest), ())) = self.session_ages.pop_first() else {
                break;
            };
            self.sessions.remove(&oldest);
        }
        outcome
    }

    fn apply_command(&mut self, command: &Command, at_ms: u64) -> Outcome {
        command.validate()?;
        match command {
            Command::KvPut { key, value } => Ok(Response::Put {
                previous: self.kv.insert(key.clone(), value.clone()),
            }),
            Command::KvDelete { key } => Ok(Response::Deleted {
                previous: self.kv.remove(key),
            }),
            Command::KvCas { key, expect, value } => {
                let current = self.kv.get(key);
                if current != expect.as_ref() {
                    return Err(Rejection::CasMismatch {
                        current: current.cloned(),
                    });
                }
                self.kv.insert(key.clone(), value.clone());
                Ok(Response::Swapped)
            }
            Command::MigrationCreate { .. }
            | Command::MigrationStart { .. }
            | Command::MigrationPrepared { .. }
            | Command::MigrationSwitch { .. }
            | Command::MigrationFinish { .. }
            | Command::MigrationFail { .. }
            | Command::MigrationRolledBack { .. }
            | Command::MigrationCancel { .. }
            | Command::NodeDrain { .. }
            | Command::NodeDrained { .. } => self.apply_migration_command(command, at_ms),
            Command::ImageRegister { .. }
            | Command::ImageHeld { .. }
            | Command::ImageDelete { .. } => self.apply_image_command(command, at_ms),
            Command::TokenCreate { .. }
            | Command::TokenRevoke { .. }
            | Command::RoleCreate { .. }
            | Command::RoleDelete { .. }
            | Command::UserBind { .. }
            | Command::UserUnbind { .. }
            | Command::AuditNote { .. } => self.apply_access_command(command, at_ms),
            _ => self.apply_inventory_command(command, at_ms),
        }
    }

    fn expire_sessions(&mut self, now_ms: u64) {
        let horizon = now_ms.saturating_sub(SESSION_TTL_MS);
        while let Some((&(at_ms, client), _)) = self.session_ages.first_key_value() {
            if at_ms >= horizon {
                break;
            }
            self.session_ages.remove(&(at_ms, client));
            self.sessions.remove(&client);
        }
    }

    /// Replaces the member list (called when a Raft membership entry is applied).
    pub fn set_members(&mut self, members: impl IntoIterator<Item = (String, Member)>) {
        let members: BTreeMap<String, Member> = members.into_iter().collect();
        let at = self.events.clock_ms;
        for (name, member) in &members {
            match self.members.get(name) {
                None => self.events.push(
                    at,
                    EventKind::MemberJoined,
                    name,
                    format!(
                        "{name} joined as {} at {}",
                        member.role.name(),
                        member.address
                    ),
                ),
                Some(old) if old.role != member.role => self.events.push(
                    at,
                    EventKind::MemberJoined,
                    name,
                    format!("{name} is now a {}", member.role.name()),
                ),
                Some(_) => {}
            }
        }
        for name in self.members.keys() {
            if !members.contains_key(name) {
                self.events.push(
                    at,
                    EventKind::MemberRemoved,
                    name,
                    format!("{name} left the membership"),
                );
            }
        }
        self.members = members;
    }

    /// A new leader's first entry (openraft's blank entry of its term).
    pub fn leader_elected(&mut self, leader_id: u64, term: u64) {
        let name = self
            .members
            .iter()
            .find(|(_, m)| m.id == leader_id)
            .map_or_else(|| format!("node {leader_id}"), |(name, _)| name.clone());
        let at = self.events.clock_ms;
        self.events.push(
            at,
            EventKind::LeaderChanged,
            &name,
            format!("{name} leads (term {term})"),
        );
    }

    /// A 64-bit digest of the whole state: equal on replicas that applied the same log.
    pub fn digest(&self) -> u64 {
        // FNV-1a over the canonical encoding: stable, dependency-free, and good enough to
        // compare replicas (this is no cryptographic commitment).
        let bytes = postcard::to_stdvec(self).unwrap_or_default();
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RequestId;
    use proptest::prelude::*;

    fn put(key: &str, value: &str) -> Command {
        Command::KvPut {
            key: key.into(),
            value: value.into(),
        }
    }

    fn proposal(at_ms: u64, requests: Vec<ClientRequest>) -> Proposal {
        Proposal { at_ms, requests }
    }

    fn plain(command: Command) -> ClientRequest {
        ClientRequest::internal(command)
    }

    #[test]
    fn put_get_delete() {
        let mut state = ClusterState::default();
        let out = state.apply(&proposal(
            1,
            vec![plain(put("a", "1")), plain(put("a", "2"))],
        ));
        assert_eq!(out[0], Ok(Response::Put { previous: None }));
        assert_eq!(
            out[1],
            Ok(Response::Put {
                previous: Some("1".into())
            })
        );
        let out = state.apply(&proposal(
            2,
            vec![plain(Command::KvDelete { key: "a".into() })],
        ));
        assert_eq!(
            out[0],
            Ok(Response::Deleted {
                previous: Some("2".into())
            })
        );
        assert!(state.kv.is_empty());
    }

    #[test]
    fn cas_checks_the_current_value() {
        let mut state = ClusterState::default();
        let cas = |expect: Option<&str>, value: &str| {
            plain(Command::KvCas {
                key: "k".into(),
                expect: expect.map(Into::into),
                value: value.into(),
            })
        };
        let out = state.apply(&proposal(
            1,
            vec![cas(None, "1"), cas(None, "2"), cas(Some("1"), "3")],
        ));
        assert_eq!(out[0], Ok(Response::Swapped));
        assert_eq!(
            out[1],
            Err(Rejection::CasMismatch {
                current: Some("1".into())
            })
        );
        assert_eq!(out[2], Ok(Response::Swapped));
        assert_eq!(state.kv.get("k").map(String::as_str), Some("3"));
    }

    #[test]
    fn a_retried_request_is_answered_not_applied_again() {
        let mut state = ClusterState::default();
        let id = Some(RequestId { client: 7, seq: 1 });
        let first = ClientRequest {
            id,
            command: Command::KvCas {
                key: "k".into(),
                expect: None,
                value: "v".into(),
            },
            caller: None,
        };
        let out1 = state.apply(&proposal(10, vec![first.clone()]));
        // The retry would fail as a CAS if it were applied again; it gets the first answer.
        let out2 = state.apply(&proposal(20, vec![first]));
        assert_eq!(out1, vec![Ok(Response::Swapped)]);
        assert_eq!(out2, vec![Ok(Response::Swapped)]);
        let older = ClientRequest {
            id: Some(RequestId { client: 7, seq: 0 }),
            command: put("k", "x"),
            caller: None,
        };
        assert!(matches!(
            state.apply(&proposal(30, vec![older]))[0],
            Err(Rejection::StaleRequest { .. })
        ));
        assert_eq!(state.kv.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn sessions_expire_after_their_ttl() {
        let mut state = ClusterState::default();
        let req = |client| ClientRequest {
            id: Some(RequestId { client, seq: 1 }),
            command: put("k", "v"),
            caller: None,
        };
        state.apply(&proposal(1_000, vec![req(1)]));
        state.apply(&proposal(2_000, vec![req(2)]));
        state.apply(&proposal(1_500 + SESSION_TTL_MS, vec![]));
        assert_eq!(state.sessions.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(state.session_ages.len(), 1);
    }

    #[test]
    fn invalid_commands_are_rejected_without_change() {
        let mut state = ClusterState::default();
        let big = "x".repeat(crate::command::MAX_VALUE_LEN + 1);
        let out = state.apply(&proposal(
            1,
            vec![plain(put("", "v")), plain(put("k", &big))],
        ));
        assert!(matches!(out[0], Err(Rejection::InvalidKey { .. })));
        assert!(matches!(out[1], Err(Rejection::ValueTooLarge { .. })));
        assert!(state.kv.is_empty());
    }

    fn arb_request() -> impl Strategy<Value = ClientRequest> {
        let key = prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(String::from);
        let value = "[xyz]{0,2}";
        let node = prop_oneof![Just("n1"), Just("n2")].prop_map(String::from);
        let vm = prop_oneof![Just("v1"), Just("v2"), Just("v3")].prop_map(String::from);
        let spec = (
            1u32..4,
            64u64..2048,
            proptest::option::of(Just("g".to_string())),
        )
            .prop_map(|(cpus, memory_mib, anti_affinity)| crate::vm::VmSpec {
                cpus,
                memory_mib,
                disks: Vec::new(),
                labels: Default::default(),
                ha: false,
                priority: 0,
                constraints: crate::vm::Constraints {
                    anti_affinity,
                    ..Default::default()
                },
                guest: Default::default(),
            });
        let state = prop_oneof![
            Just(crate::vm::VmState::Running),
            Just(crate::vm::VmState::Stopped),
            Just(crate::vm::VmState::Failed)
        ];
        let command = prop_oneof![
            (key.clone(), value).prop_map(|(key, value)| Command::KvPut { key, value }),
            key.clone().prop_map(|key| Command::KvDelete { key }),
            (key, proptest::option::of(value), value)
                .prop_map(|(key, expect, value)| Command::KvCas { key, expect, value }),
            (node.clone(), 1u32..8).prop_map(|(name, cpus)| Command::NodeRegister {
                name,
                capacity: crate::Resources {
                    cpus,
                    memory_mib: 4096,
                    disk_mib: 0,
                },
                labels: Default::default(),
                driver: "memvm".into(),
            }),
            (vm.clone(), spec).prop_map(|(name, spec)| Command::VmCreate {
                name,
                spec,
                desired: crate::vm::Desired::Running,
            }),
            (vm.clone(), node.clone()).prop_map(|(vm, node)| Command::VmPlace {
                placements: vec![crate::Placement { vm, node }],
            }),
            vm.clone().prop_map(|name| Command::VmDelete { name }),
            (node, vm, 0u64..4, state).prop_map(|(node, vm, epoch, state)| {
                Command::VmObserved {
                    node,
                    reports: vec![crate::VmReport {
                        vm,
                        epoch,
                        state,
                        reason: None,
                    }],
                }
            }),
        ];
        let id = proptest::option::of(
            (0u64..3, 0u64..4).prop_map(|(client, seq)| RequestId { client, seq }),
        );
        (id, command).prop_map(|(id, command)| ClientRequest {
            id,
            command,
            caller: None,
        })
    }

    proptest! {
        /// Replicas that apply the same log end in the same state with the same answers, and
        /// the encoding round-trips: the determinism the whole design rests on.
        #[test]
        fn apply_is_deterministic(batches in proptest::collection::vec(
            (0u64..10_000_000, proptest::collection::vec(arb_request(), 0..8)), 0..20)) {
            let mut a = ClusterState::default();
            let mut b = ClusterState::default();
            let mut at = 0;
            for (step, requests) in batches {
                at += step;
                let p = proposal(at, requests);
                prop_assert_eq!(a.apply(&p), b.apply(&p));
                let bytes = crate::codec::encode(&b).expect("encode");
                b = crate::codec::decode(&bytes).expect("decode");
            }
            prop_assert_eq!(a.digest(), b.digest());
            // The allocation apply keeps equals the sum of the VMs assigned to each node (a
            // node that re-registers with less capacity may end up over-committed: that is
            // the operator's doing, and placement then finds no room there).
            for node in a.nodes.values() {
                let sum = a
                    .vms
                    .values()
                    .filter(|vm| vm.node() == Some(node.name.as_str()))
                    .fold(crate::Resources::default(), |acc, vm| acc.plus(&vm.spec.resources()));
                prop_assert_eq!(node.allocated, sum);
            }
            prop_assert_eq!(a, b);
        }
    }
}
