//! Per-chunk choice of compression, from measurements rather than assumptions.
//!
//! A chunk costs `raw / speed(m) + raw * ratio(m) / link` to ship with method `m` (one stream
//! compresses, then writes). The [`Chooser`] keeps running estimates of each method's speed and
//! ratio on this guest's memory (probing all of them every [`PROBE_EVERY`] chunks) and of the
//! link rate (the bandwidth limit when one is set, else the measured write rate). On an
//! unthrottled loopback link raw wins; under a bandwidth cap LZ4 or ZSTD do.

use std::time::Instant;

/// Compression of a chunk payload, as sent in [`crate::wire::Chunk::compression`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Method {
    None = 0,
    Lz4 = 1,
    Zstd = 2,
}

impl Method {
    pub fn from_u8(value: u8) -> Option<Method> {
        match value {
            0 => Some(Method::None),
            1 => Some(Method::Lz4),
            2 => Some(Method::Zstd),
            _ => None,
        }
    }
}

/// Chunks between two probes of every method.
pub const PROBE_EVERY: u64 = 64;
const ZSTD_LEVEL: i32 = 1;

#[derive(Debug, Clone, Copy)]
struct Estimate {
    /// Compressed / raw size.
    ratio: f64,
    /// Raw bytes compressed per second.
    speed: f64,
}

impl Estimate {
    fn update(&mut self, ratio: f64, speed: f64) {
        const W: f64 = 0.3;
        self.ratio = self.ratio * (1.0 - W) + ratio * W;
        self.speed = self.speed * (1.0 - W) + speed * W;
    }
}

pub struct Chooser {
    /// Bytes per second this stream may put on the wire (its share of a bandwidth limit).
    limit: Option<f64>,
    /// Measured write rate (bytes/s), when unlimited.
    link: f64,
    lz4: Estimate,
    zstd: Estimate,
    chunks: u64,
    zstd_ctx: zstd::bulk::Compressor<'static>,
}

impl std::fmt::Debug for Chooser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chooser")
            .field("limit", &self.limit)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl Chooser {
    pub fn new(limit_bytes_per_sec: Option<u64>) -> Chooser {
        Chooser {
            limit: limit_bytes_per_sec.map(|l| l as f64),
            link: 1e9,
            // Pessimistic starting points; the first probes replace them.
            lz4: Estimate {
                ratio: 0.6,
                speed: 4e8,
            },
            zstd: Estimate {
                ratio: 0.5,
                speed: 2e8,
            },
            chunks: 0,
            zstd_ctx: zstd::bulk::Compressor::new(ZSTD_LEVEL)
                .unwrap_or_else(|_| zstd::bulk::Compressor::default()),
        }
    }

    /// Records that `bytes` took `secs` to write (the measured link rate).
    pub fn wrote(&mut self, bytes: usize, secs: f64) {
        if bytes >= 4096 && secs > 0.0 {
            self.link = self.link * 0.8 + (bytes as f64 / secs) * 0.2;
        }
    }

    fn link_rate(&self) -> f64 {
        self.limit.unwrap_or(self.link).max(1.0)
    }

    fn cost(&self, method: Method) -> f64 {
        let link = self.link_rate();
        match method {
            Method::None => 1.0 / link,
            Method::Lz4 => 1.0 / self.lz4.speed + self.lz4.ratio / link,
            Method::Zstd => 1.0 / self.zstd.speed + self.zstd.ratio / link,
        }
    }

    /// The method expected to ship a byte soonest.
    pub fn best(&self) -> Method {
        [Method::None, Method::Lz4, Method::Zstd]
            .into_iter()
            .min_by(|a, b| self.cost(*a).total_cmp(&self.cost(*b)))
            .unwrap_or(Method::None)
    }

    /// Compresses `payload` into `out` with the method of choice (probing every method now and
    /// then); returns the method used. When compressing does not shrink it, `None` is used.
    pub fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Method {
        self.chunks += 1;
        if payload.len() < 512 {
            return Method::None;
        }
        let probe = self.chunks <= 3 || self.chunks.is_multiple_of(PROBE_EVERY);
        if probe {
            self.measure(Method::Zstd, payload, out);
            self.measure(Method::Lz4, payload, out);
        }
        let method = self.best();
        let compressed = match method {
            Method::None => return Method::None,
            // The probe above left the LZ4 result in `out`.
            Method::Lz4 if probe => out.len(),
            _ => self.measure(method, payload, out),
        };
        if compressed >= payload.len() {
            Method::None
        } else {
            method
        }
    }

    fn measure(&mut self, method: Method, payload: &[u8], out: &mut Vec<u8>) -> usize {
        let started = Instant::now();
        let len = compress_with(method, payload, out, &mut self.zstd_ctx);
        let secs = started.elapsed().as_secs_f64().max(1e-7);
        let ratio = len as f64 / payload.len() as f64;
        let speed = payload.len() as f64 / secs;
        match method {
            Method::Lz4 => self.lz4.update(ratio, speed),
            Method::Zstd => self.zstd.update(ratio, speed),
            Method::None => {}
        }
        len
    }
}

