//! The state machine: the applied [`ClusterState`] in memory, snapshots as files.
//!
//! Durability comes from the log: on start the latest snapshot file is loaded and openraft
//! re-applies the committed log entries after it. A snapshot file is
//! `[format version][meta length: u32 LE][meta][state]` (postcard), written to a temporary
//! file, fsynced and renamed, so a crash leaves either the old or the new snapshot.
//!
//! The applied state is shared ([`SharedState`]) with the API server, which reads it under a
//! short read lock; only `apply` and snapshot installation take the write lock.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use paddock_model::codec::FORMAT_VERSION;
use paddock_model::{ClusterState, Member, MemberRole, Outcome};

use crate::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// What has been applied, as one unit so readers never see a state and an index that disagree.
#[derive(Debug, Default)]
pub struct Applied {
    pub state: ClusterState,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// The applied state, shared between the state machine (writer) and the API (readers).
#[derive(Debug, Clone, Default)]
pub struct SharedState {
    inner: Arc<RwLock<Applied>>,
}

impl SharedState {
    /// Read access. Never hold the guard across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub struct StateMachine {
    shared: SharedState,
    dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("cannot read snapshot {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot {path} has format version {found}, this build reads {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u8 },
    #[error("snapshot {path} is corrupt; move it away and let the node receive a fresh snapshot from the leader")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: postcard::Error,
    },
}

impl StateMachine {
    /// Opens the state machine in `dir`, loading the latest snapshot if there is one.
    pub fn open(dir: &Path) -> Result<StateMachine, SnapshotFileError> {
        let io = |source| SnapshotFileError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        // Leftovers of a crash during a snapshot build or transfer.
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                let _ = std::fs::remove_file(path);
            }
        }
        let shared = SharedState::default();
        let current = current_path(dir);
        if current.exists() {
            let (meta, state) = read_snapshot_file(&current)?;
            let mut applied = shared.write();
            applied.state = state;
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
        }
        Ok(StateMachine {
            shared,
            dir: dir.to_path_buf(),
        })
    }

    pub fn shared(&self) -> SharedState {
        self.shared.clone()
    }
}

/// Size in bytes of the latest snapshot file in `dir` (a state-machine directory), if any.
pub fn snapshot_bytes(dir: &Path) -> Option<u64> {
    std::fs::metadata(current_path(dir)).ok().map(|m| m.len())
}

fn current_path(dir: &Path) -> PathBuf {
    dir.join("current.snap")
}

fn temp_path(dir: &Path, what: &str) -> PathBuf {
    dir.join(format!("{what}-{:016x}.tmp", fastrand::u64(..)))
}

fn write_snapshot_file(
    path: &Path,
    meta: &SnapshotMeta,
    state: &ClusterState,
) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let meta_bytes = postcard::to_stdvec(meta).map_err(std::io::Error::other)?;
    out.write_all(&[FORMAT_VERSION])?;
    out.write_all(&(meta_bytes.len() as u32).to_le_bytes())?;
    out.write_all(&meta_bytes)?;
    postcard::to_io(state, &mut out).map_err(std::io::Error::other)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

