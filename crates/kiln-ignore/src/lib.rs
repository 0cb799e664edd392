//! The `.dockerignore` matcher: decides which paths of a build context are excluded, with the
//! semantics of moby/patternmatcher as BuildKit uses it (`MatchesOrParentMatches`): Go
//! `filepath.Match`-style wildcards, `**`, `!` exceptions where later rules win, and a path
//! excluded when it or any parent matches.
//!
//! This crate knows patterns and slash-separated, context-relative paths only; walking the
//! context and reading the `.dockerignore` file belong to its callers.

mod clean;
mod compile;
mod glob;
mod goregex;
mod ignorefile;

use std::fmt;

use regex::Regex;

pub use clean::clean as clean_path;
use compile::Kind;
pub use ignorefile::{IgnoreLine, read_patterns};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("illegal exclusion pattern `!` (line {line})")]
    LoneExclamation { line: usize },
    #[error("syntax error in pattern `{pattern}` (line {line})")]
    BadPattern {
        pattern: String,
        line: usize,
        #[source]
        source: SyntaxError,
    },
}

/// Why a pattern is malformed, in the words of Go's regexp or `filepath.Match`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SyntaxError(String);

pub type Result<T> = std::result::Result<T, Error>;

/// How a rule matches, decided when the matcher is built.
#[derive(Debug, Clone)]
enum Compiled {
    Exact,
    /// Paths starting with this text (`dir/**` keeps `dir/`).
    Prefix(String),
    /// Paths ending with this text, which is what follows the leading `**` (`/name` for
    /// `**/name`, which also matches `name` itself).
    Suffix(String),
    Regex(Regex),
    /// Passes `filepath.Match`'s check but not Go's regexp compiler. The reference reports
    /// this only when the rule is evaluated, so the matcher is still built.
    Broken(SyntaxError),
}

/// One rule of a `.dockerignore`.
#[derive(Debug, Clone)]
pub struct Rule {
    text: String,
    pattern: String,
    exception: bool,
    line: usize,
    compiled: Compiled,
}

impl Rule {
    /// The rule as written (trimmed), including any `!`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The cleaned pattern, without `!`.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Whether this is a `!` rule, which re-includes paths.
    pub fn is_exception(&self) -> bool {
        self.exception
    }

    /// 1-based line in the `.dockerignore` ([`Matcher::from_dockerignore`]) or position in
    /// the list ([`Matcher::new`]).
    pub fn line(&self) -> usize {
        self.line
    }

    fn matches(&self, path: &str) -> std::result::Result<bool, SyntaxError> {
        Ok(match &self.compiled {
            Compiled::Exact => path == self.pattern,
            Compiled::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Compiled::Suffix(suffix) => {
                path.ends_with(suffix.as_str()) || suffix.strip_prefix('/') == Some(path)
            }
            Compiled::Regex(re) => re.is_match(path),
            Compiled::Broken(err) => return Err(err.clone()),
        })
    }

    fn error(&self, source: SyntaxError) -> Error {
        Error::BadPattern {
            pattern: self.text.clone(),
            line: self.line,
            source,
        }
    }

    /// Could this rule match some path strictly below `dir` (or a parent of one that is still
    /// below `dir`)? May say yes when the answer is no, never the reverse.
    fn may_match_below(&self, dir: &str) -> bool {
        let p = &self.pattern;
        let below = format!("{dir}/");
        let literal = match &self.compiled {
            Compiled::Exact => return p.starts_with(&below),
            Compiled::Suffix(_) | Compiled::Broken(_) => return true,
            Compiled::Prefix(prefix) => prefix.as_str(),
            Compiled::Regex(_) => {
                // Without `**`, classes or escapes every match has as many `/` as the pattern,
                // and a path below `dir` has more than `dir`.
                let simple = !p.contains("**") && !p.contains(['[', '\\']);
                if simple && p.matches('/').count() < below.matches('/').count() {
                    return false;
                }
                // Every match starts with the pattern's text before its first special
                // character, because the expression is anchored.
                let end = p.find(['*', '?', '[', ']', '\\']).unwrap_or(p.len());
                &p[..end]
            }
        };
        literal.starts_with(&below) || below.starts_with(literal)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Per-rule results for a directory, handed to its children by a walker so that they need
/// not re-check their parents (patternmatcher's `MatchInfo`).
#[derive(Debug, Clone, Default)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

/// Compiled `.dockerignore` rules.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    rules: Vec<Rule>,
    exceptions: bool,
}

impl Matcher {
    /// Builds a matcher from patterns in order; `!` marks an exception. Patterns are trimmed,
    /// empty ones dropped, and cleaned like Go's `filepath.Clean` (a leading `/` is kept here:
    /// [`Matcher::from_dockerignore`] removes it, as `.dockerignore` reading does).
    pub fn new(patterns: &[String]) -> Result<Matcher> {
        Self::build(
            patterns
                .iter()
                .enumerate()
                .map(|(i, p)| (i + 1, p.as_str())),
        )
    }

