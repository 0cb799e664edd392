//! `kiln build --explain`: why each step that missed the cache missed it. Every build keeps, per
//! Dockerfile step, the inputs of the key it last solved under (`<root>/step-keys/`); a step
//! whose key differs from that record is explained by comparing the two (kiln-worker's
//! `key_inputs`), and the record is replaced. See docs/cache.md.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_frontend::StepInfo;
use kiln_llb::NodeId;
use kiln_oci::Digest;
use kiln_solver::Solved;
use kiln_worker::key_inputs::{self, Variables};
use kiln_worker::{KeyInputs, LlbGraph, LlbWorker, Value};
use serde::{Deserialize, Serialize};

/// One step that ran instead of coming from the cache, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplainedStep {
    /// The step as progress names it (`[2/3] RUN make`).
    pub step: String,
    /// Its identity across builds (`STAGE/N`, see [`StepInfo`]).
    pub id: String,
    pub reasons: Vec<String>,
}

/// What a step solved under last time. On disk: the key on the first line (all a cached step
/// whose key did not change reads), then this record as JSON.
#[derive(Debug, Serialize, Deserialize)]
struct StepRecord {
    id: String,
    key: Digest,
    inputs: KeyInputs,
}

/// A record file: its key, and the rest parsed only when needed.
struct Stored {
    key: Option<Digest>,
    text: Vec<u8>,
}

impl Stored {
    fn read(path: &Path) -> Option<Stored> {
        let text = fs::read(path).ok()?;
        let end = text.iter().position(|b| *b == b'\n')?;
        let key = std::str::from_utf8(&text[..end])
            .ok()
            .and_then(|k| kiln_oci::parse_digest(k).ok());
        Some(Stored {
            key,
            text: text[end + 1..].to_vec(),
        })
    }

    fn record(&self) -> Option<StepRecord> {
        serde_json::from_slice(&self.text).ok()
    }
}

/// The records of one Dockerfile's steps.
pub(crate) struct StepKeys {
    dir: PathBuf,
    /// Which Dockerfile: its steps' identities are only compared with its own.
    dockerfile: String,
}

/// Why a step solved again although its key was the recorded one.
pub(crate) enum Forced {
    NoCache,
    NoCacheFilter,
    No,
}

impl StepKeys {
    pub(crate) fn new(root: &Path, dockerfile: String) -> Self {
        Self {
            dir: root.join("step-keys"),
            dockerfile,
        }
    }

    fn path(&self, id: &str) -> PathBuf {
        let name = kiln_oci::sha256(format!("{}\0{id}", self.dockerfile).as_bytes());
        self.dir.join(name.digest())
    }

    /// Explains every solved step that was not cached, and records the inputs of every step
    /// whose key is new. `forced` says why a vertex ran whatever the cache held.
    pub(crate) fn explain(
        &self,
        graph: &LlbGraph,
        steps: &HashMap<NodeId, StepInfo>,
        solved: &[(usize, Solved<Value>)],
        worker: &LlbWorker,
        forced: &dyn Fn(usize) -> Forced,
    ) -> Vec<ExplainedStep> {
        let mut out = Vec::new();
        for (vertex, s) in solved {
            let Some(info) = steps.get(&NodeId(*vertex)) else {
                continue;
            };
            let path = self.path(&info.id);
            let stored = Stored::read(&path);
            let same_key = stored.as_ref().and_then(|o| o.key.as_ref()) == Some(&s.cache_key);
            // The usual no-op rebuild: cached under the recorded key, nothing to do.
            if s.cached && same_key {
                continue;
            }
            let Some(mut inputs) = worker.key_inputs(*vertex) else {
                continue;
            };
            inputs.summarise();
            if !s.cached {
                let vars = Variables {
                    args: &info.args,
                    secret: &kiln_frontend::looks_secret,
                };
                let old = stored.as_ref().and_then(Stored::record);
                let reasons = match &old {
                    None => vec!["first build of this step".to_string()],
                    Some(_) if same_key => vec![
                        match forced(*vertex) {
                            Forced::NoCache => "same inputs; the cache was not used (--no-cache)",
                            Forced::NoCacheFilter => {
                                "same inputs; the cache was not used for this stage \
                                 (--no-cache-filter)"
                            }
                            Forced::No => {
                                "same inputs, but the cache record or its layers are gone \
                                 (pruned)"
                            }
                        }
                        .to_string(),
                    ],
                    Some(o) => {
                        let r = key_inputs::explain(&o.inputs, &inputs, &vars);
                        if r.is_empty() {
                            vec![
                                "its cache key changed for a reason not recorded (another kiln \
                                 version?)"
                                    .into(),
                            ]
                        } else {
                            r
                        }
                    }
                };
                out.push(ExplainedStep {
                    step: kiln_solver::Graph::name(graph, *vertex).to_string(),
                    id: info.id.clone(),
                    reasons,
                });
            }
            if !same_key {
                let record = StepRecord {
                    id: info.id.clone(),
                    key: s.cache_key.clone(),
                    inputs,
                };
                // Only costs a "first build" explanation next time if it fails.
                let _ = self.save(&path, &record);
            }
        }
        out
    }

    fn save(&self, path: &Path, record: &StepRecord) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let tmp = self
            .dir
            .join(format!(".tmp-{:016x}", rand::random::<u64>()));
        let write = || {
            let mut f = fs::File::create(&tmp)?;
            writeln!(f, "{}", record.key)?;
            f.write_all(&serde_json::to_vec(record)?)?;
            fs::rename(&tmp, path)
        };
        let r = write();
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r
    }
}

/// `explain` section text: one block per step, its reasons indented below it.
pub fn format_explain(steps: &[ExplainedStep]) -> String {
    let mut out = String::from("explain: why steps did not come from the cache\n");
    if steps.is_empty() {
        out.push_str("  every step came from the cache\n");
    }
    for s in steps {
        out.push_str(&format!("  {}\n", s.step));
        for r in &s.reasons {
            out.push_str(&format!("    - {r}\n"));
        }
    }
    out
}
