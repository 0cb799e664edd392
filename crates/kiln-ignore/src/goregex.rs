//! Translation of the Go (RE2) regular expressions that patternmatcher builds into equivalent
//! Rust `regex` syntax. The two dialects differ exactly where raw pattern text can reach the
//! expression: inside classes (`[` is literal in Go, nested in Rust; `&&`, `--`, `~~` are set
//! operators in Rust), in escapes (`\Q…\E`, octal, `\x`), and in `\d`, `\s`, `\w`, `\b`, which
//! are ASCII in Go and Unicode in Rust. Parsing the Go syntax and emitting explicit ranges keeps
//! the meaning of the reference instead of the accidental meaning of the text in Rust.

use std::fmt::Write as _;

/// One member of a character class.
#[derive(Debug, Clone)]
enum Item {
    Range(u32, u32),
    /// A Unicode property, negated or not (`\p{Greek}`, `\P{L}`).
    Property(String, bool),
}

const MAX_RUNE: u32 = 0x10FFFF;

type Ranges = &'static [(u32, u32)];

// Go's Perl and POSIX classes are ASCII-only.
const DIGIT: Ranges = &[(0x30, 0x39)];
const SPACE_PERL: Ranges = &[(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)];
const WORD: Ranges = &[(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)];

fn perl_group(c: char) -> Option<(Ranges, bool)> {
    Some(match c {
        'd' => (DIGIT, false),
        'D' => (DIGIT, true),
        's' => (SPACE_PERL, false),
        'S' => (SPACE_PERL, true),
        'w' => (WORD, false),
        'W' => (WORD, true),
        _ => return None,
    })
}

