//! The sled engine (sled 0.34, beta by its own README). sled keeps writes in memory and flushes
//! them in the background; [`Backend::sync`] calls `flush()` so nothing is acknowledged before
//! it is on disk. Kept as the alternative engine; see docs/storage.md for why it is not the
//! default.

use std::io;
use std::path::Path;

use super::Backend;

/// sled's page cache; its default (1 GiB) would dominate node memory.
const CACHE_BYTES: u64 = 4 * 1024 * 1024;

pub struct SledBackend {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
}

fn io_err(e: sled::Error) -> io::Error {
    match e {
        sled::Error::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl SledBackend {
    pub fn open(path: &Path) -> io::Result<SledBackend> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            // Background flushing stays on as a backstop; acknowledgements never rely on it.
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| {
                io::Error::other(format!("cannot open sled store {}: {e}", path.display()))
            })?;
        let log = db.open_tree("log").map_err(io_err)?;
        let meta = db.open_tree("meta").map_err(io_err)?;
        Ok(SledBackend { db, log, meta })
    }
}

impl Backend for SledBackend {
    fn write_entries(&self, entries: &[(u64, Vec<u8>)]) -> io::Result<()> {
        let mut batch = sled::Batch::default();
        for (index, bytes) in entries {
            batch.insert(&index.to_be_bytes(), bytes.as_slice());
        }
        self.log.apply_batch(batch).map_err(io_err)
    }

    fn read_range(&self, start: u64, end: u64) -> io::Result<Vec<(u64, Vec<u8>)>> {
        if start >= end {
            return Ok(Vec::new());
        }
        self.log
            .range(start.to_be_bytes()..end.to_be_bytes())
            .map(|item| {
                let (k, v) = item.map_err(io_err)?;
                Ok((decode_index(&k)?, v.to_vec()))
            })
            .collect()
    }

    fn last_entry(&self) -> io::Result<Option<(u64, Vec<u8>)>> {
        match self.log.last().map_err(io_err)? {
            Some((k, v)) => Ok(Some((decode_index(&k)?, v.to_vec()))),
            None => Ok(None),
        }
    }

    fn delete_from(&self, from: u64) -> io::Result<()> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(from.to_be_bytes()..) {
            let (k, _) = item.map_err(io_err)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(io_err)
    }

    fn purge_through(&self, through: u64, meta_key: &str, meta_value: &[u8]) -> io::Result<()> {
        use sled::Transactional;
        let keys: Vec<sled::IVec> = self
            .log
            .range(..=through.to_be_bytes())
            .keys()
            .collect::<Result<_, _>>()
            .map_err(io_err)?;
        (&self.log, &self.meta)
            .transaction(|(log, meta)| {
                for k in &keys {
                    log.remove(k)?;
                }
                meta.insert(meta_key, meta_value)?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| {
                io::Error::other(format!("{e:?}"))
            })
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> io::Result<()> {
        self.meta.insert(key, value).map(|_| ()).map_err(io_err)
    }

    fn get_meta(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(self.meta.get(key).map_err(io_err)?.map(|v| v.to_vec()))
    }

    fn sync(&self) -> io::Result<()> {
        self.db.flush().map(|_| ()).map_err(io_err)
    }
}

fn decode_index(key: &[u8]) -> io::Result<u64> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "log key is not 8 bytes"))?;
    Ok(u64::from_be_bytes(bytes))
}
