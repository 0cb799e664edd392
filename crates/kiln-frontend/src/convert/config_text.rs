//! How config values and history text are written, as BuildKit writes them: Go's formatting
//! of lists and durations, HEALTHCHECK, STOPSIGNAL, EXPOSE and ONBUILD.

use super::*;

/// Go's `%q` of a string slice, which BuildKit uses in history entries: `["a" "b"]`.
pub(super) fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| serde_json::to_string(s).expect("strings serialise"))
        .collect();
    format!("[{}]", quoted.join(" "))
}

/// Go's `%v` of a string slice: `[a b]`.
pub(super) fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// Go's `time.Duration.String()` for a count of nanoseconds: `1m30s`, `1.5s`, `500ms`, `0s`.
pub(super) fn go_duration(nanos: i128) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    // Below a second Go picks the largest unit that keeps an integer part.
    let fraction = |value: u128, unit: u128, digits: usize| {
        let whole = value / unit;
        let frac = value % unit;
        if frac == 0 {
            whole.to_string()
        } else {
            let f = format!("{frac:0digits$}");
            format!("{whole}.{}", f.trim_end_matches('0'))
        }
    };
    if n < 1_000 {
        return format!("{sign}{n}ns");
    }
    if n < 1_000_000 {
        return format!("{sign}{}µs", fraction(n, 1_000, 3));
    }
    if n < 1_000_000_000 {
        return format!("{sign}{}ms", fraction(n, 1_000_000, 6));
    }
    let secs = fraction(n % 60_000_000_000, 1_000_000_000, 9);
    let total_minutes = n / 60_000_000_000;
    let (hours, minutes) = (total_minutes / 60, total_minutes % 60);
    if hours > 0 {
        format!("{sign}{hours}h{minutes}m{secs}s")
    } else if minutes > 0 {
        format!("{sign}{minutes}m{secs}s")
    } else {
        format!("{sign}{secs}s")
    }
}

/// The config `Healthcheck` (zero values left out, as Go's `omitempty` does) and BuildKit's
/// history text for it, Go's `%+v` of the struct.
pub(super) fn healthcheck(
    check: &kiln_dockerfile::Healthcheck,
) -> std::result::Result<(serde_json::Value, String), String> {
    use kiln_dockerfile::Healthcheck;
    let duration = |d: &Option<String>| match d {
        None => Ok(0),
        Some(d) => kiln_dockerfile::instructions::parse_go_duration(d),
    };
    let (test, durations, retries) = match check {
        Healthcheck::None => (vec!["NONE".to_string()], [0; 4], 0),
        Healthcheck::Cmd {
            command,
            interval,
            timeout,
            start_period,
            start_interval,
            retries,
        } => {
            let test = match command {
                Command::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
                Command::Exec(v) => std::iter::once("CMD".to_string())
                    .chain(v.iter().cloned())
                    .collect(),
            };
            let durations = [
                duration(interval)?,
                duration(timeout)?,
                duration(start_period)?,
                duration(start_interval)?,
            ];
            let retries = match retries {
                None => 0,
                Some(r) => r
                    .parse::<i32>()
                    .map_err(|_| format!("invalid --retries `{r}`"))?,
            };
            (test, durations, retries)
        }
    };
    let names = ["Interval", "Timeout", "StartPeriod", "StartInterval"];
    let mut json = serde_json::Map::new();
    json.insert("Test".into(), serde_json::json!(test));
    for (name, d) in names.iter().zip(durations) {
        if d != 0 {
            json.insert((*name).into(), serde_json::json!(d as i64));
        }
    }
    if retries != 0 {
        json.insert("Retries".into(), serde_json::json!(retries));
    }
    let mut shown = format!("{{Test:{}", go_list(&test));
    for (name, d) in names.iter().zip(durations) {
        shown.push_str(&format!(" {name}:{}", go_duration(d)));
    }
    shown.push_str(&format!(" Retries:{retries}}}"));
    Ok((serde_json::Value::Object(json), shown))
}

