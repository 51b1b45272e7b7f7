//! Page encoding: zero pages as a one-byte marker, re-dirtied pages as an XOR delta against the
//! copy sent last (a bounded cache, like QEMU's XBZRLE) when that is smaller, everything else
//! raw; the chunk payload is then compressed by the [`Chooser`]'s pick.
//!
//! XOR delta format: `(zero_run varint, literal_len varint, literal bytes)*` covering at most
//! one page. The destination applies it onto its copy of the page, which is by construction the
//! copy the source sent last.

use std::collections::{HashMap, VecDeque};

use crate::compress::{decompress, Chooser, Method};
use crate::wire::Chunk;
use crate::{CHUNK_PAGES, PAGE};

/// How one page travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Zero = 0,
    Raw = 1,
    Xor = 2,
}

pub static ZERO_PAGE: [u8; PAGE] = [0; PAGE];

pub fn is_zero(page: &[u8]) -> bool {
    page == &ZERO_PAGE[..page.len()]
}

/// Last-sent copies of re-dirtied pages, bounded in bytes, oldest evicted first.
pub struct XorCache {
    capacity_pages: usize,
    pages: HashMap<u32, Box<[u8]>>,
    order: VecDeque<u32>,
}

impl XorCache {
    pub fn new(capacity_bytes: usize) -> XorCache {
        XorCache {
            capacity_pages: capacity_bytes / PAGE,
            pages: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, page: u32) -> Option<&[u8]> {
        self.pages.get(&page).map(|p| &p[..])
    }

    fn put(&mut self, page: u32, data: &[u8]) {
        if self.capacity_pages == 0 {
            return;
        }
        if let Some(slot) = self.pages.get_mut(&page) {
            slot.copy_from_slice(data);
            return;
        }
        while self.pages.len() >= self.capacity_pages {
            match self.order.pop_front() {
                Some(old) => {
                    self.pages.remove(&old);
                }
                None => break,
            }
        }
        self.pages.insert(page, data.into());
        self.order.push_back(page);
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: usize) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn get_varint(input: &[u8], at: &mut usize) -> Option<usize> {
    let mut value = 0usize;
    for shift in (0..21).step_by(7) {
        let byte = *input.get(*at)?;
        *at += 1;
        value |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Appends the XOR delta `old → new` to `out`, unless it would not be smaller than `limit`
/// bytes (then `out` is left as it was and `false` returned).
pub fn xor_delta(old: &[u8], new: &[u8], limit: usize, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let mut at = 0;
    while at < new.len() {
        let zeros = old[at..]
            .iter()
            .zip(&new[at..])
            .take_while(|(a, b)| a == b)
            .count();
        at += zeros;
        if at == new.len() {
            break;
        }
        // A literal runs until 8 equal bytes in a row (shorter gaps cost less inline).
        let mut end = at;
        let mut equal = 0;
        while end < new.len() && equal < 8 {
            equal = if old[end] == new[end] { equal + 1 } else { 0 };
            end += 1;
        }
        let literal_end = end - equal;
        put_varint(out, zeros);
        put_varint(out, literal_end - at);
        out.extend(
            old[at..literal_end]
                .iter()
                .zip(&new[at..literal_end])
                .map(|(a, b)| a ^ b),
        );
        if out.len() - start >= limit {
            out.truncate(start);
            return false;
        }
        at = literal_end;
    }
    true
}

/// Checks that an XOR delta stays within one page, applying nothing.
fn check_delta(input: &[u8]) -> Option<()> {
    let mut at = 0;
    let mut covered = 0usize;
    while at < input.len() {
        let zeros = get_varint(input, &mut at)?;
        let literal = get_varint(input, &mut at)?;
        covered = covered.checked_add(zeros)?.checked_add(literal)?;
        if covered > PAGE || at + literal > input.len() {
            return None;
        }
        at += literal;
    }
    Some(())
}

/// Applies a checked XOR delta onto `page`.
fn apply_delta(input: &[u8], page: &mut [u8]) {
    let mut at = 0;
    let mut pos = 0;
    while at < input.len() {
        let (Some(zeros), Some(literal)) = (get_varint(input, &mut at), get_varint(input, &mut at))
        else {
            return;
        };
        pos += zeros;
        for (dst, x) in page[pos..pos + literal]
            .iter_mut()
            .zip(&input[at..at + literal])
        {
            *dst ^= x;
        }
        pos += literal;
        at += literal;
    }
}

/// What encoding a chunk did, for progress figures.
#[derive(Debug, Default, Clone, Copy)]
pub struct EncodeStats {
    pub pages: u64,
    pub zero: u64,
    pub xor: u64,
    /// Payload before compression.
    pub raw_bytes: u64,
}

/// One stream's encoder: an XOR cache and a compression chooser.
pub struct Encoder {
    pub chooser: Chooser,
    cache: XorCache,
    payload: Vec<u8>,
    packed: Vec<u8>,
}

impl Encoder {
    pub fn new(xor_cache_bytes: usize, link_limit: Option<u64>) -> Encoder {
        Encoder {
            chooser: Chooser::new(link_limit),
            cache: XorCache::new(xor_cache_bytes),
            payload: Vec::with_capacity(CHUNK_PAGES * PAGE),
            packed: Vec::with_capacity(CHUNK_PAGES * PAGE * 2),
        }
    }

    /// Encodes the pages of chunk `index` selected by `mask`, whose contents are in `pages`
    /// (one [`PAGE`] each, in mask order). `reuse` pages go into the XOR cache (pages sent
    /// again after the first pass: the ones likely to change again).
    pub fn encode(
        &mut self,
        index: u32,
        mask: u64,
        pages: &[u8],
        reuse: bool,
        postcopy: bool,
    ) -> (Chunk, EncodeStats) {
        let mut stats = EncodeStats::default();
        let mut kinds = Vec::with_capacity(mask.count_ones() as usize);
        self.payload.clear();
        for (i, data) in pages.chunks_exact(PAGE).enumerate() {
            let bit = nth_set_bit(mask, i);
            let page = index * CHUNK_PAGES as u32 + bit;
            stats.pages += 1;
            if is_zero(data) {
                kinds.push(Kind::Zero as u8);
                stats.zero += 1;
            } else {
                let mark = self.payload.len();
                self.payload.extend_from_slice(&[0, 0]);
                let delta = self
                    .cache
                    .get(page)
                    .is_some_and(|old| xor_delta(old, data, PAGE * 7 / 8, &mut self.payload));
                if delta {
                    let len = (self.payload.len() - mark - 2) as u16;
                    self.payload[mark..mark + 2].copy_from_slice(&len.to_le_bytes());
                    kinds.push(Kind::Xor as u8);
                    stats.xor += 1;
                } else {
                    self.payload.truncate(mark);
                    kinds.push(Kind::Raw as u8);
                    self.payload.extend_from_slice(data);
                }
            }
            if reuse {
                self.cache.put(page, data);
            }
        }
        stats.raw_bytes = self.payload.len() as u64;
        let method = self.chooser.compress(&self.payload, &mut self.packed);
        let payload = match method {
            Method::None => self.payload.clone(),
            _ => self.packed.clone(),
        };
        let chunk = Chunk {
            index,
            mask,
            kinds,
            compression: method as u8,
            postcopy,
            raw_len: self.payload.len() as u32,
            payload,
        };
        (chunk, stats)
    }
}

/// The position of the `n`-th set bit of `mask`.
fn nth_set_bit(mask: u64, n: usize) -> u32 {
    let mut m = mask;
    for _ in 0..n {
        m &= m - 1;
    }
    m.trailing_zeros()
}

/// One page write of a decoded chunk; `data` ranges index the decoder's buffer.
#[derive(Debug, Clone, Copy)]
pub struct PageOp {
    pub page: u32,
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

/// Decompresses and checks `chunk` for a guest of `total_pages`; the ops are then applied
/// with [`apply`]. Every error names what is wrong; nothing is written on error.
pub fn decode(
    chunk: &Chunk,
    total_pages: usize,
    buf: &mut Vec<u8>,
    ops: &mut Vec<PageOp>,
) -> Result<(), String> {
    ops.clear();
    let method = Method::from_u8(chunk.compression)
        .ok_or_else(|| format!("unknown compression {}", chunk.compression))?;
    let raw_len = chunk.raw_len as usize;
    if raw_len > CHUNK_PAGES * PAGE {
        return Err(format!("chunk payload of {raw_len} bytes is too large"));
    }
    decompress(method, &chunk.payload, raw_len, buf)?;
    if chunk.kinds.len() != chunk.mask.count_ones() as usize {
        return Err("page kinds do not match the page mask".into());
    }
    let mut at = 0;
    for (i, kind) in chunk.kinds.iter().enumerate() {
        let page = chunk.index as usize * CHUNK_PAGES + nth_set_bit(chunk.mask, i) as usize;
        if page >= total_pages {
            return Err(format!(
                "page {page} is beyond the guest's {total_pages} pages"
            ));
        }
        let (kind, len) = match kind {
            0 => (Kind::Zero, 0),
            1 => (Kind::Raw, PAGE),
            2 => {
                // A delta is prefixed with its length (u16 LE).
                let prefix = buf.get(at..at + 2).ok_or("XOR delta cut short")?;
                let len = usize::from(u16::from_le_bytes([prefix[0], prefix[1]]));
                at += 2;
                check_delta(buf.get(at..at + len).ok_or("XOR delta cut short")?)
                    .ok_or("malformed XOR delta")?;
                (Kind::Xor, len)
            }
            other => return Err(format!("unknown page kind {other}")),
        };
        if at + len > buf.len() {
            return Err("chunk payload cut short".into());
        }
        ops.push(PageOp {
            page: page as u32,
            kind,
            start: at,
            end: at + len,
        });
        at += len;
    }
    if at != buf.len() {
        return Err("chunk payload has trailing bytes".into());
    }
    Ok(())
}

/// Writes the decoded pages into `memory`; calls `touched(page)` after each.
pub fn apply(ops: &[PageOp], buf: &[u8], memory: &mut [u8], mut touched: impl FnMut(u32, &[u8])) {
    for op in ops {
        let at = op.page as usize * PAGE;
        let Some(page) = memory.get_mut(at..at + PAGE) else {
            continue;
        };
        match op.kind {
            Kind::Zero => {
                if !is_zero(page) {
                    page.fill(0);
                }
            }
            Kind::Raw => page.copy_from_slice(&buf[op.start..op.end]),
            Kind::Xor => apply_delta(&buf[op.start..op.end], page),
        }
        touched(op.page, page);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn xor_deltas_round_trip_and_stay_small_for_small_changes() {
        let old: Vec<u8> = (0..PAGE).map(|i| (i * 7) as u8).collect();
        let mut new = old.clone();
        new[100..108].copy_from_slice(&42u64.to_le_bytes());
        new[4000] ^= 1;
        let mut delta = Vec::new();
        assert!(xor_delta(&old, &new, PAGE, &mut delta));
        assert!(delta.len() < 32, "{} bytes", delta.len());
        check_delta(&delta).expect("valid");
        let mut page = old.clone();
        apply_delta(&delta, &mut page);
        assert_eq!(page, new);
        // A page rewritten with noise is not worth a delta.
        let noise: Vec<u8> = (0..PAGE).map(|_| fastrand::u8(..)).collect();
        let mut out = Vec::new();
        assert!(!xor_delta(&old, &noise, PAGE * 7 / 8, &mut out));
        assert!(out.is_empty());
    }

    fn round_trip(
        pages: &[Vec<u8>],
        mask: u64,
        encoder: &mut Encoder,
        memory: &mut [u8],
    ) -> (Chunk, EncodeStats) {
        let data: Vec<u8> = pages.concat();
        let (chunk, stats) = encoder.encode(1, mask, &data, true, false);
        let (mut buf, mut ops) = (Vec::new(), Vec::new());
        decode(&chunk, 4 * CHUNK_PAGES, &mut buf, &mut ops).expect("decode");
        apply(&ops, &buf, memory, |_, _| {});
        for (i, page) in pages.iter().enumerate() {
            let at = (CHUNK_PAGES + nth_set_bit(mask, i) as usize) * PAGE;
            assert_eq!(&memory[at..at + PAGE], &page[..]);
        }
        (chunk, stats)
    }

    #[test]
    fn chunks_round_trip_through_every_kind() {
        let mut encoder = Encoder::new(1 << 20, None);
        let mut memory = vec![0u8; 4 * CHUNK_PAGES * PAGE];
        let text: Vec<u8> = b"paddock ".iter().cycle().take(PAGE).copied().collect();
        let random: Vec<u8> = (0..PAGE).map(|_| fastrand::u8(..)).collect();
        let zero = vec![0u8; PAGE];
        round_trip(
            &[text.clone(), random.clone(), zero.clone()],
            0b1101,
            &mut encoder,
            &mut memory,
        );
        // Again with small changes: XOR deltas against the cached copies.
        let mut text2 = text.clone();
        text2[10] = b'!';
        let mut random2 = random.clone();
        random2[0..8].copy_from_slice(&7u64.to_le_bytes());
        let (chunk, stats) = round_trip(&[text2, random2, zero], 0b1101, &mut encoder, &mut memory);
        assert_eq!((stats.xor, stats.zero), (2, 1));
        assert!(chunk.payload.len() < 100);
    }

    proptest! {
        // Random chunks with random corruption of the payload or header: decode returns Ok or
        // Err, never panics, and apply never writes outside the guest.
        #[test]
        fn decoding_mutated_chunks_never_panics(seed in any::<u64>(), at in 0usize..4096, flip in 1u8..=255, field in 0u8..4) {
            fastrand::seed(seed);
            let mut encoder = Encoder::new(1 << 20, None);
            let pages: Vec<u8> = (0..3 * PAGE).map(|i| if i % 3 == 0 { fastrand::u8(..) } else { 0 }).collect();
            let (mut chunk, _) = encoder.encode(0, 0b111, &pages, true, false);
            let mut changed = pages.clone();
            changed[5] ^= 0xff;
            let (second, _) = encoder.encode(0, 0b111, &changed, true, false);
            if field == 0 { chunk = second; }
            match field {
                1 => { let n = chunk.payload.len(); if n > 0 { chunk.payload[at % n] ^= flip; } }
                2 => chunk.raw_len ^= u32::from(flip),
                3 => { chunk.mask ^= u64::from(flip); }
                _ => { let n = chunk.payload.len(); if n > 0 { chunk.payload[at % n] ^= flip; } }
            }
            let (mut buf, mut ops) = (Vec::new(), Vec::new());
            if decode(&chunk, CHUNK_PAGES, &mut buf, &mut ops).is_ok() {
                let mut memory = vec![0u8; CHUNK_PAGES * PAGE];
                apply(&ops, &buf, &mut memory, |_, _| {});
            }
        }
    }
}
