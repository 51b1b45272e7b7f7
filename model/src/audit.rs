//! The audit log: who did what, from where, with what outcome — every caller's write and
//! every refused request, recorded by apply from the same log entry as the request itself, so
//! no command commits without its record.
//!
//! Records form a hash chain: each record's hash is SHA-256 over the previous hash and the
//! record's fields (postcard, so every replica hashes the same bytes and computes the same
//! head). Retention drops the oldest records past a count or an age and keeps the hash of the
//! last dropped one as the chain's base, so what remains still verifies.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// A SHA-256.
pub type Hash = [u8; 32];

/// One audited request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Cluster-wide number, from 1, never reused.
    pub seq: u64,
    /// The proposal's time (the leader's clock).
    pub at_ms: u64,
    /// Certificate CN or `token:NAME`; `-` when the caller could not be identified.
    pub who: String,
    /// How it proved who it is: `certificate (operator)`, `token ci`, ...
    pub via: String,
    /// The peer address the receiving node saw.
    pub from: String,
    /// The action's name (`vm.migrate`), or what was attempted (`login`).
    pub action: String,
    /// What it was done to (a VM, node, key, token name), or empty.
    pub target: String,
    /// `ok`, or why it was refused.
    pub outcome: String,
    /// The request's id.
    pub request: String,
    /// SHA-256 over the previous record's hash and this record's other fields.
    pub hash: Hash,
}

impl AuditRecord {
    pub fn ok(&self) -> bool {
        self.outcome == "ok"
    }
}

/// The fields that are hashed, in order.
#[derive(Serialize)]
struct Hashed<'a> {
    prev: &'a Hash,
    seq: u64,
    at_ms: u64,
    who: &'a str,
    via: &'a str,
    from: &'a str,
    action: &'a str,
    target: &'a str,
    outcome: &'a str,
    request: &'a str,
}

/// The hash of `record` after `prev`. postcard's encoding of the fields is canonical, so every
/// replica hashes the same bytes.
pub fn chain_hash(prev: &Hash, record: &AuditRecord) -> Hash {
    let fields = Hashed {
        prev,
        seq: record.seq,
        at_ms: record.at_ms,
        who: &record.who,
        via: &record.via,
        from: &record.from,
        action: &record.action,
        target: &record.target,
        outcome: &record.outcome,
        request: &record.request,
    };
    // Encoding plain strings and integers into a Vec cannot fail.
    let bytes = postcard::to_allocvec(&fields).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// What a new record says (apply numbers, times and chains it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    pub who: String,
    pub via: String,
    pub from: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub request: String,
}

/// The retained records and the chain around them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLog {
    pub records: VecDeque<AuditRecord>,
    /// Hash of the record before the first retained one (all zeros at the start).
    pub base: Hash,
    /// Number of the last record dropped by retention (0: none).
    pub pruned_through: u64,
    /// Hash of the newest record (the chain's head), `base` while empty.
    pub head: Hash,
    /// Number of the newest record.
    pub last_seq: u64,
}

/// Where a chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The first record whose hash is not what its fields and predecessor give.
    pub seq: u64,
    pub expected: Hash,
    pub found: Hash,
}

/// A verified stretch of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records checked.
    pub records: u64,
    /// First and last number checked (0, 0 when empty).
    pub first_seq: u64,
    pub last_seq: u64,
    /// The hash at `last_seq` (the base when empty).
    pub head: Hash,
}

impl AuditLog {
    /// Appends a record and applies retention (`keep` records at most, none older than
    /// `max_age_ms` before `at_ms`; 0 turns the age limit off).
    pub fn append(&mut self, at_ms: u64, entry: Entry, keep: usize, max_age_ms: u64) {
        let mut record = AuditRecord {
            seq: self.last_seq + 1,
            at_ms,
            who: entry.who,
            via: entry.via,
            from: entry.from,
            action: entry.action,
            target: entry.target,
            outcome: entry.outcome,
            request: entry.request,
            hash: [0; 32],
        };
        record.hash = chain_hash(&self.head, &record);
        self.head = record.hash;
        self.last_seq = record.seq;
        self.records.push_back(record);
        let too_old =
            |r: &AuditRecord| max_age_ms > 0 && r.at_ms.saturating_add(max_age_ms) < at_ms;
        while self.records.len() > keep.max(1) || self.records.front().is_some_and(too_old) {
            let Some(dropped) = self.records.pop_front() else {
                break;
            };
            self.base = dropped.hash;
            self.pruned_through = dropped.seq;
        }
    }

