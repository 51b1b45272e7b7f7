//! paddockd's config file: parsing and checking any text never panics (errors name the key).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = paddock_node::config::NodeConfig::from_file_text(&text);
});
