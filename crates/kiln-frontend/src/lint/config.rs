//! The `check` options (`# check=` directive, `BUILDKIT_DOCKERFILE_CHECK`): which rules run and
//! whether warnings fail the build.

use super::*;

/// The rules a `check` option selects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct CheckConfig {
    pub(super) skip_all: bool,
    pub(super) skip: BTreeSet<String>,
    pub(super) experimental_all: bool,
    pub(super) experimental: BTreeSet<String>,
    pub(super) error: bool,
}

impl CheckConfig {
    /// Parses `skip=A,B;experimental=C;error=true`.
    pub(super) fn parse(s: &str) -> std::result::Result<Self, String> {
        let mut cfg = Self::default();
        let s = s.trim();
        if s.is_empty() {
            return Ok(cfg);
        }
        let list =
            |v: &str| -> BTreeSet<String> { v.split(',').map(|r| r.trim().to_string()).collect() };
        for part in s.splitn(3, ';') {
            let Some((key, value)) = part.split_once('=') else {
                return Err(format!(
                    "invalid check option {}",
                    kiln_dockerfile::go_quote(part)
                ));
            };
            let value = value.trim();
            match key.trim() {
                "skip" if value == "all" => cfg.skip_all = true,
                "skip" => cfg.skip = list(value),
                "experimental" if value == "all" => cfg.experimental_all = true,
                "experimental" => cfg.experimental = list(value),
                "error" => {
                    cfg.error = parse_go_bool(value).ok_or_else(|| {
                        format!(
                            "failed to parse check option {}: invalid syntax",
                            kiln_dockerfile::go_quote(part)
                        )
                    })?
                }
                other => {
                    return Err(format!(
                        "invalid check option {}",
                        kiln_dockerfile::go_quote(other)
                    ));
                }
            }
        }
        Ok(cfg)
    }

    pub(super) fn merged(&self, other: &Self) -> Self {
        let mut out = self.clone();
        out.skip_all |= other.skip_all;
        out.experimental_all |= other.experimental_all;
        out.skip.extend(other.skip.iter().cloned());
        out.experimental.extend(other.experimental.iter().cloned());
        out
    }

    /// The config for one instruction: the first `check=` comment above it adds to this one.
    pub(super) fn for_comments(&self, comments: &[String]) -> Self {
        for comment in comments {
            let Some((name, value)) = match_directive(comment) else {
                continue;
            };
            if !name.eq_ignore_ascii_case("check") {
                continue;
            }
            let value = value.split(' ').next().unwrap_or_default();
            return match Self::parse(value) {
                Ok(other) => self.merged(&other),
                Err(_) => self.clone(),
            };
        }
        self.clone()
    }

    pub(super) fn enabled(&self, rule: &Rule) -> bool {
        if rule.experimental {
            self.experimental_all || self.experimental.contains(rule.name)
        } else {
            !(self.skip_all || self.skip.contains(rule.name))
        }
    }
}

/// Go's `strconv.ParseBool`.
pub(super) fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `name=value` as a directive line reads it: a name of letters and digits starting with a
/// letter, spaces allowed around `=`, value trimmed.
pub(super) fn match_directive(text: &str) -> Option<(&str, &str)> {
    let rest = text.trim_start();
    let len = rest
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_alphabetic() || (*i > 0 && c.is_ascii_digit())))
        .map_or(rest.len(), |(i, _)| i);
    if len == 0 {
        return None;
    }
    let (name, rest) = rest.split_at(len);
    let value = rest.trim_start().strip_prefix('=')?.trim();
    (!value.is_empty()).then_some((name, value))
}
