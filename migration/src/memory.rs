//! Guest memory as the engine sees it: bytes, a dirty log (one bit per page, one word per
//! chunk of [`CHUNK_PAGES`] pages, like KVM's dirty bitmap), the post-copy "missing" set and,
//! on a destination, the running [`PageDigest`] of what has arrived.

use crate::digest::PageDigest;
pub use crate::pages::Taken;
use crate::pages::{self, PageOp};
use crate::{CHUNK_PAGES, PAGE};

pub struct Memory {
    bytes: Vec<u8>,
    dirty: Vec<u64>,
    logging: bool,
    missing: Vec<u64>,
    missing_count: usize,
    /// Kept while receiving a migration.
    digest: Option<PageDigest>,
    /// Receiving: pages written since (the others are still the zeros they started as).
    written: Vec<u64>,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("pages", &self.pages())
            .field("logging", &self.logging)
            .field("missing", &self.missing_count)
            .finish_non_exhaustive()
    }
}

impl Memory {
    /// `mib` MiB of zeroed memory. The OS maps pages on first write, so this costs nothing
    /// until touched (see [`Memory::populate`]).
    pub fn new(mib: u64) -> Memory {
        let bytes = ((mib as usize) << 20).max(PAGE);
        let pages = bytes / PAGE;
        let chunks = pages.div_ceil(CHUNK_PAGES);
        Memory {
            bytes: vec![0; bytes],
            dirty: vec![0; chunks],
            logging: false,
            missing: vec![0; chunks],
            missing_count: 0,
            digest: None,
            written: Vec::new(),
        }
    }

    pub fn pages(&self) -> usize {
        self.bytes.len() / PAGE
    }

