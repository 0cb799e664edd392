//! Containers that outlive a command (`kiln run -d`, `ps`, `logs`, `stop`, `rm`, `exec`). kiln
//! has no daemon: each running container is owned by a monitor process (see monitor.rs) that
//! holds `monitor.lock`, so "is it running" is "is that lock held", whatever happened to the
//! process. Layout under `<root>/containers/` in docs/on-disk-layout.md.

use std::fs::{self, File};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kiln_executor::RuncExecutor;
use serde::{Deserialize, Serialize};

/// Why a container command failed; the messages follow docker's.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    #[error("multiple containers match `{0}`: use more of the id")]
    Ambiguous(String),
    #[error(
        "the container name `/{name}` is already in use by container `{id}`: remove (or rename) that container to be able to reuse that name"
    )]
    NameInUse { name: String, id: String },
    #[error("invalid container name `{0}`: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")]
    InvalidName(String),
    #[error(
        "cannot remove container `{0}`: container is running: stop the container before removing or force remove"
    )]
    Running(String),
    #[error("container `{0}` is not running")]
    NotRunning(String),
    #[error("container `{0}` is already running")]
    AlreadyRunning(String),
    #[error("container `{id}` did not stop")]
    DidNotStop { id: String },
    /// A `-p` or `-v` value, with what is wrong in it.
    #[error("{0}")]
    InvalidSpec(String),
    #[error("container `{id}` failed to start: {message}")]
    Start { id: String, message: String },
}

/// What `kiln run` asked for, fixed when the container is created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub id: String,
    pub name: String,
    /// The image as the user named it.
    pub image: String,
    pub image_id: String,
    pub created: DateTime<Utc>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub hostname: String,
    /// Layer directories of the image, topmost first.
    pub lowers: Vec<PathBuf>,
    pub volumes: Vec<Volume>,
    pub ports: Vec<PortSpec>,
    /// `--rm`: the monitor removes the container when it exits.
    pub auto_remove: bool,
}

impl ContainerConfig {
    pub fn short_id(&self) -> &str {
        &self.id[..12]
    }

    /// Containers with published ports get a network namespace of their own.
    pub fn private_network(&self) -> bool {
        !self.ports.is_empty()
    }
}

/// `-v /host:/container[:ro|rw]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub source: PathBuf,
    pub destination: String,
    pub readonly: bool,
}

impl Volume {
    pub fn parse(spec: &str) -> std::result::Result<Volume, String> {
        let parts: Vec<&str> = spec.split(':').collect();
        let (source, destination, mode) = match parts.as_slice() {
            [s, d] => (*s, *d, ""),
            [s, d, m] => (*s, *d, *m),
            _ => return Err(format!("invalid volume specification `{spec}`")),
        };
        if !source.starts_with('/') {
            return Err(format!(
                "volume `{spec}`: named volumes are not supported yet (use an absolute host path)"
            ));
        }
        if !destination.starts_with('/') || destination == "/" {
            return Err(format!(
                "invalid volume specification `{spec}`: the container path must be absolute and not `/`"
            ));
        }
        let readonly = match mode {
            "" | "rw" => false,
            "ro" => true,
            other => {
                return Err(format!(
                    "volume `{spec}`: mode `{other}` is not supported yet (use ro or rw)"
                ));
            }
        };
        Ok(Volume {
            source: PathBuf::from(source),
            destination: destination.to_string(),
            readonly,
        })
    }
}

/// `-p [IP:][HOST:]CONTAINER[/tcp]`; host port 0 picks a free one, as docker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub container_port: u16,
}

