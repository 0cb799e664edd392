//! Git sources: `ADD <git url>` and a Git URL as the build context, against repositories made
//! with `git init` and served by `git daemon` on loopback.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::support::{Kiln, find_program, read_tar, skip_because};

/// Runs the host's git in `dir` with a fixed identity and no user or system config.
pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "kiln test")
        .env("GIT_AUTHOR_EMAIL", "test@kiln.invalid")
        .env("GIT_COMMITTER_NAME", "kiln test")
        .env("GIT_COMMITTER_EMAIL", "test@kiln.invalid")
        // Submodules are added over git://, which newer git allows by default; be explicit.
        .env("GIT_ALLOW_PROTOCOL", "git:file")
        .output()
        .expect("running git");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `git daemon` exporting every repository under `base`; killed on drop.
pub(crate) struct GitServer {
    base: PathBuf,
    port: u16,
    child: Child,
}

impl GitServer {
    pub(crate) fn start(test: &str, base: PathBuf) -> Option<GitServer> {
        if find_program("git").is_none() {
            skip_because(test, "git is not installed");
            return None;
        }
        std::fs::create_dir_all(&base).unwrap();
        // A port the kernel just handed out is free unless something takes it in between.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // The daemon binary itself: `git daemon` would run it as a child that outlives a kill.
        let exec_path = git(&base, &["--exec-path"]);
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .arg("--export-all")
            .arg("--reuseaddr")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(&base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting git daemon");
        let server = GitServer { base, port, child };
        // Readiness: the daemon answers once it listens.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("git daemon did not listen on port {port}");
    }

    pub(crate) fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }

