//! The directory of builders: reads and atomic writes of buildx's files, under its lock.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Builder, DEFAULT, Error, Result, validate_name};

/// buildx's `current`: which builder is in use (`Key` is the docker context; kiln has one).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Current {
    #[serde(default)]
    key: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    global: bool,
}

/// kiln's one "context", where buildx would write the docker endpoint.
const CONTEXT: &str = "kiln";

pub struct Store {
    dir: PathBuf,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

impl Store {
    /// The store in `dir`, created (0700, as buildx makes it) on first write.
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn instance_path(&self, name: &str) -> PathBuf {
        self.dir.join("instances").join(name)
    }

    /// An exclusive lock on `.lock` for a read-modify-write, as buildx takes it.
    pub(crate) fn lock(&self) -> Result<File> {
        self.create_dirs()?;
        let path = self.dir.join(".lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(format!("opening `{}`", path.display())))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io(format!("locking `{}`", path.display()))(e.into()))?;
        Ok(f)
    }

    fn create_dirs(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        for sub in ["", "instances", "defaults", "activity"] {
            let d = self.dir.join(sub);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)
                .map_err(io(format!("creating `{}`", d.display())))?;
        }
        Ok(())
    }

    /// Writes `path` whole or not at all (temp file and rename), readable by its owner only.
    fn write(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let mut f = File::options()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(format!("writing `{}`", tmp.display())))?;
        f.write_all(bytes)
            .map_err(io(format!("writing `{}`", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(io(format!("writing `{}`", path.display())))
    }

    /// A stored builder; `None` when there is none by that name (`default` is never stored).
    pub fn get(&self, name: &str) -> Result<Option<Builder>> {
        if name == DEFAULT {
            return Ok(Some(Builder::default_builder()));
        }
        validate_name(name)?;
        let path = self.instance_path(name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| Error::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(format!("reading `{}`", path.display()))(e)),
        }
    }

    /// `get`, with buildx's error when there is none.
    pub fn require(&self, name: &str) -> Result<Builder> {
        self.get(name)?
            .ok_or_else(|| Error::Invalid(format!("no builder \"{name}\" found")))
    }

    /// Every stored builder, by name; `default` is not among them.
    pub fn list(&self) -> Result<Vec<Builder>> {
        let dir = self.dir.join("instances");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(format!("reading `{}`", dir.display()))(e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| validate_name(n).is_ok() && n != DEFAULT)
            .collect();
        names.sort();
        let mut out = Vec::new();
        for n in names {
            if let Some(b) = self.get(&n)? {
                out.push(b);
            }
        }
        Ok(out)
    }

    pub(crate) fn save(&self, b: &Builder) -> Result<()> {
        self.create_dirs()?;
        let bytes = serde_json::to_vec(b).expect("a builder serializes");
        self.write(&self.instance_path(&b.name), &bytes)?;
        self.touch(&b.name)
    }

    /// Records that `name` was used now (`Last Activity`).
    pub fn touch(&self, name: &str) -> Result<()> {
        if name == DEFAULT {
            return Ok(());
        }
        self.create_dirs()?;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.write(&self.dir.join("activity").join(name), now.as_bytes())
    }

    /// When `name` was last created, changed or used.
    pub fn activity(&self, name: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        let text = std::fs::read_to_string(self.dir.join("activity").join(name)).ok()?;
        chrono::DateTime::parse_from_rfc3339(text.trim())
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    }

    /// The builder in use: `current`'s, else the `defaults/` one, else `default`; one that was
    /// removed since falls back the same way.
    pub fn current(&self) -> Result<String> {
        let current: Current = std::fs::read(self.dir.join("current"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let fallback = std::fs::read_to_string(self.dir.join("defaults").join(CONTEXT))
            .ok()
            .map(|s| s.trim().to_string());
        for name in [Some(current.name), fallback].into_iter().flatten() {
            if name.is_empty() {
                continue;
            }
            if validate_name(&name).is_ok() && self.get(&name)?.is_some() {
                return Ok(name);
            }
        }
        Ok(DEFAULT.into())
    }

    /// `kiln builder use NAME [--default] [--global]`.
    pub fn use_builder(&self, name: &str, default: bool, global: bool) -> Result<()> {
        if name != DEFAULT && self.get(name)?.is_none() {
            return Err(Error::Invalid(format!(
                "failed to find instance \"{name}\": open {}: no such file or directory",
                self.instance_path(name).display()
            )));
        }
        let _lock = self.lock()?;
        let current = Current {
            key: CONTEXT.into(),
            name: if name == DEFAULT {
                String::new()
            } else {
                name.into()
            },
            global,
        };
        self.write(
            &self.dir.join("current"),
            &serde_json::to_vec(&current).expect("serializes"),
        )?;
        if default {
            let path = self.dir.join("defaults").join(CONTEXT);
            if name == DEFAULT {
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io(format!("removing `{}`", path.display()))(e));
                    }
                    _ => {}
                }
            } else {
                self.write(&path, name.as_bytes())?;
            }
        }
        Ok(())
    }

