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
    /// HTTPS API requests by method and status.
    pub api_requests: Family<ApiLabels, Counter>,
    /// HTTPS API time to the response head.
    pub api_seconds: Histogram,
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
        NodeMetrics {
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
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .map_err(|e| format!("encoding metrics: {e}\n"))?;
        Ok(text)
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
