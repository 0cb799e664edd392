//! Hostile sources: links that point out of the root, and a source changed while it is walked.
//! Each case searches everything the copy wrote for a sentinel that lives outside the root.

use std::fs;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::*;

const SENTINEL: &str = "kiln-sentinel-outside-the-context";

/// `tmp/outside` holds the sentinel (as `secret`, `x` and `etc/shadow`); `tmp/ctx` is the root.
struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("outside");
        fs::create_dir_all(out.join("etc")).unwrap();
        for f in ["secret", "x", "etc/shadow"] {
            fs::write(out.join(f), SENTINEL).unwrap();
        }
        fs::create_dir_all(tmp.path().join("ctx/sub")).unwrap();
        fs::write(tmp.path().join("ctx/ok.txt"), "fine").unwrap();
        Fixture { tmp }
    }

    fn ctx(&self) -> PathBuf {
        self.tmp.path().join("ctx")
    }

    fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }

    fn link(&self, target: impl AsRef<Path>, at: &str) {
        symlink(target, self.ctx().join(at)).unwrap();
    }
}

/// Every regular file below `dir` whose bytes hold the sentinel.
fn leaks(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                todo.push(p);
            } else if m.is_file()
                && fs::read_to_string(&p)
                    .unwrap_or_default()
                    .contains(SENTINEL)
            {
                found.push(p);
            }
        }
    }
    found
}

/// Copies `pattern` from the fixture's context into a fresh directory; what it wrote, or the
/// error.
fn copy_pattern(fx: &Fixture, pattern: &str) -> (tempfile::TempDir, Result<(), SourceError>) {
    let dst = tempfile::tempdir().unwrap();
    let owner = Owner::Set { uid: 0, gid: 0 };
    let result = expand_sources(&fx.ctx(), &[pattern.to_string()], None).and_then(|s| {
        copy(
            &s,
            None,
            Filter::default(),
            dst.path(),
            "/out/",
            owner,
            None,
        )
    });
    (dst, result)
}

#[test]
fn no_pattern_reads_through_a_link_out_of_the_root() {
    let fx = Fixture::new();
    let out = fx.outside();
    fx.link(out.join("secret"), "link"); // absolute, to a file
    fx.link(&out, "etc"); // absolute, to a directory
    fx.link("../..", "up"); // climbing
    fx.link("../outside/secret", "rel"); // relative, one level out
    fx.link("../../outside/etc", "sub/et"); // from a subdirectory
    fx.link("inner", "outer"); // a link to a link that leaves
    fx.link("../outside", "inner");
    fs::create_dir(fx.ctx().join("viadir")).unwrap();
    fx.link("../up/outside", "viadir/out"); // a link through a link
    let patterns = [
        "lin*",
        "link",
        "l?nk",
        "[l]ink",
        "up*/secret",
        "up*/outside/secret",
        "up/outside/secret",
        "sub/et*",
        "sub/et*/shadow",
        "e*/secret",
        "e*",
        "etc/shadow",
        "re*",
        "out*",
        "out*/secret",
        "inn*/x",
        "viadir/*",
        "viadir/o*/secret",
        "*",
        "*/*",
        "*/*/*",
        ".",
    ];
    for pattern in patterns {
        let (dst, result) = copy_pattern(&fx, pattern);
        let found = leaks(dst.path());
        assert!(
            found.is_empty(),
            "`{pattern}` copied the outside file to {found:?}"
        );
        // The whole context still copies (its links as links).
        if pattern == "." {
            result.unwrap();
            assert_eq!(
                fs::read_to_string(dst.path().join("out/ok.txt")).unwrap(),
                "fine"
            );
        }
    }
}

#[test]
fn a_link_out_of_the_root_resolves_inside_it() {
    // The link is followed as inside a chroot: `etc -> /etc-like dir` names the root's `etc`
    // when it has one, so a context that carries its own target gets that, never the host's.
    let fx = Fixture::new();
    fx.link(fx.outside().join("secret"), "link");
    let inside = fx.ctx().join(fx.outside().strip_prefix("/").unwrap());
    fs::create_dir_all(&inside).unwrap();
    fs::write(inside.join("secret"), "the context's own").unwrap();
    let (dst, result) = copy_pattern(&fx, "lin*");
    result.unwrap();
    assert_eq!(
        fs::read_to_string(dst.path().join("out/link")).unwrap(),
        "the context's own"
    );
    // A link whose target is missing inside the root is missing, as a literal path is.
    fs::remove_file(inside.join("secret")).unwrap();
    let (_, result) = copy_pattern(&fx, "lin*");
    assert!(
        matches!(result, Err(SourceError::NotFound { .. })),
        "{result:?}"
    );
    let (_, literal) = copy_pattern(&fx, "link");
    assert!(
        matches!(literal, Err(SourceError::NotFound { .. })),
        "{literal:?}"
    );
}

/// Walks `.` of the fixture's context, calling `swap` once on the entry named `at` before the
/// walk opens it; returns the error and every byte the walk read.
fn walk_with_swap(fx: &Fixture, at: &str, swap: &dyn Fn(&Path)) -> (String, Option<String>) {
    let sources = expand_sources(&fx.ctx(), &[".".into()], None).unwrap();
    let mut read = String::new();
    let result = walk(&sources, None, Filter::default(), &mut |e| {
        if e.rel == at {
            swap(&fx.ctx().join(at));
        }
        if e.meta.is_file() {
            e.open()?.read_to_string(&mut read)?;
        } else if e.meta.file_type().is_symlink() {
            read.push_str(&e.read_link()?.to_string_lossy());
        }
        Ok(())
    });
    (
        read,
        result.err().map(|e| format!("{:#}", anyhow_chain(&e))),
    )
}

