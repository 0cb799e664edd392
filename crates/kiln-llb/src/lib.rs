//! The build graph, kiln's LLB: a DAG of ops (sources, exec, file ops), each node named by the
//! digest of its op and its inputs' digests, so identical steps are one node and are solved once.
//! It knows nothing of Dockerfiles, files on disk or how an op runs.

pub mod mode;

use std::collections::HashMap;
use std::fmt::Write as _;

use kiln_oci::{Digest, Platform};
use serde::{Deserialize, Serialize};

/// One operation. Its serialised form (with its inputs' digests) is what the node digest covers,
/// so every field here must be something that changes the result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Op {
    /// An empty filesystem (`FROM scratch`).
    Scratch,
    /// A registry image, pinned by digest.
    Image {
        reference: String,
        platform: Platform,
    },
    /// The build context sent by the client; `excludes` are the .dockerignore rules in force.
    Local { name: String, excludes: Vec<String> },
    /// Run a process with input 0 as the root filesystem; the result is that filesystem after.
    Exec(Box<ExecOp>),
    /// Copy paths from input 1 into input 0.
    Copy(CopyOp),
    /// Create a directory (and its parents) in input 0.
    Mkdir(MkdirOp),
    /// A new filesystem holding only the given files (heredoc bodies); the bytes are in the
    /// op, so its digest covers them.
    Mkfile(MkfileOp),
    /// A new filesystem holding one file downloaded from `url` (ADD of a URL).
    Http(HttpOp),
    /// A new filesystem holding a checkout of a Git repository (ADD of a Git URL).
    Git(GitOp),
}

/// A Git checkout. The op names the remote and a ref; the worker resolves the ref to a commit,
/// and that commit (not the ref) is what the step's cache key covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitOp {
    /// What `git fetch` is given: `https://`, `http://`, `git://`, `ssh://` or `user@host:path`.
    pub remote: String,
    /// A branch, tag, other ref or full commit sha; empty for the remote's default branch.
    #[serde(rename = "ref", default, skip_serializing_if = "String::is_empty")]
    pub reference: String,
    /// The directory of the checkout that becomes the result; empty for the root.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subdir: String,
    /// Keep `.git` (only for a checkout of the whole tree, as BuildKit does).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_git_dir: bool,
    /// Hex prefix the resolved commit (or annotated tag object) must start with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Skip `git submodule update --init --recursive` (`?submodules=false`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_submodules: bool,
    /// Set every file's mtime to the commit time (`?mtime=commit`) instead of the checkout time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mtime_commit: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpOp {
    pub url: String,
    /// `sha256:<hex>` the download must match; without it the content is part of the cache key.
    pub checksum: Option<String>,
    /// The file's name in the result, mode 0600.
    pub filename: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOp {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub network: NetworkMode,
    /// Other inputs mounted into the process's view (not part of the result).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<ExecMount>,
    /// Persistent cache dirs (`RUN --mount=type=cache`); their contents are not in the digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caches: Vec<CacheMount>,
    /// Empty tmpfs mounts (`RUN --mount=type=tmpfs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<TmpfsMount>,
    /// Secrets by id only: their values are given to the worker, never put in the graph.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretMount>,
    /// SSH agents by id only: the socket is given to the worker, never put in the graph.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh: Vec<SshMount>,
    /// Security mode and the build's `--add-host`, `--ulimit`, `--shm-size`; each changes what
    /// the process can do, so each is in the digest, as in BuildKit's exec meta.
    #[serde(flatten)]
    pub sandbox: ExecSandbox,
    /// The platform the process is built for when it is not this machine's: the worker runs it
    /// through binfmt_misc (QEMU). Left out for native steps, so their digests stay as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// An SSH agent socket (`RUN --mount=type=ssh`) forwarded to the process at `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshMount {
    pub id: String,
    pub target: String,
    /// Whether a missing agent fails the step (otherwise the mount is skipped).
    pub required: bool,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The parts of an exec's environment beyond its command; empty ones stay out of the encoding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSandbox {
    #[serde(default, skip_serializing_if = "SecurityMode::is_sandbox")]
    pub security: SecurityMode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<HostEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<Ulimit>,
    /// `/dev/shm` size in bytes; the worker's default (64 MiB) when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<u64>,
    /// `RUN --device`: CDI devices by name, as BuildKit's exec op lists them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceRequest>,
    /// The cgroup the process's cgroup is made under (`--cgroup-parent`), as BuildKit's
    /// `Meta.CgroupParent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_parent: Option<String>,
    /// Cgroup limits (`--resource`), boxed to keep ops small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Box<ExecResources>>,
}

