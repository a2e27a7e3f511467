//! The MCP tools' inputs: one struct per tool, from which both the advertised JSON Schema
//! (schemars) and the validation (serde with `deny_unknown_fields`, then [`Validate`] for
//! what a schema states but serde does not check: ranges, exclusive fields, sizes) come, so
//! the schema a client sees and what the server accepts cannot drift apart. Pure: the
//! requests for the daemon are built here ([`ExecArgs::request`], the file tools' argv),
//! tested on the host.

use std::path::{Path, PathBuf};

use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::api::CallRequest;

/// Default and largest output kept per stream in an exec answer, bytes.
pub const OUTPUT_DEFAULT: u32 = 64 << 10;
pub const OUTPUT_MAX: u32 = 1 << 20;
/// Largest `write_file` content: it travels as one argument of the call (Linux's
/// MAX_ARG_STRLEN is 128 KiB).
pub const WRITE_MAX: usize = 96 << 10;

/// A tool input that cannot be used, with the reason (sent as JSON-RPC invalid params).
pub type Invalid = String;

/// Checks beyond what serde's types enforce.
pub trait Validate {
    fn validate(&self) -> Result<(), Invalid>;
}

/// Decodes and validates a tool's arguments.
pub fn parse<T: DeserializeOwned + Validate>(
    tool: &str,
    args: Option<JsonObject>,
) -> Result<T, Invalid> {
    let v = serde_json::Value::Object(args.unwrap_or_default());
    let t: T = serde_json::from_value(v).map_err(|e| format!("{tool}: {e}"))?;
    t.validate().map_err(|e| format!("{tool}: {e}"))?;
    Ok(t)
}

/// Declared intent: every field may only lower what the session's policy allows.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Intent {
    /// Memory the command needs, e.g. "64M" or "2G": its cgroup's memory.max (the policy's
    /// limit if lower). Exceeding it gets the call OOM-killed, reported as such.
    pub memory: Option<String>,
    /// "latency" (interactive, served first) or "batch" (builds, tests).
    pub cpu: Option<CpuClass>,
    /// Seconds before the call's cgroup is killed (the policy's limit if lower).
    #[schemars(range(min = 1))]
    pub timeout: Option<u64>,
    /// Most processes and threads the call may have at once.
    #[schemars(range(min = 1))]
    pub pids: Option<u32>,
}

/// CPU class of a call.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CpuClass {
    Latency,
    Batch,
}

impl Intent {
    /// The `memory=…,cpu=…` text `agentctl --intent` takes, parsed by the same code.
    fn declared(&self) -> Result<agentd_policy::DeclaredIntent, Invalid> {
        let mut parts = Vec::new();
        if let Some(m) = &self.memory {
            if m.contains(',') || m.contains('=') {
                return Err(format!("intent.memory {m:?} is not a size such as 64M"));
            }
            parts.push(format!("memory={m}"));
        }
        if let Some(c) = self.cpu {
            parts.push(format!(
                "cpu={}",
                match c {
                    CpuClass::Latency => "latency",
                    CpuClass::Batch => "batch",
                }
            ));
        }
        if let Some(t) = self.timeout {
            parts.push(format!("timeout={t}"));
        }
        if let Some(p) = self.pids {
            parts.push(format!("pids={p}"));
        }
        crate::ctl::parse_intent(&parts.join(",")).map_err(|e| e.to_string())
    }
}

/// `exec`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecArgs {
    /// The command as an argument vector, run directly (no shell), e.g. ["cargo", "test"].
    /// Give exactly one of `argv` and `command`.
    #[schemars(length(min = 1))]
    pub argv: Option<Vec<String>>,
    /// A shell command line, run as `sh -c COMMAND` inside the sandbox, e.g.
    /// "make -j2 && ./run-tests | tail". Give exactly one of `argv` and `command`.
    #[schemars(length(min = 1))]
    pub command: Option<String>,
    /// Working directory: relative to the workspace (the default), or absolute inside the
    /// sandbox.
    pub cwd: Option<String>,
    /// What the command needs; only lowers the policy's limits.
    pub intent: Option<Intent>,
    /// Bytes of stdout, and of stderr, returned (default 65536, at most 1048576). Longer
    /// output keeps its first and last halves and says how much was cut.
    #[schemars(range(min = 1, max = 1048576))]
    pub max_output_bytes: Option<u32>,
}

