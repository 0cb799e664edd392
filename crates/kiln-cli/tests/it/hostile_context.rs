//! Issue 13: a context (or a stage) whose links point out of it. Each case is one build, with
//! COPY streamed into a layer and with the file-based COPY (`copy-stream = false`); whether it
//! builds or fails, no output of it (an OCI archive with uncompressed layers, a local export)
//! and nothing in the data root (blobs, layers, cache) may hold the sentinel that lives outside
//! the context, nor the bytes of this machine's /etc/shadow.

use std::path::{Path, PathBuf};

use crate::support::Kiln;

const SENTINEL: &str = "kiln-sentinel-5d1e8a-outside-the-context";

struct Case {
    name: &'static str,
    /// Whether BuildKit v0.32.2 builds it (checked with the oracle; none leaks).
    builds: bool,
    /// The Dockerfile after `FROM scratch`; `{outside}` is the outside directory.
    steps: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "wildcard-link-to-file",
        builds: false,
        steps: "COPY lin* /x/",
    },
    Case {
        name: "wildcard-link-to-etc-shadow",
        builds: false,
        steps: "COPY sha* /x/",
    },
    Case {
        name: "wildcard-through-parent-link",
        builds: true,
        steps: "COPY up*/outside/secret /x/",
    },
    Case {
        name: "wildcard-through-grandparent-link",
        builds: true,
        steps: "COPY up2*/*/outside/secret /x/",
    },
    Case {
        name: "wildcard-link-to-etc-in-subdir",
        builds: false,
        steps: "COPY sub/et* /e/",
    },
    Case {
        name: "wildcard-through-link-to-etc",
        builds: true,
        steps: "COPY e*/shadow /x/",
    },
    Case {
        name: "wildcard-link-to-dir",
        builds: false,
        steps: "COPY o*/ /x/",
    },
    Case {
        name: "wildcard-link-chain",
        builds: false,
        steps: "COPY ch* /x/",
    },
    Case {
        name: "star",
        builds: false,
        steps: "COPY * /x/",
    },
    Case {
        name: "star-star",
        builds: false,
        steps: "COPY */* /x/",
    },
    Case {
        name: "literal-link",
        builds: false,
        steps: "COPY link /x",
    },
    Case {
        name: "literal-through-link",
        builds: false,
        steps: "COPY up/outside/secret /x",
    },
    Case {
        name: "whole-context",
        builds: true,
        steps: "COPY . /x/",
    },
    Case {
        name: "parents",
        builds: true,
        steps: "COPY --parents ./up*/outside/secret /x/",
    },
    Case {
        name: "parents-pivot",
        builds: false,
        steps: "COPY --parents up/./outside/secret /x/",
    },
    Case {
        name: "exclude",
        builds: true,
        steps: "COPY --exclude=*.txt up*/outside /x/",
    },
    Case {
        name: "add-wildcard-link",
        builds: false,
        steps: "ADD lin* /x/",
    },
    Case {
        name: "add-archive-through-link",
        builds: true,
        steps: "ADD up*/outside/secret.tar /x/",
    },
    Case {
        name: "wildcard-link-inside",
        builds: true,
        steps: "COPY inl* /x/\nCOPY ind* /y/",
    },
    Case {
        name: "add-archive-link",
        builds: false,
        steps: "ADD tarl* /x/",
    },
];

/// The outside directory (sentinel as `secret`, `d/x` and inside `secret.tar`) and a context
/// beside it full of links out.
fn hostile(k: &Kiln) -> (PathBuf, PathBuf) {
    let outside = k.dir().join("outside");
    std::fs::create_dir_all(outside.join("d")).unwrap();
    std::fs::write(outside.join("secret"), SENTINEL).unwrap();
    std::fs::write(outside.join("d/x"), SENTINEL).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(SENTINEL.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "inner", SENTINEL.as_bytes())
        .unwrap();
    std::fs::write(outside.join("secret.tar"), tar.into_inner().unwrap()).unwrap();

    let ctx = k.context("ctx", &[("ok.txt", "fine\n"), ("sub/keep", "kept\n")]);
    let link = |target: &Path, at: &str| std::os::unix::fs::symlink(target, ctx.join(at)).unwrap();
    link(&outside.join("secret"), "link");
    link(Path::new("/etc/shadow"), "shadow");
    link(Path::new(".."), "up");
    link(Path::new("../.."), "up2");
    link(Path::new("/etc"), "sub/etc");
    link(Path::new("/etc"), "etc");
    link(&outside, "out");
    link(Path::new("chain2"), "chain1");
    link(Path::new("../outside/d"), "chain2");
    link(&outside.join("secret.tar"), "tarlink");
    link(Path::new("ok.txt"), "inlink");
    link(Path::new("/sub"), "indir");
    (outside, ctx)
}

/// Regular files below `dir` whose bytes hold `needle`.
fn holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                todo.push(p);
            } else if m.is_file()
                && std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            {
                found.push(p);
            }
        }
    }
    found
}

