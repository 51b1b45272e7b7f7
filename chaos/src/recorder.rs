//! The run's recorder: history events and fault records, timed from the run's start, written
//! as JSON lines for the checkers (and any outside checker).

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Value};

use crate::history::{Event, EventType, Function};

/// Events and fault records with times relative to the run's start.
pub(crate) struct Recorder {
    pub(crate) start: Instant,
    pub(crate) history: Mutex<std::io::BufWriter<std::fs::File>>,
    pub(crate) faults: Mutex<std::fs::File>,
}

impl Recorder {
    pub(crate) fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub(crate) fn event(
        &self,
        kind: EventType,
        process: u64,
        f: Function,
        key: &str,
        value: Value,
        node: &str,
    ) {
        let event = Event {
            kind,
            process,
            f,
            key: key.to_string(),
            value,
            time: self.now(),
            node: node.to_string(),
        };
        if let (Ok(mut out), Ok(line)) = (self.history.lock(), serde_json::to_string(&event)) {
            let _ = writeln!(out, "{line}");
        }
    }

    pub(crate) fn fault(&self, record: Value) {
        let mut record = record;
        record["time"] = json!(self.now());
        // Wall clock too: memvm guests record their run intervals in wall-clock ms.
        record["wall_ms"] = json!(crate::workloads::vm::wall_ms());
        if let Ok(mut out) = self.faults.lock() {
            let _ = writeln!(out, "{record}");
        }
    }
}
