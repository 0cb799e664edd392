//! What every output mode implements, and the pieces they share.

use std::io::{self, Write};
use std::time::Duration;

use crate::event::Event;

pub(crate) trait Render: Send {
    fn event(&mut self, event: &Event) -> io::Result<()>;

    /// Called periodically while events are quiet, so live views can move their clocks.
    fn tick(&mut self, _now: Duration) -> io::Result<()> {
        Ok(())
    }

    /// The build is over: leave the final state and the warnings block.
    fn finish(&mut self, now: Duration) -> io::Result<()>;
}

/// The warnings block printed at the end of plain and tty output.
pub(crate) fn write_warnings(out: &mut dyn Write, warnings: &[String]) -> io::Result<()> {
    if warnings.is_empty() {
        return Ok(());
    }
    let n = warnings.len();
    let noun = if n == 1 { "warning" } else { "warnings" };
    writeln!(out, "{n} {noun} found:")?;
    for warning in warnings {
        writeln!(out, " - {warning}")?;
    }
    Ok(())
}

/// `--progress=rawjson`: one JSON object per event and line.
pub(crate) struct JsonRenderer {
    pub(crate) out: Box<dyn Write + Send>,
}

impl Render for JsonRenderer {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, event)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }

    fn finish(&mut self, _now: Duration) -> io::Result<()> {
        self.out.flush()
    }
}
