//! `kiln builder ...` and `--builder`: builders as buildx keeps them (kiln-builder), printed
//! as buildx prints them. The embedded builders are this process's engine; a remote one is a
//! kilnd, which needs the kilnd client (not in kiln yet).

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use kiln_builder::{Builder, CreateRequest, EMBEDDED, Node, Store, Target};
use kiln_oci::Platform;

use crate::args::{Cli, DuArgs, PruneArgs};
use crate::env;

#[derive(Args, Debug)]
pub struct BuilderArgs {
    #[command(subcommand)]
    pub command: BuilderCommand,
}

#[derive(Subcommand, Debug)]
pub enum BuilderCommand {
    /// Create a new builder instance
    Create(CreateArgs),
    /// List builder instances
    Ls,
    /// Inspect current builder instance
    Inspect(InspectArgs),
    /// Set the current builder instance
    Use(UseArgs),
    /// Remove one or more builder instances
    Rm(RmArgs),
    /// Remove build cache (`kiln prune` on the builder)
    Prune(PruneArgs),
    /// Disk usage (`kiln du` on the builder)
    Du(DuArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Builder instance name
    #[arg(long)]
    pub name: Option<String>,
    /// Driver to use (available: "embedded", "remote"); default: remote with an ENDPOINT, else embedded
    #[arg(long)]
    pub driver: Option<String>,
    /// Options for the driver (remote: cacert=, cert=, key=, servername=)
    #[arg(long = "driver-opt")]
    pub driver_opt: Vec<String>,
    /// Fixed platforms for current node
    #[arg(long)]
    pub platform: Vec<String>,
    /// Set the current builder instance
    #[arg(long = "use")]
    pub use_: bool,
    /// Append a node to builder instead of changing it
    #[arg(long)]
    pub append: bool,
    /// Create/modify node with given name
    #[arg(long)]
    pub node: Option<String>,
    /// A kilnd's address: unix:///path or tcp://host:port
    #[arg(value_name = "ENDPOINT")]
    pub endpoint: Option<String>,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Ensure builder has booted before inspecting
    #[arg(long)]
    pub bootstrap: bool,
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct UseArgs {
    /// Set builder as default for current context
    #[arg(long)]
    pub default: bool,
    /// Builder persists context changes
    #[arg(long)]
    pub global: bool,
    pub name: String,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Keep BuildKit state (kiln never removes a builder's state)
    #[arg(long = "keep-state")]
    pub keep_state: bool,
    pub names: Vec<String>,
}

/// What a build on a remote builder says until the kilnd client is in kiln.
pub const REMOTE_NOT_SUPPORTED: &str = "remote builders: not supported yet";

fn store() -> Store {
    Store::new(env::builder_config_dir())
}

/// The builder a command runs on (`--builder`, `KILN_BUILDER`, else the current one) and
/// where a build for `platforms` goes. This is the one place a remote build is decided.
pub fn target(cli: &Cli, platforms: &[Platform]) -> Result<(Builder, Target)> {
    let store = store();
    let builder = store.resolve(env::builder_name(cli.builder.as_deref()).as_deref())?;
    let target = builder.target(platforms)?;
    if matches!(target, Target::Embedded) {
        store.touch(&builder.name)?;
    }
    Ok((builder, target))
}

/// For commands that work on the embedded engine only (`kiln du`, `kiln prune`, ...).
pub fn require_embedded(cli: &Cli) -> Result<()> {
    match target(cli, &[])? {
        (_, Target::Embedded) => Ok(()),
        (_, Target::Remote(_)) => bail!(REMOTE_NOT_SUPPORTED),
    }
}

pub async fn run(cli: &Cli, a: &BuilderArgs) -> Result<ExitCode> {
    match &a.command {
        BuilderCommand::Create(c) => create(c),
        BuilderCommand::Ls => ls(cli),
        BuilderCommand::Inspect(i) => inspect(cli, i),
        BuilderCommand::Use(u) => {
            store().use_builder(&u.name, u.default, u.global)?;
            Ok(ExitCode::SUCCESS)
        }
        BuilderCommand::Rm(r) => rm(cli, r),
        BuilderCommand::Prune(p) => {
            require_embedded(cli)?;
            crate::prune::prune(&crate::open_engine(cli)?, p)
        }
        BuilderCommand::Du(d) => {
            require_embedded(cli)?;
            crate::prune::du(&crate::open_engine(cli)?, d)
        }
    }
}

fn create(c: &CreateArgs) -> Result<ExitCode> {
    let store = store();
    let created = store.create(CreateRequest {
        name: c.name.clone(),
        driver: c.driver.clone(),
        endpoint: c.endpoint.clone(),
        driver_opts: c.driver_opt.clone(),
        platforms: c.platform.clone(),
        append: c.append,
        node: c.node.clone(),
    })?;
    if created.changed_node {
        eprintln!("WARNING: new settings may not be used until builder is restarted");
    }
    if c.use_ {
        store.use_builder(&created.builder.name, false, false)?;
    }
    println!("{}", created.builder.name);
    Ok(ExitCode::SUCCESS)
}

fn rm(cli: &Cli, r: &RmArgs) -> Result<ExitCode> {
    let store = store();
    let names = match r.names.as_slice() {
        [] => vec![match env::builder_name(cli.builder.as_deref()) {
            Some(n) => n,
            None => store.current()?,
        }],
        n => n.to_vec(),
    };
    let mut failed = false;
    for name in names {
        match store.remove(&name) {
            Ok(()) => eprintln!("{name} removed"),
            Err(e) => {
                eprintln!("failed to remove {name}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        bail!("failed to remove one or more builders");
    }
    Ok(ExitCode::SUCCESS)
}

/// What a node reports: its status, version and platforms as ls and inspect show them.
struct NodeInfo {
    endpoint: String,
    status: &'static str,
    version: String,
    /// `(platform, fixed with --platform)`, fixed ones first.
    platforms: Vec<(Platform, bool)>,
    /// The GC rules (embedded: the config's, on the data root's disk), as inspect lists them.
    gc: Vec<kiln_engine::PruneRule>,
    error: Option<String>,
}

fn embedded_info(cli: &Cli, node: &Node) -> NodeInfo {
    let fixed: Vec<Platform> = node.platforms.clone().unwrap_or_default();
    let mut platforms: Vec<(Platform, bool)> = fixed.iter().map(|p| (p.clone(), true)).collect();
    match env::root_and_config(cli.root.as_deref(), cli.config.as_deref()) {
        Ok((root, config)) => {
            for p in kiln_engine::builder_platforms(&config) {
                if !fixed.contains(&p) {
                    platforms.push((p, false));
                }
            }
            let gc = config.worker.oci.rules(disk_of(&root));
            NodeInfo {
                endpoint: root.display().to_string(),
                status: "running",
                version: format!("v{}", env!("CARGO_PKG_VERSION")),
                platforms,
                gc,
                error: None,
            }
        }
        Err(e) => NodeInfo {
            endpoint: node.endpoint.clone(),
            status: "error",
            version: String::new(),
            platforms,
            gc: Vec::new(),
            error: Some(format!("{e:#}")),
        },
    }
}

/// A remote node: only whether its address takes a connection, until the kilnd client can ask
/// it for its version and platforms.
/// A remote node: asked for its version and platforms through kiln-client when its address
/// answers (the node's own `--platform` ones first, fixed).
fn remote_info(node: &Node) -> NodeInfo {
    let mut platforms: Vec<(Platform, bool)> = node
        .platforms
        .iter()
        .flatten()
        .map(|p| (p.clone(), true))
        .collect();
    let mut info = NodeInfo {
        endpoint: node.endpoint.clone(),
        status: "inactive",
        version: String::new(),
        platforms: Vec::new(),
        gc: Vec::new(),
        error: None,
    };
    if reachable(&node.endpoint) {
        let endpoint = crate::remote::builder_endpoint(node.endpoint());
        // Called from the CLI's multi-threaded runtime.
        let asked = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(kiln_client::info(&endpoint))
        });
        match asked {
            Ok((version, daemon)) => {
                info.status = "running";
                info.version = version;
                for p in daemon.iter().filter_map(|p| p.parse::<Platform>().ok()) {
                    if !platforms.iter().any(|(q, _)| *q == p) {
                        platforms.push((p, false));
                    }
                }
            }
            Err(e) => info.error = Some(e.to_string()),
        }
    }
    info.platforms = platforms;
    info
}

/// The disk of `root`, or of its nearest existing parent when it is not made yet.
fn disk_of(root: &std::path::Path) -> kiln_engine::DiskStat {
    let existing = root.ancestors().find(|p| p.exists()).unwrap_or(root);
    kiln_engine::DiskStat::of(existing)
}

/// docker's `units.BytesSize`: binary units, four significant digits (`488.3MiB`).
fn bytes_size(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    let int_digits = if v < 1.0 {
        1
    } else {
        v.log10().floor() as usize + 1
    };
    let text = format!("{v:.*}", 4usize.saturating_sub(int_digits));
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{text}{}", UNITS[unit])
}

/// Go's `time.Duration.String` for whole and fractional seconds (`48h0m0s`, `1m30s`, `0.5s`).
fn go_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let frac = d.subsec_nanos();
    let s = if frac == 0 {
        s.to_string()
    } else {
        let f = format!("{s}.{frac:09}");
        f.trim_end_matches('0').to_string()
    };
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

/// buildx's `GC Policy rule#N:` blocks.
fn gc_rules(rules: &[kiln_engine::PruneRule]) -> String {
    let mut out = String::new();
    for (i, r) in rules.iter().enumerate() {
        out.push_str(&format!("GC Policy rule#{i}:\n"));
        let mut pairs = vec![(" All", r.all.to_string())];
        if !r.filters.is_empty() {
            let f: Vec<String> = r.filters.iter().map(ToString::to_string).collect();
            pairs.push((" Filters", f.join(" ")));
        }
        if let Some(d) = r.keep_duration {
            pairs.push((" Keep Duration", go_duration(d)));
        }
        for (name, v) in [
            (" Reserved Space", r.reserved_space),
            (" Max Used Space", r.max_used_space),
            (" Min Free Space", r.min_free_space),
        ] {
            if v > 0 {
                pairs.push((name, bytes_size(v)));
            }
        }
        out.push_str(&block(&pairs));
    }
    out
}

fn reachable(endpoint: &str) -> bool {
    let timeout = std::time::Duration::from_millis(500);
    if let Some(path) = endpoint.strip_prefix("unix://") {
        return std::os::unix::net::UnixStream::connect(path).is_ok();
    }
    let Some(addr) = endpoint.strip_prefix("tcp://") else {
        return false;
    };
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs().is_ok_and(|mut addrs| {
        addrs.any(|a| std::net::TcpStream::connect_timeout(&a, timeout).is_ok())
    })
}

fn node_info(cli: &Cli, b: &Builder, node: &Node) -> NodeInfo {
    if b.driver == EMBEDDED {
        embedded_info(cli, node)
    } else {
        remote_info(node)
    }
}

fn platform_label((p, fixed): &(Platform, bool)) -> String {
    if *fixed {
        format!("{p}*")
    } else {
        p.to_string()
    }
}

/// The OS/architecture groups buildx's ls puts first, in its order.
const MAJOR: [&str; 7] = [
    "linux/amd64",
    "linux/arm64",
    "linux/arm",
    "linux/ppc64le",
    "linux/s390x",
    "linux/riscv64",
    "linux/mips64",
];

/// ls's PLATFORMS: at most four OS/architecture groups (the major ones first, then the rest
/// by name), a group of several variants as `os/arch (+N)`, and `(N more)` for what is left.
fn ls_platforms(list: &[(Platform, bool)]) -> String {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for item in list {
        let key = format!("{}/{}", item.0.os, item.0.architecture);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(platform_label(item)),
            None => groups.push((key, vec![platform_label(item)])),
        }
    }
    let rank = |k: &str| MAJOR.iter().position(|m| *m == k).unwrap_or(MAJOR.len());
    groups.sort_by(|(a, _), (b, _)| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    let mut out = Vec::new();
    let mut shown = 0;
    for (key, items) in groups.iter().take(4) {
        shown += items.len();
        if let [one] = items.as_slice() {
            out.push(one.clone());
        } else {
            let star = if items.iter().any(|i| i.ends_with('*')) {
                "*"
            } else {
                ""
            };
            out.push(format!("{key}{star} (+{})", items.len()));
        }
    }
    if list.len() > shown {
        out.push(format!("({} more)", list.len() - shown));
    }
    out.join(", ")
}

/// Cells padded as Go's tabwriter pads them (three spaces), the last one not.
fn table(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; n];
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            if i + 1 == row.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}", w = widths[i] + 3));
            }
        }
        out.push('\n');
    }
    out
}

