//! kilnd's client: connects to a daemon (unix socket, or TCP with mutual TLS) and drives one
//! build's stream: answers the context sync from a walk of the local context, serves secrets
//! when asked, replays the daemon's progress into the local printer and writes client-side
//! outputs (docs/kilnd.md).

mod connect;
mod context;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;

use kiln_proto::v1::builder_client::BuilderClient;
use kiln_proto::v1::{BuildStart, ClientMessage, SecretValue, client_message, server_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub use connect::{Endpoint, TlsFiles, connect};
pub use kiln_proto::v1::BuildStart as Start;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The daemon could not be reached.
    #[error("cannot connect to kilnd at `{address}`: {reason}")]
    Connect { address: String, reason: String },
    /// The build failed on the daemon; the text is what the embedded `kiln` would print.
    #[error("{0}")]
    Remote(String),
    #[error("kilnd: {0}")]
    Protocol(String),
    /// Writing an output here failed, in the engine's words.
    #[error(transparent)]
    Engine(#[from] kiln_engine::Error),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// One build for a daemon.
pub struct Request {
    /// The context directory, walked and synced on the daemon's request.
    pub context: PathBuf,
    /// The build's options; `session_key` and `has_context` are filled in by [`build`].
    pub start: BuildStart,
    /// `--secret` values by id, sent only when the daemon asks for them.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// For each output the daemon assembles from `start` (in its order), where it goes here:
    /// `-` is standard output; `None` stays on the daemon (its store, a registry).
    pub outputs: Vec<Option<Output>>,
}

/// Where a client-side output is written.
#[derive(Debug, Clone)]
pub struct Output {
    pub dest: PathBuf,
    /// A directory (`type=local`, `tar=false`), sent as a tar stream and unpacked here.
    pub dir: bool,
}

/// What a remote build gave.
#[derive(Debug)]
pub struct Outcome {
    pub result: kiln_engine::BuildResult,
    /// The session's figures: entries listed, and the files and bytes the daemon asked for.
    pub context_entries: u64,
    pub context_files_sent: u64,
    pub context_bytes_sent: u64,
}

/// The daemon's version and the platforms it builds for (`kiln builder inspect`).
pub async fn info(endpoint: &Endpoint) -> Result<(String, Vec<String>), Error> {
    let mut client = BuilderClient::new(connect(endpoint).await?);
    let r = client
        .info(kiln_proto::v1::InfoRequest {})
        .await
        .map_err(|s| Error::Connect {
            address: endpoint.address.clone(),
            reason: s.message().to_string(),
        })?
        .into_inner();
    Ok((r.version, r.platforms))
}

/// Runs `request` on the daemon at `endpoint`, its progress shown through `progress`.
/// Dropping the future closes the stream: the daemon then cancels the build.
pub async fn build(
    endpoint: &Endpoint,
    mut request: Request,
    progress: &kiln_progress::Progress,
) -> Result<Outcome, Error> {
    let context = std::fs::canonicalize(&request.context).map_err(io(format!(
        "the build context `{}` cannot be read",
        request.context.display()
    )))?;
    request.start.session_key = context::session_key(&context);
    request.start.has_context = true;
    let channel = connect(endpoint).await?;
    let mut client = BuilderClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel::<ClientMessage>(16);
    let send = |m| ClientMessage { msg: Some(m) };
    let _ = tx
        .send(send(client_message::Msg::Start(request.start.clone())))
        .await;
    let mut inbound = client
        .build(ReceiverStream::new(rx))
        .await
        .map_err(|s| Error::Connect {
            address: endpoint.address.clone(),
            reason: s.message().to_string(),
        })?
        .into_inner();
    let mut outputs = OutputWriters::new(&request.outputs);
    loop {
        let m = inbound
            .message()
            .await
            .map_err(|s| Error::Protocol(format!("the stream failed: {}", s.message())))?;
        let Some(m) = m.and_then(|m| m.msg) else {
            return Err(Error::Protocol(
                "the daemon ended the build without a result".into(),
            ));
        };
        let lost = || Error::Protocol("the daemon closed the stream".into());
        match m {
            server_message::Msg::Context(_) => {
                context::send_stats(&context, &tx).await?;
            }
            server_message::Msg::Files(f) => {
                context::send_files(&context, &f.paths, &tx).await?;
            }
            server_message::Msg::Secret(s) => {
                let answer = match request.secrets.get(&s.id) {
                    Some(v) => SecretValue {
                        id: s.id,
                        value: v.clone(),
                        error: String::new(),
                    },
                    None => SecretValue {
                        error: format!("error: secret `{}` was not given to `kiln build`", s.id),
                        id: s.id,
                        value: Vec::new(),
                    },
                };
                tx.send(send(client_message::Msg::Secret(answer)))
                    .await
                    .map_err(|_| lost())?;
            }
            server_message::Msg::Progress(line) => {
                // An event this client cannot read is shown by none of its printers either.
                if let Ok(event) = serde_json::from_slice::<kiln_progress::Event>(&line) {
                    progress.emit(event);
                }
            }
            server_message::Msg::Output(chunk) => outputs.write(chunk)?,
            server_message::Msg::Error(e) => return Err(Error::Remote(e.rendered)),
            server_message::Msg::Result(r) => {
                let bad =
                    |what: &str| Error::Protocol(format!("the daemon sent an invalid {what}"));
                let result = kiln_engine::BuildResult {
                    explain: Vec::new(),
                    manifest: kiln_oci::parse_digest(&r.manifest_digest)
                        .map_err(|_| bad("manifest digest"))?,
                    manifest_media_type: r.manifest_media_type,
                    manifest_size: r.manifest_size,
                    image_id: kiln_oci::parse_digest(&r.image_id).map_err(|_| bad("image id"))?,
                    warnings: Vec::new(),
                    names: r.names,
                    platform: serde_json::from_str(&r.platform_json)
                        .map_err(|_| bad("platform"))?,
                    created: r.created,
                };
                return Ok(Outcome {
                    result,
                    context_entries: r.context_entries,
                    context_files_sent: r.context_files_sent,
                    context_bytes_sent: r.context_bytes_sent,
                });
            }
        }
    }
}

/// The client-side outputs being received.
struct OutputWriters<'a> {
    outputs: &'a [Option<Output>],
    open: BTreeMap<u32, Sink>,
    /// The tar streams of directory outputs, unpacked when complete.
    tars: BTreeMap<u32, tempfile::NamedTempFile>,
}

impl<'a> OutputWriters<'a> {
    fn new(outputs: &'a [Option<Output>]) -> OutputWriters<'a> {
        OutputWriters {
            outputs,
            open: BTreeMap::new(),
            tars: BTreeMap::new(),
        }
    }

    fn write(&mut self, chunk: kiln_proto::v1::OutputChunk) -> Result<(), Error> {
        let Some(Some(out)) = self.outputs.get(chunk.index as usize) else {
            return Err(Error::Protocol(format!(
                "the daemon sent output {} that this build has not",
                chunk.index
            )));
        };
        let dest = out.dest.display().to_string();
        if out.dir {
            let t = match self.tars.entry(chunk.index) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(
                    tempfile::NamedTempFile::new().map_err(io("creating a temporary file"))?,
                ),
            };
            t.write_all(&chunk.data)
                .map_err(io(format!("receiving `{dest}`")))?;
            if chunk.eof {
                let t = self.tars.remove(&chunk.index).expect("present");
                unpack(t, &out.dest)?;
            }
            return Ok(());
        }
        let w = match self.open.entry(chunk.index) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let w = if out.dest.as_os_str() == "-" {
                    Sink::Stdout(std::io::stdout())
                } else {
                    Sink::File(FileSink::start(out.dest.clone()))
                };
                e.insert(w)
            }
        };
        match w {
            Sink::Stdout(s) => s
                .write_all(&chunk.data)
                .map_err(io(format!("writing `{dest}`")))?,
            Sink::File(f) => f.write(chunk.data)?,
        }
        if chunk.eof {
            match self.open.remove(&chunk.index).expect("present") {
                Sink::Stdout(mut s) => s.flush().map_err(io(format!("writing `{dest}`")))?,
                Sink::File(f) => f.finish()?,
            }
        }
        Ok(())
    }
}

