//! The syntax layer: Dockerfile text to a [`Node`] tree, as BuildKit's parser builds it.
//!
//! Handles directives, comments, line continuations, heredocs, flags and per-instruction
//! argument shapes. It knows nothing about what instructions mean; see [`crate::instructions`].

pub mod directives;
pub mod heredoc;
pub mod line_parsers;

use std::fmt;

use crate::error::{Error, Location, Result};
use crate::quote::go_quote;
use directives::{DirectiveParser, Directives};
pub use heredoc::Heredoc;

/// BuildKit's limit for one physical line (its line scanner's buffer size).
pub const MAX_LINE_LEN: usize = 65535;

/// ONBUILD may nest instructions; deeper nesting than this is refused before it can exhaust the
/// stack (BuildKit rejects any nesting when converting instructions anyway).
const MAX_NESTING: usize = 16;

/// One node of the AST, shaped like BuildKit's `parser.Node`.
///
/// An instruction node has its keyword in `value`, its flags, and a chain of argument nodes in
/// `next`. The ONBUILD argument node holds no value but one child: the wrapped instruction.
#[derive(Default)]
pub struct Node {
    pub value: String,
    pub next: Option<Box<Node>>,
    pub children: Vec<Node>,
    pub heredocs: Vec<Heredoc>,
    /// BuildKit's `json` attribute: the arguments were written as a JSON array (exec form).
    pub json: bool,
    /// The logical line: physical lines joined with continuations and comments removed.
    pub original: String,
    /// Flag words (`--from=x`) with quotes and escapes already processed.
    pub flags: Vec<String>,
    /// 1-based first physical line, including for the root node.
    pub start_line: usize,
    /// 1-based last physical line consumed, including heredoc bodies.
    pub end_line: usize,
    /// The column of the keyword on `start_line`, 1-based.
    pub column: usize,
    /// Comment lines directly above the instruction (without `#`).
    pub prev_comment: Vec<String>,
}

impl Node {
    /// A node holding only a value.
    pub fn leaf(value: String) -> Self {
        let mut node = Self::default();
        node.value = value;
        node
    }

    /// An instruction node with keyword `value` and plain string arguments, as in the dump.
    pub fn with_args<I, S>(value: &str, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut node = Self::leaf(value.to_string());
        node.set_args(args.into_iter().map(|s| Self::leaf(s.into())).collect());
        node
    }

    /// Replaces the argument chain.
    pub fn set_args(&mut self, args: Vec<Node>) {
        let mut next = None;
        for mut arg in args.into_iter().rev() {
            arg.next = next;
            next = Some(Box::new(arg));
        }
        self.next = next;
    }

    /// The argument nodes, in order.
    pub fn args(&self) -> impl Iterator<Item = &Node> {
        std::iter::successors(self.next.as_deref(), |n| n.next.as_deref())
    }

    /// The span of this node.
    pub fn location(&self) -> Location {
        Location {
            start_line: self.start_line,
            end_line: self.end_line,
            column: self.column.max(1),
        }
    }

    /// BuildKit's AST dump, e.g. `(copy ["--from=a"] "x" "/y")` per instruction.
    pub fn dump(&self) -> String {
        let mut s: String = self.value.chars().flat_map(char::to_lowercase).collect();
        if !self.flags.is_empty() {
            let flags: Vec<String> = self.flags.iter().map(|f| go_quote(f)).collect();
            s.push_str(&format!(" [{}]", flags.join(" ")));
        }
        for child in &self.children {
            s.push('(');
            s.push_str(&child.dump());
            s.push_str(")\n");
        }
        for arg in self.args() {
            s.push(' ');
            if arg.children.is_empty() {
                s.push_str(&go_quote(&arg.value));
            } else {
                s.push_str(&arg.dump());
            }
        }
        s.trim().to_string()
    }

    fn shallow_clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            next: None,
            children: self.children.clone(),
            heredocs: self.heredocs.clone(),
            json: self.json,
            original: self.original.clone(),
            flags: self.flags.clone(),
            start_line: self.start_line,
            end_line: self.end_line,
            column: self.column,
            prev_comment: self.prev_comment.clone(),
        }
    }
}

// Clone, Debug and Drop walk the argument chain iteratively: an instruction can have millions of
// arguments and the derived versions would recurse once per argument.
impl Clone for Node {
    fn clone(&self) -> Self {
        let mut node = self.shallow_clone();
        node.set_args(self.args().map(Node::shallow_clone).collect());
        node
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let mut next = self.next.take();
        while let Some(mut n) = next {
            next = n.next.take();
        }
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let args: Vec<String> = self
            .args()
            .map(|a| {
                if a.children.is_empty() {
                    go_quote(&a.value)
                } else {
                    a.dump()
                }
            })
            .collect();
        f.debug_struct("Node")
            .field("value", &self.value)
            .field("flags", &self.flags)
            .field("args", &args)
            .field("children", &self.children)
            .field("json", &self.json)
            .field("heredocs", &self.heredocs)
            .field("lines", &(self.start_line..=self.end_line))
            .finish()
    }
}

