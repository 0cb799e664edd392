//! The phases of the benchmark: which workload, from which state, measuring what.

/// What one phase measures. Every phase starts from a state its preparation makes, untimed.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Empty cache, base image present; time the build.
    Cold,
    /// Build once, then time a rebuild with nothing changed.
    Unchanged,
    /// Build once, change this context file, time the rebuild.
    Edit(&'static str),
    /// Cold build and export to an archive, timed together.
    BuildExport,
    /// Build once, time the export alone.
    Export,
    /// Build an image with new content, time its push.
    PushNew,
    /// Push an image, time pushing it again.
    PushUnchanged,
    /// Cold builds with and without ten `RUN` steps; the figure is the difference over ten.
    RunStep,
    /// Base image present; time a build of the context as a tarball on stdin (`build -`) with
    /// this Dockerfile of the tarball: the workload's own (`Dockerfile`) or `Dockerfile.one`,
    /// which copies its one small file `app.txt`.
    StdinTar(&'static str),
    /// The CI case (issue 17): an empty data root (no base image either) and a registry cache
    /// written by an earlier build of the same context; time the build that imports it, its
    /// result written as an OCI tarball or, with `push`, pushed to the registry that already
    /// holds its layers. With `edit`, that context file changes before the timed build.
    CiCache {
        edit: Option<&'static str>,
        push: bool,
    },
}

/// A base image made present before a cold build, for these platforms (`None`: this machine's).
#[derive(Debug, Clone, Copy)]
pub struct Base {
    pub name: &'static str,
    pub platforms: Option<&'static str>,
}

pub struct Phase {
    pub id: &'static str,
    pub workload: &'static str,
    pub bases: &'static [Base],
    pub kind: Kind,
    /// Target for kiln's median, seconds (from the issue that set them).
    pub target: Option<f64>,
    /// Target for kiln's median over BuildKit v0.32.2's in the same run.
    pub ratio_target: Option<f64>,
    /// `--platform` of every build of the phase (several: one multi-platform build).
    pub platforms: Option<&'static str>,
    /// Few runs: each takes many seconds.
    pub heavy: bool,
    /// Bound by the network (Debian's mirror), reported apart.
    pub network: bool,
    /// The tools that can run it; `None`: all.
    pub tools: Option<&'static [&'static str]>,
}

const fn base(name: &'static str) -> Base {
    Base {
        name,
        platforms: None,
    }
}

const BUSYBOX: &[Base] = &[base("library/busybox:latest")];
const DEBIAN: &[Base] = &[base("library/debian:bookworm-slim")];
const BOTH: &str = "linux/amd64,linux/arm64";
/// W9: the cross compiler runs on this machine; the final stages are per platform.
const CROSS: &[Base] = &[
    base("library/gcc:bookworm-cross"),
    Base {
        name: "library/busybox:multi",
        platforms: Some(BOTH),
    },
];
const MULTI: &[Base] = &[Base {
    name: "library/busybox:multi",
    platforms: Some(BOTH),
}];
/// The tools that take `--platform a,b` and `--cache-to/--cache-from type=registry`: Docker
/// 20.10's builder and Buildah's `bud` do neither the way buildx does.
const CURRENT: Option<&[&str]> = Some(&["kiln", "buildkit32"]);

