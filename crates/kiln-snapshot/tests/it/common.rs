//! Tree building and comparison helpers.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps};
use sha2::{Digest as _, Sha256};

/// Everything a layer must preserve about one path.
#[derive(Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub content: Option<String>,
    pub link: Option<PathBuf>,
    pub rdev: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// First path (in walk order) sharing this inode, for hardlinked files.
    pub same_inode_as: Option<String>,
}

pub fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let walk = walkdir::WalkDir::new(root)
        .min_depth(1)
        .sort_by_file_name()
        .follow_links(false);
    for e in walk {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().display().to_string();
        let md = fs::symlink_metadata(e.path()).unwrap();
        let ft = md.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "other"
        };
        let content = ft.is_file().then(|| {
            let mut buf = Vec::new();
            fs::File::open(e.path())
                .unwrap()
                .read_to_end(&mut buf)
                .unwrap();
            hex(&Sha256::digest(&buf))
        });
        let same_inode_as = if ft.is_file() && md.nlink() > 1 {
            match inodes.get(&md.ino()) {
                Some(first) => Some(first.clone()),
                None => {
                    inodes.insert(md.ino(), rel.clone());
                    None
                }
            }
        } else {
            None
        };
        out.insert(
            rel,
            Node {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime: md.mtime(),
                content,
                link: ft.is_symlink().then(|| fs::read_link(e.path()).unwrap()),
                rdev: md.rdev(),
                xattrs: xattrs(e.path()),
                same_inode_as,
            },
        );
    }
    out
}

pub fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(path, &mut names[..]).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = names[..n]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|name| {
            let name = String::from_utf8(name.to_vec()).unwrap();
            let mut value = vec![0u8; 65536];
            let len = rustix::fs::lgetxattr(path, name.as_str(), &mut value[..]).unwrap();
            value.truncate(len);
            (name, value)
        })
        .collect();
    out.sort();
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn set_mtime(path: &Path, secs: i64) {
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A tree exercising everything a layer must carry. Deterministic, mtimes included.
pub fn build_tree(root: &Path) {
    fs::create_dir_all(root).unwrap();
    let p = |rel: &str| root.join(rel);
    for d in [
        "etc",
        "bin",
        "home/user",
        "empty",
        "data",
        "dev",
        "run",
        "tmp",
    ] {
        fs::create_dir_all(p(d)).unwrap();
    }
    fs::write(p("etc/passwd"), b"root:x:0:0:root:/root:/bin/sh\n").unwrap();
    rustix::fs::lsetxattr(
        p("etc/passwd"),
        "user.kiln.test",
        b"value",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        p("etc"),
        "trusted.kiln",
        b"dir-xattr",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();

    fs::write(p("bin/tool"), vec![0x7fu8; 70_000]).unwrap();
    chown(p("bin/tool"), Some(1000), Some(1000)).unwrap();
    mode(&p("bin/tool"), 0o4755);

    chown(p("home/user"), Some(1000), Some(1001)).unwrap();
    mode(&p("home/user"), 0o700);
    fs::write(p("home/user/.profile"), b"export A=1\n").unwrap();
    chown(p("home/user/.profile"), Some(1000), Some(1001)).unwrap();
    mode(&p("home/user/.profile"), 0o600);

    symlink("etc/passwd", p("link")).unwrap();
    symlink("/nonexistent/target", p("abs")).unwrap();
    lchown(p("abs"), Some(1000), Some(1000)).unwrap();
    let long_target = format!("/{}/end", "t".repeat(150));
    symlink(&long_target, p("longlink")).unwrap();

    fs::write(p("data/a"), b"shared inode").unwrap();
    fs::hard_link(p("data/a"), p("data/b")).unwrap();
    fs::hard_link(p("data/a"), p("data/c")).unwrap();
    fs::write(p("data/empty-file"), b"").unwrap();
    fs::write(p("data/ünïcødé name"), b"u").unwrap();

    let deep = p(&format!("{}/{}", "d".repeat(90), "e".repeat(90)));
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("file-with-a-long-path"), b"deep").unwrap();

    rustix::fs::mknodat(
        CWD,
        p("dev/null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    mode(&p("dev/null"), 0o666);
    rustix::fs::mknodat(
        CWD,
        p("run/fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    mode(&p("tmp"), 0o1777);

    stamp_mtimes(root, 1_600_000_000);
}

/// Gives every path below `root` a distinct fixed mtime, children before parents.
pub fn stamp_mtimes(root: &Path, base: i64) {
    let paths: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .min_depth(1)
        .sort_by_file_name()
        .contents_first(true)
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .collect();
    for (i, path) in paths.iter().enumerate() {
        set_mtime(path, base + i as i64);
    }
}

pub fn sha256_file(path: &Path) -> String {
    hex(&Sha256::digest(fs::read(path).unwrap()))
}

pub fn gunzip(path: &Path) -> Vec<u8> {
    let out = Command::new("gzip").arg("-dc").arg(path).output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// `sha256sum` of some bytes, computed by the coreutils tool rather than our code.
pub fn sha256sum(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

pub fn is_mounted(target: &Path) -> bool {
    let target = fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf());
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| Path::new(p) == target)
}

/// Names of the entries in a tar stream, as written.
pub fn tar_names(tar: &[u8]) -> Vec<String> {
    let mut ar = tar::Archive::new(tar);
    ar.entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect()
}
