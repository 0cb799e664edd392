//! Real overlayfs mounts: whiteouts and opaque dirs both ways, unmounting, deep stacks.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use kiln_content::ContentStore;
use kiln_snapshot::{
    Compression, LayerStore, cleanup_stale_mounts, mount_overlay, mount_scratch_overlay,
};

use crate::common::*;

fn dirs(root: &Path, names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|n| {
            let p = root.join(n);
            fs::create_dir_all(&p).unwrap();
            p
        })
        .collect()
}

fn listing(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn whiteouts_and_opaque_dirs_survive_commit_and_unpack() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let content = ContentStore::open(root.join("content")).unwrap();
    let layers = LayerStore::open(&root.join("layers")).unwrap();

    // Base layer, unpacked through the store like a pulled image layer.
    let base_tree = root.join("base");
    fs::create_dir_all(base_tree.join("gonedir/sub")).unwrap();
    fs::create_dir_all(base_tree.join("replaced")).unwrap();
    fs::write(base_tree.join("keep"), b"old").unwrap();
    fs::write(base_tree.join("gone.txt"), b"bye").unwrap();
    fs::write(base_tree.join("gonedir/sub/x"), b"x").unwrap();
    fs::write(base_tree.join("replaced/old"), b"old").unwrap();
    let base = layers
        .commit_upper(&base_tree, &content, Compression::Gzip)
        .unwrap();
    let base_dir = layers.dir(&base.diff_id);

    // A build step: delete a file and a dir, replace a dir, modify a file.
    let [upper, work, merged] = dirs(root, &["s1/upper", "s1/work", "s1/merged"])
        .try_into()
        .unwrap();
    let mount = mount_overlay(std::slice::from_ref(&base_dir), &upper, &work, &merged).unwrap();
    fs::remove_file(merged.join("gone.txt")).unwrap();
    fs::remove_dir_all(merged.join("gonedir")).unwrap();
    fs::remove_dir_all(merged.join("replaced")).unwrap();
    fs::create_dir(merged.join("replaced")).unwrap();
    fs::write(merged.join("replaced/new"), b"new").unwrap();
    fs::write(merged.join("keep"), b"modified").unwrap();
    mount.unmount().unwrap();
    assert!(!is_mounted(&merged));

    let step = layers
        .commit_upper(&upper, &content, Compression::Uncompressed)
        .unwrap();
    let tar = content.read(&step.digest).unwrap();
    let names: BTreeSet<String> = tar_names(&tar).into_iter().collect();
    let expected: BTreeSet<String> = [
        ".wh.gone.txt",
        ".wh.gonedir",
        "keep",
        "replaced/",
        "replaced/.wh..wh..opq",
        "replaced/new",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, expected);
    // Overlay's private xattrs never reach the tar.
    let mut ar = tar::Archive::new(&tar[..]);
    for entry in ar.entries().unwrap() {
        let mut entry = entry.unwrap();
        if let Some(exts) = entry.pax_extensions().unwrap() {
            for ext in exts {
                let key = ext.unwrap().key().unwrap().to_string();
                assert!(!key.contains("trusted.overlay"), "leaked {key}");
            }
        }
    }

    // Unpack the step layer elsewhere: OCI markers become overlay whiteouts again.
    let other = LayerStore::open(&root.join("other")).unwrap();
    let step_id = other
        .unpack(&tar[..], &step.media_type, Some(&step.diff_id))
        .unwrap();
    let step_dir = other.dir(&step_id);
    for gone in ["gone.txt", "gonedir"] {
        let md = fs::symlink_metadata(step_dir.join(gone)).unwrap();
        assert!(md.file_type().is_char_device(), "{gone} is a whiteout");
        assert_eq!(md.rdev(), 0);
    }
    assert!(
        xattrs(&step_dir.join("replaced"))
            .contains(&("trusted.overlay.opaque".into(), b"y".to_vec()))
    );

    // Stack both and look at the merged view.
    let [upper2, work2, merged2] = dirs(root, &["s2/upper", "s2/work", "s2/merged"])
        .try_into()
        .unwrap();
    let mount = mount_overlay(&[step_dir, base_dir], &upper2, &work2, &merged2).unwrap();
    assert_eq!(
        listing(&merged2),
        ["keep", "replaced"].into_iter().map(String::from).collect()
    );
    assert_eq!(
        listing(&merged2.join("replaced")),
        ["new"].into_iter().map(String::from).collect()
    );
    assert_eq!(fs::read(merged2.join("keep")).unwrap(), b"modified");
    drop(mount);
    assert!(!is_mounted(&merged2));
}

