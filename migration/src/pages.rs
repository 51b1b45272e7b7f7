//! Page encoding: zero pages as a one-byte marker, re-dirtied pages as an XOR delta against the
//! copy sent last (a bounded cache, like QEMU's XBZRLE) when that is smaller, everything else
//! raw; the chunk payload is then compressed by the [`Chooser`]'s pick.
//!
//! XOR delta format: `(zero_run varint, literal_len varint, literal bytes)*` covering at most
//! one page. The destination applies it onto its copy of the page, which is by construction the
//! copy the source sent last.

use std::collections::{HashMap, VecDeque};

use crate::compress::{decompress, Chooser, Method};
#[cfg(test)]
use crate::wire::Chunk;
use crate::wire::ChunkRef;
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

    /// Encodes chunk `index` straight into a complete frame in `frame` (cleared first): the
    /// pages of `taken.mask`, of which `taken.zero` are all zero and the others' contents are
    /// in `pages` (one [`PAGE`] each, in mask order). `reuse` pages go into the XOR cache
    /// (pages sent again after the first pass: the ones likely to change again). `crcs` gets
    /// (page, crc32) of every non-zero page, for the sender's digest.
    #[allow(clippy::too_many_arguments)]
    pub fn encode_frame(
        &mut self,
        index: u32,
        taken: Taken,
        pages: &[u8],
        reuse: bool,
        postcopy: bool,
        frame: &mut Vec<u8>,
        crcs: &mut Vec<(u32, u32)>,
    ) -> Result<EncodeStats, crate::wire::WireError> {
        let mut stats = EncodeStats::default();
        let count = taken.mask.count_ones() as usize;
        let mut kinds = Vec::with_capacity(count);
        let mut page_crcs = Vec::with_capacity(count);
        crcs.clear();
        self.payload.clear();
        let mut data_pages = pages.chunks_exact(PAGE);
        let mut bits = taken.mask;
        while bits != 0 {
            let bit = bits.trailing_zeros();
            bits &= bits - 1;
            let page = index * CHUNK_PAGES as u32 + bit;
            stats.pages += 1;
            if taken.zero & (1 << bit) != 0 {
                kinds.push(Kind::Zero as u8);
                page_crcs.push(zero_crc());
                stats.zero += 1;
                continue;
            }
            let Some(data) = data_pages.next() else {
                break;
            };
            let crc = crate::digest::page_hash(data);
            crcs.push((page, crc));
            page_crcs.push(crc);
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
            if reuse {
                self.cache.put(page, data);
            }
        }
        stats.raw_bytes = self.payload.len() as u64;
        let method = self.chooser.compress(&self.payload, &mut self.packed);
        frame.clear();
        frame.extend_from_slice(&[0; 8]);
        crate::wire::put_chunk_header(
            frame,
            index,
            taken.mask,
            method as u8,
            postcopy,
            self.payload.len() as u32,
            &kinds,
            &page_crcs,
        );
        let header = frame.len() - 8;
        frame.extend_from_slice(match method {
            Method::None => &self.payload,
            _ => &self.packed,
        });
        crate::wire::seal(frame, 0, header)?;
        Ok(stats)
    }

    /// [`Encoder::encode_frame`] for pages given in full (zero ones included), as an owned
    /// chunk (tests).
    #[cfg(test)]
    pub fn encode(
        &mut self,
        index: u32,
        mask: u64,
        pages: &[u8],
        reuse: bool,
        postcopy: bool,
    ) -> (Chunk, EncodeStats) {
        let mut taken = Taken { mask, zero: 0 };
        let mut data = Vec::with_capacity(pages.len());
        let mut bits = mask;
        for page in pages.chunks_exact(PAGE) {
            let bit = bits.trailing_zeros();
            bits &= bits.wrapping_sub(1);
            if is_zero(page) {
                taken.zero |= 1 << bit;
            } else {
                data.extend_from_slice(page);
            }
        }
        let (mut frame, mut crcs) = (Vec::new(), Vec::new());
        let stats = self
            .encode_frame(index, taken, &data, reuse, postcopy, &mut frame, &mut crcs)
            .unwrap_or_default();
        let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let chunk = match crate::wire::parse(&frame[8..], crc) {
            Ok(crate::wire::Frame::Chunk(chunk)) => chunk.to_owned(),
            _ => Chunk {
                index,
                mask: 0,
                kinds: vec![],
                crcs: vec![],
                compression: 0,
                postcopy,
                raw_len: 0,
                payload: vec![],
            },
        };
        (chunk, stats)
    }
}

/// Pages taken from one chunk of guest memory: which (`mask`), and which of those are all zero
/// (`zero`: sent as markers, never copied).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Taken {
    pub mask: u64,
    pub zero: u64,
}

