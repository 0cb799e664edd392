//! The progress events a build emits. They are what the renderers consume and what
//! `--progress=rawjson` prints, one JSON object per line.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which output stream of a process a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Something that happened to a vertex (build step). `time` is measured from the start of the
/// progress session and serialised as seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A vertex started; `vertex` is its `#N`.
    Start {
        vertex: u64,
        name: String,
        #[serde(with = "secs")]
        time: Duration,
    },
    /// One complete line of output, without its newline. `time` is when the line began.
    Log {
        vertex: u64,
        stream: Stream,
        text: String,
        #[serde(with = "secs")]
        time: Duration,
    },
    /// A progress message, e.g. `transferring context: 1.2kB done`.
    Status {
        vertex: u64,
        text: String,
        #[serde(with = "secs")]
        time: Duration,
    },
    /// The vertex's result came from the cache.
    Cached {
        vertex: u64,
        #[serde(with = "secs")]
        time: Duration,
    },
    /// The vertex completed.
    Done {
        vertex: u64,
        #[serde(with = "secs")]
        time: Duration,
    },
    /// The vertex failed.
    Error {
        vertex: u64,
        message: String,
        #[serde(with = "secs")]
        time: Duration,
    },
    /// A build-wide warning, shown in a block at the end.
    Warning {
        message: String,
        #[serde(with = "secs")]
        time: Duration,
    },
}

impl Event {
    /// The vertex this event is about, if any.
    pub fn vertex(&self) -> Option<u64> {
        match self {
            Event::Start { vertex, .. }
            | Event::Log { vertex, .. }
            | Event::Status { vertex, .. }
            | Event::Cached { vertex, .. }
            | Event::Done { vertex, .. }
            | Event::Error { vertex, .. } => Some(*vertex),
            Event::Warning { .. } => None,
        }
    }

    pub fn time(&self) -> Duration {
        match self {
            Event::Start { time, .. }
            | Event::Log { time, .. }
            | Event::Status { time, .. }
            | Event::Cached { time, .. }
            | Event::Done { time, .. }
            | Event::Error { time, .. }
            | Event::Warning { time, .. } => *time,
        }
    }
}

/// Durations as fractional seconds with microsecond precision, which survives the trip
/// through a JSON float.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_micros() as f64 / 1e6)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        if !secs.is_finite() || secs < 0.0 {
            return Err(serde::de::Error::custom(
                "time must be a non-negative number",
            ));
        }
        Ok(Duration::from_micros((secs * 1e6).round() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let ev = Event::Log {
            vertex: 4,
            stream: Stream::Stdout,
            text: "hello".into(),
            time: Duration::from_millis(1215),
        };
        let json = serde_json::to_string(&ev).expect("serialise");
        assert_eq!(
            json,
            r#"{"type":"log","vertex":4,"stream":"stdout","text":"hello","time":1.215}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&json).expect("parse"), ev);
    }

    #[test]
    fn negative_time_is_rejected() {
        let json = r#"{"type":"done","vertex":1,"time":-1}"#;
        assert!(serde_json::from_str::<Event>(json).is_err());
    }
}
