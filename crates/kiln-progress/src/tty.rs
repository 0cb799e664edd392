//! `--progress=tty`: a live view redrawn in place with ANSI cursor movement. A header with the
//! total time, a line per vertex with its state and time, and for running vertices their
//! status and last log lines. The last frame stays on screen.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::time::Duration;

use crate::event::Event;
use crate::render::{Render, write_warnings};

/// Log lines shown under each running (or failed) vertex.
const LOG_TAIL: usize = 6;
const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

#[derive(PartialEq)]
enum State {
    Running,
    Done,
    Cached,
    Failed(String),
}

struct VertexView {
    id: u64,
    name: String,
    started: Duration,
    ended: Option<Duration>,
    state: State,
    status: Option<String>,
    logs: VecDeque<String>,
}

pub(crate) struct TtyRenderer {
    out: Box<dyn Write + Send>,
    width: usize,
    height: usize,
    vertices: Vec<VertexView>,
    /// Vertices already printed above the live area for good (only when it would not fit).
    committed: usize,
    /// Lines of the live area currently on screen.
    drawn: usize,
    warnings: Vec<String>,
    now: Duration,
}

impl TtyRenderer {
    pub(crate) fn new(out: Box<dyn Write + Send>, width: usize, height: usize) -> TtyRenderer {
        TtyRenderer {
            out,
            width: width.max(20),
            height: height.max(5),
            vertices: Vec::new(),
            committed: 0,
            drawn: 0,
            warnings: Vec::new(),
            now: Duration::ZERO,
        }
    }

    fn vertex_mut(&mut self, id: u64) -> Option<&mut VertexView> {
        self.vertices.iter_mut().find(|v| v.id == id)
    }

    /// ` => [2/5] RUN echo hello                    0.3s`, cut to the terminal width.
    fn vertex_line(&self, v: &VertexView, finished: bool) -> String {
        let end = v.ended.unwrap_or(self.now);
        let secs = end.saturating_sub(v.started).as_secs_f64();
        let (marker, label) = match &v.state {
            State::Running if finished => ("=>".to_owned(), "CANCELED "),
            State::Running => {
                let frame = (self.now.as_millis() / 100) as usize % SPINNER.len();
                (SPINNER[frame].to_string(), "")
            }
            State::Done => ("=>".to_owned(), ""),
            State::Cached => ("=>".to_owned(), "CACHED "),
            State::Failed(_) => ("=>".to_owned(), "ERROR "),
        };
        let time = if v.state == State::Cached {
            "0.0s".to_owned()
        } else {
            format!("{secs:.1}s")
        };
        let left = format!(" {marker:<2} {label}{}", v.name);
        fit(&left, &time, self.width)
    }

    fn detail_lines(&self, v: &VertexView, lines: &mut Vec<String>) {
        let show = matches!(v.state, State::Running | State::Failed(_));
        if !show {
            return;
        }
        if let (State::Running, Some(status)) = (&v.state, &v.status) {
            lines.push(cut(&format!(" => => {status}"), self.width));
        }
        for log in &v.logs {
            lines.push(cut(&format!(" => => # {log}"), self.width));
        }
        if let State::Failed(message) = &v.state {
            lines.push(cut(&format!(" => => ERROR: {message}"), self.width));
        }
    }

    fn frame(&self, finished: bool) -> Vec<String> {
        let done = self
            .vertices
            .iter()
            .filter(|v| v.state != State::Running)
            .count();
        let total = self.vertices.len();
        let mut header = format!(
            "[+] Building {:.1}s ({done}/{total})",
            self.now.as_secs_f64()
        );
        if finished {
            header.push_str(" FINISHED");
        }
        let mut lines = vec![cut(&header, self.width)];
        for v in &self.vertices[self.committed..] {
            lines.push(self.vertex_line(v, finished));
            self.detail_lines(v, &mut lines);
        }
        lines
    }

