//! Frames on a migration connection.
//!
//! ```text
//!   frame = len: u32 LE | crc32(body): u32 LE | body (len bytes, at most MAX_FRAME)
//!   body  = 0x00 postcard(Msg)        every message but page data
//!         | 0x01 chunk                 page data, laid out by hand (the hot path)
//!   chunk = index u32 | mask u64 | flags u8 (compression | postcopy << 4) | raw_len u32
//!           | kinds [u8; n] | crc32 of each page once applied [u32; n] | payload
//!           (n = popcount(mask); the frame checksum covers everything before the payload)
//! ```
//!
//! Every frame is checksummed and every page too: the destination checks each page it applies
//! against the source's crc32 of it — the same hash feeds the memory digest, so the payload is
//! hashed once per side, not twice (a flipped bit is an error, never a wrong page). Lengths are
//! bounded before anything is allocated, and a malformed body is an error: the decoder never
//! panics (fuzzed in the tests below).

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// The largest frame accepted: a chunk of 64 raw pages plus its header fits with room to spare.
pub const MAX_FRAME: usize = 1 << 20;

const TAG_MSG: u8 = 0;
const TAG_CHUNK: u8 = 1;

/// Which connection of a migration this is, said in its [`Hello`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Channel {
    /// Source → destination: phase messages (and pages asked for in post-copy).
    Control,
    /// Destination → source: verdicts, page requests, "resumed".
    Reply,
    /// Source → destination: page data of one stream.
    Data(u16),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol versions the source speaks; the destination picks the highest it shares.
    pub versions: Vec<u32>,
    pub migration: u64,
    pub channel: Channel,
    pub streams: u16,
    pub pages: u64,
    pub page_size: u32,
}

/// The guest's execution state: what moves besides memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestCpu {
    pub counter: u64,
    pub device: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    Hello(Hello),
    HelloAck {
        version: u32,
    },
    /// The destination will not take this connection (no shared version, wrong migration).
    Refused {
        reason: String,
    },
    /// Every page this stream owed for `round` has been sent.
    RoundEnd {
        round: u32,
    },
    /// Pre-copy is over: the guest is paused, every dirty page sent up to `round`.
    Complete {
        round: u32,
        cpu: GuestCpu,
        digest: u64,
    },
    /// Post-copy starts: the guest is paused; `missing` pages follow later (pushed or asked for).
    Postcopy {
        round: u32,
        cpu: GuestCpu,
        missing: Vec<u32>,
    },
    /// The destination holds everything it needs (`ok`) or found a problem (`detail`).
    Verdict {
        ok: bool,
        detail: String,
    },
    /// The ownership switch committed (`true`) or will never happen (`false`).
    Outcome {
        switched: bool,
    },
    /// The destination guest runs.
    Resumed,
    /// Post-copy: the destination guest needs these pages now.
    PageRequest {
        pages: Vec<u32>,
    },
    /// Post-copy: every missing page has been sent.
    PushDone,
    Abort {
        reason: String,
    },
    /// Page data: framed by hand (see the module doc), never through postcard. Last, so that
    /// skipping it leaves the other variants' indices alone.
    #[serde(skip)]
    Chunk(Chunk),
}

