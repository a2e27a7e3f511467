//! The undo tools (issue 11's daemon routes): `diff`, `checkpoints`, `undo`. They are listed
//! only when the daemon serves `GET /v1/sessions/{id}/checkpoints` (probed at start): a tool
//! that cannot work is not advertised. Committing is not among them, on purpose.

use rmcp::model::{CallToolResult, ContentBlock, Tool};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::report::Capture;
use super::tools::{Invalid, OUTPUT_DEFAULT, OUTPUT_MAX, Validate, schema};

/// `diff`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiffArgs {
    /// From this checkpoint (default 0, the session's start).
    pub from: Option<u64>,
    /// To this checkpoint (default: the workspace now).
    pub to: Option<u64>,
    /// Only what this tool call changed (not with from/to).
    #[schemars(range(min = 1))]
    pub call: Option<u64>,
    /// Only the list of changed files, no diff text.
    pub stat: Option<bool>,
    /// Bytes of diff text returned (default 65536, at most 1048576); a cut is said.
    #[schemars(range(min = 1, max = 1048576))]
    pub max_bytes: Option<u32>,
}

impl Validate for DiffArgs {
    fn validate(&self) -> Result<(), Invalid> {
        if self.call.is_some() && (self.from.is_some() || self.to.is_some()) {
            return Err("give call, or from/to, not both".into());
        }
        if self.call == Some(0) {
            return Err("call numbers start at 1".into());
        }
        match self.max_bytes {
            Some(m) if !(1..=OUTPUT_MAX).contains(&m) => {
                Err(format!("max_bytes {m} is not in 1..={OUTPUT_MAX}"))
            }
            _ => Ok(()),
        }
    }
}

impl DiffArgs {
    /// The route's query.
    pub fn query(&self) -> String {
        let mut q = Vec::new();
        if let Some(f) = self.from {
            q.push(format!("from={f}"));
        }
        if let Some(t) = self.to {
            q.push(format!("to={t}"));
        }
        if let Some(c) = self.call {
            q.push(format!("call={c}"));
        }
        if self.stat == Some(true) {
            q.push("stat=true".into());
        }
        if q.is_empty() {
            "/diff".into()
        } else {
            format!("/diff?{}", q.join("&"))
        }
    }
}

/// `undo`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UndoArgs {
    /// The checkpoint to restore (see `checkpoints`; the one taken before call N has
    /// `call: N`). The state before is saved as a new checkpoint, so an undo can be undone.
    pub to: u64,
}

impl Validate for UndoArgs {
    fn validate(&self) -> Result<(), Invalid> {
        Ok(())
    }
}

/// The tools.
pub fn tools() -> Vec<Tool> {
    vec![
        Tool::new(
            "diff",
            "What the session changed in the workspace: the changed files and a unified diff \
             of the text ones, from checkpoint `from` (default the session's start) to `to` \
             (default now), or only what tool call `call` changed.",
            schema::<DiffArgs>(),
        ),
        Tool::new(
            "checkpoints",
            "The session's checkpoints (0 = its start; one is taken before every tool call): \
             id, the call it precedes, files, bytes, reason. `undo` restores one.",
            schema::<super::tools::NoArgs>(),
        ),
        Tool::new(
            "undo",
            "Restore the workspace to a checkpoint (only paths the session wrote change; the \
             state before is saved as a new checkpoint first). Committing changes to the real \
             repository is not a tool: a person does it with agentctl.",
            schema::<UndoArgs>(),
        ),
    ]
}

/// The answer to `diff`.
pub fn diff_result(v: &Value, max: Option<u32>) -> CallToolResult {
    let files = v["files"].as_array().cloned().unwrap_or_default();
    let mut text = format!("{} changed path(s)\n", files.len());
    for f in &files {
        text.push_str(&format!(
            "{} {} {}\n",
            f["change"].as_str().unwrap_or("?"),
            f["kind"].as_str().unwrap_or("?"),
            f["path"].as_str().unwrap_or("?")
        ));
    }
    let mut cap = Capture::new(max.unwrap_or(OUTPUT_DEFAULT) as usize);
    cap.push(v["diff"].as_str().unwrap_or("").as_bytes());
    if cap.total() > 0 {
        text.push('\n');
        text.push_str(&cap.text());
    }
    let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
    r.structured_content = Some(json!({
        "from": v["from"], "to": v["to"], "files": files,
        "diff": cap.text(), "diff_bytes": cap.total(), "truncated": cap.cut() > 0,
    }));
    r
}

/// The answer to `checkpoints`.
pub fn checkpoints_result(v: &Value) -> CallToolResult {
    let list = v.as_array().cloned().unwrap_or_default();
    let mut text = String::from("ID  CALL  FILES  BYTES  REASON\n");
    for c in &list {
        text.push_str(&format!(
            "{}  {}  {}  {}  {}\n",
            c["id"],
            c["call"].as_u64().map_or("-".into(), |n| n.to_string()),
            c["files"],
            c["bytes"],
            c["reason"].as_str().unwrap_or("")
        ));
    }
    let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
    r.structured_content = Some(json!({ "checkpoints": list }));
    r
}

/// The answer to `undo`.
pub fn undo_result(v: &Value) -> CallToolResult {
    let paths: Vec<&str> = v["paths"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let text = format!(
        "restored checkpoint {} (the state before is checkpoint {}): {} path(s) changed\n{}",
        v["to"],
        v["saved"],
        paths.len(),
        paths.join("\n")
    );
    let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
    r.structured_content = Some(v.clone());
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::mcp::tools::parse;

    #[test]
    fn diff_arguments_make_the_query_and_refuse_call_with_a_range() {
        let a: DiffArgs = parse(
            "diff",
            json!({"call": 3, "stat": true}).as_object().cloned(),
        )
        .unwrap();
        assert_eq!(a.query(), "/diff?call=3&stat=true");
        let a: DiffArgs = parse("diff", json!({"from": 1, "to": 4}).as_object().cloned()).unwrap();
        assert_eq!(a.query(), "/diff?from=1&to=4");
        let e = parse::<DiffArgs>("diff", json!({"call": 3, "from": 1}).as_object().cloned())
            .unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let e = parse::<UndoArgs>("undo", json!({}).as_object().cloned()).unwrap_err();
        assert!(e.contains("missing field `to`"), "{e}");
    }

    #[test]
    fn answers_list_files_checkpoints_and_restored_paths() {
        let d = diff_result(
            &json!({"from": 0, "to": null, "diff": "--- a/x\n+++ b/x\n",
                    "files": [{"path": "x", "change": "modified", "kind": "file"}]}),
            None,
        );
        let ContentBlock::Text(t) = &d.content[0] else {
            unreachable!()
        };
        assert!(
            t.text.starts_with("1 changed path(s)\nmodified file x\n"),
            "{}",
            t.text
        );
        let c = checkpoints_result(
            &json!([{"id": 0, "call": null, "files": 1, "bytes": 12, "reason": "start"}]),
        );
        let ContentBlock::Text(t) = &c.content[0] else {
            unreachable!()
        };
        assert!(t.text.contains("0  -  1  12  start"), "{}", t.text);
        let u = undo_result(&json!({"to": 2, "saved": 7, "paths": ["notes/hello.txt"]}));
        let ContentBlock::Text(t) = &u.content[0] else {
            unreachable!()
        };
        assert!(t.text.contains("restored checkpoint 2") && t.text.contains("notes/hello.txt"));
    }
}
