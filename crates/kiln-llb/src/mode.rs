//! `--chmod` values: an octal mode, or a symbolic one as chmod(1) takes it (`u=rwx,go=rx`, `+x`,
//! `a+r,u+w`, `go=u-w`, `+X`), which BuildKit accepts through BSD `setmode` semantics with a zero
//! umask. A symbolic mode is applied to each copied file on its own: the result depends on the
//! file's mode and on whether it is a directory (`X`).

const SETUID: u32 = 0o4000;
const SETGID: u32 = 0o2000;
const STICKY: u32 = 0o1000;
/// The bits `=` clears when no class is named (everything but the sticky bit, as BSD does).
const STANDARD: u32 = SETUID | SETGID | 0o777;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModeError {
    #[error("invalid chmod parameter: '{0}'. it should be octal string and between 0 and 07777")]
    Octal(String),
    #[error(
        "invalid chmod parameter: '{0}': invalid syntax (expected an octal mode or a symbolic one such as `u=rwx,go=rx` or `+x`)"
    )]
    Symbolic(String),
}

/// A parsed `--chmod`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    Octal(u32),
    Symbolic(Vec<Action>),
}

/// One step of a symbolic mode, applied in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Clear(u32),
    Set(u32),
    /// `X`: set when the file is a directory or had any execute bit before the whole mode
    /// was applied.
    SetIfExecutable(u32),
    /// `g=u`, `o+g`...: copy the rwx bits of class `from` into each class of `to`.
    Copy {
        from: Class,
        to: [bool; 3],
        clear: bool,
        set: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    User,
    Group,
    Other,
}

impl Class {
    fn shift(self) -> u32 {
        match self {
            Class::User => 6,
            Class::Group => 3,
            Class::Other => 0,
        }
    }
}

impl Chmod {
    /// Parses a `--chmod` value: digits are an octal mode up to 07777, anything else a
    /// symbolic mode.
    pub fn parse(text: &str) -> Result<Chmod, ModeError> {
        if text.starts_with(|c: char| c.is_ascii_digit()) {
            return u32::from_str_radix(text, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .map(Chmod::Octal)
                .ok_or_else(|| ModeError::Octal(text.to_string()));
        }
        parse_symbolic(text)
            .map(Chmod::Symbolic)
            .ok_or_else(|| ModeError::Symbolic(text.to_string()))
    }

    /// The permission bits (with setuid, setgid and sticky, `0o7777`) a file of mode `mode`
    /// gets.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let actions = match self {
            Chmod::Octal(m) => return *m & 0o7777,
            Chmod::Symbolic(actions) => actions,
        };
        let before = mode & 0o7777;
        let mut m = before;
        for action in actions {
            match *action {
                Action::Clear(bits) => m &= !bits,
                Action::Set(bits) => m |= bits,
                Action::SetIfExecutable(bits) => {
                    if is_dir || before & 0o111 != 0 {
                        m |= bits;
                    }
                }
                Action::Copy {
                    from,
                    to,
                    clear,
                    set,
                } => {
                    let value = (m >> from.shift()) & 0o7;
                    for (class, wanted) in [Class::User, Class::Group, Class::Other]
                        .into_iter()
                        .zip(to)
                    {
                        if !wanted {
                            continue;
                        }
                        let shift = class.shift();
                        if clear {
                            // `=` empties the class first; `-` takes away the copied bits.
                            let cleared = if set { 0o7 } else { value };
                            m &= !(cleared << shift);
                        }
                        if set {
                            m |= value << shift;
                        }
                    }
                }
            }
        }
        m
    }
}

/// `who` bits of a clause: the classes named, with their special bit.
fn who_bits(c: u8) -> Option<u32> {
    Some(match c {
        b'u' => SETUID | 0o700,
        b'g' => SETGID | 0o070,
        b'o' => 0o007,
        b'a' => STANDARD,
        _ => return None,
    })
}

