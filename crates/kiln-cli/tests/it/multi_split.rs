//! `platform-split=false` for several platforms, as BuildKit v0.32.2 does it (checked with the
//! oracle): type=local merges the platforms' trees into one directory and refuses a path two
//! platforms both have ("cannot overwrite ... when split option is disabled"); type=tar splits
//! anyway (BuildKit's tar exporter does not read the option).

use crate::multi_platform::kiln_for;
use crate::support::read_tar;

/// Each platform adds a file of its own under /d.
const DISTINCT: &str = "FROM busybox:multi AS base
ARG TARGETARCH
RUN mkdir -p /d && echo $TARGETARCH > /d/only-$TARGETARCH
FROM scratch
COPY --from=base /d /d
";

/// Both platforms have /arch.
const CLASHING: &str = "FROM busybox:multi AS base
ARG TARGETARCH
RUN uname -m > /arch && echo $TARGETARCH > /only-$TARGETARCH
FROM scratch
COPY --from=base /arch /only-* /
";

#[test]
fn platform_split_false_merges_local_trees_and_refuses_a_clash() {
    let Some(k) = kiln_for("platform_split_false_merges_local_trees_and_refuses_a_clash") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", DISTINCT)]);
    let dir = k.dir().join("merged");
    let tarball = k.dir().join("out.tar");
    k.build(
        &ctx,
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &format!("type=local,dest={},platform-split=false", dir.display()),
            "-o",
            &format!("type=tar,dest={},platform-split=false", tarball.display()),
        ],
    )
    .ok();
    let top: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(top, ["d"]);
    let mut inside: Vec<String> = std::fs::read_dir(dir.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    inside.sort();
    assert_eq!(inside, ["only-amd64", "only-arm64"]);
    for arch in ["amd64", "arm64"] {
        assert_eq!(
            std::fs::read_to_string(dir.join(format!("d/only-{arch}"))).unwrap(),
            format!("{arch}\n")
        );
    }
    let files = read_tar(&tarball).unwrap();
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["linux_amd64/d/only-amd64", "linux_arm64/d/only-arm64"]
    );

    let clash = k.context("clash", &[("Dockerfile", CLASHING)]);
    let dest = k.dir().join("clash-out");
    let run = k
        .build(
            &clash,
            &[
                "--platform",
                "linux/amd64,linux/arm64",
                "-o",
                &format!("type=local,dest={},platform-split=false", dest.display()),
            ],
        )
        .failed();
    assert!(
        run.stderr.contains(
            "cannot overwrite arch from linux/amd64 with linux/arm64 when split option is disabled"
        ),
        "{}",
        run.stderr
    );
    // Checked before anything is written (BuildKit may have copied the first platform's).
    assert!(!dest.join("arch").exists());
    k.assert_clean();
}
