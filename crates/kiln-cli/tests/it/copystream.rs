//! COPY from the context streamed into a layer blob (kiln-worker's copystream.rs) against the
//! file-based COPY (`copy-stream = false` in kiln.toml): for each case the COPY's layer, once
//! unpacked, must hold the same entries with the same types, modes, owners, sizes, contents,
//! symlink targets and mtimes, and a later RUN must see the same files. The streamed layer is not
//! unpacked until a step needs it.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::support::Kiln;

/// One entry of an unpacked layer dir.
#[derive(Debug, PartialEq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    content: Vec<u8>,
    link: Option<PathBuf>,
    /// None where the build's own time is expected (directories COPY creates or writes into).
    mtime: Option<i64>,
}

fn tree(dir: &Path, skip_mtime: &[&str]) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    walk(dir, "", skip_mtime, &mut out);
    out
}

fn walk(dir: &Path, rel: &str, skip_mtime: &[&str], out: &mut BTreeMap<String, Entry>) {
    let mut names: Vec<_> = std::fs::read_dir(dir.join(rel))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let r = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let p = dir.join(&r);
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else {
            "other"
        };
        let content = if ft.is_file() {
            std::fs::read(&p).unwrap()
        } else {
            Vec::new()
        };
        let dir_of_dest = ft.is_dir() && skip_mtime.contains(&r.as_str());
        out.insert(
            r.clone(),
            Entry {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                size: if ft.is_file() { m.len() } else { 0 },
                content,
                link: ft.is_symlink().then(|| std::fs::read_link(&p).unwrap()),
                mtime: (!dir_of_dest).then(|| m.mtime()),
            },
        );
        if ft.is_dir() {
            walk(dir, &r, skip_mtime, out);
        }
    }
}

/// A kiln whose COPY from the context creates files (`copy-stream = false`).
fn file_based(test: &str) -> Option<Kiln> {
    let k = Kiln::new(test)?;
    let config = std::fs::read_to_string(&k.config).unwrap();
    // A top-level key must come before the file's tables.
    std::fs::write(&k.config, format!("copy-stream = false\n{config}")).unwrap();
    Some(k)
}

fn diff_ids(k: &Kiln, tag: &str) -> Vec<String> {
    let out = k.kiln(&["inspect", tag]).ok().stdout;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["RootFS"]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d.as_str()
                .unwrap()
                .trim_start_matches("sha256:")
                .to_string()
        })
        .collect()
}

/// A context with files, a nested tree, a symlink, an executable, odd modes and fixed mtimes.
fn write_context(dir: &Path) {
    crate::support::write_files(
        dir,
        &[
            ("a.txt", "a\n"),
            ("b.txt", "bb\n"),
            ("group", "root:x:0:\nstaff:x:50:\n"),
            ("ignored.tmp", "no\n"),
            ("d/x.sh", "#!/bin/sh\necho x\n"),
            ("d/sub/deep/file", "deep\n"),
            ("d/sub/keep.log", "log\n"),
            ("d/z.txt", "z\n"),
            ("etc/copied.conf", "conf\n"),
            ("src/a/b.txt", "parents\n"),
            ("src/a/c.md", "not selected\n"),
            (".dockerignore", "*.tmp\n"),
        ],
    );
    let set = |p: &str, mode: u32| {
        std::fs::set_permissions(dir.join(p), std::fs::Permissions::from_mode(mode)).unwrap()
    };
    set("d/x.sh", 0o755);
    set("b.txt", 0o600);
    set("d/sub", 0o750);
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    std::fs::create_dir_all(dir.join("home")).unwrap();
    std::os::unix::fs::symlink("sub/deep/file", dir.join("d/link")).unwrap();
    std::os::unix::fs::symlink("/nowhere", dir.join("d/dangling")).unwrap();
    // Fixed times, so the two builds' sources are alike to the second.
    let status = std::process::Command::new("find")
        .arg(dir)
        .args([
            "-mindepth",
            "1",
            "-exec",
            "touch",
            "-h",
            "-d",
            "@1600000000",
            "{}",
            "+",
        ])
        .status()
        .unwrap();
    assert!(status.success());
}

