//! Operation histories in Jepsen's conventions, one JSON object per line (`history.jsonl`):
//!
//! ```json
//! {"type":"invoke","process":3,"f":"cas","key":"k1","value":["a","b"],"time":12345,"node":"n2"}
//! {"type":"ok","process":3,"f":"cas","key":"k1","value":["a","b"],"time":12999,"node":"n2"}
//! ```
//!
//! `type`: `invoke` when a client starts an operation; then exactly one of `ok` (it took
//! effect), `fail` (it certainly did not: a CAS mismatch, a refusal before proposing) or
//! `info` (unknown: timeout, lost connection). After `info` the process never issues another
//! operation (the client continues under a fresh process id). `value`: the written string for
//! `write`; `[expected, new]` for `cas`; for `read`, null on invoke and the value read (null if
//! absent) on `ok`. `time`: monotonic nanoseconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Invoke,
    Ok,
    Fail,
    Info,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    Read,
    Write,
    Cas,
}

/// One line of `history.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    pub process: u64,
    pub f: Function,
    pub key: String,
    pub value: serde_json::Value,
    pub time: u64,
    #[serde(default)]
    pub node: String,
}

/// What an operation did, as far as the checker is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// A read that returned this value (`None`: absent).
    Read(Option<String>),
    Write(String),
    /// A compare-and-swap that succeeded (`ok`), or whose outcome is unknown (`info`: it may
    /// have swapped if the value matched, or done nothing).
    Cas {
        expected: String,
        new: String,
    },
}

/// One operation, paired from its invoke and completion events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub process: u64,
    pub action: Action,
    pub call: u64,
    /// Completion time; `u64::MAX` when the outcome is unknown (`info`), so the operation may
    /// take effect at any point after its call — or, being last, effectively never.
    pub ret: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HistoryError {
    #[error("line {line}: {message}")]
    Parse { line: usize, message: String },
    #[error("process {process} completes an operation it never invoked (time {time})")]
    Unmatched { process: u64, time: u64 },
    #[error("process {process} invokes a new operation while one is in flight (time {time})")]
    Overlapping { process: u64, time: u64 },
    #[error("{what} of process {process} has a malformed value: {value}")]
    BadValue {
        what: &'static str,
        process: u64,
        value: String,
    },
}

/// Parses `history.jsonl` text.
pub fn parse(text: &str) -> Result<Vec<Event>, HistoryError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| HistoryError::Parse {
                line: i + 1,
                message: e.to_string(),
            })
        })
        .collect()
}

/// Pairs invokes with completions and groups the operations by key. `fail` operations are
/// dropped (they certainly did not happen); `info` reads are dropped (no effect, no result);
/// `info` writes and CASes are kept with an open end; invokes never completed count as `info`.
pub fn operations_by_key(
    events: &[Event],
) -> Result<BTreeMap<String, Vec<Operation>>, HistoryError> {
    let mut open: BTreeMap<u64, &Event> = BTreeMap::new();
    let mut by_key: BTreeMap<String, Vec<Operation>> = BTreeMap::new();
    for event in events {
        if event.kind == EventType::Invoke {
            if open.insert(event.process, event).is_some() {
                return Err(HistoryError::Overlapping {
                    process: event.process,
                    time: event.time,
                });
            }
            continue;
        }
        let invoke = open.remove(&event.process).ok_or(HistoryError::Unmatched {
            process: event.process,
            time: event.time,
        })?;
        if let Some(op) = pair(invoke, Some(event))? {
            by_key.entry(invoke.key.clone()).or_default().push(op);
        }
    }
    for invoke in open.values() {
        if let Some(op) = pair(invoke, None)? {
            by_key.entry(invoke.key.clone()).or_default().push(op);
        }
    }
    Ok(by_key)
}

fn pair(invoke: &Event, completion: Option<&Event>) -> Result<Option<Operation>, HistoryError> {
    let kind = completion.map_or(EventType::Info, |c| c.kind);
    if kind == EventType::Fail {
        return Ok(None);
    }
    let bad = |what| HistoryError::BadValue {
        what,
        process: invoke.process,
        value: invoke.value.to_string(),
    };
    let action = match invoke.f {
        Function::Read => {
            if kind == EventType::Info {
                return Ok(None);
            }
            let value = completion.map_or(&serde_json::Value::Null, |c| &c.value);
            match value {
                serde_json::Value::Null => Action::Read(None),
                serde_json::Value::String(s) => Action::Read(Some(s.clone())),
                _ => return Err(bad("read")),
            }
        }
        Function::Write => Action::Write(
            invoke
                .value
                .as_str()
                .ok_or_else(|| bad("write"))?
                .to_string(),
        ),
        Function::Cas => {
            let pair = invoke
                .value
                .as_array()
                .filter(|a| a.len() == 2)
                .ok_or_else(|| bad("cas"))?;
            let expected = pair[0].as_str().ok_or_else(|| bad("cas"))?.to_string();
            let new = pair[1].as_str().ok_or_else(|| bad("cas"))?.to_string();
            Action::Cas { expected, new }
        }
    };
    let ret = match (kind, completion) {
        (EventType::Ok, Some(c)) => c.time,
        _ => u64::MAX,
    };
    Ok(Some(Operation {
        process: invoke.process,
        action,
        call: invoke.time,
        ret,
    }))
}
