//! RUN --mount: cache dirs persist across builds but stay out of images; bind mounts from the
//! context and from stages (writes discarded); tmpfs.

use crate::support::Kiln;

#[test]
fn cache_mount_persists_and_stays_out_of_the_image() {
    let Some(k) = Kiln::new("cache_mount_persists_and_stays_out_of_the_image") else {
        return;
    };
    let dockerfile = "FROM busybox
RUN --mount=type=cache,target=/root/.cache true
RUN --mount=type=cache,id=counter,target=/c echo x >> /c/n && wc -l < /c/n > /count
";
    let ctx = k.context("ctx", &[("Dockerfile", dockerfile)]);
    let tag = k.unique("cache");
    k.build(&ctx, &["-t", &tag]).ok();
    let first = k.kiln(&["run", &tag, "cat", "/count"]).ok().stdout;
    k.build(&ctx, &["--no-cache", "-t", &tag]).ok();
    let second = k.kiln(&["run", &tag, "cat", "/count"]).ok().stdout;
    assert_eq!(first.trim(), "1");
    assert_eq!(second.trim(), "2");
    // Neither the cache contents nor the mount points are in the image.
    let out = k
        .kiln(&[
            "run",
            &tag,
            "sh",
            "-c",
            "ls -a /root; test ! -e /c && test ! -e /root/.cache && echo absent",
        ])
        .ok();
    assert!(out.stdout.contains("absent"), "{}", out.stdout);
    assert!(
        k.dir().join("root/cache-mounts").exists() || cache_dir_exists(k.dir()),
        "no cache-mounts dir under the data root"
    );
    k.assert_clean();
}

fn cache_dir_exists(dir: &std::path::Path) -> bool {
    walk(dir).iter().any(|p| p.ends_with("cache-mounts"))
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn bind_mounts_from_context_and_stage() {
    let Some(k) = Kiln::new("bind_mounts_from_context_and_stage") else {
        return;
    };
    let dockerfile = "FROM busybox AS gen
RUN mkdir /out && echo from-stage > /out/s.txt

FROM busybox
RUN --mount=target=/ctx cat /ctx/data/a.txt > /a
RUN --mount=type=bind,from=gen,source=out,target=/g cat /g/s.txt > /s
RUN --mount=type=bind,source=data,target=/w,rw echo changed > /w/a.txt && cat /w/a.txt > /rw
RUN --mount=type=tmpfs,target=/t,size=1m echo t > /t/f && grep -q tmpfs /proc/mounts && cat /t/f > /tm
";
    let ctx = k.context(
        "ctx",
        &[("Dockerfile", dockerfile), ("data/a.txt", "from-context\n")],
    );
    let tag = k.unique("bind");
    k.build(&ctx, &["-t", &tag]).ok();
    let out = k
        .kiln(&[
            "run",
            &tag,
            "sh",
            "-c",
            "cat /a /s /rw /tm; test ! -e /ctx && test ! -e /g && test ! -e /w && test ! -e /t && echo clean",
        ])
        .ok();
    assert_eq!(out.stdout, "from-context\nfrom-stage\nchanged\nt\nclean\n");
    // The rw write went to a throwaway layer, not the context.
    let a = std::fs::read_to_string(ctx.join("data/a.txt")).unwrap();
    assert_eq!(a, "from-context\n");

    // The bound context content is in the cache key: a change reruns the step.
    std::fs::write(ctx.join("data/a.txt"), "edited\n").unwrap();
    let p = k.build(&ctx, &["-t", &tag]).ok().progress();
    assert!(!p.step("RUN --mount=target=/ctx").cached, "{}", p.raw());
    let out = k.kiln(&["run", &tag, "cat", "/a"]).ok();
    assert_eq!(out.stdout, "edited\n");
    k.assert_clean();
}

#[test]
fn bad_mount_keys_are_located_errors() {
    let Some(k) = Kiln::new("bad_mount_keys_are_located_errors") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,target=/c,bogus=1 true\n",
        )],
    );
    let out = k.build(&ctx, &[]).failed();
    assert!(out.stderr.contains("bogus"), "{}", out.stderr);
    assert!(out.stderr.contains(":2"), "{}", out.stderr);
}

/// A value no file of the data root can contain by chance.
fn random_secret() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut s = String::from("kiln-secret-");
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .elapsed()
                .map_or(0, |d| d.as_nanos()),
        );
        s.push_str(&format!("{:016x}", h.finish()));
    }
    s
}

