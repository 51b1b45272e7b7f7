//! Page codec throughput on mixed guest memory (35 % zero, 25 % text-like, 25 % structured,
//! 15 % random pages): what each compression method costs and saves per chunk, and what the
//! chooser picks at a few link rates. `cargo bench -p paddock-migration --bench codec`.

use std::time::Instant;

use paddock_migration::compress::Method;
use paddock_migration::pages::Encoder;
use paddock_migration::{Memory, PAGE};

fn mixed(mib: u64) -> Memory {
    let mut memory = Memory::new(mib);
    memory.fill_mixed(mib, 7);
    memory
}

fn main() {
    let mib = 256;
    let mut memory = mixed(mib);
    println!("codec on {mib} MiB of mixed guest memory, one core:");
    for (name, limit) in [
        ("unlimited link (1.5 GB/s)", None),
        ("2 GB/s link", Some(2_000_000_000u64)),
        ("500 MB/s link", Some(500_000_000)),
        ("100 MiB/s link", Some(100 << 20)),
    ] {
        memory.start_dirty_log();
        let mut encoder = Encoder::new(0, limit);
        let (mut raw, mut wire, mut used) = (0u64, 0u64, [0u64; 3]);
        let (mut buf, mut frame, mut crcs) = (Vec::new(), Vec::new(), Vec::new());
        let started = Instant::now();
        for chunk in 0..memory.chunks() {
            let taken = memory.take_chunk(chunk, &mut buf);
            let stats = encoder
                .encode_frame(
                    chunk as u32,
                    taken,
                    &buf,
                    false,
                    false,
                    &mut frame,
                    &mut crcs,
                )
                .expect("encode");
            raw += stats.pages * PAGE as u64;
            wire += frame.len() as u64;
            // The compression byte: after the 8-byte frame header, tag, index and mask.
            used[usize::from(frame[8 + 13] & 0x0f)] += 1;
            if limit.is_none() {
                // As if the link took as long as raw loopback TCP (1.5 GB/s).
                encoder
                    .chooser
                    .wrote(frame.len(), frame.len() as f64 / 1.5e9);
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "  {name:<26} {:>6.0} MiB/s of memory encoded, wire/memory {:.3}, chunks none/lz4/zstd {}/{}/{}",
            raw as f64 / secs / (1 << 20) as f64,
            wire as f64 / raw as f64,
            used[0],
            used[1],
            used[2]
        );
    }
    // Each method alone, on the non-zero pages of every chunk.
    let mut payloads = Vec::new();
    memory.start_dirty_log();
    let mut buf = Vec::new();
    for chunk in 0..memory.chunks() {
        memory.take_chunk(chunk, &mut buf);
        payloads.push(buf.clone());
    }
    for method in [Method::Lz4, Method::Zstd] {
        let mut out = Vec::new();
        let mut zstd = zstd::bulk::Compressor::new(1).expect("zstd");
        let (mut raw, mut packed) = (0u64, 0u64);
        let started = Instant::now();
        for payload in &payloads {
            raw += payload.len() as u64;
            out.clear();
            out.reserve(payload.len() + 1024);
            packed += match method {
                Method::Lz4 => lz4_flex::block::compress(payload).len() as u64,
                _ => zstd.compress_to_buffer(payload, &mut out).unwrap_or(0) as u64,
            };
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "  {method:?} alone on the non-zero pages: {:>6.0} MiB/s, ratio {:.3}",
            raw as f64 / secs / (1 << 20) as f64,
            packed as f64 / raw as f64
        );
    }
}
