//! Scripted builds rendered with a manual clock, compared with the exact expected output.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_progress::{Config, Event, ManualClock, Mode, Progress, Stream};

/// An output buffer the test can read after the renderer is done with it.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf-8")
    }
}

fn session(mode: Mode) -> (Progress, ManualClock, Capture) {
    let clock = ManualClock::new();
    let out = Capture::default();
    let mut config = Config::new(mode);
    config.clock = Arc::new(clock.clone());
    config.tty_size = Some((60, 40));
    // Keep the tty's idle redraws out of the way of scripted time.
    config.tick = Duration::from_secs(3600);
    (
        Progress::with_config(config, Box::new(out.clone())),
        clock,
        out,
    )
}

#[test]
fn plain_matches_buildx() {
    let (p, clock, out) = session(Mode::Plain);
    let v = p.vertex("[internal] load build definition from Dockerfile");
    clock.advance_ms(20);
    v.status("transferring dockerfile: 245B done");
    v.done();
    for name in [
        "[internal] load metadata for docker.io/library/alpine:3.20",
        "[1/5] FROM alpine",
    ] {
        let v = p.vertex(name);
        v.cached();
    }
    let run = p.vertex("[2/5] RUN echo hello");
    clock.advance_ms(215);
    run.log(Stream::Stdout, b"hello\n");
    clock.advance_ms(85);
    run.done();
    p.vertex("[3/5] COPY app.py .").cached();
    let failing = p.vertex("[stage-1 2/2] RUN false");
    clock.advance_ms(100);
    failing.error("process \"/bin/sh -c false\" did not complete successfully: exit code: 1");
    p.warn("JSONArgsRecommended: JSON arguments recommended for CMD (line 7)");
    p.finish();

    let expected = "\
#1 [internal] load build definition from Dockerfile
#1 transferring dockerfile: 245B done
#1 DONE 0.0s

#2 [internal] load metadata for docker.io/library/alpine:3.20
#2 CACHED

#3 [1/5] FROM alpine
#3 CACHED

#4 [2/5] RUN echo hello
#4 0.215 hello
#4 DONE 0.3s

#5 [3/5] COPY app.py .
#5 CACHED

#6 [stage-1 2/2] RUN false
#6 ERROR: process \"/bin/sh -c false\" did not complete successfully: exit code: 1

1 warning found:
 - JSONArgsRecommended: JSON arguments recommended for CMD (line 7)
";
    assert_eq!(out.text(), expected);
}

#[test]
fn plain_interleaving_repeats_headers() {
    let (p, clock, out) = session(Mode::Plain);
    let a = p.vertex("[a 1/1] RUN sleep 1");
    let b = p.vertex("[b 1/1] RUN echo hi");
    clock.advance_ms(123);
    b.log(Stream::Stdout, b"hi\n");
    clock.advance_ms(1000);
    a.log(Stream::Stderr, b"slept\n");
    b.done();
    a.done();
    p.finish();

    let expected = "\
#1 [a 1/1] RUN sleep 1
#1 ...

#2 [b 1/1] RUN echo hi
#2 0.123 hi
#2 ...

#1 [a 1/1] RUN sleep 1
#1 1.123 slept
#1 ...

#2 [b 1/1] RUN echo hi
#2 DONE 1.1s

#1 [a 1/1] RUN sleep 1
#1 DONE 1.1s

";
    assert_eq!(out.text(), expected);
}

#[test]
fn partial_lines_are_buffered_and_flushed() {
    let (p, clock, out) = session(Mode::Plain);
    let v = p.vertex("step");
    clock.advance_ms(100);
    v.log(Stream::Stdout, b"hel");
    clock.advance_ms(100);
    v.log(Stream::Stderr, b"err\r\n");
    v.log(Stream::Stdout, b"lo\nwor");
    clock.advance_ms(100);
    v.log(Stream::Stdout, b"ld");
    v.done();
    v.log(Stream::Stdout, b"after done\n");
    v.error("ignored after done");
    p.finish();

    let expected = "\
#1 step
#1 0.200 err
#1 0.100 hello
#1 0.200 world
#1 DONE 0.3s

";
    assert_eq!(out.text(), expected);
}

#[test]
fn full_logs_are_kept() {
    let (p, _clock, out) = session(Mode::Plain);
    let v = p.vertex("big");
    let line = "x".repeat(1000);
    let mut chunk = Vec::new();
    for _ in 0..1500 {
        chunk.extend_from_slice(line.as_bytes());
        chunk.push(b'\n');
    }
    v.log(Stream::Stdout, &chunk);
    v.done();
    p.finish();
    let text = out.text();
    assert_eq!(text.lines().filter(|l| l.ends_with(&line)).count(), 1500);
    assert!(text.len() > 1 << 20);
}

