//! The identity a data directory remembers: which cluster it belongs to and which node it is.
//! Starting a data dir with another name or another cluster's peer list is refused: mixing two
//! clusters' logs would silently corrupt both.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE_NAME: &str = "identity.toml";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub cluster_id: String,
    pub node_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt ({message}); if this data dir is really this node's, restore the file from a backup")]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data dir {dir} belongs to node {stored:?}, not {given:?}; start it with --name {stored} or use another --data-dir")]
    OtherName {
        dir: PathBuf,
        stored: String,
        given: String,
    },
    #[error("data dir {dir} belongs to cluster {stored}, but {source_of_given} describes cluster {given}; start it with its original --peers list, without --peers (a formed node needs none), or use a fresh --data-dir")]
    OtherCluster {
        dir: PathBuf,
        stored: String,
        given: String,
        source_of_given: String,
    },
}

/// The id of the cluster formed from `peers`: the same on every node given the same list, and
/// different for any other list (names and addresses both count).
pub fn cluster_id_for_peers(peers: &BTreeMap<String, String>) -> String {
    let canonical = peers
        .iter()
        .map(|(name, address)| format!("{name}={address}"))
        .collect::<Vec<_>>()
        .join(",");
    format!("{:016x}", paddock_model::node_id_for_name(&canonical))
}

/// Loads the identity stored in `dir`, if any.
pub fn load(dir: &Path) -> Result<Option<Identity>, IdentityError> {
    let path = dir.join(FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text)
            .map(Some)
            .map_err(|e| IdentityError::Corrupt {
                path,
                message: e.message().to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Read { path, source }),
    }
}

/// Stores `identity` in `dir` atomically (temporary file, fsync, rename, fsync of the dir).
pub fn store(dir: &Path, identity: &Identity) -> Result<(), IdentityError> {
    let path = dir.join(FILE_NAME);
    let temp = dir.join(format!("{FILE_NAME}.tmp"));
    let write_err = |source| IdentityError::Write {
        path: path.clone(),
        source,
    };
    let text = format!(
        "# Written by paddockd when this data dir joined its cluster. Do not edit.\ncluster_id = {:?}\nnode_name = {:?}\n",
        identity.cluster_id, identity.node_name
    );
    let mut file = std::fs::File::create(&temp).map_err(write_err)?;
    file.write_all(text.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    std::fs::rename(&temp, &path).map_err(write_err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_err)
}

/// Checks a stored identity against the name this node was started with.
pub fn check_name(dir: &Path, stored: &Identity, given: &str) -> Result<(), IdentityError> {
    if stored.node_name != given {
        return Err(IdentityError::OtherName {
            dir: dir.to_path_buf(),
            stored: stored.node_name.clone(),
            given: given.to_string(),
        });
    }
    Ok(())
}

/// Checks a stored identity against the cluster this node was asked to be part of.
pub fn check_cluster(
    dir: &Path,
    stored: &Identity,
    given: &str,
    source_of_given: &str,
) -> Result<(), IdentityError> {
    if stored.cluster_id != given {
        return Err(IdentityError::OtherCluster {
            dir: dir.to_path_buf(),
            stored: stored.cluster_id.clone(),
            given: given.to_string(),
            source_of_given: source_of_given.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_and_mismatches_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()).expect("load"), None);
        let id = Identity {
            cluster_id: "abc".into(),
            node_name: "n1".into(),
        };
        store(dir.path(), &id).expect("store");
        let loaded = load(dir.path()).expect("load").expect("present");
        assert_eq!(loaded, id);
        assert!(check_name(dir.path(), &loaded, "n1").is_ok());
        assert!(matches!(
            check_name(dir.path(), &loaded, "n2"),
            Err(IdentityError::OtherName { .. })
        ));
        assert!(matches!(
            check_cluster(dir.path(), &loaded, "xyz", "--peers"),
            Err(IdentityError::OtherCluster { .. })
        ));
    }

    #[test]
    fn cluster_ids_depend_on_names_and_addresses() {
        let a: BTreeMap<_, _> = [("n1".to_string(), "h:1".to_string())].into();
        let b: BTreeMap<_, _> = [("n1".to_string(), "h:2".to_string())].into();
        assert_ne!(cluster_id_for_peers(&a), cluster_id_for_peers(&b));
        assert_eq!(cluster_id_for_peers(&a), cluster_id_for_peers(&a.clone()));
    }
}
