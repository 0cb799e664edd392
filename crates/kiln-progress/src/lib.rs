//! Build progress: the solver reports vertices (build steps) as they start, log, finish, hit
//! the cache or fail, and this crate renders them the way buildx does (`plain`, `tty`,
//! `rawjson`, `quiet`). Rendering happens on one thread fed by a channel, so handles are cheap
//! to clone and use from any task or thread.
//!
//! This crate knows events and terminals only: not the solver, LLB or gRPC. Choosing the mode
//! from flags or environment belongs to the CLI.

mod clock;
mod event;
mod plain;
mod render;
mod tty;

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

pub use clock::{Clock, ManualClock, SystemClock};
pub use event::{Event, Stream};

use render::{JsonRenderer, Render};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown progress mode `{0}` (expected auto, plain, tty, quiet or rawjson)")]
    UnknownMode(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// How progress is shown (`--progress=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// `Tty` when stderr is a terminal, else `Plain`.
    #[default]
    Auto,
    Plain,
    Tty,
    Quiet,
    RawJson,
}

impl std::str::FromStr for Mode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Mode> {
        Ok(match s {
            "auto" => Mode::Auto,
            "plain" => Mode::Plain,
            "tty" => Mode::Tty,
            "quiet" => Mode::Quiet,
            "rawjson" => Mode::RawJson,
            other => return Err(Error::UnknownMode(other.to_owned())),
        })
    }
}

/// Settings beyond the mode, mainly for tests and embedding.
pub struct Config {
    pub mode: Mode,
    pub clock: Arc<dyn Clock>,
    /// Terminal size (columns, rows) for `Tty`; measured on stderr when `None`.
    pub tty_size: Option<(usize, usize)>,
    /// How often the live view redraws while nothing happens.
    pub tick: Duration,
}

impl Config {
    pub fn new(mode: Mode) -> Config {
        Config {
            mode,
            clock: Arc::new(SystemClock::new()),
            tty_size: None,
            tick: Duration::from_millis(100),
        }
    }
}

enum Msg {
    Event(Event),
    Finish,
}

struct Shared {
    /// `None` for quiet output, which needs no thread.
    tx: Option<Sender<Msg>>,
    clock: Arc<dyn Clock>,
    /// Assigns `#N` and sends `Start` under one lock so starts arrive in number order.
    next_vertex: Mutex<u64>,
    renderer: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    fn send(&self, event: Event) {
        if let Some(tx) = &self.tx {
            // After `finish` the renderer is gone; late events are dropped.
            let _ = tx.send(Msg::Event(event));
        }
    }

    fn finish(&self) {
        let Some(handle) = self.renderer.lock().take() else {
            return;
        };
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Finish);
        }
        // A renderer that panicked has nothing left to flush.
        let _ = handle.join();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A handle on a progress session; cheap to clone, usable from many tasks and threads.
#[derive(Clone)]
pub struct Progress {
    shared: Arc<Shared>,
}

impl Progress {
    /// Starts rendering to `out` in `mode` (spawning the renderer thread).
    pub fn new(mode: Mode, out: Box<dyn Write + Send>) -> Progress {
        Progress::with_config(Config::new(mode), out)
    }

    /// Progress that shows nothing.
    pub fn discard() -> Progress {
        Progress::new(Mode::Quiet, Box::new(std::io::sink()))
    }

    pub fn with_config(config: Config, out: Box<dyn Write + Send>) -> Progress {
        let mode = match config.mode {
            Mode::Auto if std::io::stderr().is_terminal() => Mode::Tty,
            Mode::Auto => Mode::Plain,
            mode => mode,
        };
        let renderer: Option<Box<dyn Render>> = match mode {
            Mode::Quiet => None,
            Mode::Plain | Mode::Auto => Some(Box::new(plain::PlainRenderer::new(out))),
            Mode::RawJson => Some(Box::new(JsonRenderer { out })),
            Mode::Tty => {
                let (cols, rows) = config.tty_size.unwrap_or_else(stderr_size);
                Some(Box::new(tty::TtyRenderer::new(out, cols, rows)))
            }
        };
        let (tx, handle) = match renderer {
            None => (None, None),
            Some(renderer) => {
                let (tx, rx) = mpsc::channel();
                let clock = config.clock.clone();
                let tick = config.tick;
                let handle = std::thread::Builder::new()
                    .name("kiln-progress".into())
                    .spawn(move || run(renderer, rx, clock, tick));
                match handle {
                    Ok(handle) => (Some(tx), Some(handle)),
                    // Without a thread there is no output; the build itself must go on.
                    Err(_) => (None, None),
                }
            }
        };
        Progress {
            shared: Arc::new(Shared {
                tx,
                clock: config.clock,
                next_vertex: Mutex::new(1),
                renderer: Mutex::new(handle),
            }),
        }
    }

