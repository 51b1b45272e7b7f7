//! openraft's log storage over a [`Backend`], with group commit.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageIOError, Vote};
use paddock_model::codec;

use super::Backend;
use crate::{Entry, LogId, NodeId, StorageError, TypeConfig};

const META_VOTE: &str = "vote";
const META_COMMITTED: &str = "committed";
const META_PURGED: &str = "last_purged";

/// Told, for every append, how long it took from the call to its entries being durable.
pub type AppendObserver = Arc<dyn Fn(Duration) + Send + Sync>;

/// The Raft log, vote and commit index of one node.
pub struct LogStore {
    backend: Arc<dyn Backend>,
    /// Appends waiting for the flusher thread's next fsync, with when each was asked for.
    flush_queue: mpsc::Sender<(Instant, LogFlushed<TypeConfig>)>,
    observer: Arc<OnceLock<AppendObserver>>,
}

/// Reads the log for replication, independently of the store's writer.
#[derive(Clone)]
pub struct LogReader {
    backend: Arc<dyn Backend>,
}

impl LogStore {
    pub fn new(backend: Arc<dyn Backend>) -> LogStore {
        let (flush_queue, pending) = mpsc::channel();
        let flusher = backend.clone();
        let observer = Arc::new(OnceLock::new());
        let told = observer.clone();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flush_loop(flusher, pending, told))
            .expect("spawning the log flusher thread");
        LogStore {
            backend,
            flush_queue,
            observer,
        }
    }

    /// Sets who is told each append's latency to durability (the first call wins).
    pub fn observe_appends(&self, observer: AppendObserver) {
        let _ = self.observer.set(observer);
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let bytes = self
            .backend
            .get_meta(key)
            .map_err(|e| StorageIOError::read(&e))?;
        bytes
            .map(|b| codec::decode(&b).map_err(|e| StorageIOError::read(&e).into()))
            .transpose()
    }

    fn put_meta<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<(), StorageError> {
        let bytes = codec::encode(value).map_err(|e| StorageIOError::write(&e))?;
        self.backend
            .put_meta(key, &bytes)
            .map_err(|e| StorageIOError::write(&e).into())
    }
}

/// Waits for appends, then makes all of them durable with one sync and acknowledges them.
/// Every queued callback belongs to a write that finished before it was queued, so one sync
/// after draining the queue covers all of them.
fn flush_loop(
    backend: Arc<dyn Backend>,
    pending: mpsc::Receiver<(Instant, LogFlushed<TypeConfig>)>,
    observer: Arc<OnceLock<AppendObserver>>,
) {
    while let Ok(first) = pending.recv() {
        let mut batch = vec![first];
        batch.extend(pending.try_iter());
        let result = backend.sync();
        for (asked, callback) in batch {
            if let (Some(observe), Ok(())) = (observer.get(), &result) {
                observe(asked.elapsed());
            }
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            callback.log_io_completed(outcome);
        }
    }
}

fn decode_entries(rows: Vec<(u64, Vec<u8>)>) -> Result<Vec<Entry>, StorageError> {
    rows.into_iter()
        .map(|(index, bytes)| {
            codec::decode(&bytes).map_err(|e| StorageIOError::read_log_at_index(index, &e).into())
        })
        .collect()
}

fn bounds(range: impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(range);
        let rows = self
            .backend
            .read_range(start, end)
            .map_err(|e| StorageIOError::read_logs(&e))?;
        decode_entries(rows)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        LogReader {
            backend: self.backend.clone(),
        }
        .try_get_log_entries(range)
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta(META_PURGED)?;
        let last = self
            .backend
            .last_entry()
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let last_log_id = match last {
            Some(row) => decode_entries(vec![row])?.pop().map(|e| e.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            backend: self.backend.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.put_meta(META_VOTE, vote)?;
        // A vote must be durable before it is acted on: a node that forgot its vote could vote
        // twice in one term.
        self.backend
            .sync()
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta(META_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: after a crash a smaller commit index is safe, it only means re-applying
        // less at start-up; the next sync persists it anyway.
        self.put_meta(META_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(META_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let asked = Instant::now();
        let rows = entries
            .into_iter()
            .map(|entry| {
                codec::encode(&entry)
                    .map(|bytes| (entry.log_id.index, bytes))
                    .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.backend
            .write_entries(&rows)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // The flusher acknowledges after its next sync. If it is gone the node is shutting down.
        if let Err(mpsc::SendError((_, callback))) = self.flush_queue.send((asked, callback)) {
            callback.log_io_completed(Err(std::io::Error::other("log flusher stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Synced so a crash can never bring back entries this node was told to drop.
        self.backend
            .delete_from(log_id.index)
            .and_then(|()| self.backend.sync())
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let marker = codec::encode(&log_id).map_err(|e| StorageIOError::write(&e))?;
        self.backend
            .purge_through(log_id.index, META_PURGED, &marker)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