fn all_builders(store: &Store) -> Result<Vec<Builder>> {
    let mut all = store.list()?;
    all.push(Builder::default_builder());
    Ok(all)
}

fn ls(cli: &Cli) -> Result<ExitCode> {
    let store = store();
    let current = store.current()?;
    let mut rows = vec![
        [
            "NAME/NODE",
            "DRIVER/ENDPOINT",
            "STATUS",
            "BUILDKIT",
            "PLATFORMS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let mut errors = Vec::new();
    for b in all_builders(&store)? {
        let star = if b.name == current { "*" } else { "" };
        rows.push(vec![
            format!("{}{star}", b.name),
            b.driver.clone(),
            String::new(),
            String::new(),
            String::new(),
        ]);
        for node in &b.nodes {
            let info = node_info(cli, &b, node);
            if let Some(e) = &info.error {
                errors.push(format!("Cannot load builder {}: {e}", b.name));
            }
            rows.push(vec![
                format!(" \\_ {}", node.name),
                format!(" \\_ {}", info.endpoint),
                info.status.to_string(),
                info.version.clone(),
                ls_platforms(&info.platforms),
            ]);
        }
    }
    print!("{}", table(&rows));
    for e in errors {
        eprintln!("\n{e}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `Key: value` lines, values aligned one space after the longest key (tabwriter's padding).
fn block(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{:<w$} {v}\n", format!("{k}:"), w = w))
        .collect()
}

fn inspect(cli: &Cli, i: &InspectArgs) -> Result<ExitCode> {
    let store = store();
    let name = match i
        .name
        .clone()
        .or_else(|| env::builder_name(cli.builder.as_deref()))
    {
        Some(n) => n,
        None => store.current()?,
    };
    let b = store.require(&name)?;
    // `--bootstrap`: an embedded builder needs nothing started; a remote one must answer.
    if i.bootstrap && b.driver != EMBEDDED {
        for node in &b.nodes {
            let info = remote_info(node);
            if info.status != "running" {
                bail!(
                    "builder {} node {} at {} does not answer{}",
                    b.name,
                    node.name,
                    node.endpoint,
                    info.error.map(|e| format!(": {e}")).unwrap_or_default()
                );
            }
        }
    }
    let mut head = vec![("Name", b.name.clone()), ("Driver", b.driver.clone())];
    if let Some(t) = store.activity(&b.name) {
        head.push((
            "Last Activity",
            t.format("%Y-%m-%d %H:%M:%S +0000 UTC").to_string(),
        ));
    }
    let mut out = block(&head);
    out.push_str("\nNodes:\n");
    for (n, node) in b.nodes.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        let info = node_info(cli, &b, node);
        let mut pairs = vec![
            ("Name", node.name.clone()),
            ("Endpoint", info.endpoint.clone()),
        ];
        if let Some(opts) = node.driver_opts.as_ref().filter(|o| !o.is_empty()) {
            let text: Vec<String> = opts.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            pairs.push(("Driver Options", text.join(" ")));
        }
        pairs.push(("Status", info.status.to_string()));
        if let Some(e) = &info.error {
            pairs.push(("Error", e.clone()));
        }
        if !info.version.is_empty() {
            pairs.push(("BuildKit version", info.version.clone()));
        }
        if !info.platforms.is_empty() {
            let all: Vec<String> = info.platforms.iter().map(platform_label).collect();
            pairs.push(("Platforms", all.join(", ")));
        }
        out.push_str(&block(&pairs));
        out.push_str(&gc_rules(&info.gc));
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[(&str, bool)]) -> Vec<(Platform, bool)> {
        items
            .iter()
            .map(|(p, f)| (p.parse().unwrap(), *f))
            .collect()
    }

    #[test]
    fn platforms_grouped_as_buildx_ls() {
        let live = list(&[
            ("linux/amd64", false),
            ("linux/amd64/v2", false),
            ("linux/amd64/v3", false),
            ("linux/amd64/v4", false),
            ("linux/arm64", false),
            ("linux/386", false),
        ]);
        assert_eq!(
            ls_platforms(&live),
            "linux/amd64 (+4), linux/arm64, linux/386"
        );
        let fixed = list(&[
            ("linux/arm64", true),
            ("linux/amd64", true),
            ("linux/arm/v7", true),
        ]);
        assert_eq!(
            ls_platforms(&fixed),
            "linux/amd64*, linux/arm64*, linux/arm/v7*"
        );
        let many = list(&[
            ("linux/amd64", false),
            ("linux/arm64", false),
            ("linux/riscv64", false),
            ("linux/ppc64le", false),
            ("linux/s390x", false),
            ("linux/386", false),
        ]);
        assert_eq!(
            ls_platforms(&many),
            "linux/amd64, linux/arm64, linux/ppc64le, linux/s390x, (2 more)"
        );
    }

    #[test]
    fn sizes_and_durations_as_buildx_prints_them() {
        assert_eq!(bytes_size(512_000_000), "488.3MiB");
        assert_eq!(bytes_size(10_000_000_000), "9.313GiB");
        assert_eq!(bytes_size(100_000_000_000), "93.13GiB");
        assert_eq!(bytes_size(51_000_000_000), "47.5GiB");
        assert_eq!(bytes_size(512), "512B");
        assert_eq!(bytes_size(2048), "2KiB");
        let h = std::time::Duration::from_secs(3600);
        assert_eq!(go_duration(48 * h), "48h0m0s");
        assert_eq!(go_duration(1440 * h), "1440h0m0s");
        assert_eq!(go_duration(std::time::Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(std::time::Duration::from_millis(500)), "0.5s");
    }

    #[test]
    fn tables_pad_as_tabwriter() {
        let rows = vec![
            vec!["NAME/NODE".into(), "DRIVER/ENDPOINT".into(), "X".into()],
            vec!["a".into(), "remote".into(), String::new()],
            vec![" \\_ a0".into(), " \\_ tcp://1.2.3.4:1".into(), "y".into()],
        ];
        assert_eq!(
            table(&rows),
            "NAME/NODE   DRIVER/ENDPOINT       X\na           remote                \n \\_ a0       \\_ tcp://1.2.3.4:1   y\n"
        );
        assert_eq!(
            block(&[("Name", "x".into()), ("Last Activity", "t".into())]),
            "Name:          x\nLast Activity: t\n"
        );
    }
}