    /// Starts a vertex: assigns the next `#N` and shows its start.
    pub fn vertex(&self, name: impl Into<String>) -> Vertex {
        let name = name.into();
        let mut next = self.shared.next_vertex.lock();
        let id = *next;
        *next += 1;
        let started = self.shared.clock.now();
        self.shared.send(Event::Start {
            vertex: id,
            name,
            time: started,
        });
        drop(next);
        Vertex {
            inner: Arc::new(VertexInner {
                id,
                progress: self.shared.clone(),
                partial: Mutex::new(Default::default()),
                completed: AtomicBool::new(false),
                sharing: Mutex::new(Sharing::default()),
            }),
        }
    }

    /// A build-wide warning, printed in a block at the end.
    pub fn warn(&self, message: impl Into<String>) {
        self.shared.send(Event::Warning {
            message: message.into(),
            time: self.shared.clock.now(),
        });
    }

    /// Sends an already-built event, e.g. one received from a remote daemon.
    pub fn emit(&self, event: Event) {
        self.shared.send(event);
    }

    /// Flushes the output and joins the renderer. Later events from any clone are dropped;
    /// calling it again is harmless. Dropping the last handle does the same.
    pub fn finish(self) {
        self.shared.finish();
    }
}

fn stderr_size() -> (usize, usize) {
    match console::Term::stderr().size_checked() {
        Some((rows, cols)) => (usize::from(cols), usize::from(rows)),
        None => (80, 24),
    }
}

fn run(
    mut renderer: Box<dyn Render>,
    rx: mpsc::Receiver<Msg>,
    clock: Arc<dyn Clock>,
    tick: Duration,
) {
    // Output errors (a closed pipe) must not stop the build, so they are ignored here and
    // events keep being drained.
    loop {
        match rx.recv_timeout(tick) {
            Ok(Msg::Event(event)) => {
                let _ = renderer.event(&event);
            }
            Ok(Msg::Finish) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                let _ = renderer.tick(clock.now());
            }
        }
    }
    let _ = renderer.finish(clock.now());
}

/// Lines not yet ended by a newline, per stream, with the time each began.
#[derive(Default)]
struct Partial {
    stdout: Option<(Vec<u8>, Duration)>,
    stderr: Option<(Vec<u8>, Duration)>,
}

struct VertexInner {
    id: u64,
    progress: Arc<Shared>,
    partial: Mutex<Partial>,
    completed: AtomicBool,
    sharing: Mutex<Sharing>,
}

/// The most output a vertex keeps for mirrors added later: past it, the oldest goes.
const REPLAY_MAX: usize = 1 << 20;

/// Another build's view of a vertex (see [`Vertex::mirror_to`]).
#[derive(Default)]
struct Sharing {
    /// Vertices (of other builds) that show this one's logs and statuses too; weak, so a
    /// mirror does not keep another build's progress alive.
    mirrors: Vec<std::sync::Weak<VertexInner>>,
    /// With [`Vertex::remember_output`]: what was shown so far, replayed to each new mirror.
    shown: Option<std::collections::VecDeque<Shown>>,
    shown_bytes: usize,
}

enum Shown {
    Log(Stream, Vec<u8>),
    Status(String),
}

impl Sharing {
    /// Records `item` for later mirrors (when remembering) and returns the live mirrors.
    fn shown(&mut self, item: impl FnOnce() -> Shown) -> Vec<Vertex> {
        if let Some(shown) = &mut self.shown {
            let item = item();
            self.shown_bytes += item.len();
            shown.push_back(item);
            while self.shown_bytes > REPLAY_MAX
                && let Some(old) = shown.pop_front()
            {
                self.shown_bytes -= old.len();
            }
        }
        self.mirrors.retain(|m| m.strong_count() > 0);
        self.mirrors
            .iter()
            .filter_map(|m| m.upgrade().map(|inner| Vertex { inner }))
            .collect()
    }
}

impl Shown {
    fn len(&self) -> usize {
        match self {
            Shown::Log(_, b) => b.len(),
            Shown::Status(t) => t.len(),
        }
    }

    fn replay(&self, to: &Vertex) {
        match self {
            Shown::Log(stream, bytes) => to.log(*stream, bytes),
            Shown::Status(text) => to.status(text),
        }
    }
}

/// A build step being reported; cheap to clone, usable from many threads. Only the first
/// of `cached`, `done` and `error` counts; events after it are dropped.
#[derive(Clone)]
pub struct Vertex {
    inner: Arc<VertexInner>,
}