#[test]
fn rawjson_parses_back() {
    let (p, clock, out) = session(Mode::RawJson);
    let v = p.vertex("[1/2] RUN make");
    clock.advance_ms(1500);
    v.log(Stream::Stderr, b"warning: unused\n");
    v.status("exporting layers");
    clock.advance_ms(250);
    v.done();
    p.vertex("[2/2] COPY . .").cached();
    p.warn("something odd");
    p.finish();

    let events: Vec<Event> = out
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let ms = Duration::from_millis;
    assert_eq!(
        events,
        vec![
            Event::Start {
                vertex: 1,
                name: "[1/2] RUN make".into(),
                time: ms(0)
            },
            Event::Log {
                vertex: 1,
                stream: Stream::Stderr,
                text: "warning: unused".into(),
                time: ms(1500)
            },
            Event::Status {
                vertex: 1,
                text: "exporting layers".into(),
                time: ms(1500)
            },
            Event::Done {
                vertex: 1,
                time: ms(1750)
            },
            Event::Start {
                vertex: 2,
                name: "[2/2] COPY . .".into(),
                time: ms(1750)
            },
            Event::Cached {
                vertex: 2,
                time: ms(1750)
            },
            Event::Warning {
                message: "something odd".into(),
                time: ms(1750)
            },
        ]
    );
}

#[test]
fn quiet_prints_nothing() {
    let (p, _clock, out) = session(Mode::Quiet);
    let v = p.vertex("step");
    v.log(Stream::Stdout, b"hello\n");
    v.done();
    p.warn("w");
    p.finish();
    assert_eq!(out.text(), "");
}

/// Removes ANSI escape sequences and applies the cursor movements of the live view, giving
/// what the terminal finally shows.
fn screen(raw: &str) -> Vec<String> {
    let mut lines: Vec<String> = vec![String::new()];
    let mut row = 0;
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                assert_eq!(chars.next(), Some('['));
                let mut arg = String::new();
                let cmd = loop {
                    let c = chars.next().expect("escape command");
                    if c.is_ascii_digit() {
                        arg.push(c);
                    } else {
                        break c;
                    }
                };
                match cmd {
                    'F' => row -= arg.parse::<usize>().expect("count"),
                    'J' => lines.truncate(row + 1),
                    other => panic!("unexpected escape {other}"),
                }
                lines[row].clear();
            }
            '\n' => {
                row += 1;
                if lines.len() == row {
                    lines.push(String::new());
                }
            }
            c => lines[row].push(c),
        }
    }
    if lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    lines
}

/// A vertex line on the 60-column test terminal: the time ends at column 59.
fn row(left: &str, time: &str) -> String {
    format!("{left:<width$}{time}", width = 59 - time.len())
}

#[test]
fn tty_leaves_final_state_on_screen() {
    let (p, clock, out) = session(Mode::Tty);
    let a = p.vertex("[1/3] FROM alpine");
    a.cached();
    let b = p.vertex("[2/3] RUN make");
    clock.advance_ms(400);
    b.log(Stream::Stdout, b"compiling\n");
    // The renderer runs on its own thread: wait for it to draw the log line.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !out.text().contains("compiling") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let live = screen(&out.text());
    assert!(live.iter().any(|l| l == " => => # compiling"), "{live:#?}");
    assert!(
        live.iter().any(|l| l.starts_with(" ⠼  [2/3] RUN make")),
        "{live:#?}"
    );
    clock.advance_ms(800);
    b.done();
    let c = p.vertex("[3/3] RUN false");
    clock.advance_ms(300);
    c.log(Stream::Stderr, b"boom\n");
    c.error("exit code: 1");
    p.warn("a warning");
    p.finish();

    let shown = screen(&out.text());
    let expected = vec![
        "[+] Building 1.5s (3/3) FINISHED".to_owned(),
        row(" => CACHED [1/3] FROM alpine", "0.0s"),
        row(" => [2/3] RUN make", "1.2s"),
        row(" => ERROR [3/3] RUN false", "0.3s"),
        " => => # boom".to_owned(),
        " => => ERROR: exit code: 1".to_owned(),
        "1 warning found:".to_owned(),
        " - a warning".to_owned(),
    ];
    assert_eq!(shown, expected);
}

#[test]
fn many_threads_share_one_session() {
    let (p, _clock, out) = session(Mode::Plain);
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let p = p.clone();
            std::thread::spawn(move || {
                let v = p.vertex(format!("step {i}"));
                for j in 0..50 {
                    v.log(Stream::Stdout, format!("line {j}\n").as_bytes());
                }
                v.done();
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    drop(p);
    let text = out.text();
    for id in 1..=8 {
        assert_eq!(text.matches(&format!("#{id} DONE")).count(), 1);
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with(&format!("#{id} 0.000 line ")))
                .count(),
            50
        );
    }
}