/// Where a file output's bytes go.
enum Sink {
    Stdout(std::io::Stdout),
    File(FileSink),
}

/// A file output written as the engine writes one (`kiln_engine::write_file_atomically`: a
/// temp file beside `dest`, renamed over it once complete), fed chunk by chunk from a thread.
/// A stream that ends without its last chunk leaves the old `dest`.
struct FileSink {
    /// `None` marks the end; a sender dropped without it abandons the write.
    tx: std::sync::mpsc::SyncSender<Option<Vec<u8>>>,
    writer: std::thread::JoinHandle<Result<(), kiln_engine::Error>>,
}

impl FileSink {
    fn start(dest: PathBuf) -> FileSink {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Option<Vec<u8>>>(8);
        let writer = std::thread::spawn(move || {
            kiln_engine::write_file_atomically(&dest, |w| {
                let what = || format!("writing `{}`", dest.display());
                loop {
                    match rx.recv() {
                        Ok(Some(data)) => {
                            w.write_all(&data)
                                .map_err(|source| kiln_engine::Error::Io {
                                    what: what(),
                                    source,
                                })?
                        }
                        Ok(None) => return Ok(()),
                        Err(_) => {
                            return Err(kiln_engine::Error::Io {
                                what: what(),
                                source: std::io::ErrorKind::UnexpectedEof.into(),
                            });
                        }
                    }
                }
            })
        });
        FileSink { tx, writer }
    }

    fn write(&self, data: Vec<u8>) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        // The writer is gone only after an error, which `finish` reports.
        let _ = self.tx.send(Some(data));
        Ok(())
    }

    fn finish(self) -> Result<(), Error> {
        let _ = self.tx.send(None);
        drop(self.tx);
        match self.writer.join() {
            Ok(r) => Ok(r?),
            Err(_) => Err(Error::Protocol("the output writer failed".into())),
        }
    }
}

/// Unpacks a directory output's tar stream into `dest`, keeping modes, owners and times; the
/// tar crate refuses entries that would land outside `dest`.
fn unpack(tar_file: tempfile::NamedTempFile, dest: &std::path::Path) -> Result<(), Error> {
    let what = format!("writing `{}`", dest.display());
    std::fs::create_dir_all(dest).map_err(io(what.clone()))?;
    let f = tar_file.reopen().map_err(io(what.clone()))?;
    let mut a = tar::Archive::new(f);
    a.set_preserve_permissions(true);
    a.set_preserve_mtime(true);
    a.set_preserve_ownerships(true);
    a.set_overwrite(true);
    a.unpack(dest).map_err(io(what))
}