impl Validate for ExecArgs {
    fn validate(&self) -> Result<(), Invalid> {
        match (&self.argv, &self.command) {
            (Some(_), Some(_)) => return Err("give argv or command, not both".into()),
            (None, None) => return Err("give argv (a list) or command (a shell line)".into()),
            (Some(a), None) if a.is_empty() || a[0].is_empty() => {
                return Err("argv is empty: give the program and its arguments".into());
            }
            (None, Some(c)) if c.trim().is_empty() => return Err("command is empty".into()),
            _ => {}
        }
        if let Some(m) = self.max_output_bytes
            && !(1..=OUTPUT_MAX).contains(&m)
        {
            return Err(format!("max_output_bytes {m} is not in 1..={OUTPUT_MAX}"));
        }
        if let Some(i) = &self.intent {
            i.declared().map(|_| ())?;
        }
        Ok(())
    }
}

impl ExecArgs {
    /// The call for the daemon; `workspace` is the session's workspace (its path inside the
    /// sandbox too).
    pub fn request(&self, workspace: &Path) -> Result<CallRequest, Invalid> {
        let argv = match (&self.argv, &self.command) {
            (Some(a), _) => a.clone(),
            (None, Some(c)) => vec!["sh".into(), "-c".into(), c.clone()],
            (None, None) => return Err("give argv or command".into()),
        };
        Ok(CallRequest {
            argv,
            cwd: self.cwd.as_deref().map(|c| in_workspace(workspace, c)),
            env: Default::default(),
            intent: self
                .intent
                .as_ref()
                .map(Intent::declared)
                .transpose()?
                .unwrap_or_default(),
        })
    }

    /// Bytes kept per stream.
    pub fn max_output(&self) -> usize {
        self.max_output_bytes.unwrap_or(OUTPUT_DEFAULT) as usize
    }
}

/// A path as the sandbox sees it: relative ones are under the workspace.
pub fn in_workspace(workspace: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        workspace.join(p)
    }
}

/// `read_file`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadFileArgs {
    /// The file: relative to the workspace, or absolute inside the sandbox.
    #[schemars(length(min = 1))]
    pub path: String,
    /// Byte offset to start at (default 0).
    pub offset: Option<u64>,
    /// Bytes returned at most (default 65536, at most 1048576); a longer file says so.
    #[schemars(range(min = 1, max = 1048576))]
    pub max_bytes: Option<u32>,
}

impl Validate for ReadFileArgs {
    fn validate(&self) -> Result<(), Invalid> {
        nonempty_path(&self.path)?;
        match self.max_bytes {
            Some(m) if !(1..=OUTPUT_MAX).contains(&m) => {
                Err(format!("max_bytes {m} is not in 1..={OUTPUT_MAX}"))
            }
            _ => Ok(()),
        }
    }
}

impl ReadFileArgs {
    pub fn max(&self) -> usize {
        self.max_bytes.unwrap_or(OUTPUT_DEFAULT) as usize
    }

    /// `tail -c +OFFSET | head -c MAX+1` inside the sandbox (one byte more than asked, to
    /// know whether the file goes on).
    pub fn argv(&self) -> Vec<String> {
        let script = r#"exec < "$1" && tail -c "+$2" | head -c "$3""#;
        vec![
            "sh".into(),
            "-c".into(),
            script.into(),
            "read_file".into(),
            self.path.clone(),
            (self.offset.unwrap_or(0) + 1).to_string(),
            (self.max() + 1).to_string(),
        ]
    }
}

/// `write_file`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFileArgs {
    /// The file: relative to the workspace, or absolute inside the sandbox (where only the
    /// workspace and temporary directories are writable).
    #[schemars(length(min = 1))]
    pub path: String,
    /// The whole new content (text, at most 98304 bytes).
    #[schemars(length(max = 98304))]
    pub content: String,
    /// Create missing parent directories (default true).
    pub create_dirs: Option<bool>,
}

impl Validate for WriteFileArgs {
    fn validate(&self) -> Result<(), Invalid> {
        nonempty_path(&self.path)?;
        if self.content.len() > WRITE_MAX {
            return Err(format!(
                "content of {} bytes is over the {WRITE_MAX}-byte limit of one write_file; \
                 write it in parts with exec, or split the file",
                self.content.len()
            ));
        }
        if self.content.contains('\0') {
            return Err("content contains a NUL byte: write_file writes text".into());
        }
        Ok(())
    }
}

