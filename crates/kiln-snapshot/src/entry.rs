//! What one tar entry asks for, read from its header and PAX records and checked once: the
//! cleaned path, the kind of file with its link target or device numbers, and the metadata.
//! The applier (`apply.rs`) and the layer checker (`check.rs`) both start from [`parse`], so
//! an entry one refuses the other refuses too.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{FileType, Gid, Mode, Timespec, Timestamps, Uid};
use tar::EntryType;

use crate::xattr;
use crate::{Error, Result};

pub(crate) const WHITEOUT_PREFIX: &str = ".wh.";
pub(crate) const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Linux's limit for one path component (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// The metadata an entry's header (and PAX records) ask for.
pub(crate) struct Meta {
    pub uid: Uid,
    pub gid: Gid,
    pub mode: Mode,
    pub times: Timestamps,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Whether to chown to `uid`/`gid`.
    pub chown: bool,
}

/// The kind of file an entry makes.
pub(crate) enum Kind {
    Dir,
    File,
    /// The target as written: symlinks may point anywhere, they are never followed.
    Symlink(Vec<u8>),
    /// The target's cleaned path below the root (never the root itself nor the entry).
    Hardlink(Vec<OsString>),
    Node {
        file_type: FileType,
        major: u32,
        minor: u32,
    },
    /// An OCI whiteout hiding the last component of `comps` (only when reading a layer).
    Whiteout,
    /// An OCI opaque marker for the directory `comps` (only when reading a layer).
    Opaque,
    /// Nothing to write: global PAX headers, AUFS bookkeeping, a hardlink to itself.
    Skip,
}

/// One entry, checked.
pub(crate) struct Parsed {
    /// The path as the archive spells it, for messages.
    pub shown: String,
    /// The cleaned path below the root; empty for the root itself. For a whiteout, the hidden
    /// file's path; for an opaque marker, its directory's.
    pub comps: Vec<OsString>,
    pub kind: Kind,
    pub meta: Meta,
}

/// Reads what `entry` asks for. `whiteouts` reads `.wh.` names as OCI whiteouts (a layer)
/// rather than as ordinary names (an archive for ADD).
pub(crate) fn parse<R: Read>(entry: &mut tar::Entry<'_, R>, whiteouts: bool) -> Result<Parsed> {
    parse_with(entry, whiteouts, false)
}

/// [`parse`]; with `clamp`, `..` above the root stays at the root (paths and hardlink targets
/// resolve as inside a chroot, as BuildKit unpacks a build context) instead of being refused.
pub(crate) fn parse_with<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    whiteouts: bool,
    clamp: bool,
) -> Result<Parsed> {
    let shown = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    let bad = |reason: &str| Error::BadEntry {
        path: shown.clone(),
        reason: reason.to_string(),
    };
    let mut comps = clean_path(&entry.path_bytes(), clamp).map_err(bad)?;
    let type_ = entry.header().entry_type();
    let meta = read_meta(entry).map_err(|reason| bad(&reason))?;
    let mut kind = match type_ {
        EntryType::XGlobalHeader => Kind::Skip,
        EntryType::Directory => Kind::Dir,
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
        EntryType::Symlink => match entry.link_name_bytes() {
            Some(t) if !t.is_empty() => Kind::Symlink(t.into_owned()),
            _ => return Err(bad("symlink without a target")),
        },
        EntryType::Link => {
            let target = entry
                .link_name_bytes()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| bad("hardlink without a target"))?;
            let target =
                clean_path(&target, clamp).map_err(|r| bad(&format!("hardlink target: {r}")))?;
            if target.is_empty() {
                return Err(bad("hardlink to the layer root"));
            }
            if target == comps {
                Kind::Skip
            } else {
                Kind::Hardlink(target)
            }
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            let h = entry.header();
            // `devmajor` and `devminor` sit at the same offsets in ustar and GNU headers.
            let number = |n: io::Result<Option<u32>>, at: usize| {
                numeric(
                    n.map(|v| u64::from(v.unwrap_or_default())),
                    &h.as_bytes()[at..at + 8],
                    "device number",
                )
                .map(|v| u32::try_from(v).unwrap_or(u32::MAX))
                .map_err(|r| bad(&r))
            };
            Kind::Node {
                file_type: match type_ {
                    EntryType::Char => FileType::CharacterDevice,
                    EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                },
                major: number(h.device_major(), 329)?,
                minor: number(h.device_minor(), 337)?,
            }
        }
        other => {
            let flag = char::from(other.as_byte()).escape_default();
            return Err(bad(&format!("unsupported entry type `{flag}`")));
        }
    };
    if matches!(kind, Kind::Skip) {
        return Ok(Parsed {
            shown,
            comps,
            kind,
            meta,
        });
    }
    if whiteouts
        && let Some(name) = comps.last().cloned()
        && let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes())
    {
        kind = if name == OPAQUE_MARKER {
            comps.pop();
            Kind::Opaque
        } else if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // Other `.wh..wh.` names are AUFS bookkeeping with no meaning here.
            Kind::Skip
        } else if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(bad("whiteout names no file"));
        } else {
            comps.pop();
            comps.push(OsStr::from_bytes(hidden).to_os_string());
            Kind::Whiteout
        };
    }
    if comps.is_empty() && !matches!(kind, Kind::Dir | Kind::Opaque | Kind::Skip) {
        return Err(bad("the layer root can only be a directory"));
    }
    Ok(Parsed {
        shown,
        comps,
        kind,
        meta,
    })
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> std::result::Result<Meta, String> {
    let mut xattrs = Vec::new();
    let mut pax_mtime = None;
    if let Some(exts) = entry.pax_extensions().map_err(|e| e.to_string())? {
        for ext in exts {
            let ext = ext.map_err(|e| e.to_string())?;
            let key = ext.key().map_err(|_| "PAX key is not utf-8".to_string())?;
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                // A layer must not smuggle overlay metadata (redirects, opaque flags) in.
                if !xattr::is_overlay_private(name) {
                    xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            } else if key == "mtime" {
                pax_mtime = Some(parse_pax_time(ext.value_bytes()).ok_or("invalid PAX mtime")?);
            }
        }
    }
    let h = entry.header();
    let old = h.as_old();
    let id = |v: u64, what: &str| -> std::result::Result<u32, String> {
        u32::try_from(v)
            .ok()
            .filter(|v| *v != u32::MAX)
            .ok_or_else(|| format!("{what} {v} out of range"))
    };
    let uid = id(numeric(h.uid(), &old.uid, "uid")?, "uid")?;
    let gid = id(numeric(h.gid(), &old.gid, "gid")?, "gid")?;
    let mode =
        u32::try_from(numeric(h.mode().map(u64::from), &old.mode, "mode")? & 0o7777).unwrap_or(0);
    let mtime = match pax_mtime {
        Some(t) => t,
        None => Timespec {
            tv_sec: i64::try_from(numeric(h.mtime(), &old.mtime, "mtime")?).unwrap_or(i64::MAX),
            tv_nsec: 0,
        },
    };
    Ok(Meta {
        uid: Uid::from_raw(uid),
        gid: Gid::from_raw(gid),
        mode: Mode::from_raw_mode(mode),
        times: Timestamps {
            last_access: mtime,
            last_modification: mtime,
        },
        xattrs,
        chown: true,
    })
}

