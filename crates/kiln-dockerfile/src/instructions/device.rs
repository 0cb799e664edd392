//! The value of `RUN --device=`.

/// A device request: `name[,required[=bool]]` or `name=<name>,...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub required: bool,
}

/// Parses one `--device` value (comma-separated fields, CSV quoting allowed).
pub fn parse_device(value: &str) -> Result<Device, String> {
    let mut name: Option<String> = None;
    let mut required = false;
    for field in csv_fields(value)? {
        let (key, val) = match field.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(v)),
            None => (field.to_ascii_lowercase(), None),
        };
        let new_name = match (key.as_str(), val) {
            ("required", None) => {
                required = true;
                continue;
            }
            ("required", Some(v)) => {
                required =
                    parse_go_bool(v).ok_or_else(|| format!("invalid value for required: {v}"))?;
                continue;
            }
            ("name", Some(v)) => v.to_string(),
            _ => field.clone(),
        };
        if let Some(existing) = &name {
            return Err(format!("device name already set to {existing}"));
        }
        name = Some(new_name);
    }
    match name {
        Some(name) if !name.is_empty() => Ok(Device { name, required }),
        _ => Err(format!(
            "device name is required in {}",
            crate::quote::go_quote(value)
        )),
    }
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Splits one CSV record: fields may be quoted with `"`, where `""` is a literal quote.
pub(crate) fn csv_fields(s: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("extraneous or missing \" in quoted-field: {s}")),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err(format!("extraneous or missing \" in quoted-field: {s}")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err(format!("bare \" in non-quoted-field: {s}")),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        assert_eq!(
            csv_fields("a,\"b,c\",\"d\"\"e\"").unwrap(),
            ["a", "b,c", "d\"e"]
        );
        assert!(csv_fields("a\"b").is_err());
        assert!(csv_fields("\"ab").is_err());
    }

    #[test]
    fn devices() {
        let d = parse_device("x=1,required=false").unwrap();
        assert_eq!(
            d,
            Device {
                name: "x=1".into(),
                required: false
            }
        );
        assert!(parse_device("required").is_err());
        assert!(parse_device("a,required=maybe").is_err());
    }
}
