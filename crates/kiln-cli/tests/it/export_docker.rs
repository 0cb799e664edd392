//! `-o type=docker,dest=X.tar`: `docker load` takes it, and `docker run` prints what
//! `kiln run` prints.

use crate::support::{Kiln, PrivateDockerd, dockerd_for};

const DOCKERFILE: &str = "FROM busybox
ENV GREETING=hello
WORKDIR /app
COPY msg.txt .
RUN echo \"built by kiln\" > built.txt
CMD [\"sh\", \"-c\", \"echo $GREETING; pwd; cat msg.txt built.txt; id -u\"]
";

#[test]
fn docker_output_loads_and_runs_like_kiln_run() {
    const TEST: &str = "docker_output_loads_and_runs_like_kiln_run";
    let Some(dockerd) = dockerd_for(TEST) else {
        return;
    };
    let Some(k) = Kiln::new(TEST) else { return };
    let ctx = k.context(
        "ctx",
        &[("Dockerfile", DOCKERFILE), ("msg.txt", "a message\n")],
    );
    let dest = k.dir().join("image.tar");
    let name = format!("{}:latest", k.unique("kiln-it-docker"));
    let spec = format!("type=docker,dest={}", dest.display());
    let iidfile = k.dir().join("iid");
    let iidfile_arg = iidfile.to_string_lossy().into_owned();
    k.build(
        &ctx,
        &[
            "-t",
            &name,
            "-o",
            &spec,
            "--load",
            "--iidfile",
            &iidfile_arg,
        ],
    )
    .ok();
    let image_id = std::fs::read_to_string(&iidfile).unwrap();
    assert!(image_id.starts_with("sha256:"), "{image_id}");
    let kiln_out = k.kiln(&["run", &name]).ok().stdout;
    assert_eq!(kiln_out, "hello\n/app\na message\nbuilt by kiln\n0\n");

    // A short path: the socket must fit in sun_path.
    let docker = PrivateDockerd::start(&dockerd);
    let daemon = &docker.daemon;
    let loaded = daemon
        .run(&["load", "-i", &dest.to_string_lossy()])
        .unwrap();
    assert!(
        loaded.contains(&format!("Loaded image: {name}")),
        "{loaded}"
    );
    let id = daemon
        .run(&["image", "inspect", "--format", "{{.Id}}", &name])
        .unwrap();
    assert_eq!(
        id.trim(),
        image_id,
        "docker's image ID is kiln's config digest"
    );
    let docker_out = daemon
        .run(&["run", "--rm", "--network", "none", &name])
        .unwrap();
    assert_eq!(docker_out, kiln_out);
}
