//! The image config a build writes: WORKDIR, ENV, USER, CMD, ENTRYPOINT, EXPOSE, LABEL, and
//! history entries worded as BuildKit words them.

use serde_json::{Value, json};

use crate::export_oci::layout_image;
use crate::support::{Kiln, read_tar};

const DOCKERFILE: &str = r#"FROM busybox
ENV GREETING=hello MODE=test
WORKDIR /app
RUN echo 'app:x:1000:1000:app:/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1000:' >> /etc/group && mkdir -p /home/app && chown app:app /home/app
COPY main.txt .
RUN echo this step writes nothing
USER app
RUN id -u > /home/app/uid
LABEL org.example.title="kiln test" version=1
EXPOSE 8080 53/udp
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo $GREETING from $(id -un) in $(pwd)"]
"#;

#[test]
fn image_config_and_history() {
    let Some(k) = Kiln::new("image_config_and_history") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", DOCKERFILE), ("main.txt", "main\n")]);
    let dest = k.dir().join("image.tar");
    let name = k.unique("config");
    let spec = format!("type=oci,dest={}", dest.display());
    k.build(&ctx, &["-t", &name, "-o", &spec, "--load"]).ok();

    let (_, image) = layout_image(&read_tar(&dest).unwrap());
    let c = &image["config"];
    assert_eq!(c["WorkingDir"], "/app");
    assert_eq!(c["User"], "app");
    let env: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        env.contains(&"GREETING=hello") && env.contains(&"MODE=test"),
        "{env:?}"
    );
    assert!(env.iter().any(|e| e.starts_with("PATH=")), "{env:?}");
    assert_eq!(c["Entrypoint"], json!(["/bin/sh", "-c"]));
    assert_eq!(c["Cmd"], json!(["echo $GREETING from $(id -un) in $(pwd)"]));
    assert_eq!(c["ExposedPorts"], json!({"53/udp": {}, "8080/tcp": {}}));
    assert_eq!(
        c["Labels"],
        json!({"org.example.title": "kiln test", "version": "1"})
    );

    let history = image["history"].as_array().unwrap();
    let expected_len = 11;
    assert!(history.len() > expected_len, "{history:?}");
    // The base image's entries come first.
    let ours: Vec<(&str, bool)> = history[history.len() - expected_len..]
        .iter()
        .inspect(|h| assert_eq!(h["comment"], "buildkit.dockerfile.v0"))
        .map(|h| (h["created_by"].as_str().unwrap(), h["empty_layer"] == true))
        .collect();
    let expected = vec![
        ("ENV GREETING=hello MODE=test", true),
        ("WORKDIR /app", false),
        (
            "RUN /bin/sh -c echo 'app:x:1000:1000:app:/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1000:' >> /etc/group && mkdir -p /home/app && chown app:app /home/app # buildkit",
            false,
        ),
        ("COPY main.txt . # buildkit", false),
        // runc's mount stubs leave nothing: an empty layer, as BuildKit v0.32.2 exports it.
        (
            "RUN /bin/sh -c echo this step writes nothing # buildkit",
            false,
        ),
        ("USER app", true),
        ("RUN /bin/sh -c id -u > /home/app/uid # buildkit", false),
        ("LABEL org.example.title=kiln test version=1", true),
        ("EXPOSE [53/udp 8080/tcp]", true),
        (r#"ENTRYPOINT ["/bin/sh" "-c"]"#, true),
        (r#"CMD ["echo $GREETING from $(id -un) in $(pwd)"]"#, true),
    ];
    assert_eq!(ours, expected);
    let last_created = history.last().unwrap()["created"].clone();
    assert!(last_created.is_string());
    assert_eq!(image["created"], last_created);
    let layers = image["rootfs"]["diff_ids"].as_array().unwrap().len();
    assert_eq!(
        history.iter().filter(|h| h["empty_layer"] != true).count(),
        layers
    );

    // The config takes effect: user, workdir, env, entrypoint + cmd.
    let out = k.kiln(&["run", &name]).ok();
    assert_eq!(out.stdout, "hello from app in /app\n");
    let out = k.kiln(&["run", &name, "cat /home/app/uid; id -u"]).ok();
    assert_eq!(out.stdout, "1000\n1000\n", "RUN after USER ran as the user");
}