fn posix_group(name: &str) -> Option<Ranges> {
    Some(match name {
        "alnum" => &[(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)],
        "alpha" => &[(0x41, 0x5A), (0x61, 0x7A)],
        "ascii" => &[(0x00, 0x7F)],
        "blank" => &[(0x09, 0x09), (0x20, 0x20)],
        "cntrl" => &[(0x00, 0x1F), (0x7F, 0x7F)],
        "digit" => DIGIT,
        "graph" => &[(0x21, 0x7E)],
        "lower" => &[(0x61, 0x7A)],
        "print" => &[(0x20, 0x7E)],
        "punct" => &[(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
        "space" => &[(0x09, 0x0D), (0x20, 0x20)],
        "upper" => &[(0x41, 0x5A)],
        "word" => WORD,
        "xdigit" => &[(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
        _ => return None,
    })
}

/// Adds `ranges` (or their complement) to a class.
fn push_group(items: &mut Vec<Item>, ranges: Ranges, negated: bool) {
    if !negated {
        items.extend(ranges.iter().map(|&(lo, hi)| Item::Range(lo, hi)));
        return;
    }
    let mut next = 0;
    for &(lo, hi) in ranges {
        if lo > next {
            items.push(Item::Range(next, lo - 1));
        }
        next = hi + 1;
    }
    if next <= MAX_RUNE {
        items.push(Item::Range(next, MAX_RUNE));
    }
}

/// Renders a class in Rust syntax. Surrogates are not characters in Rust, and no `&str` holds
/// one, so they are cut out of ranges.
fn render_class(items: &[Item], negated: bool) -> String {
    let mut body = String::new();
    for item in items {
        match item {
            Item::Range(lo, hi) => {
                for (lo, hi) in [(*lo, (*hi).min(0xD7FF)), ((*lo).max(0xE000), *hi)] {
                    if lo <= hi {
                        let _ = write!(body, "\\x{{{lo:X}}}-\\x{{{hi:X}}}");
                    }
                }
            }
            Item::Property(name, neg) => {
                let _ = write!(body, "\\{}{{{name}}}", if *neg { 'P' } else { 'p' });
            }
        }
    }
    match (body.is_empty(), negated) {
        // Rust has no empty class syntax; these are "nothing" and "anything".
        (true, false) => format!("[^\\x00-\\x{{{MAX_RUNE:X}}}]"),
        (true, true) => format!("[\\x00-\\x{{{MAX_RUNE:X}}}]"),
        (false, false) => format!("[{body}]"),
        (false, true) => format!("[^{body}]"),
    }
}

fn render_literal(c: u32) -> String {
    match char::from_u32(c) {
        Some(ch) if ch.is_alphanumeric() => ch.to_string(),
        Some(_) => format!("\\x{{{c:X}}}"),
        // A surrogate literal matches no text.
        None => render_class(&[], false),
    }
}

struct Parser<'a> {
    s: &'a [char],
    pos: usize,
}

type Result<T> = std::result::Result<T, String>;

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.s.get(self.pos + n).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn rest(&self) -> &[char] {
        &self.s[self.pos..]
    }

    /// Go's `parseEscape`: a single escaped character; the `\` is next.
    fn escape(&mut self) -> Result<u32> {
        self.bump();
        let c = self
            .bump()
            .ok_or("trailing backslash at end of expression")?;
        let is_octal = |c: Option<char>| matches!(c, Some('0'..='7'));
        match c {
            c if c.is_ascii() && !c.is_ascii_alphanumeric() => Ok(c as u32),
            '1'..='7' if !is_octal(self.peek()) => Err(format!("invalid escape sequence `\\{c}`")),
            '0'..='7' => {
                let mut r = c as u32 - '0' as u32;
                for _ in 1..3 {
                    match self.peek() {
                        Some(d @ '0'..='7') => {
                            r = r * 8 + (d as u32 - '0' as u32);
                            self.pos += 1;
                        }
                        _ => break,
                    }
                }
                Ok(r)
            }
            'x' => self.hex_escape(),
            'a' => Ok(0x07),
            'f' => Ok(0x0C),
            'n' => Ok(0x0A),
            'r' => Ok(0x0D),
            't' => Ok(0x09),
            'v' => Ok(0x0B),
            c => Err(format!("invalid escape sequence `\\{c}`")),
        }
    }

    fn hex_escape(&mut self) -> Result<u32> {
        let bad = || Err("invalid escape sequence `\\x`".to_owned());
        let Some(c) = self.bump() else { return bad() };
        if c == '{' {
            let mut r: u32 = 0;
            let mut digits = 0;
            loop {
                let Some(c) = self.bump() else { return bad() };
                if c == '}' {
                    break;
                }
                let Some(v) = c.to_digit(16) else {
                    return bad();
                };
                r = r * 16 + v;
                if r > MAX_RUNE {
                    return bad();
                }
                digits += 1;
            }
            return if digits == 0 { bad() } else { Ok(r) };
        }
        let x = c.to_digit(16);
        let y = self.bump().and_then(|c| c.to_digit(16));
        match (x, y) {
            (Some(x), Some(y)) => Ok(x * 16 + y),
            _ => bad(),
        }
    }

    /// Go's `parseUnicodeClass` at `\p` or `\P`.
    fn unicode_class(&mut self) -> Result<Item> {
        self.bump();
        let mut negated = self.bump() == Some('P');
        let mut name: String = match self.bump() {
            Some('{') => {
                let end = self.rest().iter().position(|&c| c == '}');
                let end = end.ok_or("invalid character class range `\\p{`")?;
                let name = self.rest()[..end].iter().collect();
                self.pos += end + 1;
                name
            }
            Some(c) => c.to_string(),
            None => String::new(),
        };
        if let Some(stripped) = name.strip_prefix('^') {
            negated = !negated;
            name = stripped.to_owned();
        }
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid character class range `\\p{{{name}}}`"));
        }
        // Go's `Any` is every code point; Rust spells it the same.
        Ok(Item::Property(name, negated))
    }

    /// Go's `parseClass`; the `[` is next.
    fn class(&mut self) -> Result<String> {
        self.bump();
        let negated = self.peek() == Some('^');
        if negated {
            self.bump();
        }
        let mut items = Vec::new();
        let mut first = true;
        while first || self.peek() != Some(']') {
            first = false;
            let rest = self.rest();
            // POSIX `[:name:]`; without a closing `:]` anywhere ahead it is plain text.
            let posix = (rest.len() > 2 && rest[0] == '[' && rest[1] == ':')
                .then(|| rest[2..].windows(2).position(|w| w == [':', ']']))
                .flatten();
            if let Some(i) = posix {
                let name: String = rest[2..2 + i].iter().collect();
                let (name, neg) = match name.strip_prefix('^') {
                    Some(n) => (n.to_owned(), true),
                    None => (name, false),
                };
                let group = posix_group(&name)
                    .ok_or_else(|| format!("invalid character class range `[:{name}:]`"))?;
                push_group(&mut items, group, neg);
                self.pos += i + 4;
                continue;
            }
            if rest.first() == Some(&'\\') {
                match rest.get(1) {
                    Some('p' | 'P') => {
                        items.push(self.unicode_class()?);
                        continue;
                    }
                    Some(&c) => {
                        if let Some((group, neg)) = perl_group(c) {
                            self.pos += 2;
                            push_group(&mut items, group, neg);
                            continue;
                        }
                    }
                    None => {}
                }
            }
            let lo = self.class_char()?;
            let mut hi = lo;
            if self.peek() == Some('-') && self.peek_at(1).is_some_and(|c| c != ']') {
                self.bump();
                hi = self.class_char()?;
                if hi < lo {
                    return Err("invalid character class range".to_owned());
                }
            }
            items.push(Item::Range(lo, hi));
        }
        self.bump();
        Ok(render_class(&items, negated))
    }

    fn class_char(&mut self) -> Result<u32> {
        match self.peek() {
            None => Err("missing closing ]".to_owned()),
            Some('\\') => self.escape(),
            Some(c) => {
                self.bump();
                Ok(c as u32)
            }
        }
    }

    fn parse(&mut self) -> Result<String> {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            match c {
                '[' => out.push_str(&self.class()?),
                '\\' => out.push_str(&self.top_escape()?),
                // Operators that the generated expressions use; the same in both dialects.
                '(' | ')' | '*' | '?' | '.' | '^' | '$' | '|' | '+' => {
                    self.bump();
                    out.push(c);
                }
                c => {
                    self.bump();
                    out.push_str(&render_literal(c as u32));
                }
            }
        }
        Ok(out)
    }

    fn top_escape(&mut self) -> Result<String> {
        match self.peek_at(1) {
            Some('A') => {
                self.pos += 2;
                return Ok("\\A".to_owned());
            }
            Some('z') => {
                self.pos += 2;
                return Ok("\\z".to_owned());
            }
            // Go's word boundaries are ASCII ones.
            Some('b') => {
                self.pos += 2;
                return Ok("(?-u:\\b)".to_owned());
            }
            Some('B') => {
                self.pos += 2;
                return Ok("(?-u:\\B)".to_owned());
            }
            Some('C') => return Err("invalid escape sequence `\\C`".to_owned()),
            Some('Q') => {
                self.pos += 2;
                let rest = self.rest();
                let end = rest.windows(2).position(|w| w == ['\\', 'E']);
                let (lit, skip) = match end {
                    Some(i) => (&rest[..i], i + 2),
                    None => (rest, rest.len()),
                };
                let out = lit.iter().map(|&c| render_literal(c as u32)).collect();
                self.pos += skip;
                return Ok(out);
            }
            Some('p' | 'P') => {
                let item = self.unicode_class()?;
                return Ok(render_class(&[item], false));
            }
            Some(c) => {
                if let Some((group, neg)) = perl_group(c) {
                    self.pos += 2;
                    let mut items = Vec::new();
                    push_group(&mut items, group, neg);
                    return Ok(render_class(&items, false));
                }
            }
            None => {}
        }
        Ok(render_literal(self.escape()?))
    }
}

