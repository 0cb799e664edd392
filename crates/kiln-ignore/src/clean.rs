//! Lexical path cleaning with the rules of Go's `path.Clean`, which patternmatcher applies to
//! every pattern; matching the reference means cleaning exactly as it does.

/// Returns the shortest equivalent of a slash-separated path: `//` collapsed, `.` elements
/// dropped, `..` resolved against the element before it, trailing `/` removed. An empty result
/// is `.` (or `/` when the path was rooted).
pub fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    // Leading `..` elements of a relative path cannot be resolved and are kept.
    let mut kept_dotdot = 0;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.len() > kept_dotdot {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                    kept_dotdot += 1;
                }
            }
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// Go's `path.Dir`: everything before the last `/`, cleaned (`.` when there is no `/`).
pub(crate) fn dir(path: &str) -> String {
    match path.rfind('/') {
        Some(i) => clean(&path[..=i]),
        None => ".".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_follows_go_rules() {
        for (input, want) in [
            ("", "."),
            ("abc", "abc"),
            ("abc/def/", "abc/def"),
            ("a//b", "a/b"),
            ("./a/./b/.", "a/b"),
            ("a/../b", "b"),
            ("a/b/../../..", ".."),
            ("../../a/../b", "../../b"),
            ("/../a", "/a"),
            ("/", "/"),
            ("//", "/"),
            ("!foo/../bar", "bar"),
            ("docs/", "docs"),
        ] {
            assert_eq!(clean(input), want, "clean({input:?})");
        }
    }

    #[test]
    fn dir_follows_go_rules() {
        for (input, want) in [
            ("file", "."),
            ("file/", "file"),
            ("a/b/c", "a/b"),
            ("/", "/"),
            ("/a", "/"),
            ("a//b", "a"),
        ] {
            assert_eq!(dir(input), want, "dir({input:?})");
        }
    }
}
