//! Near-miss suggestions ("did you mean FROM?") by edit distance.

/// Returns the candidate closest to `value` when it is close enough to be a plausible typo.
pub fn closest<'a>(value: &str, candidates: &[&'a str], case_sensitive: bool) -> Option<&'a str> {
    let norm = |s: &str| {
        if case_sensitive {
            s.to_string()
        } else {
            s.to_lowercase()
        }
    };
    let value = norm(value);
    let len = value.chars().count();
    if len == 0 {
        return None;
    }
    // Allow about one edit per three characters, and at least two, so `FOO` still finds `FROM`.
    let limit = (len / 3).max(2);
    candidates
        .iter()
        .map(|c| (levenshtein(&value, &norm(c)), *c))
        .filter(|(d, _)| *d <= limit && *d < len)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The edit distance between two strings, in characters.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("FOO", "FROM"), 2);
    }

    #[test]
    fn suggests_close_names_only() {
        let names = ["FROM", "RUN", "COPY", "ENTRYPOINT"];
        assert_eq!(closest("FRUM", &names, false), Some("FROM"));
        assert_eq!(closest("foo", &names, false), Some("FROM"));
        assert_eq!(closest("ENTRYPIONT", &names, false), Some("ENTRYPOINT"));
        assert_eq!(closest("XYZZY", &names, false), None);
        assert_eq!(closest("from", &names, true), None);
    }
}