pub const PHASES: &[Phase] = &[
    phase("w1-cold", "w1-small-app", BUSYBOX, Kind::Cold, Some(1.6)),
    phase(
        "w2-noop",
        "w1-small-app",
        BUSYBOX,
        Kind::Unchanged,
        Some(0.05),
    ),
    phase(
        "w3-edit",
        "w1-small-app",
        BUSYBOX,
        Kind::Edit("app.txt"),
        Some(0.25),
    ),
    heavy(phase(
        "w4-cold",
        "w4-big-context",
        BUSYBOX,
        Kind::Cold,
        Some(2.5),
    )),
    phase(
        "w4-noop",
        "w4-big-context",
        BUSYBOX,
        Kind::Unchanged,
        Some(0.3),
    ),
    phase(
        "w4-edit",
        "w4-big-context",
        BUSYBOX,
        Kind::Edit("app.txt"),
        Some(1.0),
    ),
    heavy(phase(
        "w5-cold",
        "w5-parallel-stages",
        BUSYBOX,
        Kind::Cold,
        Some(3.3),
    )),
    heavy(phase(
        "w6-build-export",
        "w6-big-layer",
        BUSYBOX,
        Kind::BuildExport,
        Some(3.5),
    )),
    heavy(phase(
        "w6-export",
        "w6-big-layer",
        BUSYBOX,
        Kind::Export,
        None,
    )),
    heavy(phase(
        "w7-push-new",
        "w7-push",
        BUSYBOX,
        Kind::PushNew,
        Some(1.2),
    )),
    phase(
        "w7-push-unchanged",
        "w7-push",
        BUSYBOX,
        Kind::PushUnchanged,
        Some(0.03),
    ),
    Phase {
        network: true,
        ..heavy(phase(
            "w8-cold",
            "w8-debian-python",
            DEBIAN,
            Kind::Cold,
            None,
        ))
    },
    phase(
        "w8-edit",
        "w8-debian-python",
        DEBIAN,
        Kind::Edit("app.py"),
        Some(0.3),
    ),
    // Issue 15: the W4 context as a tarball on stdin (Buildah cannot read one from stdin).
    Phase {
        tools: Some(&["kiln", "buildkit", "buildkit32"]),
        ..heavy(phase(
            "w4-stdin-all",
            "w4-big-context",
            BUSYBOX,
            Kind::StdinTar("Dockerfile"),
            None,
        ))
    },
    Phase {
        tools: Some(&["kiln", "buildkit", "buildkit32"]),
        ..phase(
            "w4-stdin-one",
            "w4-big-context",
            BUSYBOX,
            Kind::StdinTar("Dockerfile.one"),
            None,
        )
    },
    // Issue 16: W9 cross-compiles a C program on this machine for both platforms (nothing
    // emulated); W10 runs ~0.9 s of shell per platform, the arm64 one under QEMU.
    Phase {
        tools: CURRENT,
        platforms: Some(BOTH),
        ..phase("w9-cross", "w9-cross", CROSS, Kind::Cold, Some(0.8))
    },
    Phase {
        tools: CURRENT,
        platforms: Some(BOTH),
        ratio_target: Some(0.9),
        ..heavy(phase(
            "w10-emulated",
            "w10-emulated",
            MULTI,
            Kind::Cold,
            None,
        ))
    },
    // Issue 17: the CI case, from an empty data root with a registry cache.
    Phase {
        tools: CURRENT,
        ..phase(
            "w1-ci-oci",
            "w1-small-app",
            BUSYBOX,
            Kind::CiCache {
                edit: None,
                push: false,
            },
            Some(0.2),
        )
    },
    Phase {
        tools: CURRENT,
        ..phase(
            "w1-ci-push",
            "w1-small-app",
            BUSYBOX,
            Kind::CiCache {
                edit: None,
                push: true,
            },
            Some(0.08),
        )
    },
    Phase {
        tools: CURRENT,
        ..phase(
            "w3-ci-edit",
            "w1-small-app",
            BUSYBOX,
            Kind::CiCache {
                edit: Some("app.txt"),
                push: false,
            },
            None,
        )
    },
    Phase {
        tools: CURRENT,
        ..heavy(phase(
            "w4-ci-oci",
            "w4-big-context",
            BUSYBOX,
            Kind::CiCache {
                edit: None,
                push: false,
            },
            None,
        ))
    },
    phase(
        "run-step",
        "run-overhead",
        BUSYBOX,
        Kind::RunStep,
        Some(0.06),
    ),
];

pub const fn phase(
    id: &'static str,
    workload: &'static str,
    bases: &'static [Base],
    kind: Kind,
    target: Option<f64>,
) -> Phase {
    Phase {
        id,
        workload,
        bases,
        kind,
        target,
        ratio_target: None,
        platforms: None,
        heavy: false,
        network: false,
        tools: None,
    }
}

pub const fn heavy(p: Phase) -> Phase {
    Phase { heavy: true, ..p }
}
