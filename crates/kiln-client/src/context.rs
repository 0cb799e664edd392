//! The client's side of the context sync: the session key, the stat walk (the engine's own
//! walk and .dockerignore rules) and the bytes of the files the daemon asks for.

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use kiln_proto::v1::{ClientMessage, ContextStats, FileChunk, FileStat, client_message};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::{Error, io};

/// Which mirror the daemon keeps for this context: this host and the context's path, hashed.
pub fn session_key(context: &Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut h = Sha256::new();
    h.update(host.trim().as_bytes());
    h.update([0]);
    h.update(context.as_os_str().as_encoded_bytes());
    hex::encode(h.finalize())
}

const STATS_PER_MESSAGE: usize = 2000;
const CHUNK: usize = 1 << 20;

fn lost() -> Error {
    Error::Protocol("the daemon closed the stream".into())
}

/// Walks the context and sends every kept entry's stat record. `.dockerignore` is always sent:
/// the daemon's engine reads it there, as embedded.
pub async fn send_stats(context: &Path, tx: &mpsc::Sender<ClientMessage>) -> Result<(), Error> {
    let dir = context.to_path_buf();
    let entries = tokio::task::spawn_blocking(move || walk(&dir))
        .await
        .map_err(|e| Error::Protocol(format!("walking the context: {e}")))??;
    let mut chunks = entries.chunks(STATS_PER_MESSAGE).peekable();
    if chunks.peek().is_none() {
        let m = ContextStats {
            entries: Vec::new(),
            done: true,
        };
        return send(tx, client_message::Msg::Stats(m)).await;
    }
    while let Some(c) = chunks.next() {
        let m = ContextStats {
            entries: c.to_vec(),
            done: chunks.peek().is_none(),
        };
        send(tx, client_message::Msg::Stats(m)).await?;
    }
    Ok(())
}

async fn send(tx: &mpsc::Sender<ClientMessage>, m: client_message::Msg) -> Result<(), Error> {
    tx.send(ClientMessage { msg: Some(m) })
        .await
        .map_err(|_| lost())
}

fn walk(dir: &Path) -> Result<Vec<FileStat>, Error> {
    let ignore_path = dir.join(".dockerignore");
    // A .dockerignore that does not parse is reported by the daemon's engine, as embedded;
    // the whole context is listed meanwhile.
    let matcher = std::fs::read_to_string(&ignore_path)
        .ok()
        .and_then(|t| kiln_ignore::Matcher::from_dockerignore(&t).ok());
    let mut out = Vec::new();
    let mut saw_ignore = false;
    // Files with several links: the first path listed of each inode.
    let mut inodes: std::collections::HashMap<(u64, u64), String> = Default::default();
    kiln_worker::walk_context(dir, matcher.as_ref(), &mut |e| {
        saw_ignore |= e.rel == ".dockerignore";
        let mut s = stat(e.rel, e.meta, e.link_target.as_deref());
        if e.meta.is_file() && e.meta.nlink() > 1 {
            match inodes.entry((e.meta.dev(), e.meta.ino())) {
                std::collections::hash_map::Entry::Occupied(first) => {
                    s.link_target = first.get().clone();
                    s.hardlink = true;
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(e.rel.to_string());
                }
            }
        }
        out.push(s);
        Ok(())
    })
    .map_err(|e| Error::Protocol(format!("walking the context: {e}")))?;
    if !saw_ignore
        && let Ok(meta) = std::fs::symlink_metadata(&ignore_path)
        && meta.is_file()
    {
        out.push(stat(".dockerignore", &meta, None));
        out.sort_by(|a, b| a.path.cmp(&b.path));
    }
    Ok(out)
}

fn stat(rel: &str, meta: &std::fs::Metadata, link: Option<&Path>) -> FileStat {
    FileStat {
        path: rel.to_string(),
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        size: if meta.is_file() { meta.len() } else { 0 },
        mtime_sec: meta.mtime(),
        mtime_nsec: meta.mtime_nsec() as u32,
        link_target: link
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default(),
        hardlink: false,
    }
}

/// Sends the bytes of each file asked for, in order, in chunks.
pub async fn send_files(
    context: &Path,
    paths: &[String],
    tx: &mpsc::Sender<ClientMessage>,
) -> Result<(), Error> {
    for p in paths {
        let mut f = kiln_worker::open_context_file(context, p)
            .map_err(io(format!("reading `{p}` from the context")))?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(io(format!("reading `{p}` from the context")))?;
            let m = FileChunk {
                path: p.clone(),
                data: buf[..n].to_vec(),
                eof: n == 0,
            };
            send(tx, client_message::Msg::File(m)).await?;
            if n == 0 {
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dockerignore_is_listed_even_when_it_ignores_itself() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".dockerignore"), ".dockerignore\n*.log\n").unwrap();
        std::fs::write(dir.path().join("a.log"), "x").unwrap();
        std::fs::write(dir.path().join("keep"), "y").unwrap();
        let paths: Vec<String> = walk(dir.path())
            .unwrap()
            .into_iter()
            .map(|s| s.path)
            .collect();
        assert_eq!(paths, [".dockerignore", "keep"]);
    }

    #[test]
    fn the_session_key_is_per_directory() {
        let a = session_key(Path::new("/src/a"));
        assert_eq!(a.len(), 64);
        assert_eq!(a, session_key(Path::new("/src/a")));
        assert_ne!(a, session_key(Path::new("/src/b")));
    }
}
