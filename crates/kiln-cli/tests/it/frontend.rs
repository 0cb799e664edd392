//! Dockerfile frontend features end to end: COPY/ADD `--exclude` and `--parents`, symbolic
//! `--chmod`, proxy build args, and the automatic platform args in a multi-stage build that
//! also uses ONBUILD, heredocs, SHELL and HEALTHCHECK.

use std::os::unix::fs::PermissionsExt;

use serde_json::{Value, json};

use crate::export_oci::layout_image;
use crate::support::{Kiln, read_tar};

fn history(image: &Value) -> Vec<String> {
    image["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|h| h["created_by"].as_str().map(str::to_string))
        .collect()
}

const COPY_FLAGS: &str = r#"FROM busybox AS base
RUN mkdir -p /test/a/b/c/d/e /test/a/b2/c/d/e && touch /test/a/b/c/d/foo /test/a/b2/c/d/e/bar
FROM busybox
COPY --exclude=*/*.png --exclude=src --exclude=x . /1/
COPY --exclude=*.png dir* /2/
ADD --exclude=* dir* /3/
COPY --parents x/./y/*.txt src/**/*.txt /4/
COPY --from=base --parents /test/a/b/./c/d /5/
COPY --from=base --parents /test/a/./*/c /6/
COPY --chmod=u=rwx,go=rx run.sh /bin-sym/
COPY --chmod=a+rX,go-w conf /conf/
"#;

#[test]
fn copy_exclude_parents_and_symbolic_chmod() {
    let Some(k) = Kiln::new("copy_exclude_parents_and_symbolic_chmod") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[
            ("Dockerfile", COPY_FLAGS),
            ("dir1/a.png", "a"),
            ("dir1/b.txt", "b"),
            ("dir2/c.pdf", "c"),
            ("dir2/d.png", "d"),
            ("x/y/a.txt", "xa"),
            ("x/y/b.md", "xb"),
            ("src/a.txt", "1"),
            ("src/x/b.txt", "2"),
            ("src/x/y/c.txt", "3"),
            ("src/x/y/d.md", "4"),
            ("run.sh", "#!/bin/sh\n"),
            ("conf/app.conf", "k=v\n"),
            ("conf/tool", "#!/bin/sh\n"),
        ],
    );
    for (path, mode) in [
        ("run.sh", 0o644),
        ("conf/app.conf", 0o600),
        ("conf/tool", 0o700),
    ] {
        std::fs::set_permissions(ctx.join(path), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let tag = k.unique("copyflags");
    let dest = k.dir().join("image.tar");
    let spec = format!("type=oci,dest={}", dest.display());
    k.build(&ctx, &["-t", &tag, "-o", &spec, "--load"]).ok();

    let out = k
        .kiln(&["run", &tag, "find", "/1", "/2", "/3", "/4", "/5", "/6"])
        .ok()
        .stdout;
    let mut found: Vec<&str> = out.lines().collect();
    found.sort();
    let mut expected = vec![
        "/1",
        "/1/Dockerfile",
        "/1/conf",
        "/1/conf/app.conf",
        "/1/conf/tool",
        "/1/dir1",
        "/1/dir1/b.txt",
        "/1/dir2",
        "/1/dir2/c.pdf",
        "/1/run.sh",
        // Each wildcard match is a source: patterns apply below it.
        "/2",
        "/2/b.txt",
        "/2/c.pdf",
        "/3",
        "/4",
        "/4/y",
        "/4/y/a.txt",
        "/4/src",
        "/4/src/a.txt",
        "/4/src/x",
        "/4/src/x/b.txt",
        "/4/src/x/y",
        "/4/src/x/y/c.txt",
        "/5",
        "/5/c",
        "/5/c/d",
        "/5/c/d/e",
        "/5/c/d/foo",
        "/6",
        "/6/b",
        "/6/b/c",
        "/6/b/c/d",
        "/6/b/c/d/e",
        "/6/b/c/d/foo",
        "/6/b2",
        "/6/b2/c",
        "/6/b2/c/d",
        "/6/b2/c/d/e",
        "/6/b2/c/d/e/bar",
    ];
    expected.sort();
    assert_eq!(found, expected);

    let modes = k
        .kiln(&[
            "run",
            &tag,
            "stat",
            "-c",
            "%a %n",
            "/bin-sym/run.sh",
            "/conf/app.conf",
            "/conf/tool",
        ])
        .ok()
        .stdout;
    assert_eq!(
        modes,
        "755 /bin-sym/run.sh\n644 /conf/app.conf\n755 /conf/tool\n"
    );

    let (_, image) = layout_image(&read_tar(&dest).unwrap());
    let history = history(&image);
    for entry in [
        "COPY . /1/ # buildkit",
        "ADD dir* /3/ # buildkit",
        "COPY --parents x/./y/*.txt src/**/*.txt /4/ # buildkit",
        "COPY --parents /test/a/b/./c/d /5/ # buildkit",
        "COPY --chmod=u=rwx,go=rx run.sh /bin-sym/ # buildkit",
    ] {
        assert!(history.iter().any(|h| h == entry), "{entry}: {history:?}");
    }

    // Files an --exclude drops are not part of the step's cache key; files it keeps are.
    std::fs::write(ctx.join("dir1/a.png"), "changed").unwrap();
    let p = k.build(&ctx, &["-t", &tag]).ok().progress();
    assert!(p.step("COPY --exclude=*/*.png").cached, "{}", p.raw());
    assert!(p.step("COPY --exclude=*.png dir*").cached, "{}", p.raw());
    assert!(p.step("ADD --exclude=* dir*").cached, "{}", p.raw());
    std::fs::write(ctx.join("src/x/y/d.md"), "changed").unwrap();
    let p = k.build(&ctx, &["-t", &tag]).ok().progress();
    assert!(p.step("COPY --parents x/./y").cached, "{}", p.raw());
    std::fs::write(ctx.join("src/x/y/c.txt"), "changed").unwrap();
    let p = k.build(&ctx, &["-t", &tag]).ok().progress();
    assert!(!p.step("COPY --parents x/./y").cached, "{}", p.raw());
    let out = k
        .kiln(&["run", &tag, "cat", "/4/src/x/y/c.txt"])
        .ok()
        .stdout;
    assert_eq!(out, "changed");
    k.assert_clean();
}