/// Up to 64 pages of one chunk of guest memory ([`crate::CHUNK_PAGES`] pages from
/// `index * CHUNK_PAGES`): bit i of `mask` set = page i is in this frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub index: u32,
    pub mask: u64,
    /// Per page in `mask` order: [`crate::pages::Kind`] as u8.
    pub kinds: Vec<u8>,
    /// Per page in `mask` order: crc32 of the page as it must be once applied.
    pub crcs: Vec<u32>,
    /// [`crate::compress::Method`] as u8, applied to the whole payload.
    pub compression: u8,
    /// Sent in post-copy: the destination keeps it only if the page is still missing.
    pub postcopy: bool,
    /// Payload length before compression.
    pub raw_len: u32,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is larger than the {MAX_FRAME}-byte limit (corrupt stream or not a Paddock migration peer)")]
    TooLarge(usize),
    #[error("frame checksum mismatch (data corrupted in transit)")]
    Checksum,
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Writes the chunk header (tag to per-page checksums) of a chunk frame; the payload follows.
#[allow(clippy::too_many_arguments)]
pub fn put_chunk_header(
    out: &mut Vec<u8>,
    index: u32,
    mask: u64,
    compression: u8,
    postcopy: bool,
    raw_len: u32,
    kinds: &[u8],
    crcs: &[u32],
) {
    out.push(TAG_CHUNK);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&mask.to_le_bytes());
    out.push(compression | (u8::from(postcopy) << 4));
    out.extend_from_slice(&raw_len.to_le_bytes());
    out.extend_from_slice(kinds);
    for crc in crcs {
        out.extend_from_slice(&crc.to_le_bytes());
    }
}

/// Fills in the length and checksum of the frame that starts at `start` of `out` (its 8-byte
/// header reserved); `checked` is how many body bytes the checksum covers.
pub fn seal(out: &mut Vec<u8>, start: usize, checked: usize) -> Result<(), WireError> {
    let len = out.len() - start - 8;
    if len > MAX_FRAME {
        out.truncate(start);
        return Err(WireError::TooLarge(len));
    }
    let crc = crc32fast::hash(&out[start + 8..start + 8 + checked.min(len)]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// How many bytes of a frame body its checksum covers, as [`parse`] checks it (all of a
/// message, the header and page tables of a chunk): for senders that build frames by hand,
/// such as the fuzz targets. `None` for a body [`parse`] refuses before checking.
pub fn checked_len(body: &[u8]) -> Option<usize> {
    match *body.first()? {
        TAG_MSG => Some(body.len()),
        TAG_CHUNK => {
            let mask = u64::from_le_bytes(body.get(5..13)?.try_into().ok()?);
            let header = chunk_header_len(mask.count_ones() as usize);
            (body.len() >= header).then_some(header)
        }
        _ => None,
    }
}

/// Bytes of a chunk body before its payload.
fn chunk_header_len(pages: usize) -> usize {
    1 + 17 + pages * 5
}

/// Encodes `msg` as one frame appended to `out`.
pub fn encode(msg: &Msg, out: &mut Vec<u8>) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    let checked = match msg {
        Msg::Chunk(chunk) => {
            put_chunk_header(
                out,
                chunk.index,
                chunk.mask,
                chunk.compression,
                chunk.postcopy,
                chunk.raw_len,
                &chunk.kinds,
                &chunk.crcs,
            );
            let header = out.len() - start - 8;
            out.extend_from_slice(&chunk.payload);
            header
        }
        other => {
            out.push(TAG_MSG);
            let body = postcard::to_stdvec(other)
                .map_err(|e| WireError::Malformed(format!("cannot encode: {e}")))?;
            out.extend_from_slice(&body);
            usize::MAX
        }
    };
    seal(out, start, checked)
}

/// Writes `msg` as one frame (one `write_all`, so frames from one writer never interleave) and
/// flushes it: a message is always meant to go now.
pub fn write(stream: &mut impl Write, msg: &Msg, scratch: &mut Vec<u8>) -> Result<(), WireError> {
    scratch.clear();
    encode(msg, scratch)?;
    stream.write_all(scratch)?;
    stream.flush()?;
    Ok(())
}

/// A chunk as received, borrowing the frame buffer (no copy of the payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef<'a> {
    pub index: u32,
    pub mask: u64,
    pub compression: u8,
    pub postcopy: bool,
    pub raw_len: u32,
    pub kinds: &'a [u8],
    crcs: &'a [u8],
    pub payload: &'a [u8],
}