fn zero_crc() -> u32 {
    static ZERO: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *ZERO.get_or_init(|| crate::digest::page_hash(&ZERO_PAGE))
}

/// The position of the `n`-th set bit of `mask`.
fn nth_set_bit(mask: u64, n: usize) -> u32 {
    let mut m = mask;
    for _ in 0..n {
        m &= m - 1;
    }
    m.trailing_zeros()
}

/// One page write of a decoded chunk; `start..end` index the decoded payload.
#[derive(Debug, Clone, Copy)]
pub struct PageOp {
    pub page: u32,
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
    /// crc32 of the page as it must be once applied.
    pub crc: u32,
}

/// Decompresses (into `buf`, unless it was sent raw) and checks `chunk` for a guest of
/// `total_pages`; returns the payload the ops index, to [`apply`]. Every error names what is
/// wrong; nothing is written on error.
pub fn decode<'a>(
    chunk: &ChunkRef<'a>,
    total_pages: usize,
    buf: &'a mut Vec<u8>,
    ops: &mut Vec<PageOp>,
) -> Result<&'a [u8], String> {
    ops.clear();
    let method = Method::from_u8(chunk.compression)
        .ok_or_else(|| format!("unknown compression {}", chunk.compression))?;
    let raw_len = chunk.raw_len as usize;
    if raw_len > CHUNK_PAGES * PAGE * 2 {
        return Err(format!("chunk payload of {raw_len} bytes is too large"));
    }
    let data: &'a [u8] = match method {
        Method::None if chunk.payload.len() == raw_len => chunk.payload,
        Method::None => return Err("uncompressed payload length mismatch".into()),
        _ => {
            decompress(method, chunk.payload, raw_len, buf)?;
            buf
        }
    };
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
                let prefix = data.get(at..at + 2).ok_or("XOR delta cut short")?;
                let len = usize::from(u16::from_le_bytes([prefix[0], prefix[1]]));
                at += 2;
                check_delta(data.get(at..at + len).ok_or("XOR delta cut short")?)
                    .ok_or("malformed XOR delta")?;
                (Kind::Xor, len)
            }
            other => return Err(format!("unknown page kind {other}")),
        };
        if at + len > data.len() {
            return Err("chunk payload cut short".into());
        }
        ops.push(PageOp {
            page: page as u32,
            kind,
            start: at,
            end: at + len,
            crc: chunk.crc(i),
        });
        at += len;
    }
    if at != data.len() {
        return Err("chunk payload has trailing bytes".into());
    }
    Ok(data)
}

/// Writes one decoded page into `memory` (the whole guest memory); `known_zero`: the page is
/// known to be zero already (no need to look). Returns the page's crc32 after the write.
pub fn apply_one(op: &PageOp, data: &[u8], memory: &mut [u8], known_zero: bool) -> Option<u32> {
    let at = op.page as usize * PAGE;
    let page = memory.get_mut(at..at + PAGE)?;
    Some(match op.kind {
        Kind::Zero => {
            if !known_zero && !is_zero(page) {
                page.fill(0);
            }
            zero_crc()
        }
        Kind::Raw => {
            page.copy_from_slice(&data[op.start..op.end]);
            crate::digest::page_hash(page)
        }
        Kind::Xor => {
            apply_delta(&data[op.start..op.end], page);
            crate::digest::page_hash(page)
        }
    })
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

    /// Frames `chunk`, parses it back and applies it, checking every page's crc32.
    fn decode_and_apply(chunk: &Chunk, total: usize, memory: &mut [u8]) -> Result<(), String> {
        let mut frame = Vec::new();
        crate::wire::encode(&crate::wire::Msg::Chunk(chunk.clone()), &mut frame)
            .map_err(|e| e.to_string())?;
        let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let Ok(crate::wire::Frame::Chunk(parsed)) = crate::wire::parse(&frame[8..], crc) else {
            return Err("not a chunk".into());
        };
        let (mut buf, mut ops) = (Vec::new(), Vec::new());
        let data = decode(&parsed, total, &mut buf, &mut ops)?;
        for op in &ops {
            let crc = apply_one(op, data, memory, false).ok_or("outside the guest")?;
            if crc != op.crc {
                return Err(format!("page {} checksum mismatch", op.page));
            }
        }
        Ok(())
    }

    fn round_trip(
        pages: &[Vec<u8>],
        mask: u64,
        encoder: &mut Encoder,
        memory: &mut [u8],
    ) -> (Chunk, EncodeStats) {
        let data: Vec<u8> = pages.concat();
        let (chunk, stats) = encoder.encode(1, mask, &data, true, false);
        decode_and_apply(&chunk, 4 * CHUNK_PAGES, memory).expect("decode");
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
            let mut memory = vec![0u8; CHUNK_PAGES * PAGE];
            let _ = decode_and_apply(&chunk, CHUNK_PAGES, &mut memory);
        }
    }
}
