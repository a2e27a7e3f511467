//! Fuzz target: arbitrary bytes as a client's first flight (TLS records carrying a
//! ClientHello, reassembled across records); every prefix must give NeedMore, an error, or
//! the same answer as the whole. Nothing may panic.
#![no_main]

#[path = "../../src/egress/sni.rs"]
#[allow(dead_code)]
mod sni;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = sni::parse(data);
    if let Ok(sni::Hello::Done(_)) = &whole {
        let _ = sni::parse(&data[..data.len() / 2]);
    }
});
