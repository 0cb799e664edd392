//! Dockerfile `USER` resolution against the rootfs's `/etc/passwd` and `/etc/group`, read with
//! chroot semantics so a symlinked file cannot point the lookup at the host's databases.

use std::io::Read;
use std::path::Path;

use crate::rootfs_linux::Root;
use crate::{Error, Result, User};

const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves a Dockerfile `USER` value (`name`, `uid`, `name:group`, `uid:gid`, ...).
///
/// Numeric ids need no files; an unknown uid gets gid 0. Names must exist. Without an explicit
/// group the primary gid comes from `/etc/passwd` and supplementary gids from the `/etc/group`
/// entries listing the user; with an explicit group only that group. The primary gid is always
/// one of the supplementary gids too, as BuildKit (containerd's spec options) sets them.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<User> {
    let spec = user.trim();
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() || group_part.is_some_and(str::is_empty) {
        return Err(Error::InvalidUser(user.to_string()));
    }
    let root = open_root(rootfs)?;
    let passwd = read_passwd(&root)?;

    let numeric_uid = user_part.parse::<u32>().ok();
    let entry = passwd
        .iter()
        .find(|e| e.name == user_part)
        .or_else(|| numeric_uid.and_then(|uid| passwd.iter().find(|e| e.uid == uid)));
    let (uid, default_gid, name) = match (entry, numeric_uid) {
        (Some(e), _) => (e.uid, e.gid, Some(e.name.as_str())),
        (None, Some(uid)) => (uid, 0, None),
        (None, None) => return Err(Error::UnknownUser(user_part.to_string())),
    };

    // The group file is only needed for a group name or supplementary groups.
    let numeric_gid = group_part.and_then(|g| g.parse::<u32>().ok());
    let need_groups =
        (group_part.is_some() && numeric_gid.is_none()) || (group_part.is_none() && name.is_some());
    let groups = if need_groups {
        read_group(&root)?
    } else {
        Vec::new()
    };

    match group_part {
        Some(g) => {
            let gid = match groups.iter().find(|e| e.name == g) {
                Some(e) => e.gid,
                None => numeric_gid.ok_or_else(|| Error::UnknownGroup(g.to_string()))?,
            };
            Ok(User {
                uid,
                gid,
                additional_gids: vec![gid],
            })
        }
        None => {
            let mut additional_gids = vec![default_gid];
            if let Some(name) = name {
                for g in &groups {
                    if g.members.iter().any(|m| m == name) && !additional_gids.contains(&g.gid) {
                        additional_gids.push(g.gid);
                    }
                }
            }
            Ok(User {
                uid,
                gid: default_gid,
                additional_gids,
            })
        }
    }
}

/// The owner a file operation gives what it creates (`COPY --chown`, `ADD --chown`, the
/// directory `WORKDIR` makes under `USER`), resolved as BuildKit's file ops resolve it, which is
/// not how a process's user is: a numeric user is both uid and gid, with no lookup; a name is
/// looked up in `/etc/passwd` (its uid and primary gid); a group, numeric or a name looked up in
/// `/etc/group`, replaces the gid. A name that is not found, or a database that is missing,
/// leaves 0 (or, for a group, the user's gid) and is no error. An empty spec is `0:0`.
pub fn resolve_owner(rootfs: &Path, spec: &str) -> Result<(u32, u32)> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok((0, 0));
    }
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() || group_part.is_some_and(str::is_empty) {
        return Err(Error::InvalidUser(spec.to_string()));
    }
    let root = open_root(rootfs)?;
    let (uid, mut gid) = match user_part.parse::<u32>() {
        Ok(id) => (id, id),
        Err(_) => read_passwd(&root)?
            .iter()
            .find(|e| e.name == user_part)
            .map_or((0, 0), |e| (e.uid, e.gid)),
    };
    if let Some(g) = group_part {
        match g.parse::<u32>() {
            Ok(id) => gid = id,
            Err(_) => {
                if let Some(e) = read_group(&root)?.iter().find(|e| e.name == g) {
                    gid = e.gid;
                }
            }
        }
    }
    Ok((uid, gid))
}

