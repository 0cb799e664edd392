//! `kiln build --pin FILE`: the first build writes what each tag resolved to; later builds use
//! those digests although the tag moved, and add references the file lacks. BuildKit has no
//! such feature (moby/buildkit#706), so there is nothing of it to compare with.

use serde_json::Value;

use crate::support::Kiln;

#[test]
fn pin_file_keeps_a_moved_tag_on_the_pinned_image() {
    let Some(k) = Kiln::new("pin_file_keeps_a_moved_tag_on_the_pinned_image") else {
        return;
    };
    let base = format!("{}/{}:v", k.registry, k.unique("pin-base"));
    let push_base = |content: &str| k.push_marked_base(&base, content);
    push_base("one");
    let ctx = k.context(
        "ctx",
        &[("Dockerfile", &format!("FROM {base}\nRUN cp /base /seen\n"))],
    );
    let pins = k.dir().join("pins.json");
    let seen = |extra: &[&str]| {
        let out = k.dir().join(k.unique("out"));
        let dest = format!("type=local,dest={}", out.display());
        let mut args = vec!["-o", dest.as_str()];
        args.extend_from_slice(extra);
        k.build(&ctx, &args).ok();
        std::fs::read_to_string(out.join("seen")).unwrap()
    };
    let pin_arg = pins.to_str().unwrap();

    // No file yet: the build runs as usual and writes what the tag resolved to.
    assert_eq!(seen(&["--pin", pin_arg]), "one\n");
    let written: Value = serde_json::from_slice(&std::fs::read(&pins).unwrap()).unwrap();
    let images = written["images"].as_object().unwrap();
    assert_eq!(images.len(), 1, "{written}");
    let pinned = images[&base]["linux/amd64"].as_str().unwrap().to_string();
    assert!(pinned.starts_with("sha256:"), "{written}");

    // The tag moves: with the file the old image is used, without it the new one.
    push_base("two");
    assert_eq!(seen(&["--pin", pin_arg]), "one\n");
    assert_eq!(seen(&[]), "two\n");
    let unchanged: Value = serde_json::from_slice(&std::fs::read(&pins).unwrap()).unwrap();
    assert_eq!(unchanged, written);
    // A pinned image already stored needs no lookup: it builds with the registry dead.
    let out = k.dir().join("offline-out");
    let dest = format!("type=local,dest={}", out.display());
    let dead = crate::offline::dead_config(&k);
    crate::offline::build_with(
        &k,
        &dead,
        &ctx,
        &["--offline", "--pin", pin_arg, "-o", &dest],
    )
    .ok();
    assert_eq!(std::fs::read_to_string(out.join("seen")).unwrap(), "one\n");

    // A reference the file lacks is resolved as usual and added; the pinned one stays.
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {base}\nCOPY --from=busybox:bare /bin/busybox /bb\nRUN cp /base /seen\n"),
    )
    .unwrap();
    assert_eq!(seen(&["--pin", pin_arg]), "one\n");
    let added: Value = serde_json::from_slice(&std::fs::read(&pins).unwrap()).unwrap();
    assert_eq!(added["images"][&base]["linux/amd64"], pinned.as_str());
    assert!(
        added["images"]["docker.io/library/busybox:bare"]["linux/amd64"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{added}"
    );
}

#[test]
fn pin_file_that_is_not_one_is_an_error() {
    let Some(k) = Kiln::new("pin_file_that_is_not_one_is_an_error") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", "FROM busybox\n")]);
    let pins = k.dir().join("pins.json");
    std::fs::write(&pins, "{\"busybox\": \"sha256:0\"}").unwrap();
    let run = k.build(&ctx, &["--pin", pins.to_str().unwrap()]).failed();
    assert!(
        run.stderr.contains(&format!(
            "--pin file `{}` is not a kiln pin file",
            pins.display()
        )),
        "{}",
        run.stderr
    );
}
