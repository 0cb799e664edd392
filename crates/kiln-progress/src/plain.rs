//! `--progress=plain`: buildx's line-oriented output. Each vertex prints a block headed by
//! `#N name`; when output moves to another vertex before the block ends, the block is closed
//! with `#N ...` and its header repeated when it resumes.

use std::collections::HashMap;
use std::io::{self, Write};
use std::time::Duration;

use crate::event::Event;
use crate::render::{Render, write_warnings};

struct VertexInfo {
    name: String,
    started: Duration,
}

pub(crate) struct PlainRenderer {
    out: Box<dyn Write + Send>,
    vertices: HashMap<u64, VertexInfo>,
    /// The vertex whose block is open.
    current: Option<u64>,
    warnings: Vec<String>,
}

impl PlainRenderer {
    pub(crate) fn new(out: Box<dyn Write + Send>) -> PlainRenderer {
        PlainRenderer {
            out,
            vertices: HashMap::new(),
            current: None,
            warnings: Vec::new(),
        }
    }

    /// Makes `vertex` the open block, closing another one first.
    fn switch_to(&mut self, vertex: u64) -> io::Result<()> {
        if self.current == Some(vertex) {
            return Ok(());
        }
        if let Some(open) = self.current.take() {
            writeln!(self.out, "#{open} ...\n")?;
        }
        let name = self.vertices.get(&vertex).map_or("", |v| v.name.as_str());
        writeln!(self.out, "#{vertex} {name}")?;
        self.current = Some(vertex);
        Ok(())
    }

    fn elapsed(&self, vertex: u64, time: Duration) -> f64 {
        let started = self.vertices.get(&vertex).map_or(time, |v| v.started);
        time.saturating_sub(started).as_secs_f64()
    }

    /// Writes the last line of a block and the blank line that separates blocks.
    fn close(&mut self, vertex: u64, line: &str) -> io::Result<()> {
        self.switch_to(vertex)?;
        writeln!(self.out, "#{vertex} {line}\n")?;
        self.current = None;
        Ok(())
    }
}

impl Render for PlainRenderer {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        match event {
            Event::Start { vertex, name, time } => {
                self.vertices.insert(
                    *vertex,
                    VertexInfo {
                        name: name.clone(),
                        started: *time,
                    },
                );
                self.switch_to(*vertex)?;
            }
            Event::Log {
                vertex, text, time, ..
            } => {
                self.switch_to(*vertex)?;
                let elapsed = self.elapsed(*vertex, *time);
                writeln!(self.out, "#{vertex} {elapsed:.3} {text}")?;
            }
            Event::Status { vertex, text, .. } => {
                self.switch_to(*vertex)?;
                writeln!(self.out, "#{vertex} {text}")?;
            }
            Event::Cached { vertex, .. } => self.close(*vertex, "CACHED")?,
            Event::Done { vertex, time } => {
                let elapsed = self.elapsed(*vertex, *time);
                self.close(*vertex, &format!("DONE {elapsed:.1}s"))?;
            }
            Event::Error {
                vertex, message, ..
            } => self.close(*vertex, &format!("ERROR: {message}"))?,
            Event::Warning { message, .. } => self.warnings.push(message.clone()),
        }
        self.out.flush()
    }

    fn finish(&mut self, _now: Duration) -> io::Result<()> {
        if let Some(open) = self.current.take() {
            writeln!(self.out, "#{open} ...\n")?;
        }
        write_warnings(&mut self.out, &self.warnings)?;
        self.out.flush()
    }
}