impl WriteFileArgs {
    /// `printf %s CONTENT > PATH` inside the sandbox, so the sandbox decides what may be
    /// written.
    pub fn argv(&self) -> Vec<String> {
        let script = if self.create_dirs.unwrap_or(true) {
            r#"mkdir -p -- "$(dirname -- "$1")" && printf %s "$2" > "$1""#
        } else {
            r#"printf %s "$2" > "$1""#
        };
        vec![
            "sh".into(),
            "-c".into(),
            script.into(),
            "write_file".into(),
            self.path.clone(),
            self.content.clone(),
        ]
    }
}

/// `list`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// The directory: relative to the workspace (default "."), or absolute inside the sandbox.
    pub path: Option<String>,
    /// Levels below it to list (default 1, at most 8).
    #[schemars(range(min = 1, max = 8))]
    pub depth: Option<u32>,
}

impl Validate for ListArgs {
    fn validate(&self) -> Result<(), Invalid> {
        if let Some(p) = &self.path {
            nonempty_path(p)?;
        }
        match self.depth {
            Some(d) if !(1..=8).contains(&d) => Err(format!("depth {d} is not in 1..=8")),
            _ => Ok(()),
        }
    }
}

impl ListArgs {
    /// `find` inside the sandbox: one `TYPE SIZE PATH` line per entry (d directory, f file,
    /// l symlink), sorted.
    pub fn argv(&self) -> Vec<String> {
        let script = r#"cd -- "$1" && find . -mindepth 1 -maxdepth "$2" -printf '%y %s %P\n' | LC_ALL=C sort -k3"#;
        vec![
            "sh".into(),
            "-c".into(),
            script.into(),
            "list".into(),
            self.path.clone().unwrap_or_else(|| ".".into()),
            self.depth.unwrap_or(1).to_string(),
        ]
    }
}

/// Tools without arguments (`status`, `checkpoints`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

impl Validate for NoArgs {
    fn validate(&self) -> Result<(), Invalid> {
        Ok(())
    }
}

fn nonempty_path(p: &str) -> Result<(), Invalid> {
    if p.is_empty() || p.contains('\0') {
        return Err(format!("path {p:?} is empty or contains NUL"));
    }
    Ok(())
}

/// The JSON Schema of `T`, as an MCP tool input schema.
pub fn schema<T: JsonSchema>() -> JsonObject {
    let s = schemars::schema_for!(T);
    match serde_json::to_value(s) {
        Ok(serde_json::Value::Object(mut o)) => {
            // The description is the tool's, not the struct doc comment's.
            o.remove("description");
            o.remove("title");
            o
        }
        _ => JsonObject::new(),
    }
}

fn tool<T: JsonSchema>(name: &'static str, description: &'static str, read_only: bool) -> Tool {
    Tool::new(name, description, schema::<T>()).with_annotations(
        ToolAnnotations::new()
            .read_only(read_only)
            .destructive(!read_only)
            .open_world(false),
    )
}

