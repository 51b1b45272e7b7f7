//! Durable Raft log storage: one openraft log store ([`LogStore`]) over a small key/value
//! [`Backend`] with two engines, redb and sled, picked by `--storage`.
//!
//! Acknowledgement rule: openraft is told an append is done (`LogFlushed`) only after the
//! backend's `sync` returned, i.e. the entries are on disk. Appends are written at once (so
//! replication can read them) and synced by a flusher thread that covers every append queued
//! since its last sync with one fsync: group commit. The vote is synced before `save_vote`
//! returns. See docs/storage.md for the evidence behind the default engine.

mod log_store;
mod redb_backend;
mod sled_backend;

use std::io;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

pub use log_store::{AppendObserver, LogStore};
pub use redb_backend::RedbBackend;
pub use sled_backend::SledBackend;

/// The few operations the log store needs from a storage engine. Writes are visible to reads at
/// once; they are durable only after [`Backend::sync`] returns.
pub trait Backend: Send + Sync + 'static {
    /// Appends or overwrites log entries by index.
    fn write_entries(&self, entries: &[(u64, Vec<u8>)]) -> io::Result<()>;
    /// Entries with `start <= index < end`, in order.
    fn read_range(&self, start: u64, end: u64) -> io::Result<Vec<(u64, Vec<u8>)>>;
    /// The entry with the highest index.
    fn last_entry(&self) -> io::Result<Option<(u64, Vec<u8>)>>;
    /// Deletes entries with `index >= from`.
    fn delete_from(&self, from: u64) -> io::Result<()>;
    /// Deletes entries with `index <= through` and records `meta_key = meta_value` in the same
    /// atomic write (the purge marker must never disagree with the log).
    fn purge_through(&self, through: u64, meta_key: &str, meta_value: &[u8]) -> io::Result<()>;
    fn put_meta(&self, key: &str, value: &[u8]) -> io::Result<()>;
    fn get_meta(&self, key: &str) -> io::Result<Option<Vec<u8>>>;
    /// Makes every write made before this call durable.
    fn sync(&self) -> io::Result<()>;
}

/// The storage engine of a node's Raft log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    Redb,
    Sled,
}

impl StorageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageKind::Redb => "redb",
            StorageKind::Sled => "sled",
        }
    }
}

impl FromStr for StorageKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "redb" => Ok(StorageKind::Redb),
            "sled" => Ok(StorageKind::Sled),
            other => Err(format!(
                "unknown storage engine {other:?}: use redb (default) or sled"
            )),
        }
    }
}

/// Opens (or creates) the log store of kind `kind` in `dir`.
pub fn open_store(kind: StorageKind, dir: &Path) -> io::Result<LogStore> {
    std::fs::create_dir_all(dir)?;
    let backend: Arc<dyn Backend> = match kind {
        StorageKind::Redb => Arc::new(RedbBackend::open(&dir.join("raft.redb"))?),
        StorageKind::Sled => Arc::new(SledBackend::open(&dir.join("raft.sled"))?),
    };
    Ok(LogStore::new(backend))
}