struct Case {
    name: &'static str,
    /// The stage's Dockerfile lines after FROM.
    base: &'static str,
    copy: &'static str,
    /// Layer directories whose mtime is the build's (made or written into by the COPY).
    dest_dirs: &'static [&'static str],
    /// Whether the stream must give way to the file-based copy.
    falls_back: bool,
    /// What the RUN after the COPY lists (in the stage's root, or below /case for scratch).
    list: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "whole-context",
        base: "busybox",
        copy: "COPY . /app",
        dest_dirs: &["app"],
        falls_back: false,
        list: "/app",
    },
    Case {
        name: "file-into-existing-dir-chown-chmod",
        base: "busybox",
        copy: "COPY --chown=1000:1000 --chmod=640 a.txt /etc/",
        dest_dirs: &["etc"],
        falls_back: false,
        list: "/etc",
    },
    Case {
        name: "file-to-file-path-new-parents",
        base: "busybox",
        copy: "COPY b.txt /usr/share/doc/new.txt",
        dest_dirs: &["usr", "usr/share", "usr/share/doc"],
        falls_back: false,
        list: "/usr",
    },
    Case {
        name: "dir-into-existing-dir-no-slash",
        base: "busybox",
        copy: "COPY --chown=nobody d /tmp",
        dest_dirs: &["tmp"],
        falls_back: false,
        list: "/tmp",
    },
    Case {
        name: "replace-lower-file",
        base: "busybox",
        copy: "COPY group /etc/group",
        dest_dirs: &["etc"],
        falls_back: false,
        list: "/etc",
    },
    Case {
        name: "wildcards-exclude-chmod-symbolic",
        base: "busybox",
        copy: "COPY --exclude=*.log --chmod=u+x,g-r *.txt d /w/",
        dest_dirs: &["w"],
        // A directory among several sources: /w takes `d`'s mtime after the files landed, an
        // order only the file-based copy follows.
        falls_back: true,
        list: "/w",
    },
    Case {
        name: "parents",
        base: "busybox",
        copy: "COPY --parents src/./a/*.txt /p/",
        // `a` is recreated by --parents: the build's time, as BuildKit gives it.
        dest_dirs: &["p", "p/a"],
        falls_back: false,
        list: "/p",
    },
    Case {
        name: "context-over-root-dirs",
        base: "busybox",
        copy: "COPY . /",
        dest_dirs: &[],
        falls_back: false,
        list: "/etc /home /d /src /empty /a.txt",
    },
    Case {
        name: "dest-through-symlink",
        base: "busybox\nRUN ln -s /tmp /linkdir",
        copy: "COPY a.txt /linkdir/",
        dest_dirs: &["tmp"],
        falls_back: true,
        list: "/tmp /linkdir",
    },
    Case {
        name: "scratch-whole-context",
        base: "scratch",
        // Owned apart from the busybox case's: a layer equal to one already unpacked would
        // share its dir.
        copy: "COPY --chown=1:2 . /",
        dest_dirs: &[],
        falls_back: false,
        list: ".",
    },
    Case {
        name: "scratch-file-deep",
        base: "scratch",
        copy: "COPY --chown=5:6 a.txt /x/y/",
        dest_dirs: &["x", "x/y"],
        falls_back: false,
        list: ".",
    },
];

/// Builds the case's stage and returns the COPY layer's dir (unpacked or not) and the listing
/// a RUN after it wrote.
fn build_case(k: &Kiln, ctx: &Path, case: &Case) -> (PathBuf, String) {
    let stat = format!(
        "find {} | sort | xargs stat -c '%n %f %u %g %s' > /listing",
        case.list
    );
    let check = if case.base == "scratch" {
        format!("FROM busybox\nCOPY --from=case / /case/\nRUN cd /case && {stat}")
    } else {
        format!("FROM case\nRUN {stat}")
    };
    let dockerfile = format!("FROM {}\n{}\n{check}\n", case.base, case.copy).replacen(
        &format!("FROM {}\n", case.base.lines().next().unwrap()),
        &format!("FROM {} AS case\n", case.base.lines().next().unwrap()),
        1,
    );
    let file = k.dir().join(format!("{}.Dockerfile", case.name));
    std::fs::write(&file, dockerfile).unwrap();
    let f = file.to_str().unwrap();
    let tag = k.unique(case.name);
    let run = k
        .build(ctx, &["-f", f, "--target", "case", "-t", &tag])
        .ok();
    let copy_layer = diff_ids(k, &tag).pop().unwrap();
    let dir = k.root.join("layers").join(&copy_layer);
    let stream_used = !k.config_text().contains("copy-stream = false") && !case.falls_back;
    assert_eq!(
        !dir.exists(),
        stream_used,
        "{}: the COPY layer should {}be unpacked after the build\n{}",
        case.name,
        if stream_used { "not " } else { "" },
        run.stderr
    );
    let check_tag = k.unique(case.name);
    k.build(ctx, &["-f", f, "-t", &check_tag]).ok();
    assert!(
        dir.is_dir(),
        "{}: the RUN after it unpacked the layer",
        case.name
    );
    let run_layer = diff_ids(k, &check_tag).pop().unwrap();
    let listing =
        std::fs::read_to_string(k.root.join("layers").join(run_layer).join("listing")).unwrap();
    (dir, listing)
}

