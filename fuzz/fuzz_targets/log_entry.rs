//! A log entry or snapshot read back from disk or the network: decoding never panics, and a
//! decoded proposal applies (twice) without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paddock_model::{codec, ClusterState, Proposal};

fuzz_target!(|data: &[u8]| {
    if let Ok(proposal) = codec::decode::<Proposal>(data) {
        let mut state = ClusterState::default();
        let _ = state.apply(&proposal);
        let _ = state.apply(&proposal);
        let _ = state.digest();
    }
    if let Ok(state) = codec::decode::<ClusterState>(data) {
        let _ = state.digest();
        let _ = state.audit.verify(None);
    }
});
