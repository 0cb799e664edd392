//! Translation of a cleaned pattern into patternmatcher's match kinds: an exact string, a
//! prefix (`dir/**`), a suffix (`**`, `**/name`, `**name`) or a regular expression written in
//! Go's RE2 syntax. The Go source is kept verbatim so that quirks of the reference (raw `[`
//! and `]`, `*` and `?` inside classes) carry over; `goregex` then turns it into a Rust regex.

/// How patternmatcher decided to match a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Exact,
    Prefix,
    Suffix,
    /// The Go regular expression, anchored at both ends, with `/` separators.
    Regexp(String),
}

fn should_escape(c: char) -> bool {
    ".+()|{}$".contains(c)
}

/// The match kind as patternmatcher tracks it while scanning; only `Regexp` builds a regex.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Exact,
    Prefix,
    Suffix,
    Regexp,
}

/// patternmatcher's `compile` with `/` as the separator.
pub(crate) fn compile(pattern: &str) -> Kind {
    let mut re = String::from("^");
    let mut state = State::Exact;
    let mut chars = pattern.chars().peekable();
    let mut first = true;
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.next_if_eq(&'*').is_some() => {
                // `**/` is treated as `**`.
                chars.next_if_eq(&'/');
                if chars.peek().is_some() {
                    re.push_str("(.*/)?");
                    state = State::Regexp;
                } else if state == State::Exact {
                    state = State::Prefix;
                } else {
                    re.push_str(".*");
                    state = State::Regexp;
                }
                if first {
                    state = State::Suffix;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                state = State::Regexp;
            }
            '?' => {
                re.push_str("[^/]");
                state = State::Regexp;
            }
            c if should_escape(c) => {
                re.push('\\');
                re.push(c);
            }
            '\\' => match chars.next() {
                Some(next) => {
                    re.push('\\');
                    re.push(next);
                    state = State::Regexp;
                }
                // A trailing `\` is kept and would make the expression invalid.
                None => re.push('\\'),
            },
            '[' | ']' => {
                re.push(c);
                state = State::Regexp;
            }
            c => re.push(c),
        }
        first = false;
    }
    match state {
        State::Exact => Kind::Exact,
        State::Prefix => Kind::Prefix,
        State::Suffix => Kind::Suffix,
        State::Regexp => {
            re.push('$');
            Kind::Regexp(re)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_like_the_reference() {
        assert_eq!(compile("abc"), Kind::Exact);
        assert_eq!(compile("a.b"), Kind::Exact);
        assert_eq!(compile("dir/**"), Kind::Prefix);
        assert_eq!(compile("**"), Kind::Suffix);
        assert_eq!(compile("**/dir"), Kind::Suffix);
        assert_eq!(compile("*"), Kind::Regexp("^[^/]*$".into()));
        assert_eq!(compile("**/**"), Kind::Regexp("^(.*/)?.*$".into()));
        assert_eq!(compile("a(b)"), Kind::Exact);
        assert_eq!(compile("a\\*b"), Kind::Regexp("^a\\*b$".into()));
    }

    /// Drives `tests/conformance/compile.json` (the reference's classification and Go source).
    #[test]
    fn compile_corpus() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/conformance/compile.json"
        );
        let text = std::fs::read_to_string(path).expect("read compile.json");
        let file: serde_json::Value = serde_json::from_str(&text).expect("parse compile.json");
        let cases = file["cases"].as_array().expect("cases");
        assert!(!cases.is_empty());
        for case in cases {
            let pattern = case["pattern"].as_str().expect("pattern");
            let got = compile(pattern);
            let want = case["match_type"].as_str().expect("match_type");
            let got_type = match &got {
                Kind::Exact => "exact",
                Kind::Prefix => "prefix",
                Kind::Suffix => "suffix",
                Kind::Regexp(_) => "regexp",
            };
            assert_eq!(got_type, want, "{pattern:?}");
            if let Kind::Regexp(re) = got {
                assert_eq!(Some(re.as_str()), case["regexp"].as_str(), "{pattern:?}");
            }
        }
    }
}