/// A CDI device a RUN asks for (`RUN --device=name[,required]`). One that is not registered
/// fails the step when required and is skipped otherwise, as in BuildKit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRequest {
    pub name: String,
    pub required: bool,
}

/// Cgroup limits of `kiln build --resource KEY=VALUE`, in runc's units.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResources {
    /// `memory`: bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<i64>,
    /// `memory-swap`: memory plus swap, bytes (`-1`: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_swap: Option<i64>,
    /// `cpu-quota`: microseconds per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<i64>,
    /// `cpu-period`: microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_period: Option<u64>,
    /// `cpu-shares`: relative weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<u64>,
    /// `cpuset-cpus`: CPUs allowed (`0-3`, `0,1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset_cpus: Option<String>,
    /// `cpuset-mems`: memory nodes allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset_mems: Option<String>,
}

/// `RUN --security`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityMode {
    /// Docker's default confinement.
    #[default]
    Sandbox,
    /// Every capability, no seccomp, nothing masked (needs the `security.insecure` entitlement).
    Insecure,
}

impl SecurityMode {
    pub fn is_sandbox(&self) -> bool {
        *self == SecurityMode::Sandbox
    }
}

/// An `/etc/hosts` entry (`--add-host name:address`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    pub host: String,
    pub ip: String,
}

/// A resource limit by its `--ulimit` name (`nofile`, `nproc`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// A secret exposed to the process as a read-only file at `target`, as the env var `env`, or both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretMount {
    pub id: String,
    pub target: Option<String>,
    pub env: Option<String>,
    /// Whether a missing secret fails the step (otherwise the mount is skipped).
    pub required: bool,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Input `input` of the exec node mounted at `target`. A writable mount's changes are
/// discarded after the process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecMount {
    pub input: usize,
    pub target: String,
    pub readonly: bool,
    /// The path inside the input to mount; empty for its root.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
}

/// A directory kept by the worker between builds, shared by every step naming the same `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheMount {
    pub id: String,
    pub target: String,
    pub readonly: bool,
    pub sharing: CacheSharing,
    /// Mode, uid and gid of the cache dir when it is first created.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// `from`: the exec input whose files seed the cache dir when it is first created; the
    /// input's key is part of the dir's identity, as in BuildKit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<usize>,
    /// `source`: with `input`, the path in it to seed from; without, the subdirectory of the
    /// cache dir to mount. Empty for the root.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
}

/// How concurrent steps share a cache mount, as in BuildKit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheSharing {
    Shared,
    Private,
    Locked,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsMount {
    pub target: String,
    /// Size limit in bytes; None for the kernel's default.
    pub size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MkfileOp {
    pub files: Vec<InlineFile>,
}

/// A file created with fixed contents, owned by 0:0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InlineFile {
    /// Path relative to the root; parent directories are created 0755.
    pub path: String,
    pub data: String,
    pub mode: u32,
}

/// `RUN --network`. `default` is the host's namespace (BuildKit's default without CNI), so
/// `default` and `host` are one mode; only the entitlement check tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    Host,
    /// A namespace of its own with loopback only.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyOp {
    /// Source paths or wildcard patterns, relative to the source root.
    pub sources: Vec<String>,
    /// Absolute destination; a trailing `/` means "into this directory".
    pub dest: String,
    /// `user[:group]` as written in `--chown`, resolved against the destination's /etc files.
    pub chown: Option<String>,
    /// Octal mode from `--chmod`.
    pub chmod: Option<u32>,
    /// Whether sources may contain wildcards (always for Dockerfile COPY).
    pub allow_wildcard: bool,
    /// ADD: a source file that is a tar archive (plain, gzip, bzip2 or xz) is extracted into
    /// the destination directory instead of copied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unpack: bool,
    /// `--exclude` patterns (.dockerignore syntax), matched against paths below each source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// `--parents`: each source keeps its path relative to the source root, or to the `/./`
    /// pivot written in it; the part after the pivot is a pattern (`*`, `**`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parents: bool,
    /// A symbolic `--chmod` ([`mode::Chmod`]), applied per file; octal modes use `chmod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chmod_symbolic: Option<String>,
}