/// Reads the header of a snapshot file: its meta, and the open reader positioned at the state.
fn read_snapshot_header(
    path: &Path,
) -> Result<(SnapshotMeta, BufReader<std::fs::File>), SnapshotFileError> {
    let io = |source| SnapshotFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::new(std::fs::File::open(path).map_err(io)?);
    let mut head = [0u8; 5];
    reader.read_exact(&mut head).map_err(io)?;
    if head[0] != FORMAT_VERSION {
        return Err(SnapshotFileError::Version {
            path: path.to_path_buf(),
            found: head[0],
        });
    }
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut meta_bytes = vec![0u8; len.min(64 << 20)];
    reader.read_exact(&mut meta_bytes).map_err(io)?;
    let meta = postcard::from_bytes(&meta_bytes).map_err(|source| SnapshotFileError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((meta, reader))
}

fn read_snapshot_file(path: &Path) -> Result<(SnapshotMeta, ClusterState), SnapshotFileError> {
    let (meta, mut reader) = read_snapshot_header(path)?;
    let mut body = Vec::new();
    reader
        .read_to_end(&mut body)
        .map_err(|source| SnapshotFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let state = postcard::from_bytes(&body).map_err(|source| SnapshotFileError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((meta, state))
}

/// Makes a rename durable by syncing the directory that holds it.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn members_of(membership: &StoredMembership) -> Vec<(String, Member)> {
    let config = membership.membership();
    config
        .nodes()
        .map(|(id, node)| {
            let role = if config.voter_ids().any(|v| v == *id) {
                MemberRole::Voter
            } else {
                MemberRole::Learner
            };
            (
                node.name.clone(),
                Member {
                    id: *id,
                    address: node.address.clone(),
                    role,
                },
            )
        })
        .collect()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let temp = temp_path(&self.dir, "build");
        let meta = {
            // Serialized straight to the file under the read lock: no in-memory copy of the
            // whole state, at the price of pausing apply while the file is written.
            let applied = self.shared.read();
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
                // Unique even for two snapshots at the same index (openraft compares ids).
                snapshot_id: format!(
                    "{}-{:08x}",
                    applied.last_applied.map_or(0, |l| l.index),
                    fastrand::u32(..)
                ),
            };
            write_snapshot_file(&temp, &meta, &applied.state)
                .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
            meta
        };
        let current = current_path(&self.dir);
        std::fs::rename(&temp, &current)
            .and_then(|()| sync_dir(&self.dir))
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let file = tokio::fs::File::open(&current)
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.shared.read();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Outcome>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        {
            let mut applied = self.shared.write();
            for entry in entries {
                applied.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => {
                        applied.state.leader_elected(
                            entry.log_id.leader_id.node_id,
                            entry.log_id.leader_id.term,
                        );
                        responses.push(Vec::new())
                    }
                    EntryPayload::Normal(proposal) => {
                        responses.push(applied.state.apply(&proposal))
                    }
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        let members = members_of(&applied.membership);
                        applied.state.set_members(members);
                        responses.push(Vec::new());
                    }
                }
            }
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        StateMachine {
            shared: self.shared.clone(),
            dir: self.dir.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = temp_path(&self.dir, "recv");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        // The name is not needed again: the file is read through this handle and the snapshot
        // is re-written under its final name when installed.
        let _ = std::fs::remove_file(&path);
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        use tokio::io::AsyncSeekExt;
        let signature = Some(meta.signature());
        let write_err = |e: std::io::Error| StorageIOError::write_snapshot(signature.clone(), &e);
        // Copy the received bytes under a temporary name, check they decode, then make that
        // file the current snapshot: one pass over the data, no copy of it in memory.
        let temp = temp_path(&self.dir, "install");
        snapshot
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(write_err)?;
        let mut file = tokio::fs::File::create(&temp).await.map_err(write_err)?;
        tokio::io::copy(&mut snapshot, &mut file)
            .await
            .map_err(write_err)?;
        file.sync_all().await.map_err(write_err)?;
        drop(file);
        let (_, state) = read_snapshot_file(&temp)
            .map_err(|e| StorageIOError::read_snapshot(signature.clone(), &e))?;
        std::fs::rename(&temp, current_path(&self.dir))
            .and_then(|()| sync_dir(&self.dir))
            .map_err(write_err)?;
        let mut applied = self.shared.write();
        applied.state = state;
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        let members = members_of(&applied.membership);
        applied.state.set_members(members);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = current_path(&self.dir);
        if !current.exists() {
            return Ok(None);
        }
        let (meta, _) =
            read_snapshot_header(&current).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let file = tokio::fs::File::open(&current)
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}