fn anyhow_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[test]
fn a_file_swapped_for_a_link_between_stat_and_open_is_refused() {
    let fx = Fixture::new();
    fs::write(fx.ctx().join("f"), "mine").unwrap();
    let outside = fx.outside().join("secret");
    let (read, err) = walk_with_swap(&fx, "f", &|p| {
        fs::remove_file(p).unwrap();
        symlink(&outside, p).unwrap();
    });
    assert!(!read.contains(SENTINEL), "read the outside file");
    assert!(err.is_some(), "the swapped file was read without an error");
}

#[test]
fn a_file_replaced_by_another_between_stat_and_open_is_refused() {
    let fx = Fixture::new();
    fs::write(fx.ctx().join("f"), "mine").unwrap();
    // A hard link to the outside file, renamed over the one the walk met (same filesystem).
    let hard = fx.ctx().join("sub/hard");
    fs::hard_link(fx.outside().join("secret"), &hard).unwrap();
    let (read, err) = walk_with_swap(&fx, "f", &|p| fs::rename(&hard, p).unwrap());
    assert!(!read.contains(SENTINEL));
    assert!(err.unwrap().contains("was replaced"));
}

#[test]
fn a_directory_swapped_for_a_link_before_it_is_listed_is_refused() {
    let fx = Fixture::new();
    fs::create_dir(fx.ctx().join("d")).unwrap();
    fs::write(fx.ctx().join("d/x"), "mine").unwrap();
    let outside = fx.outside();
    let (read, err) = walk_with_swap(&fx, "d", &|p| {
        fs::rename(p, p.with_file_name("d.old")).unwrap();
        symlink(&outside, p).unwrap();
    });
    assert!(
        !read.contains(SENTINEL),
        "listed and read the outside directory"
    );
    assert!(err.is_some());
}

#[test]
fn a_source_swapped_after_it_was_selected_is_refused() {
    let fx = Fixture::new();
    fs::create_dir(fx.ctx().join("d")).unwrap();
    fs::write(fx.ctx().join("d/x"), "mine").unwrap();
    for pattern in ["d", "d*"] {
        let sources = expand_sources(&fx.ctx(), &[pattern.into()], None).unwrap();
        let d = fx.ctx().join("d");
        fs::rename(&d, fx.ctx().join("d.old")).unwrap();
        symlink(fx.outside(), &d).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let owner = Owner::Set { uid: 0, gid: 0 };
        let result = copy(
            &sources,
            None,
            Filter::default(),
            dst.path(),
            "/o/",
            owner,
            None,
        );
        assert!(
            result.is_err(),
            "`{pattern}`: the swapped source was copied"
        );
        assert!(leaks(dst.path()).is_empty());
        fs::remove_file(&d).unwrap();
        fs::rename(fx.ctx().join("d.old"), &d).unwrap();
    }
}

#[test]
fn parents_and_exclude_stay_inside_the_root() {
    let fx = Fixture::new();
    fx.link(fx.outside(), "etc");
    fx.link("../..", "up");
    let owner = Owner::Set { uid: 0, gid: 0 };
    let exclude = kiln_ignore::Matcher::new(&["*.txt".to_string()]).unwrap();
    for (sources, parents) in [
        (vec!["./e*/secret".to_string()], true),
        (vec!["up/./outside/secret".to_string()], true),
        (vec!["./*/*".to_string()], true),
        (vec!["e*".to_string()], false),
    ] {
        let dst = tempfile::tempdir().unwrap();
        if let Ok(groups) = select(&fx.ctx(), &sources, parents, None) {
            for g in &groups {
                let filter = Filter {
                    include: g.include.as_ref(),
                    exclude: Some(&exclude),
                };
                let _ = copy(&g.sources, None, filter, dst.path(), "/o/", owner, None);
            }
        }
        assert!(leaks(dst.path()).is_empty(), "{sources:?} leaked");
    }
}

#[test]
fn wildcards_descend_into_directories_but_not_through_links() {
    // As BuildKit: the part before the first wildcard follows links (inside the root), the
    // pattern itself matches only what is really below, and a match that is a link is followed.
    let fx = Fixture::new();
    fs::write(fx.ctx().join("sub/keep"), "kept").unwrap();
    fx.link("/sub", "indir");
    let rels = |pattern: &str| -> Vec<String> {
        match expand_sources(&fx.ctx(), &[pattern.to_string()], None) {
            Ok(s) => s.into_iter().map(|s| s.rel).collect(),
            Err(e) => vec![format!("error: {e}")],
        }
    };
    assert_eq!(rels("indir/*"), ["indir/keep"]);
    assert_eq!(rels("indir/kee?"), ["indir/keep"]);
    assert_eq!(rels("ind*"), ["indir"]);
    assert_eq!(rels("s*/keep"), ["sub/keep"]);
    assert!(rels("i*/kee?").is_empty());
    let (dst, result) = copy_pattern(&fx, "ind*");
    result.unwrap();
    assert_eq!(
        fs::read_to_string(dst.path().join("out/keep")).unwrap(),
        "kept"
    );
}
