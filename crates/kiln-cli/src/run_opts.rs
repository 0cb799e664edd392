//! `kiln build --allow`, `--add-host`, `--ulimit`, `--shm-size`, `--network`,
//! `--cgroup-parent` and `--resource`, parsed as docker and buildx do.

use std::net::IpAddr;

use anyhow::{Context as _, Result, bail};
use kiln_engine::{
    Entitlement, ExecResources, HostEntry, NetworkMode, RLIMIT_NAMES, RunOpts, Ulimit,
};

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
    run.network = parse_network(&b.network)?;
    // buildx asks for the entitlement itself when the whole build uses the host's network.
    if run.network == Some(NetworkMode::Host) {
        run.entitlements.insert(Entitlement::NetworkHost);
    }
    if let Some(parent) = &b.cgroup_parent {
        if parent.is_empty() || !kiln_engine::valid_cgroup_parent(parent) {
            bail!(
                "invalid --cgroup-parent `{parent}`: expected a cgroupfs path such as \
                 `/kiln.slice` (runc runs with its cgroupfs driver: no `..`, no systemd \
                 `slice:prefix:name` form)"
            );
        }
        run.cgroup_parent = Some(parent.clone());
    }
    for r in &b.resource {
        parse_resource(&mut run.resources, r)?;
    }
    Ok(run)
}

/// `--network`: `default` (each RUN's own mode), `none` or `host`; buildx's message otherwise.
pub fn parse_network(mode: &str) -> Result<Option<NetworkMode>> {
    Ok(match mode {
        "" | "default" => None,
        "none" => Some(NetworkMode::None),
        "host" => Some(NetworkMode::Host),
        other => bail!(
            "network mode \"{other}\" not supported by buildkit - you can define a custom \
             network for your builder using the network driver-opt in buildx create"
        ),
    })
}

/// One `--resource KEY=VALUE` (a flag per key, the last one wins), with buildx's keys and
/// messages: `memory`, `memory-swap` (sizes, `-1` unlimited for swap), `cpu-quota`,
/// `cpu-period`, `cpu-shares` (numbers), `cpuset-cpus`, `cpuset-mems` (lists).
pub fn parse_resource(r: &mut ExecResources, spec: &str) -> Result<()> {
    let Some((key, value)) = spec.split_once('=') else {
        bail!("invalid resource \"{spec}\": expected key=value");
    };
    let invalid =
        |why: &str| anyhow::anyhow!("invalid value \"{value}\" for resource {key}: {why}");
    let size = || -> Result<i64> {
        if value == "-1" {
            return Ok(-1);
        }
        let n = parse_size(value).map_err(|_| invalid(&format!("invalid size: '{value}'")))?;
        i64::try_from(n).map_err(|_| invalid("too large"))
    };
    let number = || -> Result<i64> {
        value
            .parse::<i64>()
            .map_err(|e| invalid(&format!("strconv.ParseInt: parsing \"{value}\": {e}")))
    };
    let unsigned =
        || -> Result<u64> { u64::try_from(number()?).map_err(|_| invalid("must not be negative")) };
    let list = || -> Result<String> {
        let ok = !value.is_empty()
            && value
                .chars()
                .all(|c| c.is_ascii_digit() || c == ',' || c == '-');
        if ok {
            Ok(value.to_string())
        } else {
            Err(invalid("expected a list such as 0-3,5"))
        }
    };
    match key {
        "memory" => {
            let m = size()?;
            if m <= 0 {
                return Err(invalid("must be positive"));
            }
            r.memory = Some(m);
        }
        "memory-swap" => r.memory_swap = Some(size()?),
        "cpu-quota" => r.cpu_quota = Some(number()?),
        "cpu-period" => r.cpu_period = Some(unsigned()?),
        "cpu-shares" => r.cpu_shares = Some(unsigned()?),
        "cpuset-cpus" => r.cpuset_cpus = Some(list()?),
        "cpuset-mems" => r.cpuset_mems = Some(list()?),
        other => bail!("unknown resource \"{other}\""),
    }
    Ok(())
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
    // Mapped by the engine, with the config's `host-gateway-ip`.
    if ip == "host-gateway" {
        return Ok(HostEntry {
            host: host.to_string(),
            ip: ip.to_string(),
        });
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
        assert_eq!(
            parse_add_host("gw:host-gateway").unwrap().ip,
            "host-gateway"
        );
    }

    #[test]
    fn networks() {
        assert_eq!(parse_network("default").unwrap(), None);
        assert_eq!(parse_network("none").unwrap(), Some(NetworkMode::None));
        assert_eq!(parse_network("host").unwrap(), Some(NetworkMode::Host));
        let e = parse_network("bridge").unwrap_err().to_string();
        assert!(
            e.starts_with("network mode \"bridge\" not supported by buildkit"),
            "{e}"
        );
    }

    #[test]
    fn resources() {
        let mut r = ExecResources::default();
        for spec in [
            "memory=64m",
            "memory-swap=-1",
            "cpu-quota=50000",
            "cpu-period=100000",
            "cpu-shares=512",
            "cpuset-cpus=0-1,3",
            "cpuset-mems=0",
        ] {
            parse_resource(&mut r, spec).unwrap();
        }
        assert_eq!(r.memory, Some(64 << 20));
        assert_eq!(r.memory_swap, Some(-1));
        assert_eq!(
            (r.cpu_quota, r.cpu_period, r.cpu_shares),
            (Some(50000), Some(100000), Some(512))
        );
        assert_eq!(r.cpuset_cpus.as_deref(), Some("0-1,3"));
        parse_resource(&mut r, "memory=1g").unwrap();
        assert_eq!(r.memory, Some(1 << 30), "the last one wins");
        let err = |s: &str| {
            parse_resource(&mut ExecResources::default(), s)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(err("bogus=1"), "unknown resource \"bogus\"");
        assert_eq!(
            err("memory=abc"),
            "invalid value \"abc\" for resource memory: invalid size: 'abc'"
        );
        assert!(err("memory=64m,cpu-quota=1").starts_with("invalid value \"64m,cpu-quota=1\""));
        assert!(err("cpu-quota=x").contains("for resource cpu-quota"));
        assert!(err("memory").contains("key=value"));
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