/// A parser warning, e.g. an empty continuation line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub location: Location,
    pub message: String,
    /// Longer explanation, as BuildKit's warning detail.
    pub detail: String,
}

/// The output of the syntax layer.
#[derive(Debug, Clone)]
pub struct ParseResult {
    /// Root node; its children are the instructions in file order.
    pub ast: Node,
    pub directives: Directives,
    /// Every directive recognised by the `#` scanner, in order.
    pub directive_list: Vec<directives::Directive>,
    pub warnings: Vec<Warning>,
}

/// Physical lines with their newlines, counted.
struct Lines<'a> {
    rest: &'a str,
    line: usize,
}

impl<'a> Lines<'a> {
    fn next_line(&mut self) -> Result<Option<&'a str>> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let end = self.rest.find('\n').map_or(self.rest.len(), |i| i + 1);
        let (line, rest) = self.rest.split_at(end);
        self.line += 1;
        if line.strip_suffix('\n').unwrap_or(line).len() > MAX_LINE_LEN {
            return Err(Error::syntax(
                Location::lines(self.line, self.line),
                format!("dockerfile line greater than max allowed size of {MAX_LINE_LEN}"),
            ));
        }
        self.rest = rest;
        Ok(Some(line))
    }
}

/// Escape character plus directive scanning state while parsing.
struct State {
    escape: char,
    directives: DirectiveParser,
}

impl State {
    /// Trims the newline (and leading whitespace of a first line), feeds the directive scanner
    /// and blanks out comment lines.
    fn process_line<'a>(&mut self, raw: &'a str, strip_left: bool, line: usize) -> Result<&'a str> {
        let mut token = trim_newline(raw);
        if strip_left {
            token = token.trim_start();
        }
        let directive = self
            .directives
            .parse_line(token)
            .map_err(|m| Error::syntax(Location::lines(line, line), m))?
            .cloned();
        if let Some(d) = directive.filter(|d| d.name == "escape") {
            self.escape = match d.value.as_str() {
                "`" => '`',
                "\\" => '\\',
                v => {
                    return Err(Error::syntax(
                        Location::lines(line, line),
                        format!("invalid escape token '{v}' does not match ` or \\"),
                    ));
                }
            };
        }
        Ok(if is_comment(token) { "" } else { token })
    }
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn is_comment(line: &str) -> bool {
    trim_newline(line).trim_start().starts_with('#')
}

/// Removes a trailing line-continuation escape (plus blanks after it) unless the escape is
/// itself escaped. Returns the line and whether the instruction ends here.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    if let Some(before) = t.strip_suffix(escape) {
        if before.is_empty() {
            return ("", false);
        }
        if !before.ends_with(escape) {
            return (before, false);
        }
    }
    (line, true)
}

/// Tracks ONBUILD nesting.
#[derive(Clone, Copy)]
pub(crate) struct NodeDepth(usize);

impl NodeDepth {
    pub(crate) fn deeper(self) -> std::result::Result<Self, String> {
        if self.0 >= MAX_NESTING {
            return Err("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".to_string());
        }
        Ok(Self(self.0 + 1))
    }
}

/// Splits off the keyword and the flags, returning `(keyword, flags, arguments)`.
fn split_command(line: &str, escape: char) -> (String, Vec<String>, String) {
    let line = line.trim();
    match line.find(line_parsers::is_ws) {
        None => (line.to_string(), Vec::new(), String::new()),
        Some(i) => {
            let rest = line[i..].trim_start_matches(line_parsers::is_ws);
            let (args, flags) = extract_builder_flags(rest, escape);
            (line[..i].to_string(), flags, args.trim().to_string())
        }
    }
}

