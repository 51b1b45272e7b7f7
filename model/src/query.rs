//! Reads of the cluster state. Served by any node: after a read-index round for a linearizable
//! read, or straight from the local replica for a stale one.

use serde::{Deserialize, Serialize};

use crate::node::Node;
use crate::state::ClusterState;
use crate::vm::{Desired, Vm, VmState};

/// Most keys one `KvList` answers, so a list can never exhaust a node's memory or a message
/// size limit; clients page with `start_after`.
pub const MAX_LIST_LIMIT: u32 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    KvGet {
        key: String,
    },
    /// Keys starting with `prefix`, in order, after `start_after` if given.
    KvList {
        prefix: String,
        start_after: Option<String>,
        limit: u32,
    },
    /// Every node of the inventory, with the VMs assigned to each.
    NodeList,
    /// VMs in name order, after `start_after` if given (summaries: no events).
    VmList {
        start_after: Option<String>,
        limit: u32,
        filter: VmFilter,
    },
    /// One VM, whole.
    VmGet {
        name: String,
    },
    Settings,
    /// Migrations, newest first: the open ones, and finished ones when `finished`.
    MigrationList {
        finished: bool,
    },
    MigrationGet {
        id: u64,
    },
    /// Every registered image, in name order.
    Images,
    /// Events after number `after`, of `kinds` (all if empty), about `subject` if given.
    Events {
        after: u64,
        kinds: Vec<crate::events::EventKind>,
        subject: Option<String>,
        limit: u32,
    },
    /// API tokens (their hashes stay on the server side of the operations layer).
    Tokens,
    /// Custom roles and users' bindings.
    Access,
    /// Audit records after number `after`, oldest first, matching the filter.
    Audit {
        after: u64,
        filter: AuditFilter,
        limit: u32,
    },
    /// Recomputes this replica's audit chain through record `upto` (all when `None`).
    AuditVerify {
        upto: Option<u64>,
    },
}

/// Which audit records a list answers (all when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditFilter {
    pub who: Option<String>,
    /// An action name, or a prefix such as `vm.`.
    pub action: Option<String>,
    /// At or after this time.
    pub since_ms: Option<u64>,
    /// Refusals only.
    pub refused: bool,
}

impl AuditFilter {
    pub fn matches(&self, r: &crate::audit::AuditRecord) -> bool {
        self.who.as_deref().is_none_or(|w| r.who == w)
            && self
                .action
                .as_deref()
                .is_none_or(|a| r.action == a || (a.ends_with('.') && r.action.starts_with(a)))
            && self.since_ms.is_none_or(|t| r.at_ms >= t)
            && (!self.refused || !r.ok())
    }
}

/// A page of audit records, and where the chain stands on this replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPage {
    pub records: Vec<crate::audit::AuditRecord>,
    pub more: bool,
    /// Number of the last record dropped by retention.
    pub pruned_through: u64,
    pub last_seq: u64,
}

/// One replica's recomputation of its audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheck {
    /// Records recomputed, and the span they cover.
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The recomputed hash at `last_seq` (the base when no record was checked).
    pub head: crate::audit::Hash,
    /// The first record whose stored hash is wrong, if any.
    pub broken_at: Option<u64>,
    /// Number of the last record dropped by retention (the chain starts after it).
    pub pruned_through: u64,
    /// The newest record this replica holds.
    pub newest_seq: u64,
}

/// Which VMs a list answers (all of them when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmFilter {
    /// Assigned to this node.
    pub node: Option<String>,
    /// In this observed state (`running`, `failed`...).
    pub state: Option<String>,
    /// Whose name contains this.
    pub search: Option<String>,
    /// Only VMs carrying one of these labels (set for a caller whose grants are scoped).
    pub scopes: Option<Vec<crate::access::Scope>>,
}

impl VmFilter {
    pub fn matches(&self, vm: &Vm) -> bool {
        self.node.as_deref().is_none_or(|n| vm.node() == Some(n))
            && self
                .state
                .as_deref()
                .is_none_or(|s| vm.observed.name() == s)
            && self.search.as_deref().is_none_or(|q| vm.name.contains(q))
            && self
                .scopes
                .as_ref()
                .is_none_or(|scopes| scopes.iter().any(|s| s.covers(&vm.spec.labels)))
    }
}

/// One line of `vm list`: what an operator scans for, nothing that grows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSummary {
    pub name: String,
    pub node: Option<String>,
    pub epoch: u64,
    pub observed: VmState,
    pub desired: Desired,
    pub cpus: u32,
    pub memory_mib: u64,
    pub ha: bool,
    /// The running guest's IP addresses, when its node saw them.
    pub addresses: Vec<String>,
}

impl From<&Vm> for VmSummary {
    fn from(vm: &Vm) -> Self {
        VmSummary {
            name: vm.name.clone(),
            node: vm.node().map(String::from),
            epoch: vm.assignment.as_ref().map_or(0, |a| a.epoch),
            observed: vm.observed,
            desired: vm.desired,
            cpus: vm.spec.cpus,
            memory_mib: vm.spec.memory_mib,
            ha: vm.spec.ha,
            addresses: vm.current_addresses().to_vec(),
        }
    }
}

