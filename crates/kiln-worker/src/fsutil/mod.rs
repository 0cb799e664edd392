//! Filesystem work inside a root that is not ours: every path is resolved as if the root were
//! `/` (symlinks followed but clamped at the root), so a hostile image or context can never make a
//! COPY or WORKDIR read or write outside it. No crate offers chroot-style resolution on top of
//! std, so it is written here.

mod context_walk;
mod copy;
#[cfg(test)]
mod hostile_tests;
mod pattern;
mod prune;
mod resolve;
mod select;
mod walk;

pub use context_walk::{ContextEntry, open_context_file, walk_context};
pub use copy::{Owner, copy, mkdir_all, write_file};
pub use pattern::component_match;
pub(crate) use pattern::has_wildcard;
pub use prune::prune_unchanged_dirs;
pub use resolve::{clean_rel, resolve_in_root};
pub use select::{Source, SourceError, context_root_lends_no_mtime, expand_sources, select};
pub use walk::{Entry, Filter, walk};

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    use kiln_ignore::Matcher;
    use kiln_llb::mode::Chmod;

    #[test]
    fn resolution_is_clamped_to_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("real/dir")).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("evil")).unwrap();
        std::os::unix::fs::symlink("../../../../..", r.join("up")).unwrap();
        std::os::unix::fs::symlink("real/dir", r.join("rel")).unwrap();
        assert_eq!(
            resolve_in_root(r, "/etc/passwd", true).unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(resolve_in_root(r, "up/x", true).unwrap(), r.join("x"));
        assert_eq!(
            resolve_in_root(r, "rel/f", true).unwrap(),
            r.join("real/dir/f")
        );
        assert_eq!(resolve_in_root(r, "rel", false).unwrap(), r.join("rel"));
        assert_eq!(resolve_in_root(r, "../../x", true).unwrap(), r.join("x"));
    }

    #[test]
    fn prune_keeps_only_real_changes() {
        let lower = tempfile::tempdir().unwrap();
        let upper = tempfile::tempdir().unwrap();
        fs::create_dir_all(lower.path().join("etc")).unwrap();
        fs::create_dir_all(lower.path().join("tmp")).unwrap();
        fs::set_permissions(lower.path().join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::create_dir_all(upper.path().join("etc")).unwrap(); // a bare copy-up
        fs::create_dir_all(upper.path().join("tmp")).unwrap(); // mode differs from the lower
        fs::create_dir_all(upper.path().join("new/empty")).unwrap(); // new directories
        fs::create_dir_all(upper.path().join("etc2")).unwrap();
        fs::set_permissions(upper.path().join("tmp"), fs::Permissions::from_mode(0o755)).unwrap();
        prune_unchanged_dirs(upper.path(), &[lower.path().to_path_buf()]).unwrap();
        assert!(!upper.path().join("etc").exists());
        assert!(upper.path().join("tmp").exists());
        assert!(upper.path().join("new/empty").exists());
        assert!(upper.path().join("etc2").exists());
    }

    #[test]
    fn go_match_semantics() {
        assert!(component_match("*.py", "app.py"));
        assert!(!component_match("*.py", "app.pyc"));
        assert!(component_match("a?c", "abc"));
        assert!(component_match("[a-c]x", "bx"));
        assert!(!component_match("[^a-c]x", "bx"));
        // `!` is no negation in Go's classes.
        assert!(component_match("[!a]", "!") && component_match("[!a]", "a"));
        assert!(!component_match("[!a]", "b"));
        assert!(component_match("\\*", "*"));
        assert!(!component_match("[a", "a"));
    }

    #[test]
    fn copy_file_dir_and_wildcard() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fs::write(src.path().join("a.txt"), "a").unwrap();
        fs::write(src.path().join("b.txt"), "b").unwrap();
        fs::create_dir(src.path().join("d")).unwrap();
        fs::write(src.path().join("d/x"), "x").unwrap();
        fs::set_permissions(src.path().join("d/x"), fs::Permissions::from_mode(0o750)).unwrap();
        let owner = Owner::Set { uid: 0, gid: 0 };

        let s = expand_sources(src.path(), &["a.txt".into()], None).unwrap();
        copy(
            &s,
            None,
            Filter::default(),
            dst.path(),
            "/out/renamed",
            owner,
            None,
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(dst.path().join("out/renamed")).unwrap(),
            "a"
        );

        let s = expand_sources(src.path(), &["*.txt".into()], None).unwrap();
        assert_eq!(s.len(), 2);
        copy(&s, None, Filter::default(), dst.path(), "/w/", owner, None).unwrap();
        assert!(dst.path().join("w/a.txt").is_file() && dst.path().join("w/b.txt").is_file());

        let s = expand_sources(src.path(), &["d".into()], None).unwrap();
        copy(
            &s,
            None,
            Filter::default(),
            dst.path(),
            "/app/",
            owner,
            Some(&Chmod::Octal(0o600)),
        )
        .unwrap();
        let m = fs::metadata(dst.path().join("app/x")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o600);
        assert!(
            !dst.path().join("app/d").exists(),
            "a directory source copies its contents"
        );

        assert!(matches!(
            expand_sources(src.path(), &["missing".into()], None),
            Err(SourceError::NotFound { .. })
        ));
        // A wildcard that matches nothing selects nothing, as in BuildKit.
        assert!(
            expand_sources(src.path(), &["*.none".into()], None)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn excluded_files_are_invisible() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fs::write(src.path().join("keep"), "k").unwrap();
        fs::write(src.path().join("secret.log"), "s").unwrap();
        let m = Matcher::from_dockerignore("*.log\n").unwrap();
        let s = expand_sources(src.path(), &[".".into()], Some(&m)).unwrap();
        copy(
            &s,
            Some(&m),
            Filter::default(),
            dst.path(),
            "/",
            Owner::Set { uid: 0, gid: 0 },
            None,
        )
        .unwrap();
        assert!(dst.path().join("keep").exists());
        assert!(!dst.path().join("secret.log").exists());
        match expand_sources(src.path(), &["secret.log".into()], Some(&m)) {
            Err(e @ SourceError::NotFound { .. }) => assert_eq!(
                e.to_string(),
                "\"/secret.log\": not found (excluded by .dockerignore rule `*.log` (line 1))"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn copy_never_writes_through_a_symlink_out_of_the_root() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(src.path().join("f"), "f").unwrap();
        std::os::unix::fs::symlink(outside.path(), dst.path().join("evil")).unwrap();
        let s = expand_sources(src.path(), &["f".into()], None).unwrap();
        copy(
            &s,
            None,
            Filter::default(),
            dst.path(),
            "/evil/",
            Owner::Set { uid: 0, gid: 0 },
            None,
        )
        .unwrap();
        assert!(!outside.path().join("f").exists());
        assert!(
            dst.path()
                .join(outside.path().strip_prefix("/").unwrap())
                .join("f")
                .exists()
        );
    }

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let path = dir.path().join(f);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, f).unwrap();
        }
        dir
    }

    fn listing(root: &Path) -> Vec<String> {
        fn visit(dir: &Path, prefix: &str, out: &mut Vec<String>) {
            let mut names: Vec<_> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for name in names {
                let rel = format!("{prefix}{}", name.to_string_lossy());
                let path = dir.join(&name);
                if path.is_dir() {
                    out.push(format!("{rel}/"));
                    visit(&path, &format!("{rel}/"), out);
                } else {
                    out.push(rel);
                }
            }
        }
        let mut out = Vec::new();
        visit(root, "", &mut out);
        out
    }

    fn copy_with(
        src: &Path,
        sources: &[&str],
        parents: bool,
        exclude: &[&str],
        dest: &str,
    ) -> Vec<String> {
        let dst = tempfile::tempdir().unwrap();
        let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        let exclude: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
        let exclude = (!exclude.is_empty()).then(|| Matcher::new(&exclude).unwrap());
        for g in select(src, &sources, parents, None).unwrap() {
            let filter = Filter {
                include: g.include.as_ref(),
                exclude: exclude.as_ref(),
            };
            let owner = Owner::Set { uid: 0, gid: 0 };
            copy(&g.sources, None, filter, dst.path(), dest, owner, None).unwrap();
        }
        listing(dst.path())
    }

    #[test]
    fn exclude_applies_below_each_source() {
        let src = tree(&[
            "dir1/a.png",
            "dir1/b.txt",
            "dir2/c.png",
            "dir2/sub/d.png",
            "top.png",
        ]);
        assert_eq!(
            copy_with(src.path(), &["."], false, &["*/*.png"], "/o/"),
            [
                "o/",
                "o/dir1/",
                "o/dir1/b.txt",
                "o/dir2/",
                "o/dir2/sub/",
                "o/dir2/sub/d.png",
                "o/top.png"
            ]
        );
        // Each wildcard match is a source of its own: patterns are relative to it.
        assert_eq!(
            copy_with(src.path(), &["dir*"], false, &["*.png"], "/o/"),
            ["o/", "o/b.txt", "o/sub/", "o/sub/d.png"]
        );
        assert_eq!(
            copy_with(src.path(), &["dir*"], false, &["*"], "/o/"),
            ["o/"]
        );
        // An exception reaches into an excluded directory, which is then created.
        assert_eq!(
            copy_with(src.path(), &["."], false, &["dir2", "!dir2/sub"], "/o/"),
            [
                "o/",
                "o/dir1/",
                "o/dir1/a.png",
                "o/dir1/b.txt",
                "o/dir2/",
                "o/dir2/sub/",
                "o/dir2/sub/d.png",
                "o/top.png"
            ]
        );
        // A named file source is never excluded itself.
        assert_eq!(
            copy_with(src.path(), &["top.png"], false, &["*.png"], "/o/"),
            ["o/", "o/top.png"]
        );
    }

    #[test]
    fn parents_keep_the_path_below_the_pivot() {
        let src = tree(&[
            "foo1/foo2/bar",
            "foo1/foo2/baz",
            "x/y/a.txt",
            "x/y/b.md",
            "src/a.txt",
            "src/x/b.txt",
            "src/x/y/c.txt",
            "src/x/y/d.md",
        ]);
        assert_eq!(
            copy_with(src.path(), &["foo1/foo2/bar"], true, &[], "/"),
            ["foo1/", "foo1/foo2/", "foo1/foo2/bar"]
        );
        assert_eq!(
            copy_with(src.path(), &["foo1/foo2/ba*"], true, &[], "/t/"),
            [
                "t/",
                "t/foo1/",
                "t/foo1/foo2/",
                "t/foo1/foo2/bar",
                "t/foo1/foo2/baz"
            ]
        );
        assert_eq!(
            copy_with(src.path(), &["./x/./y/*.txt"], true, &[], "/p/"),
            ["p/", "p/y/", "p/y/a.txt"]
        );
        assert_eq!(
            copy_with(src.path(), &["./src/**/*.txt"], true, &[], "/p/"),
            [
                "p/",
                "p/src/",
                "p/src/a.txt",
                "p/src/x/",
                "p/src/x/b.txt",
                "p/src/x/y/",
                "p/src/x/y/c.txt"
            ]
        );
        assert_eq!(
            copy_with(
                src.path(),
                &["x/./y", "foo*/./foo2/baz"],
                true,
                &["**/*.md"],
                "/p/"
            ),
            ["p/", "p/foo2/", "p/foo2/baz", "p/y/", "p/y/a.txt"]
        );
        assert!(matches!(
            select(src.path(), &["x/./nope".to_string()], true, None),
            Err(SourceError::NotFound { .. })
        ));
        // A wildcard that matches nothing copies nothing.
        assert_eq!(
            copy_with(src.path(), &["*/none*"], true, &[], "/p/"),
            ["p/"]
        );
    }

    #[test]
    fn symbolic_chmod_is_applied_per_file() {
        let src = tree(&["d/plain", "d/tool"]);
        fs::set_permissions(
            src.path().join("d/plain"),
            fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        fs::set_permissions(src.path().join("d/tool"), fs::Permissions::from_mode(0o700)).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let s = expand_sources(src.path(), &["d".into()], None).unwrap();
        let chmod = Chmod::parse("a+rX,go-w").unwrap();
        let owner = Owner::Set { uid: 0, gid: 0 };
        copy(
            &s,
            None,
            Filter::default(),
            dst.path(),
            "/out/",
            owner,
            Some(&chmod),
        )
        .unwrap();
        let mode = |p: &str| fs::metadata(dst.path().join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("out/plain"), 0o644);
        assert_eq!(mode("out/tool"), 0o755);
    }
}
