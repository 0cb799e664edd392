//! Heredocs (`<<EOF`, `<<-EOF`, `<<'EOF'`, `3<<EOF`) attached to RUN, COPY and ADD.

use crate::shell::ShellLex;

/// A heredoc body attached to an instruction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Heredoc {
    /// The terminator word, with quotes removed.
    pub name: String,
    /// The body, each line with its newline. Raw as in the file for RUN; for COPY/ADD sources
    /// leading tabs are already removed when `chomp` is set.
    pub content: String,
    /// False when any part of the terminator was quoted: the body is then not expanded.
    pub expand: bool,
    /// True for `<<-`: leading tabs are stripped from every body line.
    pub chomp: bool,
    /// The number written before `<<` (0 when none).
    pub file_descriptor: u64,
}

/// Environment with nothing set, for lexing heredoc words.
struct NoEnv;

impl crate::shell::Env for NoEnv {
    fn get(&self, _: &str) -> Option<&str> {
        None
    }
}

/// Classifies one word: `Ok(Some(_))` for a heredoc introducer, `Ok(None)` for any other word,
/// `Err` for a malformed introducer such as an unbalanced quote in `<<'EOF`.
pub fn parse_heredoc(word: &str) -> Result<Option<Heredoc>, String> {
    // ^(\d*)<<(-?)([^<]*)$
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let Some(after) = word[digits..].strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, rest) = match after.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, after),
    };
    if rest.is_empty() || rest.contains('<') {
        return Ok(None);
    }
    // Go's ParseUint saturates on overflow and the error is ignored.
    let file_descriptor = if digits == 0 {
        0
    } else {
        word[..digits].parse::<u64>().unwrap_or(u64::MAX)
    };

    let mut lex = ShellLex::new('\\');
    lex.skip_unset_env = true;
    let words = lex.process_words(rest, &NoEnv).map_err(|e| e.to_string())?;
    let [name] = words.as_slice() else {
        return Ok(None);
    };
    lex.raw_quotes = true;
    let raw = lex.process_words(rest, &NoEnv).map_err(|e| e.to_string())?;
    if raw.len() != 1 {
        return Err(format!(
            "internal lexing of heredoc produced inconsistent results: {rest}"
        ));
    }
    // If quoting removed quote characters, part of the terminator was quoted.
    let quotes = |s: &str| s.chars().filter(|c| *c == '\'' || *c == '"').count();
    Ok(Some(Heredoc {
        name: name.clone(),
        content: String::new(),
        expand: quotes(name) == quotes(&raw[0]),
        chomp,
        file_descriptor,
    }))
}

/// The heredocs introduced on a logical instruction line, in order.
pub fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, String> {
    let lex = ShellLex {
        raw_quotes: true,
        raw_escapes: true,
        skip_unset_env: true,
        ..ShellLex::new('\\')
    };
    // A line that does not lex has no heredocs, as in BuildKit.
    let words = lex.process_words(line, &NoEnv).unwrap_or_default();
    let mut docs = Vec::new();
    let mut i = 0;
    while i < words.len() {
        // `<< EOF` is one introducer written as two words.
        if words[i] == "<<"
            && let Some(next) = words.get(i + 1)
            && let Some(doc) = parse_heredoc(&format!("<< {next}"))?
        {
            docs.push(doc);
            i += 2;
            continue;
        }
        if let Some(doc) = parse_heredoc(&words[i])? {
            docs.push(doc);
        }
        i += 1;
    }
    Ok(docs)
}

/// Removes the leading tabs of every line (`<<-`).
pub fn chomp_heredoc_content(content: &str) -> String {
    content
        .split_inclusive('\n')
        .map(|l| l.trim_start_matches('\t'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words() {
        let h = parse_heredoc("12<<-'E F'").unwrap().unwrap();
        assert_eq!(
            (h.name.as_str(), h.chomp, h.expand, h.file_descriptor),
            ("E F", true, false, 12)
        );
        assert_eq!(parse_heredoc("<<"), Ok(None));
        assert!(parse_heredoc("<<\"X").is_err());
    }

    #[test]
    fn from_line() {
        let names = |l: &str| {
            heredocs_from_line(l)
                .unwrap()
                .into_iter()
                .map(|h| h.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names("RUN <<A cat <<-B >x"), ["A", "B"]);
        assert_eq!(names("RUN << C"), ["C"]);
        assert!(names("RUN '<<A'").is_empty());
    }

    #[test]
    fn chomp() {
        assert_eq!(chomp_heredoc_content("\t\ta\n b\n\tc"), "a\n b\nc");
    }
}
