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
}

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
        NodeMetrics {
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
        }
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
