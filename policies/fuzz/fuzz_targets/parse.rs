//! Fuzz target: arbitrary text as a repo policy, a host policy and a command-line override;
//! whenever it resolves, every call derived from the input must resolve too. Nothing may panic.
#![no_main]

use agentd_policy::{DeclaredIntent, FileKind, LoadOptions, MemFs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = agentd_policy::check_text("fuzz.toml", text);
    let files = MemFs::default();
    for kind in [FileKind::Repo, FileKind::Host, FileKind::Profile] {
        let opts = LoadOptions { file_kind: kind, ..LoadOptions::default() };
        if let Ok(plan) = agentd_policy::load(&files, &opts, Some(("fuzz.toml", text))) {
            let argv: Vec<&str> = text.split_whitespace().take(4).collect();
            let _ = plan.call(&argv, &DeclaredIntent::default());
            let _ = plan.env_allowed(text);
        }
    }
    let opts = LoadOptions { overrides: vec![text.to_string()], ..LoadOptions::default() };
    let _ = agentd_policy::load(&files, &opts, Some(("repo.toml", "version = 1\n")));
});
