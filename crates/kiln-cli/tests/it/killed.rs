//! Issue 13: kiln killed with SIGKILL at a bad moment. A partial blob in the content store's
//! `ingest/` goes at the next kiln command, but never one a live kiln is still writing; an
//! archive written to `dest=FILE` (or `kiln save -o FILE`) replaces FILE only once whole.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Kiln, read_tar};

/// The partial blobs in the data root's ingest area: (name, bytes so far).
fn ingest(k: &Kiln) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = std::fs::read_dir(k.root.join("content/ingest"))
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let size = e.metadata().map_or(0, |m| m.len());
                    (e.file_name().to_string_lossy().into_owned(), size)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// `kiln load` reading from a pipe the test feeds slowly: an archive whose first entry is a
/// 1 GiB blob, fed until a new ingest file holds at least 1 MiB of it. Returns the process, its
/// stdin (kept open, so the blob stays unfinished) and the name of the ingest file.
fn start_slow_load(k: &Kiln) -> (Child, ChildStdin, String) {
    let before = ingest(k);
    let mut child = k
        .command(&["load"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting kiln load");
    let mut stdin = child.stdin.take().unwrap();
    let mut header = tar::Header::new_gnu();
    header
        .set_path(format!("blobs/sha256/{}", "0".repeat(64)))
        .unwrap();
    header.set_size(1 << 30);
    header.set_mode(0o644);
    header.set_cksum();
    stdin.write_all(header.as_bytes()).unwrap();
    let chunk = vec![0x5au8; 256 * 1024];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut new = Vec::new();
    while Instant::now() < deadline && stdin.write_all(&chunk).is_ok() {
        new = ingest(k)
            .into_iter()
            .filter(|(n, _)| !before.iter().any(|(b, _)| b == n))
            .collect();
        if let [(name, size)] = new.as_slice()
            && *size >= 1 << 20
        {
            let name = name.clone();
            return (child, stdin, name);
        }
    }
    kill9(child);
    panic!("kiln load wrote no partial blob: {new:?}");
}

fn kill9(mut child: Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reaping kiln");
}

/// A stale partial blob (its kiln killed) goes at the next kiln command, which also counts and
/// leaves alone the one a concurrent, live kiln is still writing; once that one is killed too,
/// nothing is left and `kiln du` says so.
#[test]
fn issue_13_sigkill_mid_write_leaves_no_partial_blob() {
    let Some(k) = Kiln::new("issue_13_sigkill_mid_write_leaves_no_partial_blob") else {
        return;
    };
    let (killed, killed_stdin, stale) = start_slow_load(&k);
    let (live, live_stdin, held) = start_slow_load(&k);
    kill9(killed);
    drop(killed_stdin);
    let names: Vec<String> = ingest(&k).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        sorted([stale.clone(), held.clone()]),
        "before cleanup"
    );

    // The next command (here `kiln du`) removes the dead writer's file only.
    let du = k.kiln(&["du"]).ok().stdout;
    let names: Vec<String> = ingest(&k).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, std::slice::from_ref(&held), "{du}");
    assert!(
        du.contains(&format!("{held}*")) && du.contains("partial"),
        "the live partial blob is listed, in use:\n{du}"
    );
    assert!(!du.contains("Partial:\t0B"), "{du}");
    assert!(!du.contains("Total:\t\t0B"), "{du}");

    // Nor does prune take it.
    k.kiln(&["prune", "-f"]).ok();
    assert_eq!(ingest(&k).len(), 1);

    kill9(live);
    drop(live_stdin);
    let du = k.kiln(&["du"]).ok().stdout;
    assert_eq!(ingest(&k), Vec::<(String, u64)>::new(), "{du}");
    assert!(du.contains("Partial:\t0B"), "{du}");
    assert!(du.contains("Total:\t\t0B"), "{du}");
}

fn sorted<const N: usize>(mut v: [String; N]) -> [String; N] {
    v.sort();
    v
}

