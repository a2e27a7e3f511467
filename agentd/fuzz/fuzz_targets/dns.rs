//! Fuzz target: arbitrary bytes as a DNS query (the stub) and as an upstream answer (the
//! daemon's resolver); a parsed query's answers must parse back. Nothing may panic.
#![no_main]

#[path = "../../src/egress/dns.rs"]
#[allow(dead_code)]
mod dns;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = dns::parse_query(data) {
        for a in [dns::Answer::A(std::net::Ipv4Addr::new(198, 18, 0, 1)), dns::Answer::Empty, dns::Answer::NxDomain] {
            let out = dns::answer(&q, a);
            assert!(dns::parse_a_records(&out, q.id).is_ok());
        }
    }
    let _ = dns::parse_a_records(data, u16::from_be_bytes([data.first().copied().unwrap_or(0), data.get(1).copied().unwrap_or(0)]));
});