/// The tools, as `tools/list` answers.
pub fn list() -> Vec<Tool> {
    vec![
        tool::<ExecArgs>(
            "exec",
            "Run one command inside the agentd sandbox session (the workspace is the current \
             directory), in its own cgroup with memory, CPU, pids and time limits from the \
             session's policy (the intent may lower them). Returns the exit status, stdout and \
             stderr (bounded; a cut is said), and the call's resource report (wall and CPU \
             time, memory peak, OOM kills). An OOM kill, a timeout or a refusal by the policy \
             is an error result with the reason. Progress notifications carry output as it \
             comes; cancelling the request kills the call's cgroup.",
            false,
        ),
        tool::<ReadFileArgs>(
            "read_file",
            "Read a file through the sandbox (a call inside the session, so the agent sees \
             what its commands see, never the host's files directly). Returns its text \
             (invalid UTF-8 replaced), bounded by max_bytes; says when the file goes on.",
            true,
        ),
        tool::<WriteFileArgs>(
            "write_file",
            "Write a whole text file through the sandbox (a call inside the session). Only \
             the workspace (and the sandbox's temporary directories) are writable: a path \
             outside is refused by the sandbox, and the refusal is returned.",
            false,
        ),
        tool::<ListArgs>(
            "list",
            "List a directory through the sandbox: one `TYPE SIZE PATH` line per entry (d \
             directory, f file, l symlink), sorted, down to `depth` levels.",
            true,
        ),
        tool::<NoArgs>(
            "status",
            "The session: its state, limits (memory, CPU, pids, timeout; the agent's own \
             leaf), live usage (memory, CPU time, pids, IO, OOM kills) and its calls so far.",
            true,
        ),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn args(v: serde_json::Value) -> Option<JsonObject> {
        v.as_object().cloned()
    }

    #[test]
    fn exec_arguments_are_validated_with_the_reason() {
        for (bad, why) in [
            (json!({}), "give argv"),
            (json!({"argv": ["ls"], "command": "ls"}), "not both"),
            (json!({"argv": []}), "argv is empty"),
            (json!({"argv": "ls"}), "invalid type"),
            (
                json!({"argv": ["ls"], "shell": true}),
                "unknown field `shell`",
            ),
            (
                json!({"command": "ls", "intent": {"memory": "lots"}}),
                "memory",
            ),
            (
                json!({"command": "ls", "intent": {"cpu": "fast"}}),
                "unknown variant",
            ),
            (
                json!({"command": "ls", "max_output_bytes": 0}),
                "max_output_bytes",
            ),
            (
                json!({"command": "ls", "max_output_bytes": 2000000}),
                "max_output_bytes",
            ),
            (
                json!({"command": "ls", "intent": {"timeout": -1}}),
                "invalid value",
            ),
        ] {
            let e = parse::<ExecArgs>("exec", args(bad.clone())).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.starts_with("exec: "), "{e}");
        }
    }

    #[test]
    fn exec_builds_the_call_a_shell_line_and_a_relative_cwd() {
        let a: ExecArgs = parse(
            "exec",
            args(json!({"command": "make test", "cwd": "sub",
                "intent": {"memory": "64M", "cpu": "batch", "timeout": 30}})),
        )
        .unwrap();
        let r = a.request(Path::new("/home/u/repo")).unwrap();
        assert_eq!(r.argv, ["sh", "-c", "make test"]);
        assert_eq!(r.cwd.unwrap(), Path::new("/home/u/repo/sub"));
        assert_eq!(r.intent.memory.unwrap().0, 64 << 20);
        assert_eq!(r.intent.timeout.unwrap().0, 30);
        let a: ExecArgs = parse("exec", args(json!({"argv": ["true"], "cwd": "/tmp"}))).unwrap();
        let r = a.request(Path::new("/w")).unwrap();
        assert_eq!(
            (r.argv, r.cwd.unwrap()),
            (vec!["true".to_string()], "/tmp".into())
        );
    }

    #[test]
    fn file_tools_validate_and_pass_paths_as_arguments_never_as_shell_text() {
        let w: WriteFileArgs = parse(
            "write_file",
            args(json!({"path": "a b/$(x).txt", "content": "it's \"quoted\"\n"})),
        )
        .unwrap();
        let argv = w.argv();
        assert_eq!(argv[4], "a b/$(x).txt");
        assert_eq!(argv[5], "it's \"quoted\"\n");
        let big = "x".repeat(WRITE_MAX + 1);
        let e = parse::<WriteFileArgs>("write_file", args(json!({"path": "f", "content": big})))
            .unwrap_err();
        assert!(e.contains("limit"), "{e}");
        let e = parse::<ReadFileArgs>("read_file", args(json!({"path": ""}))).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let r: ReadFileArgs = parse(
            "read_file",
            args(json!({"path": "f", "offset": 10, "max_bytes": 5})),
        )
        .unwrap();
        assert_eq!(&r.argv()[4..], ["f", "11", "6"]);
        let e = parse::<ListArgs>("list", args(json!({"depth": 9}))).unwrap_err();
        assert!(e.contains("depth"), "{e}");
        let e = parse::<NoArgs>("status", args(json!({"x": 1}))).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn schemas_forbid_unknown_fields_and_state_the_bounds() {
        let tools = list();
        let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
        assert_eq!(names, ["exec", "read_file", "write_file", "list", "status"]);
        for t in &tools {
            assert_eq!(t.input_schema["type"], "object", "{}", t.name);
            assert_eq!(t.input_schema["additionalProperties"], false, "{}", t.name);
            assert!(t.description.as_ref().is_some_and(|d| d.len() > 60));
        }
        let exec = &tools[0].input_schema;
        assert_eq!(exec["properties"]["max_output_bytes"]["maximum"], 1048576);
        assert!(exec["properties"]["argv"].to_string().contains("minItems"));
    }
}