impl Vertex {
    /// The vertex's `#N`.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    fn is_completed(&self) -> bool {
        self.inner.completed.load(Ordering::Acquire)
    }

    /// Keeps what this vertex shows from now on (its last MiB), for mirrors added later: a step
    /// other builds may join.
    pub fn remember_output(&self) {
        self.inner
            .sharing
            .lock()
            .shown
            .get_or_insert_with(Default::default);
    }

    /// `other` gets this vertex's logs and statuses too: what it remembered (see
    /// [`Vertex::remember_output`]) now, the rest as it comes; `other` completes on its own. A
    /// build waiting on a step another build runs shows the step's output so.
    pub fn mirror_to(&self, other: &Vertex) {
        if Arc::ptr_eq(&self.inner, &other.inner) {
            return;
        }
        let mut sharing = self.inner.sharing.lock();
        for item in sharing.shown.iter().flatten() {
            item.replay(other);
        }
        sharing.mirrors.push(Arc::downgrade(&other.inner));
    }

    /// Process output: split into lines, a trailing partial line kept until it is ended (or
    /// the vertex completes). Nothing is clipped.
    pub fn log(&self, stream: Stream, bytes: &[u8]) {
        let mirrors = self
            .inner
            .sharing
            .lock()
            .shown(|| Shown::Log(stream, bytes.to_vec()));
        for m in mirrors {
            m.log(stream, bytes);
        }
        if self.is_completed() || bytes.is_empty() {
            return;
        }
        let now = self.inner.progress.clock.now();
        let mut partial = self.inner.partial.lock();
        let slot = match stream {
            Stream::Stdout => &mut partial.stdout,
            Stream::Stderr => &mut partial.stderr,
        };
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (mut line, began) = slot.take().unwrap_or((Vec::new(), now));
            line.extend_from_slice(&rest[..nl]);
            self.send_line(stream, &line, began);
            rest = &rest[nl + 1..];
        }
        if !rest.is_empty() {
            slot.get_or_insert_with(|| (Vec::new(), now))
                .0
                .extend_from_slice(rest);
        }
    }

    fn send_line(&self, stream: Stream, line: &[u8], time: Duration) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.inner.progress.send(Event::Log {
            vertex: self.inner.id,
            stream,
            text: String::from_utf8_lossy(line).into_owned(),
            time,
        });
    }

    /// A progress message, e.g. `transferring context: 1.2kB done`.
    pub fn status(&self, text: &str) {
        let mirrors = self
            .inner
            .sharing
            .lock()
            .shown(|| Shown::Status(text.to_owned()));
        for m in mirrors {
            m.status(text);
        }
        if self.is_completed() {
            return;
        }
        self.inner.progress.send(Event::Status {
            vertex: self.inner.id,
            text: text.to_owned(),
            time: self.inner.progress.clock.now(),
        });
    }

    pub fn cached(&self) {
        self.complete(|vertex, time| Event::Cached { vertex, time });
    }

    pub fn done(&self) {
        self.complete(|vertex, time| Event::Done { vertex, time });
    }

    pub fn error(&self, message: &str) {
        self.complete(|vertex, time| Event::Error {
            vertex,
            message: message.to_owned(),
            time,
        });
    }

    fn complete(&self, event: impl FnOnce(u64, Duration) -> Event) {
        // The partial-line lock also orders completion after any `log` in flight.
        let mut partial = self.inner.partial.lock();
        if self.inner.completed.swap(true, Ordering::AcqRel) {
            return;
        }
        for (stream, slot) in [
            (Stream::Stdout, partial.stdout.take()),
            (Stream::Stderr, partial.stderr.take()),
        ] {
            if let Some((line, began)) = slot {
                self.send_line(stream, &line, began);
            }
        }
        let now = self.inner.progress.clock.now();
        self.inner.progress.send(event(self.inner.id, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_are_send_and_sync() {
        assert_send_sync::<Progress>();
        assert_send_sync::<Vertex>();
    }

    #[test]
    fn mode_parses_flag_values() {
        assert_eq!("rawjson".parse::<Mode>().expect("valid"), Mode::RawJson);
        let err = "fancy".parse::<Mode>().expect_err("invalid");
        assert!(err.to_string().starts_with("unknown progress mode `fancy`"));
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_mirror_gets_remembered_and_later_output_and_completes_on_its_own() {
        let (out1, out2) = (Captured::default(), Captured::default());
        let p1 = Progress::new(Mode::Plain, Box::new(out1.clone()));
        let p2 = Progress::new(Mode::Plain, Box::new(out2.clone()));
        let (v1, v2) = (p1.vertex("RUN x"), p2.vertex("RUN x"));
        v1.log(Stream::Stdout, b"forgotten\n");
        v1.remember_output();
        v1.log(Stream::Stdout, b"before\n");
        v1.mirror_to(&v2);
        v1.log(Stream::Stdout, b"after\n");
        v1.status("working");
        v1.done();
        v1.log(Stream::Stdout, b"late\n");
        v2.error("failed");
        p1.finish();
        p2.finish();
        let (o1, o2) = (
            String::from_utf8(out1.0.lock().clone()).unwrap(),
            String::from_utf8(out2.0.lock().clone()).unwrap(),
        );
        assert!(o1.contains("forgotten") && o1.contains("after"), "{o1}");
        assert!(!o2.contains("forgotten"), "{o2}");
        let (before, after) = (o2.find("before").unwrap(), o2.find("after").unwrap());
        assert!(before < after, "replayed first: {o2}");
        assert!(o2.contains("working"), "{o2}");
        assert!(o2.contains("late"), "the mirror was not complete yet: {o2}");
        assert!(o2.contains("ERROR") && !o2.contains("DONE"), "{o2}");
    }

    #[test]
    fn discard_accepts_everything() {
        let p = Progress::discard();
        let v = p.vertex("step");
        v.log(Stream::Stdout, b"x\n");
        v.done();
        p.clone().finish();
        p.finish();
    }
}
