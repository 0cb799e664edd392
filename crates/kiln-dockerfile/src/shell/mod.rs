//! BuildKit's shell-word lexer: quote removal, escapes and `$VAR` / `${VAR...}` expansion, with
//! optional word splitting. It works on one word (an instruction argument), never runs a shell,
//! and never looks at the process environment: variables come from an [`Env`].

mod pattern;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;

use crate::error::{Error, Result};

/// Variables visible to the lexer.
pub trait Env {
    /// The value of `name`, or `None` when it is not set (set-but-empty is `Some("")`).
    fn get(&self, name: &str) -> Option<&str>;
}

impl<S: BuildHasher> Env for HashMap<String, String, S> {
    fn get(&self, name: &str) -> Option<&str> {
        HashMap::get(self, name).map(String::as_str)
    }
}

impl Env for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        BTreeMap::get(self, name).map(String::as_str)
    }
}

/// An ordered list where, as with `ENV` lines, the last entry for a name wins.
impl Env for [(String, String)] {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Env for Vec<(String, String)> {
    fn get(&self, name: &str) -> Option<&str> {
        Env::get(self.as_slice(), name)
    }
}

impl<T: Env + ?Sized> Env for &T {
    fn get(&self, name: &str) -> Option<&str> {
        (**self).get(name)
    }
}

/// The result of an expansion that also reports which variables it looked up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessWordResult {
    /// The expanded word, whitespace kept as is.
    pub result: String,
    /// The expanded word split into words (whitespace inside quotes does not split).
    pub words: Vec<String>,
    /// Variables looked up and found.
    pub matched: BTreeSet<String>,
    /// Variables looked up and not found.
    pub unmatched: BTreeSet<String>,
}

/// The lexer. `escape` is the Dockerfile escape character (`\` or `` ` ``).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShellLex {
    pub escape: char,
    /// Keep quote characters in the output (quotes still group words).
    pub raw_quotes: bool,
    /// Keep escape characters in the output (they still protect the next character).
    pub raw_escapes: bool,
    /// Leave references to unset variables as written instead of expanding them to "".
    pub skip_unset_env: bool,
}

/// Nesting limit for `${...}` and quotes, so hostile input cannot overflow the stack.
const MAX_DEPTH: usize = 200;

impl ShellLex {
    pub fn new(escape: char) -> Self {
        Self {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset_env: false,
        }
    }

    /// Expands `word` into a single string (BuildKit's `ProcessWord`).
    pub fn process_word(&self, word: &str, env: &dyn Env) -> Result<String> {
        Ok(self.process_word_with_matches(word, env)?.result)
    }

    /// Expands `word` and splits the result into words (BuildKit's `ProcessWords`).
    pub fn process_words(&self, word: &str, env: &dyn Env) -> Result<Vec<String>> {
        Ok(self.process_word_with_matches(word, env)?.words)
    }

    /// Expands `word`, returning the single-string result, the split words and the variable
    /// names that were looked up (BuildKit's `ProcessWordWithMatches`).
    pub fn process_word_with_matches(
        &self,
        word: &str,
        env: &dyn Env,
    ) -> Result<ProcessWordResult> {
        let mut sw = Scanner {
            chars: word.chars().collect(),
            pos: 0,
            lex: *self,
            raw_escapes: self.raw_escapes,
            env,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
            depth: 0,
        };
        match sw.process_stop_on(None, self.raw_escapes) {
            Ok((result, words)) => Ok(ProcessWordResult {
                result,
                words,
                matched: sw.matched,
                unmatched: sw.unmatched,
            }),
            Err(message) => Err(Error::Expansion {
                word: word.to_string(),
                message,
            }),
        }
    }
}

/// Accumulates words while expanding: unquoted whitespace (also from `$VAR` values) splits.
#[derive(Default)]
struct Words {
    word: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, c: char) {
        if c.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(c);
        }
    }

    fn add_raw_char(&mut self, c: char) {
        self.word.push(c);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }

    fn add_raw_string(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(self.word);
        }
        self.words
    }
}

type Step<T> = std::result::Result<T, String>;