/// `HOME` for a uid: `/root` for root, else the `/etc/passwd` entry's home, else `/` (Docker's
/// rule).
pub fn home_dir(rootfs: &Path, uid: u32) -> Result<String> {
    if uid == 0 {
        return Ok("/root".to_string());
    }
    let root = open_root(rootfs)?;
    Ok(read_passwd(&root)?
        .into_iter()
        .find(|e| e.uid == uid && !e.home.is_empty())
        .map_or_else(|| "/".to_string(), |e| e.home))
}

fn open_root(rootfs: &Path) -> Result<Root> {
    Root::open(rootfs).map_err(|source| Error::OpenRootfs {
        path: rootfs.to_path_buf(),
        source,
    })
}

fn read_db(root: &Root, path: &str) -> Result<String> {
    let err = |source| Error::ReadRootfs {
        path: path.to_string(),
        source,
    };
    let Some(mut file) = root.read_file(path).map_err(err)? else {
        return Ok(String::new());
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(err)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn read_passwd(root: &Root) -> Result<Vec<PasswdEntry>> {
    Ok(parse_passwd(&read_db(root, PASSWD)?))
}

fn read_group(root: &Root) -> Result<Vec<GroupEntry>> {
    Ok(parse_group(&read_db(root, GROUP)?))
}

/// The colon-separated fields of each line of an /etc database, skipping blanks and comments.
fn records(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.split(':').collect())
}

/// `name:password:uid:gid:gecos:home:shell`; malformed lines are skipped as libc does.
fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    records(text)
        .filter_map(|f| {
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).map_or_else(String::new, |h| h.to_string()),
            })
        })
        .collect()
}