impl ChunkRef<'_> {
    /// The source's checksum of the `i`-th page of the chunk (as it must be once applied).
    pub fn crc(&self, i: usize) -> u32 {
        self.crcs
            .get(i * 4..i * 4 + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn to_owned(&self) -> Chunk {
        Chunk {
            index: self.index,
            mask: self.mask,
            kinds: self.kinds.to_vec(),
            crcs: (0..self.kinds.len()).map(|i| self.crc(i)).collect(),
            compression: self.compression,
            postcopy: self.postcopy,
            raw_len: self.raw_len,
            payload: self.payload.to_vec(),
        }
    }
}

/// One frame as read: a message, or a chunk borrowing the read buffer.
#[derive(Debug)]
pub enum Frame<'a> {
    Msg(Msg),
    Chunk(ChunkRef<'a>),
}

/// Reads one frame into `buf` (reused between calls) and checks it.
pub fn read_frame<'a>(
    stream: &mut impl Read,
    buf: &'a mut Vec<u8>,
) -> Result<Frame<'a>, WireError> {
    let mut header = [0u8; 8];
    stream.read_exact(&mut header)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    buf.clear();
    buf.resize(len, 0);
    stream.read_exact(buf)?;
    parse(buf, crc)
}

/// Reads one frame as an owned message.
pub fn read(stream: &mut impl Read, buf: &mut Vec<u8>) -> Result<Msg, WireError> {
    Ok(match read_frame(stream, buf)? {
        Frame::Msg(msg) => msg,
        Frame::Chunk(chunk) => Msg::Chunk(chunk.to_owned()),
    })
}