struct Scanner<'a> {
    chars: Vec<char>,
    pos: usize,
    lex: ShellLex,
    raw_escapes: bool,
    env: &'a dyn Env,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
    depth: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn enter(&mut self) -> Step<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err("too many nested substitutions or quotes".to_string());
        }
        Ok(())
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        match self.env.get(name) {
            Some(v) => {
                self.matched.insert(name.to_string());
                Some(v.to_string())
            }
            None => {
                self.unmatched.insert(name.to_string());
                None
            }
        }
    }

    /// Processes characters up to `stop` (consumed) or the end of input when `stop` is `None`.
    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Step<(String, Vec<String>)> {
        self.enter()?;
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let r = self.stop_on_inner(stop);
        self.raw_escapes = saved;
        self.depth -= 1;
        r
    }

    fn stop_on_inner(&mut self, stop: Option<char>) -> Step<(String, Vec<String>)> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.pos += 1;
                return Ok((result, words.finish()));
            }
            match ch {
                '$' => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                    words.add_string(&value);
                }
                '\'' => {
                    let value = self.process_single_quote()?;
                    result.push_str(&value);
                    words.add_raw_string(&value);
                }
                '"' => {
                    let value = self.process_double_quote()?;
                    result.push_str(&value);
                    words.add_raw_string(&value);
                }
                _ => {
                    self.pos += 1;
                    let mut ch = ch;
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            words.add_raw_char(ch);
                            result.push(ch);
                        }
                        // An escape at the very end is dropped.
                        match self.next() {
                            Some(c) => ch = c,
                            None => break,
                        }
                        words.add_raw_char(ch);
                    } else {
                        words.add_char(ch);
                    }
                    result.push(ch);
                }
            }
        }
        if let Some(stop) = stop {
            return Err(format!(
                "unexpected end of statement while looking for matching {stop}"
            ));
        }
        Ok((result, words.finish()))
    }

    fn process_single_quote(&mut self) -> Step<String> {
        let mut result = String::new();
        self.pos += 1;
        if self.lex.raw_quotes {
            result.push('\'');
        }
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    );
                }
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(c) => result.push(c),
            }
        }
    }

    fn process_double_quote(&mut self) -> Step<String> {
        self.enter()?;
        let r = self.double_quote_inner();
        self.depth -= 1;
        r
    }

    fn double_quote_inner(&mut self) -> Step<String> {
        let mut result = String::new();
        self.pos += 1;
        if self.lex.raw_quotes {
            result.push('"');
        }
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    );
                }
                Some('"') => {
                    self.pos += 1;
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                }
                Some(ch) => {
                    self.pos += 1;
                    if ch != self.lex.escape {
                        result.push(ch);
                        continue;
                    }
                    // Inside double quotes the escape only protects `"`, `$` and itself.
                    match self.peek() {
                        None => {
                            if self.raw_escapes {
                                result.push(ch);
                            }
                        }
                        Some(c) if c == '"' || c == '$' || c == self.lex.escape => {
                            if self.raw_escapes {
                                result.push(ch);
                            }
                            self.pos += 1;
                            result.push(c);
                        }
                        Some(_) => result.push(ch),
                    }
                }
            }
        }
    }

    /// Reads a variable name: letters/digits/underscore, a run of digits (positional
    /// parameters), or one special parameter character.
    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_numeric() {
                while let Some(d) = self.peek().filter(|c| c.is_numeric()) {
                    name.push(d);
                    self.pos += 1;
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.pos += 1;
                name.push(ch);
                return name;
            }
            if !ch.is_alphanumeric() && ch != '_' {
                break;
            }
            self.pos += 1;
            name.push(ch);
        }
        name
    }

    fn process_dollar(&mut self) -> Step<String> {
        self.enter()?;
        let r = self.dollar_inner();
        self.depth -= 1;
        r
    }

    fn dollar_inner(&mut self) -> Step<String> {
        self.pos += 1; // '$'
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.pos += 1; // '{'
        match self.peek() {
            None => return Err("syntax error: missing '}'".into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            Some(_) => {}
        }
        let name = self.process_name();
        let Some(mut ch) = self.next() else {
            return Err("syntax error: missing '}'".into());
        };
        let mut modifier = ch.to_string();
        let mut null_is_unset = false;
        match ch {
            '}' => {
                return Ok(match self.get_env(&name) {
                    Some(v) => v,
                    None if self.lex.skip_unset_env => format!("${{{name}}}"),
                    None => String::new(),
                });
            }
            '/' => return self.process_replace(&name),
            ':' => {
                null_is_unset = true;
                let Some(c) = self.next() else {
                    return Err("syntax error: missing '}'".into());
                };
                ch = c;
                modifier.push(c);
            }
            '+' | '-' | '?' | '#' | '%' => {}
            _ => return Err(format!("unsupported modifier ({modifier}) in substitution")),
        }

        let trims = ch == '#' || ch == '%';
        if null_is_unset && trims {
            return Err(format!("unsupported modifier ({modifier}) in substitution"));
        }
        // Patterns keep their escapes so `\*` still means a literal star when matched.
        let word = match self.process_stop_on(Some('}'), trims) {
            Ok((w, _)) => w,
            Err(_) if self.peek().is_none() => return Err("syntax error: missing '}'".into()),
            Err(e) => return Err(e),
        };
        let value = self.get_env(&name);
        if self.lex.skip_unset_env && value.is_none() {
            return Ok(format!("${{{name}{modifier}{word}}}"));
        }
        let is_null =
            |v: &Option<String>| v.as_deref().is_none_or(|v| null_is_unset && v.is_empty());
        match ch {
            '-' => Ok(if is_null(&value) {
                word
            } else {
                value.unwrap_or_default()
            }),
            '+' => Ok(if is_null(&value) { String::new() } else { word }),
            '?' => match value {
                None => Err(format!(
                    "{name}: {}",
                    or_default(word, "is not allowed to be unset")
                )),
                Some(v) if null_is_unset && v.is_empty() => Err(format!(
                    "{name}: {}",
                    or_default(word, "is not allowed to be empty")
                )),
                Some(v) => Ok(v),
            },
            '#' | '%' => {
                let (longest, pat) = match word.strip_prefix(ch) {
                    Some(rest) => (true, rest),
                    None => (false, word.as_str()),
                };
                let tokens = pattern::compile(pat)
                    .map_err(|e| format!("invalid pattern ({pat}) in substitution: {e}"))?;
                let value = value.unwrap_or_default();
                Ok(if ch == '#' {
                    pattern::trim_prefix(&tokens, &value, longest)
                } else {
                    pattern::trim_suffix(&tokens, &value, longest)
                })
            }
            _ => Err(format!("unsupported modifier ({modifier}) in substitution")),
        }
    }

    /// `${name/pattern/replacement}` and `${name//pattern/replacement}`.
    fn process_replace(&mut self, name: &str) -> Step<String> {
        let all = self.peek() == Some('/');
        if all {
            self.pos += 1;
        }
        let pat = match self.process_stop_on(Some('/'), true) {
            Ok((w, _)) => w,
            Err(_) if self.peek().is_none() => {
                return Err("syntax error: missing '/' in ${}".into());
            }
            Err(e) => return Err(e),
        };
        let replacement = match self.process_stop_on(Some('}'), true) {
            Ok((w, _)) => w,
            Err(_) if self.peek().is_none() => return Err("syntax error: missing '}'".into()),
            Err(e) => return Err(e),
        };
        let value = self.get_env(name);
        if self.lex.skip_unset_env && value.is_none() {
            let slashes = if all { "//" } else { "/" };
            return Ok(format!("${{{name}{slashes}{pat}/{replacement}}}"));
        }
        let tokens = pattern::compile(&pat)
            .map_err(|e| format!("invalid pattern ({pat}) in substitution: {e}"))?;
        Ok(pattern::replace(
            &tokens,
            &value.unwrap_or_default(),
            &replacement,
            all,
        ))
    }
}

