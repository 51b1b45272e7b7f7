//! The node's image store (`DATA/images`): one file per image, named by its SHA-256, written
//! only by [`ImageWriter`], which hashes while it writes and moves the file into place only
//! once size and hash are right. A file in the store is therefore always a verified copy; a
//! crash leaves at most a `.part` file, removed at the next start.
//!
//! [`sync`] keeps the store matching the replicated image list (fetch what is missing from a
//! peer, announce what is held, remove what was deleted); the agent resolves a disk's image
//! name to its file here before it starts a VM ([`ImageStore::resolve`]).

pub mod sync;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use paddock_model::image::{is_image_name, Image, MAX_IMAGE_BYTES};
use paddock_model::{ClusterState, VmSpec};

const PART: &str = ".part";

#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

/// A file of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalImage {
    pub sha256: String,
    pub modified: SystemTime,
}

/// What a finished write stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub sha256: String,
    pub size_bytes: u64,
    pub format: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image store: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Refused(String),
}

impl ImageStore {
    /// Opens (creates) the store and removes what an interrupted write left.
    pub fn open(dir: &Path) -> std::io::Result<ImageStore> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(PART) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(ImageStore {
            dir: dir.to_path_buf(),
        })
    }

    /// Where the image with this hash is kept.
    pub fn path_of(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("sha256-{sha256}"))
    }

    pub fn has(&self, sha256: &str) -> bool {
        self.path_of(sha256).is_file()
    }

    /// The verified copies held here.
    pub fn local(&self) -> std::io::Result<Vec<LocalImage>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(sha256) = name.strip_prefix("sha256-") else {
                continue;
            };
            if sha256.ends_with(PART) {
                continue;
            }
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            found.push(LocalImage {
                sha256: sha256.to_string(),
                modified,
            });
        }
        found.sort_by(|a, b| a.sha256.cmp(&b.sha256));
        Ok(found)
    }

    pub fn remove(&self, sha256: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path_of(sha256)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// A new write; nothing is visible in the store until [`ImageWriter::finish`].
    pub fn writer(&self) -> std::io::Result<ImageWriter> {
        let part = self
            .dir
            .join(format!("incoming-{:016x}{PART}", fastrand::u64(..)));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&part)?;
        Ok(ImageWriter {
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            part,
            dir: self.dir.clone(),
            digest: ring::digest::Context::new(&ring::digest::SHA256),
            written: 0,
            head: Vec::new(),
            done: false,
        })
    }

    /// `spec` with every disk image name replaced by the path of its verified copy here.
    /// `Err` says which image is missing (the sync fetches it; the start waits) or unknown.
    pub fn resolve(&self, state: &ClusterState, spec: &VmSpec) -> Result<VmSpec, String> {
        let mut resolved = spec.clone();
        for disk in &mut resolved.disks {
            let Some(name) = disk.image.clone().filter(|r| is_image_name(r)) else {
                continue;
            };
            let image: &Image = state.images.get(&name).ok_or_else(|| {
                format!("image {name} is not registered (deleted?); import it with `paddock image import {name} FILE`")
            })?;
            if !self.has(&image.sha256) {
                let from: Vec<&str> = image.holders.iter().map(String::as_str).collect();
                return Err(format!(
                    "waiting for image {name} ({} MiB) to arrive from {}",
                    image.size_bytes.div_ceil(1 << 20),
                    if from.is_empty() {
                        "a holder".to_string()
                    } else {
                        from.join(", ")
                    }
                ));
            }
            disk.image = Some(self.path_of(&image.sha256).display().to_string());
        }
        Ok(resolved)
    }
}

/// Writes one image into the store, hashing on the way.
pub struct ImageWriter {
    file: std::io::BufWriter<std::fs::File>,
    part: PathBuf,
    dir: PathBuf,
    digest: ring::digest::Context,
    written: u64,
    /// The first bytes, to tell the format.
    head: Vec<u8>,
    done: bool,
}

impl std::fmt::Debug for ImageWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageWriter")
            .field("part", &self.part)
            .field("written", &self.written)
            .finish()
    }
}

/// Bytes of the head kept for [`detect_format`].
const HEAD: usize = 512;

