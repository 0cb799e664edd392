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
}

pub struct Phase {
    pub id: &'static str,
    pub workload: &'static str,
    pub base: &'static str,
    pub kind: Kind,
    /// Target for kiln's median, seconds (from the issue that set them).
    pub target: Option<f64>,
    /// Few runs: each takes many seconds.
    pub heavy: bool,
    /// Bound by the network (Debian's mirror), reported apart.
    pub network: bool,
    /// The tools that can run it; `None`: all three.
    pub tools: Option<&'static [&'static str]>,
}

const BUSYBOX: &str = "library/busybox:latest";
const DEBIAN: &str = "library/debian:bookworm-slim";

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
        tools: Some(&["kiln", "buildkit"]),
        ..heavy(phase(
            "w4-stdin-all",
            "w4-big-context",
            BUSYBOX,
            Kind::StdinTar("Dockerfile"),
            None,
        ))
    },
    Phase {
        tools: Some(&["kiln", "buildkit"]),
        ..phase(
            "w4-stdin-one",
            "w4-big-context",
            BUSYBOX,
            Kind::StdinTar("Dockerfile.one"),
            None,
        )
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
    base: &'static str,
    kind: Kind,
    target: Option<f64>,
) -> Phase {
    Phase {
        id,
        workload,
        base,
        kind,
        target,
        heavy: false,
        network: false,
        tools: None,
    }
}

pub const fn heavy(p: Phase) -> Phase {
    Phase { heavy: true, ..p }
}
