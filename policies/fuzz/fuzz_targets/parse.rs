//! Fuzz target: arbitrary text through the parser and validator, then through the whole
//! pipeline as a repo policy (layering on the built-in host and the default profile,
//! resolution, example checks); whenever it resolves, a call derived from the input must
//! resolve too. Nothing may panic. (Host/profile kinds share this code path; they are
//! covered by the proptest suite, and leaving them out here triples the exec rate.)
#![no_main]

use agentd_policy::{DeclaredIntent, LoadOptions, MemFs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = agentd_policy::check_text("fuzz.toml", text);
    if let Ok(plan) = agentd_policy::load(&MemFs::default(), &LoadOptions::default(), Some(("fuzz.toml", text))) {
        let argv: Vec<&str> = text.split_whitespace().take(4).collect();
        let _ = plan.call(&argv, &DeclaredIntent::default());
        let _ = plan.env_allowed(text);
    }
});
