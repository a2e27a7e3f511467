//! Declared intents as people and shims write them: `memory=64M,cpu=batch,timeout=60,pids=100`
//! (`agentctl exec --intent`, `$AGENTD_INTENT` read by the shim) → a [`DeclaredIntent`].
//! One parser for the CLI and the daemon; sizes and durations as everywhere in policy
//! ([`crate::units`]), a bare timeout number meaning seconds.

use crate::plan::DeclaredIntent;
use crate::schema::CpuClass;
use crate::units::{parse_duration, parse_size};

/// A bad `--intent` value, naming the part.
#[derive(Debug, thiserror::Error)]
pub enum IntentError {
    #[error("intent part {part:?}: expected key=value")]
    NoValue { part: String },
    #[error("intent part {part:?}: {detail}")]
    Value { part: String, detail: String },
    #[error("intent part {part:?}: unknown key (use memory, cpu, timeout, pids)")]
    Key { part: String },
}

/// Parses `memory=64M,cpu=batch,timeout=60,pids=100` (timeout: seconds, or `90s`, `10m`).
pub fn parse_intent(text: &str) -> Result<DeclaredIntent, IntentError> {
    let mut out = DeclaredIntent::default();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| IntentError::NoValue {
            part: part.to_string(),
        })?;
        let bad = |detail: String| IntentError::Value {
            part: part.to_string(),
            detail,
        };
        match k.trim() {
            "memory" | "mem" => out.memory = Some(parse_size(v).map_err(bad)?),
            "cpu" | "cpu_class" => {
                out.cpu_class = Some(match v.trim() {
                    "batch" => CpuClass::Batch,
                    "latency" => CpuClass::Latency,
                    other => return Err(bad(format!("{other:?} is not `batch` or `latency`"))),
                })
            }
            "timeout" => {
                let v = v.trim();
                let v = if v.bytes().all(|b| b.is_ascii_digit()) {
                    format!("{v}s")
                } else {
                    v.to_string()
                };
                out.timeout = Some(parse_duration(&v).map_err(bad)?);
            }
            "pids" => out.pids = Some(v.trim().parse().map_err(|e| bad(format!("{e}")))?),
            _ => {
                return Err(IntentError::Key {
                    part: part.to_string(),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code
    use super::*;

    #[test]
    fn intent_parses_every_key_and_names_bad_parts() {
        let i = parse_intent("memory=64M,cpu=batch,timeout=60,pids=100").unwrap();
        assert_eq!(i.memory.unwrap().0, 64 << 20);
        assert_eq!(i.cpu_class, Some(CpuClass::Batch));
        assert_eq!(i.timeout.unwrap().0, 60);
        assert_eq!(i.pids, Some(100));
        assert_eq!(parse_intent("timeout=2m").unwrap().timeout.unwrap().0, 120);
        assert!(parse_intent("").unwrap() == DeclaredIntent::default());
        let e = parse_intent("memory").unwrap_err().to_string();
        assert!(e.contains("memory"), "{e}");
        let e = parse_intent("cpu=fast").unwrap_err().to_string();
        assert!(e.contains("fast"), "{e}");
        assert!(parse_intent("disk=1G").is_err());
    }
}
