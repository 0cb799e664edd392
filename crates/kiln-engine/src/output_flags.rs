//! `-o`, `--push`, `--load` and `--annotation` turned into the build's outputs with buildx's
//! rules; shared by the embedded CLI and kilnd, so both refuse and assemble alike.

use crate::output::{ExporterKind, Output, OutputError, parse_annotation_flag};

/// The output flags of one `kiln build`, as given.
#[derive(Debug, Clone, Copy)]
pub struct OutputFlags<'a> {
    pub outputs: &'a [String],
    pub push: bool,
    pub load: bool,
    pub annotations: &'a [String],
    /// Whether `-t` named the image.
    pub has_tags: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputFlagsError {
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("{0}")]
    Usage(String),
}

/// The outputs `flags` describe, in `-o` order, with `type=image` added for `--load` or when
/// none is given.
pub fn assemble_outputs(flags: OutputFlags<'_>) -> Result<Vec<Output>, OutputFlagsError> {
    let mut outputs = Vec::new();
    for o in flags.outputs {
        outputs.push(Output::parse(o)?);
    }
    // `--push` is buildx's: `type=registry` alone, or `push=true` on a first output of type
    // image/registry (keeping its options); `--load` and no output at all are `type=image`.
    if flags.push {
        match outputs.first_mut() {
            None => outputs.push(Output::new(ExporterKind::Registry)),
            Some(o) if matches!(o.kind, ExporterKind::Image | ExporterKind::Registry) => {
                o.push = true
            }
            Some(o) => {
                return Err(OutputFlagsError::Usage(format!(
                    "push and \"{}\" output can't be used together",
                    o.kind.name()
                )));
            }
        }
    }
    if flags.push && !flags.has_tags && outputs.iter().all(|o| o.names.is_empty()) {
        // buildx's words: the registry exporter pushes the image's names.
        return Err(OutputFlagsError::Usage(
            "tag is needed when pushing to registry".into(),
        ));
    }
    if (flags.load || outputs.is_empty()) && !outputs.iter().any(|o| o.kind == ExporterKind::Image)
    {
        outputs.push(Output::new(ExporterKind::Image));
    }
    // `--annotation` goes to every output that writes an image, as buildx passes it.
    for spec in flags.annotations {
        let a = parse_annotation_flag(spec)?;
        for o in outputs.iter_mut().filter(|o| o.kind.is_image()) {
            o.annotations.push(a.clone());
        }
    }
    Ok(outputs)
}

impl Output {
    /// Whether this output, given a `dest` other than `-`, writes a directory there
    /// (`type=local`, or `type=oci|docker` with `tar=false`) rather than a file.
    pub fn writes_directory(&self) -> bool {
        self.dest.as_deref() != Some(std::path::Path::new("-"))
            && (self.kind == ExporterKind::Local
                || (matches!(self.kind, ExporterKind::Oci | ExporterKind::Docker) && !self.tar))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags<'a>(outputs: &'a [String], push: bool, has_tags: bool) -> OutputFlags<'a> {
        OutputFlags {
            outputs,
            push,
            load: false,
            annotations: &[],
            has_tags,
        }
    }

    #[test]
    fn no_output_is_the_store() {
        let o = assemble_outputs(flags(&[], false, false)).unwrap();
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].kind, ExporterKind::Image);
    }

    #[test]
    fn push_needs_a_name_and_an_image_output() {
        let e = assemble_outputs(flags(&[], true, false)).unwrap_err();
        assert_eq!(e.to_string(), "tag is needed when pushing to registry");
        let oci = ["type=oci,dest=x.tar".to_string()];
        let e = assemble_outputs(flags(&oci, true, true)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "push and \"oci\" output can't be used together"
        );
        let o = assemble_outputs(flags(&[], true, true)).unwrap();
        assert_eq!(o[0].kind, ExporterKind::Registry);
    }
}
