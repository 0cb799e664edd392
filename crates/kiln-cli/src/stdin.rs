//! `kiln build -f - .` (the Dockerfile from stdin, the context from `.`) and `kiln build -`
//! (the Dockerfile from stdin and an empty context), as `docker build` reads them.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

/// Where the build's Dockerfile and context come from once stdin is read.
pub struct Stdin {
    pub context: PathBuf,
    pub dockerfile: Option<PathBuf>,
    /// The Dockerfile's text when read from stdin.
    pub text: Option<String>,
    /// The empty context of `kiln build -`, removed on drop.
    _empty: Option<tempfile::TempDir>,
}

pub fn dockerfile(context: &Path, file: Option<&Path>) -> Result<Stdin> {
    let dash = Path::new("-");
    let file_dash = file == Some(dash);
    if context == dash && file_dash {
        bail!("invalid argument: can't use stdin for both build context and dockerfile");
    }
    if context == dash {
        if file.is_some() {
            bail!(
                "`kiln build -f FILE -`: with the Dockerfile on stdin there is no context to read FILE from"
            );
        }
        let empty = tempfile::Builder::new()
            .prefix("kiln-empty-context-")
            .tempdir()
            .context("creating the empty build context")?;
        return Ok(Stdin {
            context: empty.path().to_path_buf(),
            dockerfile: None,
            text: Some(read()?),
            _empty: Some(empty),
        });
    }
    Ok(Stdin {
        context: context.to_path_buf(),
        dockerfile: if file_dash {
            None
        } else {
            file.map(Path::to_path_buf)
        },
        text: if file_dash { Some(read()?) } else { None },
        _empty: None,
    })
}

fn read() -> Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the Dockerfile from stdin")?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_on_stdin_is_refused() {
        let e = dockerfile(Path::new("-"), Some(Path::new("-")))
            .err()
            .unwrap();
        assert!(e.to_string().contains("can't use stdin for both"), "{e}");
    }

    #[test]
    fn a_plain_file_is_left_alone() {
        let s = dockerfile(Path::new("ctx"), Some(Path::new("ctx/D"))).unwrap();
        assert_eq!(s.context, Path::new("ctx"));
        assert_eq!(s.dockerfile.as_deref(), Some(Path::new("ctx/D")));
        assert!(s.text.is_none());
    }
}
