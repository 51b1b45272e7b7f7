//! The redb engine: pure Rust, copy-on-write B-trees, a stable file format, and `commit()`
//! that fsyncs. Writes are committed without fsync (`Durability::None`, visible at once) and
//! made durable by an empty `Durability::Immediate` commit in [`Backend::sync`], which persists
//! every earlier non-durable commit.

use std::io;
use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::Backend;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// redb's page cache. The log is read back mostly right after it was written (replication), so
/// a small cache is enough and keeps node memory low.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

pub struct RedbBackend {
    db: Database,
}

fn io_err(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

impl RedbBackend {
    pub fn open(path: &Path) -> io::Result<RedbBackend> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| {
                io::Error::other(format!("cannot open redb store {}: {e}", path.display()))
            })?;
        // Create the tables so readers never see them missing.
        let txn = db.begin_write().map_err(io_err)?;
        txn.open_table(LOG).map_err(io_err)?;
        txn.open_table(META).map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        Ok(RedbBackend { db })
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> io::Result<()> {
        let mut txn = self.db.begin_write().map_err(io_err)?;
        txn.set_durability(Durability::None).map_err(io_err)?;
        f(&txn).map_err(io_err)?;
        txn.commit().map_err(io_err)
    }
}

impl Backend for RedbBackend {
    fn write_entries(&self, entries: &[(u64, Vec<u8>)]) -> io::Result<()> {
        self.write(|txn| {
            let mut table = txn.open_table(LOG)?;
            for (index, bytes) in entries {
                table.insert(*index, bytes.as_slice())?;
            }
            Ok(())
        })
    }

    fn read_range(&self, start: u64, end: u64) -> io::Result<Vec<(u64, Vec<u8>)>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(LOG).map_err(io_err)?;
        let mut out = Vec::new();
        for item in table.range(start..end).map_err(io_err)? {
            let (k, v) = item.map_err(io_err)?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn last_entry(&self) -> io::Result<Option<(u64, Vec<u8>)>> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(LOG).map_err(io_err)?;
        let last = table.last().map_err(io_err)?;
        Ok(last.map(|(k, v)| (k.value(), v.value().to_vec())))
    }

    fn delete_from(&self, from: u64) -> io::Result<()> {
        self.write(|txn| {
            let mut table = txn.open_table(LOG)?;
            table.retain_in(from.., |_, _| false)?;
            Ok(())
        })
    }

    fn purge_through(&self, through: u64, meta_key: &str, meta_value: &[u8]) -> io::Result<()> {
        self.write(|txn| {
            let mut table = txn.open_table(LOG)?;
            table.retain_in(..=through, |_, _| false)?;
            let mut meta = txn.open_table(META)?;
            meta.insert(meta_key, meta_value)?;
            Ok(())
        })
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> io::Result<()> {
        self.write(|txn| {
            let mut meta = txn.open_table(META)?;
            meta.insert(key, value)?;
            Ok(())
        })
    }

    fn get_meta(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(META).map_err(io_err)?;
        let value = table.get(key).map_err(io_err)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn sync(&self) -> io::Result<()> {
        let mut txn = self.db.begin_write().map_err(io_err)?;
        txn.set_durability(Durability::Immediate).map_err(io_err)?;
        txn.commit().map_err(io_err)
    }
}
