//! Ops that make a fresh filesystem: downloads, Git checkouts, inline files and directories.

use super::*;

impl LlbWorker {
    pub(crate) async fn download(&self, op: &HttpOp) -> Result<Arc<http::Download>> {
        if let Some(d) = self.downloads.lock().get(&op.url) {
            return Ok(d.clone());
        }
        let records = http::Records {
            dir: self.http_records.clone(),
        };
        let d = Arc::new(http::download(&self.http, &self.content, &records, &op.url).await?);
        self.downloads.lock().insert(op.url.clone(), d.clone());
        Ok(d)
    }

    /// A fresh filesystem holding the downloaded file, mode 0600, its mtime from Last-Modified.
    /// With `--checksum` the body is checked before it is used.
    pub(crate) async fn http(&self, op: &HttpOp, progress: &Vertex) -> Result<Value> {
        progress.status(&format!("downloading {}", op.url));
        let d = self.download(op).await?;
        self.downloads.lock().remove(&op.url);
        if d.revalidated {
            progress.status("not modified: using the stored download");
        }
        if let Some(expected) = &op.checksum
            && d.digest.to_string() != *expected
        {
            return Err(Error::ChecksumMismatch {
                url: op.url.clone(),
                expected: expected.clone(),
                actual: d.digest.clone(),
            });
        }
        let step = self.prepare(&[], progress).await?;
        let merged = step.dir.join("merged");
        let mut body = self.content.open_blob(&d.digest)?;
        let path = fsutil::write_file(&merged, &op.filename, &mut body, 0o600)
            .map_err(io(format!("writing `{}`", op.filename)))?;
        if let Some(t) = d.last_modified {
            filetime::set_file_mtime(&path, filetime::FileTime::from_system_time(t))
                .map_err(io(format!("setting the mtime of `{}`", op.filename)))?;
        }
        self.commit(step).await
    }

    pub(crate) async fn resolve_git(&self, op: &GitOp) -> Result<git::Resolved> {
        let id = serde_json::to_string(op).expect("ops serialise");
        if let Some(r) = self.git_resolved.lock().get(&id) {
            return Ok(r.clone());
        }
        let r = git::resolve(op, &self.scratch)
            .await
            .map_err(|source| Error::Git {
                remote: git::redact(&op.remote),
                source,
            })?;
        self.git_resolved.lock().insert(id, r.clone());
        Ok(r)
    }

    /// A Git source is keyed by the commit its ref resolves to now (so a moved branch misses
    /// and an unchanged one hits, as in BuildKit) and by what shapes the checkout; the remote
    /// and ref name count only when `.git` is kept, since they are written into it.
    pub(crate) async fn git_key(&self, op: &GitOp) -> Result<Digest> {
        let resolved = self.resolve_git(op).await?;
        let mut h = Sha256::new();
        h.update(b"git\0");
        h.update(resolved.commit.as_bytes());
        h.update([0]);
        h.update(op.subdir.as_bytes());
        h.update([0, op.skip_submodules as u8, op.mtime_commit as u8]);
        if op.keep_git_dir && op.subdir.is_empty() {
            h.update(op.remote.as_bytes());
            h.update([0]);
            h.update(resolved.full_ref.as_deref().unwrap_or_default().as_bytes());
        }
        Ok(kiln_oci::sha256(&h.finalize()))
    }

    /// A fresh filesystem holding the checkout (or its subdir), as the user running kiln
    /// fetched it; the result's files are owned by that user (root for builds).
    pub(crate) async fn git(&self, op: &GitOp, progress: &Vertex) -> Result<Value> {
        let resolved = self.resolve_git(op).await?;
        progress.status(&format!(
            "fetching {} at {}",
            git::redact(&op.remote),
            resolved.commit
        ));
        let dir = self
            .scratch
            .join(format!("git-{:016x}", rand::random::<u64>()));
        // No overlay: the checkout is the new layer's whole upper dir.
        let step = Step {
            dir: dir.clone(),
            mount: None,
            layers: Vec::new(),
        };
        let tree = git::checkout(op, &resolved, &dir.join("work"))
            .await
            .map_err(|source| Error::Git {
                remote: git::redact(&op.remote),
                source,
            })?;
        let upper = dir.join("upper");
        fs::rename(&tree, &upper).map_err(io(format!("moving `{}`", tree.display())))?;
        self.commit(step).await
    }

    /// A fresh filesystem holding only the op's files, owned by 0:0.
    pub(crate) async fn mkfile(&self, op: &MkfileOp, progress: &Vertex) -> Result<Value> {
        let step = self.prepare(&[], progress).await?;
        let merged = step.dir.join("merged");
        for f in &op.files {
            fsutil::write_file(&merged, &f.path, &mut f.data.as_bytes(), f.mode)
                .map_err(io(format!("creating `{}`", f.path)))?;
        }
        self.commit(step).await
    }

    pub(crate) async fn mkdir(
        &self,
        op: &MkdirOp,
        layers: &[LayerRef],
        progress: &Vertex,
    ) -> Result<Value> {
        let step = self.prepare(layers, progress).await?;
        let merged = step.dir.join("merged");
        let owner = kiln_executor::resolve_owner(&merged, &op.user)?;
        fsutil::mkdir_all(&merged, &op.path, op.mode, owner)
            .map_err(io(format!("creating `{}`", op.path)))?;
        self.commit(step).await
    }
}
