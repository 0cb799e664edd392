//! Reading a `.dockerignore` file into patterns, with the rules of patternmatcher's
//! `ignorefile.ReadAll`.

use crate::clean::clean;

/// One pattern read from a `.dockerignore`, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoreLine {
    pub line: usize,
    pub pattern: String,
}

/// Reads `.dockerignore` text into patterns: `#` comment lines (the `#` must be the first
/// character) and blank lines are skipped, whitespace is trimmed, and each pattern is cleaned
/// and made relative (one leading `/` removed). A `!` prefix is kept, so the result can be
/// passed to [`Matcher::new`](crate::Matcher::new).
pub fn read_patterns(content: &str) -> Vec<IgnoreLine> {
    let content = content.strip_prefix('\u{feff}').unwrap_or(content);
    let mut lines: Vec<&str> = content.split('\n').collect();
    // Like a line scanner, a final newline does not start another line.
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let mut out = Vec::new();
    for (i, line) in lines.into_iter().enumerate() {
        let line_no = i + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        if invert {
            cleaned.insert(0, '!');
        }
        out.push(IgnoreLine {
            line: line_no,
            pattern: cleaned,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(content: &str) -> Vec<String> {
        read_patterns(content)
            .into_iter()
            .map(|l| l.pattern)
            .collect()
    }

    #[test]
    fn keeps_line_numbers_of_kept_patterns() {
        let lines = read_patterns("# comment\n\n*.log\r\n  !keep.log  \n");
        assert_eq!(
            lines,
            vec![
                IgnoreLine {
                    line: 3,
                    pattern: "*.log".into()
                },
                IgnoreLine {
                    line: 4,
                    pattern: "!keep.log".into()
                },
            ]
        );
    }

    #[test]
    fn comment_must_start_the_line() {
        assert_eq!(patterns(" # not a comment"), vec!["# not a comment"]);
    }

    #[test]
    fn strips_bom_and_cleans() {
        assert_eq!(patterns("\u{feff}/a/../b/\n//c\n/"), vec!["b", "c", "/"]);
    }
}
