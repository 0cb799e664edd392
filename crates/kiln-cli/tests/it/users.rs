//! Users and owners as BuildKit v0.32.2 gives them (each expectation was checked against it):
//! a RUN without USER is uid 0 with no lookup of "root", so an image without /etc/passwd
//! builds; a numeric USER with no passwd entry runs with gid 0; file operations (`--chown`,
//! WORKDIR under USER) take a numeric user as uid and gid both and a name they cannot find as 0.

use std::collections::BTreeMap;
use std::path::Path;

use crate::support::Kiln;

/// The `uid/gid` of every entry of a `type=tar` export, by path.
fn owners(tar_path: &Path) -> BTreeMap<String, String> {
    let mut archive = tar::Archive::new(std::fs::File::open(tar_path).unwrap());
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            let path = e
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string();
            (path, format!("{}/{}", h.uid().unwrap(), h.gid().unwrap()))
        })
        .collect()
}

#[test]
fn issue_14_users_and_owners_follow_buildkit() {
    let Some(k) = Kiln::new("issue_14_users_and_owners_follow_buildkit") else {
        return;
    };
    let dockerfile = "FROM busybox AS bare\n\
        RUN rm /etc/passwd /etc/group && mkdir -m 777 /o\n\
        RUN id -u > /o/default && id -g >> /o/default && id -G >> /o/default\n\
        USER 1234\n\
        RUN id -u > /o/numeric; id -g >> /o/numeric\n\
        WORKDIR /w1234\n\
        USER 1234:66\n\
        WORKDIR /w1234-66\n\
        USER app\n\
        WORKDIR /wapp\n\
        USER 0\n\
        RUN stat -c %u/%g /w1234 /w1234-66 /wapp > /o/workdirs\n\
        COPY --chown=1500 f /c1500\n\
        COPY --chown=nosuch f /cnosuch\n\
        COPY --chown=1500:nogroup f /c1500-nogroup\n\
        FROM busybox AS users\n\
        RUN echo 'odd:x:1500:1600::/:/bin/sh' >> /etc/passwd && echo 'x16:x:1600:' >> /etc/group\n\
        COPY --chown=1500 f /c1500\n\
        COPY --chown=odd f /codd\n\
        COPY --chown=odd:nogroup f /codd-nogroup\n\
        COPY --chown=0:x16 f /c0-x16\n\
        FROM scratch\n\
        COPY --from=bare /o /o\n\
        COPY --from=bare /c* /bare/\n\
        COPY --from=users /c* /users/\n";
    let ctx = k.context("ctx", &[("Dockerfile", dockerfile), ("f", "x\n")]);
    let out = k.dir().join("out.tar");
    let dest = format!("type=tar,dest={}", out.display());
    k.build(&ctx, &["--output", &dest]).ok();
    let owners = owners(&out);
    let expected = [
        ("bare/c1500", "1500/1500"),
        ("bare/cnosuch", "0/0"),
        ("bare/c1500-nogroup", "1500/1500"),
        ("users/c1500", "1500/1500"),
        ("users/codd", "1500/1600"),
        ("users/codd-nogroup", "1500/1600"),
        ("users/c0-x16", "0/1600"),
    ];
    for (path, owner) in expected {
        assert_eq!(
            owners.get(path).map(String::as_str),
            Some(owner),
            "{path}: {owners:?}"
        );
    }
    // The archive holds the RUN outputs; read them back.
    let mut archive = tar::Archive::new(std::fs::File::open(&out).unwrap());
    let mut files = BTreeMap::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut text = String::new();
        if e.header().entry_type().is_file() {
            std::io::Read::read_to_string(&mut e, &mut text).unwrap();
            files.insert(path, text);
        }
    }
    assert_eq!(files["o/default"], "0\n0\n0\n");
    assert_eq!(files["o/numeric"], "1234\n0\n");
    // WORKDIR makes its directory as USER's file owner: 1234 is 1234:1234, an unknown name 0.
    assert_eq!(files["o/workdirs"], "1234/1234\n1234/66\n0/0\n");
}

#[test]
fn issue_14_an_unknown_run_user_is_worded_as_buildkit_words_it() {
    let Some(k) = Kiln::new("issue_14_an_unknown_run_user_is_worded_as_buildkit_words_it") else {
        return;
    };
    let ctx = k.context(
        "u",
        &[("Dockerfile", "FROM busybox\nUSER nosuch\nRUN true\n")],
    );
    let err = k.build(&ctx, &[]).failed().stderr;
    assert!(
        err.contains("unable to find user nosuch: no matching entries in passwd file"),
        "{err}"
    );
    let ctx = k.context(
        "g",
        &[("Dockerfile", "FROM busybox\nUSER 0:nogroup\nRUN true\n")],
    );
    let err = k.build(&ctx, &[]).failed().stderr;
    assert!(
        err.contains("unable to find group nogroup: no matching entries in group file"),
        "{err}"
    );
}
