//! openraft's storage conformance suite, run against both engines with the real state machine.

// The suite returns openraft's large `StorageError` as is.
#![allow(clippy::result_large_err)]

use openraft::testing::{StoreBuilder, Suite};
use paddock_raft::{open_store, LogStore, StateMachine, StorageError, StorageKind, TypeConfig};
use tempfile::TempDir;

struct Builder(StorageKind);

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new().map_err(|e| openraft::StorageIOError::write(&e))?;
        let log = open_store(self.0, &dir.path().join("log"))
            .map_err(|e| openraft::StorageIOError::write(&e))?;
        let sm = StateMachine::open(&dir.path().join("snapshots"))
            .map_err(|e| openraft::StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn redb_store_passes_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(Builder(StorageKind::Redb))
}

#[test]
fn sled_store_passes_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(Builder(StorageKind::Sled))
}
