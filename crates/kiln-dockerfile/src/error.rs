//! Located errors and their rustc-style rendering.

use std::fmt::Write as _;

use crate::quote::go_quote;

/// Where an instruction (or an error about it) sits in the Dockerfile. All fields are 1-based;
/// `column` is the column of the instruction keyword on `start_line`, counted in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Location {
    pub start_line: usize,
    pub end_line: usize,
    pub column: usize,
}

impl Location {
    /// A location covering the lines `start..=end`, starting at column 1.
    pub fn lines(start: usize, end: usize) -> Self {
        Self {
            start_line: start,
            end_line: end,
            column: 1,
        }
    }
}

/// Errors of the Dockerfile parser and the shell-word lexer.
///
/// Messages follow BuildKit's wording (the conformance vectors compare them), so a few start
/// with a capital letter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text could not be split into instructions (directives, JSON, heredocs, ...).
    #[error("{message}")]
    Syntax { location: Location, message: String },
    /// An instruction was read but its arguments or flags are invalid.
    #[error("{message}")]
    Instruction { location: Location, message: String },
    /// Variable expansion of a word failed; the caller knows which instruction it came from.
    #[error("failed to process {}: {message}", go_quote(.word))]
    Expansion { word: String, message: String },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn syntax(location: Location, message: impl Into<String>) -> Self {
        Self::Syntax {
            location,
            message: message.into(),
        }
    }

    pub(crate) fn instruction(location: Location, message: impl Into<String>) -> Self {
        Self::Instruction {
            location,
            message: message.into(),
        }
    }

    /// The location the error points at, when it has one.
    pub fn location(&self) -> Option<Location> {
        match self {
            Self::Syntax { location, .. } | Self::Instruction { location, .. } => Some(*location),
            Self::Expansion { .. } => None,
        }
    }

    /// The message without location, as BuildKit words it.
    pub fn message(&self) -> String {
        match self {
            Self::Syntax { message, .. } | Self::Instruction { message, .. } => message.clone(),
            Self::Expansion { .. } => self.to_string(),
        }
    }

    /// Renders the error rustc-style with the offending source lines.
    pub fn render(&self, file_name: &str, source: &str) -> String {
        match self.location() {
            Some(location) => render_snippet(file_name, source, location, &self.message()),
            None => format!("error: {self}\n"),
        }
    }
}

/// How many source lines of one instruction a snippet shows before eliding the rest.
const MAX_SNIPPET_LINES: usize = 6;

/// Renders `message` rustc-style, pointing at `location` in `source`:
///
/// ```text
/// error: unknown instruction: FRUM (did you mean FROM?)
///  --> Dockerfile:3:1
///   |
/// 3 | FRUM busybox
///   | ^^^^
/// ```
///
/// The carets underline the word at the location's column. Lines that do not exist in `source`
/// are left out, so a stale location never panics.
pub fn render_snippet(file_name: &str, source: &str, location: Location, message: &str) -> String {
    let mut out = format!("error: {message}\n");
    let lines: Vec<&str> = source
        .strip_prefix('\u{feff}')
        .unwrap_or(source)
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let start = location.start_line;
    let end = location.end_line.max(start);
    let shown_end = end
        .min(start.saturating_add(MAX_SNIPPET_LINES - 1))
        .min(lines.len());
    let width = shown_end.max(start).to_string().len();
    let pad = " ".repeat(width);
    if start == 0 {
        let _ = writeln!(out, "{pad}--> {file_name}");
        return out;
    }
    let column = location.column.max(1);
    let _ = writeln!(out, "{pad}--> {file_name}:{start}:{column}");
    if start > lines.len() {
        return out;
    }
    let _ = writeln!(out, "{pad} |");
    for n in start..=shown_end {
        let text = lines[n - 1];
        let _ = writeln!(
            out,
            "{}",
            format!("{n:>width$} | {}", expand_tabs(text)).trim_end()
        );
        if n == start {
            let _ = writeln!(out, "{pad} | {}", carets(text, column));
        }
    }
    if shown_end < end {
        let _ = writeln!(out, "{pad} | ...");
    }
    out
}

fn expand_tabs(s: &str) -> String {
    s.replace('\t', "    ")
}

/// Spaces up to `column`, then one caret per character of the word found there.
fn carets(line: &str, column: usize) -> String {
    // Columns are 1-based; a caller-made location may say 0, which means the line's start.
    let column = column.max(1);
    let chars: Vec<char> = line.chars().collect();
    let before: usize = chars
        .iter()
        .take(column - 1)
        .map(|c| if *c == '\t' { 4 } else { 1 })
        .sum();
    let word = chars
        .iter()
        .skip(column - 1)
        .take_while(|c| !c.is_whitespace())
        .count()
        .max(1);
    format!("{}{}", " ".repeat(before), "^".repeat(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_zero_points_at_the_line_start() {
        assert_eq!(carets("FROM x", 0), "^^^^");
    }

    #[test]
    fn renders_single_line() {
        let src = "FROM a\n\nFRUM busybox\n";
        let got = render_snippet("Dockerfile", src, Location::lines(3, 3), "bad");
        assert_eq!(
            got,
            "error: bad\n --> Dockerfile:3:1\n  |\n3 | FRUM busybox\n  | ^^^^\n"
        );
    }

    #[test]
    fn renders_indented_multi_line() {
        let src = "\tRUN a \\\n  b\n";
        let loc = Location {
            start_line: 1,
            end_line: 2,
            column: 2,
        };
        let got = render_snippet("x", src, loc, "m");
        assert_eq!(
            got,
            "error: m\n --> x:1:2\n  |\n1 |     RUN a \\\n  |     ^^^\n2 |   b\n"
        );
    }

    #[test]
    fn out_of_range_locations_do_not_panic() {
        let got = render_snippet("x", "", Location::lines(9, 12), "m");
        assert_eq!(got, "error: m\n --> x:9:1\n");
        let got = render_snippet("x", "a", Location::default(), "m");
        assert_eq!(got, "error: m\n --> x\n");
    }

    #[test]
    fn expansion_errors_render_without_snippet() {
        let err = Error::Expansion {
            word: "${a".into(),
            message: "boom".into(),
        };
        assert_eq!(
            err.render("f", ""),
            "error: failed to process \"${a\": boom\n"
        );
    }
}