impl CopyOp {
    /// The `--chmod` to apply, octal or symbolic.
    pub fn chmod(&self) -> Result<Option<mode::Chmod>, mode::ModeError> {
        match (&self.chmod_symbolic, self.chmod) {
            (Some(s), _) => mode::Chmod::parse(s).map(Some),
            (None, Some(m)) => Ok(Some(mode::Chmod::Octal(m))),
            (None, None) => Ok(None),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MkdirOp {
    pub path: String,
    pub mode: u32,
    /// Owner as `user[:group]`, resolved against the filesystem's /etc files.
    pub user: String,
}

/// Index of a node in its [`Definition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);

#[derive(Debug, Clone)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<NodeId>,
    pub digest: Digest,
    /// What progress output calls this step (not part of the digest).
    pub name: String,
}

/// A DAG of nodes in topological order: every input precedes its users.
#[derive(Debug, Clone, Default)]
pub struct Definition {
    nodes: Vec<Node>,
    by_digest: HashMap<Digest, NodeId>,
}

#[derive(Serialize)]
struct Canonical<'a> {
    op: &'a Op,
    inputs: Vec<&'a str>,
}

impl Definition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node, or returns the existing one with the same op and inputs.
    pub fn add(&mut self, op: Op, inputs: Vec<NodeId>, name: impl Into<String>) -> NodeId {
        let digest = self.digest_of(&op, &inputs);
        if let Some(id) = self.by_digest.get(&digest) {
            return *id;
        }
        let id = NodeId(self.nodes.len());
        self.nodes.push(Node {
            op,
            inputs,
            digest: digest.clone(),
            name: name.into(),
        });
        self.by_digest.insert(digest, id);
        id
    }

    fn digest_of(&self, op: &Op, inputs: &[NodeId]) -> Digest {
        let canonical = Canonical {
            op,
            inputs: inputs
                .iter()
                .map(|i| self.nodes[i.0].digest.as_ref())
                .collect(),
        };
        let bytes = serde_json::to_vec(&canonical).expect("ops always serialise");
        kiln_oci::sha256(&bytes)
    }

