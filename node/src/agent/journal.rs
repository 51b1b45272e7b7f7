//! The source's record of the outgoing migrations it started (`DATA/migrations/<id>`), so a
//! paddockd restarted mid-migration takes the job over instead of starting it again: libvirtd
//! carries a peer-to-peer migration on without its caller, and may even finish it (the
//! destination paused, waiting for the switch) while paddockd is down. Without the record the
//! new paddockd could not tell "I started this" from "never started", and would have thrown
//! away a finished transfer.
//!
//! A record is written (and made durable) before the driver is asked to migrate, and removed
//! once the replica shows the migration ended.

use std::path::{Path, PathBuf};

use paddock_model::ClusterState;

#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn open(dir: &Path) -> std::io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        Ok(Journal {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Records that this node starts migration `id` of `vm`; durable when it returns.
    pub fn started(&self, id: u64, vm: &str) -> std::io::Result<()> {
        use std::io::Write;
        let part = self.dir.join(format!("{id}.part"));
        let mut file = std::fs::File::create(&part)?;
        writeln!(file, "{vm}")?;
        file.sync_all()?;
        std::fs::rename(&part, self.path(id))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    pub fn has(&self, id: u64) -> bool {
        self.path(id).is_file()
    }

    /// The migrations recorded.
    pub fn ids(&self) -> Vec<u64> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut ids: Vec<u64> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Removes the records [`ended`] names.
    pub fn prune(&self, state: &ClusterState) {
        for id in ended(state, &self.ids()) {
            let _ = std::fs::remove_file(self.path(id));
        }
    }
}

/// Of `ids`, the migrations the replica shows to have ended (or to be gone after ending). A
/// replica that has not yet applied a migration's creation (just restarted, catching up)
/// ends none of it.
pub fn ended(state: &ClusterState, ids: &[u64]) -> Vec<u64> {
    ids.iter()
        .copied()
        .filter(|id| *id <= state.migration_seq)
        .filter(|id| {
            state
                .migrations
                .get(id)
                .is_none_or(|m| m.ended_ms.is_some())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_until_the_replica_shows_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(&dir.path().join("migrations")).expect("open");
        journal.started(7, "web").expect("record");
        journal.started(9, "db").expect("record");
        assert!(journal.has(7) && journal.has(9) && !journal.has(8));
        assert_eq!(journal.ids(), [7, 9]);

        // A replica that lags (has not applied migration 9's creation) removes nothing.
        let mut state = ClusterState {
            migration_seq: 6,
            ..ClusterState::default()
        };
        journal.prune(&state);
        assert_eq!(journal.ids(), [7, 9]);
        // 7 ended long ago (pruned from the state), 9 is open.
        state.migration_seq = 9;
        let mut open = paddock_model::migration::Migration {
            id: 9,
            vm: "db".into(),
            source: "n1".into(),
            source_epoch: 1,
            requested: None,
            destination: Some("n2".into()),
            target_epoch: 2,
            address: None,
            options: Default::default(),
            priority: 0,
            reason: "operator".into(),
            phase: paddock_model::migration::Phase::Transferring,
            error: None,
            source_resumed: false,
            created_ms: 0,
            started_ms: None,
            switched_ms: None,
            ended_ms: None,
            figures: Default::default(),
        };
        state.migrations.insert(9, open.clone());
        assert_eq!(ended(&state, &[7, 9]), [7]);
        journal.prune(&state);
        assert_eq!(journal.ids(), [9]);
        open.ended_ms = Some(1);
        state.migrations.insert(9, open);
        journal.prune(&state);
        assert!(journal.ids().is_empty());
    }
}