/// Translates a Go regular expression of the shape patternmatcher generates into Rust syntax,
/// or explains why Go would refuse to compile it.
pub(crate) fn translate(go: &str) -> Result<String> {
    let chars: Vec<char> = go.chars().collect();
    Parser { s: &chars, pos: 0 }.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_match(go: &str, text: &str) -> bool {
        let rust = translate(go).unwrap_or_else(|e| panic!("{go:?}: {e}"));
        let re = regex::Regex::new(&rust).unwrap_or_else(|e| panic!("{go:?} -> {rust:?}: {e}"));
        re.is_match(text)
    }

    #[test]
    fn brackets_inside_classes_are_literal() {
        // Go reads `[[^/]` as the class {[, ^, /}.
        assert!(is_match("^[[^/]*]$", "[^]"));
        assert!(is_match("^[[^/]*]$", "/]"));
        assert!(!is_match("^[[^/]*]$", "a]"));
        assert!(is_match("^[a&&b]$", "&"));
        assert!(is_match("^[a~~b]$", "~"));
    }

    #[test]
    fn perl_and_posix_classes_are_ascii() {
        assert!(is_match("^\\d$", "7"));
        assert!(!is_match("^\\d$", "٣"));
        assert!(!is_match("^\\w$", "é"));
        assert!(is_match("^[[:alpha:]]$", "q"));
        assert!(!is_match("^[[:alpha:]]$", "é"));
        assert!(is_match("^[[:^digit:]]$", "x"));
    }

    #[test]
    fn escapes_follow_go() {
        assert!(is_match("^\\12$", "\n"));
        assert!(is_match("^\\x41$", "A"));
        assert!(is_match("^\\x{263a}$", "☺"));
        assert!(is_match("^\\Qa.b\\E$", "a.b"));
        assert!(!is_match("^\\Qa.b\\E$", "axb"));
        assert!(is_match("^\\pL$", "ж"));
        for bad in [
            "^\\1$", "^\\q$", "^\\C$", "^[\\b]$", "^[l-O]$", "^[a$", "^\\", "^\\x4$",
        ] {
            assert!(translate(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn ranges_and_specials() {
        assert!(is_match("^a[b-d]e$", "ace"));
        assert!(is_match("^a[^b-d]e$", "aze"));
        assert!(is_match("^[\\]a]$", "]"));
        assert!(is_match("^[x\\-]$", "-"));
        assert!(is_match("^[a-]$", "-"));
        assert!(is_match("^a\\.\\|\\)\\$\\(\\}\\+\\{bc$", "a.|)$(}+{bc"));
        assert!(!is_match("^a^b$", "a^b"));
        assert!(is_match("^a\\b", "a b"));
        assert!(!is_match("^a\\b", "ab"));
    }
}