impl PortSpec {
    pub fn parse(spec: &str) -> std::result::Result<PortSpec, String> {
        let bad = || format!("invalid port specification `{spec}`");
        let (addr, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
        if proto != "tcp" {
            return Err(format!(
                "port `{spec}`: protocol `{proto}` is not supported yet (tcp only)"
            ));
        }
        // An IPv6 host address comes in brackets: [::1]:8000:80.
        let (ip, rest) = match addr.strip_prefix('[') {
            Some(r) => {
                let (ip, rest) = r.split_once("]:").ok_or_else(bad)?;
                (Some(ip), rest)
            }
            None => match addr.matches(':').count() {
                2 => {
                    let (ip, rest) = addr.split_once(':').ok_or_else(bad)?;
                    (Some(ip), rest)
                }
                _ => (None, addr),
            },
        };
        let (host, container) = match rest.split_once(':') {
            Some((h, c)) => (h, c),
            None => ("", rest),
        };
        if host.contains('-') || container.contains('-') {
            return Err(format!("port `{spec}`: port ranges are not supported yet"));
        }
        let port = |s: &str| s.parse::<u16>().map_err(|_| bad());
        let host_ip = match ip {
            None | Some("") => IpAddr::from([0, 0, 0, 0]),
            Some(ip) => ip.parse().map_err(|_| bad())?,
        };
        let container_port = port(container)?;
        if container_port == 0 {
            return Err(bad());
        }
        Ok(PortSpec {
            host_ip,
            host_port: if host.is_empty() { 0 } else { port(host)? },
            container_port,
        })
    }
}

impl std::fmt::Display for PortSpec {
    /// docker ps's form: `0.0.0.0:8000->5000/tcp`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = match self.host_ip {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };
        write!(f, "{ip}:{}->{}/tcp", self.host_port, self.container_port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
    /// Recorded as running, but its monitor is gone (killed): nothing owns it any more.
    Dead,
}

/// What happened to the container, written by its monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerState {
    pub status: Status,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    /// The published ports as bound (a host port 0 replaced by the one picked).
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// Why the last start failed.
    #[serde(default)]
    pub error: Option<String>,
}

impl ContainerState {
    fn created() -> Self {
        ContainerState {
            status: Status::Created,
            started_at: None,
            finished_at: None,
            exit_code: None,
            ports: Vec::new(),
            error: None,
        }
    }
}

/// A container as `kiln ps` shows it.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub config: ContainerConfig,
    pub state: ContainerState,
}

/// The containers of one data directory.
#[derive(Debug, Clone)]
pub struct Containers {
    dir: PathBuf,
    executor: RuncExecutor,
}

type Result<T> = crate::Result<T>;

impl Containers {
    pub fn open(data_root: &Path) -> Result<Containers> {
        let dir = data_root.join("containers");
        let names = dir.join("names");
        fs::create_dir_all(&names).map_err(crate::io(format!("creating `{}`", names.display())))?;
        // Not the builds' executor dir: a build's cleanup of stale runc state must not touch
        // containers that monitors own.
        let pids = dir.join("executor").join("pids");
        fs::create_dir_all(&pids).map_err(crate::io(format!("creating `{}`", pids.display())))?;
        let executor = RuncExecutor::new(&dir.join("executor"))?.with_pid_files(&pids);
        Ok(Containers { dir, executor })
    }

    pub fn executor(&self) -> &RuncExecutor {
        &self.executor
    }

