//! Issue 15: a tarball as the build context, on stdin (`kiln build - < ctx.tar[.gz|…]`) or at
//! a URL (`kiln build http://…/ctx.tar.gz`), a URL of a plain-text Dockerfile as the context or
//! as `-f`, and a corpus of hostile context tarballs. URLs are served on loopback by
//! `kiln_test::HttpServer`. Expected file lists and errors were recorded from BuildKit v0.32.2
//! (buildx v0.36.1) on the same inputs; where kiln deviates on purpose the case says so
//! (docs/decisions.md).

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use kiln_test::{Delivery, HttpServer, Route};

use crate::support::{Kiln, Run};

/// `kiln build --progress plain ARGS...` with `stdin` piped in.
fn build_stdin(k: &Kiln, args: &[&str], stdin: &[u8]) -> Run {
    let mut all = vec!["build", "--progress", "plain"];
    all.extend_from_slice(args);
    let mut cmd = k.command(&all);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("running kiln");
    let mut pipe = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    // kiln may stop reading early (an error): a broken pipe here is not the test's concern.
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&data);
    });
    let out = child.wait_with_output().expect("waiting for kiln");
    writer.join().unwrap();
    Run {
        args: all.iter().map(|s| s.to_string()).collect(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[derive(Clone, Copy)]
enum E<'a> {
    File(&'a str, &'a str),
    Dir(&'a str),
    Sym(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Char(&'a str, u32, u32),
    Block(&'a str, u32, u32),
    Fifo(&'a str),
}

/// A tar of `entries` with their names written raw (the tar crate's setters refuse `..` and
/// absolute names), all owned by root, modes 0644/0755, mtime 0.
fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(0);
        let (name, link, data): (&str, &str, &[u8]) = match *e {
            E::File(n, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                (n, "", d.as_bytes())
            }
            E::Dir(n) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (n, "", b"")
            }
            E::Sym(n, l) => {
                h.set_entry_type(tar::EntryType::Symlink);
                (n, l, b"")
            }
            E::Hard(n, l) => {
                h.set_entry_type(tar::EntryType::Link);
                (n, l, b"")
            }
            E::Char(n, ma, mi) | E::Block(n, ma, mi) => {
                h.set_entry_type(if matches!(e, E::Char(..)) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                h.set_device_major(ma).unwrap();
                h.set_device_minor(mi).unwrap();
                (n, "", b"")
            }
            E::Fifo(n) => {
                h.set_entry_type(tar::EntryType::Fifo);
                (n, "", b"")
            }
        };
        h.set_size(data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// The entries of an exported tar as `KIND path[ -> target]` (`f` file, `d` dir, `l` symlink,
/// `h` hardlink, `c`/`b` devices, `p` fifo), sorted, without the leading `./` or trailing `/`.
fn listing(path: &Path) -> Vec<String> {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut out: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let name = name
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_string();
            let link = e
                .link_name()
                .unwrap()
                .map(|l| format!(" -> {}", l.to_string_lossy()))
                .unwrap_or_default();
            let kind = match e.header().entry_type() {
                tar::EntryType::Regular => "f",
                tar::EntryType::Directory => "d",
                tar::EntryType::Symlink => "l",
                tar::EntryType::Link => "h",
                tar::EntryType::Char => "c",
                tar::EntryType::Block => "b",
                tar::EntryType::Fifo => "p",
                _ => "?",
            };
            format!("{kind} {name}{link}")
        })
        .filter(|l| l != "d ")
        .collect();
    out.sort();
    out
}

const COPY_ALL: &str = "FROM scratch\nCOPY . /ctx/\n";

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Compresses `data` with the host's `tool` (bzip2, xz, zstd), or `None` when it is missing.
fn compress_with(tool: &str, data: &[u8]) -> Option<Vec<u8>> {
    kiln_test::find_program(tool)?;
    let mut child = std::process::Command::new(tool)
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let t = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().ok()?;
    t.join().unwrap().ok()?;
    out.status.success().then_some(out.stdout)
}

/// A context with a sub-Dockerfile, a `.dockerignore` and nested files (the oracle's
/// `mixed.tar`).
fn mixed() -> Vec<u8> {
    tar_of(&[
        E::File("Dockerfile", COPY_ALL),
        E::Dir("sub/"),
        E::File("sub/Dockerfile", "FROM scratch\nCOPY app/ /app/\n"),
        E::Dir("app/"),
        E::File("app/run.sh", "#!/bin/sh\necho hi\n"),
        E::File("app/data.txt", "data\n"),
        E::File("ignored.log", "log\n"),
        E::File(".dockerignore", "*.log\n"),
    ])
}

/// What BuildKit exports for `mixed.tar` built with its own Dockerfile: the `.dockerignore`
/// of a tarball context excludes nothing.
const MIXED_ALL: &[&str] = &[
    "d ctx",
    "d ctx/app",
    "d ctx/sub",
    "f ctx/.dockerignore",
    "f ctx/Dockerfile",
    "f ctx/app/data.txt",
    "f ctx/app/run.sh",
    "f ctx/ignored.log",
    "f ctx/sub/Dockerfile",
];
/// ... and with `-f sub/Dockerfile`.
const MIXED_SUB: &[&str] = &["d app", "f app/data.txt", "f app/run.sh"];
/// `kiln build URL` of a text Dockerfile (`COPY . /x/`): the context holds it as `context`.
const URL_DOCKERFILE: &[&str] = &["d x", "f x/context"];
/// `-f URL` (the same Dockerfile) with a local context holding `hello.txt`.
const URL_F: &[&str] = &["d x", "f x/hello.txt"];

#[test]
fn issue_15_stdin_context_tarball_in_every_compression() {
    let Some(k) = Kiln::new("issue_15_stdin_context_tarball_in_every_compression") else {
        return;
    };
    let tar = mixed();
    let mut inputs = vec![("tar", tar.clone()), ("gz", gzip(&tar))];
    for tool in ["bzip2", "xz", "zstd"] {
        match compress_with(tool, &tar) {
            Some(bytes) => inputs.push((tool, bytes)),
            None if kiln_test::externals_required() => panic!("`{tool}` is not installed"),
            None => eprintln!("skipping the {tool} case: `{tool}` is not installed"),
        }
    }
    for (what, bytes) in inputs {
        let dest = k.dir().join(format!("out-{what}.tar"));
        let out = format!("type=tar,dest={}", dest.display());
        build_stdin(&k, &["--output", &out, "-"], &bytes).ok();
        assert_eq!(listing(&dest), MIXED_ALL, "{what}");
    }
    // `-f` names a Dockerfile inside the archive.
    let dest = k.dir().join("out-f.tar");
    let out = format!("type=tar,dest={}", dest.display());
    build_stdin(&k, &["-f", "sub/Dockerfile", "--output", &out, "-"], &tar).ok();
    assert_eq!(listing(&dest), MIXED_SUB);
    let run = build_stdin(&k, &["-f", "nope/Dockerfile", "-"], &tar).failed();
    assert!(run.stderr.contains("nope/Dockerfile"), "{}", run.stderr);
    // Nothing of the unpacked contexts is left in the data dir.
    let left: Vec<_> = std::fs::read_dir(k.root.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("tar-context-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    k.assert_clean();
}

#[test]
fn issue_15_stdin_that_is_neither_archive_nor_dockerfile_is_refused() {
    let Some(k) = Kiln::new("issue_15_stdin_that_is_neither_archive_nor_dockerfile_is_refused")
    else {
        return;
    };
    let run = build_stdin(&k, &["-"], &[0xff, 0xfe, 0x00, 0x80, 0x81]).failed();
    assert!(
        run.stderr
            .contains("`kiln build -`: stdin is neither a tar archive nor a Dockerfile"),
        "{}",
        run.stderr
    );
    // A gzip stream cut short fails naming stdin.
    let gz = gzip(&mixed());
    let run = build_stdin(&k, &["-"], &gz[..gz.len() / 2]).failed();
    assert!(
        run.stderr
            .contains("failed to unpack the build context from stdin"),
        "{}",
        run.stderr
    );
    k.assert_clean();
}

/// Where a corpus case's hostile entries would land if they escaped: names no build makes.
const ESCAPE: &str = "kiln-escape-5c1f";

struct Hostile {
    name: &'static str,
    entries: &'static [E<'static>],
    /// BuildKit's export (`Ok`), or the entry kiln refuses and why (`Err`; BuildKit fails too
    /// unless `deviates` says what it does instead).
    expect: Result<&'static [&'static str], &'static str>,
    deviates: Option<&'static str>,
}

const REFUSED: &str = "failed to unpack the build context from stdin";

/// 21 cases: 18 recorded with the oracle as written, 3 more after it (marked).
const HOSTILE: &[Hostile] = &[
    Hostile {
        name: "dotdot",
        entries: &[E::File("../kiln-escape-5c1f", "x")],
        expect: Ok(&["d ctx", "f ctx/Dockerfile", "f ctx/kiln-escape-5c1f"]),
        deviates: None,
    },
    Hostile {
        name: "dotdot-inner",
        entries: &[E::File("a/../../kiln-escape-5c1f", "x")],
        expect: Ok(&["d ctx", "f ctx/Dockerfile", "f ctx/kiln-escape-5c1f"]),
        deviates: None,
    },
    Hostile {
        name: "absolute",
        entries: &[E::File("/tmp/kiln-escape-5c1f", "x")],
        expect: Ok(&[
            "d ctx",
            "d ctx/tmp",
            "f ctx/Dockerfile",
            "f ctx/tmp/kiln-escape-5c1f",
        ]),
        deviates: None,
    },
    Hostile {
        name: "dotslash",
        entries: &[E::File("./a/./b", "x")],
        expect: Ok(&["d ctx", "d ctx/a", "f ctx/Dockerfile", "f ctx/a/b"]),
        deviates: None,
    },
    Hostile {
        name: "write-through-relative-symlink-out",
        entries: &[
            E::Sym("link", "../../../../tmp"),
            E::File("link/kiln-escape-5c1f", "x"),
        ],
        expect: Err("`link/kiln-escape-5c1f`: a parent in its path is not a directory"),
        deviates: None,
    },
    Hostile {
        name: "write-through-absolute-symlink",
        entries: &[E::Sym("abs", "/tmp"), E::File("abs/kiln-escape-5c1f", "x")],
        expect: Err("`abs/kiln-escape-5c1f`: a parent in its path is not a directory"),
        deviates: None,
    },
    Hostile {
        name: "write-through-symlink-chain",
        entries: &[
            E::Sym("l1", "l2"),
            E::Sym("l2", ".."),
            E::File("l1/kiln-escape-5c1f", "x"),
        ],
        expect: Err("`l1/kiln-escape-5c1f`: a parent in its path is not a directory"),
        deviates: Some(
            "BuildKit resolves the chain inside the context (`l1/x` lands at `x`); kiln never \
             writes through a symlink",
        ),
    },
    Hostile {
        name: "write-through-symlink-replacing-dir",
        entries: &[
            E::Dir("d/"),
            E::Sym("d", "/tmp"),
            E::File("d/kiln-escape-5c1f", "x"),
        ],
        expect: Err("`d/kiln-escape-5c1f`: a parent in its path is not a directory"),
        deviates: None,
    },
    Hostile {
        // After the oracle run: a directory entry replaces the symlink first.
        name: "dir-replacing-symlink",
        entries: &[E::Sym("d", "/tmp"), E::Dir("d/"), E::File("d/y", "y")],
        expect: Ok(&["d ctx", "d ctx/d", "f ctx/Dockerfile", "f ctx/d/y"]),
        deviates: None,
    },
    Hostile {
        name: "relative-symlink-out-kept",
        entries: &[E::Sym("out", "../../../../etc/passwd")],
        expect: Ok(&[
            "d ctx",
            "f ctx/Dockerfile",
            "l ctx/out -> ../../../../etc/passwd",
        ]),
        deviates: None,
    },
    Hostile {
        name: "absolute-symlink-kept",
        entries: &[E::Sym("abs", "/etc/passwd")],
        expect: Ok(&["d ctx", "f ctx/Dockerfile", "l ctx/abs -> /etc/passwd"]),
        deviates: None,
    },
    Hostile {
        name: "hardlink-absolute",
        entries: &[E::Hard("h", "/etc/passwd")],
        expect: Err("`h`: hardlink target is not in the layer"),
        deviates: None,
    },
    Hostile {
        name: "hardlink-relative-out",
        entries: &[E::Hard("h", "../../../etc/passwd")],
        expect: Err("`h`: hardlink target is not in the layer"),
        deviates: None,
    },
    Hostile {
        name: "hardlink-missing",
        entries: &[E::Hard("h", "nothere")],
        expect: Err("`h`: hardlink target is not in the layer"),
        deviates: None,
    },
    Hostile {
        // After the oracle run.
        name: "hardlink-through-symlink",
        entries: &[E::Sym("s", "/etc"), E::Hard("h", "s/passwd")],
        expect: Err("`h`: a parent in its path is not a directory"),
        deviates: None,
    },
    Hostile {
        // After the oracle run: `..` in a target stays at the root.
        name: "hardlink-dotdot-inside",
        entries: &[E::File("f", "data"), E::Hard("h", "../f")],
        expect: Ok(&["d ctx", "f ctx/Dockerfile", "f ctx/f", "h ctx/h -> ctx/f"]),
        deviates: None,
    },
    Hostile {
        name: "hardlink-to-symlink-out",
        entries: &[E::Sym("s", "/etc/passwd"), E::Hard("h", "s")],
        expect: Ok(&[
            "d ctx",
            "f ctx/Dockerfile",
            "l ctx/h -> /etc/passwd",
            "l ctx/s -> /etc/passwd",
        ]),
        deviates: None,
    },
    Hostile {
        name: "hardlink-inside",
        entries: &[E::File("f", "data"), E::Hard("h", "f")],
        expect: Ok(&["d ctx", "f ctx/Dockerfile", "f ctx/f", "h ctx/h -> ctx/f"]),
        deviates: None,
    },
    Hostile {
        name: "char-device",
        entries: &[E::Char("null2", 1, 3)],
        expect: Err("`null2`: a device node has no place in a build context"),
        deviates: Some("BuildKit creates the device node in the context and the image"),
    },
    Hostile {
        name: "block-device",
        entries: &[E::Block("sda9", 8, 9)],
        expect: Err("`sda9`: a device node has no place in a build context"),
        deviates: Some("BuildKit creates the device node in the context and the image"),
    },
    Hostile {
        name: "fifo",
        entries: &[E::Fifo("pipe")],
        expect: Ok(&["d ctx", "f ctx/Dockerfile", "p ctx/pipe"]),
        deviates: None,
    },
];

#[test]
fn issue_15_hostile_context_tarballs_never_reach_outside() {
    let Some(k) = Kiln::new("issue_15_hostile_context_tarballs_never_reach_outside") else {
        return;
    };
    let outside = [
        Path::new("/tmp").join(ESCAPE),
        Path::new("/etc").join(ESCAPE),
        k.root.join(ESCAPE),
        k.root.join("tmp").join(ESCAPE),
    ];
    for case in HOSTILE {
        let mut entries = vec![E::File("Dockerfile", COPY_ALL)];
        entries.extend_from_slice(case.entries);
        let dest = k.dir().join(format!("{}.tar", case.name));
        let out = format!("type=tar,dest={}", dest.display());
        let run = build_stdin(&k, &["--output", &out, "-"], &tar_of(&entries));
        match case.expect {
            Ok(list) => {
                let run = run.ok();
                assert_eq!(listing(&dest), list, "{}: {}", case.name, run.stderr);
            }
            Err(text) => {
                let run = run.failed();
                assert!(
                    run.stderr.contains(REFUSED) && run.stderr.contains(text),
                    "{}: expected {text:?} in:\n{}",
                    case.name,
                    run.stderr
                );
            }
        }
        for p in &outside {
            assert!(!p.exists(), "{}: `{}` was written", case.name, p.display());
        }
        if let Some(why) = case.deviates {
            eprintln!("{}: kiln deviates from BuildKit: {why}", case.name);
        }
    }
    k.assert_clean();
}

#[test]
fn issue_15_url_contexts_tarballs_dockerfiles_redirects_and_errors() {
    let Some(k) = Kiln::new("issue_15_url_contexts_tarballs_dockerfiles_redirects_and_errors")
    else {
        return;
    };
    let server = HttpServer::start().unwrap();
    let tgz = gzip(&mixed());
    server.route(
        "/ctx.tar.gz",
        Route::file(Some("application/gzip"), tgz.clone()),
    );
    // Servers often call a tarball octet-stream: the magic bytes decide.
    server.route(
        "/ctx",
        Route::file(Some("application/octet-stream"), tgz.clone()),
    );
    server.route("/moved", Route::redirect(302, "/again"));
    server.route("/again", Route::redirect(301, "/ctx.tar.gz"));
    server.route(
        "/slow.tar.gz",
        Route::file(None, tgz.clone()).delivered(Delivery::Slow {
            chunk: tgz.len() / 4 + 1,
            delay: Duration::from_millis(300),
        }),
    );
    server.route(
        "/cut.tar.gz",
        Route::file(None, tgz.clone()).delivered(Delivery::Truncated {
            after: tgz.len() / 2,
        }),
    );
    let dockerfile = "FROM scratch\nCOPY . /x/\n";
    server.route("/Dockerfile", Route::file(Some("text/plain"), dockerfile));
    server.route(
        "/error",
        Route::new(
            200,
            Some("text/html; charset=utf-8"),
            "<html><body>Oops</body></html>",
        ),
    );
    server.route(
        "/gone",
        Route::new(500, Some("text/html"), "<html>down</html>"),
    );

    let build = |url: &str, extra: &[&str]| {
        let dest = k.dir().join("out.tar");
        let _ = std::fs::remove_file(&dest);
        let out = format!("type=tar,dest={}", dest.display());
        let mut args = vec!["build", "--progress", "plain", "--output", &out];
        args.extend_from_slice(extra);
        args.push(url);
        (k.kiln(&args), dest)
    };
    for path in ["/ctx.tar.gz", "/ctx", "/moved", "/slow.tar.gz"] {
        let (run, dest) = build(&server.url(path), &[]);
        run.ok();
        assert_eq!(listing(&dest), MIXED_ALL, "{path}");
    }
    let (run, dest) = build(&server.url("/ctx.tar.gz"), &["-f", "sub/Dockerfile"]);
    run.ok();
    assert_eq!(listing(&dest), MIXED_SUB);
    // A text file is the Dockerfile, and BuildKit's context then holds it as `context`.
    let (run, dest) = build(&server.url("/Dockerfile"), &[]);
    run.ok();
    assert_eq!(listing(&dest), URL_DOCKERFILE);
    // `-f URL` with a local context.
    let ctx = k.context("local", &[("hello.txt", "hello\n")]);
    let (run, dest) = build(ctx.to_str().unwrap(), &["-f", &server.url("/Dockerfile")]);
    run.ok();
    assert_eq!(listing(&dest), URL_F);

    let cases = [
        ("/nothing.tar", "404 Not Found"),
        ("/gone", "500 Internal Server Error"),
        ("/error", "with an HTML page (text/html)"),
        ("/cut.tar.gz", "failed to read the remote context"),
    ];
    for (path, text) in cases {
        let url = server.url(path);
        let (run, _) = build(&url, &[]);
        let run = run.failed();
        assert!(
            run.stderr
                .contains(&format!("failed to read the remote context `{url}`"))
                || run.stderr.contains(&format!("`{url}`")),
            "{path}: the error names no URL:\n{}",
            run.stderr
        );
        assert!(
            run.stderr.contains(text),
            "{path}: expected {text:?} in:\n{}",
            run.stderr
        );
    }
    // The size cap, from the config file.
    let mut config = std::fs::read_to_string(&k.config).unwrap();
    config.insert_str(0, "remote-context-max-bytes = 100\n");
    std::fs::write(&k.config, config).unwrap();
    let (run, _) = build(&server.url("/ctx.tar.gz"), &[]);
    let run = run.failed();
    assert!(run.stderr.contains("larger than 100B"), "{}", run.stderr);
    // Redirects were followed: the server saw each hop.
    let hops: Vec<_> = server
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| ["/moved", "/again"].contains(&p.as_str()))
        .collect();
    assert_eq!(hops, ["/moved", "/again"]);
    let left: Vec<_> = std::fs::read_dir(k.root.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("url-context-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    k.assert_clean();
}

/// Only what the steps read is unpacked: an entry kiln refuses to unpack (a device node) is
/// harmless when no step reads it, and fails the build when one does.
#[test]
fn issue_15_only_what_the_steps_read_is_unpacked() {
    let Some(k) = Kiln::new("issue_15_only_what_the_steps_read_is_unpacked") else {
        return;
    };
    let with = |dockerfile: &str| {
        tar_of(&[
            E::File("Dockerfile", dockerfile),
            E::Dir("app/"),
            E::File("app/run.sh", "echo hi\n"),
            E::Dir("other/"),
            E::Char("other/null2", 1, 3),
            E::File("other/big", "not read"),
        ])
    };
    let dest = k.dir().join("one.tar");
    let out = format!("type=tar,dest={}", dest.display());
    let one = with("FROM scratch\nCOPY app/run.sh /x/\n");
    build_stdin(&k, &["--output", &out, "-"], &one).ok();
    assert_eq!(listing(&dest), ["d x", "f x/run.sh"]);
    // A wildcard at the root, or the whole context, reads everything.
    for dockerfile in ["FROM scratch\nCOPY ap* /x/\n", COPY_ALL] {
        let run = build_stdin(&k, &["-"], &with(dockerfile)).failed();
        assert!(
            run.stderr.contains("`other/null2`: a device node"),
            "{dockerfile}: {}",
            run.stderr
        );
    }
    k.assert_clean();
}

/// The spool of a build killed while reading its context from stdin goes at the next kiln
/// command that opens the data dir alone.
#[test]
fn issue_15_a_killed_build_leaves_nothing_after_the_next_command() {
    let Some(k) = Kiln::new("issue_15_a_killed_build_leaves_nothing_after_the_next_command") else {
        return;
    };
    let leftovers = || -> Vec<(String, u64)> {
        std::fs::read_dir(k.root.join("tmp"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        let size = e.metadata().map_or(0, |m| m.len());
                        (e.file_name().to_string_lossy().into_owned(), size)
                    })
                    .filter(|(n, _)| n.starts_with("tar-context-"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut child = k
        .command(&["build", "--progress", "plain", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_path("big").unwrap();
    header.set_size(1 << 30);
    header.set_mode(0o644);
    header.set_cksum();
    stdin.write_all(header.as_bytes()).unwrap();
    let chunk = vec![0x5au8; 256 * 1024];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut spooled = false;
    while std::time::Instant::now() < deadline && stdin.write_all(&chunk).is_ok() {
        if leftovers()
            .iter()
            .any(|(n, size)| n.ends_with(".tar") && *size >= 1 << 20)
        {
            spooled = true;
            break;
        }
    }
    assert!(spooled, "no spool file grew under tmp/: {:?}", leftovers());
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    assert!(!leftovers().is_empty());
    // Any command opening the engine alone clears tmp/.
    let ctx = k.context("next", &[("Dockerfile", "FROM scratch\n")]);
    k.build(&ctx, &[]).ok();
    assert_eq!(leftovers(), []);
    k.assert_clean();
}

#[test]
fn issue_15_check_and_call_with_archive_or_url_contexts_are_not_supported_yet() {
    let Some(k) =
        Kiln::new("issue_15_check_and_call_with_archive_or_url_contexts_are_not_supported_yet")
    else {
        return;
    };
    let run = build_stdin(&k, &["--check", "-"], &mixed()).failed();
    assert!(
        run.stderr.contains(
            "`--check` and `--call` with a context archive on stdin are not supported yet"
        ),
        "{}",
        run.stderr
    );
    let server = HttpServer::start().unwrap();
    server.route("/Dockerfile", Route::file(Some("text/plain"), COPY_ALL));
    let url = server.url("/Dockerfile");
    let ctx = k.context("local", &[("a", "a")]);
    for args in [
        vec!["build", "--call", "targets", &url],
        vec!["build", "--check", "-f", &url, ctx.to_str().unwrap()],
    ] {
        let run = k.kiln(&args).failed();
        assert!(
            run.stderr.contains(
                "`--check` and `--call` with a URL context or Dockerfile are not supported yet"
            ),
            "{args:?}: {}",
            run.stderr
        );
    }
    assert!(server.requests().is_empty(), "nothing is fetched");
}
