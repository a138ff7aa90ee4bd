//! Configuration errors that point at the offending place: `file:line:column: message`.

use std::fmt;
use std::path::PathBuf;

/// A 1-based line and column in a source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One problem found in a file. `origin` is the file name as the user gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub origin: String,
    pub position: Option<Position>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(p) => write!(f, "{}:{}: {}", self.origin, p, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Everything wrong with the file, one diagnostic per line, in file order.
    #[error("{}", DisplayLines(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    pub fn one(origin: &str, position: Option<Position>, message: impl Into<String>) -> Self {
        ConfigError::Invalid(vec![Diagnostic {
            origin: origin.to_string(),
            position,
            message: message.into(),
        }])
    }

    /// The diagnostics (empty for a read error).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid(d) => d,
            ConfigError::Read { .. } => &[],
        }
    }
}

struct DisplayLines<'a>(&'a [Diagnostic]);

impl fmt::Display for DisplayLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Sorts diagnostics by position (unpositioned last) while keeping the order of equal positions.
pub(crate) fn sort_diagnostics(diags: &mut [Diagnostic]) {
    diags.sort_by_key(|d| {
        d.position
            .map_or((usize::MAX, usize::MAX), |p| (p.line, p.column))
    });
}

/// What stands in for a value a decode error would have quoted.
pub const HIDDEN: &str = "(value not shown)";

/// A serde decode message with the values it quotes from the input replaced by [`HIDDEN`].
///
/// serde quotes the offending input in its messages (`invalid type: string "<the text>", expected struct Key`,
/// ``unknown variant `<the text>` ``); in cluster.yml, an EncryptionConfiguration or cluster.rkestate that text can
/// be a key or a private key put in the wrong place, so every config and state decode error goes through here.
/// Kept: the field path serde puts in front, what was expected (the program's words), numbers, and names of
/// fields (the keys of the user's mappings, which locate the problem). Removed: every double-quoted string (serde
/// writes strings with `{:?}`) and the text after ``unknown variant`` / ``character``.
pub fn redact_decode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    loop {
        let quote = rest.find('"');
        let tick = ["unknown variant `", "character `"]
            .iter()
            .filter_map(|lead| rest.find(lead).map(|i| i + lead.len() - 1))
            .min();
        let next = match (quote, tick) {
            (Some(q), Some(t)) if t < q => Some((t, '`')),
            (Some(q), _) => Some((q, '"')),
            (None, t) => t.map(|t| (t, '`')),
        };
        let Some((at, close)) = next else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at]);
        out.push_str(HIDDEN);
        rest = skip_quoted(&rest[at + 1..], close);
    }
}

/// The text after the closing `close` (backslash escapes honoured for `"`), or "" when it never closes.
fn skip_quoted(s: &str, close: char) -> &str {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            '\\' if close == '"' && !escaped => escaped = true,
            c if c == close && !escaped => return &s[i + c.len_utf8()..],
            _ => escaped = false,
        }
    }
    ""
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_lists_one_diagnostic_per_line() {
        let e = ConfigError::Invalid(vec![
            Diagnostic {
                origin: "cluster.yml".into(),
                position: Some(Position {
                    line: 12,
                    column: 9,
                }),
                message: "first".into(),
            },
            Diagnostic {
                origin: "cluster.yml".into(),
                position: None,
                message: "second".into(),
            },
        ]);
        assert_eq!(
            e.to_string(),
            "cluster.yml:12:9: first\ncluster.yml: second"
        );
    }

    #[test]
    fn decode_messages_lose_the_values_they_quote() {
        let key = "c2VjcmV0IGlzIHNlY3JldA==";
        let cases = [
            (
                format!("keys[0]: invalid type: string \"{key}\", expected struct Key"),
                "keys[0]: invalid type: string (value not shown), expected struct Key".to_string(),
            ),
            (
                format!("a: invalid value: string \"x\\\"{key}\", expected a boolean"),
                "a: invalid value: string (value not shown), expected a boolean".to_string(),
            ),
            (
                format!("stage: unknown variant `{key}`, expected one of `start`, `prepare`"),
                "stage: unknown variant (value not shown), expected one of `start`, `prepare`"
                    .to_string(),
            ),
            (
                format!("invalid type: character `{}`, expected a string", 'k'),
                "invalid type: character (value not shown), expected a string".to_string(),
            ),
            (
                "x: invalid type: integer `42`, expected a string".to_string(),
                "x: invalid type: integer `42`, expected a string".to_string(),
            ),
            (
                "missing field `name`".to_string(),
                "missing field `name`".to_string(),
            ),
            (
                format!("unterminated \"{key}"),
                format!("unterminated {HIDDEN}"),
            ),
        ];
        for (input, want) in cases {
            let got = redact_decode_message(&input);
            assert_eq!(got, want, "{input}");
            assert!(!got.contains(key), "{got}");
        }
    }
}
