//! COPY and ADD of local files: the copy op and the content checksum that keys it.

use super::*;

impl LlbWorker {
    pub(crate) async fn copy(
        &self,
        op: &CopyOp,
        layers: &[LayerRef],
        source: &Value,
        progress: &Vertex,
    ) -> Result<Value> {
        let step = self.prepare(layers, progress).await?;
        let merged = step.dir.join("merged");
        // The source: the context, or another filesystem mounted read-only for the copy.
        let from_context = matches!(source, Value::Context { .. });
        let (src_root, matcher, src_step, keep_owner) = match source {
            Value::Context { name } => {
                let ctx = self.context(name)?;
                (ctx.dir.clone(), ctx.matcher.clone(), None, false)
            }
            Value::Rootfs { layers } => {
                let s = self.prepare(layers, progress).await?;
                (s.dir.join("merged"), None, Some(s), true)
            }
        };
        let owner = match &op.chown {
            Some(spec) => {
                let (uid, gid) = kiln_executor::resolve_owner(&merged, spec)?;
                Owner::Set { uid, gid }
            }
            None if keep_owner => Owner::Keep,
            None => Owner::Set { uid: 0, gid: 0 },
        };
        // Local files only: an ADD that may unpack archives copies files.
        if let (Value::Context { name }, Owner::Set { uid, gid }) = (source, owner)
            && self.copy_stream
            && !op.unpack
            && let Some(value) = self
                .copy_stream(op, name, &step, (uid, gid), progress)
                .await?
        {
            return Ok(value);
        }
        let (sources, dest, parents) = (op.sources.clone(), op.dest.clone(), op.parents);
        let chmod = op
            .chmod()
            .map_err(|e| Error::Manifest(format!("copy op: {e}")))?;
        let exclude = exclude_matcher(&op.exclude)?;
        let merged2 = merged.clone();
        let (unpack, work) = (op.unpack, step.dir.join("unpack"));
        // An archive's own owners are kept unless --chown says otherwise.
        let archive_owner = if op.chown.is_some() {
            owner
        } else {
            Owner::Keep
        };
        tokio::task::spawn_blocking(move || {
            let m = matcher.as_deref();
            let chmod = chmod.as_ref();
            let mut groups = fsutil::select(&src_root, &sources, parents, m)?;
            if from_context {
                fsutil::context_root_lends_no_mtime(&mut groups);
            }
            if parents {
                for g in &groups {
                    let filter = fsutil::Filter {
                        include: g.include.as_ref(),
                        exclude: exclude.as_ref(),
                    };
                    fsutil::copy(&g.sources, m, filter, &merged2, &dest, owner, chmod)?;
                }
                return Ok(());
            }
            let filter = fsutil::Filter {
                include: None,
                exclude: exclude.as_ref(),
            };
            let mut selected: Vec<fsutil::Source> =
                groups.into_iter().flat_map(|g| g.sources).collect();
            let mut archives = Vec::new();
            if unpack {
                fs::create_dir_all(&work).map_err(|source| SourceError::Io {
                    path: work.clone(),
                    source,
                })?;
                let (a, rest): (Vec<_>, Vec<_>) = selected.into_iter().partition(add::is_archive);
                archives = a;
                selected = rest;
            }
            if !selected.is_empty() || archives.is_empty() {
                fsutil::copy(&selected, m, filter, &merged2, &dest, owner, chmod)?;
            }
            for (i, archive) in archives.iter().enumerate() {
                let out = work.join(format!("archive-{i}"));
                add::extract(archive, &out)?;
                let tree = fsutil::Source::whole(&out);
                let all = fsutil::Filter::default();
                // BuildKit unpacks archives with their own modes: --chmod does not apply.
                fsutil::copy(&[tree], None, all, &merged2, &dest, archive_owner, None)?;
            }
            Ok(())
        })
        .await?
        .map_err(Error::Source)?;
        drop(src_step);
        self.commit(step).await
    }
}

/// The COPY-style source path for a bind mount's `source`.
pub(crate) fn context_source(source: &str) -> String {
    let s = source.trim_start_matches('/');
    if s.is_empty() { ".".into() } else { s.into() }
}

/// `--exclude` patterns as a matcher (None when there are none).
pub(crate) fn exclude_matcher(patterns: &[String]) -> Result<Option<kiln_ignore::Matcher>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    kiln_ignore::Matcher::new(patterns)
        .map(Some)
        .map_err(|e| Error::Source(SourceError::Pattern(e)))
}

/// The content checksum of what a COPY selects from the context (after `.dockerignore`,
/// `--parents` and `--exclude`): paths, file types, modes, symlink targets and file bytes.
/// Owners and mtimes are left out: COPY from the context writes 0:0 and a touched file must
/// not miss the cache. `hashes` spares reading files whose metadata did not change.
pub(crate) fn context_checksum(
    ctx: &Context,
    sources: &[String],
    parents: bool,
    exclude: &[String],
    hashes: Option<&FileHashes>,
) -> Result<([u8; 32], key_inputs::ListedFiles)> {
    let m = ctx.matcher.as_deref();
    let groups = fsutil::select(&ctx.dir, sources, parents, m).map_err(Error::Source)?;
    let exclude = exclude_matcher(exclude)?;
    let mut h = Sha256::new();
    let mut files = Vec::new();
    for g in &groups {
        let filter = fsutil::Filter {
            include: g.include.as_ref(),
            exclude: exclude.as_ref(),
        };
        checksum_group(
            &mut h,
            &g.sources,
            m,
            filter,
            hashes,
            (&ctx.dir, &mut files),
        )?;
    }
    Ok((h.finalize().into(), files))
}

pub(crate) fn checksum_group(
    h: &mut Sha256,
    selected: &[fsutil::Source],
    m: Option<&kiln_ignore::Matcher>,
    filter: fsutil::Filter<'_>,
    hashes: Option<&FileHashes>,
    (root, files): (&Path, &mut key_inputs::ListedFiles),
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    for s in selected {
        h.update(s.rel.as_bytes());
        h.update([0]);
    }
    fsutil::walk(selected, m, filter, &mut |e| {
        h.update(e.source.to_le_bytes());
        h.update(e.rel.as_bytes());
        h.update([0]);
        let mode = e.meta.mode() & 0o177777;
        h.update(mode.to_le_bytes());
        // What this entry adds besides its path and mode, also kept per path for --explain.
        let content: Vec<u8> = if e.meta.file_type().is_symlink() {
            e.read_link()?.into_os_string().into_encoded_bytes()
        } else if e.meta.is_file() {
            match hashes {
                Some(table) => table.digest(e.abs, e.meta, || e.open())?.to_vec(),
                None => hashcache::file_digest(e.open()?)?.to_vec(),
            }
        } else {
            Vec::new()
        };
        h.update(&content);
        h.update([0xff]);
        let path = e.abs.strip_prefix(root).unwrap_or(e.abs);
        files.push((
            path.to_string_lossy().into_owned(),
            key_inputs::entry_digest(mode, &content),
        ));
        Ok(())
    })
    .map_err(Error::Source)
}