/// Clauses separated by `,`; each is `[ugoa]*` then one or more `[+-=][rwxXstugo]*`.
fn parse_symbolic(text: &str) -> Option<Vec<Action>> {
    let mut actions = Vec::new();
    for clause in text.split(',') {
        let bytes = clause.as_bytes();
        let mut i = 0;
        let mut who = 0u32;
        while let Some(bits) = bytes.get(i).and_then(|c| who_bits(*c)) {
            who |= bits;
            i += 1;
        }
        if i == bytes.len() {
            return None;
        }
        while i < bytes.len() {
            let op = bytes[i];
            if !matches!(op, b'+' | b'-' | b'=') {
                return None;
            }
            i += 1;
            let mut op_who = who & !STICKY;
            let (mut perm, mut perm_x) = (0u32, 0u32);
            let mut equal_done = false;
            // Special bits only count when some class besides "other" is affected.
            let specials_apply = who == 0 || who & !0o007 != 0;
            while let Some(&c) = bytes.get(i) {
                match c {
                    b'r' => perm |= 0o444,
                    b'w' => perm |= 0o222,
                    b'x' => perm |= 0o111,
                    b'X' if op == b'-' => perm |= 0o111,
                    b'X' => perm_x = 0o111,
                    b's' if specials_apply => perm |= SETUID | SETGID,
                    b't' if specials_apply => {
                        op_who |= STICKY;
                        perm |= STICKY;
                    }
                    b's' | b't' => {}
                    b'u' | b'g' | b'o' => {
                        if perm != 0 {
                            push(&mut actions, op, op_who, perm);
                            perm = 0;
                        }
                        if op == b'=' {
                            equal_done = true;
                        }
                        if perm_x != 0 {
                            push(&mut actions, b'X', op_who, perm_x);
                            perm_x = 0;
                        }
                        actions.push(copy_action(c, op_who, op));
                    }
                    _ => break,
                }
                i += 1;
            }
            if perm != 0 || (op == b'=' && !equal_done) {
                push(&mut actions, op, op_who, perm);
            }
            if perm_x != 0 {
                push(&mut actions, b'X', op_who, perm_x);
            }
        }
    }
    Some(actions)
}

fn push(actions: &mut Vec<Action>, op: u8, who: u32, perm: u32) {
    let bits = if who == 0 { perm } else { who & perm };
    match op {
        b'=' => {
            actions.push(Action::Clear(if who == 0 { STANDARD } else { who }));
            actions.push(Action::Set(bits));
        }
        b'+' => actions.push(Action::Set(bits)),
        b'-' => actions.push(Action::Clear(bits)),
        _ => actions.push(Action::SetIfExecutable(bits)),
    }
}

fn copy_action(from: u8, who: u32, op: u8) -> Action {
    let from = match from {
        b'u' => Class::User,
        b'g' => Class::Group,
        _ => Class::Other,
    };
    let to = if who == 0 {
        [true; 3]
    } else {
        [who & 0o400 != 0, who & 0o040 != 0, who & 0o004 != 0]
    };
    Action::Copy {
        from,
        to,
        clear: op != b'+',
        set: op != b'-',
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(mode: &str, on: u32, dir: bool) -> u32 {
        Chmod::parse(mode).unwrap().apply(on, dir)
    }

    #[test]
    fn octal_modes() {
        assert_eq!(Chmod::parse("755").unwrap(), Chmod::Octal(0o755));
        assert_eq!(Chmod::parse("0644").unwrap(), Chmod::Octal(0o644));
        assert_eq!(apply("4755", 0o600, false), 0o4755);
        assert!(matches!(Chmod::parse("8"), Err(ModeError::Octal(_))));
        assert!(matches!(Chmod::parse("17777"), Err(ModeError::Octal(_))));
    }

    #[test]
    fn symbolic_modes() {
        assert_eq!(apply("u=rwx,g=rx,o=", 0o644, false), 0o750);
        assert_eq!(apply("+x", 0o644, false), 0o755);
        assert_eq!(apply("a+r,u+w", 0o000, false), 0o644);
        assert_eq!(apply("go-w", 0o666, false), 0o644);
        assert_eq!(apply("go=", 0o777, true), 0o700);
        assert_eq!(apply("u=rwx,go=u-w", 0, false), 0o755);
        assert_eq!(apply("u+x-w", 0o644, false), 0o544);
        assert_eq!(apply("o=u", 0o640, false), 0o646);
        assert_eq!(apply("g+o", 0o605, false), 0o655);
    }

    #[test]
    fn capital_x_depends_on_the_file() {
        assert_eq!(apply("+X", 0o644, false), 0o644);
        assert_eq!(apply("+X", 0o644, true), 0o755);
        assert_eq!(apply("+X", 0o744, false), 0o755);
        // `=` clears first, but X looks at the mode before the change.
        assert_eq!(apply("=rw,+X", 0o755, false), 0o777);
        assert_eq!(apply("a=rX", 0o700, false), 0o555);
        assert_eq!(apply("a=rX", 0o600, false), 0o444);
    }

    #[test]
    fn special_bits() {
        assert_eq!(apply("u+s", 0o755, false), 0o4755);
        assert_eq!(apply("g+s", 0o755, true), 0o2755);
        assert_eq!(apply("o+s", 0o755, false), 0o755);
        assert_eq!(apply("+t", 0o777, true), 0o1777);
        assert_eq!(apply("u=rw", 0o4755, false), 0o655);
    }

    #[test]
    fn malformed_modes() {
        for bad in ["", "u", "u+z", "rwx", "u+x,", ",u+x", "z=r", "u=r;"] {
            assert!(
                matches!(Chmod::parse(bad), Err(ModeError::Symbolic(_))),
                "{bad:?} should fail"
            );
        }
    }
}