    /// Adds every node of `other` (inputs first, as it keeps them), sharing the nodes this
    /// definition already has with the same digest; returns where each of `other`'s nodes is now.
    pub fn merge(&mut self, other: &Definition) -> Vec<NodeId> {
        let mut at: Vec<NodeId> = Vec::with_capacity(other.nodes.len());
        for node in &other.nodes {
            let inputs = node.inputs.iter().map(|i| at[i.0]).collect();
            at.push(self.add(node.op.clone(), inputs, node.name.clone()));
        }
        at
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }

    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &Node)> {
        self.nodes.iter().enumerate().map(|(i, n)| (NodeId(i), n))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The nodes `root` depends on, itself included, in topological order.
    pub fn closure(&self, root: NodeId) -> Vec<NodeId> {
        let mut seen = vec![false; self.nodes.len()];
        let mut stack = vec![root];
        while let Some(id) = stack.pop() {
            if !std::mem::replace(&mut seen[id.0], true) {
                stack.extend(&self.nodes[id.0].inputs);
            }
        }
        (0..self.nodes.len())
            .filter(|i| seen[*i])
            .map(NodeId)
            .collect()
    }

    /// A deterministic text form of the graph below `root`, for golden tests and `--explain`.
    pub fn dump(&self, root: NodeId) -> String {
        let order = self.closure(root);
        let index: HashMap<NodeId, usize> =
            order.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let mut out = String::new();
        for (i, id) in order.iter().enumerate() {
            let node = &self.nodes[id.0];
            let inputs: Vec<String> = node
                .inputs
                .iter()
                .map(|n| format!("%{}", index[n]))
                .collect();
            let op = serde_json::to_string(&node.op).expect("ops always serialise");
            let _ = writeln!(out, "%{i} = {op} [{}] # {}", inputs.join(", "), node.name);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(cmd: &str) -> Op {
        Op::Exec(Box::new(ExecOp {
            args: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
            env: vec![],
            cwd: "/".into(),
            user: "root".into(),
            network: NetworkMode::Host,
            mounts: vec![],
            caches: vec![],
            tmpfs: vec![],
            secrets: vec![],
            ssh: vec![],
            sandbox: ExecSandbox::default(),
            platform: None,
        }))
    }

    #[test]
    fn merging_shares_identical_nodes() {
        let mut a = Definition::new();
        let s = a.add(Op::Scratch, vec![], "scratch");
        let shared = a.add(exec("true"), vec![s], "[linux/amd64 1/2] RUN true");
        a.add(
            exec("uname -m"),
            vec![shared],
            "[linux/amd64 2/2] RUN uname -m",
        );
        let mut b = Definition::new();
        let s = b.add(Op::Scratch, vec![], "scratch");
        let shared_b = b.add(exec("true"), vec![s], "[linux/amd64 1/2] RUN true");
        b.add(
            exec("uname -a"),
            vec![shared_b],
            "[linux/arm64 2/2] RUN uname -a",
        );
        let at = a.merge(&b);
        assert_eq!(at[shared_b.0], shared);
        assert_eq!(a.len(), 4);
        assert_eq!(a.node(at[2]).inputs, vec![shared]);
        assert_eq!(a.node(at[2]).name, "[linux/arm64 2/2] RUN uname -a");
    }

    #[test]
    fn identical_nodes_are_deduplicated() {
        let mut def = Definition::new();
        let a = def.add(Op::Scratch, vec![], "scratch");
        let b = def.add(exec("true"), vec![a], "[1/2] RUN true");
        let b2 = def.add(exec("true"), vec![a], "[stage-1 1/2] RUN true");
        assert_eq!(b, b2);
        assert_eq!(def.len(), 2);
    }

    #[test]
    fn digest_covers_inputs_and_op() {
        let mut def = Definition::new();
        let s = def.add(Op::Scratch, vec![], "");
        let img = def.add(
            Op::Image {
                reference: "docker.io/library/busybox@sha256:00".into(),
                platform: Platform::host(),
            },
            vec![],
            "",
        );
        let x = def.add(exec("true"), vec![s], "");
        let y = def.add(exec("true"), vec![img], "");
        let z = def.add(exec("false"), vec![s], "");
        let d = |id| def.node(id).digest.clone();
        assert_ne!(d(x), d(y));
        assert_ne!(d(x), d(z));
    }

    #[test]
    fn mkfile_digest_covers_the_data() {
        let mut def = Definition::new();
        let file = |data: &str| {
            Op::Mkfile(MkfileOp {
                files: vec![InlineFile {
                    path: "EOF".into(),
                    data: data.into(),
                    mode: 0o644,
                }],
            })
        };
        let a = def.add(file("a\n"), vec![], "");
        let b = def.add(file("b\n"), vec![], "");
        assert_ne!(def.node(a).digest, def.node(b).digest);
    }

    #[test]
    fn exec_without_mounts_keeps_its_encoding() {
        let json = serde_json::to_string(&exec("true")).unwrap();
        assert!(!json.contains("mounts"), "{json}");
        assert!(!json.contains("security"), "{json}");
        assert!(!json.contains("ulimits"), "{json}");
    }

    #[test]
    fn network_and_sandbox_are_in_the_digest_and_round_trip() {
        let mut def = Definition::new();
        let s = def.add(Op::Scratch, vec![], "");
        let plain = exec("true");
        let mut none = plain.clone();
        let mut insecure = plain.clone();
        let mut limited = plain.clone();
        if let (Op::Exec(n), Op::Exec(i), Op::Exec(l)) = (&mut none, &mut insecure, &mut limited) {
            n.network = NetworkMode::None;
            i.sandbox.security = SecurityMode::Insecure;
            l.sandbox.ulimits.push(Ulimit {
                name: "nofile".into(),
                soft: 1,
                hard: 2,
            });
        }
        let ids: Vec<NodeId> = [&plain, &none, &insecure, &limited]
            .into_iter()
            .map(|op| def.add(op.clone(), vec![s], ""))
            .collect();
        let digests: std::collections::HashSet<_> =
            ids.iter().map(|id| def.node(*id).digest.clone()).collect();
        assert_eq!(digests.len(), 4);
        for op in [&none, &insecure, &limited] {
            let json = serde_json::to_string(op).unwrap();
            let back: Op = serde_json::from_str(&json).unwrap();
            assert_eq!(&back, op, "{json}");
        }
    }

    #[test]
    fn closure_skips_unneeded_nodes() {
        let mut def = Definition::new();
        let s = def.add(Op::Scratch, vec![], "");
        let a = def.add(exec("a"), vec![s], "");
        let _unused = def.add(exec("b"), vec![s], "");
        assert_eq!(def.closure(a), vec![s, a]);
        assert!(def.dump(a).starts_with("%0 = {\"type\":\"scratch\"} [] #"));
    }
}
