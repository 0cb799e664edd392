//! The rest of the Dockerfile language: heredocs in RUN and COPY, SHELL, ONBUILD triggers in a
//! later build, and the config-only instructions (HEALTHCHECK, VOLUME, STOPSIGNAL).

use serde_json::json;

use crate::export_oci::layout_image;
use crate::support::{Kiln, read_tar};

const HEREDOCS: &str = "FROM busybox
ARG NAME=world
RUN <<EOF
echo \"hello $NAME\" > /run-plain
echo second line >> /run-plain
EOF
RUN <<EOF
#!/bin/sh -e
echo \"script $0\" > /run-script
EOF
RUN <<-EOF sh -c 'cat > /run-stdin'
\tindented
\tEOF
COPY <<EOF /copied.txt
name=$NAME 'quoted'
EOF
COPY <<a <<\"b\" /dir/
from a $NAME
a
from b $NAME
b
";

#[test]
fn heredocs_in_run_and_copy() {
    let Some(k) = Kiln::new("heredocs_in_run_and_copy") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", HEREDOCS)]);
    let tag = k.unique("heredoc");
    k.build(&ctx, &["-t", &tag]).ok();
    let cat = |path: &str| k.kiln(&["run", &tag, "cat", path]).ok().stdout;
    assert_eq!(cat("/run-plain"), "hello world\nsecond line\n");
    // A shebang heredoc runs as a file under /dev/pipes.
    assert_eq!(cat("/run-script"), "script /dev/pipes/EOF\n");
    assert_eq!(cat("/run-stdin"), "indented\n");
    assert_eq!(cat("/copied.txt"), "name=world 'quoted'\n");
    assert_eq!(cat("/dir/a"), "from a world\n");
    assert_eq!(cat("/dir/b"), "from b $NAME\n");
    let mode = k
        .kiln(&["run", &tag, "stat", "-c", "%a %u", "/copied.txt", "/dir/b"])
        .ok()
        .stdout;
    assert_eq!(mode, "644 0\n644 0\n");
    // The script file was mounted, not written into the image.
    let ls = k.kiln(&["run", &tag, "ls", "/dev"]).ok().stdout;
    assert!(!ls.contains("pipes"), "{ls}");

    // The body is part of the cache key: a changed body reruns, the rest is cached.
    let changed = HEREDOCS.replace("second line", "other line");
    let ctx2 = k.context("ctx2", &[("Dockerfile", &changed)]);
    let p = k.build(&ctx2, &["-t", &tag]).ok().progress();
    assert!(!p.step("RUN <<EOF (echo").cached, "{}", p.raw());
    let out = k.kiln(&["run", &tag, "cat", "/run-plain"]).ok().stdout;
    assert_eq!(out, "hello world\nother line\n");
    k.assert_clean();
}