/// The temp files of an archive written to `dir/name`.
fn archive_temps(dir: &Path, name: &str) -> Vec<String> {
    let prefix = format!(".{name}.kiln-tmp-");
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Fails unless `path` still holds the old archive (without printing megabytes of a new one).
#[track_caller]
fn assert_old(path: &Path, context: &str) {
    match std::fs::read(path) {
        Ok(got) => assert!(
            got == b"old archive",
            "{context}\n`{}` was replaced ({} bytes)",
            path.display(),
            got.len()
        ),
        Err(e) => panic!("{context}\n`{}` is gone: {e}", path.display()),
    }
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: PathBuf, size: &str) -> Option<SmallFs> {
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallFs(dir))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// An export that fails half-way (the disk is full) leaves the old archive as it was and no
/// temp file, for `--output type=oci`, `type=tar` and `kiln save -o`; one that succeeds
/// replaces it.
#[test]
fn issue_13_failed_export_keeps_the_old_archive() {
    let Some(k) = Kiln::new("issue_13_failed_export_keeps_the_old_archive") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN head -c 6000000 /dev/urandom > /big\n",
        )],
    );
    let name = k.unique("full");
    k.build(&ctx, &["-t", &name]).ok();
    let Some(small) = SmallFs::mount(k.dir().join("small"), "2m") else {
        if crate::support::require_external() {
            panic!("cannot mount a tmpfs");
        }
        eprintln!("skipping: cannot mount a tmpfs");
        return;
    };
    let dest = small.0.join("image.tar");
    std::fs::write(&dest, b"old archive").unwrap();
    for kind in ["oci", "docker", "tar"] {
        let spec = format!("type={kind},dest={}", dest.display());
        let run = k.build(&ctx, &["-o", &spec]).failed();
        assert_old(&dest, &format!("type={kind}: {}", run.stderr));
        assert_eq!(archive_temps(&small.0, "image.tar"), Vec::<String>::new());
    }
    let run = k
        .kiln(&["save", "-o", dest.to_str().unwrap(), &name])
        .failed();
    assert_old(&dest, &format!("kiln save: {}", run.stderr));
    assert_eq!(archive_temps(&small.0, "image.tar"), Vec::<String>::new());

    // With room, the archive is replaced whole.
    let dest = k.dir().join("image.tar");
    std::fs::write(&dest, b"old archive").unwrap();
    let spec = format!("type=oci,dest={}", dest.display());
    k.build(&ctx, &["-o", &spec]).ok();
    let files = read_tar(&dest).expect("a whole archive");
    assert!(files.contains_key("index.json"), "{:?}", files.keys());
    k.kiln(&["save", "-o", dest.to_str().unwrap(), &name]).ok();
    assert!(read_tar(&dest).unwrap().contains_key("manifest.json"));
    assert_eq!(archive_temps(k.dir(), "image.tar"), Vec::<String>::new());
}

/// SIGKILL while `--output type=tar,dest=FILE` writes: FILE is still the old one; the next
/// export to it removes the dead one's temp file and replaces FILE whole.
#[test]
fn issue_13_sigkill_mid_export_keeps_the_old_archive() {
    let Some(k) = Kiln::new("issue_13_sigkill_mid_export_keeps_the_old_archive") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN head -c 200000000 /dev/zero > /big\n",
        )],
    );
    k.build(&ctx, &[]).ok();
    let dest = k.dir().join("rootfs.tar");
    std::fs::write(&dest, b"old archive").unwrap();
    let spec = format!("type=tar,dest={}", dest.display());
    let mut caught = false;
    // The write takes a moment (200 MB, then fsync); try again should the kill miss it.
    for _ in 0..3 {
        let mut child = k
            .command(&["build", "--progress", "plain", "-o", &spec])
            .arg(&ctx)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting kiln build");
        // Writing has begun: a temp file beside FILE, or FILE itself changing.
        let writing = || {
            !archive_temps(k.dir(), "rootfs.tar").is_empty()
                || std::fs::metadata(&dest).map_or(true, |m| m.len() != 11)
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !writing() && child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let running = child.try_wait().unwrap().is_none();
        kill9(child);
        if running && writing() {
            caught = true;
            break;
        }
        // Missed: the export had finished. Put the old file back and try again.
        std::fs::write(&dest, b"old archive").unwrap();
    }
    assert!(caught, "the kill never landed during the export");
    assert_old(&dest, "after the kill");
    assert_eq!(archive_temps(k.dir(), "rootfs.tar").len(), 1);

    k.build(&ctx, &["-o", &spec]).ok();
    let files = read_tar(&dest).expect("a whole archive");
    assert_eq!(files.get("big").map(Vec::len), Some(200_000_000));
    assert_eq!(archive_temps(k.dir(), "rootfs.tar"), Vec::<String>::new());
    // The killed build's step dirs and mounts are gone too (checked when `k` drops).
}