/// Every file under `root` that contains `needle`, looking inside gzip streams too.
fn files_containing(root: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    use std::io::Read;
    let has = |data: &[u8]| data.windows(needle.len()).any(|w| w == needle);
    let mut found = Vec::new();
    for p in walk(root) {
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
            let Ok(data) = std::fs::read(&p) else {
                continue;
            };
            let mut hit = has(&data);
            if !hit && data.starts_with(&[0x1f, 0x8b]) {
                let mut plain = Vec::new();
                if flate2::read::MultiGzDecoder::new(&data[..])
                    .read_to_end(&mut plain)
                    .is_ok()
                {
                    hit = has(&plain);
                }
            }
            if hit {
                found.push(p);
            }
        }
    }
    found
}

#[test]
fn secrets_reach_run_but_nothing_else() {
    let Some(k) = Kiln::new("secrets_reach_run_but_nothing_else") else {
        return;
    };
    let secret = random_secret();
    let secret_file = k.dir().join("secret.txt");
    std::fs::write(&secret_file, &secret).unwrap();
    let dockerfile = "FROM busybox
RUN --mount=type=secret,id=tok,required=true --mount=type=secret,id=envtok,env=TOK \
    test -n \"$TOK\" && test \"$(cat /run/secrets/tok)\" = \"$TOK\" \
    && wc -c < /run/secrets/tok > /len && stat -c %a /run/secrets/tok > /mode
RUN --mount=type=secret,id=absent,target=/s/absent test ! -e /s/absent && echo skipped > /opt
";
    let ctx = k.context("ctx", &[("Dockerfile", dockerfile)]);
    let tag = k.unique("secret");
    let args = [
        "build".to_string(),
        "--progress".into(),
        "plain".into(),
        "--secret".into(),
        format!("id=tok,src={}", secret_file.display()),
        "--secret".into(),
        "id=envtok,env=KILN_IT_SECRET".into(),
        "-t".into(),
        tag.clone(),
        ctx.to_string_lossy().into_owned(),
    ];
    let out = k
        .command(&args)
        .env("KILN_IT_SECRET", &secret)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(!stdout.contains(&secret) && !stderr.contains(&secret));

    let run = k
        .kiln(&[
            "run",
            &tag,
            "sh",
            "-c",
            "cat /len /mode /opt; test ! -e /run/secrets/tok && echo gone",
        ])
        .ok();
    let lines: Vec<&str> = run.stdout.lines().map(str::trim).collect();
    assert_eq!(
        lines,
        [secret.len().to_string().as_str(), "400", "skipped", "gone"]
    );

    let leaks = files_containing(&k.dir().join("root"), secret.as_bytes());
    assert!(leaks.is_empty(), "the secret leaked into {leaks:?}");
    // The check itself works: the secret file outside the data root is found.
    assert_eq!(files_containing(k.dir(), secret.as_bytes()), [secret_file]);
    k.assert_clean();
}

#[test]
fn missing_required_secret_fails() {
    let Some(k) = Kiln::new("missing_required_secret_fails") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=secret,id=nope,required=true true\n",
        )],
    );
    let out = k.build(&ctx, &[]).failed();
    assert!(
        out.stderr.contains("secret `nope` not found"),
        "{}",
        out.stderr
    );
    k.assert_clean();
}

/// A bind mount of the context shows what COPY would see: .dockerignore'd files are not there.
#[test]
fn bind_mount_of_the_context_honours_dockerignore() {
    let Some(k) = Kiln::new("bind_mount_of_the_context_honours_dockerignore") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM busybox\nRUN --mount=type=bind,target=/ctx ls -a /ctx > /listing\n\
                 RUN --mount=type=bind,source=sub,target=/sub ls /sub > /sub-listing\n",
            ),
            (".dockerignore", "*.secret\nsub/*.log\n"),
            ("kept.txt", "k"),
            ("token.secret", "s"),
            ("sub/a.txt", "a"),
            ("sub/b.log", "b"),
        ],
    );
    let name = k.unique("bind-ignore");
    k.build(&ctx, &["-t", &name]).ok();
    let listing = k.kiln(&["run", &name, "cat", "/listing"]).ok().stdout;
    assert!(listing.lines().any(|l| l == "kept.txt"), "{listing}");
    assert!(!listing.contains("token.secret"), "{listing}");
    let sub = k.kiln(&["run", &name, "cat", "/sub-listing"]).ok().stdout;
    assert_eq!(sub, "a.txt\n");
}
