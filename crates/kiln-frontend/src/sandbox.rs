//! `RUN --network` and `--security`, the entitlements that unlock them, and the build-wide
//! settings (`--add-host`, `--ulimit`, `--shm-size`) every RUN gets, as BuildKit's Dockerfile
//! frontend puts them in each exec's meta.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use kiln_llb::{ExecResources, ExecSandbox, HostEntry, NetworkMode, SecurityMode, Ulimit};

/// A privilege a build must ask for (`kiln build --allow`), as BuildKit's entitlements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entitlement {
    NetworkHost,
    SecurityInsecure,
    /// Registered CDI devices for `RUN --device` (BuildKit 0.20+) that their spec does not
    /// autoallow (see `kiln_worker::cdi`).
    Device,
}

impl Entitlement {
    pub const ALL: [Entitlement; 3] = [
        Entitlement::NetworkHost,
        Entitlement::SecurityInsecure,
        Entitlement::Device,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Entitlement::NetworkHost => "network.host",
            Entitlement::SecurityInsecure => "security.insecure",
            Entitlement::Device => "device",
        }
    }
}

impl fmt::Display for Entitlement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid entitlement `{0}`: expected `network.host`, `security.insecure` or `device`")]
pub struct InvalidEntitlement(String);

impl FromStr for Entitlement {
    type Err = InvalidEntitlement;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Entitlement::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| InvalidEntitlement(s.to_string()))
    }
}

/// As its name (`network.host`), in kilnd's build requests.
impl serde::Serialize for Entitlement {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Entitlement {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// What the build allows and gives every RUN. Serialisable: a `kiln build --host` sends it
/// to kilnd as parsed from its flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunOpts {
    /// Entitlements granted to this build (`--allow`).
    pub entitlements: BTreeSet<Entitlement>,
    pub extra_hosts: Vec<HostEntry>,
    pub ulimits: Vec<Ulimit>,
    pub shm_size: Option<u64>,
    /// `--network none|host`: the mode of every RUN without a `--network` of its own (or with
    /// `--network=default`), as BuildKit's `force-network-mode`. `host` needs the entitlement,
    /// which `kiln build --network host` asks for itself, as buildx does.
    pub network: Option<NetworkMode>,
    /// `--cgroup-parent`.
    pub cgroup_parent: Option<String>,
    /// `--resource`.
    pub resources: ExecResources,
}

/// The exec modes for a RUN's `--network` and `--security` values (already validated by the
/// parser), or the message of a located error when the build lacks the entitlement.
pub(crate) fn run_modes(
    opts: &RunOpts,
    network: Option<&str>,
    security: Option<&str>,
) -> Result<(NetworkMode, ExecSandbox), String> {
    let need = |e: Entitlement, flag: &str| {
        if opts.entitlements.contains(&e) {
            Ok(())
        } else {
            Err(format!(
                "{flag} needs the `{e}` entitlement, which this build does not have: \
                 add `--allow {e}` to `kiln build`"
            ))
        }
    };
    let network = match network {
        None | Some("default") => opts.network.unwrap_or(NetworkMode::Host),
        Some("none") => NetworkMode::None,
        Some("host") => {
            need(Entitlement::NetworkHost, "RUN --network=host")?;
            NetworkMode::Host
        }
        Some(other) => return Err(format!("invalid network mode \"{other}\"")),
    };
    let security = match security {
        None | Some("sandbox") => SecurityMode::Sandbox,
        Some("insecure") => {
            need(Entitlement::SecurityInsecure, "RUN --security=insecure")?;
            SecurityMode::Insecure
        }
        Some(other) => return Err(format!("security \"{other}\" is not valid")),
    };
    Ok((
        network,
        ExecSandbox {
            security,
            extra_hosts: opts.extra_hosts.clone(),
            ulimits: opts.ulimits.clone(),
            shm_size: opts.shm_size,
            devices: Vec::new(),
            cgroup_parent: opts.cgroup_parent.clone(),
            resources: (opts.resources != ExecResources::default())
                .then(|| Box::new(opts.resources.clone())),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entitlements_parse_and_print() {
        for e in Entitlement::ALL {
            assert_eq!(e.as_str().parse::<Entitlement>().unwrap(), e);
        }
        assert!("network.none".parse::<Entitlement>().is_err());
    }

    #[test]
    fn modes_need_their_entitlements() {
        let none = RunOpts::default();
        let (net, sb) = run_modes(&none, Some("none"), None).unwrap();
        assert_eq!(net, NetworkMode::None);
        assert_eq!(sb.security, SecurityMode::Sandbox);
        assert_eq!(run_modes(&none, None, None).unwrap().0, NetworkMode::Host);
        let e = run_modes(&none, Some("host"), None).unwrap_err();
        assert!(e.contains("--allow network.host"), "{e}");
        let e = run_modes(&none, None, Some("insecure")).unwrap_err();
        assert!(e.contains("--allow security.insecure"), "{e}");

        let all = RunOpts {
            entitlements: Entitlement::ALL.into_iter().collect(),
            ulimits: vec![Ulimit {
                name: "nofile".into(),
                soft: 1,
                hard: 2,
            }],
            ..RunOpts::default()
        };
        let (net, sb) = run_modes(&all, Some("host"), Some("insecure")).unwrap();
        assert_eq!(net, NetworkMode::Host);
        assert_eq!(sb.security, SecurityMode::Insecure);
        assert_eq!(sb.ulimits, all.ulimits);
    }

    #[test]
    fn forced_network_yields_to_a_run_flag() {
        let forced = RunOpts {
            network: Some(NetworkMode::None),
            cgroup_parent: Some("/k".into()),
            ..RunOpts::default()
        };
        let (net, sb) = run_modes(&forced, None, None).unwrap();
        assert_eq!(
            (net, sb.cgroup_parent.as_deref()),
            (NetworkMode::None, Some("/k"))
        );
        assert_eq!(
            run_modes(&forced, Some("default"), None).unwrap().0,
            NetworkMode::None
        );
        // A RUN's own `--network=host` still needs the entitlement and wins.
        assert!(run_modes(&forced, Some("host"), None).is_err());
        let granted = RunOpts {
            entitlements: [Entitlement::NetworkHost].into_iter().collect(),
            ..forced
        };
        assert_eq!(
            run_modes(&granted, Some("host"), None).unwrap().0,
            NetworkMode::Host
        );
    }
}