    /// A repository `name` (a work tree, served live) with `files`, committed as `message`.
    pub(crate) fn repo(&self, name: &str, files: &[(&str, &str)], message: &str) -> PathBuf {
        let dir = self.base.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        git(&dir, &["init", "-q", "-b", "main"]);
        commit(&dir, files, message);
        dir
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `files` into the work tree and commits them; returns the new commit.
pub(crate) fn commit(dir: &Path, files: &[(&str, &str)], message: &str) -> String {
    crate::support::write_files(dir, files);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

/// A repository with history: `first` (tagged `v1`, annotated), then `second` with a subdir,
/// an executable script and a submodule. Returns (server, repo dir, first sha, second sha).
fn sample(k: &Kiln) -> Option<(GitServer, PathBuf, String, String)> {
    let server = GitServer::start(&k.test, k.dir().join("srv"))?;
    let repo = server.repo("repo.git", &[("hello.txt", "one\n")], "first");
    let first = git(&repo, &["rev-parse", "HEAD"]);
    git(&repo, &["tag", "-a", "v1", "-m", "version one"]);
    server.repo("lib.git", &[("lib.txt", "from the submodule\n")], "lib");
    git(
        &repo,
        &[
            "submodule",
            "add",
            "-q",
            &server.url("lib.git"),
            "vendor/lib",
        ],
    );
    std::fs::write(repo.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(repo.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    let second = commit(
        &repo,
        &[("hello.txt", "two\n"), ("sub/inner.txt", "inner\n")],
        "second",
    );
    Some((server, repo, first, second))
}

#[test]
fn add_git_refs_subdirs_and_checksum() {
    let Some(k) = Kiln::new("add_git_refs_subdirs_and_checksum") else {
        return;
    };
    let Some((server, repo, first, second)) = sample(&k) else {
        return;
    };
    let commit_time = git(&repo, &["log", "-1", "--format=%ct", &second]);
    let url = server.url("repo.git");
    let short = &second[..12];
    let dockerfile = format!(
        "FROM busybox
ADD {url}#main /branch
ADD {url}#v1 /tag
ADD {url}#{first} /commit
ADD {url}#main:sub /subdir
ADD {url}?branch=main&subdir=sub&submodules=false /query/
ADD --checksum={short} {url} /default
ADD {url}?branch=main&mtime=commit /mtime
"
    );
    let ctx = k.context("ctx", &[("Dockerfile", &dockerfile)]);
    let tag = k.unique("git-add");
    k.build(&ctx, &["-t", &tag]).ok();
    let run = |script: &str| k.kiln(&["run", &tag, "sh", "-c", script]).ok().stdout;
    assert_eq!(
        run("cat /branch/hello.txt /tag/hello.txt /commit/hello.txt /default/hello.txt"),
        "two\none\none\ntwo\n"
    );
    // The subdir's contents land in the destination; only the tree, no `.git` anywhere.
    assert_eq!(run("ls -A /subdir; ls -A /query"), "inner.txt\ninner.txt\n");
    assert_eq!(
        run("ls -A /branch; ls -A /branch/vendor/lib"),
        ".gitmodules\nhello.txt\nrun.sh\nsub\nvendor\nlib.txt\n"
    );
    assert_eq!(
        run("cat /branch/vendor/lib/lib.txt"),
        "from the submodule\n"
    );
    // `mtime=commit`: the commit's time, on files and directories alike.
    assert_eq!(
        run("stat -c %Y /mtime/hello.txt /mtime/sub /mtime/sub/inner.txt"),
        format!("{commit_time}\n{commit_time}\n{commit_time}\n")
    );
    // The tag predates the script and the submodule.
    assert_eq!(run("ls -A /tag"), "hello.txt\n");
    // Modes from git's executable bit; owned by root.
    assert_eq!(
        run("stat -c '%a %u' /branch/run.sh /branch/hello.txt /branch/sub"),
        "755 0\n644 0\n755 0\n"
    );
    k.assert_clean();
}

#[test]
fn add_keep_git_dir_keeps_a_working_repository() {
    let Some(k) = Kiln::new("add_keep_git_dir_keeps_a_working_repository") else {
        return;
    };
    let Some((server, _repo, _first, second)) = sample(&k) else {
        return;
    };
    let url = server.url("repo.git");
    let dockerfile = format!(
        "FROM scratch AS kept\nADD --keep-git-dir {url}#main /\n\nFROM busybox\nADD {url}#main /plain\n"
    );
    let ctx = k.context("ctx", &[("Dockerfile", &dockerfile)]);
    let dest = k.dir().join("kept.tar");
    let spec = format!("type=oci,dest={}", dest.display());
    k.build(&ctx, &["--target", "kept", "-o", &spec]).ok();

    // The stage's one layer is the checkout: unpack it and ask the host's git about it.
    let files = read_tar(&dest).unwrap();
    let (manifest, _config) = crate::export_oci::layout_image(&files);
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    let hex = layers[0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let mut tar = Vec::new();
    flate2::read::MultiGzDecoder::new(files[&format!("blobs/sha256/{hex}")].as_slice())
        .read_to_end(&mut tar)
        .unwrap();
    let out = k.dir().join("unpacked");
    tar::Archive::new(tar.as_slice()).unpack(&out).unwrap();
    assert!(out.join(".git").is_dir());
    assert_eq!(git(&out, &["rev-parse", "HEAD"]), second);
    assert_eq!(git(&out, &["log", "-1", "--format=%s"]), "second");
    assert_eq!(git(&out, &["status", "--porcelain"]), "");
    assert_eq!(git(&out, &["remote", "get-url", "origin"]), url);

    // Without the flag there is no `.git` (and the submodule's `.git` file is gone too).
    let tag = k.unique("git-plain");
    k.build(&ctx, &["-t", &tag]).ok();
    let found = k
        .kiln(&["run", &tag, "find", "/plain", "-name", ".git"])
        .ok()
        .stdout;
    assert_eq!(found, "");
    k.assert_clean();
}

#[test]
fn git_source_is_cached_until_the_branch_moves() {
    let Some(k) = Kiln::new("git_source_is_cached_until_the_branch_moves") else {
        return;
    };
    let Some(server) = GitServer::start(&k.test, k.dir().join("srv")) else {
        return;
    };
    let repo = server.repo("repo.git", &[("v.txt", "first\n")], "first");
    let url = server.url("repo.git");
    let dockerfile = format!("FROM busybox\nADD {url}#main /src\nRUN cat /src/v.txt\n");
    let ctx = k.context("ctx", &[("Dockerfile", &dockerfile)]);
    let tag = k.unique("git-cache");
    let build = || k.build(&ctx, &["-t", &tag]).ok().progress();
    let run_logs = |p: &crate::support::Progress| p.step("RUN cat /src/v.txt").logs.clone();

    let first = build();
    assert_eq!(run_logs(&first), ["first"], "{}", first.raw());

    let again = build();
    assert!(
        again.rebuilt().is_empty(),
        "rebuilt {:?}:\n{}",
        again.rebuilt(),
        again.raw()
    );

    // The server's branch moves: the ADD and what follows run again, FROM stays cached.
    commit(&repo, &[("v.txt", "second\n")], "second");
    let moved = build();
    let rebuilt = moved.rebuilt();
    assert!(
        rebuilt.iter().any(|n| n.contains("ADD")) && rebuilt.iter().any(|n| n.contains("RUN")),
        "{}",
        moved.raw()
    );
    assert!(moved.step("FROM").cached, "{}", moved.raw());
    assert_eq!(run_logs(&moved), ["second"], "{}", moved.raw());

    // A commit the branch does not point at is the same cache entry either way.
    let again = build();
    assert!(again.rebuilt().is_empty(), "{}", again.raw());
    k.assert_clean();
}

#[test]
fn git_errors_name_the_line_and_the_cause() {
    let Some(k) = Kiln::new("git_errors_name_the_line_and_the_cause") else {
        return;
    };
    let Some(server) = GitServer::start(&k.test, k.dir().join("srv")) else {
        return;
    };
    let repo = server.repo("repo.git", &[("v.txt", "v\n")], "first");
    let head = git(&repo, &["rev-parse", "HEAD"]);
    let url = server.url("repo.git");
    // A port nothing listens on: bound and released.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cases = [
        (
            format!("ADD --checksum=0000000 {url}#main /src"),
            format!("expected checksum to match 0000000, got {head}"),
        ),
        (
            format!("ADD {url}#no-such-branch /src"),
            "repository does not contain ref `no-such-branch`".to_string(),
        ),
        (
            format!("ADD git://127.0.0.1:{closed}/repo.git /src"),
            "unable to connect".to_string(),
        ),
        (
            format!("ADD {url}#main:missing /src"),
            "subdir `missing` is not a directory in the repository".to_string(),
        ),
        (
            format!("COPY {url} /src"),
            "source can't be a git ref for COPY".to_string(),
        ),
        (
            format!("ADD --checksum=sha256:abc {url} /src"),
            "expected a hex commit hash".to_string(),
        ),
    ];
    for (i, (line, expected)) in cases.iter().enumerate() {
        let dockerfile = format!("FROM busybox\n\n{line}\n");
        let ctx = k.context(&format!("ctx{i}"), &[("Dockerfile", &dockerfile)]);
        let failed = k.build(&ctx, &[]).failed();
        assert!(
            failed.stderr.contains(expected.as_str()),
            "{line}: expected {expected:?} in:\n{}",
            failed.stderr
        );
        // Located: the file, line 3, and the line itself.
        assert!(
            failed.stderr.contains("Dockerfile:3") && failed.stderr.contains(line.as_str()),
            "{line}: not located:\n{}",
            failed.stderr
        );
    }
    k.assert_clean();
}

#[test]
fn git_url_as_the_build_context() {
    let Some(k) = Kiln::new("git_url_as_the_build_context") else {
        return;
    };
    let Some(server) = GitServer::start(&k.test, k.dir().join("srv")) else {
        return;
    };
    server.repo(
        "app.git",
        &[
            (
                "app/Dockerfile",
                "FROM busybox\nCOPY . /app\nRUN cat /app/msg.txt && ls -A /app\n",
            ),
            ("app/msg.txt", "from git\n"),
            ("app/.dockerignore", "secret.txt\n"),
            ("app/secret.txt", "hidden\n"),
            ("README", "not in the subdir\n"),
            ("Other.Dockerfile", "FROM busybox\nRUN echo other\n"),
        ],
        "app",
    );
    let url = format!("{}#main:app", server.url("app.git"));
    let tag = k.unique("git-context");
    let out = k
        .kiln(&["build", "--progress", "plain", "-t", &tag, &url])
        .ok();
    let p = out.progress();
    let run = p.step("RUN cat /app/msg.txt");
    assert_eq!(
        run.logs,
        ["from git", ".dockerignore", "Dockerfile", "msg.txt"],
        "{}",
        p.raw()
    );
    // The checkout is gone once the build is over.
    let tmp: Vec<_> = std::fs::read_dir(k.root.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(tmp.is_empty(), "left in tmp/: {tmp:?}");

    // `-f` names a file inside the repository.
    let root_url = server.url("app.git");
    let out = k
        .kiln(&[
            "build",
            "--progress",
            "plain",
            "-f",
            "Other.Dockerfile",
            &root_url,
        ])
        .ok();
    assert_eq!(
        out.progress().step("RUN echo other").logs,
        ["other"],
        "{}",
        out.stderr
    );
    k.assert_clean();
}

/// Serves the files under `base` over plain HTTP on loopback (git's "dumb" protocol needs
/// nothing more); returns the address. The thread lives as long as the test process.
fn serve_files(base: PathBuf) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request.split(' ').nth(1).unwrap_or("/");
            let path = path
                .split('?')
                .next()
                .unwrap_or("/")
                .trim_start_matches('/');
            let file = (!path.split('/').any(|c| c == ".."))
                .then(|| std::fs::read(base.join(path)).ok())
                .flatten();
            let response = match file {
                Some(body) => {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend(body);
                    r
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = stream.write_all(&response);
        }
    });
    addr
}

#[test]
fn add_git_over_dumb_http() {
    let Some(k) = Kiln::new("add_git_over_dumb_http") else {
        return;
    };
    if find_program("git").is_none() {
        skip_because(&k.test, "git is not installed");
        return;
    }
    let work = k.dir().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    commit(
        &work,
        &[("hello.txt", "over http\n"), ("sub/a.txt", "a\n")],
        "first",
    );
    // A bare copy with the index files the dumb protocol reads.
    let srv = k.dir().join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    git(
        &srv,
        &["clone", "-q", "--bare", work.to_str().unwrap(), "repo.git"],
    );
    git(&srv.join("repo.git"), &["update-server-info"]);
    let addr = serve_files(srv);
    // No shallow fetch over dumb HTTP: kiln retries without `--depth`.
    let dockerfile = format!(
        "FROM busybox\nADD http://{addr}/repo.git /default\nADD http://{addr}/repo.git#main:sub /sub\n"
    );
    let ctx = k.context("ctx", &[("Dockerfile", &dockerfile)]);
    let tag = k.unique("git-http");
    k.build(&ctx, &["-t", &tag]).ok();
    let out = k
        .kiln(&["run", &tag, "cat", "/default/hello.txt", "/sub/a.txt"])
        .ok()
        .stdout;
    assert_eq!(out, "over http\na\n");
    k.assert_clean();
}
