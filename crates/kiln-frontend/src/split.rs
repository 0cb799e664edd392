//! A parsed Dockerfile cut into what comes before the first FROM and its stages, for the
//! conversion and for `--call outline|targets` alike.

use kiln_dockerfile::{Dockerfile, Instruction, InstructionKind};

/// One stage: its FROM and the instructions after it.
pub(crate) struct Stage<'a> {
    /// Lower-cased, as BuildKit keeps stage names.
    pub name: Option<String>,
    pub from: &'a Instruction,
    pub image: &'a str,
    pub platform: Option<&'a str>,
    pub instructions: Vec<&'a Instruction>,
}

/// The instructions before the first FROM, and the stages.
pub(crate) fn split(dockerfile: &Dockerfile) -> (Vec<&Instruction>, Vec<Stage<'_>>) {
    let mut meta = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for ins in &dockerfile.instructions {
        match (&ins.kind, stages.last_mut()) {
            (
                InstructionKind::From {
                    image,
                    name,
                    platform,
                },
                _,
            ) => stages.push(Stage {
                name: name.as_ref().map(|n| n.to_ascii_lowercase()),
                from: ins,
                image,
                platform: platform.as_deref(),
                instructions: Vec::new(),
            }),
            (_, None) => meta.push(ins),
            (_, Some(stage)) => stage.instructions.push(ins),
        }
    }
    (meta, stages)
}