    pub fn chunks(&self) -> usize {
        self.dirty.len()
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Faults every page in (what QEMU's `-mem-prealloc` does): a destination does this before
    /// the transfer, because first writes to fresh memory are several times slower than the
    /// network.
    pub fn populate(&mut self) {
        for page in self.bytes.chunks_mut(PAGE) {
            // black_box: the compiler knows the memory is zero and would drop a plain write.
            page[0] = std::hint::black_box(0);
        }
    }

    /// Fills the first `mib` MiB with mixed content, the mix of a real guest's memory: about
    /// 35 % zero, 25 % text-like, 25 % structured and 15 % random pages (memvm's `--memvm-fill`
    /// and the codec benchmark).
    pub fn fill_mixed(&mut self, mib: u64, seed: u64) {
        const WORDS: &[&[u8]] = &[
            b"the ",
            b"kernel ",
            b"page ",
            b"cache ",
            b"{\"id\": ",
            b"value",
            b"\n",
            b"ERROR ",
            b"INFO  ",
            b"request ",
            b"GET /api/v1/",
            b"200 OK ",
            b"user=",
            b"0x7ffd",
        ];
        let pages = ((mib as usize) << 20) / PAGE;
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut page = vec![0u8; PAGE];
        for p in 0..pages.min(self.pages()) {
            match p % 20 {
                0..=6 => continue,
                7..=11 => {
                    let mut at = 0;
                    while at < PAGE {
                        let word = WORDS[rng.usize(..WORDS.len())];
                        let n = word.len().min(PAGE - at);
                        page[at..at + n].copy_from_slice(&word[..n]);
                        at += n;
                    }
                }
                12..=16 => {
                    for (i, w) in page.chunks_exact_mut(16).enumerate() {
                        w[..8].copy_from_slice(&((p * 256 + i) as u64).to_le_bytes());
                        w[8..12].copy_from_slice(&(rng.u32(..1000)).to_le_bytes());
                        w[12..].fill(0);
                    }
                }
                _ => rng.fill(&mut page),
            }
            self.write(p, 0, &page);
        }
    }

    /// The guest writes `data` at `offset` of `page` (marked dirty while logging).
    pub fn write(&mut self, page: usize, offset: usize, data: &[u8]) {
        let at = page * PAGE + offset;
        if let Some(dst) = self.bytes.get_mut(at..at + data.len()) {
            dst.copy_from_slice(data);
            if self.logging {
                self.dirty[page / CHUNK_PAGES] |= 1 << (page % CHUNK_PAGES);
            }
        }
    }

    /// Starts dirty logging with every page dirty (the first pass sends everything).
    pub fn start_dirty_log(&mut self) {
        self.logging = true;
        let pages = self.pages();
        for (i, word) in self.dirty.iter_mut().enumerate() {
            let in_chunk = (pages - i * CHUNK_PAGES).min(CHUNK_PAGES);
            *word = if in_chunk == 64 {
                u64::MAX
            } else {
                (1u64 << in_chunk) - 1
            };
        }
    }

    pub fn stop_dirty_log(&mut self) {
        self.logging = false;
        self.dirty.fill(0);
    }

    pub fn dirty_pages(&self) -> u64 {
        self.dirty.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Takes the dirty pages of chunk `index`, clearing their dirty bits: the non-zero ones
    /// are copied into `out` (in page order), the zero ones only flagged.
    pub fn take_chunk(&mut self, index: usize, out: &mut Vec<u8>) -> Taken {
        let mask = self.dirty.get_mut(index).map(std::mem::take).unwrap_or(0);
        self.copy_chunk(index, mask, out)
    }

    /// Copies the non-zero pages of chunk `index` selected by `mask` into `out` (no dirty
    /// bookkeeping); zero pages are only flagged.
    pub fn copy_chunk(&self, index: usize, mask: u64, out: &mut Vec<u8>) -> Taken {
        out.clear();
        let mut taken = Taken { mask: 0, zero: 0 };
        let mut bits = mask;
        while bits != 0 {
            let bit = bits.trailing_zeros();
            bits &= bits - 1;
            let page = index * CHUNK_PAGES + bit as usize;
            let Some(data) = self.bytes.get(page * PAGE..(page + 1) * PAGE) else {
                continue;
            };
            taken.mask |= 1 << bit;
            if pages::is_zero(data) {
                taken.zero |= 1 << bit;
            } else {
                out.extend_from_slice(data);
            }
        }
        taken
    }

    /// Takes the whole dirty log (one mask per chunk), clearing it.
    pub fn take_dirty_log(&mut self) -> Vec<u64> {
        let chunks = self.chunks();
        std::mem::replace(&mut self.dirty, vec![0; chunks])
    }

    /// A destination starts tracking the digest of what it receives.
    pub fn start_receiving(&mut self) {
        self.digest = Some(PageDigest::zeroed(self.pages()));
        self.written = vec![0; self.chunks()];
    }

    pub fn received_digest(&self) -> Option<u64> {
        self.digest.as_ref().map(PageDigest::value)
    }

    /// Post-copy: these pages have not arrived yet.
    pub fn set_missing(&mut self, pages: &[u32]) {
        for &page in pages {
            let (word, bit) = (page as usize / CHUNK_PAGES, page as usize % CHUNK_PAGES);
            if let Some(w) = self.missing.get_mut(word) {
                if *w & (1 << bit) == 0 {
                    *w |= 1 << bit;
                    self.missing_count += 1;
                }
            }
        }
    }

    pub fn is_missing(&self, page: usize) -> bool {
        self.missing_count > 0
            && self
                .missing
                .get(page / CHUNK_PAGES)
                .is_some_and(|w| w & (1 << (page % CHUNK_PAGES)) != 0)
    }

    pub fn missing_count(&self) -> usize {
        self.missing_count
    }

    /// Writes decoded pages, checking each against the source's crc32 of it (the same hash
    /// feeds the received digest). A post-copy page lands only if still missing (the guest
    /// may have written the page since it was fetched). Returns how many pages were written,
    /// or which page arrived corrupted.
    pub fn apply(&mut self, ops: &[PageOp], data: &[u8], postcopy: bool) -> Result<usize, String> {
        let mut written = 0;
        for op in ops {
            let page = op.page as usize;
            if postcopy {
                if !self.is_missing(page) {
                    continue;
                }
                self.missing[page / CHUNK_PAGES] &= !(1 << (page % CHUNK_PAGES));
                self.missing_count -= 1;
            }
            let (word, bit) = (page / CHUNK_PAGES, 1u64 << (page % CHUNK_PAGES));
            let known_zero = self.written.get(word).is_some_and(|w| w & bit == 0);
            if let Some(w) = self.written.get_mut(word) {
                *w |= bit;
            }
            let crc = pages::apply_one(op, data, &mut self.bytes, known_zero)
                .ok_or_else(|| format!("page {page} is outside the guest"))?;
            if crc != op.crc {
                return Err(format!(
                    "page {page} does not match the source's checksum after applying it ({crc:08x} ≠ {:08x}): data corrupted",
                    op.crc
                ));
            }
            if let Some(d) = self.digest.as_mut() {
                d.set_hash(op.page, crc);
            }
            written += 1;
        }
        Ok(written)
    }

    /// FNV-1a over the whole memory: the checksum a stopped guest reports.
    pub fn checksum(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for chunk in self.bytes.chunks_exact(8) {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            hash ^= word;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dirty_log_sees_every_write_once() {
        let mut memory = Memory::new(1);
        memory.write(3, 0, b"x");
        assert_eq!(memory.dirty_pages(), 0, "not logging yet");
        memory.start_dirty_log();
        assert_eq!(memory.dirty_pages(), 256);
        let mut out = Vec::new();
        let taken = memory.take_chunk(0, &mut out);
        assert_eq!(taken.mask, u64::MAX);
        assert_eq!(taken.zero, !(1 << 3), "only page 3 is not zero");
        assert_eq!(out.len(), PAGE);
        assert_eq!(out[0], b'x');
        for chunk in 1..memory.chunks() {
            memory.take_chunk(chunk, &mut out);
        }
        assert_eq!(memory.dirty_pages(), 0);
        memory.write(70, 5, b"yz");
        assert_eq!(memory.take_chunk(1, &mut out).mask, 1 << 6);
        assert_eq!(&out[5..7], b"yz");
        assert_eq!(memory.take_chunk(1, &mut out).mask, 0, "taken");
    }
}
