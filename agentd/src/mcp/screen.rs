//! The gate in front of the MCP SDK: every incoming message (a stdio line or an HTTP POST
//! body) is screened here first, so malformed JSON-RPC, batches, wrong envelopes and
//! oversized messages get a JSON-RPC error answer with the reason. (The SDK drops
//! unparsable stdio lines and oversized ones silently, which a client sees as a hang.)
//!
//! Pure and dependency-light (std + serde_json) on purpose: the fuzz target
//! (`agentd/fuzz`) includes this file directly, without building the daemon.

use serde_json::{Map, Value, json};

/// The largest message accepted, bytes (a write_file of 96 KiB fits many times over).
pub const MAX_MESSAGE: usize = 4 << 20;

/// JSON-RPC 2.0 error codes used here.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const INVALID_PARAMS: i64 = -32602;

/// What to do with one incoming message.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// A well-formed JSON-RPC 2.0 request, notification or response: hand it to the SDK.
    Pass,
    /// Blank (a stray newline): nothing to do.
    Skip,
    /// Refused: answer with this JSON-RPC error response (one line, no newline).
    Reject(String),
}

/// The JSON-RPC error response for `id` (null when the id is unknown).
pub fn error_response(id: Value, code: i64, message: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}).to_string()
}

/// The answer to a message of `len` bytes that is over [`MAX_MESSAGE`] (its id is unknown:
/// it was never parsed).
pub fn oversized(len: usize) -> String {
    error_response(
        Value::Null,
        INVALID_REQUEST,
        &format!(
            "message of {len} bytes or more exceeds the {} MiB limit of agentctl mcp; \
             it was discarded unread",
            MAX_MESSAGE >> 20
        ),
    )
}

/// Screens one message (without its line terminator).
pub fn screen(msg: &[u8]) -> Verdict {
    if msg.len() > MAX_MESSAGE {
        return Verdict::Reject(oversized(msg.len()));
    }
    if msg.iter().all(u8::is_ascii_whitespace) {
        return Verdict::Skip;
    }
    let v: Value = match serde_json::from_slice(msg) {
        Ok(v) => v,
        Err(e) => {
            return Verdict::Reject(error_response(
                Value::Null,
                PARSE_ERROR,
                &format!("parse error: not JSON ({e})"),
            ));
        }
    };
    match envelope(&v) {
        Ok(()) => Verdict::Pass,
        Err((id, code, why)) => Verdict::Reject(error_response(id, code, &why)),
    }
}

type Refusal = (Value, i64, String);

/// Checks the JSON-RPC 2.0 envelope (not the MCP params, which the SDK and the tools check).
fn envelope(v: &Value) -> Result<(), Refusal> {
    let obj = match v {
        Value::Object(o) => o,
        Value::Array(_) => {
            return Err(invalid(
                Value::Null,
                "batches are not supported (MCP removed JSON-RPC batching): send one message per line"
                    .into(),
            ));
        }
        other => {
            return Err(invalid(
                Value::Null,
                format!("a JSON-RPC message is an object, not {}", kind(other)),
            ));
        }
    };
    let id = id_of(obj)?;
    let answer_id = id.clone().unwrap_or(Value::Null);
    match obj.get("jsonrpc") {
        Some(Value::String(s)) if s == "2.0" => {}
        Some(other) => {
            return Err(invalid(
                answer_id,
                format!("\"jsonrpc\" must be \"2.0\", not {other}"),
            ));
        }
        None => return Err(invalid(answer_id, "\"jsonrpc\": \"2.0\" is missing".into())),
    }
    match obj.get("method") {
        Some(Value::String(m)) if !m.is_empty() => {
            if obj.contains_key("result") || obj.contains_key("error") {
                return Err(invalid(
                    answer_id,
                    "a message has a method or a result/error, not both".into(),
                ));
            }
            match obj.get("params") {
                None | Some(Value::Object(_)) => Ok(()),
                Some(other) => Err((
                    answer_id,
                    INVALID_PARAMS,
                    format!(
                        "\"params\" of {m} must be an object (MCP uses named params), not {}",
                        kind(other)
                    ),
                )),
            }
        }
        Some(other) => Err(invalid(
            answer_id,
            format!("\"method\" must be a non-empty string, not {other}"),
        )),
        None => {
            // A response to a request of ours (e.g. ping): it needs an id and one outcome.
            let outcomes =
                usize::from(obj.contains_key("result")) + usize::from(obj.contains_key("error"));
            if id.is_none() || outcomes != 1 {
                return Err(invalid(
                    answer_id,
                    "neither a request (no \"method\") nor a response (an \"id\" and exactly \
                     one of \"result\"/\"error\")"
                        .into(),
                ));
            }
            Ok(())
        }
    }
}

fn invalid(id: Value, why: String) -> Refusal {
    (id, INVALID_REQUEST, why)
}

/// The message's id: absent (a notification), a string or an integer; anything else is
/// refused (answered with a null id, since it cannot be echoed).
fn id_of(obj: &Map<String, Value>) -> Result<Option<Value>, Refusal> {
    match obj.get("id") {
        None => Ok(None),
        Some(v @ Value::String(_)) => Ok(Some(v.clone())),
        Some(v @ Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(v.clone())),
        Some(other) => Err(invalid(
            Value::Null,
            format!("\"id\" must be a string or an integer, not {other}"),
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