/// Takes the leading `--flag[=value]` words off `line`; quotes are removed and the escape
/// character escapes within flags. A bare `--` ends the flags and is dropped.
pub fn extract_builder_flags(line: &str, escape: char) -> (String, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let byte_at = |pos: usize| chars.get(pos).map_or(line.len(), |(b, _)| *b);
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut pos = 0;
    while pos <= chars.len() {
        let ch = chars.get(pos).map(|(_, c)| *c);
        if phase == Phase::Spaces {
            let Some(c) = ch else { break };
            if c.is_whitespace() {
                pos += 1;
                continue;
            }
            let next_is_dash = chars.get(pos + 1).is_some_and(|(_, c)| *c == '-');
            if c != '-' || !next_is_dash {
                return (line[byte_at(pos)..].to_string(), words);
            }
            phase = Phase::Word;
        }
        let Some(mut ch) = ch else {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            break;
        };
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if word == "--" {
                    return (line[byte_at(pos)..].to_string(), words);
                }
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                pos += 1;
                continue;
            }
            if ch == escape {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                pos += 1;
                ch = chars[pos].1;
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
            pos += 1;
            continue;
        }
        if ch == escape {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            ch = chars[pos].1;
        }
        word.push(ch);
        pos += 1;
    }
    (String::new(), words)
}

/// Builds the node of one logical line (BuildKit's `newNodeFromLine`).
pub(crate) fn new_node_from_line(
    line: &str,
    escape: char,
    comments: Vec<String>,
    depth: NodeDepth,
) -> std::result::Result<Node, String> {
    use line_parsers as lp;
    let (keyword, flags, rest) = split_command(line, escape);
    let parsed = match keyword.to_lowercase().as_str() {
        "add" | "copy" | "volume" => lp::parse_maybe_json_to_list(&rest)?,
        "arg" => lp::parse_name_or_name_val(&rest, escape),
        "cmd" | "entrypoint" | "run" | "shell" => lp::parse_maybe_json(&rest)?,
        "env" => lp::parse_name_val(&rest, "ENV", escape)?,
        "label" => lp::parse_name_val(&rest, "LABEL", escape)?,
        "expose" | "from" => lp::parse_strings_whitespace_delimited(&rest),
        "healthcheck" => lp::parse_health_config(&rest)?,
        "maintainer" | "stopsignal" | "user" | "workdir" => lp::parse_string(&rest),
        "onbuild" => lp::parse_sub_command(&rest, escape, depth)?,
        // Unknown instructions keep one empty argument; the instruction layer rejects them.
        _ => lp::Parsed {
            args: vec![Node::default()],
            json: false,
        },
    };
    let mut node = Node::leaf(keyword);
    node.original = line.to_string();
    node.flags = flags;
    node.json = parsed.json;
    node.prev_comment = comments;
    node.set_args(parsed.args);
    Ok(node)
}

impl Node {
    /// Whether heredocs are read after this instruction (RUN/COPY/ADD in shell form, also
    /// wrapped in ONBUILD).
    fn can_contain_heredoc(&self) -> bool {
        let mut node = self;
        if node.value.eq_ignore_ascii_case("onbuild")
            && let Some(child) = node.next.as_deref().and_then(|n| n.children.first())
        {
            node = child;
        }
        let kw = node.value.to_ascii_lowercase();
        matches!(kw.as_str(), "add" | "copy" | "run") && !node.json
    }
}