fn or_default(word: String, default: &str) -> String {
    if word.is_empty() {
        default.to_string()
    } else {
        word
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(String, String)> {
        vec![("A".into(), "x y".into()), ("E".into(), String::new())]
    }

    #[test]
    fn expands_and_splits() {
        let lex = ShellLex::new('\\');
        assert_eq!(lex.process_word("$A-${A}", &env()).unwrap(), "x y-x y");
        assert_eq!(
            lex.process_words("a$A \"$A\"", &env()).unwrap(),
            ["ax", "y", "x y"]
        );
        assert_eq!(lex.process_word("${E:-d}${E-d}", &env()).unwrap(), "d");
    }

    #[test]
    fn backtick_escape() {
        let lex = ShellLex::new('`');
        assert_eq!(lex.process_word("a`$A\\b", &env()).unwrap(), "a$A\\b");
    }

    #[test]
    fn raw_modes_keep_quotes_and_escapes() {
        let lex = ShellLex {
            raw_quotes: true,
            raw_escapes: true,
            skip_unset_env: true,
            ..ShellLex::new('\\')
        };
        assert_eq!(
            lex.process_words("<<'a b' \\x $U ${U:-1}", &env()).unwrap(),
            ["<<'a b'", "\\x", "$U", "${U:-1}"]
        );
    }

    #[test]
    fn reports_lookups() {
        let r = ShellLex::new('\\')
            .process_word_with_matches("$A$B", &env())
            .unwrap();
        assert_eq!(r.matched.into_iter().collect::<Vec<_>>(), ["A"]);
        assert_eq!(r.unmatched.into_iter().collect::<Vec<_>>(), ["B"]);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let word = "${a:-".repeat(10_000);
        assert!(ShellLex::new('\\').process_word(&word, &env()).is_err());
        let word = format!("{}{}", "${a:-\"".repeat(5_000), "\"}".repeat(5_000));
        assert!(ShellLex::new('\\').process_word(&word, &env()).is_err());
    }

    #[test]
    fn error_message_names_the_word() {
        let err = ShellLex::new('\\')
            .process_word("${X?gone}", &env())
            .unwrap_err();
        assert_eq!(err.to_string(), "failed to process \"${X?gone}\": X: gone");
    }
}