/// Compresses `payload` into `out` (cleared first); returns the compressed length, or
/// `usize::MAX` when the codec failed (the caller then sends raw).
fn compress_with(
    method: Method,
    payload: &[u8],
    out: &mut Vec<u8>,
    zstd_ctx: &mut zstd::bulk::Compressor<'static>,
) -> usize {
    out.clear();
    match method {
        Method::None => {
            out.extend_from_slice(payload);
            out.len()
        }
        Method::Lz4 => {
            out.resize(lz4_flex::block::get_maximum_output_size(payload.len()), 0);
            match lz4_flex::block::compress_into(payload, out) {
                Ok(n) => {
                    out.truncate(n);
                    n
                }
                Err(_) => usize::MAX,
            }
        }
        Method::Zstd => {
            out.reserve(zstd::zstd_safe::compress_bound(payload.len()));
            match zstd_ctx.compress_to_buffer(payload, out) {
                Ok(n) => n,
                Err(_) => usize::MAX,
            }
        }
    }
}

/// Decompresses a payload of `raw_len` bytes into `out`.
pub fn decompress(
    method: Method,
    payload: &[u8],
    raw_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    out.clear();
    match method {
        Method::None => {
            if payload.len() != raw_len {
                return Err("uncompressed payload length mismatch".into());
            }
            out.extend_from_slice(payload);
        }
        Method::Lz4 => {
            out.resize(raw_len, 0);
            let n =
                lz4_flex::block::decompress_into(payload, out).map_err(|e| format!("lz4: {e}"))?;
            if n != raw_len {
                return Err("lz4 payload length mismatch".into());
            }
        }
        Method::Zstd => {
            out.reserve(raw_len);
            let n = zstd::bulk::Decompressor::new()
                .and_then(|mut d| d.decompress_to_buffer(payload, out))
                .map_err(|e| format!("zstd: {e}"))?;
            if n != raw_len {
                return Err("zstd payload length mismatch".into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(len: usize) -> Vec<u8> {
        b"the quick brown fox jumps over the lazy dog; "
            .iter()
            .cycle()
            .take(len)
            .copied()
            .collect()
    }

    #[test]
    fn every_method_round_trips() {
        let payload = text(64 * 1024);
        let mut ctx = zstd::bulk::Compressor::new(1).expect("zstd");
        for method in [Method::None, Method::Lz4, Method::Zstd] {
            let mut packed = Vec::new();
            let n = compress_with(method, &payload, &mut packed, &mut ctx);
            assert_eq!(n, packed.len());
            let mut out = Vec::new();
            decompress(method, &packed, payload.len(), &mut out).expect("decompress");
            assert_eq!(out, payload, "{method:?}");
        }
    }

    #[test]
    fn garbage_payloads_are_errors_not_panics() {
        let mut out = Vec::new();
        for method in [Method::None, Method::Lz4, Method::Zstd] {
            assert!(decompress(method, &[0xff; 40], 4096, &mut out).is_err());
        }
    }

    #[test]
    fn a_slow_link_picks_compression_and_a_fast_one_raw() {
        let payload = text(256 * 1024);
        let mut out = Vec::new();
        let mut capped = Chooser::new(Some(10 << 20));
        let used: Vec<_> = (0..10)
            .map(|_| capped.compress(&payload, &mut out))
            .collect();
        assert!(used.iter().skip(3).all(|m| *m != Method::None), "{used:?}");
        // A link far faster than any codec: raw.
        let mut fast = Chooser::new(None);
        for _ in 0..20 {
            fast.wrote(1 << 20, 1e-5);
        }
        for _ in 0..4 {
            fast.compress(&payload, &mut out);
        }
        assert_eq!(fast.best(), Method::None);
    }
}
