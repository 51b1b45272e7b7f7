//! Reads of the cluster state. Served by any node: after a read-index round for a linearizable
//! read, or straight from the local replica for a stale one.

use serde::{Deserialize, Serialize};

use crate::state::ClusterState;

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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryResult {
    Value(Option<String>),
    Entries {
        entries: Vec<(String, String)>,
        /// More keys match after the last returned one.
        more: bool,
    },
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
        }
    }
}
