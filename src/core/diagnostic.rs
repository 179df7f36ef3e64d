//! Config diagnostics: one message, where it points in the file, and an optional suggestion.
//!
//! Diagnostics are collected, never thrown one at a time: `Diagnostics` holds every problem found
//! in a config so a user fixes them all in one round.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    /// Byte range in the config text, when the problem has a place.
    pub span: Option<Range<usize>>,
    /// A suggestion shown on its own line, e.g. "did you mean `bins`?".
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>, span: Option<Range<usize>>) -> Self {
        Diagnostic {
            message: message.into(),
            span,
            help: None,
        }
    }

    pub fn with_help(mut self, help: Option<String>) -> Self {
        self.help = help;
        self
    }
}

/// Every problem found in one config file; rendered like a compiler's errors.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    pub path: PathBuf,
    pub source: String,
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn new(path: &Path, source: &str) -> Self {
        Diagnostics {
            path: path.to_path_buf(),
            source: source.to_string(),
            items: Vec::new(),
        }
    }

    pub fn push(&mut self, diagnostic: Diagnostic) {
        if !self.items.contains(&diagnostic) {
            self.items.push(diagnostic);
        }
    }

    pub fn error(&mut self, message: impl Into<String>, span: Option<Range<usize>>) {
        self.push(Diagnostic::new(message, span));
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let before = &self.source[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    fn sorted(&self) -> Vec<&Diagnostic> {
        let mut items: Vec<&Diagnostic> = self.items.iter().collect();
        items.sort_by_key(|d| d.span.as_ref().map_or(usize::MAX, |s| s.start));
        items
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sorted = self.sorted();
        for (i, diagnostic) in sorted.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(f, "error: {}", diagnostic.message)?;
            match &diagnostic.span {
                Some(span) => {
                    let (line, col) = self.line_col(span.start);
                    writeln!(f, "  --> {}:{}:{}", self.path.display(), line, col)?;
                    let text = self.source.lines().nth(line - 1).unwrap_or("");
                    let width = self.source[span.clone()]
                        .lines()
                        .next()
                        .map_or(1, |s| s.chars().count().max(1));
                    let gutter = " ".repeat(line.to_string().len());
                    writeln!(f, "{gutter} |")?;
                    writeln!(f, "{line} | {text}")?;
                    writeln!(
                        f,
                        "{gutter} | {}{}",
                        " ".repeat(col - 1),
                        "^".repeat(width.min(text.chars().count().saturating_sub(col - 1).max(1)))
                    )?;
                }
                None => writeln!(f, "  --> {}", self.path.display())?,
            }
            if let Some(help) = &diagnostic.help {
                writeln!(f, "  = help: {help}")?;
            }
        }
        let count = self.items.len();
        write!(
            f,
            "\n{} error{} in `{}`",
            count,
            if count == 1 { "" } else { "s" },
            self.path.display()
        )
    }
}

impl std::error::Error for Diagnostics {}

/// The nearest candidate to a misspelt name, when it is close enough to be a likely typo.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    candidates
        .into_iter()
        .map(|candidate| (strsim::levenshtein(name, candidate), candidate))
        .filter(|(distance, candidate)| {
            *distance < 3 || (candidate.len() > 4 && strsim::jaro_winkler(name, candidate) > 0.88)
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| format!("did you mean `{candidate}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let keys = ["bins", "monetary", "granularity"];
        assert_eq!(suggest("bns", keys).as_deref(), Some("did you mean `bins`?"));
        assert_eq!(
            suggest("granularty", keys).as_deref(),
            Some("did you mean `granularity`?")
        );
        assert_eq!(suggest("zzzzzz", keys), None);
    }

    #[test]
    fn renders_file_line_column_and_caret() {
        let source = "[pipeline]\nnmae = \"x\"\n";
        let mut diagnostics = Diagnostics::new(Path::new("c.toml"), source);
        diagnostics.push(
            Diagnostic::new("unknown key `nmae` in `[pipeline]`", Some(11..15))
                .with_help(Some("did you mean `name`?".into())),
        );
        let text = diagnostics.to_string();
        assert!(text.contains("error: unknown key `nmae` in `[pipeline]`"), "{text}");
        assert!(text.contains("--> c.toml:2:1"), "{text}");
        assert!(text.contains("2 | nmae = \"x\""), "{text}");
        assert!(text.contains("  | ^^^^"), "{text}");
        assert!(text.contains("= help: did you mean `name`?"), "{text}");
        assert!(text.ends_with("1 error in `c.toml`"), "{text}");
    }
}
