//! Shell wildcard patterns for `${VAR#pat}`, `${VAR%pat}` and `${VAR/pat/repl}`: `*` matches
//! any run of characters, `?` one character, and a backslash makes `*`, `?`, `\`, `}` or `/`
//! literal. Matching simulates the pattern as a small NFA, so it is linear per start position
//! and needs no regex engine.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token {
    Star,
    Any,
    Lit(char),
}

/// Compiles `pattern`; any other escape than the ones above is an error, as in BuildKit.
pub(crate) fn compile(pattern: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            '*' => Token::Star,
            '?' => Token::Any,
            '\\' => match chars.next() {
                Some(e @ ('*' | '?' | '\\' | '}' | '/')) => Token::Lit(e),
                Some(e) => return Err(format!("invalid escape '\\{e}'")),
                None => return Err("invalid escape at end of pattern".to_string()),
            },
            c => Token::Lit(c),
        });
    }
    Ok(tokens)
}

/// Adds the states reachable without consuming input (a star may match nothing).
fn close(tokens: &[Token], states: &mut [bool]) {
    for i in 0..tokens.len() {
        if states[i] && tokens[i] == Token::Star {
            states[i + 1] = true;
        }
    }
}

/// Lengths `k` such that `tokens` matches `s[start..start + k]`, in increasing order, visited by
/// `f` until it returns `false`.
fn match_lengths(tokens: &[Token], s: &[char], start: usize, mut f: impl FnMut(usize) -> bool) {
    let m = tokens.len();
    let mut states = vec![false; m + 1];
    states[0] = true;
    close(tokens, &mut states);
    let mut pos = start;
    loop {
        if states[m] && !f(pos - start) {
            return;
        }
        let Some(&c) = s.get(pos) else { return };
        let mut next = vec![false; m + 1];
        let mut alive = false;
        for i in (0..m).filter(|&i| states[i]) {
            match tokens[i] {
                Token::Star => next[i] = true,
                Token::Any => next[i + 1] = true,
                Token::Lit(l) if l == c => next[i + 1] = true,
                Token::Lit(_) => continue,
            }
            alive = true;
        }
        if !alive {
            return;
        }
        close(tokens, &mut next);
        states = next;
        pos += 1;
    }
}

/// The shortest (or longest) match of `tokens` at `start`, as a length.
fn match_at(tokens: &[Token], s: &[char], start: usize, longest: bool) -> Option<usize> {
    let mut found = None;
    match_lengths(tokens, s, start, |k| {
        found = Some(k);
        longest
    });
    found
}

/// `${VAR#pat}` / `${VAR##pat}`: removes the shortest / longest matching prefix.
pub(crate) fn trim_prefix(tokens: &[Token], value: &str, longest: bool) -> String {
    let s: Vec<char> = value.chars().collect();
    match match_at(tokens, &s, 0, longest) {
        Some(k) => s[k..].iter().collect(),
        None => value.to_string(),
    }
}

/// `${VAR%pat}` / `${VAR%%pat}`: removes the shortest / longest matching suffix, by matching the
/// reversed pattern against the reversed value.
pub(crate) fn trim_suffix(tokens: &[Token], value: &str, longest: bool) -> String {
    let rev_tokens: Vec<Token> = tokens.iter().rev().copied().collect();
    let s: Vec<char> = value.chars().rev().collect();
    match match_at(&rev_tokens, &s, 0, longest) {
        Some(k) => s[k..].iter().rev().collect(),
        None => value.to_string(),
    }
}

/// `${VAR/pat/repl}` and `${VAR//pat/repl}`: replaces the leftmost-longest match (or every
/// non-overlapping one). As with Go's regexp, an empty match right after a match is skipped.
pub(crate) fn replace(tokens: &[Token], value: &str, replacement: &str, all: bool) -> String {
    let s: Vec<char> = value.chars().collect();
    let mut out = String::new();
    let mut copied = 0;
    let mut pos = 0;
    let mut prev_end = None;
    while pos <= s.len() {
        match match_at(tokens, &s, pos, true) {
            Some(0) if prev_end == Some(pos) => pos += 1,
            Some(k) => {
                out.extend(&s[copied..pos]);
                out.push_str(replacement);
                copied = pos + k;
                prev_end = Some(pos + k);
                pos += k.max(1);
                if !all {
                    break;
                }
            }
            None => pos += 1,
        }
    }
    out.extend(&s[copied.min(s.len())..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<Token> {
        compile(s).unwrap()
    }

    #[test]
    fn compiles_escapes() {
        assert_eq!(
            p("a\\*?*"),
            [Token::Lit('a'), Token::Lit('*'), Token::Any, Token::Star]
        );
        assert!(compile("\\x").is_err());
        assert!(compile("\\").is_err());
        assert!(compile("\\\\\\").is_err());
    }

    #[test]
    fn trims() {
        assert_eq!(trim_prefix(&p("*x*y"), "xxyy", false), "y");
        assert_eq!(trim_prefix(&p("*"), "xxyy", false), "xxyy");
        assert_eq!(trim_prefix(&p("*x"), "xxyy", true), "yy");
        assert_eq!(trim_suffix(&p("x"), "xxyy", false), "xxyy");
        assert_eq!(trim_suffix(&p("y*"), "xyxy", false), "xyx");
        assert_eq!(trim_suffix(&p("y*"), "xyxy", true), "x");
    }

    #[test]
    fn replaces() {
        assert_eq!(
            replace(&p("/?/"), "/a/foo/b/c.txt", "/", true),
            "/foo/c.txt"
        );
        assert_eq!(replace(&p(""), "ab", "-", false), "-ab");
        assert_eq!(replace(&p(""), "ab", "-", true), "-a-b-");
        assert_eq!(replace(&p("*"), "ab", "-", true), "-");
        assert_eq!(replace(&p("b"), "abcb", "", true), "ac");
    }
}
