//! Diagnostics: what went wrong while loading policies, schema or entities.
//!
//! Every [`Diagnostic`] names its file and, where the format allows, the line
//! and column, and carries a rendering with the offending source line the way
//! `rustc` and `cedar-policy-cli` show it. Cedar's own errors arrive as
//! [`miette::Diagnostic`]s with byte offsets; this module turns them into
//! positions in a named file.

use std::fmt;
use std::path::{Path, PathBuf};

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceCode};
use serde::Serialize;

/// How serious a diagnostic is: errors stop a load, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in the user's files.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file the problem is in, when it is in one file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// 1-based line, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// 1-based column (in characters), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// The message on one line, causes included.
    pub message: String,
    /// The full rendering, with the source excerpt where there is one.
    #[serde(skip)]
    pub rendered: String,
}

impl Diagnostic {
    /// A diagnostic with no source excerpt: `file` (and `line`, `column`) when known.
    pub fn plain(
        file: Option<&Path>,
        position: Option<(usize, usize)>,
        message: impl Into<String>,
    ) -> Self {
        let mut d = Diagnostic {
            severity: Severity::Error,
            file: file.map(Path::to_path_buf),
            line: position.map(|p| p.0),
            column: position.map(|p| p.1),
            message: message.into(),
            rendered: String::new(),
        };
        d.rendered = format!("error: {}\n  --> {}", d.message, d.location());
        d
    }

    /// A diagnostic from one of Cedar's errors whose labels are byte offsets
    /// into `source`, the text of `file`.
    pub fn from_miette(file: &Path, source: &str, err: &dyn miette::Diagnostic) -> Self {
        let position = err
            .labels()
            .and_then(|mut labels| labels.next())
            .map(|label| line_col(source, label.offset()));
        let named = NamedSource::new(file.display().to_string(), source.to_string());
        let wrapped = WithSource {
            inner: err,
            source: named,
        };
        let mut rendered = String::new();
        let handler =
            GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor()).with_width(100);
        if handler.render_report(&mut rendered, &wrapped).is_err() {
            rendered = err.to_string();
        }
        let mut d = Diagnostic {
            severity: Severity::Error,
            file: Some(file.to_path_buf()),
            line: position.map(|p| p.0),
            column: position.map(|p| p.1),
            message: one_line(err),
            rendered: String::new(),
        };
        d.rendered = format!("{}\n{}", d.location(), rendered.trim_end());
        d
    }

    /// Cedar's error with no file to point into (e.g. a schema that only
    /// fails once its files are combined).
    pub fn from_error(file: Option<&Path>, err: &dyn miette::Diagnostic) -> Self {
        let mut d = Self::plain(file, None, one_line(err));
        if let Some(help) = err.help() {
            d.rendered.push_str(&format!("\n  help: {help}"));
        }
        d
    }

    pub fn warning(mut self) -> Self {
        self.severity = Severity::Warning;
        if let Some(rest) = self.rendered.strip_prefix("error:") {
            self.rendered = format!("warning:{rest}");
        }
        self
    }

    /// `file:line:col`, `file`, or `<input>` when no file is known.
    pub fn location(&self) -> String {
        match (&self.file, self.line, self.column) {
            (Some(f), Some(l), Some(c)) => format!("{}:{l}:{c}", f.display()),
            (Some(f), Some(l), None) => format!("{}:{l}", f.display()),
            (Some(f), None, _) => f.display().to_string(),
            (None, _, _) => "<input>".to_string(),
        }
    }

    /// `file:line:col: message` on one line, for logs and status endpoints.
    pub fn summary(&self) -> String {
        format!("{}: {}", self.location(), self.message)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rendered)
    }
}

/// The diagnostics of a failed load; at least one is an error.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error)
    }
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Error)
    }
    /// The first error on one line (`file:line:col: message`).
    pub fn first_summary(&self) -> String {
        self.errors()
            .next()
            .map(Diagnostic::summary)
            .unwrap_or_default()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(f, "{d}")?;
        }
        let errors = self.errors().count();
        let warnings = self.0.len() - errors;
        write!(f, "{errors} error(s), {warnings} warning(s)")
    }
}

impl std::error::Error for Diagnostics {}

/// The message of `err` and of its causes, joined on one line.
pub fn one_line(err: &dyn miette::Diagnostic) -> String {
    let mut msg = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cause = c.source();
    }
    if let Some(help) = err.help() {
        msg.push_str(&format!(" (help: {help})"));
    }
    msg
}

/// 1-based line and column (in characters) of a byte offset in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A Cedar diagnostic shown against a named file's text.
struct WithSource<'a> {
    inner: &'a dyn miette::Diagnostic,
    source: NamedSource<String>,
}

impl fmt::Debug for WithSource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.inner, f)
    }
}

impl fmt::Display for WithSource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.inner, f)
    }
}

impl std::error::Error for WithSource<'_> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source()
    }
}

impl miette::Diagnostic for WithSource<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.inner.code()
    }
    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.inner.help()
    }
    fn url<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.inner.url()
    }
    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(&self.source)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.inner.labels()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_lines_and_characters() {
        let text = "ab\ncdé\nxyz";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 3), (2, 1));
        assert_eq!(line_col(text, 8), (3, 1));
        assert_eq!(line_col(text, 9), (3, 2));
        assert_eq!(line_col(text, 100), (3, 4));
    }

    #[test]
    fn plain_diagnostic_names_file_line_and_column() {
        let d = Diagnostic::plain(Some(Path::new("a/b.json")), Some((3, 7)), "bad");
        assert_eq!(d.summary(), "a/b.json:3:7: bad");
        assert!(d.rendered.contains("--> a/b.json:3:7"));
    }
}
