//! Diagnostics: every problem found in a policy, with file:line:column, a message and a hint.
//! Owns the byte-offset → line:column conversion and the `PolicyError` returned by loading
//! and resolution.

use std::fmt;
use std::ops::Range;

use serde::Serialize;

/// What kind of problem a diagnostic reports (stable names for `--json` and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiagnosticKind {
    /// TOML syntax, unknown key or wrong type.
    Parse,
    /// A value that parses but makes no sense (bad glob, bad size, unknown mechanism, …).
    Invalid,
    /// Two rules in the same policy that contradict each other.
    Contradiction,
    /// A key whose mechanism this build does not enforce (see `enforcement.rs`).
    NotEnforced,
    /// A lower layer asks for more than the host policy's caps allow.
    ExceedsHostCap,
    /// A key only the host policy may set.
    HostOnly,
    /// A profile example (command → expected intent) does not hold.
    Example,
    /// `extends` names something that cannot be loaded, or a cycle.
    Extends,
    /// Reading the file failed.
    Io,
}

/// One problem, located in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub kind: DiagnosticKind,
    /// File name as shown to the user (a path, `profile:NAME` or `<command line>`).
    pub file: String,
    /// 1-based line; 0 when the problem has no position (e.g. a missing file).
    pub line: usize,
    /// 1-based column in characters; 0 when there is no position.
    pub column: usize,
    /// Dotted key the problem is about, when known (`resources.memory`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        } else {
            write!(f, "{}: ", self.file)?;
        }
        write!(f, "error: {}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// Errors from loading, validating or resolving policies.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// One or more problems in the policy files; none of them may be ignored.
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

impl PolicyError {
    /// The diagnostics carried by this error.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            PolicyError::Invalid(d) => d,
        }
    }
}

/// Render diagnostics one after another, as `policy check` prints them.
pub fn render(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A source text with its display name, used to turn byte spans into line:column.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    /// 1-based (line, column) of a byte offset; columns count characters.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        // Step back to a char boundary so slicing never panics on odd spans.
        let mut off = offset;
        while off > 0 && !self.text.is_char_boundary(off) {
            off -= 1;
        }
        let before = &self.text[..off];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// A diagnostic at a span of this source.
    pub fn diag(
        &self,
        kind: DiagnosticKind,
        span: Option<Range<usize>>,
        key: Option<&str>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Diagnostic {
        let (line, column) = match span {
            Some(s) => self.position(s.start),
            None => (0, 0),
        };
        Diagnostic {
            kind,
            file: self.name.to_string(),
            line,
            column,
            key: key.map(str::to_string),
            message: message.into(),
            hint,
        }
    }
}

/// Levenshtein distance, for "did you mean" hints on misspelt keys and names.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate to `word`, if it is close enough to be a plausible typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_characters() {
        let src = Source {
            name: "x",
            text: "a = 1\nbé = \"x\"\n",
        };
        assert_eq!(src.position(0), (1, 1));
        assert_eq!(src.position(6), (2, 1));
        // "bé = " is 6 bytes but 5 characters.
        assert_eq!(src.position(12), (2, 6));
        assert_eq!(src.position(10_000), (3, 1));
    }

    #[test]
    fn typo_hints() {
        assert_eq!(closest("memroy", ["memory", "cpu", "pids"]), Some("memory"));
        assert_eq!(closest("zzzzzz", ["memory", "cpu"]), None);
    }
}
