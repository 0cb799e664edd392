//! The value of `RUN --device=`.

/// A device request: `name[,required[=bool]]` or `name=<name>,...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub required: bool,
}

/// Parses one `--device` value (comma-separated fields, CSV quoting allowed) as BuildKit's
/// `ParseDevice`: the first field is the name unless it is `required` or `name=...`, so
/// `vendor.com/class=gpu` is a name. The name may be empty (`--device=required`): such a device
/// is never registered, which fails the step when it is required.
pub fn parse_device(value: &str) -> Result<Device, String> {
    if value.is_empty() {
        return Err("failed to parse csv devices: EOF".into());
    }
    let mut name: Option<String> = None;
    let mut required = false;
    for (i, field) in csv_fields(value)?.into_iter().enumerate() {
        let Some((key, val)) = field.split_once('=') else {
            if field.eq_ignore_ascii_case("required") {
                required = true;
            } else if i == 0 {
                name = Some(field);
            } else {
                return Err(format!("invalid field '{field}' must be a key=value pair"));
            }
            continue;
        };
        match key.to_ascii_lowercase().as_str() {
            "name" => {
                if let Some(existing) = &name {
                    return Err(format!("device name already set to {existing}"));
                }
                name = Some(val.to_string());
            }
            "required" => {
                required = parse_go_bool(val)
                    .ok_or_else(|| format!("invalid value for required: {val}"))?;
            }
            _ if i == 0 => name = Some(field.clone()),
            key => return Err(format!("unexpected key '{key}' in '{field}'")),
        }
    }
    Ok(Device {
        name: name.unwrap_or_default(),
        required,
    })
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
        let d = parse_device("vendor.com/class=gpu,required").unwrap();
        assert_eq!(
            (d.name.as_str(), d.required),
            ("vendor.com/class=gpu", true)
        );
        let d = parse_device("required").unwrap();
        assert_eq!((d.name.as_str(), d.required), ("", true));
        let d = parse_device("name=/dev/fuse,required=false").unwrap();
        assert_eq!((d.name.as_str(), d.required), ("/dev/fuse", false));
        for (value, err) in [
            ("", "failed to parse csv devices: EOF"),
            ("a,required=maybe", "invalid value for required: maybe"),
            ("a,b", "invalid field 'b' must be a key=value pair"),
            ("a,foo=bar", "unexpected key 'foo' in 'foo=bar'"),
            ("a,name=b", "device name already set to a"),
        ] {
            assert_eq!(parse_device(value).unwrap_err(), err, "{value}");
        }
    }
}