impl ImageWriter {
    pub fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.written += data.len() as u64;
        if self.written > MAX_IMAGE_BYTES {
            return Err(StoreError::Refused(format!(
                "the image is larger than the limit of {} GiB",
                MAX_IMAGE_BYTES >> 30
            )));
        }
        if self.head.len() < HEAD {
            let take = (HEAD - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..take]);
        }
        self.digest.update(data);
        self.file.write_all(data)?;
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Checks size, hash (when one is expected) and format, makes the file durable and moves
    /// it into place. On any error the partial file is removed.
    pub fn finish(
        mut self,
        size: u64,
        expected_sha256: Option<&str>,
    ) -> Result<Stored, StoreError> {
        if self.written != size {
            return Err(StoreError::Refused(format!(
                "received {} bytes of an image of {size} bytes; the transfer was cut short, try again",
                self.written
            )));
        }
        let sha256 = hex(self.digest.clone().finish().as_ref());
        if let Some(expected) = expected_sha256 {
            if expected != sha256 {
                return Err(StoreError::Refused(format!(
                    "the copy has sha256 {sha256}, the cluster registered {expected}: discarded"
                )));
            }
        }
        let format = detect_format(&self.head).map_err(StoreError::Refused)?;
        self.file.flush()?;
        self.file.get_ref().sync_all()?;
        let path = self.dir.join(format!("sha256-{sha256}"));
        std::fs::rename(&self.part, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        self.done = true;
        Ok(Stored {
            sha256,
            size_bytes: size,
            format,
        })
    }
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `qcow2` (by its magic) or `raw`. A qcow2 image with a backing file is refused: the backing
/// path would name a file of the node that opens it, not part of the image.
pub fn detect_format(head: &[u8]) -> Result<&'static str, String> {
    if head.len() >= 16 && head[..4] == *b"QFI\xfb" {
        let backing = u64::from_be_bytes(head[8..16].try_into().unwrap_or_default());
        if backing != 0 {
            return Err(
                "the qcow2 image has a backing file; flatten it first (`qemu-img convert -O qcow2 IN OUT`)".into(),
            );
        }
        return Ok("qcow2");
    }
    Ok("raw")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ImageStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(&dir.path().join("images")).expect("open");
        (dir, store)
    }

    #[test]
    fn a_write_lands_under_its_hash_only_when_complete_and_right() {
        let (_dir, store) = store();
        let mut w = store.writer().expect("writer");
        w.write(b"hello ").expect("write");
        w.write(b"world").expect("write");
        let stored = w.finish(11, None).expect("finish");
        // sha256("hello world")
        let sha = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
        assert_eq!(stored.sha256, sha);
        assert_eq!(stored.format, "raw");
        assert!(store.has(sha));
        assert_eq!(
            std::fs::read(store.path_of(sha)).expect("read"),
            b"hello world"
        );

        // Short, or with the wrong hash: nothing stays behind.
        let mut short = store.writer().expect("writer");
        short.write(b"hell").expect("write");
        assert!(short.finish(11, None).is_err());
        let mut wrong = store.writer().expect("writer");
        wrong.write(b"hello world").expect("write");
        let refused = wrong
            .finish(11, Some(&"0".repeat(64)))
            .expect_err("refused");
        assert!(refused.to_string().contains("discarded"), "{refused}");
        let dropped = store.writer().expect("writer");
        drop(dropped);
        let names: Vec<_> = std::fs::read_dir(&store.dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(store.local().expect("local").len(), 1);
    }

    #[test]
    fn formats_and_backing_files() {
        let mut qcow = b"QFI\xfb\0\0\0\x03".to_vec();
        qcow.extend_from_slice(&[0; 8]);
        assert_eq!(detect_format(&qcow), Ok("qcow2"));
        let mut backed = b"QFI\xfb\0\0\0\x03".to_vec();
        backed.extend_from_slice(&0x200u64.to_be_bytes());
        assert!(detect_format(&backed)
            .expect_err("refused")
            .contains("backing file"));
        assert_eq!(detect_format(b"\x7fELF"), Ok("raw"));
    }

    #[test]
    fn resolve_names_the_local_copy_or_what_is_missing() {
        let (_dir, store) = store();
        let mut w = store.writer().expect("writer");
        w.write(b"x").expect("write");
        let stored = w.finish(1, None).expect("finish");
        let mut state = ClusterState::default();
        let image = |sha: &str| Image {
            format: "raw".into(),
            size_bytes: 1,
            sha256: sha.into(),
            imported_at_ms: 0,
            holders: ["n2".to_string()].into(),
        };
        state.images.insert("here".into(), image(&stored.sha256));
        state.images.insert("away".into(), image(&"a".repeat(64)));
        let spec = |image: &str| VmSpec {
            cpus: 1,
            memory_mib: 64,
            disks: vec![paddock_model::vm::Disk {
                size_mib: 0,
                image: Some(image.into()),
            }],
            labels: Default::default(),
            ha: false,
            priority: 0,
            constraints: Default::default(),
            guest: Default::default(),
        };
        let resolved = store.resolve(&state, &spec("here")).expect("here");
        assert_eq!(
            resolved.disks[0].image.as_deref(),
            Some(store.path_of(&stored.sha256).to_str().expect("utf-8"))
        );
        let waiting = store.resolve(&state, &spec("away")).expect_err("refused");
        assert!(waiting.contains("arrive from n2"), "{waiting}");
        assert!(store.resolve(&state, &spec("gone")).is_err());
        // Absolute paths are the operator's files, left as they are.
        let path = store
            .resolve(&state, &spec("/srv/base.qcow2"))
            .expect("path");
        assert_eq!(path.disks[0].image.as_deref(), Some("/srv/base.qcow2"));
    }
}