/// A numeric header field; an empty one (all NUL or spaces) reads as 0, as Go and GNU tar
/// treat it.
fn numeric(parsed: io::Result<u64>, raw: &[u8], what: &str) -> std::result::Result<u64, String> {
    match parsed {
        Ok(v) => Ok(v),
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        Err(_) => Err(format!("invalid {what} in header")),
    }
}

/// Parses a PAX time (`secs[.frac]`, possibly negative).
fn parse_pax_time(raw: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(raw).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += i64::from(b - b'0') * 10_i64.pow(8 - i as u32);
    }
    Some(if !neg {
        Timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        }
    } else if nanos == 0 {
        Timespec {
            tv_sec: -secs,
            tv_nsec: 0,
        }
    } else {
        Timespec {
            tv_sec: -secs - 1,
            tv_nsec: 1_000_000_000 - nanos,
        }
    })
}

/// Splits an entry path into plain components, cleaned the way Go's `path.Clean` cleans it
/// before docker's layer applier joins it to the root: empty and `.` components are dropped,
/// `..` removes the component before it, and a leading `/` means the root (so `/../x` is
/// `x`). A path that cleans to above the root is refused, as is a component longer than the
/// kernel takes.
/// With `clamp`, every path is read as rooted, so `..` never leaves the root.
fn clean_path(raw: &[u8], clamp: bool) -> std::result::Result<Vec<OsString>, &'static str> {
    let rooted = clamp || raw.starts_with(b"/");
    let mut out: Vec<OsString> = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() && !rooted {
                    return Err("path leaves the root through `..`");
                }
            }
            c if c.len() > NAME_MAX => return Err("a path component is longer than 255 bytes"),
            c => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_cleans_like_docker_and_refuses_escapes() {
        let c = clean_path(b"./a//b/./c/", false).unwrap();
        assert_eq!(c, vec![OsString::from("a"), "b".into(), "c".into()]);
        assert!(clean_path(b"./", false).unwrap().is_empty());
        assert_eq!(
            clean_path(b"a/../b", false).unwrap(),
            vec![OsString::from("b")]
        );
        assert_eq!(
            clean_path(b"../x", false),
            Err("path leaves the root through `..`")
        );
        assert_eq!(
            clean_path(b"a/../../x", false),
            Err("path leaves the root through `..`")
        );
        // A leading `/` is the root: absolute names land inside, `/..` stays at the root.
        assert_eq!(
            clean_path(b"/etc/x", false).unwrap(),
            vec![OsString::from("etc"), "x".into()]
        );
        assert_eq!(
            clean_path(b"/../x", false).unwrap(),
            vec![OsString::from("x")]
        );
        // Names that merely start with dots are ordinary.
        assert_eq!(clean_path(b"..a/...", false).unwrap().len(), 2);
        let long = vec![b'n'; 256];
        assert_eq!(
            clean_path(&long, false),
            Err("a path component is longer than 255 bytes")
        );
    }

    #[test]
    fn clamped_paths_stay_at_the_root() {
        assert_eq!(
            clean_path(b"../x", true).unwrap(),
            vec![OsString::from("x")]
        );
        assert_eq!(
            clean_path(b"a/../../../etc/x", true).unwrap(),
            vec![OsString::from("etc"), "x".into()]
        );
        assert!(clean_path(b"../..", true).unwrap().is_empty());
    }

    #[test]
    fn pax_times() {
        let t = parse_pax_time(b"1700000000.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 500_000_000));
        let t = parse_pax_time(b"42").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (42, 0));
        let t = parse_pax_time(b"-1.25").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (-2, 750_000_000));
        assert!(parse_pax_time(b"abc").is_none());
        assert!(parse_pax_time(b"1.2x").is_none());
    }
}