/// A signal name (`SIGTERM`, `TERM`, case-insensitive) or a positive number, as Docker's
/// `signal.ParseSignal` accepts.
pub(super) fn is_valid_signal(signal: &str) -> bool {
    const NAMES: [&str; 34] = [
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "UNUSED", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU",
    ];
    if let Ok(n) = signal.parse::<u32>() {
        return n > 0;
    }
    let upper = signal.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if NAMES.contains(&name) || name == "XFSZ" {
        return true;
    }
    // Real-time signals: RTMIN, RTMIN+n, RTMAX-n.
    let rt = |base: &str, sep: char| {
        name.strip_prefix(base).is_some_and(|rest| {
            rest.is_empty()
                || rest
                    .strip_prefix(sep)
                    .is_some_and(|n| n.parse::<u8>().is_ok_and(|n| n <= 15))
        })
    };
    rt("RTMIN", '+') || rt("RTMAX", '-')
}

/// The ONBUILD trigger as BuildKit stores it: the line after the keyword, then any heredoc
/// bodies each followed by its terminator.
pub(super) fn onbuild_expression(ins: &Instruction) -> String {
    let original = ins.original.trim_start();
    let rest = original
        .get(..7)
        .filter(|k| k.eq_ignore_ascii_case("onbuild"))
        .map_or(original, |_| original[7..].trim_start());
    let mut out = rest.to_string();
    if let InstructionKind::Onbuild(inner) = &ins.kind {
        let heredocs = match &inner.kind {
            InstructionKind::Run { heredocs, .. } => heredocs.as_slice(),
            InstructionKind::Copy(c) | InstructionKind::Add(c) => c.heredocs.as_slice(),
            _ => &[],
        };
        for h in heredocs {
            out.push('\n');
            out.push_str(&h.content);
            out.push_str(&h.name);
        }
    }
    out
}

/// `80`, `80/udp`, `8000-8002/tcp` → `80/tcp`, `80/udp`, `8000/tcp`...
pub(super) fn expose_keys(spec: &str) -> std::result::Result<Vec<String>, String> {
    let quoted = serde_json::to_string(spec).expect("strings serialise");
    let (ports, proto) = spec.split_once('/').unwrap_or((spec, ""));
    if ports.is_empty() {
        return Err(format!("invalid port: {quoted}: no port specified"));
    }
    let proto = match proto.to_ascii_lowercase().as_str() {
        "" => "tcp".to_string(),
        p @ ("tcp" | "udp" | "sctp") => p.to_string(),
        // BuildKit's words, with the protocol as written.
        _ => return Err(format!("invalid port: {quoted}: invalid proto: {proto}")),
    };
    let bad = || format!("invalid containerPort: {ports}");
    let parse = |p: &str| p.parse::<u16>().map_err(|_| bad());
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => (parse(ports)?, parse(ports)?),
    };
    if lo > hi {
        return Err(bad());
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expose_forms() {
        assert_eq!(expose_keys("80").unwrap(), vec!["80/tcp"]);
        assert_eq!(expose_keys("53/UDP").unwrap(), vec!["53/udp"]);
        assert_eq!(
            expose_keys("8000-8002").unwrap(),
            vec!["8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert!(expose_keys("http").is_err());
        assert!(expose_keys("80/xyz").is_err());
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(500_000_000), "500ms");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(1_500), "1.5µs");
    }

    #[test]
    fn signals() {
        assert!(is_valid_signal("SIGTERM"));
        assert!(is_valid_signal("quit"));
        assert!(is_valid_signal("9"));
        assert!(is_valid_signal("SIGRTMIN+3"));
        assert!(!is_valid_signal("SIGNOPE"));
        assert!(!is_valid_signal("0"));
    }

    #[test]
    fn go_quoting() {
        assert_eq!(
            go_quote_list(&["python3".into(), "-m".into()]),
            r#"["python3" "-m"]"#
        );
    }
}