/// Parses Dockerfile text into the AST.
pub fn parse(source: &str) -> Result<ParseResult> {
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    let mut lines = Lines {
        rest: source,
        line: 0,
    };
    let mut state = State {
        escape: '\\',
        directives: DirectiveParser::new("#"),
    };
    let mut root = Node::default();
    let mut children = Vec::new();
    let mut warnings = Vec::new();
    let mut comments: Vec<String> = Vec::new();

    while let Some(raw) = lines.next_line()? {
        let start_line = lines.line;
        if is_comment(raw) {
            let text = trim_newline(raw).trim_start();
            let comment = text[1..].trim();
            if comment.is_empty() {
                comments.clear();
            } else {
                comments.push(comment.to_string());
            }
        }
        let first = state.process_line(raw, true, start_line)?;
        let column = raw.chars().take_while(|c| c.is_whitespace()).count() + 1;
        let (first, mut end_of_line) = trim_continuation(first, state.escape);
        if end_of_line && first.is_empty() {
            continue;
        }
        let mut line = first.to_string();
        let mut has_empty_continuation = false;
        while !end_of_line {
            let Some(raw) = lines.next_line()? else { break };
            let processed = state.process_line(raw, false, lines.line)?;
            if is_comment(raw) {
                continue;
            }
            if processed.trim_start().is_empty() {
                has_empty_continuation = true;
                continue;
            }
            let (cont, eol) = trim_continuation(processed, state.escape);
            line.push_str(cont);
            end_of_line = eol;
        }
        if has_empty_continuation {
            warnings.push(Warning {
                location: Location {
                    start_line,
                    end_line: lines.line,
                    column,
                },
                message: format!("Empty continuation line found in: {line}"),
                detail: "Empty continuation lines will become errors in a future release"
                    .to_string(),
            });
        }

        let location = |end: usize| Location {
            start_line,
            end_line: end,
            column,
        };
        let mut child = new_node_from_line(
            &line,
            state.escape,
            std::mem::take(&mut comments),
            NodeDepth(0),
        )
        .map_err(|m| Error::syntax(location(lines.line), m))?;

        if child.can_contain_heredoc() && line.contains("<<") {
            let heredocs = heredoc::heredocs_from_line(&line)
                .map_err(|m| Error::syntax(location(lines.line), m))?;
            for mut doc in heredocs {
                let mut terminated = false;
                while let Some(raw) = lines.next_line()? {
                    let mut candidate = trim_newline(raw);
                    if doc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == doc.name {
                        terminated = true;
                        break;
                    }
                    doc.content.push_str(raw);
                }
                if !terminated {
                    return Err(Error::syntax(location(lines.line), "unterminated heredoc"));
                }
                child.heredocs.push(doc);
            }
        }
        child.start_line = start_line;
        child.end_line = lines.line;
        child.column = column;
        children.push(child);
    }

    let (Some(first), Some(last)) = (children.first(), children.last()) else {
        // A file-level error: no line to point at.
        return Err(Error::syntax(
            Location::default(),
            "file with no instructions",
        ));
    };
    root.start_line = first.start_line;
    root.end_line = last.end_line;
    root.column = 1;
    root.children = children;

    let directive_list = state.directives.parsed;
    let directives = Directives {
        syntax: directives::detect_syntax(source).map(|m| m.cmdline),
        escape: state.escape,
        check: directives::parse_directive("check", source).map(|m| m.cmdline),
    };
    Ok(ParseResult {
        ast: root,
        directives,
        directive_list,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(src: &str) -> String {
        parse(src).unwrap().ast.dump()
    }

    #[test]
    fn continuation_rules() {
        assert_eq!(trim_continuation("a \\  ", '\\'), ("a ", false));
        assert_eq!(trim_continuation("a\\\\", '\\'), ("a\\\\", true));
        assert_eq!(trim_continuation(" \t\\", '\\'), (" \t", false));
        assert_eq!(trim_continuation("\\", '\\'), ("", false));
        assert_eq!(trim_continuation("a`", '`'), ("a", false));
    }

    #[test]
    fn flags_are_extracted() {
        let (rest, flags) = extract_builder_flags("--a=\"x y\" --b -- --c d", '\\');
        assert_eq!(flags, ["--a=x y", "--b"]);
        assert_eq!(rest, " --c d");
        let (rest, flags) = extract_builder_flags("--é=ü x", '\\');
        assert_eq!((rest.as_str(), flags), ("x", vec!["--é=ü".to_string()]));
    }

    #[test]
    fn dumps_onbuild_and_flags() {
        assert_eq!(
            dump("ONBUILD RUN --x=1 a"),
            "(onbuild (run [\"--x=1\"] \"a\"))"
        );
    }

    #[test]
    fn crlf_and_bom() {
        assert_eq!(
            dump("\u{feff}FROM a\r\nRUN b \\\r\n c\r\n"),
            "(from \"a\")\n(run \"b  c\")"
        );
    }

    #[test]
    fn heredoc_lines_count_toward_the_instruction() {
        let r = parse("RUN <<A <<-B\nx\nA\n\ty\n\tB\nRUN c\n").unwrap();
        let run = &r.ast.children[0];
        assert_eq!((run.start_line, run.end_line), (1, 5));
        assert_eq!(run.heredocs[1].content, "\ty\n");
        assert_eq!(r.ast.children[1].start_line, 6);
    }

    #[test]
    fn unterminated_heredoc() {
        let err = parse("RUN <<A\nx\n").unwrap_err();
        assert_eq!(err.to_string(), "unterminated heredoc");
        assert_eq!(
            err.location(),
            Some(Location {
                start_line: 1,
                end_line: 2,
                column: 1
            })
        );
    }

    #[test]
    fn escape_directive() {
        let r = parse("# escape=`\nRUN a `\n b\\\n").unwrap();
        assert_eq!(r.ast.dump(), "(run \"a  b\\\\\")");
        assert_eq!(r.directives.escape, '`');
        assert!(parse("# escape=x\nFROM a").is_err());
    }

    #[test]
    fn deep_onbuild_and_long_arg_lists_do_not_overflow() {
        let src = format!("{}RUN x", "ONBUILD ".repeat(1000));
        assert!(parse(&src).is_err());
        let src = format!("EXPOSE {}", "1 \\\n".repeat(300_000));
        let r = parse(&src).unwrap();
        assert_eq!(r.ast.children[0].args().count(), 300_000);
        let copy = r.ast.clone();
        drop(r);
        assert_eq!(copy.children[0].args().count(), 300_000);
    }
}
