//! Fuzz target: arbitrary bytes through the JSON-RPC screen of `agentctl mcp`. Nothing may
//! panic; a refusal must be exactly one line of a JSON-RPC 2.0 error response with an
//! integer code and a non-empty message; a message over the limit never passes; whatever
//! passes is a JSON object with `"jsonrpc": "2.0"`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[path = "../../src/mcp/screen.rs"]
mod screen;

fuzz_target!(|data: &[u8]| {
    match screen::screen(data) {
        screen::Verdict::Reject(line) => {
            assert!(!line.contains('\n'), "one line: {line}");
            let v: Value = serde_json::from_str(&line).expect("the refusal is JSON");
            assert_eq!(v["jsonrpc"], "2.0");
            assert!(v["error"]["code"].is_i64());
            assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert!(v.get("id").is_some_and(|id| id.is_null() || id.is_string() || id.is_i64() || id.is_u64()));
        }
        screen::Verdict::Pass => {
            assert!(data.len() <= screen::MAX_MESSAGE);
            let v: Value = serde_json::from_slice(data).expect("what passes is JSON");
            assert_eq!(v["jsonrpc"], "2.0");
        }
        screen::Verdict::Skip => assert!(data.iter().all(u8::is_ascii_whitespace)),
    }
});