    /// Recomputes the chain from the base through record `upto` (all when `None`).
    pub fn verify(&self, upto: Option<u64>) -> Result<Verified, Broken> {
        verify_chain(&self.base, self.records.iter(), upto)
    }

    /// The hash at record `seq`, if it is retained (or is the base).
    pub fn hash_at(&self, seq: u64) -> Option<Hash> {
        if seq == self.pruned_through {
            return Some(self.base);
        }
        let first = self.records.front()?.seq;
        let index = seq.checked_sub(first)?;
        self.records.get(index as usize).map(|r| r.hash)
    }
}

/// Recomputes a chain of records that starts after `base`, stopping after `upto`.
pub fn verify_chain<'a>(
    base: &Hash,
    records: impl Iterator<Item = &'a AuditRecord>,
    upto: Option<u64>,
) -> Result<Verified, Broken> {
    let mut prev = *base;
    let mut out = Verified {
        records: 0,
        first_seq: 0,
        last_seq: 0,
        head: *base,
    };
    let mut expected_seq = None;
    for record in records {
        if upto.is_some_and(|u| record.seq > u) {
            break;
        }
        let expected = chain_hash(&prev, record);
        // A gap or reordering shows as a wrong hash too, but say so by number.
        let in_order = expected_seq.is_none_or(|s| s == record.seq);
        if expected != record.hash || !in_order {
            return Err(Broken {
                seq: record.seq,
                expected,
                found: record.hash,
            });
        }
        if out.records == 0 {
            out.first_seq = record.seq;
        }
        out.records += 1;
        out.last_seq = record.seq;
        expected_seq = Some(record.seq + 1);
        prev = record.hash;
    }
    out.head = prev;
    Ok(out)
}

/// Lower-case hex of a hash.
pub fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64) -> Entry {
        Entry {
            who: "alice".into(),
            via: "certificate (operator)".into(),
            from: "127.0.0.1:1000".into(),
            action: "vm.start".into(),
            target: format!("vm-{i}"),
            outcome: "ok".into(),
            request: format!("r{i}"),
        }
    }

    #[test]
    fn the_chain_verifies_and_every_replica_gets_the_same_head() {
        let mut a = AuditLog::default();
        let mut b = AuditLog::default();
        for i in 0..100 {
            a.append(i, entry(i), 1000, 0);
            b.append(i, entry(i), 1000, 0);
        }
        assert_eq!(a.head, b.head);
        let v = a.verify(None).expect("verifies");
        assert_eq!((v.records, v.first_seq, v.last_seq), (100, 1, 100));
        assert_eq!(v.head, a.head);
        let at_50 = a.verify(Some(50)).expect("verifies");
        assert_eq!(Some(at_50.head), a.hash_at(50));
    }

    #[test]
    fn a_changed_record_breaks_the_chain_at_that_record() {
        let mut log = AuditLog::default();
        for i in 0..10 {
            log.append(i, entry(i), 1000, 0);
        }
        log.records[4].outcome = "refused".into();
        let broken = log.verify(None).expect_err("tampered");
        assert_eq!(broken.seq, 5);
        // Re-hashing the tampered record moves the break to the next one.
        let prev = log.records[3].hash;
        log.records[4].hash = chain_hash(&prev, &log.records[4]);
        assert_eq!(log.verify(None).expect_err("tampered").seq, 6);
        // A dropped record breaks it too.
        let mut gap = AuditLog::default();
        for i in 0..10 {
            gap.append(i, entry(i), 1000, 0);
        }
        gap.records.remove(3);
        assert_eq!(gap.verify(None).expect_err("gap").seq, 5);
    }

    #[test]
    fn retention_keeps_the_chain_verifiable() {
        let mut log = AuditLog::default();
        for i in 0..50 {
            log.append(i * 1000, entry(i), 20, 0);
        }
        assert_eq!(log.records.len(), 20);
        assert_eq!(log.pruned_through, 30);
        assert_eq!(log.records[0].seq, 31);
        let v = log.verify(None).expect("verifies after pruning");
        assert_eq!((v.first_seq, v.last_seq), (31, 50));
        assert_eq!(log.hash_at(30), Some(log.base));
        assert_eq!(log.hash_at(29), None);
        // By age: records older than 5 s before the newest go.
        log.append(100_000, entry(99), 20, 5_000);
        assert_eq!(log.records.len(), 1);
        assert!(log.verify(None).is_ok());
    }
}
