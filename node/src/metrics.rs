//! Prometheus metrics of one node, served on `--http` at /metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Every metric the node exports. Raft gauges are refreshed from openraft's metrics at scrape.
pub struct NodeMetrics {
    pub registry: Registry,
    pub term: Gauge,
    pub is_leader: Gauge,
    pub last_log_index: Gauge,
    pub applied_index: Gauge,
    pub members: Gauge,
    /// Client writes by outcome: ok, rejected (a replicated refusal such as a CAS mismatch),
    /// error (not applied or unknown).
    pub writes: Family<ResultLabel, Counter>,
    /// Writes and reads this node sent on to the leader.
    pub forwarded: Counter,
    /// Client requests per Raft log entry on this leader.
    pub batch_size: Histogram,
    /// Time from a write reaching the leader's batcher to its commit and apply.
    pub commit_seconds: Histogram,
    /// Writes waiting in the leader's batcher for a free proposal slot.
    pub proposer_queue: Gauge,
    /// Proposals (log entries) on their way through Raft from this leader.
    pub proposals_in_flight: Gauge,
    /// Time from a Raft log append on this node to its entries being durable (fsync).
    pub append_seconds: Histogram,
    /// HTTPS API requests by method and status.
    pub api_requests: Family<ApiLabels, Counter>,
    /// HTTPS API time to the response head.
    pub api_seconds: Histogram,
    /// What the replicated state shows, refreshed at each scrape.
    pub state: StateMetrics,
    /// What this node saw being applied since it started ([`follow`]).
    pub applied: AppliedMetrics,
    /// The replica, the leader's heartbeat memory and the snapshot directory, once the
    /// daemon has them.
    context: std::sync::OnceLock<(
        paddock_raft::SharedState,
        std::sync::Arc<crate::liveness::Heard>,
        std::path::PathBuf,
    )>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeResource {
    pub node: String,
    pub resource: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeState {
    pub node: String,
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// Gauges read off the replica at scrape time.
#[derive(Default)]
pub struct StateMetrics {
    pub node_capacity: Family<NodeResource, Gauge>,
    pub node_allocated: Family<NodeResource, Gauge>,
    pub node_state: Family<NodeState, Gauge>,
    pub node_heartbeat_age: Family<NodeLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub vms: Family<NodeState, Gauge>,
    pub migrations_active: Gauge,
    pub snapshot_index: Gauge,
    pub snapshot_bytes: Gauge,
    pub purged_index: Gauge,
    pub events_last_seq: Gauge,
}

/// Counters and histograms of what this node applied (every replica applies the same log, so
/// every node counts the same; aggregate with `max`, not `sum`).
pub struct AppliedMetrics {
    pub events: Family<KindLabel, Counter>,
    pub leader_changes: Counter,
    pub migrations_ended: Family<OutcomeLabel, Counter>,
    pub migration_bytes: Counter,
    pub migration_seconds: Histogram,
    pub migration_downtime_seconds: Histogram,
    /// From a node declared down to each of its HA VMs running elsewhere.
    pub recovery_seconds: Histogram,
}

impl Default for AppliedMetrics {
    fn default() -> Self {
        AppliedMetrics {
            events: Family::default(),
            leader_changes: Counter::default(),
            migrations_ended: Family::default(),
            migration_bytes: Counter::default(),
            migration_seconds: Histogram::new(exponential_buckets(0.1, 2.0, 12)),
            migration_downtime_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            recovery_seconds: Histogram::new(exponential_buckets(0.25, 2.0, 10)),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub method: String,
    pub status: u16,
}

/// What `/metrics` serves: OpenMetrics text, as prometheus-client writes it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl NodeMetrics {
    pub fn new() -> NodeMetrics {
        let mut registry = Registry::with_prefix("paddock");
        let term = Gauge::default();
        let is_leader = Gauge::default();
        let last_log_index = Gauge::default();
        let applied_index = Gauge::default();
        let members = Gauge::default();
        let writes = Family::<ResultLabel, Counter>::default();
        let forwarded = Counter::default();
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        let commit_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        let proposer_queue = Gauge::default();
        let proposals_in_flight = Gauge::default();
        let append_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register("raft_term", "Current Raft term", term.clone());
        registry.register(
            "raft_is_leader",
            "1 if this node is the leader",
            is_leader.clone(),
        );
        registry.register(
            "raft_last_log_index",
            "Index of the last log entry",
            last_log_index.clone(),
        );
        registry.register(
            "raft_applied_index",
            "Index of the last applied entry",
            applied_index.clone(),
        );
        registry.register(
            "raft_members",
            "Members in the Raft membership",
            members.clone(),
        );
        registry.register("client_writes", "Client writes by result", writes.clone());
        registry.register(
            "forwarded_requests",
            "Requests forwarded to the leader",
            forwarded.clone(),
        );
        registry.register(
            "proposal_batch_size",
            "Client requests per log entry",
            batch_size.clone(),
        );
        registry.register(
            "commit_seconds",
            "Leader-side write commit latency",
            commit_seconds.clone(),
        );
        registry.register(
            "proposer_queue_depth",
            "Writes waiting in the leader's batcher for a proposal slot",
            proposer_queue.clone(),
        );
        registry.register(
            "proposals_in_flight",
            "Log entries proposed by this leader and not yet applied",
            proposals_in_flight.clone(),
        );
        registry.register(
            "raft_append_seconds",
            "Raft log append on this node until durable (fsync)",
            append_seconds.clone(),
        );
        let api_requests = Family::<ApiLabels, Counter>::default();
        let api_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "api_requests",
            "HTTPS API requests by method and status",
            api_requests.clone(),
        );
        registry.register(
            "api_request_seconds",
            "HTTPS API time to the response head",
            api_seconds.clone(),
        );
        let state = StateMetrics::default();
        let applied = AppliedMetrics::default();
        let r = &mut registry;
        r.register(
            "node_capacity",
            "What a node offers, by resource (cpus, memory_mib, disk_mib)",
            state.node_capacity.clone(),
        );
        r.register(
            "node_allocated",
            "What a node's VMs reserve, by resource",
            state.node_allocated.clone(),
        );
        r.register("node_state", "1 for the state each node is in (ready, cordoned, maintenance, draining, drained, down)", state.node_state.clone());
        r.register(
            "node_heartbeat_age_seconds",
            "Time since the leader last heard each node (leader only)",
            state.node_heartbeat_age.clone(),
        );
        r.register(
            "vms",
            "VMs by observed state and node (node \"\" while unplaced)",
            state.vms.clone(),
        );
        r.register(
            "migrations_active",
            "Migrations not yet ended",
            state.migrations_active.clone(),
        );
        r.register(
            "raft_snapshot_index",
            "Last log index in this node's latest snapshot",
            state.snapshot_index.clone(),
        );
        r.register(
            "raft_snapshot_bytes",
            "Size of this node's latest snapshot file",
            state.snapshot_bytes.clone(),
        );
        r.register(
            "raft_purged_index",
            "Log entries up to here are compacted away on this node",
            state.purged_index.clone(),
        );
        r.register(
            "events_last_seq",
            "Number of the last cluster event applied here",
            state.events_last_seq.clone(),
        );
        r.register("events", "Cluster events applied here since start, by kind (node.down counts fencings, vm.recovery HA decisions)", applied.events.clone());
        r.register(
            "raft_leader_changes",
            "Leader changes applied here since start",
            applied.leader_changes.clone(),
        );
        r.register(
            "migrations_ended",
            "Migrations ended since start, by outcome",
            applied.migrations_ended.clone(),
        );
        r.register(
            "migration_bytes",
            "Bytes on the wire of migrations ended since start",
            applied.migration_bytes.clone(),
        );
        r.register(
            "migration_duration_seconds",
            "Duration of ended migrations",
            applied.migration_seconds.clone(),
        );
        r.register(
            "migration_downtime_seconds",
            "Guest pause at the switch of completed migrations",
            applied.migration_downtime_seconds.clone(),
        );
        r.register(
            "ha_recovery_seconds",
            "From a node declared down to each of its HA VMs running elsewhere",
            applied.recovery_seconds.clone(),
        );
        NodeMetrics {
            state,
            applied,
            context: std::sync::OnceLock::new(),
            api_requests,
            api_seconds,
            registry,
            term,
            is_leader,
            last_log_index,
            applied_index,
            members,
            writes,
            forwarded,
            batch_size,
            commit_seconds,
            proposer_queue,
            proposals_in_flight,
            append_seconds,
        }
    }

    pub fn api_request(
        &self,
        method: &axum::http::Method,
        status: axum::http::StatusCode,
        took: std::time::Duration,
    ) {
        self.api_requests
            .get_or_create(&ApiLabels {
                method: method.as_str().to_string(),
                status: status.as_u16(),
            })
            .inc();
        self.api_seconds.observe(took.as_secs_f64());
    }

    /// Refreshes the Raft gauges from openraft's metrics and encodes everything.
    pub fn render(&self, raft: &paddock_raft::Raft) -> Result<String, String> {
        let metrics = raft.metrics().borrow().clone();
        self.term.set(metrics.current_term as i64);
        self.is_leader
            .set(i64::from(metrics.current_leader == Some(metrics.id)));
        self.last_log_index
            .set(metrics.last_log_index.unwrap_or(0) as i64);
        self.applied_index
            .set(metrics.last_applied.map_or(0, |l| l.index) as i64);
        self.members
            .set(metrics.membership_config.membership().nodes().count() as i64);
        self.state
            .snapshot_index
            .set(metrics.snapshot.map_or(0, |l| l.index) as i64);
        self.state
            .purged_index
            .set(metrics.purged.map_or(0, |l| l.index) as i64);
        if let Some((shared, heard, snapshots)) = self.context.get() {
            if let Some(bytes) = paddock_raft::state_machine::snapshot_bytes(snapshots) {
                self.state.snapshot_bytes.set(bytes as i64);
            }
            let leading = metrics.current_leader == Some(metrics.id);
            self.read_state(
                shared,
                leading.then_some((heard.as_ref(), metrics.current_term)),
            );
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .map_err(|e| format!("encoding metrics: {e}\n"))?;
        Ok(text)
    }

    /// Gives the scrape the replica, the leader's heartbeat memory and the snapshot directory.
    pub fn attach(
        &self,
        shared: paddock_raft::SharedState,
        heard: std::sync::Arc<crate::liveness::Heard>,
        snapshots: std::path::PathBuf,
    ) {
        let _ = self.context.set((shared, heard, snapshots));
    }

    fn read_state(
        &self,
        shared: &paddock_raft::SharedState,
        leader: Option<(&crate::liveness::Heard, u64)>,
    ) {
        let applied = shared.read();
        let state = &applied.state;
        let m = &self.state;
        m.node_capacity.clear();
        m.node_allocated.clear();
        m.node_state.clear();
        m.node_heartbeat_age.clear();
        m.vms.clear();
        let now = std::time::Instant::now();
        for node in state.nodes.values() {
            for (resource, capacity, allocated) in [
                (
                    "cpus",
                    u64::from(node.capacity.cpus),
                    u64::from(node.allocated.cpus),
                ),
                (
                    "memory_mib",
                    node.capacity.memory_mib,
                    node.allocated.memory_mib,
                ),
                ("disk_mib", node.capacity.disk_mib, node.allocated.disk_mib),
            ] {
                let labels = NodeResource {
                    node: node.name.clone(),
                    resource,
                };
                m.node_capacity.get_or_create(&labels).set(capacity as i64);
                m.node_allocated
                    .get_or_create(&labels)
                    .set(allocated as i64);
            }
            m.node_state
                .get_or_create(&NodeState {
                    node: node.name.clone(),
                    state: node.state_name().to_string(),
                })
                .set(1);
            if let Some((heard, term)) = leader {
                m.node_heartbeat_age
                    .get_or_create(&NodeLabel {
                        node: node.name.clone(),
                    })
                    .set(heard.silent_for(&node.name, term, now).as_secs_f64());
            }
        }
        for vm in state.vms.values() {
            m.vms
                .get_or_create(&NodeState {
                    node: vm.node().unwrap_or_default().to_string(),
                    state: vm.observed.name().to_string(),
                })
                .inc();
        }
        m.migrations_active.set(
            state
                .migrations
                .values()
                .filter(|mig| mig.ended_ms.is_none())
                .count() as i64,
        );
        m.events_last_seq.set(state.events.last_seq as i64);
    }

    pub fn count_write(&self, result: &'static str) {
        self.writes.get_or_create(&ResultLabel { result }).inc();
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        NodeMetrics::new()
    }
}

/// Counts what this node applies: events by kind, leader changes, ended migrations with their
/// figures, and HA recoveries (a node declared down, then each of its HA VMs running
/// elsewhere). Runs for the life of the daemon.
pub async fn follow(
    metrics: std::sync::Arc<NodeMetrics>,
    raft: paddock_raft::Raft,
    shared: paddock_raft::SharedState,
) {
    use paddock_model::events::EventKind;
    let mut changes = raft.metrics();
    let mut after = shared.read().state.events.last_seq;
    let mut ended: std::collections::BTreeSet<u64> = shared
        .read()
        .state
        .migrations
        .values()
        .filter(|m| m.ended_ms.is_some())
        .map(|m| m.id)
        .collect();
    // VM -> when its node was declared down (while it is being recovered).
    let mut recovering: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    loop {
        {
            let applied = shared.read();
            let state = &applied.state;
            let page =
                state
                    .events
                    .page(after, &[], None, paddock_model::events::MAX_EVENTS_PER_READ);
            for e in &page.events {
                metrics
                    .applied
                    .events
                    .get_or_create(&KindLabel {
                        kind: e.kind.name().to_string(),
                    })
                    .inc();
                match e.kind {
                    EventKind::LeaderChanged => {
                        metrics.applied.leader_changes.inc();
                    }
                    EventKind::VmRecovery if e.message.contains("placing it elsewhere") => {
                        recovering.insert(e.subject.clone(), e.at_ms);
                    }
                    EventKind::VmState if e.message.starts_with("running on") => {
                        if let Some(since) = recovering.remove(&e.subject) {
                            metrics
                                .applied
                                .recovery_seconds
                                .observe(e.at_ms.saturating_sub(since) as f64 / 1000.0);
                        }
                    }
                    EventKind::VmDeleted => {
                        recovering.remove(&e.subject);
                    }
                    _ => {}
                }
            }
            after = page
                .events
                .last()
                .map_or(page.last_seq, |e| e.seq)
                .max(after);
            for m in state.migrations.values() {
                if m.ended_ms.is_none() || !ended.insert(m.id) {
                    continue;
                }
                metrics
                    .applied
                    .migrations_ended
                    .get_or_create(&OutcomeLabel {
                        outcome: m.phase.name().to_string(),
                    })
                    .inc();
                metrics
                    .applied
                    .migration_bytes
                    .inc_by(m.figures.bytes_transferred);
                metrics
                    .applied
                    .migration_seconds
                    .observe(m.figures.total_ms as f64 / 1000.0);
                if let Some(downtime) = m.figures.downtime_ms {
                    metrics
                        .applied
                        .migration_downtime_seconds
                        .observe(downtime as f64 / 1000.0);
                }
            }
            // Forget migrations pruned from the state.
            ended.retain(|id| state.migrations.contains_key(id));
            if page.events.len() as u32 == paddock_model::events::MAX_EVENTS_PER_READ {
                continue;
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}
