//! Fuzz target: arbitrary bytes as a SOCKS5 greeting and request. Nothing may panic; a
//! parsed message never claims more bytes than it was given.
#![no_main]

#[path = "../../src/egress/socks5.rs"]
#[allow(dead_code)]
mod socks5;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(n)) = socks5::parse_greeting(data) {
        assert!(n <= data.len());
        if let Ok(Some((_, m))) = socks5::parse_request(&data[n..]) {
            assert!(m <= data.len() - n);
        }
    }
    let _ = socks5::parse_request(data);
});
