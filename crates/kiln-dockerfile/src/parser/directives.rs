//! Parser directives (`# syntax=`, `# escape=`, `# check=`) at the top of a Dockerfile.

/// The directives of a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    /// The `syntax` directive's full value (`#`, `//` or JSON form, after an optional shebang).
    pub syntax: Option<String>,
    /// The escape character: `\` unless `# escape=` says `` ` ``.
    pub escape: char,
    /// The `check` directive's full value.
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Self {
            syntax: None,
            escape: '\\',
            check: None,
        }
    }
}

/// One directive as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// Lower-cased name.
    pub name: String,
    pub value: String,
    /// 1-based line.
    pub line: usize,
}

/// A directive found by [`detect_syntax`] or [`parse_directive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectiveMatch {
    /// The value up to the first space (`docker/dockerfile:1`).
    pub value: String,
    /// The whole value (`docker/dockerfile:1 // comment`).
    pub cmdline: String,
    /// 1-based line; the directive occupies exactly this line.
    pub line: usize,
}

const VALID: [&str; 3] = ["syntax", "escape", "check"];

/// Scans directive lines until the first line that is not one.
#[derive(Debug, Clone)]
pub(crate) struct DirectiveParser {
    prefix: &'static str,
    line: usize,
    done: bool,
    pub(crate) parsed: Vec<Directive>,
}

impl DirectiveParser {
    pub(crate) fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            line: 0,
            done: false,
            parsed: Vec::new(),
        }
    }

    /// Feeds the next physical line (without its newline).
    pub(crate) fn parse_line(&mut self, line: &str) -> Result<Option<&Directive>, String> {
        self.line += 1;
        if self.done {
            return Ok(None);
        }
        let Some((name, value)) = match_directive(line, self.prefix) else {
            self.done = true;
            return Ok(None);
        };
        let name = name.to_ascii_lowercase();
        if !VALID.contains(&name.as_str()) {
            self.done = true;
            return Ok(None);
        }
        if self.parsed.iter().any(|d| d.name == name) {
            return Err(format!("only one {name} parser directive can be used"));
        }
        self.parsed.push(Directive {
            name,
            value: value.to_string(),
            line: self.line,
        });
        Ok(self.parsed.last())
    }
}

/// Go's `\s`: ASCII whitespace without `\v`.
fn is_re_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{c}')
}

/// Matches `^<prefix>\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`.
fn match_directive<'a>(line: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let rest = line.strip_prefix(prefix)?.trim_start_matches(is_re_space);
    let name_len = rest
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_alphabetic() || (*i > 0 && c.is_ascii_digit())))
        .map_or(rest.len(), |(i, _)| i);
    if name_len == 0 {
        return None;
    }
    let (name, rest) = rest.split_at(name_len);
    let rest = rest.trim_start_matches(is_re_space).strip_prefix('=')?;
    // `.` does not match a newline; lines never contain one here.
    let value = rest.trim_matches(is_re_space);
    if value.is_empty() || value.contains('\n') {
        return None;
    }
    Some((name, value))
}

fn directive_from_parser(
    key: &str,
    source: &str,
    mut parser: DirectiveParser,
) -> Option<DirectiveMatch> {
    for line in source.split('\n') {
        if parser.done {
            break;
        }
        let line = line.strip_suffix('\r').unwrap_or(line);
        if parser.parse_line(line).is_err() {
            break;
        }
    }
    parser
        .parsed
        .into_iter()
        .find(|d| d.name == key)
        .map(|d| DirectiveMatch {
            value: d.value.split(' ').next().unwrap_or_default().to_string(),
            cmdline: d.value,
            line: d.line,
        })
}

/// Every `#` directive at the top of `source`, in order, until the first line that is not one.
pub fn parse_all(source: &str) -> Result<Vec<Directive>, String> {
    let mut parser = DirectiveParser::new("#");
    for line in source.split('\n') {
        if parser.done {
            break;
        }
        parser.parse_line(line.strip_suffix('\r').unwrap_or(line))?;
    }
    Ok(parser.parsed)
}

/// Drops a BOM and a `#!` first line, returning the rest and how many lines were dropped.
fn skip_preamble(source: &str) -> (&str, usize) {
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    if source.starts_with("#!") {
        match source.find('\n') {
            Some(i) => (&source[i + 1..], 1),
            None => ("", 1),
        }
    } else {
        (source, 0)
    }
}

fn with_offset(parser: DirectiveParser, offset: usize) -> DirectiveParser {
    DirectiveParser {
        line: offset,
        ..parser
    }
}

/// Finds directive `key` in `#` comments at the top of `source` (after an optional shebang).
pub fn parse_directive(key: &str, source: &str) -> Option<DirectiveMatch> {
    let (source, offset) = skip_preamble(source);
    directive_from_parser(key, source, with_offset(DirectiveParser::new("#"), offset))
}

/// Finds the `syntax` directive the way BuildKit picks a frontend: `#` comments, then `//`
/// comments, then a JSON object document with a `"syntax"` string member.
pub fn detect_syntax(source: &str) -> Option<DirectiveMatch> {
    if let Some(m) = parse_directive("syntax", source) {
        return Some(m);
    }
    let (body, offset) = skip_preamble(source);
    if let Some(m) = directive_from_parser(
        "syntax",
        body,
        with_offset(DirectiveParser::new("//"), offset),
    ) {
        return Some(m);
    }
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_str(body).ok()?;
    let value = json.get("syntax")?.as_str()?.to_string();
    Some(DirectiveMatch {
        value: value.clone(),
        cmdline: value,
        line: offset + 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_directive_lines() {
        assert_eq!(match_directive("# Escape = ` ", "#"), Some(("Escape", "`")));
        assert_eq!(match_directive("#syntax=a b", "#"), Some(("syntax", "a b")));
        assert_eq!(match_directive("# 1a=b", "#"), None);
        assert_eq!(match_directive("# a=", "#"), None);
        assert_eq!(match_directive("//a=b", "//"), Some(("a", "b")));
    }

    #[test]
    fn stops_at_first_non_directive() {
        let mut p = DirectiveParser::new("#");
        assert!(p.parse_line("# syntax=x").unwrap().is_some());
        assert!(p.parse_line("").unwrap().is_none());
        assert!(p.parse_line("# escape=`").unwrap().is_none());
        assert_eq!(p.parsed.len(), 1);
    }

    #[test]
    fn rejects_repeated_directive() {
        let mut p = DirectiveParser::new("#");
        p.parse_line("# check=a").unwrap();
        assert_eq!(
            p.parse_line("# CHECK=b").unwrap_err(),
            "only one check parser directive can be used"
        );
    }
}