#[test]
fn proxy_build_args_reach_run_only() {
    let Some(k) = Kiln::new("proxy_build_args_reach_run_only") else {
        return;
    };
    let dockerfile = "FROM busybox
ARG HTTPS_PROXY
RUN echo \"http=[$HTTP_PROXY] https=[$HTTPS_PROXY] no=[$no_proxy] ftp=[$FTP_PROXY]\" > /proxies
";
    let ctx = k.context("ctx", &[("Dockerfile", dockerfile)]);
    let tag = k.unique("proxy");
    let dest = k.dir().join("image.tar");
    let spec = format!("type=oci,dest={}", dest.display());
    let args = [
        "--build-arg",
        "HTTP_PROXY=http://proxy.invalid:3128",
        "--build-arg",
        "HTTPS_PROXY=http://secure.invalid:3129",
        "--build-arg",
        "no_proxy=localhost",
    ];
    let mut build = vec!["-t", tag.as_str(), "-o", spec.as_str(), "--load"];
    build.extend(args);
    let run = k.build(&ctx, &build).ok();
    assert!(
        !run.stderr.contains("were not consumed"),
        "proxy args never count as unused: {}",
        run.stderr
    );
    let out = k.kiln(&["run", &tag, "cat", "/proxies"]).ok().stdout;
    assert_eq!(
        out,
        "http=[http://proxy.invalid:3128] https=[http://secure.invalid:3129] no=[localhost] ftp=[]\n"
    );
    let (_, image) = layout_image(&read_tar(&dest).unwrap());
    let env = image["config"]["Env"].to_string();
    assert!(!env.to_lowercase().contains("proxy"), "{env}");
    let history = history(&image);
    // Declared with ARG: recorded. Only given on the command line: not recorded.
    assert!(
        history
            .iter()
            .any(|h| h.starts_with("RUN |1 HTTPS_PROXY=http://secure.invalid:3129 /bin/sh -c")),
        "{history:?}"
    );
    assert!(
        !history
            .iter()
            .any(|h| h.contains("proxy.invalid") || h.contains("no_proxy=")),
        "{history:?}"
    );

    // Undeclared proxy values are not part of the cache key, as in BuildKit.
    let mut again = vec!["-t", tag.as_str()];
    let other = [
        "--build-arg",
        "HTTP_PROXY=http://other.invalid:8080",
        "--build-arg",
        "HTTPS_PROXY=http://secure.invalid:3129",
    ];
    again.extend(other);
    let p = k.build(&ctx, &again).ok().progress();
    assert!(p.step("RUN echo").cached, "{}", p.raw());
    k.assert_clean();
}

