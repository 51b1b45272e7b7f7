//! Identities: node ids derived from names, and client request ids.

use serde::{Deserialize, Serialize};

/// Raft node id of the node called `name`.
///
/// Node names are the stable identity operators see; Raft wants a `u64`. Deriving the id from
/// the name (64-bit FNV-1a) lets every node started with the same `--peers` list agree on all
/// ids without talking to each other, and lets a joining node know its own id before it has
/// contacted anyone. The function is part of the on-disk format: never change it.
pub fn node_id_for_name(name: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for byte in name.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    // 0 is kept free so that "no node" can never be confused with a real one.
    hash.max(1)
}

/// Identifies one client write so that a retry (after a timeout or a leader change) is answered
/// from the recorded outcome instead of being applied a second time.
///
/// A client picks a random `client` once and numbers its writes with `seq`, one write in flight
/// at a time, like etcd's and Raft's client sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    pub client: u64,
    pub seq: u64,
}

/// Checks a node name: 1–63 characters of `[a-z0-9-]`, starting with a letter or digit.
/// Names end up in certificate common names, file names and metrics labels.
pub fn validate_node_name(name: &str) -> Result<(), String> {
    let ok_len = !name.is_empty() && name.len() <= 63;
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    let ok_start = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok_len && ok_chars && ok_start {
        Ok(())
    } else {
        Err(format!(
            "invalid node name {name:?}: use 1-63 characters of a-z, 0-9, '-' or '_', starting with a letter or digit"
        ))
    }
}

/// Checks a label used as a scope: key and value of 1–63 printable ASCII characters without
/// spaces, `=` or `,` (they are written `key=value` and listed with commas).
pub fn validate_label(key: &str, value: &str) -> Result<(), String> {
    for (what, text) in [("key", key), ("value", value)] {
        let ok = !text.is_empty()
            && text.len() <= 63
            && text
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'=' && b != b',');
        if !ok {
            return Err(format!(
                "invalid label {what} {text:?}: use 1-63 printable characters without spaces, '=' or ','"
            ));
        }
    }
    Ok(())
}

/// Checks a user name (a certificate's common name): 1–128 printable characters, no control
/// characters.
pub fn validate_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(format!(
            "invalid user name {name:?}: use the certificate's common name, 1-128 printable characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_and_distinct() {
        // Pinned values: the id is stored in every log entry and vote.
        assert_eq!(node_id_for_name("n1"), 0x08b3_7b07_b558_d4c0);
        assert_ne!(node_id_for_name("n1"), node_id_for_name("n2"));
        assert_ne!(node_id_for_name(""), 0);
    }

    #[test]
    fn node_names_are_checked() {
        assert!(validate_node_name("n1").is_ok());
        assert!(validate_node_name("host-12_a").is_ok());
        assert!(validate_node_name("").is_err());
        assert!(validate_node_name("-x").is_err());
        assert!(validate_node_name("N1").is_err());
        assert!(validate_node_name("a/b").is_err());
    }
}