#[test]
fn shell_and_config_instructions() {
    let Some(k) = Kiln::new("shell_and_config_instructions") else {
        return;
    };
    let dockerfile = "FROM busybox
SHELL [\"/bin/sh\", \"-c\", \"echo shell-arg; eval \\\"$0\\\"\"]
RUN echo body > /shell-out
SHELL [\"/bin/sh\", \"-c\"]
HEALTHCHECK --interval=30s --retries=2 CMD wget -q http://localhost/ || exit 1
VOLUME /data
VOLUME [\"/cache\", \"/logs\"]
STOPSIGNAL SIGINT
MAINTAINER someone
";
    let ctx = k.context("ctx", &[("Dockerfile", dockerfile)]);
    let dest = k.dir().join("image.tar");
    let tag = k.unique("config");
    let spec = format!("type=oci,dest={}", dest.display());
    let built = k.build(&ctx, &["-t", &tag, "-o", &spec, "--load"]).ok();
    let log = built.progress();
    let run = log.step("RUN echo body");
    assert!(
        run.logs.iter().any(|l| l.contains("shell-arg")),
        "{:?}",
        run.logs
    );
    let out = k.kiln(&["run", &tag, "cat", "/shell-out"]).ok().stdout;
    assert_eq!(out, "body\n");

    let (_, image) = layout_image(&read_tar(&dest).unwrap());
    let c = &image["config"];
    assert_eq!(c["Shell"], json!(["/bin/sh", "-c"]));
    assert_eq!(
        c["Healthcheck"],
        json!({
            "Test": ["CMD-SHELL", "wget -q http://localhost/ || exit 1"],
            "Interval": 30_000_000_000u64,
            "Retries": 2,
        })
    );
    assert_eq!(
        c["Volumes"],
        json!({"/data": {}, "/cache": {}, "/logs": {}})
    );
    assert_eq!(c["StopSignal"], "SIGINT");
    assert_eq!(image["author"], "someone");
    let history: Vec<&str> = image["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["created_by"].as_str())
        .collect();
    assert!(history.contains(&"STOPSIGNAL SIGINT"), "{history:?}");
    assert!(history.contains(&"VOLUME [/cache /logs]"), "{history:?}");
    assert!(history.contains(&"MAINTAINER someone"), "{history:?}");
    assert!(
        history.contains(
            &"HEALTHCHECK {Test:[CMD-SHELL wget -q http://localhost/ || exit 1] Interval:30s Timeout:0s StartPeriod:0s StartInterval:0s Retries:2}"
        ),
        "{history:?}"
    );
    k.assert_clean();
}

#[test]
fn onbuild_triggers_run_in_a_later_build() {
    let Some(k) = Kiln::new("onbuild_triggers_run_in_a_later_build") else {
        return;
    };
    let base_ctx = k.context(
        "base",
        &[(
            "Dockerfile",
            "FROM busybox\nONBUILD COPY trigger.txt /from-trigger.txt\nONBUILD RUN echo ran > /onbuild-ran\nRUN echo base > /base\n",
        )],
    );
    let base = k.unique("onbuild-base");
    k.build(&base_ctx, &["-t", &base]).ok();
    // The base itself does not run its triggers.
    let ls = k.kiln(&["run", &base, "ls", "/"]).ok().stdout;
    assert!(!ls.contains("onbuild-ran"), "{ls}");

    let dockerfile = format!("FROM {base}\nRUN cat /onbuild-ran /from-trigger.txt > /both\n");
    let child_ctx = k.context(
        "child",
        &[
            ("Dockerfile", &dockerfile),
            ("trigger.txt", "from the child context\n"),
        ],
    );
    let child = k.unique("onbuild-child");
    let dest = k.dir().join("child.tar");
    let spec = format!("type=oci,dest={}", dest.display());
    let p = k
        .build(&child_ctx, &["-t", &child, "-o", &spec, "--load"])
        .ok()
        .progress();
    assert!(p.raw().contains("ONBUILD RUN echo ran"), "{}", p.raw());
    let out = k.kiln(&["run", &child, "cat", "/both"]).ok().stdout;
    assert_eq!(out, "ran\nfrom the child context\n");
    let (_, image) = layout_image(&read_tar(&dest).unwrap());
    assert!(image["config"].get("OnBuild").is_none(), "{image}");
    k.assert_clean();
}

/// A .tar.gz with `app/hello.txt` (0640, uid 1234) and `app/bin/run.sh`.
fn app_tar_gz() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in [
        ("app/hello.txt", &b"hello from the archive\n"[..], 0o640),
        ("app/bin/run.sh", &b"#!/bin/sh\necho run\n"[..], 0o755),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(1234);
        h.set_gid(1234);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        b.append_data(&mut h, path, data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}

#[test]
fn add_extracts_local_archives() {
    let Some(k) = Kiln::new("add_extracts_local_archives") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM busybox\nADD app.tar.gz /opt/\nADD --unpack=false app.tar.gz /raw/\nADD plain.txt /plain.txt\n",
            ),
            ("plain.txt", "not an archive\n"),
        ],
    );
    std::fs::write(ctx.join("app.tar.gz"), app_tar_gz()).unwrap();
    let tag = k.unique("add-local");
    k.build(&ctx, &["-t", &tag]).ok();
    let run = |args: &[&str]| {
        let mut all = vec!["run", tag.as_str()];
        all.extend(args);
        k.kiln(&all).ok().stdout
    };
    assert_eq!(
        run(&["cat", "/opt/app/hello.txt"]),
        "hello from the archive\n"
    );
    assert_eq!(
        run(&[
            "stat",
            "-c",
            "%a %u",
            "/opt/app/hello.txt",
            "/opt/app/bin/run.sh"
        ]),
        "640 1234\n755 1234\n"
    );
    assert_eq!(run(&["/opt/app/bin/run.sh"]), "run\n");
    // --unpack=false copies the archive as it is.
    let raw = run(&["sh", "-c", "ls /raw && wc -c < /raw/app.tar.gz"]);
    assert_eq!(raw, format!("app.tar.gz\n{}\n", app_tar_gz().len()));
    assert_eq!(run(&["cat", "/plain.txt"]), "not an archive\n");
    k.assert_clean();
}

/// Serves `body` at every path on 127.0.0.1 with a fixed Last-Modified (no ETag, so no
/// revalidation); returns the address. The server lives as long as the test process.
pub(crate) fn serve(body: &'static [u8]) -> String {
    let server = kiln_test::HttpServer::start().unwrap();
    server.fallback(
        kiln_test::Route::new(200, None, body)
            .with_header("Last-Modified", kiln_test::LAST_MODIFIED),
    );
    let addr = server.addr().to_string();
    Box::leak(Box::new(server));
    addr
}

#[test]
fn add_downloads_urls_with_checksum() {
    let Some(k) = Kiln::new("add_downloads_urls_with_checksum") else {
        return;
    };
    const BODY: &[u8] = b"downloaded content\n";
    let addr = serve(BODY);
    let good = sha256_of(BODY);
    let dockerfile = format!(
        "FROM busybox\nADD --checksum={good} http://{addr}/files/tool.txt?version=1 /opt/\nADD http://{addr}/other.txt /renamed.txt\n"
    );
    let ctx = k.context("ctx", &[("Dockerfile", &dockerfile)]);
    let tag = k.unique("add-url");
    k.build(&ctx, &["-t", &tag]).ok();
    let out = k
        .kiln(&["run", &tag, "cat", "/opt/tool.txt", "/renamed.txt"])
        .ok()
        .stdout;
    assert_eq!(out, "downloaded content\ndownloaded content\n");
    // Mode 0600 and the server's Last-Modified, as Docker does.
    let stat = k
        .kiln(&["run", &tag, "stat", "-c", "%a %u %Y", "/opt/tool.txt"])
        .ok()
        .stdout;
    assert_eq!(stat, "600 0 1445412480\n");

    let bad = format!("sha256:{}", "0".repeat(64));
    let dockerfile =
        format!("FROM busybox\nADD --checksum={bad} http://{addr}/tool.txt /tool.txt\n");
    let ctx = k.context("bad", &[("Dockerfile", &dockerfile)]);
    let failed = k.build(&ctx, &[]).failed();
    assert!(
        failed.stderr.contains("digest mismatch") && failed.stderr.contains(&good),
        "{}",
        failed.stderr
    );
    k.assert_clean();
}

/// `sha256:<hex>` of `data`, computed with the system's sha256sum so the test does not share
/// kiln's code.
fn sha256_of(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

/// ADD of a URL remembers the download's ETag: the next build asks with `If-None-Match`, the
/// server answers 304 and the stored body is used (the step stays cached, nothing is sent
/// again); when the file changes the download and the step are redone.
#[test]
fn issue_15_add_url_revalidates_with_etag() {
    let Some(k) = Kiln::new("issue_15_add_url_revalidates_with_etag") else {
        return;
    };
    let server = kiln_test::HttpServer::start().unwrap();
    server.route(
        "/tool.txt",
        kiln_test::Route::file(None, b"version 1\n".to_vec()),
    );
    let url = server.url("/tool.txt");
    let dockerfile = format!(
        "FROM busybox\nADD {url} /opt/\nADD --chown=7:8 --chmod=751 {url} /own/\nRUN cat /opt/tool.txt > /seen\n"
    );
    let ctx = k.context("ctx", &[("Dockerfile", &dockerfile)]);
    let out = k.dir().join("out");
    let dest = format!("type=local,dest={}", out.display());
    k.build(&ctx, &["--output", &dest]).ok();
    assert_eq!(
        std::fs::read_to_string(out.join("seen")).unwrap(),
        "version 1\n"
    );
    let own = std::fs::metadata(out.join("own/tool.txt")).unwrap();
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert_eq!(own.permissions().mode() & 0o7777, 0o751);
        assert_eq!((own.uid(), own.gid()), (7, 8));
    }
    // One download serves both ADDs of the URL.
    let first = server.requests();
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(!first[0].headers.contains_key("if-none-match"));

    let run = k.build(&ctx, &["--output", &dest]).ok();
    let again = server.requests();
    assert_eq!(again.len(), 2, "{again:?}");
    let etag = again[1]
        .headers
        .get("if-none-match")
        .cloned()
        .unwrap_or_default();
    assert!(etag.starts_with('"') && etag.len() > 60, "{again:?}");
    assert_eq!(again[1].status, 304);
    assert!(
        run.progress().rebuilt().is_empty(),
        "a revalidated download keeps the steps cached: {:?}",
        run.progress().rebuilt()
    );

    server.route(
        "/tool.txt",
        kiln_test::Route::file(None, b"version 2\n".to_vec()),
    );
    k.build(&ctx, &["--output", &dest]).ok();
    let last = server.requests();
    assert_eq!(last[2].status, 200, "{last:?}");
    assert_eq!(
        std::fs::read_to_string(out.join("seen")).unwrap(),
        "version 2\n"
    );
    // The file keeps ADD's mode and the server's Last-Modified.
    let meta = std::fs::metadata(out.join("opt/tool.txt")).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(meta.mtime(), 1445412480);
}