    /// Builds a matcher from the text of a `.dockerignore` file.
    pub fn from_dockerignore(content: &str) -> Result<Matcher> {
        let lines = read_patterns(content);
        Self::build(lines.iter().map(|l| (l.line, l.pattern.as_str())))
    }

    fn build<'a>(patterns: impl Iterator<Item = (usize, &'a str)>) -> Result<Matcher> {
        let mut matcher = Matcher::default();
        for (line, text) in patterns {
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let cleaned = clean::clean(text);
            let (exception, pattern) = match cleaned.strip_prefix('!') {
                Some("") => return Err(Error::LoneExclamation { line }),
                Some(rest) => (true, rest.to_owned()),
                None => (false, cleaned),
            };
            let bad = |source| Error::BadPattern {
                pattern: text.to_owned(),
                line,
                source,
            };
            if !glob::is_valid(&pattern) {
                return Err(bad(SyntaxError("syntax error in pattern".to_owned())));
            }
            let compiled = match compile::compile(&pattern) {
                Kind::Exact => Compiled::Exact,
                Kind::Prefix => Compiled::Prefix(pattern[..pattern.len() - 2].to_owned()),
                Kind::Suffix => Compiled::Suffix(pattern[2..].to_owned()),
                Kind::Regexp(go) => match goregex::translate(&go).map(|rust| Regex::new(&rust)) {
                    Ok(Ok(re)) => Compiled::Regex(re),
                    Ok(Err(err)) => Compiled::Broken(SyntaxError(err.to_string())),
                    Err(err) => Compiled::Broken(SyntaxError(err)),
                },
            };
            matcher.exceptions |= exception;
            matcher.rules.push(Rule {
                text: text.to_owned(),
                pattern,
                exception,
                line,
                compiled,
            });
        }
        Ok(matcher)
    }

    /// Whether there are no rules at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether any rule is a `!` exception.
    pub fn has_exceptions(&self) -> bool {
        self.exceptions
    }

    /// Fails if a rule that passed the syntax check when the matcher was built cannot be
    /// compiled (e.g. `[z-a]`). Matching reports this only when the rule is reached, as the
    /// reference does; callers that prefer to fail early call this first.
    pub fn validate(&self) -> Result<()> {
        for rule in &self.rules {
            if let Compiled::Broken(err) = &rule.compiled {
                return Err(rule.error(err.clone()));
            }
        }
        Ok(())
    }

    /// Is this slash-separated, context-relative path excluded? (patternmatcher's
    /// `MatchesOrParentMatches`: a path is excluded if it or a parent matches, exceptions
    /// applied.) The path is used as given, not cleaned. A malformed rule (see
    /// [`Matcher::validate`]) makes the answer `false`; use [`Matcher::matches`] to see it.
    pub fn excludes(&self, path: &str) -> bool {
        self.matches(path).unwrap_or(false)
    }

    /// Like [`Matcher::excludes`] but reports a malformed rule reached while matching.
    pub fn matches(&self, path: &str) -> Result<bool> {
        Ok(self.decide(path)?.is_some())
    }

    /// Like [`Matcher::excludes`] but returns the last rule that decided exclusion, so errors
    /// can say "excluded by rule `*.log` (line 3)".
    pub fn excluding_rule(&self, path: &str) -> Option<&Rule> {
        self.decide(path).ok().flatten()
    }

    /// Runs the rules over `path`; `Some(rule)` when excluded, naming the last rule that set
    /// the exclusion.
    fn decide(&self, path: &str) -> Result<Option<&Rule>> {
        let parent = clean::dir(path);
        let mut decided: Option<&Rule> = None;
        for rule in &self.rules {
            // An inclusion cannot change an excluded path, nor an exception an included one.
            if rule.exception != decided.is_some() {
                continue;
            }
            let mut hit = rule.matches(path).map_err(|e| rule.error(e))?;
            if !hit && parent != "." {
                hit = parent_prefixes(&parent).any(|p| rule.matches(p).unwrap_or(false));
            }
            if hit {
                decided = if rule.exception { None } else { Some(rule) };
            }
        }
        Ok(decided)
    }

    /// patternmatcher's `MatchesUsingParentResults`: matches `path` given the results of its
    /// parent directory (`MatchInfo::default()` for a top-level path, or to get the same
    /// answer as [`Matcher::matches`] without walking). Returns the result and the info to
    /// pass to `path`'s children.
    pub fn matches_with_parent(&self, path: &str, parent: &MatchInfo) -> Result<(bool, MatchInfo)> {
        let known = &parent.parent_matched;
        let have_parent = !known.is_empty();
        let mut info = MatchInfo {
            parent_matched: vec![false; self.rules.len()],
        };
        if have_parent && known.len() != self.rules.len() {
            // Info from another matcher: fall back to checking parents directly.
            return self.matches_with_parent(path, &MatchInfo::default());
        }
        let mut matched = false;
        for (i, rule) in self.rules.iter().enumerate() {
            let mut hit = have_parent && known[i];
            if !hit {
                if rule.exception != matched {
                    continue;
                }
                hit = rule.matches(path).map_err(|e| rule.error(e))?;
                if !hit && !have_parent {
                    let parent = clean::dir(path);
                    if parent != "." {
                        hit = parent_prefixes(&parent).any(|p| rule.matches(p).unwrap_or(false));
                    }
                }
            }
            info.parent_matched[i] = hit;
            if hit {
                matched = !rule.exception;
            }
        }
        Ok((matched, info))
    }

    /// Can the walker skip this whole directory without visiting children? True only when
    /// the directory is excluded and no exception rule could re-include something below it.
    ///
    /// This is stricter than BuildKit's walker, which skips an excluded directory unless an
    /// exception's text starts with `dir/`, and so never sends `dir/keep` for
    /// `dir` + `!**/keep`; here such a directory is walked and `excludes` decides per path.
    pub fn can_skip_dir(&self, dir: &str) -> bool {
        let dir = dir.trim_end_matches('/');
        if dir.is_empty() || !self.excludes(dir) {
            return false;
        }
        !self
            .rules
            .iter()
            .any(|rule| rule.exception && rule.may_match_below(dir))
    }
}