    /// The container's directory (config, state, log, rootfs).
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("container.log")
    }

    /// The root filesystem of a container, mounted while it runs.
    pub fn rootfs(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("rootfs").join("merged")
    }

    /// Records a new container under a fresh id; claims its name (generated when empty).
    pub(crate) fn create(&self, mut config: ContainerConfig) -> Result<ContainerConfig> {
        let explicit = !config.name.is_empty();
        if explicit && !valid_name(&config.name) {
            return Err(ContainerError::InvalidName(config.name).into());
        }
        for attempt in 0.. {
            if !explicit {
                config.name = generated_name(attempt);
            }
            match self.claim_name(&config.name, &config.id) {
                Ok(()) => break,
                Err(e) if explicit || attempt > 64 => return Err(e),
                Err(_) => {}
            }
        }
        let dir = self.container_dir(&config.id);
        let made = (|| -> std::io::Result<()> {
            fs::create_dir(&dir)?;
            for d in ["upper", "work", "merged"] {
                fs::create_dir_all(dir.join("rootfs").join(d))?;
            }
            File::create(dir.join("monitor.lock"))?;
            write_json(&dir.join("config.json"), &config)?;
            write_json(&dir.join("state.json"), &ContainerState::created())
        })();
        if let Err(e) = made {
            let _ = fs::remove_dir_all(&dir);
            let _ = fs::remove_file(self.dir.join("names").join(&config.name));
            return Err(crate::io(format!("creating container `{}`", config.id))(e));
        }
        Ok(config)
    }

    fn claim_name(&self, name: &str, id: &str) -> Result<()> {
        let path = self.dir.join("names").join(name);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => f
                .write_all(id.as_bytes())
                .map_err(crate::io(format!("writing `{}`", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = fs::read_to_string(&path).unwrap_or_default();
                Err(ContainerError::NameInUse {
                    name: name.to_string(),
                    id: owner,
                }
                .into())
            }
            Err(e) => Err(crate::io(format!("creating `{}`", path.display()))(e)),
        }
    }

    fn ids(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        let entries = fs::read_dir(&self.dir)
            .map_err(crate::io(format!("reading `{}`", self.dir.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_id(&name) {
                ids.push(name);
            }
        }
        Ok(ids)
    }

    /// Finds a container as docker does: full id, then name, then a unique id prefix.
    pub fn lookup(&self, query: &str) -> Result<String> {
        if is_id(query) && self.container_dir(query).is_dir() {
            return Ok(query.to_string());
        }
        let name = query.trim_start_matches('/');
        if valid_name(name)
            && let Ok(id) = fs::read_to_string(self.dir.join("names").join(name))
            && self.container_dir(&id).is_dir()
        {
            return Ok(id);
        }
        let matches: Vec<String> =
            if !query.is_empty() && query.bytes().all(|b| b.is_ascii_hexdigit()) {
                self.ids()?
                    .into_iter()
                    .filter(|id| id.starts_with(query))
                    .collect()
            } else {
                Vec::new()
            };
        match matches.len() {
            0 => Err(ContainerError::NoSuchContainer(query.to_string()).into()),
            1 => Ok(matches.into_iter().next().unwrap_or_default()),
            _ => Err(ContainerError::Ambiguous(query.to_string()).into()),
        }
    }

    pub fn config(&self, id: &str) -> Result<ContainerConfig> {
        read_json(&self.container_dir(id).join("config.json"))
    }

    /// The recorded state, with `Dead` for a container recorded as running whose monitor is gone.
    pub fn state(&self, id: &str) -> Result<ContainerState> {
        let mut state: ContainerState = read_json(&self.container_dir(id).join("state.json"))?;
        if state.status == Status::Running && !self.is_monitored(id) {
            // Re-read: the monitor may have finished between the two reads.
            state = read_json(&self.container_dir(id).join("state.json"))?;
            if state.status == Status::Running {
                state.status = Status::Dead;
            }
        }
        Ok(state)
    }

    pub(crate) fn write_state(&self, id: &str, state: &ContainerState) -> Result<()> {
        let path = self.container_dir(id).join("state.json");
        write_json(&path, state).map_err(crate::io(format!("writing `{}`", path.display())))
    }

    /// Whether a monitor owns the container now (holds its lock).
    pub fn is_monitored(&self, id: &str) -> bool {
        let Ok(file) = File::open(self.container_dir(id).join("monitor.lock")) else {
            return false;
        };
        matches!(
            rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared),
            Err(rustix::io::Errno::WOULDBLOCK)
        )
    }

    /// Opens the container's lock file and takes it exclusively, waiting for a brief reader.
    pub(crate) fn lock(&self, id: &str) -> Result<File> {
        let path = self.container_dir(id).join("monitor.lock");
        let file = File::open(&path).map_err(crate::io(format!("opening `{}`", path.display())))?;
        // Readers (`ps`, `stop`) hold it for microseconds; a monitor holds it for good.
        for _ in 0..100 {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(file),
                Err(rustix::io::Errno::WOULDBLOCK) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => {
                    return Err(crate::io(format!("locking `{}`", path.display()))(e.into()));
                }
            }
        }
        Err(ContainerError::AlreadyRunning(id.to_string()).into())
    }

    /// Every container (running ones only unless `all`), newest first.
    pub fn list(&self, all: bool) -> Result<Vec<ContainerInfo>> {
        let mut out = Vec::new();
        for id in self.ids()? {
            // A container removed while we list is simply not listed.
            let (Ok(config), Ok(state)) = (self.config(&id), self.state(&id)) else {
                continue;
            };
            if all || state.status == Status::Running {
                out.push(ContainerInfo { config, state });
            }
        }
        out.sort_by_key(|c| std::cmp::Reverse(c.config.created));
        Ok(out)
    }

    /// Waits until no monitor owns the container, up to `timeout`; true when it stopped.
    async fn wait_unmonitored(&self, id: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_monitored(id) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `docker stop`: SIGTERM, then SIGKILL after `timeout`; returns once the monitor has
    /// recorded the exit and unmounted (and, with `--rm`, removed) the container.
    pub async fn stop(&self, query: &str, timeout: Duration) -> Result<()> {
        let id = self.lookup(query)?;
        if !self.is_monitored(&id) {
            return Ok(());
        }
        // Fails when the process is already gone; waiting below covers that.
        let _ = self.executor.kill(&id, "TERM");
        if self.wait_unmonitored(&id, timeout).await {
            return Ok(());
        }
        self.kill_and_wait(&id).await
    }

    async fn kill_and_wait(&self, id: &str) -> Result<()> {
        let _ = self.executor.kill(id, "KILL");
        // A killed process is gone at once; the monitor then only unmounts.
        if self.wait_unmonitored(id, Duration::from_secs(30)).await {
            Ok(())
        } else {
            Err(ContainerError::DidNotStop { id: id.to_string() }.into())
        }
    }

    /// `docker rm [-f]`: removes the container's state, log and upper dir.
    pub async fn remove(&self, query: &str, force: bool) -> Result<()> {
        let id = self.lookup(query)?;
        if self.is_monitored(&id) {
            if !force {
                return Err(ContainerError::Running(query.to_string()).into());
            }
            self.kill_and_wait(&id).await?;
        }
        self.remove_unmonitored(&id)
    }

    /// Removes a container no monitor owns, cleaning what a killed monitor left running.
    pub(crate) fn remove_unmonitored(&self, id: &str) -> Result<()> {
        let dir = self.container_dir(id);
        if !dir.exists() {
            return Ok(());
        }
        self.executor.delete(id)?;
        let merged = self.rootfs(id);
        match rustix::mount::unmount(&merged, rustix::mount::UnmountFlags::DETACH) {
            Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
            Err(e) => {
                return Err(crate::io(format!("unmounting `{}`", merged.display()))(
                    e.into(),
                ));
            }
        }
        let name = self.config(id).map(|c| c.name).ok();
        fs::remove_dir_all(&dir).map_err(crate::io(format!("removing `{}`", dir.display())))?;
        if let Some(name) = name {
            let path = self.dir.join("names").join(name);
            if fs::read_to_string(&path).is_ok_and(|owner| owner == id) {
                let _ = fs::remove_file(path);
            }
        }
        Ok(())
    }
}

/// docker ps's table.
pub fn format_ps_table(containers: &[ContainerInfo], now: DateTime<Utc>) -> String {
    let human = |t: DateTime<Utc>| kiln_exporter::human_duration(now - t);
    let mut rows = vec![[
        "CONTAINER ID".to_string(),
        "IMAGE".into(),
        "COMMAND".into(),
        "CREATED".into(),
        "STATUS".into(),
        "PORTS".into(),
        "NAMES".into(),
    ]];
    for c in containers {
        let cmd = c.config.args.join(" ");
        let cmd = if cmd.chars().count() > 20 {
            format!("{}…", cmd.chars().take(19).collect::<String>())
        } else {
            cmd
        };
        let status = match c.state.status {
            Status::Created => "Created".to_string(),
            Status::Running => format!("Up {}", human(c.state.started_at.unwrap_or(now))),
            Status::Exited => format!(
                "Exited ({}) {} ago",
                c.state.exit_code.unwrap_or(-1),
                human(c.state.finished_at.unwrap_or(now))
            ),
            Status::Dead => "Dead".to_string(),
        };
        let ports = if c.state.status == Status::Running {
            c.state
                .ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            String::new()
        };
        rows.push([
            c.config.short_id().to_string(),
            c.config.image.clone(),
            format!("\"{cmd}\""),
            format!("{} ago", human(c.config.created)),
            status,
            ports,
            c.config.name.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count() + 3;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A new container id: 64 hex digits, as docker's.
pub(crate) fn new_id() -> String {
    let bytes: [u8; 32] = rand::random();
    let mut id = String::with_capacity(64);
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && name.len() <= 128
}

/// `adjective_noun`, with a number after the first tries, for containers without `--name`.
fn generated_name(attempt: u32) -> String {
    const ADJECTIVES: &[&str] = &[
        "amber", "brisk", "calm", "daring", "eager", "fiery", "gentle", "hardy", "idle", "jolly",
        "keen", "lucid", "mellow", "nimble", "patient", "quiet", "rapid", "steady", "tidy",
        "vivid", "warm", "zesty",
    ];
    const NOUNS: &[&str] = &[
        "anvil", "bellows", "brick", "cinder", "clay", "crucible", "ember", "flame", "forge",
        "furnace", "glaze", "hearth", "ingot", "kettle", "mortar", "oven", "potter", "slag",
        "smelter", "tile", "tongs", "vessel",
    ];
    let a = ADJECTIVES[rand::random_range(0..ADJECTIVES.len())];
    let n = NOUNS[rand::random_range(0..NOUNS.len())];
    if attempt < 8 {
        format!("{a}_{n}")
    } else {
        format!("{a}_{n}_{}", rand::random_range(0..10_000))
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let data = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    fs::write(&tmp, data)?;
    fs::rename(&tmp, path)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let data = fs::read(path).map_err(crate::io(format!("reading `{}`", path.display())))?;
    serde_json::from_slice(&data).map_err(|e| crate::Error::Invalid {
        what: format!("container record `{}`", path.display()),
        source: Box::new(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs() {
        let p = PortSpec::parse("8000:5000").unwrap();
        assert_eq!((p.host_port, p.container_port), (8000, 5000));
        assert_eq!(p.to_string(), "0.0.0.0:8000->5000/tcp");
        let p = PortSpec::parse("127.0.0.1:8000:8000/tcp").unwrap();
        assert_eq!(p.to_string(), "127.0.0.1:8000->8000/tcp");
        let p = PortSpec::parse("80").unwrap();
        assert_eq!((p.host_port, p.container_port), (0, 80));
        let p = PortSpec::parse("127.0.0.1::80").unwrap();
        assert_eq!((p.host_port, p.container_port), (0, 80));
        let p = PortSpec::parse("[::1]:8080:80").unwrap();
        assert_eq!(p.to_string(), "[::1]:8080->80/tcp");
        assert!(
            PortSpec::parse("53:53/udp")
                .unwrap_err()
                .contains("not supported yet")
        );
        assert!(
            PortSpec::parse("8000-8001:80-81")
                .unwrap_err()
                .contains("not supported yet")
        );
        for bad in ["", "x:80", "80:0", "1.2.3:80:80", "99999:80"] {
            assert!(PortSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn volume_specs() {
        let v = Volume::parse("/app/data:/app/data").unwrap();
        assert_eq!((v.destination.as_str(), v.readonly), ("/app/data", false));
        assert!(Volume::parse("/a:/b:ro").unwrap().readonly);
        assert!(
            Volume::parse("data:/b")
                .unwrap_err()
                .contains("not supported yet")
        );
        assert!(
            Volume::parse("/a:/b:z")
                .unwrap_err()
                .contains("not supported yet")
        );
        assert!(Volume::parse("/a:b").is_err());
        assert!(Volume::parse("/a").is_err());
    }

    #[test]
    fn names_and_ids() {
        assert!(valid_name("web"));
        assert!(valid_name("a_b.c-1"));
        assert!(!valid_name("-web"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
        let id = new_id();
        assert!(is_id(&id), "{id}");
        assert!(valid_name(&generated_name(0)));
        assert!(valid_name(&generated_name(9)));
    }

    #[test]
    fn ps_table_columns() {
        let now = Utc::now();
        let config = ContainerConfig {
            id: "c370825640b6".repeat(6)[..64].to_string(),
            name: "web".into(),
            image: "hello-world-flask".into(),
            image_id: String::new(),
            created: now - chrono::TimeDelta::seconds(10),
            args: ["python3", "-m", "flask", "run", "--host=0.0.0.0"]
                .map(String::from)
                .to_vec(),
            env: vec![],
            cwd: "/app".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            hostname: String::new(),
            lowers: vec![],
            volumes: vec![],
            ports: vec![PortSpec::parse("8000:5000").unwrap()],
            auto_remove: false,
        };
        let mut state = ContainerState::created();
        state.status = Status::Running;
        state.started_at = Some(now - chrono::TimeDelta::seconds(9));
        state.ports = config.ports.clone();
        let table = format_ps_table(&[ContainerInfo { config, state }], now);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("CONTAINER ID   IMAGE"), "{table}");
        assert!(lines[1].starts_with("c370825640b6   hello-world-flask   \"python3 -m flask ru…\"   10 seconds ago   Up 9 seconds   0.0.0.0:8000->5000/tcp   web"), "{table}");
    }
}
