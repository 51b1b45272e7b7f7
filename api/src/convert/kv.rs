//! Key/value requests as commands.

use paddock_model::Command;

use crate::pb;

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
