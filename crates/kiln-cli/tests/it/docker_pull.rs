//! What kiln pushes, a Docker engine pulls and runs: the registry path end to end, with a
//! layer that deletes a file of the base (a whiteout) and one that adds files.

use crate::support::{Kiln, PrivateDockerd, dockerd_for};

const DOCKERFILE: &str = "FROM busybox
ENV GREETING=pulled
WORKDIR /app
COPY msg.txt .
RUN rm /bin/vi && echo \"built by kiln\" > built.txt && mkdir -p /opt/x && ln -s /app/msg.txt /opt/x/link
USER 1000:1000
CMD [\"sh\", \"-c\", \"echo $GREETING; pwd; cat /opt/x/link built.txt; id -u; test -e /bin/vi || echo no-vi\"]
";

#[test]
fn docker_pulls_and_runs_what_kiln_pushed() {
    const TEST: &str = "docker_pulls_and_runs_what_kiln_pushed";
    let Some(dockerd) = dockerd_for(TEST) else {
        return;
    };
    let Some(k) = Kiln::new(TEST) else { return };
    let ctx = k.context(
        "ctx",
        &[("Dockerfile", DOCKERFILE), ("msg.txt", "a message\n")],
    );
    let name = format!("{}/{}:v1", k.registry, k.unique("kiln-it-dockerpull"));
    let iidfile = k.dir().join("iid");
    let iid_arg = iidfile.to_string_lossy().into_owned();
    let meta = k.dir().join("meta.json");
    let meta_arg = meta.to_string_lossy().into_owned();
    k.build(
        &ctx,
        &[
            "-t",
            &name,
            "--push",
            "--iidfile",
            &iid_arg,
            "--metadata-file",
            &meta_arg,
        ],
    )
    .ok();
    let image_id = std::fs::read_to_string(&iidfile).unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let pushed_digest = meta["containerimage.digest"].as_str().unwrap().to_string();
    let kiln_out = k.kiln(&["run", "--rm", &name]).ok().stdout;
    assert_eq!(
        kiln_out,
        "pulled\n/app\na message\nbuilt by kiln\n1000\nno-vi\n"
    );

    let docker = PrivateDockerd::start(&dockerd);
    let daemon = &docker.daemon;
    // Loopback registries are insecure (plain HTTP) to dockerd by default.
    daemon.run(&["pull", &name]).unwrap();
    let inspect = daemon
        .run(&[
            "image",
            "inspect",
            "--format",
            "{{.Id}} {{range .RepoDigests}}{{.}}{{end}}",
            &name,
        ])
        .unwrap();
    let (id, repo_digest) = inspect.trim().split_once(' ').unwrap();
    assert_eq!(id, image_id, "docker's image ID is kiln's config digest");
    assert!(
        repo_digest.ends_with(&format!("@{pushed_digest}")),
        "docker pulled {repo_digest}, kiln pushed {pushed_digest}"
    );
    let docker_out = daemon
        .run(&["run", "--rm", "--network", "none", &name])
        .unwrap();
    assert_eq!(docker_out, kiln_out);
}
