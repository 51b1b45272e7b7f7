//! The memory digest checked before the switch: a sum over pages of a mixed `(page, crc32)`,
//! so both sides maintain it page by page as pages are sent and applied — no pass over the
//! whole memory inside the downtime window. [`full`] recomputes it from a memory image (the
//! source checks its frozen memory against what it sent after the switch; tests use it too).

use crate::pages::ZERO_PAGE;
use crate::PAGE;

fn mix(page: u32, hash: u32) -> u64 {
    // splitmix64 of (page, hash): a well-spread term per page.
    let mut z = (u64::from(page) << 32 | u64::from(hash)).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn page_hash(page: &[u8]) -> u32 {
    crc32fast::hash(page)
}

fn zero_hash() -> u32 {
    static ZERO: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *ZERO.get_or_init(|| page_hash(&ZERO_PAGE))
}

/// Per-page hashes and their running sum.
#[derive(Debug, Clone)]
pub struct PageDigest {
    hashes: Vec<u32>,
    sum: u64,
}

impl PageDigest {
    /// The digest of `pages` zero pages.
    pub fn zeroed(pages: usize) -> PageDigest {
        let zero = zero_hash();
        let sum = (0..pages as u32).fold(0u64, |acc, p| acc.wrapping_add(mix(p, zero)));
        PageDigest {
            hashes: vec![zero; pages],
            sum,
        }
    }

    /// Records `page`'s new contents.
    pub fn set(&mut self, page: u32, data: &[u8]) {
        self.set_hash(page, page_hash(data));
    }

    /// Records `page`'s hash, computed by the caller.
    pub fn set_hash(&mut self, page: u32, hash: u32) {
        if let Some(old) = self.hashes.get_mut(page as usize) {
            if *old != hash {
                self.sum = self
                    .sum
                    .wrapping_sub(mix(page, *old))
                    .wrapping_add(mix(page, hash));
                *old = hash;
            }
        }
    }

    /// Records that `page` is all zero (without hashing it again).
    pub fn set_zero(&mut self, page: u32) {
        self.set_hash(page, zero_hash());
    }

    pub fn value(&self) -> u64 {
        self.sum
    }
}

/// The digest of a whole memory image.
pub fn full(memory: &[u8]) -> u64 {
    memory
        .chunks(PAGE)
        .enumerate()
        .fold(0u64, |acc, (p, page)| {
            acc.wrapping_add(mix(p as u32, page_hash(page)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_equals_full_and_notices_any_change() {
        let mut memory = vec![0u8; 16 * PAGE];
        let mut digest = PageDigest::zeroed(16);
        assert_eq!(digest.value(), full(&memory));
        memory[3 * PAGE + 7] = 9;
        digest.set(3, &memory[3 * PAGE..4 * PAGE]);
        assert_eq!(digest.value(), full(&memory));
        // Same bytes on another page: a different digest.
        let mut other = vec![0u8; 16 * PAGE];
        other[4 * PAGE + 7] = 9;
        assert_ne!(full(&other), full(&memory));
    }
}
