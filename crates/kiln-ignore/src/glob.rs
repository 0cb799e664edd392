//! Syntax check of a pattern as Go's `filepath.Match` (Unix) performs it. patternmatcher
//! validates patterns this way when the matcher is built, before its own regular-expression
//! translation, so both checks are needed to reject exactly what the reference rejects.

/// Returns false when `filepath.Match` would report `ErrBadPattern` for this pattern.
///
/// `filepath.Match` checks every chunk (a run of non-`*` text) of the pattern, and a chunk's
/// validity does not depend on the name being matched, so checking each chunk on its own is
/// equivalent.
pub(crate) fn is_valid(pattern: &str) -> bool {
    let mut rest = pattern;
    while !rest.is_empty() {
        let (chunk, after) = scan_chunk(rest);
        if !chunk_is_valid(chunk) {
            return false;
        }
        rest = after;
    }
    true
}

/// Skips leading stars and returns the chunk up to the next star outside a class.
fn scan_chunk(pattern: &str) -> (&str, &str) {
    let pattern = pattern.trim_start_matches('*');
    let bytes = pattern.as_bytes();
    let mut in_range = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if i + 1 < bytes.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    // `i` can land inside a multi-byte character only after a `\` skip, and only on a
    // continuation byte, which is never one of the bytes above; step to the next boundary.
    while !pattern.is_char_boundary(i) {
        i += 1;
    }
    pattern.split_at(i)
}

fn chunk_is_valid(chunk: &str) -> bool {
    let mut chars = chunk.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '[' => {
                chars.next_if_eq(&'^');
                let mut ranges = 0;
                loop {
                    if ranges > 0 && chars.next_if_eq(&']').is_some() {
                        break;
                    }
                    if class_char(&mut chars).is_none() {
                        return false;
                    }
                    if chars.next_if_eq(&'-').is_some() && class_char(&mut chars).is_none() {
                        return false;
                    }
                    ranges += 1;
                }
            }
            '\\' if chars.next().is_none() => return false,
            _ => {}
        }
    }
    true
}

/// Go's `getEsc`: one (possibly escaped) class character, which must not be `-` or `]` and
/// must be followed by more pattern text.
fn class_char(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<char> {
    let c = match chars.next()? {
        '-' | ']' => return None,
        '\\' => chars.next()?,
        c => c,
    };
    chars.peek()?;
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects_like_filepath_match() {
        for good in [
            "abc",
            "*",
            "a*b?c",
            "[abc]",
            "[^a-z]",
            "[\\]a]",
            "[x\\-]",
            "[*]",
            "[Local-Only]",
            "a\\*b",
            "[[:alpha:]]",
            "**/x",
        ] {
            assert!(is_valid(good), "{good:?} should be valid");
        }
        for bad in [
            "[", "[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[^", "[^bc", "a[", "a\\", "*[",
            "x*[]",
        ] {
            assert!(!is_valid(bad), "{bad:?} should be invalid");
        }
    }
}
