//! Conversions between protobuf messages and model types.

use paddock_model::{Command, RequestId};

use crate::pb;

impl From<pb::RequestId> for RequestId {
    fn from(id: pb::RequestId) -> Self {
        RequestId {
            client: id.client,
            seq: id.seq,
        }
    }
}

impl From<RequestId> for pb::RequestId {
    fn from(id: RequestId) -> Self {
        pb::RequestId {
            client: id.client,
            seq: id.seq,
        }
    }
}

impl pb::PutRequest {
    pub fn command(&self) -> Command {
        Command::KvPut {
            key: self.key.clone(),
            value: self.value.clone(),
        }
    }
}

impl pb::DeleteRequest {
    pub fn command(&self) -> Command {
        Command::KvDelete {
            key: self.key.clone(),
        }
    }
}

impl pb::CasRequest {
    pub fn command(&self) -> Command {
        Command::KvCas {
            key: self.key.clone(),
            expect: (!self.expect_absent).then(|| self.expect.clone()),
            value: self.value.clone(),
        }
    }
}

/// An optional protobuf value: `(found, value)` pairs stand for `Option<String>` on the wire.
pub fn split_option(value: Option<String>) -> (bool, String) {
    match value {
        Some(v) => (true, v),
        None => (false, String::new()),
    }
}

/// The inverse of [`split_option`].
pub fn join_option(found: bool, value: String) -> Option<String> {
    found.then_some(value)
}