#[test]
fn platform_args_in_a_multi_stage_build() {
    let Some(k) = Kiln::new("platform_args_in_a_multi_stage_build") else {
        return;
    };
    let base_ctx = k.context(
        "base",
        &[(
            "Dockerfile",
            "FROM busybox\nONBUILD ARG TARGETARCH\nONBUILD RUN echo \"onbuild arch=$TARGETARCH\" > /onbuild-arch\n",
        )],
    );
    let base = k.unique("platform-base");
    k.build(&base_ctx, &["-t", &base]).ok();

    let dockerfile = format!(
        r#"ARG BASE=busybox
ARG TARGETOS
FROM --platform=$BUILDPLATFORM $BASE AS build
ARG TARGETPLATFORM BUILDPLATFORM TARGETOS TARGETARCH TARGETVARIANT BUILDOS BUILDARCH
RUN <<EOF
echo "build=$BUILDPLATFORM target=$TARGETPLATFORM" > /platforms
echo "os=$TARGETOS arch=$TARGETARCH variant=[$TARGETVARIANT] buildos=$BUILDOS buildarch=$BUILDARCH" >> /platforms
EOF
RUN echo "undeclared=[$BUILDVARIANT]" >> /platforms

FROM {base} AS final
ARG TARGETARCH
SHELL ["/bin/sh", "-eu", "-c"]
COPY --from=build /platforms /platforms
RUN echo "final $TARGETARCH" > /final-arch
ENV ARCH=$TARGETARCH
LABEL target.arch=$TARGETARCH target.os=${{TARGETOS:-unset}}
HEALTHCHECK --interval=5s --timeout=2s CMD test -f /platforms
COPY <<EOF /heredoc-arch
arch=$TARGETARCH
EOF
"#
    );
    let ctx = k.context("ctx", &[("Dockerfile", &dockerfile)]);
    let tag = k.unique("platform");
    let dest = k.dir().join("image.tar");
    let spec = format!("type=oci,dest={}", dest.display());
    k.build(
        &ctx,
        &[
            "--platform",
            "linux/amd64",
            "-t",
            &tag,
            "-o",
            &spec,
            "--load",
        ],
    )
    .ok();
    let cat = |path: &str| k.kiln(&["run", &tag, "cat", path]).ok().stdout;
    assert_eq!(
        cat("/platforms"),
        "build=linux/amd64 target=linux/amd64\nos=linux arch=amd64 variant=[] buildos=linux buildarch=amd64\nundeclared=[]\n"
    );
    assert_eq!(cat("/onbuild-arch"), "onbuild arch=amd64\n");
    assert_eq!(cat("/final-arch"), "final amd64\n");
    assert_eq!(cat("/heredoc-arch"), "arch=amd64\n");

    let (_, image) = layout_image(&read_tar(&dest).unwrap());
    assert_eq!(image["architecture"], "amd64");
    assert_eq!(image["os"], "linux");
    let c = &image["config"];
    assert!(
        c["Env"].as_array().unwrap().contains(&json!("ARCH=amd64")),
        "{c}"
    );
    // A global ARG is not visible in a stage that does not declare it.
    assert_eq!(
        c["Labels"],
        json!({"target.arch": "amd64", "target.os": "unset"})
    );
    assert_eq!(c["Shell"], json!(["/bin/sh", "-eu", "-c"]));
    assert_eq!(
        c["Healthcheck"],
        json!({
            "Test": ["CMD-SHELL", "test -f /platforms"],
            "Interval": 5_000_000_000u64,
            "Timeout": 2_000_000_000u64,
        })
    );
    assert!(c.get("OnBuild").is_none(), "{c}");
    let history = history(&image);
    assert!(
        history
            .iter()
            .any(|h| h == "RUN |1 TARGETARCH=amd64 /bin/sh -eu -c echo \"final $TARGETARCH\" > /final-arch # buildkit"),
        "{history:?}"
    );

    // The host platform is the default: the same build without --platform is fully cached.
    let p = k.build(&ctx, &["-t", &tag]).ok().progress();
    assert!(p.rebuilt().is_empty(), "{}", p.raw());
    k.assert_clean();
}
