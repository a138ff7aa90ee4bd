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
}
