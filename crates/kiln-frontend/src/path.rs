//! Lexical path handling for paths inside the image (always `/`-separated, never touching the
//! host filesystem).

/// Cleans an absolute in-image path: collapses `//`, `.` and `..` (never above `/`).
pub fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Resolves `path` against the working directory `cwd`, as WORKDIR and COPY destinations do.
pub fn join(cwd: &str, path: &str) -> String {
    if path.starts_with('/') {
        clean(path)
    } else {
        clean(&format!("{cwd}/{path}"))
    }
}

/// A COPY destination: relative to `cwd`, keeping the "this is a directory" meaning of a
/// trailing slash or a final `.`.
pub fn copy_dest(cwd: &str, dest: &str) -> String {
    let is_dir = dest.ends_with('/')
        || dest == "."
        || dest.ends_with("/.")
        || dest == ".."
        || dest.ends_with("/..");
    let joined = join(cwd, dest);
    if is_dir && joined != "/" {
        format!("{joined}/")
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_and_joins() {
        assert_eq!(clean("/a//b/./c/../d"), "/a/b/d");
        assert_eq!(clean("/../.."), "/");
        assert_eq!(join("/app", "src"), "/app/src");
        assert_eq!(join("/app", "/srv/../x"), "/x");
        assert_eq!(copy_dest("/app", "."), "/app/");
        assert_eq!(copy_dest("/app", "a/"), "/app/a/");
        assert_eq!(copy_dest("/app", "a"), "/app/a");
        assert_eq!(copy_dest("/", "."), "/");
    }
}