trait ConfigText {
    fn config_text(&self) -> String;
}

impl ConfigText for Kiln {
    fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config).unwrap()
    }
}

#[test]
fn streamed_copy_layers_equal_file_based_ones() {
    let Some(stream) = Kiln::new("streamed_copy_layers_equal_file_based_ones") else {
        return;
    };
    let Some(files) = file_based("streamed_copy_layers_equal_file_based_ones (files)") else {
        return;
    };
    let ctx = stream.dir().join("ctx");
    write_context(&ctx);
    for case in CASES {
        let (s_dir, s_listing) = build_case(&stream, &ctx, case);
        let (f_dir, f_listing) = build_case(&files, &ctx, case);
        let (s, f) = (tree(&s_dir, case.dest_dirs), tree(&f_dir, case.dest_dirs));
        assert!(!s.is_empty(), "{}: empty layer", case.name);
        for (path, e) in &f {
            assert_eq!(s.get(path), Some(e), "{}: `{path}` differs", case.name);
        }
        assert_eq!(
            s.keys().collect::<Vec<_>>(),
            f.keys().collect::<Vec<_>>(),
            "{}: the layers list other paths",
            case.name
        );
        assert!(!s_listing.is_empty(), "{}: the RUN saw nothing", case.name);
        assert_eq!(
            s_listing, f_listing,
            "{}: the RUN saw other files",
            case.name
        );
    }
    stream.assert_clean();
    files.assert_clean();
}

#[test]
fn streamed_copy_of_an_empty_dir_into_an_existing_one_adds_the_empty_layer() {
    let Some(k) =
        Kiln::new("streamed_copy_of_an_empty_dir_into_an_existing_one_adds_the_empty_layer")
    else {
        return;
    };
    let ctx = k.dir().join("ctx");
    std::fs::create_dir_all(ctx.join("empty")).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nCOPY empty /tmp/\n").unwrap();
    let base = k.unique("base");
    std::fs::write(ctx.join("Base.Dockerfile"), "FROM busybox\n").unwrap();
    let base_file = ctx.join("Base.Dockerfile");
    k.build(&ctx, &["-f", base_file.to_str().unwrap(), "-t", &base])
        .ok();
    let tag = k.unique("empty");
    k.build(&ctx, &["-t", &tag]).ok();
    // Nothing changed, and BuildKit v0.32.2 still exports the step as a layer: the empty tar.
    let mut expected = diff_ids(&k, &base);
    expected.push(EMPTY_TAR.to_string());
    assert_eq!(diff_ids(&k, &tag), expected);
}

/// The sha256 of a tar of nothing (1024 zero bytes).
const EMPTY_TAR: &str = "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

#[test]
fn streamed_copy_rebuilds_an_edited_file_and_runs_on_it() {
    let Some(k) = Kiln::new("streamed_copy_rebuilds_an_edited_file_and_runs_on_it") else {
        return;
    };
    let mut files: Vec<(String, String)> = (0..50)
        .map(|i| (format!("src/d{}/f{i}.txt", i % 5), format!("file {i}\n")))
        .collect();
    files.push(("app.txt".into(), "app v0\n".into()));
    files.push(("Dockerfile".into(), "FROM busybox\nCOPY . /app\n".into()));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let ctx = k.context("ctx", &refs);
    let tag = k.unique("edit");
    k.build(&ctx, &["-t", &tag]).ok();
    let first = diff_ids(&k, &tag).pop().unwrap();
    assert!(!k.root.join("layers").join(&first).exists());
    // `kiln run` unpacks the layer it needs.
    let out = k
        .kiln(&[
            "run",
            "--rm",
            &tag,
            "cat",
            "/app/app.txt",
            "/app/src/d3/f13.txt",
        ])
        .ok();
    assert_eq!(out.stdout, "app v0\nfile 13\n");

    std::fs::write(ctx.join("app.txt"), "app v1, longer\n").unwrap();
    let run = k.build(&ctx, &["-t", &tag]).ok();
    assert!(
        run.progress()
            .rebuilt()
            .iter()
            .any(|s| s.contains("COPY . /app")),
        "the edit must rebuild the COPY\n{}",
        run.stderr
    );
    let second = diff_ids(&k, &tag).pop().unwrap();
    assert_ne!(first, second);
    let out = k
        .kiln(&[
            "run",
            "--rm",
            &tag,
            "sh",
            "-c",
            "cat /app/app.txt; find /app -type f | wc -l",
        ])
        .ok();
    assert_eq!(out.stdout, "app v1, longer\n52\n");
    k.assert_clean();
}
