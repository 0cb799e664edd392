//! Per-instruction argument parsing into the argument list of a [`Node`].

use super::{Node, NodeDepth};

/// Go's `reWhitespace`: `[\t\v\f\r ]+`.
pub(crate) fn is_ws(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// What a line parser produces: the argument chain (or the ONBUILD child) and the JSON marker.
pub(crate) struct Parsed {
    pub args: Vec<Node>,
    pub json: bool,
}

impl Parsed {
    fn values<I: IntoIterator<Item = String>>(values: I) -> Self {
        Self {
            args: values.into_iter().map(Node::leaf).collect(),
            json: false,
        }
    }

    fn none() -> Self {
        Self {
            args: Vec::new(),
            json: false,
        }
    }
}

pub(crate) const NOT_STRING_ARRAY: &str =
    "when using JSON array syntax, arrays must be comprised of strings only";

/// Quote-aware splitting used by ARG, ENV and LABEL: splits on whitespace outside quotes and
/// keeps quotes and escapes in the words.
pub fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut pos = 0;
    while pos <= chars.len() {
        let ch = chars.get(pos).copied();
        if phase == Phase::Spaces {
            match ch {
                None => break,
                Some(c) if c.is_whitespace() => {
                    pos += 1;
                    continue;
                }
                Some(_) => phase = Phase::Word,
            }
        }
        let Some(mut ch) = ch else {
            if blank_ok || !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            break;
        };
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                // An unquoted escape keeps itself and protects the next character.
                word.push(ch);
                pos += 1;
                ch = chars[pos];
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            word.push(ch);
            pos += 1;
            ch = chars[pos];
        }
        word.push(ch);
        pos += 1;
    }
    words
}

/// ENV and LABEL: `name value` (legacy, separator "") or `name=value ...` (separator "=").
pub(crate) fn parse_name_val(rest: &str, key: &str, escape: char) -> Result<Parsed, String> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(Parsed::none());
    };
    if !first.contains('=') {
        let Some(i) = rest.find(is_ws) else {
            return Err(format!("{key} must have two arguments"));
        };
        let value = rest[i..].trim_start_matches(is_ws);
        return Ok(Parsed::values([
            rest[..i].to_string(),
            value.to_string(),
            String::new(),
        ]));
    }
    let mut values = Vec::with_capacity(words.len() * 3);
    for word in words {
        let Some((name, value)) = word.split_once('=') else {
            return Err(format!(
                "Syntax error - can't find = in {}. Must be of the form: name=value",
                crate::quote::go_quote(&word)
            ));
        };
        values.extend([name.to_string(), value.to_string(), "=".to_string()]);
    }
    Ok(Parsed::values(values))
}

/// ARG: quote-aware words, each kept whole.
pub(crate) fn parse_name_or_name_val(rest: &str, escape: char) -> Parsed {
    Parsed::values(parse_words(rest, escape))
}

/// FROM, EXPOSE and the non-JSON form of ADD/COPY/VOLUME.
pub(crate) fn parse_strings_whitespace_delimited(rest: &str) -> Parsed {
    if rest.is_empty() {
        return Parsed::none();
    }
    Parsed::values(
        rest.split(is_ws)
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    )
}

/// MAINTAINER, USER, WORKDIR, STOPSIGNAL: the whole text.
pub(crate) fn parse_string(rest: &str) -> Parsed {
    if rest.is_empty() {
        return Parsed::none();
    }
    Parsed::values([rest.to_string()])
}

pub(crate) enum JsonError {
    /// Not JSON: callers fall back to the shell form.
    NotJson,
    /// A JSON array with a non-string element: a hard error.
    NotStringArray,
}

/// Decodes the exec form `["a", "b"]`.
pub fn parse_json_array(rest: &str) -> Result<Vec<String>, bool> {
    parse_json(rest).map_err(|e| matches!(e, JsonError::NotStringArray))
}

pub(crate) fn parse_json(rest: &str) -> Result<Vec<String>, JsonError> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Err(JsonError::NotJson);
    }
    let values: Vec<serde_json::Value> =
        serde_json::from_str(rest).map_err(|_| JsonError::NotJson)?;
    values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(JsonError::NotStringArray),
        })
        .collect()
}

/// RUN, CMD, ENTRYPOINT, SHELL: a JSON array, or the whole text as one argument.
pub(crate) fn parse_maybe_json(rest: &str) -> Result<Parsed, String> {
    if rest.is_empty() {
        return Ok(Parsed::none());
    }
    match parse_json(rest) {
        Ok(values) => Ok(Parsed {
            json: true,
            ..Parsed::values(values)
        }),
        Err(JsonError::NotStringArray) => Err(NOT_STRING_ARRAY.to_string()),
        Err(JsonError::NotJson) => Ok(Parsed::values([rest.to_string()])),
    }
}

/// ADD, COPY, VOLUME: a JSON array, or whitespace-separated words.
pub(crate) fn parse_maybe_json_to_list(rest: &str) -> Result<Parsed, String> {
    match parse_json(rest) {
        Ok(values) => Ok(Parsed {
            json: true,
            ..Parsed::values(values)
        }),
        Err(JsonError::NotStringArray) => Err(NOT_STRING_ARRAY.to_string()),
        Err(JsonError::NotJson) => Ok(parse_strings_whitespace_delimited(rest)),
    }
}

/// HEALTHCHECK: the type word (CMD, NONE, ...) then the rest like CMD.
pub(crate) fn parse_health_config(rest: &str) -> Result<Parsed, String> {
    let sep = rest.find(char::is_whitespace).unwrap_or(rest.len());
    if sep == 0 {
        return Ok(Parsed::none());
    }
    let cmd = rest[sep..].trim_start();
    let parsed = parse_maybe_json(cmd)?;
    let mut args = vec![Node::leaf(rest[..sep].to_string())];
    args.extend(parsed.args);
    Ok(Parsed {
        args,
        json: parsed.json,
    })
}

/// ONBUILD: the rest is a whole instruction, nested as the only child of one argument node.
pub(crate) fn parse_sub_command(
    rest: &str,
    escape: char,
    depth: NodeDepth,
) -> Result<Parsed, String> {
    if rest.is_empty() {
        return Ok(Parsed::none());
    }
    let child = super::new_node_from_line(rest, escape, Vec::new(), depth.deeper()?)?;
    let mut holder = Node::default();
    holder.children.push(child);
    Ok(Parsed {
        args: vec![holder],
        json: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_quotes_and_escapes() {
        assert_eq!(
            parse_words(r#"a\ b 'c d' "e\"f" g\"#, '\\'),
            [r"a\ b", "'c d'", r#""e\"f""#, "g"]
        );
        assert_eq!(parse_words("x=''", '\\'), ["x=''"]);
        assert_eq!(parse_words("  ", '\\'), Vec::<String>::new());
    }

    #[test]
    fn name_val_forms() {
        let v = |p: Parsed| {
            p.args
                .into_iter()
                .map(|n| n.value.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            v(parse_name_val("a  b c", "ENV", '\\').unwrap()),
            ["a", "b c", ""]
        );
        assert_eq!(
            v(parse_name_val("a=1 b=\"2 3\"", "ENV", '\\').unwrap()),
            ["a", "1", "=", "b", "\"2 3\"", "="]
        );
        assert!(parse_name_val("a=1 b", "ENV", '\\').is_err());
    }

    #[test]
    fn json_or_shell() {
        assert!(parse_maybe_json("[\"a\"]").unwrap().json);
        assert!(!parse_maybe_json("[a]").unwrap().json);
        assert!(parse_maybe_json("[1]").is_err());
    }
}
