//! Property tests: no pattern or path makes the matcher panic, and answers are stable.

use kiln_ignore::{MatchInfo, Matcher};
use proptest::prelude::*;

/// Pattern text biased towards the characters that carry meaning.
fn pattern() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("*".to_owned()),
        Just("**".to_owned()),
        Just("?".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just("^".to_owned()),
        Just("!".to_owned()),
        Just("-".to_owned()),
        Just("\\".to_owned()),
        Just("/".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("[:alpha:]".to_owned()),
        Just("\\p{L}".to_owned()),
        Just("\\x{".to_owned()),
        Just("\\Q".to_owned()),
        Just("&&".to_owned()),
        "[a-c0-9]{1,3}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|v| v.concat())
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-c.]{0,3}|\\*|\\[|\\]|\\\\", 0..5).prop_map(|v| v.join("/"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn matching_never_panics(patterns in prop::collection::vec(pattern(), 0..4), path in path()) {
        if let Ok(m) = Matcher::new(&patterns) {
            let first = m.matches(&path).ok();
            prop_assert_eq!(first, m.matches(&path).ok());
            let excluded = m.excludes(&path);
            prop_assert_eq!(excluded, first.unwrap_or(false));
            prop_assert_eq!(m.excluding_rule(&path).is_some(), excluded);
            if let Ok((walked, _)) = m.matches_with_parent(&path, &MatchInfo::default()) {
                prop_assert_eq!(Some(walked), first);
            }
            let _ = m.can_skip_dir(&path);
            let _ = m.validate();
        }
    }

    #[test]
    fn dockerignore_text_never_panics(content in prop::collection::vec(pattern(), 0..6)) {
        let _ = Matcher::from_dockerignore(&content.join("\n"));
    }

    /// A skipped directory must not hide a path that `excludes` would let through.
    #[test]
    fn can_skip_dir_is_sound(
        patterns in prop::collection::vec("!?[a-c*/]{1,6}", 1..5),
        dir in "[a-c]{1,2}(/[a-c]{1,2})?",
        child in "[a-c*]{1,2}(/[a-c]{1,2})?",
    ) {
        if let Ok(m) = Matcher::new(&patterns)
            && m.can_skip_dir(&dir)
        {
            let below = format!("{dir}/{child}");
            prop_assert!(m.excludes(&below), "{patterns:?} skips {dir} but keeps {below}");
        }
    }
}
