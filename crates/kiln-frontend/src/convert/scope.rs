//! The variables a stage's instructions see, kept as BuildKit's dockerfile2llb keeps them: one
//! environment (its LLB state's) that both `ENV` and a valued `ARG` write to, the last write of a
//! name winning whatever instruction made it, and the list of declared `ARG`s that a `RUN`'s
//! history entry shows (`RUN |2 A=1 B=2 ...`). The image config's `Env` is separate: only `ENV`
//! writes it.
//!
//! A stage built `FROM` another stage starts from a copy of that stage's scope (its ARG values
//! included), then writes its image's `Env` over it, as BuildKit does when it dispatches a stage.

use std::collections::BTreeMap;

#[derive(Clone, Debug, Default)]
pub(super) struct Scope {
    /// Name and value, in the order of each name's last write (BuildKit's `EnvList`).
    env: Vec<(String, String)>,
    /// Declared ARGs in the order first declared; a re-declaration updates the value in place.
    args: Vec<(String, Option<String>)>,
}

impl Scope {
    /// Sets `name`, moving it after every other name.
    pub(super) fn set_env(&mut self, name: &str, value: &str) {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_string(), value.to_string()));
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The variables word expansion sees.
    pub(super) fn vars(&self) -> BTreeMap<String, String> {
        self.env.iter().cloned().collect()
    }

    /// The environment a RUN gets, `NAME=value`.
    pub(super) fn env_list(&self) -> Vec<String> {
        self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// Records an ARG declaration; a valued one also writes the environment.
    pub(super) fn declare_arg(&mut self, name: &str, value: Option<String>) {
        if let Some(v) = &value {
            self.set_env(name, v);
        }
        match self.args.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.args.push((name.to_string(), value)),
        }
    }

    /// The names declared with ARG.
    pub(super) fn arg_names(&self) -> std::collections::BTreeSet<String> {
        self.args.iter().map(|(k, _)| k.clone()).collect()
    }

    /// The `NAME=value` list BuildKit prefixes a RUN's history with: every declared ARG, valued
    /// from the environment (an ENV of the same name wins) or else its declaration.
    pub(super) fn history_args(&self) -> Vec<String> {
        self.args
            .iter()
            .map(|(k, v)| {
                let v = self.get(k).or(v.as_deref()).unwrap_or("");
                format!("{k}={v}")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_write_wins_and_moves_to_the_end() {
        let mut s = Scope::default();
        s.set_env("PATH", "/bin");
        s.set_env("A", "env");
        s.declare_arg("A", Some("arg".into()));
        s.declare_arg("B", None);
        s.set_env("PATH", "/usr/bin");
        assert_eq!(s.env_list(), vec!["A=arg", "PATH=/usr/bin"]);
        assert_eq!(s.history_args(), vec!["A=arg", "B="]);
        s.set_env("A", "env2");
        s.declare_arg("B", Some("b".into()));
        assert_eq!(s.history_args(), vec!["A=env2", "B=b"]);
    }
}
