//! Checks of single instructions that need more than the instruction: ARGs and ENVs used
//! once, secrets in them, copies of ignored files, EXPOSE ports.

use super::*;

impl Linter<'_> {
    /// MultipleInstructionsDisallowed points at the earlier instruction: it is the one ignored.
    pub(super) fn used_once(
        &mut self,
        cfg: &CheckConfig,
        kw: &str,
        loc: Location,
        last_seen: &mut BTreeMap<&'static str, Location>,
    ) {
        let key = match kw.to_ascii_lowercase().as_str() {
            "cmd" => "cmd",
            "entrypoint" => "entrypoint",
            _ => "healthcheck",
        };
        if let Some(prev) = last_seen.insert(key, loc) {
            let msg = format!(
                "Multiple {kw} instructions should not be used in the same stage because only the last one will be used"
            );
            self.warn(cfg, &MULTIPLE_INSTRUCTIONS_DISALLOWED, prev, msg);
        }
    }

    pub(super) fn secret(&mut self, cfg: &CheckConfig, what: &str, key: &str, loc: Location) {
        if looks_secret(key) {
            let msg = format!(
                "Do not use ARG or ENV instructions for sensitive data ({what} {})",
                kiln_dockerfile::go_quote(key)
            );
            self.warn(cfg, &SECRETS_USED_IN_ARG_OR_ENV, loc, msg);
        }
    }

    pub(super) fn copy_ignored(
        &mut self,
        cfg: &CheckConfig,
        loc: Location,
        add: bool,
        sources: &[String],
    ) {
        let Some(matcher) = self.opts.ignore else {
            return;
        };
        // Exceptions can re-include a file below an excluded directory; too hard to call.
        if matcher.has_exceptions() {
            return;
        }
        let verb = if add { "Add" } else { "Copy" };
        for src in sources {
            if add && is_remote(src) {
                continue;
            }
            let src = kiln_ignore::clean_path(src);
            if src == "." || src == "/" {
                let all = matcher
                    .rules()
                    .iter()
                    .any(|r| !r.is_exception() && matches!(r.pattern(), "*" | "**" | "**/*"));
                if !all {
                    continue;
                }
            }
            if matcher.excludes(&src) {
                let msg = format!(
                    "Attempting to {verb} file {} that is excluded by .dockerignore",
                    kiln_dockerfile::go_quote(&src)
                );
                self.warn(cfg, &COPY_IGNORED_FILE, loc, msg);
            }
        }
    }

    /// ExposeProtoCasing and ExposeInvalidFormat for one `[ip:][host:]port[/proto]`; false
    /// when the spec is invalid (BuildKit stops there with an error).
    pub(super) fn expose_port(&mut self, cfg: &CheckConfig, loc: Location, raw: &str) -> bool {
        let parts: Vec<&str> = raw.split(':').collect();
        let n = parts.len();
        let (ip, host, container) = match n {
            1 => (String::new(), "", parts[0]),
            2 => (String::new(), parts[0], parts[1]),
            _ => (parts[..n - 2].join(":"), parts[n - 2], parts[n - 1]),
        };
        let (port, proto) = container.split_once('/').unwrap_or((container, ""));
        if port.is_empty() || !matches!(proto.to_lowercase().as_str(), "" | "tcp" | "udp" | "sctp")
        {
            return false;
        }
        if proto != proto.to_lowercase() {
            let msg = format!("Defined protocol '{raw}' in EXPOSE instruction should be lowercase");
            self.warn(cfg, &EXPOSE_PROTO_CASING, loc, msg);
        }
        if !ip.is_empty() || !host.is_empty() {
            let msg = format!(
                "EXPOSE instruction should not define an IP address or host-port mapping, found '{raw}'"
            );
            self.warn(cfg, &EXPOSE_INVALID_FORMAT, loc, msg);
        }
        true
    }
}

fn is_remote(src: &str) -> bool {
    src.starts_with("http://")
        || src.starts_with("https://")
        || src.starts_with("git@")
        || src.ends_with(".git")
}

/// The closest candidate within an edit distance of 2, case-sensitive; none when `value`
/// itself is a candidate (then the problem is elsewhere).
pub(super) fn suggest<'a>(
    value: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        if c == value {
            return None;
        }
        let d = kiln_dockerfile::suggest::levenshtein(value, c);
        if d < best.map_or(3, |(bd, _)| bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Whether a variable's name says it holds sensitive data, by BuildKit's SecretsUsedInArgOrEnv
/// rule: a deny-listed word at either end of its `_`-separated words (or the whole name) and no
/// allow-listed one.
pub fn looks_secret(key: &str) -> bool {
    const DENY: [&str; 10] = [
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ];
    const ALLOW: [&str; 3] = ["public", "file", "version"];
    let lower = key.to_lowercase();
    let has = |tokens: &[&str]| {
        tokens.iter().any(|t| {
            lower == *t
                || lower.starts_with(&format!("{t}_"))
                || lower.ends_with(&format!("_{t}"))
                || lower.contains(&format!("_{t}_"))
        })
    };
    has(&DENY) && !has(&ALLOW)
}