    /// `kiln builder rm NAME`: its files go; a builder's state is never removed (an embedded
    /// builder's is the data root every embedded builder shares; a remote one's is kilnd's).
    pub fn remove(&self, name: &str) -> Result<()> {
        if name == DEFAULT {
            return Err(Error::Invalid(
                "context builder cannot be removed".to_string(),
            ));
        }
        self.require(name)?;
        let _lock = self.lock()?;
        let path = self.instance_path(name);
        std::fs::remove_file(&path).map_err(io(format!("removing `{}`", path.display())))?;
        let _ = std::fs::remove_file(self.dir.join("activity").join(name));
        let default = self.dir.join("defaults").join(CONTEXT);
        if std::fs::read_to_string(&default).is_ok_and(|s| s.trim() == name) {
            let _ = std::fs::remove_file(&default);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CreateRequest;

    fn remote(store: &Store, name: &str, addr: &str) {
        store
            .create(CreateRequest {
                name: Some(name.into()),
                driver: Some("remote".into()),
                endpoint: Some(addr.into()),
                ..Default::default()
            })
            .unwrap();
    }

    #[test]
    fn reads_what_buildx_writes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("instances")).unwrap();
        std::fs::write(
            dir.path().join("instances/y"),
            r#"{"Name":"y","Driver":"remote","Nodes":[{"Name":"y0","Endpoint":"tcp://1.2.3.4:1234","Platforms":[{"architecture":"amd64","os":"linux"},{"architecture":"arm64","os":"linux"}],"DriverOpts":{"cacert":"/tmp/ca.pem","servername":"foo"},"Flags":null,"Files":null},{"Name":"y1","Endpoint":"tcp://5.6.7.8:1234","Platforms":null,"DriverOpts":null,"Flags":null,"Files":null}],"Dynamic":false}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("current"),
            r#"{"Key":"unix:///var/run/docker.sock","Name":"y","Global":false}"#,
        )
        .unwrap();
        let store = Store::new(dir.path());
        let y = store.require("y").unwrap();
        assert_eq!(y.nodes.len(), 2);
        assert_eq!(y.nodes[0].platforms.as_ref().unwrap().len(), 2);
        assert_eq!(
            y.nodes[0].driver_opts.as_ref().unwrap()["servername"],
            "foo"
        );
        assert_eq!(store.current().unwrap(), "y");
    }

    #[test]
    fn use_and_remove_move_the_current_builder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        assert_eq!(store.current().unwrap(), "default");
        remote(&store, "a", "tcp://127.0.0.1:1234");
        remote(&store, "b", "unix:///run/kilnd.sock");
        store.use_builder("a", false, false).unwrap();
        assert_eq!(store.current().unwrap(), "a");
        store.use_builder("b", true, false).unwrap();
        assert_eq!(store.current().unwrap(), "b");
        store.remove("b").unwrap();
        assert_eq!(store.current().unwrap(), "default", "b's files are gone");
        assert!(store.get("b").unwrap().is_none());
        let e = store.use_builder("nope", false, false).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("failed to find instance \"nope\": open "),
            "{e}"
        );
        assert_eq!(
            store.remove("default").unwrap_err().to_string(),
            "context builder cannot be removed"
        );
        assert_eq!(
            store.remove("zz").unwrap_err().to_string(),
            "no builder \"zz\" found"
        );
        assert_eq!(
            store
                .list()
                .unwrap()
                .iter()
                .map(|b| &b.name)
                .collect::<Vec<_>>(),
            ["a"]
        );
    }
}