fn run_corpus(k: &Kiln, ctx: &Path, mode: &str) {
    let shadow = std::fs::read("/etc/shadow").unwrap_or_default();
    for case in CASES {
        std::fs::write(
            ctx.join("Dockerfile"),
            format!("FROM scratch\n{}\n", case.steps),
        )
        .unwrap();
        let out = k.dir().join(format!("out-{mode}-{}", case.name));
        let oci = format!(
            "type=oci,dest={}.tar,compression=uncompressed",
            out.display()
        );
        let local = format!("type=local,dest={}", out.display());
        let run = k.build(ctx, &["--no-cache", "--output", &oci, "--output", &local]);
        assert!(
            !run.stderr.contains("panicked"),
            "{mode}/{}: {}",
            case.name,
            run.stderr
        );
        let error = run.stderr.lines().find(|l| l.starts_with("ERROR: "));
        eprintln!("{mode}/{}: {}", case.name, error.unwrap_or("built"));
        assert_eq!(
            run.code == Some(0),
            case.builds,
            "{mode}/{}: BuildKit {} it\n{}",
            case.name,
            if case.builds { "builds" } else { "refuses" },
            run.stderr
        );
        if run.code != Some(0) {
            assert!(
                run.stderr.contains("Dockerfile:2"),
                "{mode}/{}: {}",
                case.name,
                run.stderr
            );
        }
        for place in [k.dir(), k.root.as_path()] {
            let leaked: Vec<PathBuf> = holding(place, SENTINEL.as_bytes())
                .into_iter()
                .filter(|p| !p.starts_with(k.dir().join("outside")))
                .collect();
            assert!(
                leaked.is_empty(),
                "{mode}/{}: sentinel in {leaked:?}",
                case.name
            );
            if shadow.len() > 16 {
                let leaked = holding(place, &shadow);
                assert!(
                    leaked.is_empty(),
                    "{mode}/{}: /etc/shadow in {leaked:?}",
                    case.name
                );
            }
        }
    }
    // The links that stay inside copy what they point at.
    let inside = k.dir().join(format!("out-{mode}-wildcard-link-inside"));
    assert_eq!(
        std::fs::read_to_string(inside.join("x/inlink")).unwrap(),
        "fine\n"
    );
    assert_eq!(
        std::fs::read_to_string(inside.join("y/keep")).unwrap(),
        "kept\n"
    );
}

#[test]
fn issue_13_links_out_of_the_context_never_reach_an_output() {
    let Some(k) = Kiln::new("issue_13_links_out_of_the_context_never_reach_an_output") else {
        return;
    };
    let (_outside, ctx) = hostile(&k);
    run_corpus(&k, &ctx, "stream");
    let config = std::fs::read_to_string(&k.config).unwrap();
    std::fs::write(&k.config, format!("copy-stream = false\n{config}")).unwrap();
    run_corpus(&k, &ctx, "files");
}

#[test]
fn issue_13_links_out_of_a_stage_stay_in_the_stage() {
    let Some(k) = Kiln::new("issue_13_links_out_of_a_stage_stay_in_the_stage") else {
        return;
    };
    let outside = k.dir().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), SENTINEL).unwrap();
    let o = outside.display();
    // Links made in a stage's rootfs: to the outside file by its host path, to /etc/shadow, and
    // up past the stage's root. Each COPY --from resolves them inside the stage.
    let copies = [
        "COPY --from=s /ln* /a/".to_string(),
        "COPY --from=s /sh* /b/".to_string(),
        format!("COPY --from=s /up*{o}/secret /c/"),
        "COPY --from=s /d/o* /e/".to_string(),
        format!("COPY --from=s /up{o}/secret /f"),
        "COPY --from=s / /g/".to_string(),
    ];
    let mut built = 0;
    for (i, copy) in copies.iter().enumerate() {
        let dockerfile = format!(
            "FROM busybox AS s\n\
             RUN ln -s {o}/secret /lnk && ln -s /etc/shadow /shd \
             && ln -s ../../../../../../../.. /up && mkdir /d && ln -s {o} /d/out\n\
             FROM scratch\n\
             {copy}\n"
        );
        let ctx = k.context(&format!("ctx{i}"), &[("Dockerfile", &dockerfile)]);
        let dest = k.dir().join(format!("stage-out-{i}"));
        let local = format!("type=local,dest={}", dest.display());
        let run = k.build(&ctx, &["--output", &local]);
        assert!(!run.stderr.contains("panicked"), "{copy}: {}", run.stderr);
        if run.code == Some(0) {
            built += 1;
        } else {
            assert!(
                run.stderr.contains("Dockerfile:4"),
                "{copy}: {}",
                run.stderr
            );
        }
        let leaked: Vec<PathBuf> = holding(k.dir(), SENTINEL.as_bytes())
            .into_iter()
            .chain(holding(&k.root, SENTINEL.as_bytes()))
            .filter(|p| !p.starts_with(&outside))
            .collect();
        assert!(leaked.is_empty(), "{copy}: sentinel in {leaked:?}");
    }
    // The whole stage copies, its links as links.
    assert!(built >= 1);
    let link = std::fs::read_link(
        k.dir()
            .join(format!("stage-out-{}/g/lnk", copies.len() - 1)),
    );
    assert_eq!(link.unwrap(), outside.join("secret"));
}