/// A node with the names of the VMs assigned to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub node: Node,
    pub vms: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryResult {
    Value(Option<String>),
    Entries {
        entries: Vec<(String, String)>,
        /// More keys match after the last returned one.
        more: bool,
    },
    Nodes(Vec<NodeEntry>),
    Vms {
        vms: Vec<VmSummary>,
        more: bool,
    },
    Vm(Option<Box<Vm>>),
    Settings(Vec<(String, String)>),
    Migrations(Vec<crate::migration::Migration>),
    Migration(Option<Box<crate::migration::Migration>>),
    Images(Vec<(String, crate::image::Image)>),
    Events(crate::events::EventPage),
    Tokens(Vec<(String, crate::token::ApiToken)>),
    Access(crate::access::Access),
    Audit(AuditPage),
    AuditCheck(AuditCheck),
}

impl ClusterState {
    /// Answers `query` from this replica.
    pub fn query(&self, query: &Query) -> QueryResult {
        match query {
            Query::KvGet { key } => QueryResult::Value(self.kv.get(key).cloned()),
            Query::KvList {
                prefix,
                start_after,
                limit,
            } => {
                let limit = (*limit).clamp(1, MAX_LIST_LIMIT) as usize;
                let lower = match start_after {
                    Some(after) if after.as_str() >= prefix.as_str() => {
                        std::ops::Bound::Excluded(after.clone())
                    }
                    _ => std::ops::Bound::Included(prefix.clone()),
                };
                let mut matching = self
                    .kv
                    .range((lower, std::ops::Bound::Unbounded))
                    .take_while(|(k, _)| k.starts_with(prefix.as_str()));
                let entries: Vec<(String, String)> = matching
                    .by_ref()
                    .take(limit)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let more = matching.next().is_some();
                QueryResult::Entries { entries, more }
            }
            Query::NodeList => {
                let mut by_node: std::collections::BTreeMap<&str, Vec<String>> =
                    std::collections::BTreeMap::new();
                for vm in self.vms.values() {
                    if let Some(node) = vm.node() {
                        by_node.entry(node).or_default().push(vm.name.clone());
                    }
                }
                QueryResult::Nodes(
                    self.nodes
                        .values()
                        .map(|node| NodeEntry {
                            vms: by_node.remove(node.name.as_str()).unwrap_or_default(),
                            node: node.clone(),
                        })
                        .collect(),
                )
            }
            Query::VmList {
                start_after,
                limit,
                filter,
            } => {
                let limit = (*limit).clamp(1, MAX_LIST_LIMIT) as usize;
                let lower = match start_after {
                    Some(after) => std::ops::Bound::Excluded(after.clone()),
                    None => std::ops::Bound::Unbounded,
                };
                let mut matching = self
                    .vms
                    .range((lower, std::ops::Bound::Unbounded))
                    .filter(|(_, vm)| filter.matches(vm));
                let vms = matching
                    .by_ref()
                    .take(limit)
                    .map(|(_, vm)| VmSummary::from(vm))
                    .collect();
                QueryResult::Vms {
                    vms,
                    more: matching.next().is_some(),
                }
            }
            Query::VmGet { name } => QueryResult::Vm(self.vms.get(name).cloned().map(Box::new)),
            Query::Settings => QueryResult::Settings(self.settings.list()),
            Query::MigrationList { finished } => QueryResult::Migrations(
                self.migrations
                    .values()
                    .rev()
                    .filter(|m| *finished || m.ended_ms.is_none())
                    .cloned()
                    .collect(),
            ),
            Query::MigrationGet { id } => {
                QueryResult::Migration(self.migrations.get(id).cloned().map(Box::new))
            }
            Query::Images => QueryResult::Images(
                self.images
                    .iter()
                    .map(|(name, image)| (name.clone(), image.clone()))
                    .collect(),
            ),
            Query::Events {
                after,
                kinds,
                subject,
                limit,
            } => QueryResult::Events(self.events.page(*after, kinds, subject.as_deref(), *limit)),
            Query::Tokens => QueryResult::Tokens(
                self.tokens
                    .iter()
                    .map(|(name, token)| (name.clone(), token.clone()))
                    .collect(),
            ),
            Query::Access => QueryResult::Access(self.access.clone()),
            Query::Audit {
                after,
                filter,
                limit,
            } => {
                let limit = (*limit).clamp(1, MAX_LIST_LIMIT) as usize;
                let log = &self.audit;
                // Records are numbered without gaps: skip straight to the first one after
                // `after`.
                let skip = log.records.front().map_or(0, |r| {
                    after.saturating_add(1).saturating_sub(r.seq) as usize
                });
                let mut matching = log.records.iter().skip(skip).filter(|r| filter.matches(r));
                let records = matching.by_ref().take(limit).cloned().collect();
                QueryResult::Audit(AuditPage {
                    records,
                    more: matching.next().is_some(),
                    pruned_through: log.pruned_through,
                    last_seq: log.last_seq,
                })
            }
            Query::AuditVerify { upto } => {
                let log = &self.audit;
                let (records, first_seq, last_seq, head, broken_at) = match log.verify(*upto) {
                    Ok(v) => (v.records, v.first_seq, v.last_seq, v.head, None),
                    Err(b) => (0, 0, 0, b.expected, Some(b.seq)),
                };
                QueryResult::AuditCheck(AuditCheck {
                    records,
                    first_seq,
                    last_seq,
                    head,
                    broken_at,
                    pruned_through: log.pruned_through,
                    newest_seq: log.last_seq,
                })
            }
        }
    }
}