#[test]
fn mount_without_lowers_and_drop_unmounts() {
    let tmp = tempfile::tempdir().unwrap();
    let [upper, work, merged] = dirs(tmp.path(), &["upper", "work", "merged"])
        .try_into()
        .unwrap();
    let mount = mount_overlay(&[], &upper, &work, &merged).unwrap();
    assert!(is_mounted(&merged));
    assert_eq!(mount.target(), merged);
    fs::write(merged.join("hello"), b"hi").unwrap();
    drop(mount);
    assert!(!is_mounted(&merged));
    assert_eq!(fs::read(upper.join("hello")).unwrap(), b"hi");
    assert!(!merged.join("hello").exists());
    assert!(!tmp.path().join("work.empty-lower").exists());
}

/// The super-block options of the mount at `target` (the last field of its mountinfo line).
fn super_options(target: &Path) -> String {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let target = target.to_str().unwrap();
    info.lines()
        .find(|l| l.split(' ').nth(4) == Some(target))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn step_mounts_are_volatile_and_durable_ones_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    let [lower, upper, work, merged, upper2, work2, merged2] = dirs(
        tmp.path(),
        &[
            "lower", "upper", "work", "merged", "upper2", "work2", "merged2",
        ],
    )
    .try_into()
    .unwrap();
    let scratch =
        mount_scratch_overlay(std::slice::from_ref(&lower), &upper, &work, &merged).unwrap();
    let durable = mount_overlay(std::slice::from_ref(&lower), &upper2, &work2, &merged2).unwrap();
    // This machine's kernel (6.x) has the option; an older one would get a plain mount.
    assert!(
        super_options(&merged).contains("volatile"),
        "{}",
        super_options(&merged)
    );
    assert!(!super_options(&merged2).contains("volatile"));
    fs::write(merged.join("f"), b"kept").unwrap();
    drop((scratch, durable));
    assert_eq!(fs::read(upper.join("f")).unwrap(), b"kept");
}

#[test]
fn deep_stacks_exceed_the_classic_option_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("l".repeat(60));
    let mut lowers = Vec::new();
    for i in 0..80 {
        let dir = base.join(format!("{}-{i:03}", "layer".repeat(10)));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("f{i}")), i.to_string()).unwrap();
        fs::write(dir.join("who"), i.to_string()).unwrap();
        lowers.push(dir);
    }
    let option_len: usize = lowers.iter().map(|l| l.as_os_str().len() + 1).sum();
    assert!(option_len > 4096, "{option_len}");
    let [upper, work, merged] = dirs(tmp.path(), &["upper", "work", "merged"])
        .try_into()
        .unwrap();
    let mount = mount_overlay(&lowers, &upper, &work, &merged).unwrap();
    for i in 0..80 {
        assert_eq!(
            fs::read_to_string(merged.join(format!("f{i}"))).unwrap(),
            i.to_string()
        );
    }
    // The first lower is the topmost.
    assert_eq!(fs::read_to_string(merged.join("who")).unwrap(), "0");
    mount.unmount().unwrap();
    assert!(!is_mounted(&merged));
}

#[test]
fn stale_mounts_below_a_directory_are_cleaned_up() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("state");
    let mut targets = Vec::new();
    for n in ["a", "b"] {
        let [lower, upper, work, merged] = dirs(
            &root,
            &[
                &format!("{n}/lower"),
                &format!("{n}/upper"),
                &format!("{n}/work"),
                &format!("{n}/merged"),
            ],
        )
        .try_into()
        .unwrap();
        let mount = mount_overlay(&[lower], &upper, &work, &merged).unwrap();
        // Simulate a crash: the handle never runs its destructor.
        std::mem::forget(mount);
        assert!(is_mounted(&merged));
        targets.push(merged);
    }
    // A mount outside the directory is left alone.
    let [l, u, w, outside] = dirs(tmp.path(), &["o/l", "o/u", "o/w", "o/m"])
        .try_into()
        .unwrap();
    let keep = mount_overlay(&[l], &u, &w, &outside).unwrap();

    assert_eq!(cleanup_stale_mounts(&root).unwrap(), 2);
    for t in &targets {
        assert!(!is_mounted(t));
    }
    assert!(is_mounted(&outside));
    assert_eq!(cleanup_stale_mounts(&root).unwrap(), 0);
    drop(keep);
}
