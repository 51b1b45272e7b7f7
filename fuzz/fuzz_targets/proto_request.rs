//! A gRPC request body (protobuf) as the services receive it: decoding, the proto → command
//! conversion, validation and apply never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    if let Some(Ok(command)) = paddock_fuzz::command_of(kind, body, true) {
        paddock_fuzz::exercise(command);
    }
});
