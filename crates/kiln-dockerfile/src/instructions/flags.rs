//! Instruction flags (`--name` / `--name=value` before the arguments), as BuildKit's `BFlags`.

use std::collections::BTreeSet;

/// The type of a declared flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// `--x`, `--x=true`, `--x=false`.
    Bool,
    /// `--x=value`, given at most once.
    String,
    /// `--x=value`, repeatable.
    Strings,
}

#[derive(Debug, Clone)]
struct Flag {
    name: String,
    kind: FlagKind,
    value: String,
    values: Vec<String>,
}

/// Declared flags plus the flag words of one instruction.
#[derive(Debug, Clone)]
pub struct BFlags {
    args: Vec<String>,
    flags: Vec<Flag>,
    used: BTreeSet<String>,
}

impl BFlags {
    /// Wraps the flag words of an instruction (`["--from=a", "--link"]`).
    pub fn new(args: Vec<String>) -> Self {
        Self {
            args,
            flags: Vec::new(),
            used: BTreeSet::new(),
        }
    }

    fn add(&mut self, name: &str, kind: FlagKind, value: &str) {
        self.flags.push(Flag {
            name: name.to_string(),
            kind,
            value: value.to_string(),
            values: Vec::new(),
        });
    }

    pub fn add_bool(&mut self, name: &str, default: bool) {
        self.add(name, FlagKind::Bool, if default { "true" } else { "false" });
    }

    pub fn add_string(&mut self, name: &str, default: &str) {
        self.add(name, FlagKind::String, default);
    }

    pub fn add_strings(&mut self, name: &str) {
        self.add(name, FlagKind::Strings, "");
    }

    /// Parses the flag words against the declarations. Parsing stops at `--`.
    pub fn parse(&mut self) -> Result<(), String> {
        for arg in &self.args {
            if arg == "--" {
                return Ok(());
            }
            let Some(body) = arg.strip_prefix("--") else {
                return Err(format!("arg should start with -- : {arg}"));
            };
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some(flag) = self.flags.iter_mut().find(|f| f.name == name) else {
                let names: Vec<&str> = self.flags.iter().map(|f| f.name.as_str()).collect();
                let mut msg = format!("unknown flag: --{name}");
                if let Some(s) = crate::suggest::closest(name, &names, true) {
                    msg.push_str(&format!(" (did you mean --{s}?)"));
                }
                return Err(msg);
            };
            if flag.kind != FlagKind::Strings && self.used.contains(name) {
                return Err(format!("duplicate flag specified: --{name}"));
            }
            self.used.insert(name.to_string());
            match (flag.kind, value) {
                (FlagKind::Bool, Some("")) | (FlagKind::String | FlagKind::Strings, None) => {
                    return Err(format!("missing a value on flag: --{name}"));
                }
                (FlagKind::Bool, v) => {
                    flag.value = match v.map(str::to_ascii_lowercase).as_deref() {
                        None | Some("true") => "true".to_string(),
                        Some("false") => "false".to_string(),
                        Some(_) => {
                            return Err(format!(
                                "expecting boolean value for flag --{name}, not: {}",
                                v.unwrap_or_default()
                            ));
                        }
                    };
                }
                (FlagKind::String, Some(v)) => flag.value = v.to_string(),
                (FlagKind::Strings, Some(v)) => flag.values.push(v.to_string()),
            }
        }
        Ok(())
    }

    fn get(&self, name: &str) -> Option<&Flag> {
        self.flags.iter().find(|f| f.name == name)
    }

    /// The value of a string flag: the given one, else the default.
    pub fn string(&self, name: &str) -> Option<&str> {
        self.get(name).map(|f| f.value.as_str())
    }

    /// The value of a string flag only when it was given.
    pub fn given_string(&self, name: &str) -> Option<String> {
        self.is_used(name)
            .then(|| self.string(name).unwrap_or_default().to_string())
    }

    /// The value of a bool flag.
    pub fn bool(&self, name: &str) -> bool {
        self.get(name).is_some_and(|f| f.value == "true")
    }

    /// Every value of a repeatable flag.
    pub fn strings(&self, name: &str) -> &[String] {
        self.get(name).map_or(&[], |f| &f.values)
    }

    pub fn is_used(&self, name: &str) -> bool {
        self.used.contains(name)
    }

    /// The names of the flags given, sorted.
    pub fn used(&self) -> Vec<&str> {
        self.used.iter().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> BFlags {
        let mut f = BFlags::new(args.iter().map(|s| s.to_string()).collect());
        f.add_bool("link", false);
        f.add_string("from", "");
        f.add_strings("exclude");
        f
    }

    #[test]
    fn parses_values() {
        let mut f = flags(&["--link", "--from=a", "--exclude=x", "--exclude=y"]);
        f.parse().unwrap();
        assert!(f.bool("link"));
        assert_eq!(f.string("from"), Some("a"));
        assert_eq!(f.strings("exclude"), ["x", "y"]);
        assert_eq!(f.used(), ["exclude", "from", "link"]);
    }

    #[test]
    fn errors() {
        let err = |args: &[&str]| flags(args).parse().unwrap_err();
        assert_eq!(
            err(&["--form=a"]),
            "unknown flag: --form (did you mean --from?)"
        );
        assert_eq!(
            err(&["--from=a", "--from=b"]),
            "duplicate flag specified: --from"
        );
        assert_eq!(err(&["--from"]), "missing a value on flag: --from");
        assert_eq!(err(&["--link="]), "missing a value on flag: --link");
        assert_eq!(
            err(&["--link=yes"]),
            "expecting boolean value for flag --link, not: yes"
        );
    }
}
