//! Extended attributes by path, never following a final symlink.

use std::io;
use std::path::Path;

use rustix::fs::XattrFlags;

/// Kernel limit for one xattr value and for a whole name list (`XATTR_SIZE_MAX`, `XATTR_LIST_MAX`).
const XATTR_MAX: usize = 64 * 1024;

/// Overlayfs keeps its own bookkeeping (opaque, origin, impure, redirect, metacopy) in these;
/// they describe one mount's upper dir and must never travel inside a layer tarball.
pub(crate) const OVERLAY_PREFIX: &str = "trusted.overlay.";
pub(crate) const OPAQUE: &str = "trusted.overlay.opaque";

pub(crate) fn is_overlay_private(name: &str) -> bool {
    name.starts_with(OVERLAY_PREFIX)
}

/// All xattrs of `path`, sorted by name so tar output is deterministic.
pub(crate) fn list(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let names = match read_grow(|buf| rustix::fs::llistxattr(path, buf)) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTSUP.raw_os_error()) => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for raw in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(raw)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "xattr name is not utf-8"))?;
        // A concurrent removal is not an error; the attribute is simply gone.
        if let Some(value) = get(path, name)? {
            out.push((name.to_string(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// One xattr of `path`, or `None` when it is not set.
pub(crate) fn get(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    match read_grow(|buf| rustix::fs::lgetxattr(path, name, buf)) {
        Ok(value) => Ok(Some(value)),
        Err(e)
            if [rustix::io::Errno::NODATA, rustix::io::Errno::NOTSUP]
                .iter()
                .any(|n| e.raw_os_error() == Some(n.raw_os_error())) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Calls `f` with a small buffer first (most files have few or no xattrs) and retries with the
/// kernel maximum on `ERANGE`.
fn read_grow(mut f: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>) -> io::Result<Vec<u8>> {
    let mut small = [0u8; 512];
    match f(&mut small) {
        Ok(n) => Ok(small[..n].to_vec()),
        Err(rustix::io::Errno::RANGE) => {
            let mut big = vec![0u8; XATTR_MAX];
            let n = f(&mut big)?;
            big.truncate(n);
            Ok(big)
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn set(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    rustix::fs::lsetxattr(path, name, value, XattrFlags::empty())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_list_get_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        set(&f, "user.b", b"2").unwrap();
        set(&f, "user.a", b"1").unwrap();
        let all = list(&f).unwrap();
        assert_eq!(
            all,
            vec![
                ("user.a".to_string(), b"1".to_vec()),
                ("user.b".to_string(), b"2".to_vec())
            ]
        );
        assert_eq!(get(&f, "user.missing").unwrap(), None);
        // Values and name lists past the first small buffer.
        let big = vec![7u8; 1000];
        set(&f, "user.big", &big).unwrap();
        for i in 0..30 {
            set(&f, &format!("user.some-longer-attribute-name-{i:02}"), b"v").unwrap();
        }
        let all = list(&f).unwrap();
        assert_eq!(all.len(), 33);
        assert_eq!(get(&f, "user.big").unwrap(), Some(big));
    }

    #[test]
    fn overlay_private_names() {
        assert!(is_overlay_private("trusted.overlay.opaque"));
        assert!(is_overlay_private("trusted.overlay.origin"));
        assert!(!is_overlay_private("trusted.other"));
        assert!(!is_overlay_private("security.capability"));
    }
}
