//! An HTTPS API request body (JSON) as the handlers receive it: decoding, the conversion to a
//! command, validation and apply never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    if let Some(Ok(command)) = paddock_fuzz::command_of(kind, body, false) {
        paddock_fuzz::exercise(command);
    }
});