    fn draw(&mut self, finished: bool) -> io::Result<()> {
        let mut buf = String::new();
        if self.drawn > 0 {
            // To the start of the live area, then clear everything below.
            buf.push_str(&format!("\x1b[{}F\x1b[J", self.drawn));
        }
        // A frame taller than the screen cannot be redrawn in place: print finished vertices
        // for good above the live area until it fits.
        let mut frame = self.frame(finished);
        while frame.len() >= self.height
            && self.vertices[self.committed..]
                .first()
                .is_some_and(|v| v.state != State::Running)
        {
            let v = &self.vertices[self.committed];
            let mut lines = vec![self.vertex_line(v, finished)];
            self.detail_lines(v, &mut lines);
            for line in lines {
                buf.push_str(&line);
                buf.push('\n');
            }
            self.committed += 1;
            frame = self.frame(finished);
        }
        if frame.len() >= self.height {
            // Still too tall: keep the header and the newest lines.
            let keep = self.height - 2;
            let cut_from = frame.len() - keep;
            frame.drain(1..cut_from);
        }
        for line in &frame {
            buf.push_str(line);
            buf.push('\n');
        }
        self.drawn = frame.len();
        self.out.write_all(buf.as_bytes())?;
        self.out.flush()
    }
}

/// Cuts a line to fit `width` columns, leaving the last column free so nothing wraps.
fn cut(line: &str, width: usize) -> String {
    console::truncate_str(line, width.saturating_sub(1), "").into_owned()
}

/// `left` and `right` on one line, `right` aligned to the right edge.
fn fit(left: &str, right: &str, width: usize) -> String {
    let usable = width.saturating_sub(1);
    let right_w = console::measure_text_width(right);
    let left = console::truncate_str(left, usable.saturating_sub(right_w + 1), "");
    let pad = usable.saturating_sub(console::measure_text_width(&left) + right_w);
    format!("{left}{}{right}", " ".repeat(pad))
}

impl Render for TtyRenderer {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        self.now = self.now.max(event.time());
        match event {
            Event::Start { vertex, name, time } => self.vertices.push(VertexView {
                id: *vertex,
                name: name.clone(),
                started: *time,
                ended: None,
                state: State::Running,
                status: None,
                logs: VecDeque::new(),
            }),
            Event::Log { vertex, text, .. } => {
                if let Some(v) = self.vertex_mut(*vertex) {
                    if v.logs.len() == LOG_TAIL {
                        v.logs.pop_front();
                    }
                    v.logs.push_back(text.clone());
                }
            }
            Event::Status { vertex, text, .. } => {
                if let Some(v) = self.vertex_mut(*vertex) {
                    v.status = Some(text.clone());
                }
            }
            Event::Cached { vertex, time } | Event::Done { vertex, time } => {
                let cached = matches!(event, Event::Cached { .. });
                if let Some(v) = self.vertex_mut(*vertex) {
                    v.state = if cached { State::Cached } else { State::Done };
                    v.ended = Some(*time);
                }
            }
            Event::Error {
                vertex,
                message,
                time,
            } => {
                if let Some(v) = self.vertex_mut(*vertex) {
                    v.state = State::Failed(message.clone());
                    v.ended = Some(*time);
                }
            }
            Event::Warning { message, .. } => {
                self.warnings.push(message.clone());
                return Ok(());
            }
        }
        self.draw(false)
    }

    fn tick(&mut self, now: Duration) -> io::Result<()> {
        self.now = self.now.max(now);
        if self.vertices.iter().any(|v| v.state == State::Running) {
            self.draw(false)?;
        }
        Ok(())
    }

    fn finish(&mut self, now: Duration) -> io::Result<()> {
        self.now = self.now.max(now);
        self.draw(true)?;
        write_warnings(&mut self.out, &self.warnings)?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn tall_builds_commit_finished_vertices_and_stay_on_screen() {
        let out = Capture::default();
        let mut r = TtyRenderer::new(Box::new(out.clone()), 40, 6);
        let t = Duration::from_millis(10);
        for vertex in 1..=10 {
            let name = format!("step {vertex}");
            r.event(&Event::Start {
                vertex,
                name,
                time: t,
            })
            .expect("draw");
            r.event(&Event::Done { vertex, time: t }).expect("draw");
        }
        r.finish(t).expect("finish");
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf-8");
        // Each redraw may move up at most the screen height, or lines would be lost.
        for part in text.split("\x1b[").skip(1) {
            let n: usize = part
                .split('F')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            assert!(n < 6, "moved up {n} lines");
        }
        for vertex in 1..=10 {
            assert!(
                text.contains(&format!(" => step {vertex} ")),
                "step {vertex} missing"
            );
        }
        assert!(text.contains("[+] Building 0.0s (10/10) FINISHED\n"));
        let last = text.lines().last().unwrap_or_default();
        assert!(last.starts_with(" => step 10 "), "{last:?}");
    }
}
