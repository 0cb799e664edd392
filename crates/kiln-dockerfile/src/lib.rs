//! kiln's Dockerfile parser.
//!
//! Source text goes in; typed instructions with locations come out, plus BuildKit's shell-word
//! lexer for variable expansion. It is built in BuildKit's layers: [`parser`] turns text into
//! a [`Node`] tree, [`instructions`] turns nodes into typed [`Instruction`]s, and [`shell`]
//! expands words. Argument values stay unexpanded: expansion depends on ARG/ENV state that
//! only the frontend knows.
//!
//! This crate takes `&str` and must not know about files, tokio, LLB or the build graph.

mod error;
pub mod instructions;
pub mod parser;
mod quote;
pub mod shell;
pub mod suggest;

pub use error::{Error, Location, Result, render_snippet};
pub use instructions::{Command, CopyArgs, Healthcheck, Instruction, InstructionKind};
pub use parser::directives::Directives;
pub use parser::{Heredoc, Node, Warning};
pub use quote::go_quote;
pub use shell::{Env, ShellLex};

/// A parsed Dockerfile.
#[derive(Debug, Clone)]
pub struct Dockerfile {
    pub directives: Directives,
    /// Instructions in file order, including ARGs before the first FROM.
    pub instructions: Vec<Instruction>,
    pub warnings: Vec<Warning>,
}

/// Parses Dockerfile source into typed instructions. Fails on the first syntax or instruction
/// error, with its location.
pub fn parse(source: &str) -> Result<Dockerfile> {
    let parsed = parser::parse(source)?;
    let instructions = parsed
        .ast
        .children
        .iter()
        .map(instructions::parse_instruction)
        .collect::<Result<Vec<_>>>()?;
    Ok(Dockerfile {
        directives: parsed.directives,
        instructions,
        warnings: parsed.warnings,
    })
}
