//! A frame on the migration port: parsing (with a right and a wrong checksum), decoding a
//! chunk's pages for a guest, and applying them to guest memory never panic.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use paddock_migration::pages;
use paddock_migration::wire::{self, Frame};
use paddock_migration::PAGE;

/// Pages of the fuzzed guest (1 MiB).
const GUEST_PAGES: usize = 256;

thread_local! {
    static MEMORY: RefCell<Vec<u8>> = RefCell::new(vec![0; GUEST_PAGES * PAGE]);
}

fuzz_target!(|body: &[u8]| {
    let _ = wire::parse(body, 0);
    let Some(checked) = wire::checked_len(body) else {
        return;
    };
    let crc = crc32fast::hash(&body[..checked]);
    let Ok(Frame::Chunk(chunk)) = wire::parse(body, crc) else {
        return;
    };
    let mut buf = Vec::new();
    let mut ops = Vec::new();
    let Ok(data) = pages::decode(&chunk, GUEST_PAGES, &mut buf, &mut ops) else {
        return;
    };
    MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        for op in &ops {
            let _ = pages::apply_one(op, data, &mut memory, false);
        }
    });
});
