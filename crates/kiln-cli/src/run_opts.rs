//! `kiln build --allow`, `--add-host`, `--ulimit` and `--shm-size`, parsed as docker does.

use std::net::IpAddr;

use anyhow::{Context as _, Result, bail};
use kiln_engine::{Entitlement, HostEntry, RLIMIT_NAMES, RunOpts, Ulimit};

use crate::args::BuildArgs;

pub fn parse(b: &BuildArgs) -> Result<RunOpts> {
    let mut run = RunOpts::default();
    for a in &b.allow {
        // buildx accepts a comma-separated list in one flag.
        for name in a.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let e: Entitlement = name.parse().context("invalid --allow")?;
            run.entitlements.insert(e);
        }
    }
    for h in &b.add_host {
        run.extra_hosts.push(parse_add_host(h)?);
    }
    for u in &b.ulimit {
        let u = parse_ulimit(u)?;
        run.ulimits.retain(|x| x.name != u.name);
        run.ulimits.push(u);
    }
    if let Some(s) = &b.shm_size {
        run.shm_size = Some(parse_size(s).with_context(|| format!("invalid --shm-size `{s}`"))?);
    }
    Ok(run)
}

/// `name:address` (or `name=address`); the name cannot hold `:`, so IPv6 addresses work.
pub fn parse_add_host(spec: &str) -> Result<HostEntry> {
    let Some((host, ip)) = spec.split_once('=').or_else(|| spec.split_once(':')) else {
        bail!("invalid --add-host `{spec}`: expected `host:ip`");
    };
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(char::is_whitespace) {
        bail!("invalid --add-host `{spec}`: bad host name");
    }
    if ip == "host-gateway" {
        bail!("--add-host `{spec}`: `host-gateway` is not supported yet");
    }
    ip.parse::<IpAddr>()
        .with_context(|| format!("invalid --add-host `{spec}`: `{ip}` is not an IP address"))?;
    Ok(HostEntry {
        host: host.to_string(),
        ip: ip.to_string(),
    })
}

/// `name=soft[:hard]`; the hard limit defaults to the soft one, `-1` means unlimited.
pub fn parse_ulimit(spec: &str) -> Result<Ulimit> {
    let Some((name, limits)) = spec.split_once('=') else {
        bail!("invalid --ulimit `{spec}`: expected `name=soft[:hard]`");
    };
    if !RLIMIT_NAMES.contains(&name) {
        bail!(
            "invalid --ulimit `{spec}`: unknown name `{name}` (one of {})",
            RLIMIT_NAMES.join(", ")
        );
    }
    let limit = |v: &str| -> Result<u64> {
        if v == "-1" || v == "unlimited" {
            return Ok(u64::MAX);
        }
        v.parse()
            .with_context(|| format!("invalid --ulimit `{spec}`: `{v}` is not a number"))
    };
    let (soft, hard) = match limits.split_once(':') {
        Some((s, h)) => (limit(s)?, limit(h)?),
        None => (limit(limits)?, limit(limits)?),
    };
    if soft > hard {
        bail!("invalid --ulimit `{spec}`: soft limit {soft} is above hard limit {hard}");
    }
    Ok(Ulimit {
        name: name.to_string(),
        soft,
        hard,
    })
}

/// Docker's size syntax: a number with an optional binary unit, `64m`, `1g`, `512MiB`, `100`.
pub fn parse_size(s: &str) -> Result<u64> {
    let lower = s.trim().to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic() || c == ' ');
    let unit = lower[digits.len()..].trim();
    let unit = unit.strip_suffix('b').unwrap_or(unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        other => bail!("unknown unit `{other}`"),
    };
    let value: f64 = digits.parse().context("not a number")?;
    if !(value.is_finite() && value >= 0.0) {
        bail!("not a size");
    }
    // Sizes are far below 2^53, where f64 is exact.
    Ok((value * (1u64 << shift) as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_host_forms() {
        let h = parse_add_host("db.local:10.0.0.5").unwrap();
        assert_eq!((h.host.as_str(), h.ip.as_str()), ("db.local", "10.0.0.5"));
        let h = parse_add_host("v6:fe80::1").unwrap();
        assert_eq!(h.ip, "fe80::1");
        let h = parse_add_host("v6=[::1]").unwrap();
        assert_eq!((h.host.as_str(), h.ip.as_str()), ("v6", "::1"));
        assert!(parse_add_host("nohost").is_err());
        assert!(parse_add_host("a:not-an-ip").is_err());
        let e = parse_add_host("gw:host-gateway").unwrap_err().to_string();
        assert!(e.contains("not supported yet"), "{e}");
    }

    #[test]
    fn ulimit_forms() {
        let u = parse_ulimit("nofile=1024:2048").unwrap();
        assert_eq!((u.name.as_str(), u.soft, u.hard), ("nofile", 1024, 2048));
        let u = parse_ulimit("nproc=512").unwrap();
        assert_eq!((u.soft, u.hard), (512, 512));
        assert_eq!(parse_ulimit("core=-1").unwrap().hard, u64::MAX);
        assert!(parse_ulimit("files=1").is_err());
        assert!(parse_ulimit("nofile=2:1").is_err());
        assert!(parse_ulimit("nofile").is_err());
        assert!(parse_ulimit("nofile=x").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("64MB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert!(parse_size("12x").is_err());
        assert!(parse_size("m").is_err());
    }
}
