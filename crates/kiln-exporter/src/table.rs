//! `docker images`-style output: the same columns, human times and sizes as the Docker CLI
//! (which formats them with go-units), aligned as its tabwriter does.

use chrono::{DateTime, TimeDelta, Utc};

use crate::store::{ImageRecord, familiar_name};

/// The Docker CLI's tabwriter settings: minimum cell width 10, padding 3.
const MIN_WIDTH: usize = 10;
const PADDING: usize = 3;

/// Renders `records` (in the order given) as `docker images` does, ages measured from `now`.
pub fn format_images_table(records: &[ImageRecord], now: DateTime<Utc>) -> String {
    let mut rows = vec![[
        "REPOSITORY".to_string(),
        "TAG".to_string(),
        "IMAGE ID".to_string(),
        "CREATED".to_string(),
        "SIZE".to_string(),
    ]];
    for r in records {
        let (repo, tag) = familiar_name(&r.name);
        let id: String = r.config.digest().chars().take(12).collect();
        let created = match r.created {
            Some(t) => format!("{} ago", human_duration(now - t)),
            None => "N/A".to_string(),
        };
        rows.push([repo, tag, id, created, human_size(r.size)]);
    }
    let mut widths = [0usize; 5];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max((cell.chars().count() + PADDING).max(MIN_WIDTH));
        }
    }
    let mut out = String::new();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            // The last cell is not padded, as with Go's tabwriter.
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count();
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

/// go-units `HumanDuration`: "Less than a second", "About a minute", "2 hours", "3 weeks", ...
pub fn human_duration(d: TimeDelta) -> String {
    const HOUR_MS: i64 = 3_600_000;
    let seconds = d.num_seconds();
    if seconds < 1 {
        return "Less than a second".into();
    }
    if seconds == 1 {
        return "1 second".into();
    }
    if seconds < 60 {
        return format!("{seconds} seconds");
    }
    let minutes = d.num_minutes();
    if minutes == 1 {
        return "About a minute".into();
    }
    if minutes < 60 {
        return format!("{minutes} minutes");
    }
    // Hours are rounded to the nearest (halves away from zero), like Go's Duration.Round.
    let hours = (d.num_milliseconds() + HOUR_MS / 2) / HOUR_MS;
    if hours == 1 {
        "About an hour".into()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", d.num_hours() / 24 / 365)
    }
}

/// go-units `HumanSizeWithPrecision(size, 3)`: decimal units and Go's `%.3g`.
pub fn human_size(size: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut value = size as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{}{}", format_g(value, 3), UNITS[unit])
}

/// Go's `%.*g`: `precision` significant digits, trailing zeros dropped, exponent form when the
/// exponent is below -4 or at least the precision.
fn format_g(value: f64, precision: usize) -> String {
    if value == 0.0 {
        return "0".into();
    }
    let precision = precision.max(1);
    let sci = format!("{:.*e}", precision - 1, value);
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m.to_string(), e.parse::<i32>().unwrap_or(0)),
        None => (sci.clone(), 0),
    };
    if exp < -4 || exp >= precision as i32 {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim_zeros(&mantissa), exp.abs())
    } else {
        let decimals = (precision as i32 - 1 - exp).max(0) as usize;
        trim_zeros(&format!("{value:.decimals$}")).to_string()
    }
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_go_units() {
        let cases = [
            (0, "0B"),
            (999, "999B"),
            (1000, "1kB"),
            (13_256, "13.3kB"),
            (12_345_678, "12.3MB"),
            (100_000_000, "100MB"),
            (1_500_000_000, "1.5GB"),
            // Go's %g switches to exponent form once rounding reaches the next power of ten.
            (999_999, "1e+03kB"),
            (4_860_000, "4.86MB"),
        ];
        for (size, want) in cases {
            assert_eq!(human_size(size), want, "{size}");
        }
    }

    #[test]
    fn durations_match_go_units() {
        let cases = [
            (TimeDelta::milliseconds(500), "Less than a second"),
            (TimeDelta::seconds(-5), "Less than a second"),
            (TimeDelta::seconds(1), "1 second"),
            (TimeDelta::seconds(59), "59 seconds"),
            (TimeDelta::seconds(61), "About a minute"),
            (TimeDelta::seconds(119), "About a minute"),
            (TimeDelta::minutes(59), "59 minutes"),
            (TimeDelta::minutes(89), "About an hour"),
            (TimeDelta::minutes(90), "2 hours"),
            (TimeDelta::hours(47), "47 hours"),
            (TimeDelta::hours(48), "2 days"),
            (TimeDelta::days(13), "13 days"),
            (TimeDelta::days(14), "2 weeks"),
            (TimeDelta::days(60), "2 months"),
            (TimeDelta::days(729), "24 months"),
            (TimeDelta::days(730), "2 years"),
        ];
        for (d, want) in cases {
            assert_eq!(human_duration(d), want, "{d}");
        }
    }

    #[test]
    fn table_columns_align_like_docker() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let config = kiln_oci::sha256(b"config");
        let record = |name: &str, age: TimeDelta, size| ImageRecord {
            name: name.parse().unwrap(),
            manifest: kiln_oci::sha256(b"manifest"),
            config: config.clone(),
            created: Some(now - age),
            size,
            tagged_at: now,
            index: None,
        };
        let records = vec![
            record("hello-world-flask", TimeDelta::seconds(70), 12_345_678),
            record("a:b", TimeDelta::hours(2), 13_256),
        ];
        let id = &config.digest()[..12];
        let want = format!(
            "REPOSITORY          TAG       IMAGE ID       CREATED              SIZE\n\
             hello-world-flask   latest    {id}   About a minute ago   12.3MB\n\
             a                   b         {id}   2 hours ago          13.3kB\n"
        );
        assert_eq!(format_images_table(&records, now), want);
    }
}
