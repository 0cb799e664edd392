//! `kiln build -f - .` (the Dockerfile from stdin, the context from `.`) and `kiln build -`
//! (stdin is a tar archive, perhaps compressed, that is the context; or else the Dockerfile,
//! with an empty context), as `docker build` reads them.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

/// Where the build's Dockerfile and context come from once stdin is read.
pub struct Stdin {
    pub context: PathBuf,
    pub dockerfile: Option<PathBuf>,
    /// The Dockerfile's text when read from stdin.
    pub text: Option<String>,
    /// Stdin, when it is a context archive: the engine reads it.
    pub archive: Option<kiln_engine::ContextArchive>,
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
        let (head, reader) = kiln_engine::peek(Box::new(std::io::stdin()), kiln_engine::SNIFF_LEN)
            .context("reading stdin")?;
        if kiln_engine::sniff_archive(&head).is_some() {
            return Ok(Stdin {
                context: context.to_path_buf(),
                dockerfile: file.map(Path::to_path_buf),
                text: None,
                archive: Some(kiln_engine::ContextArchive::new("stdin", reader)),
                _empty: None,
            });
        }
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
            text: Some(read(reader)?),
            archive: None,
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
        text: if file_dash {
            Some(read(Box::new(std::io::stdin()))?)
        } else {
            None
        },
        archive: None,
        _empty: None,
    })
}

fn read(mut stdin: Box<dyn std::io::Read + Send>) -> Result<String> {
    let mut bytes = Vec::new();
    stdin
        .read_to_end(&mut bytes)
        .context("reading the Dockerfile from stdin")?;
    String::from_utf8(bytes).map_err(|_| {
        anyhow::anyhow!("`kiln build -`: stdin is neither a tar archive nor a Dockerfile")
    })
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
