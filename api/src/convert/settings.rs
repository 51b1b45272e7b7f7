//! Cluster settings.

use paddock_model::Command;

use crate::pb;

impl pb::SettingSetRequest {
    pub fn command(&self) -> Command {
        Command::SettingSet {
            key: self.key.clone(),
            value: self.value.clone(),
        }
    }
}