/// Checks and decodes a frame body. A chunk's checksum covers its header and per-page
/// checksums; its pages are checked one by one once applied (see [`crate::memory`]).
pub fn parse(body: &[u8], crc: u32) -> Result<Frame<'_>, WireError> {
    let malformed = |what: &str| WireError::Malformed(what.to_string());
    let (&tag, rest) = body.split_first().ok_or_else(|| malformed("empty frame"))?;
    match tag {
        TAG_MSG => {
            if crc32fast::hash(body) != crc {
                return Err(WireError::Checksum);
            }
            let msg: Msg = postcard::from_bytes(rest)
                .map_err(|e| WireError::Malformed(format!("bad message: {e}")))?;
            Ok(Frame::Msg(msg))
        }
        TAG_CHUNK => {
            if rest.len() < 17 {
                return Err(malformed("chunk header cut short"));
            }
            let mut mask_bytes = [0u8; 8];
            mask_bytes.copy_from_slice(&rest[4..12]);
            let mask = u64::from_le_bytes(mask_bytes);
            let count = mask.count_ones() as usize;
            let header = chunk_header_len(count);
            if body.len() < header {
                return Err(malformed("chunk page kinds or checksums cut short"));
            }
            if crc32fast::hash(&body[..header]) != crc {
                return Err(WireError::Checksum);
            }
            let flags = rest[12];
            if flags & 0xe0 != 0 {
                return Err(malformed("unknown chunk flags"));
            }
            let tables = &rest[17..];
            Ok(Frame::Chunk(ChunkRef {
                index: u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]),
                mask,
                compression: flags & 0x0f,
                postcopy: flags & 0x10 != 0,
                raw_len: u32::from_le_bytes([rest[13], rest[14], rest[15], rest[16]]),
                kinds: &tables[..count],
                crcs: &tables[count..count * 5],
                payload: &body[header..],
            }))
        }
        other => Err(WireError::Malformed(format!("unknown frame tag {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(msg: &Msg) -> Msg {
        let mut bytes = Vec::new();
        encode(msg, &mut bytes).expect("encode");
        read(&mut bytes.as_slice(), &mut Vec::new()).expect("decode")
    }

    #[test]
    fn messages_round_trip() {
        let messages = [
            Msg::Hello(Hello {
                versions: vec![1, 2],
                migration: 7,
                channel: Channel::Data(3),
                streams: 4,
                pages: 262_144,
                page_size: 4096,
            }),
            Msg::HelloAck { version: 1 },
            Msg::Chunk(Chunk {
                index: 9,
                mask: 0b1011,
                kinds: vec![0, 1, 2],
                crcs: vec![1, 2, 3],
                compression: 1,
                postcopy: true,
                raw_len: 5000,
                payload: vec![7; 300],
            }),
            Msg::Complete {
                round: 4,
                cpu: GuestCpu {
                    counter: 99,
                    device: vec![1; 256],
                },
                digest: 0xdead_beef,
            },
            Msg::Postcopy {
                round: 2,
                cpu: GuestCpu {
                    counter: 1,
                    device: vec![],
                },
                missing: vec![1, 5, 9],
            },
            Msg::Verdict {
                ok: false,
                detail: "digest".into(),
            },
            Msg::Outcome { switched: true },
            Msg::PageRequest { pages: vec![3] },
            Msg::Abort {
                reason: "cancelled".into(),
            },
        ];
        for msg in &messages {
            assert_eq!(&round_trip(msg), msg);
        }
    }

    #[test]
    fn checked_len_covers_what_the_checksum_covers() {
        let chunk = Msg::Chunk(Chunk {
            index: 1,
            mask: 0b11,
            kinds: vec![0, 1],
            crcs: vec![5, 6],
            compression: 0,
            postcopy: false,
            raw_len: 4096,
            payload: vec![3; 4096],
        });
        for msg in [chunk, Msg::HelloAck { version: 1 }] {
            let mut bytes = Vec::new();
            encode(&msg, &mut bytes).expect("encode");
            let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
            let body = &bytes[8..];
            let n = checked_len(body).expect("a frame");
            assert_eq!(crc32fast::hash(&body[..n]), crc);
        }
        assert_eq!(checked_len(&[]), None);
        assert_eq!(checked_len(&[9]), None);
    }

    #[test]
    fn a_flipped_bit_is_a_checksum_error() {
        let mut bytes = Vec::new();
        encode(&Msg::RoundEnd { round: 3 }, &mut bytes).expect("encode");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        let err = read(&mut bytes.as_slice(), &mut Vec::new()).expect_err("corrupt");
        assert!(matches!(err, WireError::Checksum), "{err}");
    }

    #[test]
    fn oversized_and_truncated_frames_are_errors() {
        let mut header = Vec::new();
        header.extend_from_slice(&(u32::MAX).to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        let err = read(&mut header.as_slice(), &mut Vec::new()).expect_err("too large");
        assert!(matches!(err, WireError::TooLarge(_)));
        let mut bytes = Vec::new();
        encode(&Msg::Resumed, &mut bytes).expect("encode");
        bytes.pop();
        assert!(read(&mut bytes.as_slice(), &mut Vec::new()).is_err());
    }

    proptest! {
        // Whatever bytes arrive, the decoder answers Ok or Err: it never panics, and never
        // allocates more than MAX_FRAME.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), crc in any::<u32>()) {
            let _ = read(&mut bytes.as_slice(), &mut Vec::new());
            let _ = parse(&bytes, crc);
            let _ = parse(&bytes, crc32fast::hash(&bytes));
        }

        // A valid frame with its body mutated at random: the checksum catches it, and the body
        // decoder (reached when the checksum is recomputed) still does not panic.
        #[test]
        fn mutated_frames_never_panic(at in 0usize..64, flip in 1u8..=255) {
            let mut bytes = Vec::new();
            encode(&Msg::Chunk(Chunk { index: 1, mask: 0xff, kinds: vec![1; 8], crcs: vec![9; 8], compression: 2, postcopy: false, raw_len: 32768, payload: vec![5; 40] }), &mut bytes).expect("encode");
            // Anywhere in the header or the page checksums: the frame checksum catches it.
            let header = 8 + chunk_header_len(8);
            let at = 8 + at % (header - 8);
            bytes[at] ^= flip;
            prop_assert!(read(&mut bytes.as_slice(), &mut Vec::new()).is_err());
            // With the checksum recomputed, the decoder still answers without panicking.
            let crc = crc32fast::hash(&bytes[8..header]);
            bytes[4..8].copy_from_slice(&crc.to_le_bytes());
            let _ = read(&mut bytes.as_slice(), &mut Vec::new());
        }
    }
}