/// `a`, `a/b`, `a/b/c` for the parent path `a/b/c`, as Go's split-and-join yields them.
fn parent_prefixes(parent: &str) -> impl Iterator<Item = &str> {
    parent
        .match_indices('/')
        .map(|(i, _)| &parent[..i])
        .chain(std::iter::once(parent))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(patterns: &[&str]) -> Matcher {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        Matcher::new(&patterns).expect("valid patterns")
    }

    #[test]
    fn later_rules_override_earlier_ones() {
        let m = matcher(&["*.log", "!keep.log", "keep.log"]);
        assert!(m.excludes("keep.log"));
        let m = matcher(&["*.log", "!keep.log"]);
        assert!(!m.excludes("keep.log"));
        assert!(m.excludes("other.log"));
    }

    #[test]
    fn parent_match_excludes_children() {
        let m = matcher(&["build"]);
        assert!(m.excludes("build/out/a.o"));
        assert!(!m.excludes("src/build.rs"));
    }

    #[test]
    fn excluding_rule_names_the_last_deciding_rule() {
        let m = Matcher::from_dockerignore("# logs\n*.log\n\n!keep.log\nkeep*\n").expect("valid");
        assert_eq!(
            m.excluding_rule("a.log").map(|r| (r.text(), r.line())),
            Some(("*.log", 2))
        );
        assert_eq!(
            m.excluding_rule("keep.log").map(|r| (r.text(), r.line())),
            Some(("keep*", 5))
        );
        assert!(m.excluding_rule("main.rs").is_none());
    }

    #[test]
    fn lone_exclamation_is_an_error() {
        let err = Matcher::from_dockerignore("a\n!\n").expect_err("lone `!`");
        assert_eq!(err.to_string(), "illegal exclusion pattern `!` (line 2)");
    }

    #[test]
    fn malformed_class_fails_only_when_reached() {
        let m = matcher(&["[Local-Only]/"]);
        assert!(m.validate().is_err());
        for _ in 0..2 {
            assert!(m.matches("x").is_err());
            assert!(!m.excludes("x"));
        }
        // Never evaluated: the path is already excluded when the broken inclusion comes up.
        let m = matcher(&["**", "[Local-Only]"]);
        assert!(m.matches("x").expect("not reached"));
    }

    #[test]
    fn bad_syntax_is_rejected_at_build() {
        let err = Matcher::new(&["ok".to_string(), "a[".to_string()]).expect_err("bad pattern");
        assert_eq!(err.to_string(), "syntax error in pattern `a[` (line 2)");
    }

    #[test]
    fn can_skip_dir_respects_exceptions() {
        let m = matcher(&["node_modules", "target"]);
        assert!(m.can_skip_dir("node_modules"));
        assert!(!m.can_skip_dir("src"));

        let m = matcher(&["vendor", "!vendor/keep/**"]);
        assert!(!m.can_skip_dir("vendor"));
        assert!(!m.can_skip_dir("vendor/keep"));
        assert!(m.can_skip_dir("vendor/other"));

        let m = matcher(&["docs", "!**/README.md"]);
        assert!(!m.can_skip_dir("docs"));

        let m = matcher(&["docs", "!src/*.md"]);
        assert!(m.can_skip_dir("docs"));

        let m = matcher(&["src/gen", "!src/*.md"]);
        assert!(m.can_skip_dir("src/gen"));
    }

    #[test]
    fn walking_with_parent_results_agrees() {
        let m = matcher(&["a", "!a/b/keep*", "a/b/keep.tmp"]);
        let (a, info_a) = m
            .matches_with_parent("a", &MatchInfo::default())
            .expect("ok");
        let (ab, info_ab) = m.matches_with_parent("a/b", &info_a).expect("ok");
        let (keep, _) = m.matches_with_parent("a/b/keep.txt", &info_ab).expect("ok");
        let (tmp, _) = m.matches_with_parent("a/b/keep.tmp", &info_ab).expect("ok");
        assert_eq!((a, ab, keep, tmp), (true, true, false, true));
        assert_eq!(m.excludes("a/b/keep.txt"), keep);
    }
}