/// `name:password:gid:member,member`.
fn parse_group(text: &str) -> Vec<GroupEntry> {
    records(text)
        .filter_map(|f| {
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const PASSWD_TEXT: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        broken line\n\
        nohome:x:1001:1001::\n";
    const GROUP_TEXT: &str = "root:x:0:\n\
        app:x:1000:\n\
        wheel:x:10:root,app\n\
        audio:x:29: app , other\n";

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs_err::create_dir(dir.path().join("etc")).unwrap();
        fs_err::write(dir.path().join("etc/passwd"), PASSWD_TEXT).unwrap();
        fs_err::write(dir.path().join("etc/group"), GROUP_TEXT).unwrap();
        dir
    }

    fn user(uid: u32, gid: u32, additional_gids: &[u32]) -> User {
        User {
            uid,
            gid,
            additional_gids: additional_gids.to_vec(),
        }
    }

    #[test]
    fn by_name_with_supplementary_groups() {
        let r = rootfs();
        assert_eq!(
            resolve_user(r.path(), "app").unwrap(),
            user(1000, 1000, &[1000, 10, 29])
        );
        assert_eq!(
            resolve_user(r.path(), "root").unwrap(),
            user(0, 0, &[0, 10])
        );
    }

    #[test]
    fn by_uid() {
        let r = rootfs();
        // A known uid picks up its passwd entry; an unknown one gets gid 0.
        assert_eq!(
            resolve_user(r.path(), "1000").unwrap(),
            user(1000, 1000, &[1000, 10, 29])
        );
        assert_eq!(resolve_user(r.path(), "4242").unwrap(), user(4242, 0, &[0]));
    }

    #[test]
    fn with_group() {
        let r = rootfs();
        assert_eq!(
            resolve_user(r.path(), "app:wheel").unwrap(),
            user(1000, 10, &[10])
        );
        assert_eq!(
            resolve_user(r.path(), "app:55").unwrap(),
            user(1000, 55, &[55])
        );
        assert_eq!(resolve_user(r.path(), "7:8").unwrap(), user(7, 8, &[8]));
        let err = resolve_user(r.path(), "app:nogroup").unwrap_err();
        assert!(
            matches!(&err, Error::UnknownGroup(g) if g == "nogroup"),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "unable to find group nogroup: no matching entries in group file"
        );
    }

    #[test]
    fn unknown_name_is_an_error_naming_it() {
        let r = rootfs();
        let err = resolve_user(r.path(), "nobody").unwrap_err();
        assert!(matches!(&err, Error::UnknownUser(u) if u == "nobody"));
        assert_eq!(
            err.to_string(),
            "unable to find user nobody: no matching entries in passwd file"
        );
        assert!(matches!(
            resolve_user(r.path(), ":1"),
            Err(Error::InvalidUser(_))
        ));
        assert!(matches!(
            resolve_user(r.path(), "app:"),
            Err(Error::InvalidUser(_))
        ));
    }

    #[test]
    fn numeric_ids_need_no_files() {
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve_user(empty.path(), "12:34").unwrap(),
            user(12, 34, &[34])
        );
        assert_eq!(resolve_user(empty.path(), "0").unwrap(), user(0, 0, &[0]));
        assert!(matches!(
            resolve_user(empty.path(), "app"),
            Err(Error::UnknownUser(_))
        ));
    }

    #[test]
    fn symlinked_passwd_outside_rootfs_is_not_followed() {
        let outside = rootfs();
        let r = tempfile::tempdir().unwrap();
        fs_err::create_dir(r.path().join("etc")).unwrap();
        symlink(
            outside.path().join("etc/passwd"),
            r.path().join("etc/passwd"),
        )
        .unwrap();
        // Followed on the host, the link would find `app`.
        assert!(resolve_user(outside.path(), "app").is_ok());
        assert!(matches!(
            resolve_user(r.path(), "app"),
            Err(Error::UnknownUser(_))
        ));
        // A symlink that stays inside the rootfs is fine.
        fs_err::create_dir(r.path().join("data")).unwrap();
        fs_err::write(r.path().join("data/passwd"), PASSWD_TEXT).unwrap();
        fs_err::remove_file(r.path().join("etc/passwd")).unwrap();
        symlink("/data/passwd", r.path().join("etc/passwd")).unwrap();
        assert_eq!(
            resolve_user(r.path(), "app").unwrap(),
            user(1000, 1000, &[1000])
        );
    }

    #[test]
    fn home_dir_rules() {
        let r = rootfs();
        assert_eq!(home_dir(r.path(), 0).unwrap(), "/root");
        assert_eq!(home_dir(r.path(), 1000).unwrap(), "/home/app");
        assert_eq!(home_dir(r.path(), 1001).unwrap(), "/");
        assert_eq!(home_dir(r.path(), 9).unwrap(), "/");
    }

    #[test]
    fn file_owners_resolve_as_buildkit_file_ops_do() {
        let dir = rootfs();
        fs_err::write(
            dir.path().join("etc/passwd"),
            format!("{PASSWD_TEXT}odd:x:1500:1600::/:/bin/sh\n"),
        )
        .unwrap();
        let owner = |spec: &str| resolve_owner(dir.path(), spec).unwrap();
        assert_eq!(owner(""), (0, 0));
        // A numeric user is uid and gid both, whatever /etc/passwd says of it.
        assert_eq!(owner("1500"), (1500, 1500));
        assert_eq!(owner("1234"), (1234, 1234));
        // A name takes its entry's uid and primary gid.
        assert_eq!(owner("odd"), (1500, 1600));
        assert_eq!(owner("app"), (1000, 1000));
        // A group replaces the gid, by number or by name.
        assert_eq!(owner("odd:10"), (1500, 10));
        assert_eq!(owner("1234:wheel"), (1234, 10));
        // Names not found are no error: a user is 0, a group leaves the user's gid.
        assert_eq!(owner("nosuch"), (0, 0));
        assert_eq!(owner("odd:nogroup"), (1500, 1600));
        assert_eq!(owner("1234:nogroup"), (1234, 1234));
        // Nor is a rootfs without the databases.
        let bare = tempfile::tempdir().unwrap();
        assert_eq!(resolve_owner(bare.path(), "app").unwrap(), (0, 0));
        assert_eq!(resolve_owner(bare.path(), "7:staff").unwrap(), (7, 7));
        assert!(matches!(
            resolve_owner(bare.path(), "app:"),
            Err(Error::InvalidUser(_))
        ));
    }

    #[test]
    fn the_default_user_needs_no_passwd() {
        // An empty USER is uid 0, as BuildKit runs it: looked up by uid where /etc/passwd has
        // it (for its groups), never an error where it does not.
        let bare = tempfile::tempdir().unwrap();
        assert_eq!(resolve_user(bare.path(), "0").unwrap(), user(0, 0, &[0]));
        assert_eq!(
            resolve_user(rootfs().path(), "0").unwrap(),
            user(0, 0, &[0, 10])
        );
    }
}
