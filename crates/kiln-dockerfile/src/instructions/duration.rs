//! Go's `time.ParseDuration`, for validating HEALTHCHECK durations as BuildKit does.

use crate::quote::go_quote;

const NANOS_PER_MS: i128 = 1_000_000;

/// Parses a Go duration (`1h30m`, `1.5s`, `-2ms`, `0`) into nanoseconds.
pub fn parse_go_duration(input: &str) -> Result<i128, String> {
    let invalid = || format!("time: invalid duration {}", go_quote(input));
    let (neg, mut s) = match input.as_bytes().first() {
        Some(b'-') => (true, &input[1..]),
        Some(b'+') => (false, &input[1..]),
        _ => (false, input),
    };
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !s.is_empty() {
        if !(s.starts_with('.') || s.starts_with(|c: char| c.is_ascii_digit())) {
            return Err(invalid());
        }
        let int_len = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let int_part = &s[..int_len];
        s = &s[int_len..];
        let mut frac_part = "";
        if let Some(rest) = s.strip_prefix('.') {
            let n = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            frac_part = &rest[..n];
            s = &rest[n..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = s
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        let scale: u128 = match unit {
            "" => {
                return Err(format!(
                    "time: missing unit in duration {}",
                    go_quote(input)
                ));
            }
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    go_quote(unit),
                    go_quote(input)
                ));
            }
        };
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        let mut value = int.checked_mul(scale).ok_or_else(invalid)?;
        if !frac_part.is_empty() {
            // Only the digits that can matter at nanosecond precision.
            let digits = &frac_part[..frac_part.len().min(20)];
            let frac: u128 = digits.parse().map_err(|_| invalid())?;
            value += frac * scale / 10u128.pow(digits.len() as u32);
        }
        total = total.checked_add(value).ok_or_else(invalid)?;
        if total > 1u128 << 63 {
            return Err(invalid());
        }
    }
    if !neg && total > i64::MAX as u128 {
        return Err(invalid());
    }
    let total = total as i128;
    Ok(if neg { -total } else { total })
}

/// BuildKit's check for `--interval`, `--timeout`, `--start-period` and `--start-interval`:
/// empty or zero means unset; anything else must be at least 1ms.
pub fn validate_interval(flag: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    let d = parse_go_duration(value)?;
    if d != 0 && d < NANOS_PER_MS {
        return Err(format!(
            "Interval {} cannot be less than 1ms",
            go_quote(flag)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse_go_duration("1h2m3.5s"), Ok(3_723_500_000_000));
        assert_eq!(parse_go_duration("-1.5ms"), Ok(-1_500_000));
        assert_eq!(parse_go_duration(".5us"), Ok(500));
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(
            parse_go_duration("1"),
            Err("time: missing unit in duration \"1\"".into())
        );
        assert_eq!(
            parse_go_duration("1x"),
            Err("time: unknown unit \"x\" in duration \"1x\"".into())
        );
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration(".s").is_err());
        assert!(parse_go_duration("9999999999999h").is_err());
    }

    #[test]
    fn intervals() {
        assert!(validate_interval("interval", "0s").is_ok());
        assert!(validate_interval("interval", "-1s").is_err());
        assert_eq!(
            validate_interval("interval", "50ns").unwrap_err(),
            "Interval \"interval\" cannot be less than 1ms"
        );
    }
}
